//! GroupNorm (with an optional fused SiLU) and LayerNorm, forward and input gradient
//! (kernels/norm.cu). Both are one kernel pair over contiguous blocks of cpg channels of
//! `inner` elements: GroupNorm x [N, C, ...] has N·groups blocks of C/groups channels of
//! `spatial` elements; LayerNorm x [.., C] has one block per row, of C channels of 1 element.
//! One thread block per normalized block. x, y, gamma, beta, dy, dx share one dtype (f16, bf16
//! or f32); the statistics are f32 whatever it is.
//!
//! On f16 backends, and bf16 ones on compute capability 8.0+ (`CudaBackend::fast16`), with the
//! `norm` family fast, the shapes [`fast`] supports run its kernels (kernels/norm_fast.cu)
//! instead: same outputs and statistics convention, other summation orders.

mod fast;

use super::super::backend::CudaBackend;
use super::super::launch::{kernels, In, LaunchCfg, Out};
use super::super::tiles::NORM_MAX_THREADS;
use super::{alloc, by_dtype, float_dtype, input, int, output};
use crate::backend::{check, BackendInfo, NormOps, NormStats};
use crate::error::Result;
use crate::tensor::{DType, Shape, Tensor};

kernels! {
    module "norm";
    fn norm_forward_f32(x: In, gamma: In, beta: In, y: Out, mean: Out, rstd: Out, groups: i32,
        cpg: i32, inner: i32, eps: f32, silu: i32);
    fn norm_forward_f16(x: In, gamma: In, beta: In, y: Out, mean: Out, rstd: Out, groups: i32,
        cpg: i32, inner: i32, eps: f32, silu: i32);
    fn norm_forward_bf16(x: In, gamma: In, beta: In, y: Out, mean: Out, rstd: Out, groups: i32,
        cpg: i32, inner: i32, eps: f32, silu: i32);
    fn norm_backward_f32(dy: In, x: In, gamma: In, beta: In, mean: In, rstd: In, dx: Out,
        groups: i32, cpg: i32, inner: i32, silu: i32);
    fn norm_backward_f16(dy: In, x: In, gamma: In, beta: In, mean: In, rstd: In, dx: Out,
        groups: i32, cpg: i32, inner: i32, silu: i32);
    fn norm_backward_bf16(dy: In, x: In, gamma: In, beta: In, mean: In, rstd: In, dx: Out,
        groups: i32, cpg: i32, inner: i32, silu: i32);
}

/// The blocks one launch normalizes: `blocks` blocks of `cpg` channels of `inner` elements,
/// channel c of block b being (b % groups)·cpg + c.
#[derive(Clone, Copy)]
struct Layout {
    blocks: usize,
    groups: usize,
    cpg: usize,
    inner: usize,
    /// LayerNorm (rows of C) rather than GroupNorm: picks the fast kernel.
    layer: bool,
}

impl Layout {
    /// One thread block per normalized block; about 8 elements per thread, 32..=1024 threads.
    fn cfg(&self) -> LaunchCfg {
        let m = self.cpg * self.inner;
        let threads = m
            .div_ceil(8)
            .next_multiple_of(32)
            .clamp(32, NORM_MAX_THREADS) as u32;
        LaunchCfg::new((self.blocks as u32, 1, 1), (threads, 1, 1), 0)
    }

    /// (groups, cpg, inner) as kernel arguments; also refuses a tensor or grid too large for
    /// i32 indexing.
    fn fast_group(&self) -> fast::Group {
        fast::Group {
            blocks: self.blocks,
            groups: self.groups,
            cpg: self.cpg,
            inner: self.inner,
        }
    }

    fn args(&self, op: &'static str, x: &Tensor) -> Result<(i32, i32, i32)> {
        int(op, "x", x.numel())?;
        Ok((
            int(op, "groups", self.groups)?,
            int(op, "x", self.cpg)?,
            int(op, "x", self.inner)?,
        ))
    }
}

/// Forward over `l`: y like x, f32 stats of `stats_shape`.
#[allow(clippy::too_many_arguments)]
fn forward(
    be: &CudaBackend,
    op: &'static str,
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    l: Layout,
    stats_shape: Shape,
    eps: f64,
    silu: bool,
) -> Result<(Tensor, NormStats)> {
    let d = float_dtype(op, "x", x)?;
    check::dtype(op, "gamma", gamma, d)?;
    check::dtype(op, "beta", beta, d)?;
    let (xi, gi, bi) = (
        input(be, op, "x", x)?,
        input(be, op, "gamma", gamma)?,
        input(be, op, "beta", beta)?,
    );
    let (groups, cpg, inner) = l.args(op, x)?;
    let mut y = alloc(be, x.shape().clone(), d)?;
    let mut mean = alloc(be, stats_shape.clone(), DType::F32)?;
    let mut rstd = alloc(be, stats_shape, DType::F32)?;
    let outs = (
        output(be, op, "y", &mut y)?,
        output(be, op, "mean", &mut mean)?,
        output(be, op, "rstd", &mut rstd)?,
    );
    let m = l.cpg * l.inner;
    let try_fast = l.blocks > 0 && be.fast16(be.kernels().norm) && d == be.compute_dtype();
    if try_fast && l.layer && fast::layer_supported(m, &[xi.0, gi.0, bi.0, outs.0 .0]) {
        fast::layer_forward(be, op, (l.blocks, m), (xi, gi, bi), outs, eps)?;
    } else if try_fast && !l.layer && fast::group_supported(m, &[xi.0, outs.0 .0]) {
        fast::group_forward(be, op, &l.fast_group(), (xi, gi, bi), outs, eps, silu)?;
    } else if l.blocks > 0 {
        let f = by_dtype!(d, op, norm_forward_f32, norm_forward_f16, norm_forward_bf16);
        f(
            be.device(),
            l.cfg(),
            xi,
            gi,
            bi,
            outs.0,
            outs.1,
            outs.2,
            groups,
            cpg,
            inner,
            eps as f32,
            silu as i32,
        )?;
    }
    Ok((y, NormStats { mean, rstd }))
}

/// dx over `l`, like x. `beta` is read only with `silu`.
#[allow(clippy::too_many_arguments)]
fn backward(
    be: &CudaBackend,
    op: &'static str,
    dy: &Tensor,
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    stats: &NormStats,
    l: Layout,
    silu: bool,
) -> Result<Tensor> {
    let d = float_dtype(op, "x", x)?;
    check::dtype(op, "dy", dy, d)?;
    check::dtype(op, "gamma", gamma, d)?;
    check::dtype(op, "beta", beta, d)?;
    check::dtype(op, "stats.mean", &stats.mean, DType::F32)?;
    check::dtype(op, "stats.rstd", &stats.rstd, DType::F32)?;
    let (dyi, xi, gi, bi) = (
        input(be, op, "dy", dy)?,
        input(be, op, "x", x)?,
        input(be, op, "gamma", gamma)?,
        input(be, op, "beta", beta)?,
    );
    let (mi, ri) = (
        input(be, op, "stats.mean", &stats.mean)?,
        input(be, op, "stats.rstd", &stats.rstd)?,
    );
    let (groups, cpg, inner) = l.args(op, x)?;
    let mut dx = alloc(be, x.shape().clone(), d)?;
    let dxo = output(be, op, "dx", &mut dx)?;
    let m = l.cpg * l.inner;
    let try_fast = l.blocks > 0 && be.fast16(be.kernels().norm) && d == be.compute_dtype();
    if try_fast && l.layer && fast::layer_supported(m, &[dyi.0, xi.0, gi.0, dxo.0]) {
        fast::layer_backward(be, op, (l.blocks, m), (dyi, xi, gi, mi, ri), dxo)?;
    } else if try_fast && !l.layer && fast::group_supported(m, &[dyi.0, xi.0, dxo.0]) {
        let ins = (dyi, xi, gi, bi, mi, ri);
        fast::group_backward(be, op, &l.fast_group(), ins, dxo, silu)?;
    } else if l.blocks > 0 {
        let f = by_dtype!(
            d,
            op,
            norm_backward_f32,
            norm_backward_f16,
            norm_backward_bf16
        );
        f(
            be.device(),
            l.cfg(),
            dyi,
            xi,
            gi,
            bi,
            mi,
            ri,
            dxo,
            groups,
            cpg,
            inner,
            silu as i32,
        )?;
    }
    Ok(dx)
}

impl NormOps for CudaBackend {
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
        let l = Layout {
            blocks: d.batch * d.groups,
            groups: d.groups,
            cpg: d.channels_per_group(),
            inner: d.spatial,
            layer: false,
        };
        forward(
            self,
            "group_norm",
            x,
            gamma,
            beta,
            l,
            d.stats_shape(),
            eps,
            silu,
        )
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
        let l = Layout {
            blocks: d.batch * d.groups,
            groups: d.groups,
            cpg: d.channels_per_group(),
            inner: d.spatial,
            layer: false,
        };
        backward(
            self,
            "group_norm_backward",
            dy,
            x,
            gamma,
            beta,
            stats,
            l,
            silu,
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
        let l = Layout {
            blocks: d.rows,
            groups: 1,
            cpg: d.channels,
            inner: 1,
            layer: true,
        };
        forward(
            self,
            "layer_norm",
            x,
            gamma,
            beta,
            l,
            d.stats_shape(),
            eps,
            false,
        )
    }

    fn layer_norm_backward(
        &self,
        dy: &Tensor,
        x: &Tensor,
        gamma: &Tensor,
        stats: &NormStats,
    ) -> Result<Tensor> {
        let d = check::norm::layer_norm_backward(dy, x, gamma, stats)?;
        let l = Layout {
            blocks: d.rows,
            groups: 1,
            cpg: d.channels,
            inner: 1,
            layer: true,
        };
        // No beta without SiLU: gamma stands in for the pointer, which the kernel never reads.
        backward(
            self,
            "layer_norm_backward",
            dy,
            x,
            gamma,
            gamma,
            stats,
            l,
            false,
        )
    }
}
