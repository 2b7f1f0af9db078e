//! The optimizer's view of the adapters: every LoRA A and B laid end to end in one flat f32
//! buffer (with its gradient and both AdamW moments beside it), so that clipping and the
//! update are each one op over one buffer, and dynamic loss scaling for f16 backends.

use crate::backend::{AdamW, Backend};
use crate::error::Result;
use crate::lora::{LoraGrads, LoraSet};
use crate::tensor::{DType, Tensor};

/// AdamW's settings that do not change from step to step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWSettings {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

/// Flat parameters, gradients and moments of a run of a `LoraSet`'s modules, in the set's
/// order: module i's A, module i's B, module i+1's A, ... (one optimizer per learning rate:
/// the UNet's adapters and the text encoder's).
pub struct FlatOptimizer {
    /// The modules of the set this optimizer owns.
    pub modules: std::ops::Range<usize>,
    pub params: Tensor,
    pub grads: Tensor,
    pub m: Tensor,
    pub v: Tensor,
    /// Optimizer steps taken so far.
    pub step: u64,
    pub settings: AdamWSettings,
}

impl FlatOptimizer {
    /// An optimizer for every module of `lora`.
    pub fn new(be: &dyn Backend, lora: &LoraSet, settings: AdamWSettings) -> Result<Self> {
        Self::for_modules(be, lora, 0..lora.len(), settings)
    }

    /// An optimizer for the modules `modules` of `lora`.
    pub fn for_modules(
        be: &dyn Backend,
        lora: &LoraSet,
        modules: std::ops::Range<usize>,
        settings: AdamWSettings,
    ) -> Result<Self> {
        let params = gather(
            be,
            lora.modules()[modules.clone()]
                .iter()
                .flat_map(|m| [&m.down, &m.up]),
        )?;
        let n = params.numel();
        Ok(FlatOptimizer {
            modules,
            params,
            grads: be.zeros(&[n], DType::F32)?,
            m: be.zeros(&[n], DType::F32)?,
            v: be.zeros(&[n], DType::F32)?,
            step: 0,
            settings,
        })
    }

    /// Copies the accumulated gradients into the flat buffer.
    pub fn load_grads(&mut self, be: &dyn Backend, grads: &LoraGrads) -> Result<()> {
        let r = self.modules.clone();
        let pairs = grads.down[r.clone()]
            .iter()
            .zip(&grads.up[r])
            .flat_map(|(d, u)| [d, u]);
        self.grads = gather(be, pairs)?;
        Ok(())
    }

    /// ‖g‖ of the flat gradient (not finite after an f16 overflow).
    pub fn grad_norm(&self, be: &dyn Backend) -> Result<f64> {
        Ok(be.sum_squares(&self.grads)?.sqrt())
    }

    /// One AdamW step at learning rate `lr`, every gradient multiplied by `grad_scale`
    /// (1/loss scale times the clipping coefficient).
    pub fn update(&mut self, be: &dyn Backend, lr: f64, grad_scale: f64) -> Result<()> {
        self.step += 1;
        let s = &self.settings;
        let h = AdamW {
            lr,
            beta1: s.beta1,
            beta2: s.beta2,
            eps: s.eps,
            weight_decay: s.weight_decay,
            step: self.step,
            grad_scale,
        };
        be.adamw_step(&mut self.params, &self.grads, &mut self.m, &mut self.v, &h)
    }

    /// Writes the flat parameters back into the adapters the model reads.
    pub fn store(&self, be: &dyn Backend, lora: &mut LoraSet) -> Result<()> {
        let flat = be.to_f32_vec(&self.params)?;
        let mut at = 0;
        for m in &mut lora.modules_mut()[self.modules.clone()] {
            for t in [&mut m.down, &mut m.up] {
                let n = t.numel();
                *t = be.tensor_from_f32(t.dims(), &flat[at..at + n], t.dtype())?;
                at += n;
            }
        }
        Ok(())
    }
}

fn gather<'a>(be: &dyn Backend, parts: impl Iterator<Item = &'a Tensor>) -> Result<Tensor> {
    let mut flat = Vec::new();
    for t in parts {
        flat.extend(be.to_f32_vec(t)?);
    }
    be.tensor_from_f32(&[flat.len()], &flat, DType::F32)
}

/// The clipping coefficient for gradient norm `norm` and limit `max_norm` (0 = no clipping),
/// as torch's clip_grad_norm_: min(1, max_norm/(norm + 1e-6)).
pub fn clip_coefficient(norm: f64, max_norm: f64) -> f64 {
    if max_norm <= 0.0 {
        1.0
    } else {
        (max_norm / (norm + 1e-6)).min(1.0)
    }
}

/// Dynamic loss scaling (as torch.cuda.amp.GradScaler): the loss gradient is multiplied by
/// `scale` so small f16 gradients do not flush to zero; a step whose gradients overflow is
/// skipped (never applied) and halves the scale; 2000 good steps in a row double it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LossScaler {
    pub enabled: bool,
    pub scale: f64,
    pub good_steps: u32,
    /// Optimizer steps skipped for non-finite gradients.
    pub skipped: u64,
}

impl LossScaler {
    const GROWTH_INTERVAL: u32 = 2000;

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
