//! The fast GroupNorm (+SiLU) and LayerNorm kernels (kernels/norm_fast.cu), f16 and bf16 (the
//! `_bf16` entry points): 16-byte vector loads, each GroupNorm block split over up to 32
//! chunks with a deterministic two-launch reduction, one warp per LayerNorm row. Chosen by
//! `super` on f16 backends, and bf16 ones on compute capability 8.0+
//! (`CudaBackend::fast16`), with the `norm` family fast, for tensors in the backend's dtype;
//! [`group_supported`] and [`layer_supported`] say which shapes they take, the rest (and every
//! f32 backend) runs the simple kernels of kernels/norm.cu.
//!
//! Declines, by design: a normalized block (GroupNorm's cpg·spatial, LayerNorm's C) that is
//! empty or not a multiple of 8 elements, or a tensor whose device address is not 16-byte aligned
//! (every vector access must be a whole, aligned uint4); LayerNorm rows wider than 2048 (the
//! row lives in one warp's registers). SD1.5's shapes (C = 320/640/1280/768, 32 groups) all
//! take the fast kernels.

use super::super::super::backend::CudaBackend;
use super::super::super::launch::{kernels, In, LaunchCfg, Out};
use super::super::super::tiles::{GN_THREADS, LN_ROWS};
use super::super::{alloc, int, output};
use crate::backend::BackendInfo;
use crate::error::Result;
use crate::tensor::{DType, Tensor};

kernels! {
    module "norm_fast";
    fn gn_fast_stats_f16(x: In, part: Out, m: i32, chunk: i32, nchunks: i32);
    fn gn_fast_forward_f16(x: In, gamma: In, beta: In, part: In, y: Out, mean: Out, rstd: Out,
        groups: i32, cpg: i32, inner: i32, chunk: i32, nchunks: i32, eps: f32, silu: i32);
    fn gn_fast_bwd_partials_f16(dy: In, x: In, gamma: In, beta: In, mean: In, rstd: In,
        part: Out, groups: i32, cpg: i32, inner: i32, chunk: i32, nchunks: i32, silu: i32);
    fn gn_fast_backward_f16(dy: In, x: In, gamma: In, beta: In, mean: In, rstd: In, part: In,
        dx: Out, groups: i32, cpg: i32, inner: i32, chunk: i32, nchunks: i32, silu: i32);
    fn ln_fast_forward_f16_v2(x: In, gamma: In, beta: In, y: Out, mean: Out, rstd: Out,
        rows: i32, cols: i32, eps: f32);
    fn ln_fast_forward_f16_v4(x: In, gamma: In, beta: In, y: Out, mean: Out, rstd: Out,
        rows: i32, cols: i32, eps: f32);
    fn ln_fast_forward_f16_v8(x: In, gamma: In, beta: In, y: Out, mean: Out, rstd: Out,
        rows: i32, cols: i32, eps: f32);
    fn ln_fast_backward_f16_v2(dy: In, x: In, gamma: In, mean: In, rstd: In, dx: Out, rows: i32,
        cols: i32);
    fn ln_fast_backward_f16_v4(dy: In, x: In, gamma: In, mean: In, rstd: In, dx: Out, rows: i32,
        cols: i32);
    fn ln_fast_backward_f16_v8(dy: In, x: In, gamma: In, mean: In, rstd: In, dx: Out, rows: i32,
        cols: i32);
    fn gn_fast_stats_bf16(x: In, part: Out, m: i32, chunk: i32, nchunks: i32);
    fn gn_fast_forward_bf16(x: In, gamma: In, beta: In, part: In, y: Out, mean: Out, rstd: Out,
        groups: i32, cpg: i32, inner: i32, chunk: i32, nchunks: i32, eps: f32, silu: i32);
    fn gn_fast_bwd_partials_bf16(dy: In, x: In, gamma: In, beta: In, mean: In, rstd: In,
        part: Out, groups: i32, cpg: i32, inner: i32, chunk: i32, nchunks: i32, silu: i32);
    fn gn_fast_backward_bf16(dy: In, x: In, gamma: In, beta: In, mean: In, rstd: In, part: In,
        dx: Out, groups: i32, cpg: i32, inner: i32, chunk: i32, nchunks: i32, silu: i32);
    fn ln_fast_forward_bf16_v2(x: In, gamma: In, beta: In, y: Out, mean: Out, rstd: Out,
        rows: i32, cols: i32, eps: f32);
    fn ln_fast_forward_bf16_v4(x: In, gamma: In, beta: In, y: Out, mean: Out, rstd: Out,
        rows: i32, cols: i32, eps: f32);
    fn ln_fast_forward_bf16_v8(x: In, gamma: In, beta: In, y: Out, mean: Out, rstd: Out,
        rows: i32, cols: i32, eps: f32);
    fn ln_fast_backward_bf16_v2(dy: In, x: In, gamma: In, mean: In, rstd: In, dx: Out,
        rows: i32, cols: i32);
    fn ln_fast_backward_bf16_v4(dy: In, x: In, gamma: In, mean: In, rstd: In, dx: Out,
        rows: i32, cols: i32);
    fn ln_fast_backward_bf16_v8(dy: In, x: In, gamma: In, mean: In, rstd: In, dx: Out,
        rows: i32, cols: i32);
}

/// The most chunks one GroupNorm block is split into (one warp merges their partials).
const MAX_CHUNKS: usize = 32;
/// The widest LayerNorm row: 8 vectors of 8 halves per lane.
const MAX_COLS: usize = 8 * 32 * 8;

/// Whether `be` computes in bf16 (the `_bf16` entry points), else f16.
fn bf16(be: &CudaBackend) -> bool {
    be.compute_dtype() == DType::BF16
}

fn aligned(addrs: &[u64]) -> bool {
    addrs.iter().all(|a| a % 16 == 0)
}

/// Whether the fast GroupNorm takes blocks of `m` elements on tensors at `addrs`.
pub(super) fn group_supported(m: usize, addrs: &[u64]) -> bool {
    m > 0 && m.is_multiple_of(8) && aligned(addrs)
}

/// Whether the fast LayerNorm takes rows of `cols` on tensors at `addrs`.
pub(super) fn layer_supported(cols: usize, addrs: &[u64]) -> bool {
    cols > 0 && cols.is_multiple_of(8) && cols <= MAX_COLS && aligned(addrs)
}

/// (chunk, nchunks) for blocks of `m` elements: about 1024 elements (one vector per thread)
/// per chunk, at most 32 chunks, chunk a multiple of 8.
fn chunks(m: usize) -> (usize, usize) {
    let n = m.div_ceil(1024).clamp(1, MAX_CHUNKS);
    let chunk = m.div_ceil(n).next_multiple_of(8);
    (chunk, m.div_ceil(chunk))
}

/// A GroupNorm launch: `blocks` blocks of `cpg` channels of `inner` elements.
pub(super) struct Group {
    pub blocks: usize,
    pub groups: usize,
    pub cpg: usize,
    pub inner: usize,
}

impl Group {
    /// The grid (one block per chunk), the f32 partials [blocks, nchunks, 2], and the shared
    /// i32 arguments (groups, cpg, inner, chunk, nchunks).
    fn plan(&self, be: &CudaBackend, op: &'static str) -> Result<(LaunchCfg, Tensor, [i32; 5])> {
        let m = self.cpg * self.inner;
        let (chunk, nchunks) = chunks(m);
        let grid = int(op, "x", self.blocks * nchunks)? as u32;
        let part = alloc(be, [self.blocks * nchunks * 2], DType::F32)?;
        let args = [
            int(op, "groups", self.groups)?,
            int(op, "x", self.cpg)?,
            int(op, "x", self.inner)?,
            int(op, "x", chunk)?,
            int(op, "x", nchunks)?,
        ];
        Ok((
            LaunchCfg::new((grid, 1, 1), (GN_THREADS as u32, 1, 1), 0),
            part,
            args,
        ))
    }
}

/// GroupNorm forward: writes y, mean, rstd.
#[allow(clippy::too_many_arguments)]
pub(super) fn group_forward(
    be: &CudaBackend,
    op: &'static str,
    g: &Group,
    (x, gamma, beta): (In, In, In),
    (y, mean, rstd): (Out, Out, Out),
    eps: f64,
    silu: bool,
) -> Result<()> {
    let (cfg, mut part, [groups, cpg, inner, chunk, nchunks]) = g.plan(be, op)?;
    let m = cpg * inner;
    let po = output(be, op, "partials", &mut part)?;
    let stats = if bf16(be) {
        gn_fast_stats_bf16
    } else {
        gn_fast_stats_f16
    };
    let fwd = if bf16(be) {
        gn_fast_forward_bf16
    } else {
        gn_fast_forward_f16
    };
    stats(be.device(), cfg, x, po, m, chunk, nchunks)?;
    fwd(
        be.device(),
        cfg,
        x,
        gamma,
        beta,
        In(po.0),
        y,
        mean,
        rstd,
        groups,
        cpg,
        inner,
        chunk,
        nchunks,
        eps as f32,
        silu as i32,
    )
}

/// GroupNorm dx: `ins` = (dy, x, gamma, beta, mean, rstd).
pub(super) fn group_backward(
    be: &CudaBackend,
    op: &'static str,
    g: &Group,
    ins: (In, In, In, In, In, In),
    dx: Out,
    silu: bool,
) -> Result<()> {
    let (dy, x, gamma, beta, mean, rstd) = ins;
    let (cfg, mut part, [groups, cpg, inner, chunk, nchunks]) = g.plan(be, op)?;
    let po = output(be, op, "partials", &mut part)?;
    let partials = if bf16(be) {
        gn_fast_bwd_partials_bf16
    } else {
        gn_fast_bwd_partials_f16
    };
    let bwd = if bf16(be) {
        gn_fast_backward_bf16
    } else {
        gn_fast_backward_f16
    };
    partials(
        be.device(),
        cfg,
        dy,
        x,
        gamma,
        beta,
        mean,
        rstd,
        po,
        groups,
        cpg,
        inner,
        chunk,
        nchunks,
        silu as i32,
    )?;
    bwd(
        be.device(),
        cfg,
        dy,
        x,
        gamma,
        beta,
        mean,
        rstd,
        In(po.0),
        dx,
        groups,
        cpg,
        inner,
        chunk,
        nchunks,
        silu as i32,
    )
}

fn layer_cfg(op: &'static str, rows: usize) -> Result<LaunchCfg> {
    let grid = int(op, "x", rows.div_ceil(LN_ROWS))? as u32;
    Ok(LaunchCfg::new((grid, 1, 1), (32 * LN_ROWS as u32, 1, 1), 0))
}

/// Vectors per lane of the kernel instance for rows of `cols` (2, 4 or 8).
fn lanes_vectors(cols: usize) -> usize {
    (cols / 8).div_ceil(32).next_power_of_two().max(2)
}

/// LayerNorm forward over `rows` rows of `cols` (layer_supported): writes y, mean, rstd.
pub(super) fn layer_forward(
    be: &CudaBackend,
    op: &'static str,
    (rows, cols): (usize, usize),
    (x, gamma, beta): (In, In, In),
    (y, mean, rstd): (Out, Out, Out),
    eps: f64,
) -> Result<()> {
    let f = match (lanes_vectors(cols), bf16(be)) {
        (2, false) => ln_fast_forward_f16_v2,
        (4, false) => ln_fast_forward_f16_v4,
        (_, false) => ln_fast_forward_f16_v8,
        (2, true) => ln_fast_forward_bf16_v2,
        (4, true) => ln_fast_forward_bf16_v4,
        (_, true) => ln_fast_forward_bf16_v8,
    };
    let (r, c) = (int(op, "x", rows)?, int(op, "x", cols)?);
    f(
        be.device(),
        layer_cfg(op, rows)?,
        x,
        gamma,
        beta,
        y,
        mean,
        rstd,
        r,
        c,
        eps as f32,
    )
}

/// LayerNorm dx over `rows` rows of `cols`: `ins` = (dy, x, gamma, mean, rstd).
pub(super) fn layer_backward(
    be: &CudaBackend,
    op: &'static str,
    (rows, cols): (usize, usize),
    ins: (In, In, In, In, In),
    dx: Out,
) -> Result<()> {
    let (dy, x, gamma, mean, rstd) = ins;
    let f = match (lanes_vectors(cols), bf16(be)) {
        (2, false) => ln_fast_backward_f16_v2,
        (4, false) => ln_fast_backward_f16_v4,
        (_, false) => ln_fast_backward_f16_v8,
        (2, true) => ln_fast_backward_bf16_v2,
        (4, true) => ln_fast_backward_bf16_v4,
        (_, true) => ln_fast_backward_bf16_v8,
    };
    let (r, c) = (int(op, "x", rows)?, int(op, "x", cols)?);
    f(
        be.device(),
        layer_cfg(op, rows)?,
        dy,
        x,
        gamma,
        mean,
        rstd,
        dx,
        r,
        c,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_the_block_in_at_most_32_pieces() {
        for m in [8, 504, 1024, 1032, 2560, 40960, 262144, 8 * 99991] {
            let (chunk, n) = chunks(m);
            assert!(chunk % 8 == 0 && (1..=MAX_CHUNKS).contains(&n), "{m}");
            assert!(chunk * n >= m && chunk * (n - 1) < m, "{m}: {chunk} x {n}");
        }
        assert_eq!(chunks(40960), (1280, 32));
        assert_eq!(chunks(2560), (856, 3));
        assert_eq!(
            [320, 512, 768, 1024, 1280, 2048].map(lanes_vectors),
            [2, 2, 4, 4, 8, 8]
        );
    }
}
