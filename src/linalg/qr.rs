//! The thin QR decomposition by Householder reflections: A [m, n] = Q [m, k] · R [k, n],
//! k = min(m, n), Q with orthonormal columns (also when A is rank-deficient: a zero column
//! gives an identity reflection, and Q stays orthonormal), R upper triangular.

use rayon::prelude::*;

use super::Mat;

/// Columns times length above which a reflection is applied to the columns in parallel.
const PARALLEL_WORK: usize = 1 << 15;

/// The thin QR of `a`: (Q [m, k], R [k, n]).
pub fn qr(a: &Mat) -> (Mat, Mat) {
    let (m, n) = (a.rows, a.cols);
    let k = m.min(n);
    // Column-major working copy: cols[c] is column c of A, contiguous.
    let mut cols: Vec<Vec<f64>> = (0..n)
        .map(|c| (0..m).map(|r| a.at(r, c)).collect())
        .collect();
    let mut reflectors: Vec<Vec<f64>> = Vec::with_capacity(k);
    for j in 0..k {
        let v = householder(&cols[j][j..]);
        apply(&v, j, &mut cols[j..]);
        reflectors.push(v);
    }
    let mut r = Mat::zeros(k, n);
    for (c, col) in cols.iter().enumerate() {
        for (i, &x) in col.iter().enumerate().take(k.min(c + 1)) {
            r.data[i * n + c] = x;
        }
    }
    // Q = H_0 · … · H_{k-1} · [I_k; 0], applied from the last reflection to the first.
    let mut q: Vec<Vec<f64>> = (0..k)
        .map(|c| {
            let mut e = vec![0.0; m];
            e[c] = 1.0;
            e
        })
        .collect();
    for (j, v) in reflectors.iter().enumerate().rev() {
        apply(v, j, &mut q);
    }
    let mut qm = Mat::zeros(m, k);
    for (c, col) in q.iter().enumerate() {
        for (row, &x) in col.iter().enumerate() {
            qm.data[row * k + c] = x;
        }
    }
    (qm, r)
}

/// The unit vector v with (I - 2vvᵀ)·x = ∓‖x‖·e₀ (the sign that avoids cancellation), or the
/// zero vector (identity reflection) when x is zero.
fn householder(x: &[f64]) -> Vec<f64> {
    let norm = x.iter().map(|a| a * a).sum::<f64>().sqrt();
    let mut v = x.to_vec();
    if norm == 0.0 {
        return v;
    }
    let alpha = if x[0] >= 0.0 { -norm } else { norm };
    v[0] -= alpha;
    let vn = v.iter().map(|a| a * a).sum::<f64>().sqrt();
    if vn == 0.0 {
        return vec![0.0; x.len()];
    }
    for a in &mut v {
        *a /= vn;
    }
    v
}

/// Applies I - 2vvᵀ to rows `offset..` of every column in `cols`.
fn apply(v: &[f64], offset: usize, cols: &mut [Vec<f64>]) {
    if v.iter().all(|&a| a == 0.0) {
        return;
    }
    let one = |col: &mut Vec<f64>| {
        let tail = &mut col[offset..];
        let d: f64 = tail.iter().zip(v).map(|(a, b)| a * b).sum();
        let d2 = 2.0 * d;
        for (a, b) in tail.iter_mut().zip(v) {
            *a -= d2 * b;
        }
    };
    if cols.len() * v.len() >= PARALLEL_WORK {
        cols.par_iter_mut().for_each(one);
    } else {
        cols.iter_mut().for_each(one);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn check(m: usize, n: usize, a: &Mat) {
        let (q, r) = qr(a);
        let k = m.min(n);
        assert_eq!((q.rows, q.cols, r.rows, r.cols), (m, k, k, n));
        let qtq = q.t_matmul(&q);
        let eye = Mat::identity(k);
        let dev = qtq.data.iter().zip(&eye.data).map(|(a, b)| (a - b).abs());
        assert!(dev.fold(0.0, f64::max) < 1e-13, "QᵀQ ≠ I for {m}x{n}");
        let back = q.matmul(&r);
        let err = back.data.iter().zip(&a.data).map(|(x, y)| (x - y).abs());
        assert!(err.fold(0.0, f64::max) < 1e-12 * a.norm().max(1.0));
        for i in 0..k {
            for c in 0..i {
                assert_eq!(r.at(i, c), 0.0, "R below the diagonal");
            }
        }
    }

    #[test]
    fn tall_wide_square_and_rank_deficient() {
        let mut rng = Rng::new(7);
        for (m, n) in [(9, 4), (4, 9), (6, 6), (1, 5), (5, 1)] {
            let a = Mat::from_vec(m, n, rng.normal_vec(m * n));
            check(m, n, &a);
        }
        // Rank 1 with a zero column: Q must stay orthonormal.
        let mut a = Mat::zeros(6, 4);
        for r in 0..6 {
            a.data[r * 4] = r as f64 + 1.0;
            a.data[r * 4 + 2] = 2.0 * (r as f64 + 1.0);
        }
        check(6, 4, &a);
        check(3, 3, &Mat::zeros(3, 3));
    }
}
