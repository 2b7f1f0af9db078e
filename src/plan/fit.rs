//! The largest batch size and resolution that fit a memory budget, by planning candidates
//! (a plan is a metered run: well under a second for the full SD1.5 UNet).

use super::{plan, PlanInput};
use crate::error::{ErrorKind, Result};

/// The largest batch sizes searched.
pub const MAX_BATCH: usize = 256;
/// The largest square side searched, in pixels.
pub const MAX_SIDE: usize = 1536;

/// What fits a budget, with the configuration's other settings unchanged.
#[derive(Clone, Debug, PartialEq)]
pub struct Fit {
    pub budget: usize,
    /// The largest batch size at the configured resolution (None: not even 1).
    pub batch: Option<usize>,
    /// The largest square resolution (side, a multiple of 64) at the configured batch size.
    pub side: Option<usize>,
    /// What gradient checkpointing would fit, when the configuration has it off.
    pub checkpointed: Option<CheckpointedFit>,
}

/// What fits a budget with `gradient_checkpointing: true`.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckpointedFit {
    /// Whether the configuration fits with it.
    pub fits: bool,
    /// The largest batch size at the configured resolution with it.
    pub batch: Option<usize>,
}

/// Whether `input`'s predicted peak fits `budget` bytes. A size the model refuses (an op's
/// element-count limit at a large batch, the VAE attention's keys at a large resolution) does
/// not fit; other errors are returned.
pub fn fits(input: &PlanInput, budget: usize) -> Result<bool> {
    match plan(input) {
        Ok(p) => Ok(p.peak() <= budget),
        Err(e) if e.kind() == ErrorKind::BadInput => Ok(false),
        Err(e) => Err(e),
    }
}

/// The largest value v in lo..=hi with `ok(v)`, given that `ok` is monotone (true, then
/// false); None when `ok(lo)` is false.
fn largest(
    lo: usize,
    hi: usize,
    mut ok: impl FnMut(usize) -> Result<bool>,
) -> Result<Option<usize>> {
    if !ok(lo)? {
        return Ok(None);
    }
    // Grow by doubling, then bisect between the last good and the first bad value.
    let (mut good, mut bad) = (lo, None);
    while bad.is_none() && good < hi {
        let next = (good * 2).min(hi);
        if ok(next)? {
            good = next;
        } else {
            bad = Some(next);
        }
    }
    if let Some(mut bad) = bad {
        while bad - good > 1 {
            let mid = good + (bad - good) / 2;
            if ok(mid)? {
                good = mid;
            } else {
                bad = mid;
            }
        }
    }
    Ok(Some(good))
}

/// The largest batch size (up to [`MAX_BATCH`]) at `input`'s resolution that fits `budget`
/// bytes; None when not even 1 does.
pub fn largest_batch(input: &PlanInput, budget: usize) -> Result<Option<usize>> {
    largest(1, MAX_BATCH, |b| fits(&input.with_batch(b), budget))
}

/// The largest batch size and square resolution that fit `budget` bytes, and, when the
/// configuration does not checkpoint, what would fit with gradient checkpointing.
pub fn fit(input: &PlanInput, budget: usize) -> Result<Fit> {
    let batch = largest_batch(input, budget)?;
    let side =
        largest(1, MAX_SIDE / 64, |s| fits(&input.with_side(s * 64), budget))?.map(|s| s * 64);
    let checkpointed = if input.cfg.gradient_checkpointing {
        None
    } else {
        let with = input.with_checkpointing(true);
        Some(CheckpointedFit {
            fits: fits(&with, budget)?,
            batch: largest_batch(&with, budget)?,
        })
    };
    Ok(Fit {
        budget,
        batch,
        side,
        checkpointed,
    })
}

#[cfg(test)]
mod tests {
    use super::largest;

    #[test]
    fn largest_finds_the_last_true_value() {
        for limit in [0usize, 1, 2, 3, 7, 8, 9, 100, 256, 300] {
            let mut calls = 0;
            let got = largest(1, 256, |v| {
                calls += 1;
                Ok(v <= limit)
            })
            .unwrap();
            let want = (limit >= 1).then_some(limit.min(256));
            assert_eq!(got, want, "limit {limit}");
            assert!(calls <= 18, "limit {limit}: {calls} calls");
        }
    }
}
