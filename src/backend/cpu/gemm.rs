//! Matrix products for the CPU backend: matrixmultiply's packed, SIMD kernels on one thread
//! per block of rows (or columns, for skinny products such as LoRA's dA), spread with rayon.

use rayon::prelude::*;

use super::real::Real;

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
    fn last_index(&self) -> usize {
        if self.rows == 0 || self.cols == 0 {
            0
        } else {
            (self.rows - 1) * self.rs + (self.cols - 1) * self.cs + 1
        }
    }
}

/// Work below which a product runs on the calling thread.
const PARALLEL_FLOPS: usize = 1 << 18;

/// C = alpha·A·B + beta·C, with C row-major with leading dimension `ldc`
/// (`beta = 0` overwrites C, whatever it held, NaN included).
pub fn gemm<T: Real>(alpha: T, a: Mat<T>, b: Mat<T>, beta: T, c: &mut [T], ldc: usize) {
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
    if threads <= 1 || m * n * k < PARALLEL_FLOPS {
        gemm_serial(alpha, a, b, beta, c, ldc, 0..m, 0..n);
        return;
    }
    if m >= n {
        // Blocks of whole rows of C: disjoint mutable chunks.
        let rows_per = m.div_ceil(threads * 4).max(8);
        c[..(m - 1) * ldc + n]
            .par_chunks_mut(rows_per * ldc)
            .enumerate()
            .for_each(|(i, chunk)| {
                let r0 = i * rows_per;
                let r1 = (r0 + rows_per).min(m);
                let sub_a = Mat {
                    data: &a.data[r0 * a.rs..],
                    rows: r1 - r0,
                    ..a
                };
                gemm_serial(alpha, sub_a, b, beta, chunk, ldc, 0..r1 - r0, 0..n);
            });
    } else {
        // Blocks of columns of C: C is shared, each task writes its own columns.
        let cols_per = n.div_ceil(threads * 4).max(8);
        let c_ptr = SendPtr(c.as_mut_ptr());
        (0..n.div_ceil(cols_per)).into_par_iter().for_each(|j| {
            let c0 = j * cols_per;
            let c1 = (c0 + cols_per).min(n);
            let p = c_ptr;
            // SAFETY: tasks write disjoint column ranges of C, which outlives the scope.
            unsafe {
                T::gemm_raw(
                    m,
                    k,
                    c1 - c0,
                    alpha,
                    a.data.as_ptr(),
                    a.rs as isize,
                    a.cs as isize,
                    b.data.as_ptr().add(c0 * b.cs),
                    b.rs as isize,
                    b.cs as isize,
                    beta,
                    p.0.add(c0),
                    ldc as isize,
                    1,
                )
            }
        });
    }
}

#[derive(Clone, Copy)]
struct SendPtr<T>(*mut T);
// SAFETY: used only for disjoint writes inside one rayon scope (see `gemm`).
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}

#[allow(clippy::too_many_arguments)]
fn gemm_serial<T: Real>(
    alpha: T,
    a: Mat<T>,
    b: Mat<T>,
    beta: T,
    c: &mut [T],
    ldc: usize,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
) {
    let (m, n) = (rows.len(), cols.len());
    // beta = 0: matrixmultiply does not read C, so poison in C cannot leak through.
    // SAFETY: bounds were asserted by `gemm`; the row block is exclusively borrowed.
    unsafe {
        T::gemm_raw(
            m,
            a.cols,
            n,
            alpha,
            a.data.as_ptr().add(rows.start * a.rs),
            a.rs as isize,
            a.cs as isize,
            b.data.as_ptr().add(cols.start * b.cs),
            b.rs as isize,
            b.cs as isize,
            beta,
            c.as_mut_ptr().add(rows.start * ldc + cols.start),
            ldc as isize,
            1,
        )
    }
}
