//! LoHa (LyCORIS `algo=loha`, lycoris/modules/loha.py without Tucker): the layer's weight
//! gains ΔW = s·(w1_a·w1_b) ⊙ (w2_a·w2_b), s = alpha/rank, with w1_a, w2_a [out, r] and
//! w1_b, w2_b [r, in·k·k]; on a k x k conv ΔW is read as [out, in, k, k]. Its rank as a matrix
//! is up to r², for 4·r·(out + in·k²)/2 parameters.
//!
//! Made of the backends' own ops (GEMMs through `linear`, `mul`, the conv weight gradient),
//! so the CPU and the CUDA backend run the same sequence and no kernel is LoHa's own. As
//! LyCORIS's forward (not its bypass mode), ΔW is built in full for each forward and again
//! in the backward (a transient [out, in·k·k] per layer, never kept between the two):
//!
//!   P₁ = w1_a·w1_b, P₂ = w2_a·w2_b, ΔW = s·P₁ ⊙ P₂
//!   y  = layer(x, W) + layer(x, ΔW)                       (ΔW in x's dtype, no bias)
//!   G  = dL/d(P₁ ⊙ P₂) = s·dYᵀ·X (linear) or s·∂conv(x, ·)ᵀ dY (conv), f32 [out, in·k·k]
//!   dP₁ = G ⊙ P₂, dP₂ = G ⊙ P₁
//!   d w1_a = dP₁·w1_bᵀ, d w1_b = w1_aᵀ·dP₁ (and the same for w2 with dP₂)
//!   dX = layerᵀ(dY, W) + layerᵀ(dY, ΔW)
//!
//! which is LyCORIS's `HadaWeight` backward. Initialisation as LyCORIS's: w1_b, w2_b
//! N(0, 1), w1_a N(0, 0.1), w2_a 0, so ΔW = 0 and training starts from the base model.
//!
//! No dropout: LyCORIS ignores `dropout` for LoHa, and its `rank_dropout` drops rows of ΔW,
//! not kohya's ranks; the config refuses all three with LoHa (config/validate.rs).

use crate::backend::{Accum, Backend, Conv2d};
use crate::error::Result;
use crate::rng::Rng;
use crate::tensor::{DType, Tensor};

use super::{Algo, LoraModule, TargetLayer};

/// The tensors of a LoHa module, borrowed.
#[derive(Clone, Copy)]
pub struct Hada<'a> {
    /// hada_w1_a [out, r], hada_w1_b [r, n], hada_w2_a [out, r], hada_w2_b [r, n], n = in·k·k.
    pub w1_a: &'a Tensor,
    pub w1_b: &'a Tensor,
    pub w2_a: &'a Tensor,
    pub w2_b: &'a Tensor,
    /// alpha / rank.
    pub scale: f64,
}

impl LoraModule {
    /// The module's LoHa tensors, when it is one.
    pub fn hada(&self) -> Option<Hada<'_>> {
        match &self.algo {
            Algo::Loha { w2_a, w2_b } => Some(Hada {
                w1_a: &self.up,
                w1_b: &self.down,
                w2_a,
                w2_b,
                scale: self.scale(),
            }),
            _ => None,
        }
    }
}

/// A fresh LoHa module on `layer` as LyCORIS initialises one (see the module text).
pub fn init(
    be: &dyn Backend,
    layer: &TargetLayer,
    rank: usize,
    alpha: f64,
    rng: &mut Rng,
) -> Result<LoraModule> {
    let (out, n) = (layer.out_features, layer.in_features * layer.kind.taps());
    let mut normal = |len: usize, std: f64| -> Vec<f32> {
        (0..len).map(|_| (rng.normal() * std) as f32).collect()
    };
    let w1_a = normal(out * rank, 0.1);
    let w1_b = normal(rank * n, 1.0);
    let w2_b = normal(rank * n, 1.0);
    Ok(LoraModule {
        name: layer.name.clone(),
        down: be.tensor_from_f32(&[rank, n], &w1_b, DType::F32)?,
        up: be.tensor_from_f32(&[out, rank], &w1_a, DType::F32)?,
        alpha,
        kind: layer.kind,
        algo: Algo::Loha {
            w2_a: be.zeros(&[out, rank], DType::F32)?,
            w2_b: be.tensor_from_f32(&[rank, n], &w2_b, DType::F32)?,
        },
    })
}

/// a [m, n] -> aᵀ [n, m] (the layout op that turns NCHW into NLC, on [1, m, n, 1]).
pub(crate) fn transpose(be: &dyn Backend, a: Tensor) -> Result<Tensor> {
    let (m, n) = (a.dims()[0], a.dims()[1]);
    let t = be.nchw_to_nlc(&a.reshape([1, m, n, 1])?)?;
    t.reshape([n, m])
}

/// a·b for a [m, k], b [k, n] (`linear` computes x·wᵀ).
pub(crate) fn matmul(be: &dyn Backend, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    Ok(be.linear(a, &transpose(be, b.clone())?, None, None)?.y)
}

/// The products P₁, P₂ [out, n] and ΔW = s·P₁ ⊙ P₂.
pub struct Delta {
    pub p1: Tensor,
    pub p2: Tensor,
    pub delta: Tensor,
}

impl Delta {
    /// ΔW shaped as the layer's weight `like` ([out, in] or [out, in, k, k]) in its dtype.
    pub fn like(&self, be: &dyn Backend, like: &Tensor) -> Result<Tensor> {
        be.cast(&self.delta.clone().reshape(like.dims())?, like.dtype())
    }
}

impl Hada<'_> {
    /// P₁, P₂ and ΔW, [out, in·k·k], in the adapter's dtype.
    pub fn delta(&self, be: &dyn Backend) -> Result<Delta> {
        let p1 = matmul(be, self.w1_a, self.w1_b)?;
        let p2 = matmul(be, self.w2_a, self.w2_b)?;
        let delta = be.scale(&be.mul(&p1, &p2)?, self.scale)?;
        Ok(Delta { p1, p2, delta })
    }

    /// Adds the four gradients for G = dL/d(P₁ ⊙ P₂) [out, n] into `grads` (w1_b, w1_a,
    /// w2_a, w2_b: the order of [`LoraModule::tensors`]), by `accum`; `d` is
    /// [`Hada::delta`]'s.
    pub fn backward(
        &self,
        be: &dyn Backend,
        d: &Delta,
        g: Tensor,
        grads: Vec<&mut Tensor>,
        accum: Accum,
    ) -> Result<()> {
        let (p1, p2) = (&d.p1, &d.p2);
        let g = g.reshape(p1.dims())?;
        let dp1 = be.mul(&g, p2)?;
        let dp2 = be.mul(&g, p1)?;
        let d_w1_a = be.linear(&dp1, self.w1_b, None, None)?.y;
        let d_w2_a = be.linear(&dp2, self.w2_b, None, None)?.y;
        let (dp1t, dp2t) = (transpose(be, dp1)?, transpose(be, dp2)?);
        let d_w1_b = be
            .linear(&transpose(be, self.w1_a.clone())?, &dp1t, None, None)?
            .y;
        let d_w2_b = be
            .linear(&transpose(be, self.w2_a.clone())?, &dp2t, None, None)?
            .y;
        for (slot, d) in grads.into_iter().zip([d_w1_b, d_w1_a, d_w2_a, d_w2_b]) {
            let d = be.cast(&d, slot.dtype())?;
            match accum {
                Accum::Assign => *slot = d,
                Accum::Add => be.add_assign(slot, &d)?,
            }
        }
        Ok(())
    }
}

/// G = s·dYᵀ·X of a linear layer, [out, in], in the adapter's dtype `dtype`: x [.., in],
/// dy [.., out] (the conv weight gradient of a 1x1 conv over the rows as pixels).
pub fn linear_weight_grad(
    be: &dyn Backend,
    x: &Tensor,
    dy: &Tensor,
    scale: f64,
    dtype: DType,
) -> Result<Tensor> {
    let (i, o) = (x.dims()[x.dims().len() - 1], dy.dims()[dy.dims().len() - 1]);
    let rows = x.numel() / i.max(1);
    // [N, L, C] -> [N, C, L, 1] (a 2-D [rows, C] as one sample of `rows` tokens).
    let nchw = |t: &Tensor, c: usize| -> Result<Tensor> {
        match *t.dims() {
            [_, l, _] => be.nlc_to_nchw(t, l, 1),
            _ => be.nlc_to_nchw(&t.clone().reshape([1, rows, c])?, rows, 1),
        }
    };
    let mut dw = be.zeros(&[o, i, 1, 1], dtype)?;
    let p = Conv2d {
        stride: 1,
        padding: 0,
    };
    be.conv2d_weight_grad(
        &nchw(x, i)?,
        &nchw(dy, o)?,
        p,
        scale,
        &mut dw,
        Accum::Assign,
    )?;
    dw.reshape([o, i])
}

/// G = s·∂conv(x, ·)ᵀ dY of a conv layer, [out, in·k·k], in `dtype`.
pub fn conv_weight_grad(
    be: &dyn Backend,
    x: &Tensor,
    dy: &Tensor,
    p: Conv2d,
    weight: &Tensor,
    scale: f64,
    dtype: DType,
) -> Result<Tensor> {
    let mut dw = be.zeros(weight.dims(), dtype)?;
    be.conv2d_weight_grad(x, dy, p, scale, &mut dw, Accum::Assign)?;
    let o = weight.dims()[0];
    dw.reshape([o, weight.numel() / o])
}

impl Hada<'_> {
    /// ΔW/s as one product up·down of rank r² (host tensors): up[o, (i, j)] =
    /// w1_a[o, i]·w2_a[o, j], down[(i, j), c] = w1_b[i, c]·w2_b[j, c], since
    /// Σ_{i,j} w1_a[o,i]·w1_b[i,c]·w2_a[o,j]·w2_b[j,c] = P₁[o,c]·P₂[o,c]. Exact, for baking
    /// into a checkpoint with the LoRA path. Returns (r², up [out, r²], down [r², n]).
    pub fn as_product(&self) -> (usize, Vec<f64>, Vec<f64>) {
        let (w1a, w1b) = (self.w1_a.to_f64_vec(), self.w1_b.to_f64_vec());
        let (w2a, w2b) = (self.w2_a.to_f64_vec(), self.w2_b.to_f64_vec());
        let (o, r) = (self.w1_a.dims()[0], self.w1_a.dims()[1]);
        let n = self.w1_b.dims()[1];
        let mut up = Vec::with_capacity(o * r * r);
        for row in 0..o {
            for i in 0..r {
                for j in 0..r {
                    up.push(w1a[row * r + i] * w2a[row * r + j]);
                }
            }
        }
        let mut down = Vec::with_capacity(r * r * n);
        for i in 0..r {
            for j in 0..r {
                down.extend((0..n).map(|c| w1b[i * n + c] * w2b[j * n + c]));
            }
        }
        (r * r, up, down)
    }
}
