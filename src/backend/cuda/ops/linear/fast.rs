//! The fast linear kernels (kernels/linear_fast.cu) for f16 and bf16 backends (the `_bf16`
//! entry points on the latter; the caller checks `CudaBackend::fast16` and that the tensors
//! hold the backend's dtype): one tensor-core GEMM launch per forward (y and the LoRA hidden
//! ũ in the same pass over x) and per backward input gradient (dX and g = (dY·B) ⊙ mask in
//! the same pass over dY), plus the LoRA weight gradients as f32 reductions over the rows,
//! split over rows and added in order. Both dtypes take the same tiles and shared memory.
//!
//! Declines (the caller then runs the simple kernels), each for a documented reason:
//! - a row length of a tiled 16-bit operand not a multiple of 8 elements (every global->shared copy
//!   is one 16-byte cp.async): forward `in`; backward `in` and `out`;
//! - an operand not 16-byte aligned (pool buffers are 512-byte aligned: does not happen);
//! - a LoRA rank whose shared memory (the f32 hidden tile and L ring, about 690 bytes per
//!   rank on the 64x64 tile) exceeds the device's per-block shared memory ([`smem_budget`])
//!   on every tile. Larger tiles are skipped when theirs does not fit. On sm_80 (160 KiB):
//!   ranks up to 192 (forward; 195 backward), 128x128 up to 107, 128x64 up to 124; on
//!   sm_86/sm_89 (96 KiB): up to 96 (forward; 100 backward), 128x128 up to 37, 128x64 up to 53
//!   (tests/cuda_profiles.rs sees rank 100 leave the forward GEMM there).
//!
//! SD1.5's linear layers (in/out 320, 640, 1280, 768, 2560, 5120) all take the fast path.

use super::super::super::backend::CudaBackend;
use super::super::super::launch::{kernels, In, LaunchCfg, Out};
use super::super::super::tiles::{
    lf_smem_bytes, lf_threads, LF_L_BM, LF_L_BN, LF_L_WM, LF_L_WN, LF_M_BM, LF_M_BN, LF_M_WM,
    LF_M_WN, LF_S_BM, LF_S_BN, LF_S_WM, LF_S_WN, LG_BM, LG_BN, LG_BR, LG_THREADS,
};
use super::super::{alloc, int, output, BLOCK};
use super::{splitk_sum_f32, NULL_IN, NULL_OUT};
use crate::backend::BackendInfo;
use crate::error::Result;
use crate::tensor::{DType, Tensor};

kernels! {
    module "linear_fast";
    fn linear_fast_128x128_nk(m: i32, n: i32, k: i32, a: In, lda: i32, b: In, ldb: i32, l: In,
        l_sj: i32, l_sk: i32, u: In, u_sj: i32, u_sn: i32, r: i32, scale: f32, mask: In,
        hidden: Out, bias: In, c: Out, beta: f32);
    fn linear_fast_128x64_nk(m: i32, n: i32, k: i32, a: In, lda: i32, b: In, ldb: i32, l: In,
        l_sj: i32, l_sk: i32, u: In, u_sj: i32, u_sn: i32, r: i32, scale: f32, mask: In,
        hidden: Out, bias: In, c: Out, beta: f32);
    fn linear_fast_64x64_nk(m: i32, n: i32, k: i32, a: In, lda: i32, b: In, ldb: i32, l: In,
        l_sj: i32, l_sk: i32, u: In, u_sj: i32, u_sn: i32, r: i32, scale: f32, mask: In,
        hidden: Out, bias: In, c: Out, beta: f32);
    fn linear_fast_128x128_kn(m: i32, n: i32, k: i32, a: In, lda: i32, b: In, ldb: i32, l: In,
        l_sj: i32, l_sk: i32, u: In, u_sj: i32, u_sn: i32, r: i32, scale: f32, mask: In,
        hidden: Out, bias: In, c: Out, beta: f32);
    fn linear_fast_128x64_kn(m: i32, n: i32, k: i32, a: In, lda: i32, b: In, ldb: i32, l: In,
        l_sj: i32, l_sk: i32, u: In, u_sj: i32, u_sn: i32, r: i32, scale: f32, mask: In,
        hidden: Out, bias: In, c: Out, beta: f32);
    fn linear_fast_64x64_kn(m: i32, n: i32, k: i32, a: In, lda: i32, b: In, ldb: i32, l: In,
        l_sj: i32, l_sk: i32, u: In, u_sj: i32, u_sn: i32, r: i32, scale: f32, mask: In,
        hidden: Out, bias: In, c: Out, beta: f32);
    fn linear_fast_lora_grad(m: i32, n: i32, d: In, ldd: i32, h: In, r: i32, scale: f32,
        out: Out, c_sn: i32, c_sj: i32, chunk: i32, beta: f32);
    fn linear_fast_128x128_nk_bf16(m: i32, n: i32, k: i32, a: In, lda: i32, b: In, ldb: i32,
        l: In, l_sj: i32, l_sk: i32, u: In, u_sj: i32, u_sn: i32, r: i32, scale: f32,
        mask: In, hidden: Out, bias: In, c: Out, beta: f32);
    fn linear_fast_128x64_nk_bf16(m: i32, n: i32, k: i32, a: In, lda: i32, b: In, ldb: i32,
        l: In, l_sj: i32, l_sk: i32, u: In, u_sj: i32, u_sn: i32, r: i32, scale: f32,
        mask: In, hidden: Out, bias: In, c: Out, beta: f32);
    fn linear_fast_64x64_nk_bf16(m: i32, n: i32, k: i32, a: In, lda: i32, b: In, ldb: i32,
        l: In, l_sj: i32, l_sk: i32, u: In, u_sj: i32, u_sn: i32, r: i32, scale: f32,
        mask: In, hidden: Out, bias: In, c: Out, beta: f32);
    fn linear_fast_128x128_kn_bf16(m: i32, n: i32, k: i32, a: In, lda: i32, b: In, ldb: i32,
        l: In, l_sj: i32, l_sk: i32, u: In, u_sj: i32, u_sn: i32, r: i32, scale: f32,
        mask: In, hidden: Out, bias: In, c: Out, beta: f32);
    fn linear_fast_128x64_kn_bf16(m: i32, n: i32, k: i32, a: In, lda: i32, b: In, ldb: i32,
        l: In, l_sj: i32, l_sk: i32, u: In, u_sj: i32, u_sn: i32, r: i32, scale: f32,
        mask: In, hidden: Out, bias: In, c: Out, beta: f32);
    fn linear_fast_64x64_kn_bf16(m: i32, n: i32, k: i32, a: In, lda: i32, b: In, ldb: i32,
        l: In, l_sj: i32, l_sk: i32, u: In, u_sj: i32, u_sn: i32, r: i32, scale: f32,
        mask: In, hidden: Out, bias: In, c: Out, beta: f32);
    fn linear_fast_lora_grad_bf16(m: i32, n: i32, d: In, ldd: i32, h: In, r: i32, scale: f32,
        out: Out, c_sn: i32, c_sj: i32, chunk: i32, beta: f32);
}

/// Dynamic shared memory the GEMM may use on `be`'s device: its per-block limit less 3 KiB
/// kept for the kernels' static shared memory (160 KiB on sm_80, 96 KiB on sm_86/sm_89).
fn smem_budget(be: &CudaBackend) -> usize {
    be.device().limits().smem_per_block as usize - 3 * 1024
}

/// A block tile of the GEMM: rows x columns of C, and its threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Tile {
    T128x128,
    T128x64,
    T64x64,
}

impl Tile {
    const ALL: [Tile; 3] = [Tile::T128x128, Tile::T128x64, Tile::T64x64];
    /// (BM, BN, WM, WN): the block tile and its warp tile (LF_L_*, LF_M_*, LF_S_* in
    /// tiles.h).
    fn dims(self) -> (usize, usize, usize, usize) {
        match self {
            Tile::T128x128 => (LF_L_BM, LF_L_BN, LF_L_WM, LF_L_WN),
            Tile::T128x64 => (LF_M_BM, LF_M_BN, LF_M_WM, LF_M_WN),
            Tile::T64x64 => (LF_S_BM, LF_S_BN, LF_S_WM, LF_S_WN),
        }
    }
    fn bm(self) -> usize {
        self.dims().0
    }
    fn bn(self) -> usize {
        self.dims().1
    }
    fn threads(self) -> u32 {
        let (bm, bn, wm, wn) = self.dims();
        lf_threads(bm, bn, wm, wn) as u32
    }
    /// Dynamic shared memory for rank `r` (LF_SMEM_BYTES in tiles.h).
    fn smem(self, kn: bool, r: usize) -> usize {
        lf_smem_bytes(self.bm(), self.bn(), kn as usize, r)
    }
    fn blocks(self, m: usize, n: usize) -> usize {
        m.div_ceil(self.bm()) * n.div_ceil(self.bn()).max(1)
    }
}

/// The tile for an M x N product with rank `r`: the largest whose grid still fills the device
/// (about one block per SM; the emulator, a few host threads, counts as 4 so that small test
/// shapes reach every tile), else the smallest; None when no tile's shared memory fits the
/// device. Every tile gives bitwise the same result (same k order per element).
fn pick(be: &CudaBackend, m: usize, n: usize, kn: bool, r: usize) -> Option<Tile> {
    let dev = be.device();
    let fill = if dev.is_emulator() {
        4
    } else {
        dev.limits().sm_count as usize
    };
    let budget = smem_budget(be);
    let fits = |t: &Tile| t.smem(kn, r) <= budget;
    Tile::ALL
        .into_iter()
        .filter(fits)
        .find(|t| t.blocks(m, n) >= fill)
        .or_else(|| Tile::ALL.into_iter().rev().find(fits))
}

/// Whether `be` computes in bf16 (the `_bf16` entry points), else f16.
fn bf16(be: &CudaBackend) -> bool {
    be.compute_dtype() == DType::BF16
}

fn aligned(p: In) -> bool {
    p.0.is_multiple_of(16)
}

/// Whether the forward takes the fast path (see the module comment); the caller has checked
/// that the backend is f16 or bf16 with fast GEMMs (`fast16`).
pub(super) fn forward_ok(
    be: &CudaBackend,
    rows: usize,
    inf: usize,
    outf: usize,
    r: usize,
    x: In,
    w: In,
) -> bool {
    inf.is_multiple_of(8) && aligned(x) && aligned(w) && pick(be, rows, outf, false, r).is_some()
}

/// Whether the backward takes the fast path.
pub(super) fn backward_ok(
    be: &CudaBackend,
    rows: usize,
    inf: usize,
    outf: usize,
    r: usize,
    ptrs: &[In],
) -> bool {
    inf.is_multiple_of(8)
        && outf.is_multiple_of(8)
        && ptrs.iter().all(|&p| aligned(p))
        && pick(be, rows, inf, true, r).is_some()
}

/// The LoRA operands of one GEMM launch: L(j, k) = l[j·l_sj + k·l_sk] (contracted with the
/// rows of A), U(j, n) = u[j·u_sj + n·u_sn] (scaled by `scale` into C), the mask [M, r] and
/// the hidden output h [M, r] (f32, `=`).
pub(super) struct LoraOperands {
    pub l: In,
    pub l_s: (i32, i32),
    pub u: In,
    pub u_s: (i32, i32),
    pub r: usize,
    pub scale: f32,
    pub mask: Option<In>,
    pub hidden: Out,
}

/// C [m, n] = A·B (+ LoRA) (+ bias) (+ beta·C), A, B, C, bias and mask in the backend's dtype
/// (f16 or bf16): A [m, k] row-major (leading dim k), B [n, k] (`kn` false) or [k, n] (`kn`
/// true) row-major. n may be 0 (only the hidden).
#[allow(clippy::too_many_arguments)]
pub(super) fn gemm(
    be: &CudaBackend,
    op: &'static str,
    (m, n, k): (usize, usize, usize),
    a: In,
    b: In,
    kn: bool,
    lora: Option<LoraOperands>,
    bias: Option<In>,
    c: Out,
    beta: f32,
) -> Result<()> {
    let r = lora.as_ref().map_or(0, |l| l.r);
    if m == 0 || (n == 0 && r == 0) {
        return Ok(());
    }
    let tile = pick(be, m, n, kn, r).expect("checked by forward_ok / backward_ok");
    let grid = (
        m.div_ceil(tile.bm()) as u32,
        n.div_ceil(tile.bn()).max(1) as u32,
        1,
    );
    let cfg = LaunchCfg::new(grid, (tile.threads(), 1, 1), tile.smem(kn, r) as u32);
    let f = match (tile, kn, bf16(be)) {
        (Tile::T128x128, false, false) => linear_fast_128x128_nk,
        (Tile::T128x64, false, false) => linear_fast_128x64_nk,
        (Tile::T64x64, false, false) => linear_fast_64x64_nk,
        (Tile::T128x128, true, false) => linear_fast_128x128_kn,
        (Tile::T128x64, true, false) => linear_fast_128x64_kn,
        (Tile::T64x64, true, false) => linear_fast_64x64_kn,
        (Tile::T128x128, false, true) => linear_fast_128x128_nk_bf16,
        (Tile::T128x64, false, true) => linear_fast_128x64_nk_bf16,
        (Tile::T64x64, false, true) => linear_fast_64x64_nk_bf16,
        (Tile::T128x128, true, true) => linear_fast_128x128_kn_bf16,
        (Tile::T128x64, true, true) => linear_fast_128x64_kn_bf16,
        (Tile::T64x64, true, true) => linear_fast_64x64_kn_bf16,
    };
    let (mi, ni, ki) = (int(op, "m", m)?, int(op, "n", n)?, int(op, "k", k)?);
    let ldb = if kn { ni } else { ki };
    let (l, (l_sj, l_sk), u, (u_sj, u_sn), ri, scale, mask, hidden) = match lora {
        Some(lo) => (
            lo.l,
            lo.l_s,
            lo.u,
            lo.u_s,
            int(op, "lora", lo.r)?,
            lo.scale,
            lo.mask.unwrap_or(NULL_IN),
            lo.hidden,
        ),
        None => (NULL_IN, (0, 0), NULL_IN, (0, 0), 0, 0.0, NULL_IN, NULL_OUT),
    };
    f(
        be.device(),
        cfg,
        mi,
        ni,
        ki,
        a,
        ki,
        b,
        ldb,
        l,
        l_sj,
        l_sk,
        u,
        u_sj,
        u_sn,
        ri,
        scale,
        mask,
        hidden,
        bias.unwrap_or(NULL_IN),
        c,
        beta,
    )
}

/// A LoRA weight gradient, f32: C(n, j) = beta·C(n, j) + scale·Σ_{m<rows} d[m][n]·h[m][j],
/// d [rows, n] row-major in the backend's dtype (f16 or bf16), h [rows, r] f32, C(n, j) at
/// c[n·c_sn + j·c_sj]. Rows are split over blocks (about 256 blocks in all, at most 64
/// splits, whole 32-row steps); the splits write a workspace that `splitk_sum_f32` adds in
/// order, so the result does not depend on scheduling nor on the device.
#[allow(clippy::too_many_arguments)]
pub(super) fn lora_grad(
    be: &CudaBackend,
    op: &'static str,
    rows: usize,
    n: usize,
    d: In,
    h: In,
    r: usize,
    scale: f32,
    c: Out,
    (c_sn, c_sj): (i32, i32),
    beta: f32,
) -> Result<()> {
    if n == 0 || r == 0 {
        return Ok(());
    }
    let tiles = n.div_ceil(LG_BN) * r.div_ceil(LG_BR);
    let want = (256 / tiles).clamp(1, 64);
    let chunk = rows.div_ceil(want).next_multiple_of(LG_BM).max(LG_BM);
    let splits = rows.div_ceil(chunk).max(1);
    let (mi, ni, ri) = (
        int(op, "rows", rows)?,
        int(op, "n", n)?,
        int(op, "lora", r)?,
    );
    let ci = int(op, "rows", chunk)?;
    let grid = (
        n.div_ceil(LG_BN) as u32,
        r.div_ceil(LG_BR) as u32,
        splits as u32,
    );
    let cfg = LaunchCfg::new(grid, (LG_THREADS as u32, 1, 1), 0);
    let kernel = if bf16(be) {
        linear_fast_lora_grad_bf16
    } else {
        linear_fast_lora_grad
    };
    if splits == 1 {
        return kernel(
            be.device(),
            cfg,
            mi,
            ni,
            d,
            ni,
            h,
            ri,
            scale,
            c,
            c_sn,
            c_sj,
            ci,
            beta,
        );
    }
    let nr = int(op, "grad", n * r)?;
    int(op, "split workspace", splits * n * r)?;
    let mut ws: Tensor = alloc(be, [splits, n * r], DType::F32)?;
    let wo = output(be, op, "split workspace", &mut ws)?;
    kernel(
        be.device(),
        cfg,
        mi,
        ni,
        d,
        ni,
        h,
        ri,
        scale,
        wo,
        c_sn,
        c_sj,
        ci,
        0.0,
    )?;
    splitk_sum_f32(
        be.device(),
        LaunchCfg::for_items(n * r, BLOCK),
        In(wo.0),
        c,
        nr,
        splits as i32,
        beta,
    )
}

#[cfg(test)]
mod tests {
    use crate::backend::cuda::{CudaBackend, Device, DeviceLimits, Impl};
    use crate::tensor::DType;

    /// `fast16` over every card of the profile table (on the memory meter, which runs no
    /// kernel): f16 takes the fast kernels when asked everywhere, bf16 wherever a bf16 backend
    /// can be made (compute capability 8.0+); below 8.0 no bf16 backend exists (refused at
    /// start), so no bf16 tensor-core kernel can be chosen there.
    #[test]
    fn fast16_takes_f16_everywhere_and_bf16_from_compute_capability_8() {
        let mut turing = 0;
        for limits in DeviceLimits::profiles() {
            let cc8 = limits.compute_capability >= (8, 0);
            let f16 = CudaBackend::new(Device::meter_for(limits.clone()), DType::F16).unwrap();
            assert!(
                f16.fast16(Impl::Fast) && !f16.fast16(Impl::Simple),
                "{limits}"
            );
            match CudaBackend::new(Device::meter_for(limits.clone()), DType::BF16) {
                Ok(bf16) => {
                    assert!(cc8, "{limits}: bf16 backend below compute capability 8.0");
                    assert!(bf16.fast16(Impl::Fast) && !bf16.fast16(Impl::Simple));
                }
                Err(e) => {
                    assert!(!cc8, "{limits}: bf16 refused: {e}");
                    turing += 1;
                }
            }
            let f32 = CudaBackend::new(Device::meter_for(limits.clone()), DType::F32).unwrap();
            assert!(!f32.fast16(Impl::Fast), "{limits}");
        }
        assert!(turing > 0, "the table has a Turing card");
    }
}
