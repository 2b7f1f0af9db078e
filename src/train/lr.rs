//! Learning-rate schedules, as diffusers' `get_scheduler` (and kohya through it) defines them:
//! a multiplier of the base rate for optimizer step `step` (0-based, the step about to be
//! taken), with `warmup` steps of linear warm-up and `total` steps in all.
//!
//!   constant               1 (no warm-up, as diffusers' "constant")
//!   constant_with_warmup   step/warmup during warm-up, then 1
//!   linear                 warm-up, then (total − step)/(total − warmup), down to 0
//!   cosine                 warm-up, then ½(1 + cos(π·2·cycles·p)), cycles = ½: one half-wave
//!   cosine_with_restarts   warm-up, then ½(1 + cos(π·((cycles·p) mod 1))), 0 once p >= 1
//!   polynomial             warm-up, then ((lr − end)·(1 − p)^power + end)/lr, end = 1e-7
//!                          (diffusers' lr_end; kohya's lr_scheduler_power), end/lr after
//!                          the last step
//!   cosine_with_min_lr     warm-up, then r + (1 − r)·½(1 + cos(π·cycles·p)), at least 0:
//!                          transformers' schedule as kohya calls it (r =
//!                          lr_scheduler_min_lr_ratio, cycles = lr_scheduler_num_cycles, of
//!                          which kohya passes half as transformers' num_cycles)
//!   warmup_stable_decay    transformers' (4.54) WSD schedule as sd-scripts >= 0.9 calls it:
//!                          r + (1 − r)·step/warmup during warm-up, 1 for the stable
//!                          total − warmup − decay steps, then r + (1 − r)·½(1 + cos(π·cycles·q))
//!                          at least 0 over the `decay` steps (q = their fraction done), then r
//!                          (r = lr_scheduler_min_lr_ratio or 0, decay = lr_decay_steps)
//!   adafactor              1: Adafactor with relative_step finds its own rate and ignores this
//!                          one (transformers' AdafactorSchedule, as kohya uses it)
//! with p = (step − warmup)/(total − warmup).

use std::f64::consts::PI;
use std::fmt;

/// Which schedule (the config's `lr_scheduler`, named as diffusers and kohya name them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Schedule {
    /// The same rate throughout, no warm-up.
    Constant,
    /// A linear warm-up from 0, then constant.
    ConstantWithWarmup,
    /// Warm-up, then a straight line down to 0 at the last step.
    Linear,
    /// Warm-up, then half a cosine down to 0 at the last step.
    Cosine,
    /// Warm-up, then `num_cycles` cosines, each restarting at the full rate.
    CosineWithRestarts,
    /// Warm-up, then (1 − p)^power down to diffusers' lr_end = 1e-7.
    Polynomial,
    /// Warm-up, then half a cosine down to `min_lr_ratio` of the rate.
    CosineWithMinLr,
    /// Warm-up, a constant stretch, then a cosine down to `min_lr_ratio` over the last
    /// `decay` steps.
    WarmupStableDecay,
    /// Adafactor's own rate (relative_step); the schedule is a constant 1.
    Adafactor,
}

impl Schedule {
    /// Every schedule, in the order messages list them.
    pub const ALL: [Schedule; 9] = [
        Schedule::Constant,
        Schedule::ConstantWithWarmup,
        Schedule::Linear,
        Schedule::Cosine,
        Schedule::CosineWithRestarts,
        Schedule::Polynomial,
        Schedule::CosineWithMinLr,
        Schedule::WarmupStableDecay,
        Schedule::Adafactor,
    ];

    /// The name configs write (diffusers' `get_scheduler` names).
    pub fn name(self) -> &'static str {
        match self {
            Schedule::Constant => "constant",
            Schedule::ConstantWithWarmup => "constant_with_warmup",
            Schedule::Linear => "linear",
            Schedule::Cosine => "cosine",
            Schedule::CosineWithRestarts => "cosine_with_restarts",
            Schedule::Polynomial => "polynomial",
            Schedule::CosineWithMinLr => "cosine_with_min_lr",
            Schedule::WarmupStableDecay => "warmup_stable_decay",
            Schedule::Adafactor => "adafactor",
        }
    }

    /// The schedule of a name (exact, lower case).
    pub fn parse(name: &str) -> Option<Schedule> {
        Schedule::ALL.into_iter().find(|s| s.name() == name)
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A schedule with its step counts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LrSchedule {
    pub kind: Schedule,
    pub base_lr: f64,
    pub warmup: u64,
    pub total: u64,
    /// Cycles of cosine_with_restarts (kohya's lr_scheduler_num_cycles, default 1).
    pub num_cycles: f64,
    /// The exponent of polynomial (kohya's lr_scheduler_power, default 1).
    pub power: f64,
    /// The floor of cosine_with_min_lr and warmup_stable_decay as a fraction of the rate
    /// (kohya's lr_scheduler_min_lr_ratio).
    pub min_lr_ratio: f64,
    /// The decay steps of warmup_stable_decay (kohya's lr_decay_steps).
    pub decay: u64,
}

/// diffusers' `lr_end` of the polynomial schedule, which kohya leaves at its default.
pub const POLYNOMIAL_LR_END: f64 = 1e-7;

impl LrSchedule {
    /// The learning rate for optimizer step `step` (0-based).
    pub fn lr(&self, step: u64) -> f64 {
        self.base_lr * self.factor(step)
    }

    fn factor(&self, step: u64) -> f64 {
        let s = step as f64;
        let warm = self.warmup as f64;
        match self.kind {
            Schedule::Adafactor => return 1.0,
            Schedule::WarmupStableDecay => return self.wsd(step),
            _ => {}
        }
        if self.kind != Schedule::Constant && step < self.warmup {
            return s / warm.max(1.0);
        }
        let p = (s - warm) / ((self.total as f64 - warm).max(1.0));
        match self.kind {
            Schedule::Constant | Schedule::ConstantWithWarmup => 1.0,
            Schedule::Linear => {
                ((self.total as f64 - s) / (self.total as f64 - warm).max(1.0)).max(0.0)
            }
            Schedule::Cosine => (0.5 * (1.0 + (PI * 2.0 * 0.5 * p).cos())).max(0.0),
            Schedule::CosineWithRestarts => {
                if p >= 1.0 {
                    0.0
                } else {
                    (0.5 * (1.0 + (PI * ((self.num_cycles * p) % 1.0)).cos())).max(0.0)
                }
            }
            Schedule::CosineWithMinLr => {
                let r = self.min_lr_ratio;
                let f = 0.5 * (1.0 + (PI * self.num_cycles * p).cos());
                (f * (1.0 - r) + r).max(0.0)
            }
            Schedule::WarmupStableDecay | Schedule::Adafactor => unreachable!("returned above"),
            Schedule::Polynomial => {
                // diffusers refuses a rate at or below lr_end; here the rate then stays.
                let (lr, end) = (self.base_lr, POLYNOMIAL_LR_END);
                if lr <= end {
                    1.0
                } else if step > self.total {
                    end / lr
                } else {
                    ((lr - end) * (1.0 - p).max(0.0).powf(self.power) + end) / lr
                }
            }
        }
    }

    /// warmup_stable_decay, with sd-scripts' stable length total − warmup − decay (signed, as
    /// Python computes it) and num_cycles/2 as transformers' num_cycles.
    fn wsd(&self, step: u64) -> f64 {
        let r = self.min_lr_ratio;
        let (k, warmup, decay) = (step as i64, self.warmup as i64, self.decay as i64);
        let stable = self.total as i64 - warmup - decay;
        let f = if k < warmup {
            k as f64 / warmup.max(1) as f64
        } else if k < warmup + stable {
            return 1.0;
        } else if k < warmup + stable + decay {
            let q = (k - warmup - stable) as f64 / decay.max(1) as f64;
            0.5 * (1.0 + (PI * (self.num_cycles / 2.0) * 2.0 * q).cos())
        } else {
            return r;
        };
        (f * (1.0 - r) + r).max(0.0)
    }
}
