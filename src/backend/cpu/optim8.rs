//! The 8-bit blockwise optimizers on the flat f32 parameter buffer: bitsandbytes'
//! `AdamW8bit` and `Lion8bit` as its CUDA kernels compute them
//! (`kOptimizerStatic8bit2StateBlockwise`, `kOptimizerStatic8bit1StateBlockwise`), one block of
//! [`QUANT_BLOCK`] parameters at a time, in f32 with bitsandbytes' constants (β and 1 − β in
//! f32). Per block, with g = gs·grad:
//!
//! AdamW8bit (a non-finite grad leaves its parameter alone and its moments 0, as there):
//!   m = map1[cm]·absmax_m;  v = map2[cv]·absmax_v         (dequantise)
//!   v = v·β2 + ((1−β2)·g)·g;  m = m·β1 + (1−β1)·g
//!   absmax_m = max|m|, absmax_v = max|v| over the block
//!   p = (p + step·(m / (sqrt(v) + c2·eps))) · (1 − lr·wd)
//!       (c1 = 1 − β1ᵗ, c2 = sqrt(1 − β2ᵗ), step = −lr·c2/c1; decay after the step, as there)
//!   cm = quantize_signed(m / absmax_m), cv = quantize(v / absmax_v)   (requantise)
//!
//! Lion8bit:
//!   p = p·(1 − lr·wd);  m = map1[cm]·absmax_m
//!   u = lr·sign(m·β1 + (1−β1)·g);  m = m·β2 + (1−β2)·g;  absmax_m = max|m|;  p = p − u
//!   cm = quantize_signed(m / absmax_m)
//!
//! bitsandbytes divides and raises to powers with the GPU's fast approximations (`__fdividef`,
//! `__powf`); here (and in kernels/optim8.cu) division is exact and β^t is computed in f64 and
//! rounded: a code can differ from bitsandbytes' in the last step of a rounding tie.

use rayon::prelude::*;

use super::CpuBackend;
use super::{data, data_mut};
use crate::backend::quant::{quant_blocks, quantize, quantize_signed, QUANT_BLOCK};
use crate::backend::{check, AdamW, Lion, Quantized};
use crate::error::{Error, Result};
use crate::tensor::{CpuData, DType, Storage, Tensor};

/// Blocks per rayon task.
const BLOCKS_PER_TASK: usize = 64;

/// AdamW8bit's f32 constants, shared with the CUDA launcher's arguments.
pub(crate) struct Adam8Consts {
    pub b1: f32,
    pub b2: f32,
    pub c1: f32,
    pub c2: f32,
    /// −lr·sqrt(1 − β2ᵗ)/(1 − β1ᵗ).
    pub step: f32,
    /// sqrt(1 − β2ᵗ)·eps.
    pub eps: f32,
    /// 1 − lr·wd (1 when wd = 0).
    pub decay: f32,
    pub gs: f32,
}

impl Adam8Consts {
    pub(crate) fn new(h: &AdamW) -> Adam8Consts {
        let (b1, b2, lr) = (h.beta1 as f32, h.beta2 as f32, h.lr as f32);
        // β^t by libm's pow, as the fixture's Python computes it.
        let t = h.step as f64;
        let corr1 = (1.0 - (b1 as f64).powf(t)) as f32;
        let corr2 = ((1.0 - (b2 as f64).powf(t)) as f32).sqrt();
        Adam8Consts {
            b1,
            b2,
            c1: 1.0 - b1,
            c2: 1.0 - b2,
            step: -lr * corr2 / corr1,
            eps: corr2 * h.eps as f32,
            decay: 1.0 - lr * h.weight_decay as f32,
            gs: h.grad_scale as f32,
        }
    }
}

/// Lion8bit's f32 constants, shared with the CUDA launcher's arguments.
pub(crate) struct Lion8Consts {
    pub b1: f32,
    pub b2: f32,
    pub c1: f32,
    pub c2: f32,
    pub lr: f32,
    /// 1 − lr·wd.
    pub decay: f32,
    pub gs: f32,
}

impl Lion8Consts {
    pub(crate) fn new(h: &Lion) -> Lion8Consts {
        let (b1, b2, lr) = (h.beta1 as f32, h.beta2 as f32, h.lr as f32);
        Lion8Consts {
            b1,
            b2,
            c1: 1.0 - b1,
            c2: 1.0 - b2,
            lr,
            decay: 1.0 - lr * h.weight_decay as f32,
            gs: h.grad_scale as f32,
        }
    }
}

/// Checks one quantised state against `n` parameters: u8 codes [n], f32 absmax [blocks],
/// f32 map [256].
pub(crate) fn check_quantized(op: &'static str, q: &Quantized<'_>, n: usize) -> Result<()> {
    let bad = |name: &'static str, t: &Tensor, dtype: DType, len: usize| {
        if t.dtype() != dtype || t.numel() != len {
            Err(Error::BadValue {
                op,
                name,
                value: format!("{} {}", t.dtype(), t.shape()),
                expected: format!("{dtype} [{len}] for {n} parameters"),
            })
        } else {
            Ok(())
        }
    };
    bad("codes", q.codes, DType::U8, n)?;
    bad("absmax", q.absmax, DType::F32, quant_blocks(n))?;
    bad("map", q.map, DType::F32, 256)
}

fn bytes_mut<'a>(op: &'static str, name: &'static str, t: &'a mut Tensor) -> Result<&'a mut [u8]> {
    let got = t.dtype();
    match t.storage_mut() {
        Storage::Cpu(CpuData::U8(v)) => Ok(v),
        _ => Err(Error::DType {
            op,
            name,
            got,
            expected: "u8 on the CPU backend".into(),
        }),
    }
}

fn map_of(op: &'static str, t: &Tensor) -> Result<[f32; 256]> {
    data::<f32>(op, "map", t)?
        .try_into()
        .map_err(|_| Error::BadValue {
            op,
            name: "map",
            value: t.shape().to_string(),
            expected: "[256]".into(),
        })
}

impl CpuBackend {
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
        let k = Adam8Consts::new(h);
        let (q1, q2) = (map_of(OP, m.map)?, map_of(OP, v.map)?);
        let g = data::<f32>(OP, "grads", grads)?;
        let p = data_mut::<f32>(OP, "params", params)?;
        let cm = bytes_mut(OP, "m codes", m.codes)?;
        let cv = bytes_mut(OP, "v codes", v.codes)?;
        let am = data_mut::<f32>(OP, "m absmax", m.absmax)?;
        let av = data_mut::<f32>(OP, "v absmax", v.absmax)?;
        let task = QUANT_BLOCK * BLOCKS_PER_TASK;
        p.par_chunks_mut(task)
            .zip(g.par_chunks(task))
            .zip(cm.par_chunks_mut(task).zip(cv.par_chunks_mut(task)))
            .zip(
                am.par_chunks_mut(BLOCKS_PER_TASK)
                    .zip(av.par_chunks_mut(BLOCKS_PER_TASK)),
            )
            .for_each(|(((p, g), (cm, cv)), (am, av))| {
                for (((p, g), (cm, cv)), (am, av)) in p
                    .chunks_mut(QUANT_BLOCK)
                    .zip(g.chunks(QUANT_BLOCK))
                    .zip(cm.chunks_mut(QUANT_BLOCK).zip(cv.chunks_mut(QUANT_BLOCK)))
                    .zip(am.iter_mut().zip(av.iter_mut()))
                {
                    adam8_block(p, g, (cm, cv), (am, av), (&q1, &q2), &k);
                }
            });
        Ok(())
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
        let k = Lion8Consts::new(h);
        let q1 = map_of(OP, m.map)?;
        let g = data::<f32>(OP, "grads", grads)?;
        let p = data_mut::<f32>(OP, "params", params)?;
        let cm = bytes_mut(OP, "m codes", m.codes)?;
        let am = data_mut::<f32>(OP, "m absmax", m.absmax)?;
        let task = QUANT_BLOCK * BLOCKS_PER_TASK;
        p.par_chunks_mut(task)
            .zip(g.par_chunks(task))
            .zip(cm.par_chunks_mut(task))
            .zip(am.par_chunks_mut(BLOCKS_PER_TASK))
            .for_each(|(((p, g), cm), am)| {
                for (((p, g), cm), am) in p
                    .chunks_mut(QUANT_BLOCK)
                    .zip(g.chunks(QUANT_BLOCK))
                    .zip(cm.chunks_mut(QUANT_BLOCK))
                    .zip(am.iter_mut())
                {
                    lion8_block(p, g, cm, am, &q1, &k);
                }
            });
        Ok(())
    }
}

/// One block of AdamW8bit (the module comment's formulas).
fn adam8_block(
    p: &mut [f32],
    g: &[f32],
    (cm, cv): (&mut [u8], &mut [u8]),
    (am, av): (&mut f32, &mut f32),
    (q1, q2): (&[f32; 256], &[f32; 256]),
    k: &Adam8Consts,
) {
    let len = p.len();
    let mut s1 = [0f32; QUANT_BLOCK];
    let mut s2 = [0f32; QUANT_BLOCK];
    let (mut max1, mut max2) = (-f32::MAX, -f32::MAX);
    for j in 0..len {
        if g[j].is_finite() {
            let gv = g[j] * k.gs;
            s2[j] = q2[cv[j] as usize] * *av;
            s2[j] = s2[j] * k.b2 + k.c2 * gv * gv;
            s1[j] = q1[cm[j] as usize] * *am;
            s1[j] = s1[j] * k.b1 + k.c1 * gv;
        }
        max1 = max1.max(s1[j].abs());
        max2 = max2.max(s2[j].abs());
    }
    *am = max1;
    *av = max2;
    for j in 0..len {
        if g[j].is_finite() {
            p[j] += k.step * (s1[j] / (s2[j].sqrt() + k.eps));
            p[j] *= k.decay;
        }
        cm[j] = quantize_signed(q1, s1[j], max1);
        cv[j] = quantize(q2, false, s2[j] / max2);
    }
}

/// One block of Lion8bit (the module comment's formulas).
fn lion8_block(
    p: &mut [f32],
    g: &[f32],
    cm: &mut [u8],
    am: &mut f32,
    q1: &[f32; 256],
    k: &Lion8Consts,
) {
    let len = p.len();
    let mut s1 = [0f32; QUANT_BLOCK];
    let mut u = [0f32; QUANT_BLOCK];
    let mut max1 = -f32::MAX;
    for j in 0..len {
        let gv = g[j] * k.gs;
        p[j] *= k.decay;
        s1[j] = q1[cm[j] as usize] * *am;
        u[j] = k.lr * sign(s1[j] * k.b1 + k.c1 * gv);
        s1[j] = s1[j] * k.b2 + k.c2 * gv;
        max1 = max1.max(s1[j].abs());
    }
    *am = max1;
    for j in 0..len {
        p[j] -= u[j];
        cm[j] = quantize_signed(q1, s1[j], max1);
    }
}

/// bitsandbytes' sgn: −1, 0 or 1.
fn sign(x: f32) -> f32 {
    ((0.0 < x) as i32 - (x < 0.0) as i32) as f32
}
