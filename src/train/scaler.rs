//! Dynamic loss scaling (as torch.cuda.amp.GradScaler): the loss gradient is multiplied by
//! `scale` so small f16 gradients do not flush to zero; a step whose gradients overflow is
//! skipped (never applied) and halves the scale; 2000 good steps in a row double it.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LossScaler {
    pub enabled: bool,
    pub scale: f64,
    pub good_steps: u32,
    /// Optimizer steps skipped for non-finite gradients.
    pub skipped: u64,
}

impl LossScaler {
    const GROWTH_INTERVAL: u32 = 2000;

    /// The scaler for a backend computing in `dtype`: on for f16 only. bf16 keeps f32's
    /// 8-bit exponent, so small gradients do not flush to zero and it needs no scaling (as
    /// PyTorch's autocast uses no GradScaler for bf16); f32 neither.
    pub fn for_compute(dtype: crate::tensor::DType) -> Self {
        LossScaler::new(dtype == crate::tensor::DType::F16)
    }

    /// Enabled for f16 compute, starting at 2^16; a no-op scale of 1 otherwise.
    pub fn new(enabled: bool) -> Self {
        LossScaler {
            enabled,
            scale: if enabled { 65536.0 } else { 1.0 },
            good_steps: 0,
            skipped: 0,
        }
    }

    /// Records whether this step's gradients were finite; returns whether to apply the step.
    pub fn update(&mut self, finite: bool) -> bool {
        if !finite {
            self.skipped += 1;
            self.good_steps = 0;
            if self.enabled {
                self.scale = (self.scale / 2.0).max(1.0);
            }
            return false;
        }
        if self.enabled {
            self.good_steps += 1;
            if self.good_steps >= Self::GROWTH_INTERVAL {
                self.scale *= 2.0;
                self.good_steps = 0;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::LossScaler;
    use crate::tensor::DType;

    #[test]
    fn only_f16_is_scaled() {
        assert!(LossScaler::for_compute(DType::F16).enabled);
        assert_eq!(LossScaler::for_compute(DType::F16).scale, 65536.0);
        for d in [DType::BF16, DType::F32] {
            let s = LossScaler::for_compute(d);
            assert!(!s.enabled && s.scale == 1.0, "{d}: {s:?}");
        }
    }
}
