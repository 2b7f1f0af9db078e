//! The SVD of a small matrix by one-sided (Hestenes) Jacobi: plane rotations applied to the
//! columns of A [m, n] (m ≥ n) until every pair is orthogonal to working precision; then
//! A·V = U·diag(s), the column norms are the singular values. High relative accuracy for
//! every singular value, and simple; cubic per sweep, so it is used on the n×n R of a QR
//! (n = a LoRA rank plus oversampling), not on a checkpoint's full weight.

use super::Mat;

/// Sweeps after which Jacobi gives up improving (it converges quadratically; 10-15 sweeps
/// is typical in f64).
const MAX_SWEEPS: usize = 60;

/// (U [m, n], s [n], V [n, n]) with A = U·diag(s)·Vᵀ, s descending; needs m ≥ n. A column of U
/// whose singular value is zero is zero.
pub fn jacobi_svd(a: &Mat) -> (Mat, Vec<f64>, Mat) {
    let (m, n) = (a.rows, a.cols);
    assert!(m >= n, "jacobi_svd: {m}x{n} is wide; pass the transpose");
    let mut u: Vec<Vec<f64>> = (0..n)
        .map(|c| (0..m).map(|r| a.at(r, c)).collect())
        .collect();
    let mut v: Vec<Vec<f64>> = (0..n)
        .map(|c| {
            let mut e = vec![0.0; n];
            e[c] = 1.0;
            e
        })
        .collect();
    let dot = |x: &[f64], y: &[f64]| x.iter().zip(y).map(|(a, b)| a * b).sum::<f64>();
    for _ in 0..MAX_SWEEPS {
        let mut rotated = false;
        for p in 0..n {
            for q in p + 1..n {
                let alpha = dot(&u[p], &u[p]);
                let beta = dot(&u[q], &u[q]);
                let gamma = dot(&u[p], &u[q]);
                if gamma == 0.0 || gamma.abs() <= f64::EPSILON * (alpha * beta).sqrt() {
                    continue;
                }
                rotated = true;
                let zeta = (beta - alpha) / (2.0 * gamma);
                let t = zeta.signum() / (zeta.abs() + (1.0 + zeta * zeta).sqrt());
                let c = 1.0 / (1.0 + t * t).sqrt();
                let s = c * t;
                rotate(&mut u, p, q, c, s);
                rotate(&mut v, p, q, c, s);
            }
        }
        if !rotated {
            break;
        }
    }
    let mut order: Vec<(f64, usize)> = u
        .iter()
        .enumerate()
        .map(|(j, col)| (dot(col, col).sqrt(), j))
        .collect();
    order.sort_by(|x, y| y.0.total_cmp(&x.0));
    let mut um = Mat::zeros(m, n);
    let mut vm = Mat::zeros(n, n);
    let mut s = Vec::with_capacity(n);
    for (k, &(sigma, j)) in order.iter().enumerate() {
        s.push(sigma);
        for (r, &x) in u[j].iter().enumerate() {
            um.data[r * n + k] = if sigma > 0.0 { x / sigma } else { 0.0 };
        }
        for (r, &x) in v[j].iter().enumerate() {
            vm.data[r * n + k] = x;
        }
    }
    (um, s, vm)
}

/// Columns p and q ← (c·p − s·q, s·p + c·q).
fn rotate(cols: &mut [Vec<f64>], p: usize, q: usize, c: f64, s: f64) {
    let (lo, hi) = cols.split_at_mut(q);
    for (x, y) in lo[p].iter_mut().zip(hi[0].iter_mut()) {
        let (a, b) = (*x, *y);
        *x = c * a - s * b;
        *y = s * a + c * b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diagonal_and_known_2x2() {
        // [[3, 0], [4, 5]]: singular values sqrt(45) and sqrt(5).
        let a = Mat::from_vec(2, 2, vec![3.0, 0.0, 4.0, 5.0]);
        let (u, s, v) = jacobi_svd(&a);
        assert!((s[0] - 45f64.sqrt()).abs() < 1e-14 && (s[1] - 5f64.sqrt()).abs() < 1e-14);
        let sd = Mat::from_vec(2, 2, vec![s[0], 0.0, 0.0, s[1]]);
        let back = u.matmul(&sd).matmul_t(&v);
        for (x, y) in back.data.iter().zip(&a.data) {
            assert!((x - y).abs() < 1e-14);
        }
    }
}
