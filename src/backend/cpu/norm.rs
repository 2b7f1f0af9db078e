//! GroupNorm (with an optional fused SiLU) and LayerNorm, forward and input gradient
//! (gamma and beta are frozen: they get no gradient).
//!
//! Both normalize contiguous blocks of m elements, each block made of channels of `inner`
//! elements that share one gamma[c], beta[c]:
//!   GroupNorm, x [N, C, ...spatial]: a block is one (n, g), C/groups channels of
//!     inner = spatial elements, m = C/groups · spatial; stats [N, groups].
//!   LayerNorm, x [.., C]: a block is one row, C channels of inner = 1; stats [rows].
//! Forward, per block (biased variance, as PyTorch):
//!   mean = Σx/m,  var = Σ(x - mean)²/m,  rstd = 1/sqrt(var + eps)
//!   x̂ = (x - mean)·rstd,  pre = gamma[c]·x̂ + beta[c],  y = pre (or silu(pre) when fused)
//! The statistics are accumulated in f64 whatever the element type, two-pass, so that f32
//! matches f64 even for blocks with a large mean; each sum in `SUM_LANES` interleaved partial
//! sums (element i into sum i mod SUM_LANES, the partial sums added at the end), so that the
//! adds overlap instead of waiting on one another. The order depends on m alone.
//! Backward, per block, with dpre = dy (or dy·silu'(pre), pre recomputed from x and stats):
//!   dx̂ = dpre·gamma[c]
//!   dx = rstd·(dx̂ - mean(dx̂) - x̂·mean(dx̂·x̂))
//! The mean terms are the gradients through mean and rstd, which depend on every element of
//! the block. One rayon task per block (several small blocks per task).

use rayon::prelude::*;

use super::activation::{silu, silu_grad};
use super::elementwise::CHUNK;
use super::vact;
use super::CpuBackend;
use super::{data, dispatch, tensor, Real};
use crate::backend::check::norm::{GroupNormDims, LayerNormDims};
use crate::backend::{check, NormOps, NormStats};
use crate::error::Result;
use crate::tensor::Tensor;

impl NormOps for CpuBackend {
    fn group_norm(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        groups: usize,
        eps: f64,
        silu: bool,
    ) -> Result<(Tensor, NormStats)> {
        let d = check::norm::group_norm(x, gamma, beta, groups, eps)?;
        dispatch!("group_norm", x, group_norm_t(x, gamma, beta, d, eps, silu))
    }

    fn group_norm_backward(
        &self,
        dy: &Tensor,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        stats: &NormStats,
        groups: usize,
        silu: bool,
    ) -> Result<Tensor> {
        let d = check::norm::group_norm_backward(dy, x, gamma, beta, stats, groups)?;
        dispatch!(
            "group_norm_backward",
            x,
            group_norm_backward_t(dy, x, gamma, beta, stats, d, silu)
        )
    }

    fn layer_norm(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        eps: f64,
    ) -> Result<(Tensor, NormStats)> {
        let d = check::norm::layer_norm(x, gamma, beta, eps)?;
        dispatch!("layer_norm", x, layer_norm_t(x, gamma, beta, d, eps))
    }

    fn layer_norm_backward(
        &self,
        dy: &Tensor,
        x: &Tensor,
        gamma: &Tensor,
        stats: &NormStats,
    ) -> Result<Tensor> {
        let d = check::norm::layer_norm_backward(dy, x, gamma, stats)?;
        dispatch!(
            "layer_norm_backward",
            x,
            layer_norm_backward_t(dy, x, gamma, stats, d)
        )
    }
}

fn group_norm_t<T: Real>(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    d: GroupNormDims,
    eps: f64,
    fuse_silu: bool,
) -> Result<(Tensor, NormStats)> {
    const OP: &str = "group_norm";
    let xs = data::<T>(OP, "x", x)?;
    let gs = data::<T>(OP, "gamma", gamma)?;
    let bs = data::<T>(OP, "beta", beta)?;
    let (m, cg) = (d.group_len(), d.channels_per_group());
    let blocks = d.batch * d.groups;
    let mut y = vec![T::ZERO; xs.len()];
    let mut mean = vec![T::ZERO; blocks];
    let mut rstd = vec![T::ZERO; blocks];
    // Block i is (n, g) = (i / groups, i % groups); its channels are g·cg .. (g+1)·cg.
    y.par_chunks_mut(m)
        .zip(xs.par_chunks(m))
        .zip(mean.par_iter_mut().zip(rstd.par_iter_mut()))
        .enumerate()
        .with_min_len(min_blocks_per_task(m))
        .for_each(|(i, ((y, x), (mu, rs)))| {
            let c0 = (i % d.groups) * cg;
            let (g, b) = (&gs[c0..c0 + cg], &bs[c0..c0 + cg]);
            (*mu, *rs) = normalize(x, y, g, b, d.spatial, eps, fuse_silu);
        });
    let stats = NormStats {
        mean: tensor(d.stats_shape(), mean)?,
        rstd: tensor(d.stats_shape(), rstd)?,
    };
    Ok((tensor(x.shape().clone(), y)?, stats))
}

fn group_norm_backward_t<T: Real>(
    dy: &Tensor,
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    stats: &NormStats,
    d: GroupNormDims,
    fuse_silu: bool,
) -> Result<Tensor> {
    const OP: &str = "group_norm_backward";
    let dys = data::<T>(OP, "dy", dy)?;
    let xs = data::<T>(OP, "x", x)?;
    let gs = data::<T>(OP, "gamma", gamma)?;
    let bs = data::<T>(OP, "beta", beta)?;
    let mean = data::<T>(OP, "stats.mean", &stats.mean)?;
    let rstd = data::<T>(OP, "stats.rstd", &stats.rstd)?;
    let (m, cg) = (d.group_len(), d.channels_per_group());
    let mut dx = vec![T::ZERO; xs.len()];
    dx.par_chunks_mut(m)
        .zip(dys.par_chunks(m).zip(xs.par_chunks(m)))
        .zip(mean.par_iter().zip(rstd.par_iter()))
        .enumerate()
        .with_min_len(min_blocks_per_task(m))
        .for_each(|(i, ((dx, (dy, x)), (&mu, &rs)))| {
            let c0 = (i % d.groups) * cg;
            let (g, b) = (&gs[c0..c0 + cg], &bs[c0..c0 + cg]);
            normalize_backward(dy, x, dx, g, fuse_silu.then_some(b), d.spatial, mu, rs);
        });
    tensor(x.shape().clone(), dx)
}

fn layer_norm_t<T: Real>(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    d: LayerNormDims,
    eps: f64,
) -> Result<(Tensor, NormStats)> {
    const OP: &str = "layer_norm";
    let xs = data::<T>(OP, "x", x)?;
    let gs = data::<T>(OP, "gamma", gamma)?;
    let bs = data::<T>(OP, "beta", beta)?;
    let c = d.channels;
    let mut y = vec![T::ZERO; xs.len()];
    let mut mean = vec![T::ZERO; d.rows];
    let mut rstd = vec![T::ZERO; d.rows];
    y.par_chunks_mut(c)
        .zip(xs.par_chunks(c))
        .zip(mean.par_iter_mut().zip(rstd.par_iter_mut()))
        .with_min_len(min_blocks_per_task(c))
        .for_each(|((y, x), (mu, rs))| {
            (*mu, *rs) = normalize(x, y, gs, bs, 1, eps, false);
        });
    let stats = NormStats {
        mean: tensor(d.stats_shape(), mean)?,
        rstd: tensor(d.stats_shape(), rstd)?,
    };
    Ok((tensor(x.shape().clone(), y)?, stats))
}

fn layer_norm_backward_t<T: Real>(
    dy: &Tensor,
    x: &Tensor,
    gamma: &Tensor,
    stats: &NormStats,
    d: LayerNormDims,
) -> Result<Tensor> {
    const OP: &str = "layer_norm_backward";
    let dys = data::<T>(OP, "dy", dy)?;
    let xs = data::<T>(OP, "x", x)?;
    let gs = data::<T>(OP, "gamma", gamma)?;
    let mean = data::<T>(OP, "stats.mean", &stats.mean)?;
    let rstd = data::<T>(OP, "stats.rstd", &stats.rstd)?;
    let c = d.channels;
    let mut dx = vec![T::ZERO; xs.len()];
    dx.par_chunks_mut(c)
        .zip(dys.par_chunks(c).zip(xs.par_chunks(c)))
        .zip(mean.par_iter().zip(rstd.par_iter()))
        .with_min_len(min_blocks_per_task(c))
        .for_each(|((dx, (dy, x)), (&mu, &rs))| {
            normalize_backward(dy, x, dx, gs, None, 1, mu, rs);
        });
    tensor(x.shape().clone(), dx)
}

/// Blocks of `m` elements per rayon task, so that a task has about `CHUNK` elements.
fn min_blocks_per_task(m: usize) -> usize {
    (CHUNK / m.max(1)).max(1)
}

/// Partial sums of a block's statistics (see the top).
const SUM_LANES: usize = 8;

/// Σ f(i) over i in 0..n for each of f's N values, in f64, element i into partial sum
/// i mod SUM_LANES.
#[inline(always)]
fn lane_sums<const N: usize>(n: usize, f: impl Fn(usize) -> [f64; N]) -> [f64; N] {
    let mut acc = [[0f64; SUM_LANES]; N];
    for i in 0..n {
        for (acc, v) in acc.iter_mut().zip(f(i)) {
            acc[i % SUM_LANES] += v;
        }
    }
    acc.map(|lanes| lanes.iter().sum())
}

/// Mean and rstd = 1/sqrt(var + eps) of one block: two passes, accumulated in f64.
fn moments<T: Real>(x: &[T], eps: f64) -> (f64, f64) {
    let m = x.len() as f64;
    let [sum] = lane_sums(x.len(), |i| [x[i].to_f64()]);
    let mean = sum / m;
    let [sum_sq] = lane_sums(x.len(), |i| {
        let d = x[i].to_f64() - mean;
        [d * d]
    });
    let var = sum_sq / m;
    (mean, 1.0 / (var + eps).sqrt())
}

/// Normalizes one block x (channels of `inner` elements, one gamma/beta each) into y,
/// y = gamma·x̂ + beta, then SiLU when `fuse_silu`. Returns (mean, rstd) rounded to T; the
/// output is computed from the rounded values, as the backward will recompute it.
fn normalize<T: Real>(
    x: &[T],
    y: &mut [T],
    gamma: &[T],
    beta: &[T],
    inner: usize,
    eps: f64,
    fuse_silu: bool,
) -> (T, T) {
    let (mean, rstd) = moments(x, eps);
    let (mean, rstd) = (T::from_f64(mean), T::from_f64(rstd));
    if inner == 1 && !fuse_silu {
        // LayerNorm: a gamma and beta per element.
        for ((yv, &xv), (&g, &b)) in y.iter_mut().zip(x).zip(gamma.iter().zip(beta)) {
            *yv = (xv - mean) * (g * rstd) + b;
        }
        return (mean, rstd);
    }
    for ((xc, yc), (&g, &b)) in x
        .chunks(inner)
        .zip(y.chunks_mut(inner))
        .zip(gamma.iter().zip(beta))
    {
        let a = g * rstd;
        for (yv, &xv) in yc.iter_mut().zip(xc) {
            *yv = (xv - mean) * a + b;
        }
        if fuse_silu {
            // f32 through vact.rs's SIMD SiLU, f64 through activation.rs's.
            match T::as_f32_mut(yc) {
                Some(y) => vact::silu_in_place(y),
                None => yc.iter_mut().for_each(|v| *v = silu(*v)),
            }
        }
    }
    (mean, rstd)
}

/// dx of one block (layout as in [`normalize`]). `silu_beta` is beta when SiLU was fused:
/// the pre-activation gamma·x̂ + beta is recomputed for silu'. dx doubles as the buffer for
/// dx̂ between the two passes.
#[allow(clippy::too_many_arguments)]
fn normalize_backward<T: Real>(
    dy: &[T],
    x: &[T],
    dx: &mut [T],
    gamma: &[T],
    silu_beta: Option<&[T]>,
    inner: usize,
    mean: T,
    rstd: T,
) {
    // Pass 1: dx̂ = dpre·gamma into dx; Σdx̂ and Σdx̂·x̂ in f64.
    if inner == 1 && silu_beta.is_none() {
        // LayerNorm: a gamma per element.
        for ((d, &dyv), &g) in dx.iter_mut().zip(dy).zip(gamma) {
            *d = dyv * g;
        }
    } else {
        for (c, (dxc, (dyc, xc))) in dx
            .chunks_mut(inner)
            .zip(dy.chunks(inner).zip(x.chunks(inner)))
            .enumerate()
        {
            let g = gamma[c];
            // dpre = dy·silu'(gamma·x̂ + beta) (or dy) into dx first: f32 through vact.rs's
            // SIMD SiLU gradient, f64 through activation.rs's.
            match silu_beta.map(|b| b[c]) {
                Some(b) => {
                    for (d, &xv) in dxc.iter_mut().zip(xc) {
                        *d = g * ((xv - mean) * rstd) + b;
                    }
                    match T::as_f32_mut(dxc) {
                        Some(pre) => {
                            vact::silu_grad_in_place(T::as_f32(dyc).expect("f32 like dx"), pre)
                        }
                        None => {
                            for (d, &dyv) in dxc.iter_mut().zip(dyc) {
                                *d = dyv * silu_grad(*d);
                            }
                        }
                    }
                }
                None => dxc.copy_from_slice(dyc),
            }
            for d in dxc.iter_mut() {
                *d *= g;
            }
        }
    }
    let dxh = &*dx;
    let [sum_dxh, sum_dxh_xh] = lane_sums(x.len(), |i| {
        let xh = (x[i] - mean) * rstd;
        [dxh[i].to_f64(), (dxh[i] * xh).to_f64()]
    });
    // Pass 2: dx = rstd·(dx̂ - mean(dx̂) - x̂·mean(dx̂·x̂)).
    let m = x.len() as f64;
    let (mean_dxh, mean_dxh_xh) = (T::from_f64(sum_dxh / m), T::from_f64(sum_dxh_xh / m));
    for (d, &xv) in dx.iter_mut().zip(x) {
        let xh = (xv - mean) * rstd;
        *d = rstd * (*d - mean_dxh - xh * mean_dxh_xh);
    }
}
