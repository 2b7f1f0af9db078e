//! Truncated SVDs in f64.
//!
//! - [`svd`]: exact thin SVD of any matrix: a QR first (of A or Aᵀ, whichever is tall), then
//!   Jacobi on the small square R ([`super::jacobi`]).
//! - [`svd_of_product`]: the SVD of W = up·down (up [o, r], down [r, i]) without forming W:
//!   up = Qu·Ru, downᵀ = Qd·Rd, W = Qu·(Ru·Rdᵀ)·Qdᵀ, so the SVD of the r×r core gives W's, exact
//!   to rounding (what `resize` and `merge --new-rank` of LoRAs need).
//! - [`truncated_svd`]: the top singular triplets of a large matrix (the difference of two
//!   checkpoints' weights, up to 1280×11520 for a flattened 3x3 conv) by the randomized range
//!   finder of Halko, Martinsson and Tropp (2011, algorithms 4.4 and 5.1): Y = (A·Aᵀ)^q·A·Ω
//!   with a Gaussian Ω of rank + oversample columns, re-orthonormalised between products, then
//!   the exact SVD of the small Qᵀ·A.
//!
//! Deviation from torch.linalg.svd (what sd-scripts' extract uses): the singular vectors of an
//! exact SVD are unique only up to sign (and rotation within repeated singular values), so
//! factors can differ from torch's by signs while up·down does not. The randomized SVD is exact
//! (to rounding) when A's rank is at most rank + oversample, and when `rank + oversample` ≥
//! min(m, n) the exact SVD is used instead. Otherwise the error of the rank-k approximation
//! exceeds the optimal one (Eckart–Young: the norm of the discarded singular values) by a factor
//! that shrinks like (σ_{k+p+1}/σ_k)^(2q+1) (p oversampling, q power iterations); tests/linalg.rs
//! bounds it, on singular values 1/sqrt(1+i) (a slow decay) with q = 4 and only p = 6, to
//! 1e-3 of the optimum's Frobenius error and 1e-3 relative on the top singular values; the
//! defaults (p = 16) sample more.

use super::jacobi::jacobi_svd;
use super::qr::qr;
use super::Mat;
use crate::rng::Rng;

/// A (thin or truncated) SVD: A ≈ u · diag(s) · vt, s descending.
#[derive(Clone, Debug)]
pub struct Svd {
    /// [m, k], orthonormal columns (a column of a zero singular value may be zero).
    pub u: Mat,
    pub s: Vec<f64>,
    /// [k, n], orthonormal rows.
    pub vt: Mat,
}

impl Svd {
    /// The first `k` triplets (all of them when k ≥ len).
    pub fn truncate(self, k: usize) -> Svd {
        let k = k.min(self.s.len());
        Svd {
            u: self.u.first_cols(k),
            s: self.s[..k].to_vec(),
            vt: self.vt.first_rows(k),
        }
    }

    /// u · diag(s): the `up` factor of a LoRA whose `down` is vt.
    pub fn u_times_s(&self) -> Mat {
        let mut us = self.u.clone();
        let k = self.s.len();
        for r in 0..us.rows {
            for (c, s) in self.s.iter().enumerate() {
                us.data[r * k + c] *= s;
            }
        }
        us
    }

    /// u · diag(s) · vt.
    pub fn reconstruct(&self) -> Mat {
        self.u_times_s().matmul(&self.vt)
    }
}

/// The exact thin SVD of `a` (k = min(m, n) triplets).
pub fn svd(a: &Mat) -> Svd {
    if a.rows >= a.cols {
        let (q, r) = qr(a);
        let (ur, s, v) = jacobi_svd(&r);
        Svd {
            u: q.matmul(&ur),
            s,
            vt: v.transpose(),
        }
    } else {
        let t = svd(&a.transpose());
        Svd {
            u: t.vt.transpose(),
            s: t.s,
            vt: t.u.transpose(),
        }
    }
}

/// The exact SVD of up · down (up [o, r], down [r, i]), min(o, r, i) triplets, from the QRs of
/// the factors and the SVD of the small core.
///
/// # Panics
/// When up's columns and down's rows differ (a caller's bug: kohya's loader checks them).
pub fn svd_of_product(up: &Mat, down: &Mat) -> Svd {
    assert_eq!(up.cols, down.rows, "svd_of_product: rank of up and down");
    let (qu, ru) = qr(up);
    let (qd, rd) = qr(&down.transpose());
    let core = ru.matmul_t(&rd);
    let c = svd(&core);
    Svd {
        u: qu.matmul(&c.u),
        s: c.s,
        vt: c.vt.matmul_t(&qd),
    }
}

/// How [`truncated_svd`] samples the range of A.
#[derive(Clone, Copy, Debug)]
pub struct Randomized {
    /// Columns sampled beyond the rank asked.
    pub oversample: usize,
    /// Products with A·Aᵀ that sharpen a slowly decaying spectrum.
    pub power_iters: usize,
    /// The Gaussian test matrix's seed (the result is deterministic).
    pub seed: u64,
}

impl Default for Randomized {
    fn default() -> Self {
        Randomized {
            oversample: 16,
            power_iters: 4,
            seed: 0x5eed_1ab5,
        }
    }
}

/// The top `rank` singular triplets of `a` (fewer when min(m, n) < rank): exact when
/// rank + oversample ≥ min(m, n), else by the randomized range finder (see the module
/// documentation for the error).
pub fn truncated_svd(a: &Mat, rank: usize, how: &Randomized) -> Svd {
    let (m, n) = (a.rows, a.cols);
    let l = rank + how.oversample;
    if l >= m.min(n) {
        return svd(a).truncate(rank);
    }
    let mut rng = Rng::new(how.seed);
    let omega = Mat::from_vec(n, l, rng.normal_vec(n * l));
    let mut q = qr(&a.matmul(&omega)).0;
    for _ in 0..how.power_iters {
        let z = qr(&a.t_matmul(&q)).0;
        q = qr(&a.matmul(&z)).0;
    }
    let b = q.t_matmul(a);
    let small = svd(&b).truncate(rank);
    Svd {
        u: q.matmul(&small.u),
        s: small.s,
        vt: small.vt,
    }
}
