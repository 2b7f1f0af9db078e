//! The 8-bit blockwise AdamW and Lion on the flat buffers (kernels/optim8.cu): one launch per
//! step, one block per quantisation block; the f32 constants and the checks are the CPU
//! backend's (cpu/optim8.rs).

use super::super::backend::CudaBackend;
use super::super::launch::{kernels, In, LaunchCfg, Out};
use super::super::tiles::QUANT_BLOCK;
use super::{input, int, output};
use crate::backend::cpu::optim8::{check_quantized, Adam8Consts, Lion8Consts};
use crate::backend::quant::quant_blocks;
use crate::backend::{check, AdamW, Lion, Quantized};
use crate::error::Result;
use crate::tensor::Tensor;

kernels! {
    module "optim8";
    fn adamw8bit_f32(p: Out, grad: In, cm: Out, cv: Out, am: Out, av: Out, q1: In, q2: In,
        b1: f32, b2: f32, c1: f32, c2: f32, step: f32, eps: f32, decay: f32, gs: f32, n: i32);
    fn lion8bit_f32(p: Out, grad: In, cm: Out, am: Out, q1: In, b1: f32, b2: f32, c1: f32,
        c2: f32, lr: f32, decay: f32, gs: f32, n: i32);
}

/// One block of QUANT_BLOCK threads per quantisation block.
fn cfg(op: &'static str, n: usize) -> Result<LaunchCfg> {
    let blocks = int(op, "params", quant_blocks(n))? as u32;
    Ok(LaunchCfg::new(
        (blocks, 1, 1),
        (QUANT_BLOCK as u32, 1, 1),
        0,
    ))
}

impl CudaBackend {
    pub(crate) fn adamw8bit(
        &self,
        params: &mut Tensor,
        grads: &Tensor,
        m: Quantized<'_>,
        v: Quantized<'_>,
        h: &AdamW,
    ) -> Result<()> {
        const OP: &str = "adamw8bit_step";
        check::diffusion::flat_f32(OP, &[("params", params), ("grads", grads)])?;
        let n = params.numel();
        check_quantized(OP, &m, n)?;
        check_quantized(OP, &v, n)?;
        if n == 0 {
            return Ok(());
        }
        let k = Adam8Consts::new(h);
        adamw8bit_f32(
            self.device(),
            cfg(OP, n)?,
            output(self, OP, "params", params)?,
            input(self, OP, "grads", grads)?,
            output(self, OP, "m codes", m.codes)?,
            output(self, OP, "v codes", v.codes)?,
            output(self, OP, "m absmax", m.absmax)?,
            output(self, OP, "v absmax", v.absmax)?,
            input(self, OP, "m map", m.map)?,
            input(self, OP, "v map", v.map)?,
            k.b1,
            k.b2,
            k.c1,
            k.c2,
            k.step,
            k.eps,
            k.decay,
            k.gs,
            int(OP, "params", n)?,
        )
    }

    pub(crate) fn lion8bit(
        &self,
        params: &mut Tensor,
        grads: &Tensor,
        m: Quantized<'_>,
        h: &Lion,
    ) -> Result<()> {
        const OP: &str = "lion8bit_step";
        check::diffusion::flat_f32(OP, &[("params", params), ("grads", grads)])?;
        let n = params.numel();
        check_quantized(OP, &m, n)?;
        if n == 0 {
            return Ok(());
        }
        let k = Lion8Consts::new(h);
        lion8bit_f32(
            self.device(),
            cfg(OP, n)?,
            output(self, OP, "params", params)?,
            input(self, OP, "grads", grads)?,
            output(self, OP, "m codes", m.codes)?,
            output(self, OP, "m absmax", m.absmax)?,
            input(self, OP, "m map", m.map)?,
            k.b1,
            k.b2,
            k.c1,
            k.c2,
            k.lr,
            k.decay,
            k.gs,
            int(OP, "params", n)?,
        )
    }
}
