//! Multi-head scaled dot-product attention, forward and backward, in bounded memory.
//!
//! Shapes: q [B, Lq, H·d], k [B, Lk, H·d], v [B, Lk, H·dv]. Head h of a token row is the
//! column slice h·w..(h+1)·w of that row, so Q_h, K_h and V_h are strided views of the token
//! rows (`Mat::strided`, leading dimension H·w): no per-head copies.
//!
//! Forward, per (b, h), with s = 1/sqrt(d):
//!   S    = s·Q_h·K_hᵀ                 [Lq, Lk]   causal: S_ij = -inf for j > i
//!   lse_i = m_i + log Σ_j exp(S_ij - m_i), m_i = max_j S_ij   [Lq]
//!   P    = exp(S - lse)               [Lq, Lk]   the row-wise softmax
//!   O_h  = P·V_h                      [Lq, dv]   (computed as exp(S - m)·V_h / Σ_j exp(S_ij - m))
//! Returns O [B, Lq, H·dv] and lse [B, H, Lq].
//!
//! Backward from the saved O and lse (flash-attention style: P is recomputed, never stored),
//! dO [B, Lq, H·dv]:
//!   D_i  = Σ_c dO_ic·O_ic             [Lq]       (= Σ_j P_ij·dP_ij)
//!   dV_h = Pᵀ·dO_h                    [Lk, dv]
//!   dP   = dO_h·V_hᵀ                  [Lq, Lk]
//!   dS   = P∘(dP - D)                 [Lq, Lk]   (softmax backward, row by row)
//!   dQ_h = s·dS·K_h                   [Lq, d]
//!   dK_h = s·dSᵀ·Q_h                  [Lk, d]
//!
//! Memory: S, P and dP exist for `BLOCK` query rows at a time ([BLOCK, Lk] each), never as a
//! full [Lq, Lk] matrix (one head at SD1.5's 4096 tokens would be 64 MB in f32). Causal blocks
//! only touch the keys their last row sees. The forward runs one rayon task per
//! (b, h, query block); the backward one per (b, h), with its query blocks in sequence
//! because dK_h and dV_h sum over all of them. The products themselves split further across
//! threads in `gemm` when they are large. Per-head results are gathered into the
//! [B, L, H·w] outputs at the end.

use rayon::prelude::*;

use super::flash::{self, Kernel};
use super::gemm::{gemm, Mat};
use super::profile;
use super::CpuBackend;
use super::{data, dispatch, tensor, Real};
use crate::backend::check::attention::AttentionDims;
use crate::backend::{check, Attention, AttentionOps};
use crate::error::Result;
use crate::tensor::{DType, Tensor};

/// Query rows per block: a [BLOCK, Lk] score block is 2 MB in f32 at Lk = 4096.
const BLOCK: usize = 128;

impl AttentionOps for CpuBackend {
    fn attention(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        p: Attention,
    ) -> Result<(Tensor, Tensor)> {
        if q.dtype() == DType::F32 {
            let _timer = profile::OpTimer::start("attention_fused", q);
            return flash::attention(q, k, v, p, Kernel::detect());
        }
        let n = check::attention::forward(q, k, v, p)?;
        dispatch!("attention", q, forward_t(q, k, v, n))
    }

    fn attention_backward(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        o: &Tensor,
        lse: &Tensor,
        d_o: &Tensor,
        p: Attention,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        if q.dtype() == DType::F32 {
            let _timer = profile::OpTimer::start("attention_backward_fused", q);
            return flash::attention_backward(q, k, v, o, lse, d_o, p, Kernel::detect());
        }
        let n = check::attention::backward(q, k, v, o, lse, d_o, p)?;
        dispatch!("attention_backward", q, backward_t(q, k, v, o, lse, d_o, n))
    }
}

pub(super) fn forward_t<T: Real>(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    n: AttentionDims,
) -> Result<(Tensor, Tensor)> {
    const OP: &str = "attention";
    let qh = Heads::new(data::<T>(OP, "q", q)?, n.q_len, n.heads, n.head_dim);
    let kh = Heads::new(data::<T>(OP, "k", k)?, n.kv_len, n.heads, n.head_dim);
    let vh = Heads::new(data::<T>(OP, "v", v)?, n.kv_len, n.heads, n.v_head_dim);
    let (lq, d, dv) = (n.q_len, n.head_dim, n.v_head_dim);
    let scale = T::from_f64(1.0 / (d as f64).sqrt());
    let blocks = lq.div_ceil(BLOCK);

    // One task per (b, h, query block), in that order: (O block [rows, dv], lse block [rows]).
    let parts: Vec<(Vec<T>, Vec<T>)> = (0..n.batch * n.heads * blocks)
        .into_par_iter()
        .map(|t| {
            let (bh, i0) = (t / blocks, (t % blocks) * BLOCK);
            let (b, h) = (bh / n.heads, bh % n.heads);
            let rows = BLOCK.min(lq - i0);
            // Keys any row of the block sees (causal: up to the last row's diagonal).
            let kn = n.keys_seen(i0 + rows - 1);
            let mut s = vec![T::ZERO; rows * kn];
            gemm(
                scale,
                qh.rows(b, h, i0, rows),
                kh.rows(b, h, 0, kn).t(),
                T::ZERO,
                &mut s,
                kn,
            );
            // E = exp(S - m) row by row, unnormalised; O = (E·V) / Σ_j E_ij: one multiply
            // per output instead of one per score.
            let mut lse = vec![T::ZERO; rows];
            let mut inv = vec![T::ZERO; rows];
            for (r, row) in s.chunks_mut(kn.max(1)).enumerate() {
                let (seen, masked) = row.split_at_mut(n.keys_seen(i0 + r).min(kn));
                let (m, sum) = exp_in_place(seen);
                lse[r] = m + sum.ln();
                inv[r] = T::ONE / sum;
                masked.fill(T::ZERO);
            }
            let mut o = vec![T::ZERO; rows * dv];
            gemm(
                T::ONE,
                Mat::new(&s, rows, kn),
                vh.rows(b, h, 0, kn),
                T::ZERO,
                &mut o,
                dv,
            );
            for (orow, &f) in o.chunks_mut(dv.max(1)).zip(&inv) {
                for x in orow {
                    *x *= f;
                }
            }
            (o, lse)
        })
        .collect();

    // Task order (b, h, block) is exactly lse's [B, H, Lq] layout.
    let lse: Vec<T> = parts.iter().flat_map(|p| p.1.iter().copied()).collect();
    let o = gather(n.batch, lq, n.heads, dv, |b, h, i| {
        let part = &parts[(b * n.heads + h) * blocks + i / BLOCK].0;
        &part[(i % BLOCK) * dv..][..dv]
    });
    Ok((tensor(n.o_shape(), o)?, tensor(n.lse_shape(), lse)?))
}

/// Replaces a row of scores by exp(s - m), m its maximum, so that no exp overflows; returns
/// (m, Σ exp(s - m)): the softmax is the row over the sum, its log-sum-exp m + log(sum).
fn exp_in_place<T: Real>(s: &mut [T]) -> (T, T) {
    let m = s.iter().fold(T::NEG_INFINITY, |m, &x| m.max(x));
    (m, T::exp_sub_sum(s, m))
}

#[allow(clippy::too_many_arguments)]
pub(super) fn backward_t<T: Real>(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    o: &Tensor,
    lse: &Tensor,
    d_o: &Tensor,
    n: AttentionDims,
) -> Result<(Tensor, Tensor, Tensor)> {
    const OP: &str = "attention_backward";
    let (lq, lk, d, dv) = (n.q_len, n.kv_len, n.head_dim, n.v_head_dim);
    let qh = Heads::new(data::<T>(OP, "q", q)?, lq, n.heads, d);
    let kh = Heads::new(data::<T>(OP, "k", k)?, lk, n.heads, d);
    let vh = Heads::new(data::<T>(OP, "v", v)?, lk, n.heads, dv);
    let oh = Heads::new(data::<T>(OP, "o", o)?, lq, n.heads, dv);
    let doh = Heads::new(data::<T>(OP, "d_o", d_o)?, lq, n.heads, dv);
    let lses = data::<T>(OP, "lse", lse)?;
    let scale = T::from_f64(1.0 / (d as f64).sqrt());

    // One task per (b, h): (dQ_h [Lq, d], dK_h [Lk, d], dV_h [Lk, dv]).
    type Grads<T> = (Vec<T>, Vec<T>, Vec<T>);
    let parts: Vec<Grads<T>> = (0..n.batch * n.heads)
        .into_par_iter()
        .map(|bh| {
            let (b, h) = (bh / n.heads, bh % n.heads);
            let lse_h = &lses[bh * lq..(bh + 1) * lq];
            let mut dq = vec![T::ZERO; lq * d];
            let mut dk = vec![T::ZERO; lk * d];
            let mut dvh = vec![T::ZERO; lk * dv];
            // P then dS, and dP, for one block of query rows: [rows, kn] each.
            let (mut ps, mut dp) = (Vec::new(), Vec::new());
            for i0 in (0..lq).step_by(BLOCK) {
                let rows = BLOCK.min(lq - i0);
                let kn = n.keys_seen(i0 + rows - 1);
                let (qb, dob) = (qh.rows(b, h, i0, rows), doh.rows(b, h, i0, rows));
                let (kb, vb) = (kh.rows(b, h, 0, kn), vh.rows(b, h, 0, kn));
                ps.clear();
                ps.resize(rows * kn, T::ZERO);
                dp.clear();
                dp.resize(rows * kn, T::ZERO);

                // P = exp(s·Q·Kᵀ - lse), zero where masked.
                gemm(scale, qb, kb.t(), T::ZERO, &mut ps, kn);
                for (r, row) in ps.chunks_mut(kn.max(1)).enumerate() {
                    let i = i0 + r;
                    let (seen, masked) = row.split_at_mut(n.keys_seen(i).min(kn));
                    T::exp_sub_sum(seen, lse_h[i]);
                    masked.fill(T::ZERO);
                }
                // dV_h[..kn] += Pᵀ·dO_block
                gemm(
                    T::ONE,
                    Mat::new(&ps, rows, kn).t(),
                    dob,
                    T::ONE,
                    &mut dvh,
                    dv,
                );
                // dP = dO_block·V_hᵀ
                gemm(T::ONE, dob, vb.t(), T::ZERO, &mut dp, kn);
                // dS = P∘(dP - D), in place of P (masked entries stay 0).
                for (r, (prow, dprow)) in ps
                    .chunks_mut(kn.max(1))
                    .zip(dp.chunks(kn.max(1)))
                    .enumerate()
                {
                    let i = i0 + r;
                    let di: T = doh
                        .row(b, h, i)
                        .iter()
                        .zip(oh.row(b, h, i))
                        .map(|(&g, &y)| g * y)
                        .sum();
                    for (p, &g) in prow.iter_mut().zip(dprow) {
                        *p *= g - di;
                    }
                }
                // dQ_block = s·dS·K_h; dK_h[..kn] += s·dSᵀ·Q_block
                let ds = Mat::new(&ps, rows, kn);
                gemm(scale, ds, kb, T::ZERO, &mut dq[i0 * d..], d);
                gemm(scale, ds.t(), qb, T::ONE, &mut dk, d);
            }
            (dq, dk, dvh)
        })
        .collect();

    let dq = gather(n.batch, lq, n.heads, d, |b, h, i| {
        &parts[b * n.heads + h].0[i * d..][..d]
    });
    let dk = gather(n.batch, lk, n.heads, d, |b, h, j| {
        &parts[b * n.heads + h].1[j * d..][..d]
    });
    let dvv = gather(n.batch, lk, n.heads, dv, |b, h, j| {
        &parts[b * n.heads + h].2[j * dv..][..dv]
    });
    Ok((
        tensor(q.shape().clone(), dq)?,
        tensor(k.shape().clone(), dk)?,
        tensor(v.shape().clone(), dvv)?,
    ))
}

/// A [B, L, H·w] tensor seen as H heads of width w.
#[derive(Clone, Copy)]
struct Heads<'a, T> {
    x: &'a [T],
    len: usize,
    heads: usize,
    w: usize,
}

impl<'a, T> Heads<'a, T> {
    fn new(x: &'a [T], len: usize, heads: usize, w: usize) -> Self {
        Heads { x, len, heads, w }
    }
    fn offset(&self, b: usize, h: usize, i: usize) -> usize {
        ((b * self.len + i) * self.heads + h) * self.w
    }
    /// Rows r0..r0+rows of head h in batch b: a [rows, w] view with leading dimension H·w.
    fn rows(&self, b: usize, h: usize, r0: usize, rows: usize) -> Mat<'a, T> {
        let start = self.offset(b, h, r0).min(self.x.len());
        Mat::strided(&self.x[start..], rows, self.w, self.heads * self.w)
    }
    /// Row i of head h in batch b, [w].
    fn row(&self, b: usize, h: usize, i: usize) -> &'a [T] {
        let start = self.offset(b, h, i).min(self.x.len());
        let end = (start + self.w).min(self.x.len());
        &self.x[start..end]
    }
}

/// Assembles a [B, L, H·w] tensor from per-head rows: `part(b, h, i)` is row i of head h, [w].
fn gather<'a, T: Real>(
    batch: usize,
    len: usize,
    heads: usize,
    w: usize,
    part: impl Fn(usize, usize, usize) -> &'a [T] + Sync,
) -> Vec<T> {
    let mut out = vec![T::ZERO; batch * len * heads * w];
    out.par_chunks_mut((heads * w).max(1))
        .enumerate()
        .for_each(|(row, dst)| {
            let (b, i) = (row / len, row % len);
            for (h, dst) in dst.chunks_mut(w.max(1)).enumerate() {
                dst.copy_from_slice(part(b, h, i));
            }
        });
    out
}
