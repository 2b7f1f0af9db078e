//! AdamW8bit and Lion8bit: bitsandbytes' blockwise 8-bit optimizers (`bnb.optim.AdamW8bit`,
//! `bnb.optim.Lion8bit`, what kohya's `AdamW8bit` / `Lion8bit` build), one launch per step
//! over the flat buffer (`Backend::adamw8bit_step`, `Backend::lion8bit_step`; the update and
//! the quantisation in src/backend/cpu/optim8.rs and src/backend/quant.rs).
//!
//! State: per moment a byte code per parameter (u8) and the absmax of each block of 256 (f32):
//! `m_codes`, `m_absmax` (and `v_codes`, `v_absmax` for AdamW8bit), 1 + 4/256 bytes per
//! parameter per moment instead of 4.
//!
//! Where lorafuse differs from bitsandbytes: bitsandbytes quantises each parameter tensor on
//! its own, its blocks starting at the tensor's first element, and keeps f32 state for
//! tensors of fewer than `min_8bit_size` = 4096 elements (at rank 8, SD1.5's 320-channel
//! adapters). lorafuse quantises the whole flat buffer of a group (every adapter's down and up
//! end to end) in blocks of 256, so a block can span the end of one tensor and the start of the
//! next, and every tensor's state is 8-bit: one launch per step, and the state is a quarter of
//! AdamW's throughout. A block's absmax then covers values of two tensors; with LoRA's small
//! tensors of like scale that costs the codes of the smaller one a little resolution.

use super::{restore_named, AdamWSettings, LionSettings, Optimizer};
use crate::backend::quant::{dynamic_map, quant_blocks};
use crate::backend::{Backend, Quantized};
use crate::error::Result;
use crate::tensor::{DType, Tensor};

/// One 8-bit moment: its codes, its blocks' absmax and the map the codes index.
pub struct QuantState {
    pub codes: Tensor,
    pub absmax: Tensor,
    map: Tensor,
}

impl QuantState {
    /// Zero codes and absmax for `n` values (the value of every code is then 0), with
    /// bitsandbytes' signed (first moment) or unsigned (second moment) dynamic map.
    fn new(be: &dyn Backend, n: usize, signed: bool) -> Result<QuantState> {
        Ok(QuantState {
            codes: be.zeros(&[n], DType::U8)?,
            absmax: be.zeros(&[quant_blocks(n)], DType::F32)?,
            map: be.tensor_from_f32(&[256], &dynamic_map(signed), DType::F32)?,
        })
    }

    fn arg(&mut self) -> Quantized<'_> {
        Quantized {
            codes: &mut self.codes,
            absmax: &mut self.absmax,
            map: &self.map,
        }
    }
}

/// AdamW8bit over one flat buffer.
pub struct AdamW8bit {
    pub settings: AdamWSettings,
    pub m: QuantState,
    pub v: QuantState,
    steps: u64,
}

impl AdamW8bit {
    pub fn new(be: &dyn Backend, n: usize, settings: AdamWSettings) -> Result<AdamW8bit> {
        Ok(AdamW8bit {
            settings,
            m: QuantState::new(be, n, true)?,
            v: QuantState::new(be, n, false)?,
            steps: 0,
        })
    }
}

impl Optimizer for AdamW8bit {
    fn name(&self) -> &'static str {
        "AdamW8bit"
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
        be.adamw8bit_step(params, grads, self.m.arg(), self.v.arg(), &h)
    }

    fn steps(&self) -> u64 {
        self.steps
    }

    fn state(&self) -> Vec<(&'static str, &Tensor)> {
        vec![
            ("m_codes", &self.m.codes),
            ("m_absmax", &self.m.absmax),
            ("v_codes", &self.v.codes),
            ("v_absmax", &self.v.absmax),
        ]
    }

    fn restore(
        &mut self,
        be: &dyn Backend,
        steps: u64,
        get: &mut dyn FnMut(&'static str) -> Result<Tensor>,
    ) -> Result<()> {
        restore_named(
            be,
            get,
            &mut [
                ("m_codes", &mut self.m.codes),
                ("m_absmax", &mut self.m.absmax),
                ("v_codes", &mut self.v.codes),
                ("v_absmax", &mut self.v.absmax),
            ],
        )?;
        self.steps = steps;
        Ok(())
    }
}

/// Lion8bit over one flat buffer.
pub struct Lion8bit {
    pub settings: LionSettings,
    pub m: QuantState,
    steps: u64,
}

impl Lion8bit {
    pub fn new(be: &dyn Backend, n: usize, settings: LionSettings) -> Result<Lion8bit> {
        Ok(Lion8bit {
            settings,
            m: QuantState::new(be, n, true)?,
            steps: 0,
        })
    }
}

impl Optimizer for Lion8bit {
    fn name(&self) -> &'static str {
        "Lion8bit"
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
        be.lion8bit_step(params, grads, self.m.arg(), &h)
    }

    fn steps(&self) -> u64 {
        self.steps
    }

    fn state(&self) -> Vec<(&'static str, &Tensor)> {
        vec![("m_codes", &self.m.codes), ("m_absmax", &self.m.absmax)]
    }

    fn restore(
        &mut self,
        be: &dyn Backend,
        steps: u64,
        get: &mut dyn FnMut(&'static str) -> Result<Tensor>,
    ) -> Result<()> {
        restore_named(
            be,
            get,
            &mut [
                ("m_codes", &mut self.m.codes),
                ("m_absmax", &mut self.m.absmax),
            ],
        )?;
        self.steps = steps;
        Ok(())
    }
}
