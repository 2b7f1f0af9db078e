//! AdamW with PyTorch's decoupled weight decay, one launch over the flat buffer
//! (`Backend::adamw_step`):
//!
//!   g = grad_scale·grad;  m = β1·m + (1−β1)·g;  v = β2·v + (1−β2)·g²
//!   p = p·(1 − lr·wd) − lr·(m/(1−β1^t)) / (sqrt(v/(1−β2^t)) + eps)
//!
//! State: the two moments `m` and `v` (f32, one element per parameter) and the step count t.

use super::Optimizer;
use crate::backend::Backend;
use crate::error::Result;
use crate::tensor::{DType, Tensor};

/// AdamW's settings that do not change from step to step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWSettings {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWSettings {
    /// PyTorch's `torch.optim.AdamW` defaults, which kohya passes on unchanged.
    fn default() -> Self {
        AdamWSettings {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

impl AdamWSettings {
    /// kohya's `ss_optimizer` text for an optimizer `name` with these settings.
    pub(super) fn describe(&self, name: &str) -> String {
        format!(
            "{name}(weight_decay={},betas=({},{}),eps={})",
            self.weight_decay, self.beta1, self.beta2, self.eps
        )
    }

    /// The hyper-parameters of step number `step` at rate `lr`.
    pub(super) fn step(&self, lr: f64, step: u64, grad_scale: f64) -> crate::backend::AdamW {
        crate::backend::AdamW {
            lr,
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            weight_decay: self.weight_decay,
            step,
            grad_scale,
        }
    }
}

/// AdamW over one flat buffer.
pub struct AdamW {
    pub settings: AdamWSettings,
    pub m: Tensor,
    pub v: Tensor,
    steps: u64,
}

impl AdamW {
    /// Zero moments for `n` parameters.
    pub fn new(be: &dyn Backend, n: usize, settings: AdamWSettings) -> Result<AdamW> {
        Ok(AdamW {
            settings,
            m: be.zeros(&[n], DType::F32)?,
            v: be.zeros(&[n], DType::F32)?,
            steps: 0,
        })
    }
}

impl Optimizer for AdamW {
    fn name(&self) -> &'static str {
        "AdamW"
    }

    fn describe(&self) -> String {
        self.settings.describe(self.name())
    }

    fn step(
        &mut self,
        be: &dyn Backend,
        params: &mut Tensor,
        grads: &Tensor,
        lr: f64,
        grad_scale: f64,
    ) -> Result<()> {
        self.steps += 1;
        let h = self.settings.step(lr, self.steps, grad_scale);
        be.adamw_step(params, grads, &mut self.m, &mut self.v, &h)
    }

    fn steps(&self) -> u64 {
        self.steps
    }

    fn state(&self) -> Vec<(&'static str, &Tensor)> {
        vec![("m", &self.m), ("v", &self.v)]
    }

    fn restore(
        &mut self,
        be: &dyn Backend,
        steps: u64,
        get: &mut dyn FnMut(&'static str) -> Result<Tensor>,
    ) -> Result<()> {
        super::restore_named(be, get, &mut [("m", &mut self.m), ("v", &mut self.v)])?;
        self.steps = steps;
        Ok(())
    }
}
