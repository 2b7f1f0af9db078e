//! Matrix products for the CPU backend: the `gemm` crate's packed SIMD kernels (AVX2/FMA or
//! NEON, picked at run time), spread over rayon's threads by the crate itself when the
//! product is large enough; except
//! - a tall product whose A is a transposed view, where matrixmultiply's kernels on one
//!   rayon task per block of rows were measured faster (the input gradients of
//!   convolutions, Wᵀ·dY, and attention's Pᵀ·dO and dSᵀ·Q:
//!   benches/results/cpu-gemm-2026-12-07.md);
//! - a skinny product (C's shorter side at most `SKINNY`: the deep levels' convolutions
//!   W·cols with 16-64 pixels per image, their linear layers with 16-64 tokens), where C is
//!   cut along its longer side into one part per rayon task, each part through the crate
//!   on one thread: measured faster than the crate's own split of such a product, and each
//!   part packs only its own share of the big operand
//!   (benches/results/cpu-skinny-norm-2026-12-08.md).
//!
//! A part's elements are the same sums as the whole product's: the crate blocks the inner
//! dimension by its length and the caches only, so every element sums its k terms in the
//! same order whatever the cut.

use ::gemm::Parallelism;
use rayon::prelude::*;

use std::sync::Arc;

use super::gemm_bf16::{gemm_bf16_panels, parallel_for, Panels};
use super::profile;
use super::real::Real;
use super::CpuPrecision;
use crate::tensor::Tensor;

/// A row-major or transposed view of a matrix stored in a slice.
#[derive(Clone, Copy)]
pub struct Mat<'a, T> {
    pub data: &'a [T],
    pub rows: usize,
    pub cols: usize,
    /// Distance between consecutive rows and columns, in elements.
    pub rs: usize,
    pub cs: usize,
}

impl<'a, T> Mat<'a, T> {
    /// A contiguous row-major rows×cols matrix.
    pub fn new(data: &'a [T], rows: usize, cols: usize) -> Self {
        debug_assert!(data.len() >= rows * cols);
        Mat {
            data,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }
    /// A row-major matrix whose rows are `ld` elements apart (a column slice of a wider one).
    pub fn strided(data: &'a [T], rows: usize, cols: usize, ld: usize) -> Self {
        Mat {
            data,
            rows,
            cols,
            rs: ld,
            cs: 1,
        }
    }
    /// The same view of other elements of the same length (a retyped slice).
    fn with_data<'b, U>(self, data: &'b [U]) -> Mat<'b, U> {
        Mat {
            data,
            rows: self.rows,
            cols: self.cols,
            rs: self.rs,
            cs: self.cs,
        }
    }
    /// The transpose, without copying.
    pub fn t(self) -> Self {
        Mat {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
        }
    }
    pub(super) fn last_index(&self) -> usize {
        if self.rows == 0 || self.cols == 0 {
            0
        } else {
            (self.rows - 1) * self.rs + (self.cols - 1) * self.cs + 1
        }
    }
}

/// Work (m·k·n) below which a product runs on the calling thread.
pub(super) const PARALLEL_FLOPS: usize = 1 << 18;

/// Columns of C from which a tall product with a transposed A goes to matrixmultiply (LoRA's
/// dB = dYᵀ·u, 8 columns, runs faster in the `gemm` crate).
const TALL_MIN_COLS: usize = 32;

/// C's shorter side up to which a product is cut along its longer side (see the top).
const SKINNY: usize = 64;

/// The fewest rows or columns of C in one part of a skinny product.
const MIN_PART: usize = 64;

/// A raw pointer to C shared by tasks that each write their own elements of it.
#[derive(Clone, Copy)]
pub(super) struct SendPtr<T>(pub(super) *mut T);
// SAFETY: the tasks sharing one write disjoint elements (each user says which).
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}
impl<T> SendPtr<T> {
    /// The pointer (a method, so that closures capture the whole `Send` wrapper).
    pub(super) fn get(self) -> *mut T {
        self.0
    }
}

/// C = alpha·A·B + beta·C, with C row-major with leading dimension `ldc`
/// (`beta = 0` overwrites C, whatever it held, NaN included). Timed when the profile is on.
pub fn gemm<T: Real>(alpha: T, a: Mat<T>, b: Mat<T>, beta: T, c: &mut [T], ldc: usize) {
    let t0 = profile::gemm_start();
    product(alpha, a, b, beta, c, ldc);
    profile::gemm_done(t0, profiled(&a, &b, false));
}

/// The profile's description of the product of `a` and `b`.
fn profiled<T>(a: &Mat<T>, b: &Mat<T>, bf16: bool) -> profile::Product {
    profile::Product {
        m: a.rows,
        k: a.cols,
        n: b.cols,
        a_t: a.cs != 1,
        b_t: b.cs != 1,
        bf16,
    }
}

/// `gemm`'s work: picks the path (see the top).
fn product<T: Real>(alpha: T, a: Mat<T>, b: Mat<T>, beta: T, c: &mut [T], ldc: usize) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(b.rows, k, "gemm: inner dimensions differ");
    assert!(a.data.len() >= a.last_index() && b.data.len() >= b.last_index());
    assert!(
        m == 0 || n == 0 || c.len() >= (m - 1) * ldc + n,
        "gemm: C too small"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        for r in 0..m {
            for x in &mut c[r * ldc..r * ldc + n] {
                *x = if beta == T::ZERO { T::ZERO } else { *x * beta };
            }
        }
        return;
    }
    let threads = rayon::current_num_threads();
    if a.rs == 1 && a.cs != 1 && m >= n && n >= TALL_MIN_COLS {
        matrixmultiply_rows(alpha, a, b, beta, c, ldc, threads);
        return;
    }
    let parallel = threads > 1 && m * n * k >= PARALLEL_FLOPS;
    if parallel && m.min(n) <= SKINNY && m.max(n) >= 2 * MIN_PART {
        skinny_parts(alpha, a, b, beta, c, ldc, threads);
        return;
    }
    let parallelism = if parallel {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    };
    // SAFETY: the asserts above keep every element of A, B and C (m×k, k×n, and m rows of
    // n at stride ldc) inside its slice; C is exclusively borrowed.
    unsafe { crate_gemm(alpha, a, b, beta, c.as_mut_ptr(), ldc, parallelism) }
}

/// The `gemm` crate's C = alpha·A·B + beta·C, C being a.rows rows of b.cols elements at
/// stride `ldc` from `c`.
///
/// # Safety
/// Those elements of C lie in one allocation, and nothing else reads or writes them during
/// the call (A and B, shared borrows, cannot alias them).
unsafe fn crate_gemm<T: Real>(
    alpha: T,
    a: Mat<T>,
    b: Mat<T>,
    beta: T,
    c: *mut T,
    ldc: usize,
    parallelism: Parallelism,
) {
    assert!(a.data.len() >= a.last_index() && b.data.len() >= b.last_index());
    // The crate's contract is dst = α·dst + β·lhs·rhs, with (column, row) strides; our beta
    // is its α and our alpha its β. With `read_dst` false (beta = 0) C is never read, so
    // poison in C cannot leak through.
    // SAFETY: A and B are inside their slices (asserted), C as the caller says. `T: Real`
    // is f32 or f64, both of which the crate takes.
    unsafe {
        ::gemm::gemm(
            a.rows,
            b.cols,
            a.cols,
            c,
            1,
            ldc as isize,
            beta != T::ZERO,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            beta,
            alpha,
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// `gemm` of a skinny product: C cut along its longer side into up to two parts per thread
/// (at least `MIN_PART` rows or columns each), each through the crate on its own thread
/// (`gemm` has checked the bounds and handled the empty cases).
fn skinny_parts<T: Real>(
    alpha: T,
    a: Mat<T>,
    b: Mat<T>,
    beta: T,
    c: &mut [T],
    ldc: usize,
    threads: usize,
) {
    let (m, n) = (a.rows, b.cols);
    let long = m.max(n);
    let per = long.div_ceil((2 * threads).min(long / MIN_PART).max(1));
    let cut = if m >= n {
        Cut::Rows(per)
    } else {
        Cut::Cols(per)
    };
    in_parts(a, b, c, ldc, cut, |a, b, c| {
        // SAFETY: `in_parts` hands each part its own rows or columns of C, inside C's slice.
        unsafe { crate_gemm(alpha, a, b, beta, c, ldc, Parallelism::None) }
    });
}

/// How `in_parts` cuts C: rows (or columns) per part.
#[derive(Clone, Copy)]
enum Cut {
    Rows(usize),
    Cols(usize),
}

/// C = A·B in parts, one rayon task each: part p is rows (or columns) p·per.. of C, and
/// `part(a, b, c)` gets A's rows (or B's columns) of the part and a pointer to the part's
/// first element of C, where it may write a.rows rows of b.cols elements at stride `ldc`.
/// The parts are disjoint and inside C's slice; C is exclusively borrowed for the call.
fn in_parts<T: Real>(
    a: Mat<T>,
    b: Mat<T>,
    c: &mut [T],
    ldc: usize,
    cut: Cut,
    part: impl Fn(Mat<T>, Mat<T>, *mut T) + Sync,
) {
    let (m, n) = (a.rows, b.cols);
    assert!(
        m == 0 || n == 0 || c.len() >= (m - 1) * ldc + n,
        "gemm: C too small"
    );
    let (long, per) = match cut {
        Cut::Rows(per) => (m, per.max(1)),
        Cut::Cols(per) => (n, per.max(1)),
    };
    let cp = SendPtr(c.as_mut_ptr());
    (0..long.div_ceil(per)).into_par_iter().for_each(|p| {
        let (lo, hi) = (p * per, ((p + 1) * per).min(long));
        // SAFETY (of the offsets): row lo < m starts at lo·ldc, column lo < n at lo, both
        // inside C's slice (asserted above).
        match cut {
            Cut::Rows(_) => {
                let a = Mat {
                    data: &a.data[lo * a.rs..],
                    rows: hi - lo,
                    ..a
                };
                part(a, b, unsafe { cp.get().add(lo * ldc) })
            }
            Cut::Cols(_) => {
                let b = Mat {
                    data: &b.data[lo * b.cs..],
                    cols: hi - lo,
                    ..b
                };
                part(a, b, unsafe { cp.get().add(lo) })
            }
        }
    });
}

/// Which operand of a product is the frozen weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    A,
    B,
}

/// A product of activations with a frozen weight (the linear and convolution products): the
/// backend's precision, the tensor holding the weight and which operand views it. The view
/// must start at the tensor's first element.
#[derive(Clone, Copy)]
pub struct Frozen<'a> {
    pub precision: CpuPrecision,
    pub weight: &'a Tensor,
    pub side: Side,
}

/// What a weight's panels were packed from: the side and the view (its start is the
/// tensor's first element), which fix the panels' every value given the tensor's elements.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct PanelKey {
    side: Side,
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

/// `gemm` for a product with a frozen weight: in bf16 (gemm_bf16.rs) when the backend's
/// precision says so and the elements are f32, else `gemm` (f64, the gradient checks' type,
/// is never rounded). In bf16 the weight's panels are packed on its first product in a
/// given layout and kept with its tensor ([`Tensor::derived`]: dropped when its elements
/// change), so later products pack only the activations; the results are the same bits as
/// packing both on every call.
pub fn gemm_frozen<T: Real>(
    f: Frozen<'_>,
    alpha: T,
    a: Mat<T>,
    b: Mat<T>,
    beta: T,
    c: &mut [T],
    ldc: usize,
) {
    if f.precision == CpuPrecision::Bf16 {
        if let (Some(ad), Some(bd)) = (T::as_f32(a.data), T::as_f32(b.data)) {
            let (alpha, beta) = (alpha.to_f64() as f32, beta.to_f64() as f32);
            let c = T::as_f32_mut(c).expect("C has the element type of A and B");
            let (a, b) = (a.with_data(ad), b.with_data(bd));
            assert_eq!(b.rows, a.cols, "gemm_frozen: inner dimensions differ");
            let (m, k, n) = (a.rows, a.cols, b.cols);
            let parallel = parallel_for(m * n * k);
            let w = match f.side {
                Side::A => a,
                Side::B => b,
            };
            let t0 = profile::gemm_start();
            let packed = weight_panels(f.weight, f.side, w);
            match f.side {
                Side::A => gemm_bf16_panels(alpha, &packed, &Panels::b(b, parallel), beta, c, ldc),
                Side::B => gemm_bf16_panels(alpha, &Panels::a(a, parallel), &packed, beta, c, ldc),
            }
            profile::gemm_done(t0, profiled(&a, &b, true));
            return;
        }
    }
    gemm(alpha, a, b, beta, c, ldc)
}

/// The bf16 panels of `w`, a view of `weight`'s f32 elements from the first, as operand
/// `side`: kept with the tensor, packed on the first call for this view.
fn weight_panels(weight: &Tensor, side: Side, w: Mat<f32>) -> Arc<Panels> {
    let elements = f32::data(weight).expect("a frozen weight in f32 holds f32 elements");
    assert!(
        std::ptr::eq(w.data.as_ptr(), elements.as_ptr()) && w.last_index() <= elements.len(),
        "gemm_frozen: the weight's view must start at its tensor's first element"
    );
    let key = PanelKey {
        side,
        rows: w.rows,
        cols: w.cols,
        rs: w.rs,
        cs: w.cs,
    };
    weight.derived(key, || {
        // Once per weight and layout: spread over the threads when it is big enough.
        let parallel = parallel_for(w.rows * w.cols * 64);
        match side {
            Side::A => Panels::a(w, parallel),
            Side::B => Panels::b(w, parallel),
        }
    })
}

/// `gemm` with matrixmultiply, one rayon task per block of rows of C (`gemm` has checked the
/// bounds and handled the empty cases).
fn matrixmultiply_rows<T: Real>(
    alpha: T,
    a: Mat<T>,
    b: Mat<T>,
    beta: T,
    c: &mut [T],
    ldc: usize,
    threads: usize,
) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    let rows_per = if threads <= 1 || m * n * k < PARALLEL_FLOPS {
        m
    } else {
        m.div_ceil(threads * 4).max(8)
    };
    in_parts(a, b, c, ldc, Cut::Rows(rows_per), |a, b, c| {
        // beta = 0: matrixmultiply does not read C, so poison in C cannot leak through.
        // SAFETY: the part's rows of A (k columns at strides rs, cs) lie inside a.data as
        // `gemm` asserted for all m rows; `in_parts` hands the part its own rows of C.
        unsafe {
            T::gemm_raw(
                a.rows,
                k,
                n,
                alpha,
                a.data.as_ptr(),
                a.rs as isize,
                a.cs as isize,
                b.data.as_ptr(),
                b.rs as isize,
                b.cs as isize,
                beta,
                c,
                ldc as isize,
                1,
            )
        }
    });
}
