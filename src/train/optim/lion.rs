//! Lion (lion-pytorch's update, decoupled weight decay), one launch over the flat buffer
//! (`Backend::lion_step`):
//!
//!   g = grad_scale·grad;  c = β1·m + (1−β1)·g
//!   p = p·(1 − lr·wd) − lr·sign(c);  m = β2·m + (1−β2)·g
//!
//! State: the momentum `m` (f32, one element per parameter).

use super::Optimizer;
use crate::backend::Backend;
use crate::error::Result;
use crate::tensor::{DType, Tensor};

/// Lion's settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LionSettings {
    pub beta1: f64,
    pub beta2: f64,
    pub weight_decay: f64,
}

impl Default for LionSettings {
    /// lion-pytorch's defaults, which kohya passes on unchanged.
    fn default() -> Self {
        LionSettings {
            beta1: 0.9,
            beta2: 0.99,
            weight_decay: 0.0,
        }
    }
}

impl LionSettings {
    /// kohya's `ss_optimizer` text for an optimizer `name` with these settings.
    pub(super) fn describe(&self, name: &str) -> String {
        format!(
            "{name}(weight_decay={},betas=({},{}))",
            self.weight_decay, self.beta1, self.beta2
        )
    }

    /// The hyper-parameters of a step at rate `lr`.
    pub(super) fn step(&self, lr: f64, grad_scale: f64) -> crate::backend::Lion {
        crate::backend::Lion {
            lr,
            beta1: self.beta1,
            beta2: self.beta2,
            weight_decay: self.weight_decay,
            grad_scale,
        }
    }
}

/// Lion over one flat buffer.
pub struct Lion {
    pub settings: LionSettings,
    pub m: Tensor,
    steps: u64,
}

impl Lion {
    /// Zero momentum for `n` parameters.
    pub fn new(be: &dyn Backend, n: usize, settings: LionSettings) -> Result<Lion> {
        Ok(Lion {
            settings,
            m: be.zeros(&[n], DType::F32)?,
            steps: 0,
        })
    }
}

impl Optimizer for Lion {
    fn name(&self) -> &'static str {
        "Lion"
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
        let h = self.settings.step(lr, grad_scale);
        be.lion_step(params, grads, &mut self.m, &h)
    }

    fn steps(&self) -> u64 {
        self.steps
    }

    fn state(&self) -> Vec<(&'static str, &Tensor)> {
        vec![("m", &self.m)]
    }

    fn restore(
        &mut self,
        be: &dyn Backend,
        steps: u64,
        get: &mut dyn FnMut(&'static str) -> Result<Tensor>,
    ) -> Result<()> {
        super::restore_named(be, get, &mut [("m", &mut self.m)])?;
        self.steps = steps;
        Ok(())
    }
}
