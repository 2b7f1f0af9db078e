//! The optimizer's ops on the flat LoRA buffers: the squared gradient norm (clipping and
//! f16 overflow detection), AdamW, Lion, SGD with Nesterov momentum, Prodigy's two halves and
//! DAdaptAdam's first half; the 8-bit AdamW and Lion are in optim8.rs, Adafactor in
//! adafactor.rs (formulas on `OptimOps` in src/backend/mod.rs; the CUDA kernels in
//! kernels/optim.cu use the same f32 constants and order of operations).
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
use crate::backend::{
    check, AdafactorBuffers, AdafactorStep, AdafactorTable, AdamW, DAdaptBuffers, DAdaptMoments,
    Lion, OptimOps, ProdigyBuffers, ProdigyMoments, ProdigySums, ProdigyUpdate, Quantized,
    SgdNesterov,
};
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

    fn lion_step(
        &self,
        params: &mut Tensor,
        grads: &Tensor,
        m: &mut Tensor,
        h: &Lion,
    ) -> Result<()> {
        const OP: &str = "lion_step";
        check::diffusion::flat_f32(OP, &[("params", params), ("grads", grads), ("m", m)])?;
        let k = LionConsts::new(h);
        let g = data::<f32>(OP, "grads", grads)?;
        let p = data_mut::<f32>(OP, "params", params)?;
        let m = data_mut::<f32>(OP, "m", m)?;
        p.par_chunks_mut(CHUNK)
            .zip(m.par_chunks_mut(CHUNK))
            .zip(g.par_chunks(CHUNK))
            .for_each(|((p, m), g)| {
                for i in 0..p.len() {
                    let gi = g[i] * k.gs;
                    let c = k.b1 * m[i] + k.c1 * gi;
                    p[i] = p[i] * k.decay - k.lr * sign(c);
                    m[i] = k.b2 * m[i] + k.c2 * gi;
                }
            });
        Ok(())
    }

    fn sgd_nesterov_step(
        &self,
        params: &mut Tensor,
        grads: &Tensor,
        buf: &mut Tensor,
        h: &SgdNesterov,
    ) -> Result<()> {
        const OP: &str = "sgd_nesterov_step";
        check::diffusion::flat_f32(OP, &[("params", params), ("grads", grads), ("buf", buf)])?;
        let (mu, wd, lr, gs) = (
            h.momentum as f32,
            h.weight_decay as f32,
            h.lr as f32,
            h.grad_scale as f32,
        );
        let g = data::<f32>(OP, "grads", grads)?;
        let p = data_mut::<f32>(OP, "params", params)?;
        let b = data_mut::<f32>(OP, "buf", buf)?;
        p.par_chunks_mut(CHUNK)
            .zip(b.par_chunks_mut(CHUNK))
            .zip(g.par_chunks(CHUNK))
            .for_each(|((p, b), g)| {
                for i in 0..p.len() {
                    let gi = g[i] * gs + wd * p[i];
                    b[i] = mu * b[i] + gi;
                    p[i] -= lr * (gi + mu * b[i]);
                }
            });
        Ok(())
    }

    fn prodigy_moments(
        &self,
        t: ProdigyBuffers<'_>,
        grads: &Tensor,
        h: &ProdigyMoments,
    ) -> Result<ProdigySums> {
        const OP: &str = "prodigy_moments";
        check::diffusion::flat_f32(
            OP,
            &[
                ("params", t.params),
                ("grads", grads),
                ("p0", t.p0),
                ("m", t.m),
                ("v", t.v),
                ("s", t.s),
            ],
        )?;
        let k = ProdigyConsts::new(h);
        let p = data::<f32>(OP, "params", t.params)?;
        let p0 = data::<f32>(OP, "p0", t.p0)?;
        let g = data::<f32>(OP, "grads", grads)?;
        let m = data_mut::<f32>(OP, "m", t.m)?;
        let v = data_mut::<f32>(OP, "v", t.v)?;
        let s = data_mut::<f32>(OP, "s", t.s)?;
        // Per fixed chunk, the chunks added in order: the same bits on any number of threads.
        let partial: Vec<(f64, f64)> = m
            .par_chunks_mut(CHUNK)
            .zip(v.par_chunks_mut(CHUNK))
            .zip(s.par_chunks_mut(CHUNK))
            .zip(g.par_chunks(CHUNK))
            .zip(p.par_chunks(CHUNK).zip(p0.par_chunks(CHUNK)))
            .map(|((((m, v), s), g), (p, p0))| {
                let (mut dot, mut abs) = (0.0f64, 0.0f64);
                for i in 0..m.len() {
                    let gi = g[i] * k.gs + k.coupled * p[i];
                    dot += gi as f64 * (p0[i] - p[i]) as f64;
                    m[i] = k.b1 * m[i] + k.c1 * gi;
                    v[i] = k.b2 * v[i] + k.c2 * gi * gi;
                    s[i] = k.b3 * s[i] + k.cs * gi;
                    abs += s[i].abs() as f64;
                }
                (dot, abs)
            })
            .collect();
        Ok(ProdigySums {
            dot: partial.iter().map(|x| x.0).sum(),
            s_abs: partial.iter().map(|x| x.1).sum(),
        })
    }

    fn dadapt_moments(
        &self,
        t: DAdaptBuffers<'_>,
        grads: &Tensor,
        h: &DAdaptMoments,
    ) -> Result<ProdigySums> {
        const OP: &str = "dadapt_moments";
        check::diffusion::flat_f32(
            OP,
            &[
                ("params", t.params),
                ("grads", grads),
                ("m", t.m),
                ("v", t.v),
                ("s", t.s),
            ],
        )?;
        let k = DAdaptConsts::new(h);
        let p = data::<f32>(OP, "params", t.params)?;
        let g = data::<f32>(OP, "grads", grads)?;
        let m = data_mut::<f32>(OP, "m", t.m)?;
        let v = data_mut::<f32>(OP, "v", t.v)?;
        let s = data_mut::<f32>(OP, "s", t.s)?;
        // Per fixed chunk, the chunks added in order: the same bits on any number of threads.
        let partial: Vec<(f64, f64)> = m
            .par_chunks_mut(CHUNK)
            .zip(v.par_chunks_mut(CHUNK))
            .zip(s.par_chunks_mut(CHUNK))
            .zip(g.par_chunks(CHUNK).zip(p.par_chunks(CHUNK)))
            .map(|(((m, v), s), (g, p))| {
                let (mut dot, mut abs) = (0.0f64, 0.0f64);
                for i in 0..m.len() {
                    let gi = g[i] * k.gs + k.coupled * p[i];
                    dot += gi as f64 * (s[i] / (v[i].sqrt() + k.eps)) as f64;
                    m[i] = k.b1 * m[i] + k.c1 * gi;
                    v[i] = k.b2 * v[i] + k.c2 * gi * gi;
                    s[i] = k.sb2 * s[i] + k.cs * gi;
                    abs += s[i].abs() as f64;
                }
                (dot, abs)
            })
            .collect();
        Ok(ProdigySums {
            dot: partial.iter().map(|x| x.0).sum(),
            s_abs: partial.iter().map(|x| x.1).sum(),
        })
    }

    fn adamw8bit_step(
        &self,
        params: &mut Tensor,
        grads: &Tensor,
        m: Quantized<'_>,
        v: Quantized<'_>,
        h: &AdamW,
    ) -> Result<()> {
        self.adamw8bit(params, grads, m, v, h)
    }

    fn lion8bit_step(
        &self,
        params: &mut Tensor,
        grads: &Tensor,
        m: Quantized<'_>,
        h: &Lion,
    ) -> Result<()> {
        self.lion8bit(params, grads, m, h)
    }

    fn adafactor_step(
        &self,
        params: &mut Tensor,
        grads: &Tensor,
        table: &AdafactorTable,
        t: AdafactorBuffers<'_>,
        h: &AdafactorStep,
    ) -> Result<f64> {
        self.adafactor(params, grads, table, t, h)
    }

    fn prodigy_update(
        &self,
        params: &mut Tensor,
        m: &Tensor,
        v: &Tensor,
        h: &ProdigyUpdate,
    ) -> Result<()> {
        const OP: &str = "prodigy_update";
        check::diffusion::flat_f32(OP, &[("params", params), ("m", m), ("v", v)])?;
        let (decay, dlr, d_eps) = ((1.0 - h.decay * h.dlr) as f32, h.dlr as f32, h.d_eps as f32);
        let m = data::<f32>(OP, "m", m)?;
        let v = data::<f32>(OP, "v", v)?;
        let p = data_mut::<f32>(OP, "params", params)?;
        p.par_chunks_mut(CHUNK)
            .zip(m.par_chunks(CHUNK))
            .zip(v.par_chunks(CHUNK))
            .for_each(|((p, m), v)| {
                for i in 0..p.len() {
                    p[i] = p[i] * decay - dlr * m[i] / (v[i].sqrt() + d_eps);
                }
            });
        Ok(())
    }
}

/// torch.sign: −1, 0 or 1 (0 for ±0).
fn sign(x: f32) -> f32 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        0.0
    }
}

/// Lion's f32 constants, shared with the CUDA launcher's arguments.
pub(crate) struct LionConsts {
    pub b1: f32,
    pub b2: f32,
    pub c1: f32,
    pub c2: f32,
    pub decay: f32,
    pub lr: f32,
    pub gs: f32,
}

impl LionConsts {
    pub(crate) fn new(h: &Lion) -> LionConsts {
        LionConsts {
            b1: h.beta1 as f32,
            b2: h.beta2 as f32,
            c1: (1.0 - h.beta1) as f32,
            c2: (1.0 - h.beta2) as f32,
            decay: (1.0 - h.lr * h.weight_decay) as f32,
            lr: h.lr as f32,
            gs: h.grad_scale as f32,
        }
    }
}

/// Prodigy's first-half f32 constants, shared with the CUDA launcher's arguments.
pub(crate) struct ProdigyConsts {
    pub b1: f32,
    pub b2: f32,
    pub b3: f32,
    pub c1: f32,
    pub c2: f32,
    pub cs: f32,
    pub coupled: f32,
    pub gs: f32,
}

impl ProdigyConsts {
    pub(crate) fn new(h: &ProdigyMoments) -> ProdigyConsts {
        ProdigyConsts {
            b1: h.beta1 as f32,
            b2: h.beta2 as f32,
            b3: h.beta3 as f32,
            c1: (h.d * (1.0 - h.beta1)) as f32,
            c2: (h.d * h.d * (1.0 - h.beta2)) as f32,
            cs: h.s_scale as f32,
            coupled: h.coupled_decay as f32,
            gs: h.grad_scale as f32,
        }
    }
}

/// DAdaptAdam's first-half f32 constants, shared with the CUDA launcher's arguments.
pub(crate) struct DAdaptConsts {
    pub b1: f32,
    pub b2: f32,
    /// sqrt(β2).
    pub sb2: f32,
    /// dlr·(1 − β1).
    pub c1: f32,
    /// 1 − β2.
    pub c2: f32,
    /// dlr·(1 − sqrt(β2)).
    pub cs: f32,
    pub eps: f32,
    pub coupled: f32,
    pub gs: f32,
}

impl DAdaptConsts {
    pub(crate) fn new(h: &DAdaptMoments) -> DAdaptConsts {
        let sb2 = h.beta2.sqrt();
        DAdaptConsts {
            b1: h.beta1 as f32,
            b2: h.beta2 as f32,
            sb2: sb2 as f32,
            c1: (h.dlr * (1.0 - h.beta1)) as f32,
            c2: (1.0 - h.beta2) as f32,
            cs: (h.dlr * (1.0 - sb2)) as f32,
            eps: h.eps as f32,
            coupled: h.coupled_decay as f32,
            gs: h.grad_scale as f32,
        }
    }
}
