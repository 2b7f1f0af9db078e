//! How `lorafuse resize` picks a module's new rank from the singular values S (descending) of
//! its up·down, as sd-scripts' resize_lora.py does (`rank_resize`, `index_sv_*`):
//!
//! - fixed: the rank asked;
//! - `sv_ratio` X: one more than the number of singular values above S₀/X;
//! - `sv_fro` X: one more than the number needed for the retained share of ‖S‖² to reach X²
//!   (the first cumulative share ≥ X², counted from 1);
//! - `sv_cumulative` X: the same on the plain sum of S reaching X;
//!
//! each dynamic count clamped to [1, len(S) − 1] before the one is added (kohya's quirk, kept),
//! then 1 when the matrix is zero (S₀ ≤ 1e-6), then capped at the rank asked. len(S) is the
//! full min(out, in·k²) of the weight, as torch.linalg.svd of the formed matrix has: pass the
//! computed values padded with zeros to it. The new alpha is scale·new_rank, scale = the old
//! alpha/rank, so alpha/rank and the product stay as they were.

use std::fmt;
use std::str::FromStr;

/// kohya's `MIN_SV`: a largest singular value at or below it means a zero matrix.
pub const MIN_SV: f64 = 1e-6;

/// `--dynamic-method`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DynamicMethod {
    SvRatio,
    SvFro,
    SvCumulative,
}

impl DynamicMethod {
    pub const NAMES: [&'static str; 3] = ["sv_ratio", "sv_fro", "sv_cumulative"];

    /// Whether `param` means something: a positive ratio for sv_ratio, a share in (0, 1] for
    /// the other two.
    pub fn check_param(self, param: f64) -> Result<(), String> {
        let ok = match self {
            DynamicMethod::SvRatio => param.is_finite() && param > 0.0,
            DynamicMethod::SvFro | DynamicMethod::SvCumulative => param > 0.0 && param <= 1.0,
        };
        if ok {
            Ok(())
        } else {
            Err(match self {
                DynamicMethod::SvRatio => format!(
                    "{param} for sv_ratio: give the largest ratio S₀/Sᵢ to keep, a positive \
                     number such as 2 or 10"
                ),
                _ => format!("{param} for {self}: give the share to keep, in (0, 1], such as 0.9"),
            })
        }
    }
}

impl fmt::Display for DynamicMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DynamicMethod::SvRatio => "sv_ratio",
            DynamicMethod::SvFro => "sv_fro",
            DynamicMethod::SvCumulative => "sv_cumulative",
        })
    }
}

impl FromStr for DynamicMethod {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "sv_ratio" => Ok(DynamicMethod::SvRatio),
            "sv_fro" => Ok(DynamicMethod::SvFro),
            "sv_cumulative" => Ok(DynamicMethod::SvCumulative),
            _ => Err(format!(
                "expected one of {}",
                DynamicMethod::NAMES.join(", ")
            )),
        }
    }
}

/// A rank rule: a fixed rank, or a dynamic method with its parameter capped at `rank`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RankRule {
    pub rank: usize,
    pub dynamic: Option<(DynamicMethod, f64)>,
}

/// The rank chosen for one module and what it keeps.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RankChoice {
    pub rank: usize,
    /// Σ S kept / Σ S.
    pub sum_retained: f64,
    /// ‖S kept‖ / ‖S‖ (the Frobenius share).
    pub fro_retained: f64,
    /// S₀ / S[rank − 1].
    pub max_ratio: f64,
}

/// First index whose value is ≥ target (torch.searchsorted, left side) on ascending `cum`.
fn search_left(cum: &[f64], target: f64) -> usize {
    cum.partition_point(|&c| c < target)
}

fn cumulative_share(values: impl Iterator<Item = f64>) -> Vec<f64> {
    let mut acc = 0.0;
    let cum: Vec<f64> = values
        .map(|v| {
            acc += v;
            acc
        })
        .collect();
    let total = acc;
    cum.into_iter().map(|c| c / total).collect()
}

/// The rank `rule` picks for singular values `s` (descending, padded with zeros to the weight's
/// min(out, in·k²); see the module documentation).
pub fn choose_rank(s: &[f64], rule: &RankRule) -> RankChoice {
    let n = s.len();
    let clamp = |i: usize| i.min(n.saturating_sub(1)).max(1);
    let mut rank = match rule.dynamic {
        None => rule.rank,
        Some((DynamicMethod::SvRatio, x)) => {
            let floor = s[0] / x;
            clamp(s.iter().filter(|&&v| v > floor).count()) + 1
        }
        Some((DynamicMethod::SvFro, x)) => {
            let cum = cumulative_share(s.iter().map(|v| v * v));
            clamp(search_left(&cum, x * x) + 1) + 1
        }
        Some((DynamicMethod::SvCumulative, x)) => {
            let cum = cumulative_share(s.iter().copied());
            clamp(search_left(&cum, x) + 1) + 1
        }
    };
    if s.first().is_none_or(|&s0| s0 <= MIN_SV) {
        rank = 1;
    } else if rank > rule.rank {
        rank = rule.rank;
    }
    let kept = rank.min(n);
    let sum: f64 = s.iter().map(|v| v.abs()).sum();
    let fro: f64 = s.iter().map(|v| v * v).sum::<f64>().sqrt();
    RankChoice {
        rank,
        sum_retained: s[..kept].iter().map(|v| v.abs()).sum::<f64>() / sum,
        fro_retained: s[..kept].iter().map(|v| v * v).sum::<f64>().sqrt() / fro,
        max_ratio: s.first().copied().unwrap_or(0.0) / s[kept.max(1) - 1],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_by_hand() {
        let s = [8.0, 4.0, 2.0, 1.0, 0.0, 0.0];
        let fixed = |rank| RankRule {
            rank,
            dynamic: None,
        };
        assert_eq!(choose_rank(&s, &fixed(3)).rank, 3);
        let dynamic = |m, x| RankRule {
            rank: 5,
            dynamic: Some((m, x)),
        };
        // Above 8/3: 8 and 4 → 2, plus one.
        assert_eq!(
            choose_rank(&s, &dynamic(DynamicMethod::SvRatio, 3.0)).rank,
            3
        );
        // Cumulative sums 8/15, 12/15, 14/15, 1: 0.8 is reached at index 1 → 2, plus one.
        assert_eq!(
            choose_rank(&s, &dynamic(DynamicMethod::SvCumulative, 0.8)).rank,
            3
        );
        // Squares 64, 16, 4, 1 of 85: 0.9² = 0.81 is passed at index 1 (80/85) → 2, plus one.
        assert_eq!(choose_rank(&s, &dynamic(DynamicMethod::SvFro, 0.9)).rank, 3);
        // Capped at the rank asked.
        let capped = RankRule {
            rank: 2,
            dynamic: Some((DynamicMethod::SvRatio, 100.0)),
        };
        assert_eq!(choose_rank(&s, &capped).rank, 2);
        // A zero matrix: rank 1.
        assert_eq!(choose_rank(&[0.0; 4], &fixed(3)).rank, 1);
        let c = choose_rank(&s, &fixed(2));
        assert!((c.sum_retained - 12.0 / 15.0).abs() < 1e-15);
        assert!((c.fro_retained - (80f64 / 85.0).sqrt()).abs() < 1e-15);
        assert_eq!(c.max_ratio, 2.0);
    }
}
