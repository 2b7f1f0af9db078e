//! The optimizer's ops on the flat LoRA buffers: the squared gradient norm (clipping and
//! f16 overflow detection) and AdamW.
//!
//! AdamW as PyTorch's `torch.optim.AdamW` (decoupled weight decay), with g = grad_scale·grad
//! (grad_scale = clip coefficient / loss scale) and t = step (1-based):
//!   p ← p·(1 - lr·wd)
//!   m ← β1·m + (1-β1)·g;   v ← β2·v + (1-β2)·g²
//!   p ← p - lr/(1-β1ᵗ) · m / (sqrt(v/(1-β2ᵗ)) + eps)
//! params, grads, m, v: f32, one element per trainable scalar; all updated in place but grads.

use rayon::prelude::*;

use super::elementwise::CHUNK;
use super::CpuBackend;
use super::{data, data_mut};
use crate::backend::{check, AdamW, OptimOps};
use crate::error::Result;
use crate::tensor::{DType, Tensor};

impl OptimOps for CpuBackend {
    fn sum_squares(&self, x: &Tensor) -> Result<f64> {
        // Partial sums per fixed chunk, added in order: the same input gives the same bits on any
        // number of threads (a rayon `sum` would associate by work stealing), which keeps clipping
        // and therefore whole training runs reproducible.
        let partial: Vec<f64> = match x.dtype() {
            DType::F32 => data::<f32>("sum_squares", "x", x)?
                .par_chunks(CHUNK)
                .map(|c| c.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>())
                .collect(),
            DType::F64 => data::<f64>("sum_squares", "x", x)?
                .par_chunks(CHUNK)
                .map(|c| c.iter().map(|&v| v * v).sum::<f64>())
                .collect(),
            d => return Err(super::cpu_dtype_error("sum_squares", d)),
        };
        Ok(partial.iter().sum())
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
        let g = data::<f32>(OP, "grads", grads)?;
        let bc1 = 1.0 - h.beta1.powi(h.step.min(i32::MAX as u64) as i32);
        let bc2 = 1.0 - h.beta2.powi(h.step.min(i32::MAX as u64) as i32);
        let (b1, b2, eps) = (h.beta1 as f32, h.beta2 as f32, h.eps as f32);
        // 1 - β in f64 first: 1 - 0.999 in f32 is off by 5e-5 relative.
        let (c1, c2) = ((1.0 - h.beta1) as f32, (1.0 - h.beta2) as f32);
        let decay = (1.0 - h.lr * h.weight_decay) as f32;
        let step_size = (h.lr / bc1) as f32;
        let rbc2 = (1.0 / bc2.sqrt()) as f32;
        let gs = h.grad_scale as f32;
        let p = data_mut::<f32>(OP, "params", params)?;
        let m = data_mut::<f32>(OP, "m", m)?;
        let v = data_mut::<f32>(OP, "v", v)?;
        p.par_chunks_mut(CHUNK)
            .zip(m.par_chunks_mut(CHUNK))
            .zip(v.par_chunks_mut(CHUNK))
            .zip(g.par_chunks(CHUNK))
            .for_each(|(((p, m), v), g)| {
                for i in 0..p.len() {
                    let gi = g[i] * gs;
                    m[i] = b1 * m[i] + c1 * gi;
                    v[i] = b2 * v[i] + c2 * gi * gi;
                    let denom = v[i].sqrt() * rbc2 + eps;
                    p[i] = p[i] * decay - step_size * m[i] / denom;
                }
            });
        Ok(())
    }
}
