//! The gradient norm and AdamW on the flat f32 buffers (kernels/optim.cu).

use super::super::backend::CudaBackend;
use super::super::launch::{kernels, In, LaunchCfg, Out};
use super::super::tiles::SQ_CHUNK;
use super::{alloc, buffer, by_dtype, float_dtype, input, int, output, BLOCK};
use crate::backend::{check, AdamW, OptimOps};
use crate::error::Result;
use crate::tensor::{DType, Tensor};

kernels! {
    module "optim";
    fn sum_squares_f32(x: In, partial: Out, n: i32);
    fn sum_squares_f16(x: In, partial: Out, n: i32);
    fn adamw_f32(p: Out, grad: In, m: Out, v: Out, b1: f32, b2: f32, c1: f32, c2: f32, eps: f32,
        decay: f32, step: f32, rbc2: f32, gs: f32, n: i32);
}

impl OptimOps for CudaBackend {
    fn sum_squares(&self, x: &Tensor) -> Result<f64> {
        const OP: &str = "sum_squares";
        let d = float_dtype(OP, "x", x)?;
        if x.numel() == 0 {
            return Ok(0.0);
        }
        let blocks = x.numel().div_ceil(SQ_CHUNK);
        let mut partial = alloc(self, [blocks], DType::F64)?;
        let f = by_dtype!(d, OP, sum_squares_f32, sum_squares_f16);
        f(
            self.device(),
            LaunchCfg::new((int(OP, "x", blocks)? as u32, 1, 1), (BLOCK, 1, 1), 0),
            input(self, OP, "x", x)?,
            output(self, OP, "partial", &mut partial)?,
            int(OP, "x", x.numel())?,
        )?;
        let buf = buffer(self, OP, "partial", &partial)?;
        let mut bytes = vec![0u8; blocks * 8];
        self.device().download(buf, &mut bytes)?;
        Ok(bytemuck::pod_collect_to_vec::<u8, f64>(&bytes).iter().sum())
    }

    fn adamw_step(
        &self,
        params: &mut Tensor,
        grads: &Tensor,
        m: &mut Tensor,
        v: &mut Tensor,
        h: &AdamW,
    ) -> Result<()> {
        const OP: &str = "adamw_step";
        check::diffusion::adamw(params, grads, m, v, h)?;
        // The same f32 constants as the CPU backend's loop.
        let bc1 = 1.0 - h.beta1.powi(h.step.min(i32::MAX as u64) as i32);
        let bc2 = 1.0 - h.beta2.powi(h.step.min(i32::MAX as u64) as i32);
        let n = params.numel();
        let gi = input(self, OP, "grads", grads)?;
        let po = output(self, OP, "params", params)?;
        let mo = output(self, OP, "m", m)?;
        let vo = output(self, OP, "v", v)?;
        adamw_f32(
            self.device(),
            // One thread per float4 and one per tail element (kernels/optim.cu).
            LaunchCfg::for_items(n / 4 + n % 4, BLOCK),
            po,
            gi,
            mo,
            vo,
            h.beta1 as f32,
            h.beta2 as f32,
            (1.0 - h.beta1) as f32,
            (1.0 - h.beta2) as f32,
            h.eps as f32,
            (1.0 - h.lr * h.weight_decay) as f32,
            (h.lr / bc1) as f32,
            (1.0 / bc2.sqrt()) as f32,
            h.grad_scale as f32,
            int(OP, "params", n)?,
        )
    }
}
