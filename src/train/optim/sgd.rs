//! SGD with Nesterov momentum (kohya's `SGDNesterov`: torch.optim.SGD with nesterov=True,
//! dampening 0, momentum 0.9 unless given), one launch over the flat buffer
//! (`Backend::sgd_nesterov_step`):
//!
//!   g = grad_scale·grad + wd·p;  b = μ·b + g;  p = p − lr·(g + μ·b)
//!
//! torch starts the buffer as a copy of the first gradient; μ·0 + g is that same value, so a
//! zero buffer needs no first-step case. State: the buffer `momentum_buffer`.

use super::Optimizer;
use crate::backend::Backend;
use crate::error::Result;
use crate::tensor::{DType, Tensor};

/// SGDNesterov's settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdSettings {
    pub momentum: f64,
    pub weight_decay: f64,
}

impl Default for SgdSettings {
    /// kohya's: momentum 0.9 (it sets it when the arguments do not), torch's weight decay 0.
    fn default() -> Self {
        SgdSettings {
            momentum: 0.9,
            weight_decay: 0.0,
        }
    }
}

/// SGD with Nesterov momentum over one flat buffer.
pub struct SgdNesterov {
    pub settings: SgdSettings,
    pub buf: Tensor,
    steps: u64,
}

impl SgdNesterov {
    /// A zero momentum buffer for `n` parameters.
    pub fn new(be: &dyn Backend, n: usize, settings: SgdSettings) -> Result<SgdNesterov> {
        Ok(SgdNesterov {
            settings,
            buf: be.zeros(&[n], DType::F32)?,
            steps: 0,
        })
    }
}

impl Optimizer for SgdNesterov {
    fn name(&self) -> &'static str {
        "SGDNesterov"
    }

    fn describe(&self) -> String {
        let s = &self.settings;
        format!(
            "SGD(nesterov=True,momentum={},weight_decay={})",
            s.momentum, s.weight_decay
        )
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
        let h = crate::backend::SgdNesterov {
            lr,
            momentum: self.settings.momentum,
            weight_decay: self.settings.weight_decay,
            grad_scale,
        };
        be.sgd_nesterov_step(params, grads, &mut self.buf, &h)
    }

    fn steps(&self) -> u64 {
        self.steps
    }

    fn state(&self) -> Vec<(&'static str, &Tensor)> {
        vec![("momentum_buffer", &self.buf)]
    }

    fn restore(
        &mut self,
        be: &dyn Backend,
        steps: u64,
        get: &mut dyn FnMut(&'static str) -> Result<Tensor>,
    ) -> Result<()> {
        super::restore_named(be, get, &mut [("momentum_buffer", &mut self.buf)])?;
        self.steps = steps;
        Ok(())
    }
}
