//! The bf16 matrix product of `cpu_precision: bf16`: f32 matrices in and out, both operands
//! rounded to bf16 (round to nearest, ties to even) while they are packed, products summed in
//! f32 by AVX512_BF16's `vdpbf16ps` (`_mm512_dpbf16_ps`: each of 16 f32 lanes adds the
//! products of one pair of bf16 values from each operand).
//!
//! C = alpha·A·B + beta·C with A [M, K] and B [K, N] any strided views (as gemm.rs takes them).
//! Packing (K padded with a zero to even, rows and columns with zeros to whole panels):
//!   A into panels of `MR` rows:    pa[panel][p][i] = (A[i, 2p], A[i, 2p+1])  one u32 per pair
//!   B into panels of `NR` columns: pb[panel][p][j] = (B[2p, j], B[2p+1, j])
//! The micro-kernel keeps an MR×NR tile of C in 24 AVX-512 registers; per pair p it loads
//! B's two vectors of 16 pairs, broadcasts each row's pair of A and issues 2·MR `vdpbf16ps`.
//! C is cut into blocks of `MC`×`NC`, one rayon task each; a task walks K in slices of `KP`
//! pairs (its slice of B's panel, 2·KP·NR bf16, stays in L1 while the block's rows go by).
//!
//! The activation side is packed on every call; a frozen weight's side once, its panels kept
//! with its tensor (`Panels`, and gemm.rs's `gemm_frozen`).
//!
//! Each product of two bf16 values is exact in f32, so the result differs from the plain f64
//! product of the rounded operands by the f32 summation only; from the f32 product, by the
//! operands' rounding (relative 2⁻⁸ each: bf16 keeps 8 significant bits).

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use rayon::prelude::*;

use super::gemm::{Mat, SendPtr, PARALLEL_FLOPS};

/// Rows of the register tile.
const MR: usize = 12;
/// Columns of the register tile: two vectors of 16 lanes.
const NR: usize = 32;
/// Pairs of K per slice (KC = 2·KP = 256 values).
const KP: usize = 128;
/// Rows of C per task (a multiple of MR).
const MC: usize = 96;
/// Columns of C per task (a multiple of NR).
const NC: usize = 256;

/// Whether this CPU runs the bf16 product (AVX512F and AVX512_BF16).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// What a CPU without the product is missing, for error messages.
pub const REQUIRES: &str = "AVX512_BF16 (x86-64 `avx512bf16`, e.g. AMD Zen 4 or later, Intel \
     Cooper Lake, Sapphire Rapids or later)";

/// f32 → bf16 bits, round to nearest even; NaN stays a (quiet) NaN.
pub fn to_bf16(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        return ((b >> 16) | 0x40) as u16;
    }
    (b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

/// The f32 value of bf16 bits (exact).
pub fn from_bf16(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// x rounded to the nearest bf16, as f32.
pub fn round_bf16(x: f32) -> f32 {
    from_bf16(to_bf16(x))
}

fn pair(lo: f32, hi: f32) -> u32 {
    to_bf16(lo) as u32 | (to_bf16(hi) as u32) << 16
}

/// One operand of the product packed for the micro-kernel: the rows of an [R, K] matrix in
/// panels of `width` rows, bf16 pairs along K (the layout in the module doc). A is packed as
/// its rows (width MR), B as the rows of Bᵀ (width NR). A frozen weight's panels are built
/// once and kept with its tensor (gemm.rs, `gemm_frozen`); the other operand's per call.
pub struct Panels {
    data: Vec<u32>,
    rows: usize,
    k: usize,
    width: usize,
}

impl Panels {
    /// A [M, K] packed for the left side of the product.
    pub fn a(a: Mat<f32>, parallel: bool) -> Panels {
        Panels::pack(a, MR, parallel)
    }
    /// B [K, N] packed for the right side (its columns become the panels' rows).
    pub fn b(b: Mat<f32>, parallel: bool) -> Panels {
        Panels::pack(b.t(), NR, parallel)
    }
    /// Bytes of the packed values (rows padded to whole panels, K to even).
    pub fn size_in_bytes(&self) -> usize {
        self.data.len() * std::mem::size_of::<u32>()
    }
    fn pack(x: Mat<f32>, width: usize, parallel: bool) -> Panels {
        assert!(x.data.len() >= x.last_index());
        assert!(available(), "gemm_bf16 needs {REQUIRES}");
        Panels {
            data: pack(x, width, parallel),
            rows: x.rows,
            k: x.cols,
            width,
        }
    }
}

/// Whether a product of this work (m·k·n) is spread over rayon's threads.
pub fn parallel_for(work: usize) -> bool {
    rayon::current_num_threads() > 1 && work >= PARALLEL_FLOPS
}

/// C = alpha·A·B + beta·C in bf16 products with f32 sums, C row-major with leading dimension
/// `ldc` (`beta = 0` overwrites C, whatever it held). Panics when [`available`] is false: the
/// backend refuses `cpu_precision: bf16` on such a CPU before any product runs.
pub fn gemm_bf16(alpha: f32, a: Mat<f32>, b: Mat<f32>, beta: f32, c: &mut [f32], ldc: usize) {
    assert_eq!(b.rows, a.cols, "gemm_bf16: inner dimensions differ");
    assert!(available(), "gemm_bf16 needs {REQUIRES}");
    let (m, k, n) = (a.rows, a.cols, b.cols);
    if m == 0 || n == 0 {
        assert_c(m, n, c, ldc);
        return;
    }
    let parallel = parallel_for(m * n * k);
    let (pa, pb) = (Panels::a(a, parallel), Panels::b(b, parallel));
    gemm_bf16_panels(alpha, &pa, &pb, beta, c, ldc);
}

/// [`gemm_bf16`] on operands already packed: A's panels [`Panels::a`], B's [`Panels::b`].
pub fn gemm_bf16_panels(
    alpha: f32,
    pa: &Panels,
    pb: &Panels,
    beta: f32,
    c: &mut [f32],
    ldc: usize,
) {
    assert!(
        pa.width == MR && pb.width == NR,
        "gemm_bf16: panels of the wrong side"
    );
    assert_eq!(pa.k, pb.k, "gemm_bf16: inner dimensions differ");
    let (m, k, n) = (pa.rows, pa.k, pb.rows);
    assert_c(m, n, c, ldc);
    assert!(available(), "gemm_bf16 needs {REQUIRES}");
    if m == 0 || n == 0 {
        return;
    }
    let parallel = parallel_for(m * n * k);
    let kp = k.div_ceil(2);
    let blocks_m = m.div_ceil(MC);
    let blocks = blocks_m * n.div_ceil(NC);
    let cp = SendPtr(c.as_mut_ptr());
    let task = |t: usize| {
        let (bi, bj) = (t % blocks_m, t / blocks_m);
        let job = Block {
            rows: bi * MC..(bi * MC + MC).min(m),
            cols: bj * NC..(bj * NC + NC).min(n),
            kp,
            alpha,
            beta,
        };
        // SAFETY: the feature was checked above; the block's tiles of C lie inside `c` (the
        // assert on its length) and no other task writes them; the panels cover every row
        // and column of the block.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            block(&job, &pa.data, &pb.data, cp.get(), ldc)
        }
    };
    if parallel {
        (0..blocks).into_par_iter().for_each(task);
    } else {
        (0..blocks).for_each(task);
    }
}

/// C holds m rows of n at stride ldc.
fn assert_c(m: usize, n: usize, c: &[f32], ldc: usize) {
    assert!(
        m == 0 || n == 0 || c.len() >= (m - 1) * ldc + n,
        "gemm_bf16: C too small"
    );
}

/// One task's block of C and the product's constants.
struct Block {
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
    kp: usize,
    alpha: f32,
    beta: f32,
}

/// The rows of `x` [R, K] packed into panels of `w` rows: panel q holds, for each pair p,
/// the `w` values (x[q·w + i, 2p], x[q·w + i, 2p+1]) as bf16 pairs; zeros pad K to even and
/// the last panel to `w` rows. (B is packed as the rows of Bᵀ.)
fn pack(x: Mat<f32>, w: usize, parallel: bool) -> Vec<u32> {
    let (r, k) = (x.rows, x.cols);
    let kp = k.div_ceil(2);
    let mut out = vec![0u32; r.div_ceil(w) * kp * w];
    let fill = |(q, panel): (usize, &mut [u32])| {
        let rows = w.min(r - q * w);
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `gemm_bf16` checked the CPU's features before packing.
        unsafe {
            fill_panel(x, q * w, rows, w, panel)
        }
        #[cfg(not(target_arch = "x86_64"))]
        fill_panel_scalar(x, q * w, rows, w, panel)
    };
    if out.is_empty() {
        return out;
    }
    if parallel {
        out.par_chunks_mut(kp * w).enumerate().for_each(fill);
    } else {
        out.chunks_mut(kp * w).enumerate().for_each(fill);
    }
    out
}

/// One panel: rows r0..r0+rows of `x`, `w` rows wide (the rest stays zero), in plain Rust.
fn fill_panel_scalar(x: Mat<f32>, r0: usize, rows: usize, w: usize, panel: &mut [u32]) {
    let k = x.cols;
    let at = |i: usize, t: usize| {
        if t < k {
            x.data[(r0 + i) * x.rs + t * x.cs]
        } else {
            0.0
        }
    };
    for p in 0..k.div_ceil(2) {
        for (i, d) in panel[p * w..p * w + rows].iter_mut().enumerate() {
            *d = pair(at(i, 2 * p), at(i, 2 * p + 1));
        }
    }
}

/// [`fill_panel_scalar`] with AVX512_BF16's conversions (`vcvtne2ps2bf16`, round to nearest
/// even as [`to_bf16`]; bf16 subnormals, which `vdpbf16ps` takes as zero anyway, may flush)
/// for the two layouts the products use: rows contiguous along K, or columns contiguous (a
/// transposed view); other strides take the scalar loop.
///
/// # Safety
/// AVX512F and AVX512_BF16 present.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn fill_panel(x: Mat<f32>, r0: usize, rows: usize, w: usize, panel: &mut [u32]) {
    let (k, kp) = (x.cols, x.cols.div_ceil(2));
    if x.cs == 1 {
        // Each row's values in order: 32 values make 16 pairs, one per p, stride w apart.
        for i in 0..rows {
            let row = &x.data[(r0 + i) * x.rs..(r0 + i) * x.rs + k];
            let mut p = 0;
            let mut chunks = row.chunks_exact(32);
            for c in chunks.by_ref() {
                let lo = _mm512_loadu_ps(c.as_ptr());
                let hi = _mm512_loadu_ps(c.as_ptr().add(16));
                let v: [u32; 16] = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
                for (j, &u) in v.iter().enumerate() {
                    panel[(p + j) * w + i] = u;
                }
                p += 16;
            }
            let rest = chunks.remainder();
            for (j, two) in rest.chunks(2).enumerate() {
                panel[(p + j) * w + i] = pair(two[0], *two.get(1).unwrap_or(&0.0));
            }
        }
    } else if x.rs == 1 {
        // Column t of the panel is contiguous across its rows: zip columns 2p and 2p+1,
        // 16 rows at a time.
        let col = |t: usize| &x.data[r0 + t * x.cs..r0 + t * x.cs + rows];
        let zeros = vec![0f32; rows];
        for p in 0..kp {
            let (a, b) = (
                col(2 * p),
                if 2 * p + 1 < k {
                    col(2 * p + 1)
                } else {
                    &zeros
                },
            );
            let dst = &mut panel[p * w..p * w + rows];
            let mut i = 0;
            while i + 16 <= rows {
                let lo: __m256i =
                    std::mem::transmute(_mm512_cvtneps_pbh(_mm512_loadu_ps(a.as_ptr().add(i))));
                let hi: __m256i =
                    std::mem::transmute(_mm512_cvtneps_pbh(_mm512_loadu_ps(b.as_ptr().add(i))));
                let v = _mm512_or_si512(
                    _mm512_cvtepu16_epi32(lo),
                    _mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(hi)),
                );
                _mm512_storeu_si512(dst.as_mut_ptr().add(i).cast(), v);
                i += 16;
            }
            for j in i..rows {
                dst[j] = pair(a[j], b[j]);
            }
        }
    } else {
        fill_panel_scalar(x, r0, rows, w, panel);
    }
}

/// One task: its block of C, K slice by K slice, column panel by panel, row panel by panel.
///
/// # Safety
/// AVX512F and AVX512_BF16 present; `c` with `ldc` valid for the block; `pa` and `pb` the
/// packed operands of this product.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn block(job: &Block, pa: &[u32], pb: &[u32], c: *mut f32, ldc: usize) {
    let kp = job.kp;
    for p0 in (0..kp.max(1)).step_by(KP) {
        let pn = KP.min(kp - p0);
        // The first slice applies beta; the next ones add to what it left.
        let beta = if p0 == 0 { job.beta } else { 1.0 };
        for j0 in job.cols.clone().step_by(NR) {
            let bp = pb.as_ptr().add((j0 / NR) * kp * NR + p0 * NR);
            let cols = NR.min(job.cols.end - j0);
            for i0 in job.rows.clone().step_by(MR) {
                let ap = pa.as_ptr().add((i0 / MR) * kp * MR + p0 * MR);
                let rows = MR.min(job.rows.end - i0);
                let tile = Tile {
                    c: c.add(i0 * ldc + j0),
                    ldc,
                    rows,
                    cols,
                    alpha: job.alpha,
                    beta,
                };
                kernel(pn, ap, bp, &tile);
            }
        }
    }
}

/// Where a register tile goes: `rows`×`cols` of C at `c` (the rest of the MR×NR tile is
/// padding), C = alpha·tile + beta·C.
struct Tile {
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    alpha: f32,
    beta: f32,
}

/// The MR×NR micro-kernel over `pn` pairs of K.
///
/// # Safety
/// As [`block`]; `a` and `b` point at `pn` pairs of an MR-row and an NR-column panel.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
#[inline]
unsafe fn kernel(pn: usize, a: *const u32, b: *const u32, t: &Tile) {
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    for p in 0..pn {
        let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(p * NR).cast()));
        let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(p * NR + 16).cast()));
        let ar = a.add(p * MR);
        for (i, acc) in acc.iter_mut().enumerate() {
            let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(*ar.add(i) as i32));
            acc[0] = _mm512_dpbf16_ps(acc[0], av, b0);
            acc[1] = _mm512_dpbf16_ps(acc[1], av, b1);
        }
    }
    let masks = [lane_mask(t.cols), lane_mask(t.cols.saturating_sub(16))];
    let alpha = _mm512_set1_ps(t.alpha);
    let beta = _mm512_set1_ps(t.beta);
    for (i, acc) in acc.iter().enumerate().take(t.rows) {
        let row = t.c.add(i * t.ldc);
        for (h, (&v, &mask)) in acc.iter().zip(&masks).enumerate() {
            if mask == 0 {
                continue;
            }
            let dst = row.add(16 * h);
            let mut v = _mm512_mul_ps(v, alpha);
            if t.beta != 0.0 {
                let old = _mm512_maskz_loadu_ps(mask, dst);
                v = _mm512_fmadd_ps(old, beta, v);
            }
            _mm512_mask_storeu_ps(dst, mask, v);
        }
    }
}

/// The first `n` of 16 lanes.
fn lane_mask(n: usize) -> u16 {
    if n >= 16 {
        u16::MAX
    } else {
        (1u16 << n) - 1
    }
}
