//! Multi-head scaled dot-product attention, forward and backward (kernels/attention.cu): the
//! plain tiled reference kernels. The [Lq, Lk] score matrix is never stored (tiles of it live
//! in shared memory); the backward recomputes P from the saved lse, and computes dQ per query
//! tile and dK, dV per key tile, so nothing is accumulated with atomics (deterministic).
//!
//! q, k, v, o, dO and the gradients share the compute dtype (f16, bf16 or f32); lse is f32
//! always.
//! Head widths up to [`MAX_HEAD_DIM`] (the kernels keep one row's accumulators in registers);
//! the forward of wider heads (the VAE's 512) runs in attention/wide.rs.
//!
//! f16 backends, and bf16 ones on compute capability 8.0+ (`CudaBackend::fast16`), with the
//! attention family on `Fast` run kernels/attention_fast.cu instead (attention/fast.rs:
//! flash-attention-2 style, tensor cores) when it accepts the shape.

use super::super::backend::CudaBackend;
use super::super::launch::{kernels, In, LaunchCfg, Out};
use super::super::tiles::{
    att_dkv_part_smem, att_dkv_smem, att_dq_smem, att_fwd_smem, ATT_BQ, ATT_KB, ATT_MAX_D,
    ATT_THREADS,
};
use super::{alloc, by_dtype, float_dtype, input, int, output, BLOCK};
use crate::backend::check::attention::AttentionDims;
use crate::backend::{check, Attention, AttentionOps};
use crate::error::Result;
use crate::tensor::{DType, Tensor};

mod fast;
pub(crate) mod wide;

kernels! {
    module "attention";
    fn attention_fwd_f32(q: In, k: In, v: In, o: Out, lse: Out, heads: i32, lq: i32, lk: i32,
        d: i32, dv: i32, causal: i32, scale: f32);
    fn attention_fwd_f16(q: In, k: In, v: In, o: Out, lse: Out, heads: i32, lq: i32, lk: i32,
        d: i32, dv: i32, causal: i32, scale: f32);
    fn attention_fwd_bf16(q: In, k: In, v: In, o: Out, lse: Out, heads: i32, lq: i32, lk: i32,
        d: i32, dv: i32, causal: i32, scale: f32);
    fn attention_bwd_dot_f32(o: In, d_o: In, dsum: Out, heads: i32, lq: i32, dv: i32, n: i32);
    fn attention_bwd_dot_f16(o: In, d_o: In, dsum: Out, heads: i32, lq: i32, dv: i32, n: i32);
    fn attention_bwd_dot_bf16(o: In, d_o: In, dsum: Out, heads: i32, lq: i32, dv: i32, n: i32);
    fn attention_bwd_dq_f32(q: In, k: In, v: In, lse: In, d_o: In, dsum: In, dq: Out,
        heads: i32, lq: i32, lk: i32, d: i32, dv: i32, causal: i32, scale: f32);
    fn attention_bwd_dq_f16(q: In, k: In, v: In, lse: In, d_o: In, dsum: In, dq: Out,
        heads: i32, lq: i32, lk: i32, d: i32, dv: i32, causal: i32, scale: f32);
    fn attention_bwd_dq_bf16(q: In, k: In, v: In, lse: In, d_o: In, dsum: In, dq: Out,
        heads: i32, lq: i32, lk: i32, d: i32, dv: i32, causal: i32, scale: f32);
    fn attention_bwd_dkv_f32(q: In, k: In, v: In, lse: In, d_o: In, dsum: In, dk: Out,
        dv_out: Out, heads: i32, lq: i32, lk: i32, d: i32, dv: i32, causal: i32, scale: f32,
        parts: i32);
    fn attention_bwd_dkv_f16(q: In, k: In, v: In, lse: In, d_o: In, dsum: In, dk: Out,
        dv_out: Out, heads: i32, lq: i32, lk: i32, d: i32, dv: i32, causal: i32, scale: f32,
        parts: i32);
    fn attention_bwd_dkv_bf16(q: In, k: In, v: In, lse: In, d_o: In, dsum: In, dk: Out,
        dv_out: Out, heads: i32, lq: i32, lk: i32, d: i32, dv: i32, causal: i32, scale: f32,
        parts: i32);
}

/// The widest head (d and dv) the kernels take.
pub(crate) const MAX_HEAD_DIM: usize = ATT_MAX_D;

/// The saved tensors a backward reads, as kernel inputs.
struct Saved {
    q: In,
    k: In,
    v: In,
    o: In,
    lse: In,
    d_o: In,
}

/// The scalar arguments every kernel of the family takes.
struct Args {
    heads: i32,
    lq: i32,
    lk: i32,
    d: i32,
    dv: i32,
    causal: i32,
    scale: f32,
}

/// The kernels' own limits on top of the shapes the CPU backend accepts.
fn args(op: &'static str, n: &AttentionDims) -> Result<Args> {
    for (name, w) in [("head_dim", n.head_dim), ("v_head_dim", n.v_head_dim)] {
        if w > MAX_HEAD_DIM {
            return Err(check::bad_value(
                op,
                name,
                w,
                &format!("at most {MAX_HEAD_DIM} on the CUDA backend"),
            ));
        }
    }
    Ok(Args {
        heads: int(op, "heads", n.heads)?,
        lq: int(op, "q", n.q_len)?,
        lk: int(op, "k", n.kv_len)?,
        d: int(op, "q", n.head_dim)?,
        dv: int(op, "v", n.v_head_dim)?,
        causal: n.causal as i32,
        scale: (1.0 / (n.head_dim as f64).sqrt()) as f32,
    })
}

/// The simple dK/dV launches for `n` on `be`'s device, as (parts, shared memory): one launch
/// writing both (parts 3) where its shared memory fits the device, else one for dK (1) and one
/// for dV (2), which need less (kernels/attention.cu): on 64 KiB (sm_75) SD1.5's 160-wide
/// heads (66176 bytes together, 64064 and 53824 apart; the f32 backward then takes heads up
/// to 160 there, the fast f16 kernels up to 160 as everywhere).
fn dkv_launches(be: &CudaBackend, n: &AttentionDims) -> Vec<(i32, usize)> {
    let (d, dv) = (n.head_dim, n.v_head_dim);
    let both = att_dkv_smem(d, dv);
    if both <= be.device().limits().smem_per_block as usize {
        vec![(3, both)]
    } else {
        vec![
            (1, att_dkv_part_smem(d, dv, 1, 0)),
            (2, att_dkv_part_smem(d, dv, 0, 1)),
        ]
    }
}

/// One block of `threads` per (b, h, tile of `rows` of a sequence of `len`).
fn tiled(
    op: &'static str,
    n: &AttentionDims,
    (len, rows): (usize, usize),
    threads: usize,
    smem: usize,
) -> Result<LaunchCfg> {
    let blocks = int(op, "q", n.batch * n.heads * len.div_ceil(rows))?;
    let smem = u32::try_from(smem).unwrap_or(u32::MAX); // an oversized request fails the launch check
    Ok(LaunchCfg::new(
        (blocks as u32, 1, 1),
        (threads as u32, 1, 1),
        smem,
    ))
}

impl AttentionOps for CudaBackend {
    fn attention(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        p: Attention,
    ) -> Result<(Tensor, Tensor)> {
        const OP: &str = "attention";
        let n = check::attention::forward(q, k, v, p)?;
        let dt = float_dtype(OP, "q", q)?;
        check::dtype(OP, "k", k, dt)?;
        check::dtype(OP, "v", v, dt)?;
        let (qi, ki, vi) = (
            input(self, OP, "q", q)?,
            input(self, OP, "k", k)?,
            input(self, OP, "v", v)?,
        );
        if n.head_dim > MAX_HEAD_DIM || n.v_head_dim > MAX_HEAD_DIM {
            return wide::forward(self, q, k, v, &n, dt);
        }
        let a = args(OP, &n)?;
        let mut o = alloc(self, n.o_shape(), dt)?;
        let mut lse = alloc(self, n.lse_shape(), DType::F32)?;
        if n.batch * n.heads * n.q_len == 0 {
            return Ok((o, lse)); // nothing to compute (and no empty grid to launch)
        }
        if let Some(bk) = fast::bucket(self, &n, dt) {
            let (oo, lo) = (
                output(self, OP, "o", &mut o)?,
                output(self, OP, "lse", &mut lse)?,
            );
            fast::forward(self, bk, &n, &a, [qi, ki, vi], (oo, lo))?;
            return Ok((o, lse));
        }
        let cfg = tiled(
            OP,
            &n,
            (n.q_len, ATT_BQ),
            ATT_THREADS,
            att_fwd_smem(n.head_dim, n.v_head_dim),
        )?;
        let f = by_dtype!(
            dt,
            OP,
            attention_fwd_f32,
            attention_fwd_f16,
            attention_fwd_bf16
        );
        f(
            self.device(),
            cfg,
            qi,
            ki,
            vi,
            output(self, OP, "o", &mut o)?,
            output(self, OP, "lse", &mut lse)?,
            a.heads,
            a.lq,
            a.lk,
            a.d,
            a.dv,
            a.causal,
            a.scale,
        )?;
        Ok((o, lse))
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
        const OP: &str = "attention_backward";
        let n = check::attention::backward(q, k, v, o, lse, d_o, p)?;
        let dt = float_dtype(OP, "q", q)?;
        for (name, t) in [("k", k), ("v", v), ("o", o), ("d_o", d_o)] {
            check::dtype(OP, name, t, dt)?;
        }
        check::dtype(OP, "lse", lse, DType::F32)?;
        let (qi, ki, vi) = (
            input(self, OP, "q", q)?,
            input(self, OP, "k", k)?,
            input(self, OP, "v", v)?,
        );
        let (oi, li, gi) = (
            input(self, OP, "o", o)?,
            input(self, OP, "lse", lse)?,
            input(self, OP, "d_o", d_o)?,
        );
        let a = args(OP, &n)?;
        let mut dq = alloc(self, q.shape().clone(), dt)?;
        let mut dk = alloc(self, k.shape().clone(), dt)?;
        let mut dv = alloc(self, v.shape().clone(), dt)?;
        let rows = n.batch * n.heads * n.q_len;
        // D = rowsum(dO ⊙ O), [B, H, Lq] f32.
        let mut dsum = alloc(self, [rows], DType::F32)?;
        if let Some(bk) = fast::bucket(self, &n, dt) {
            let saved = Saved {
                q: qi,
                k: ki,
                v: vi,
                o: oi,
                lse: li,
                d_o: gi,
            };
            let grads = (
                output(self, OP, "dq", &mut dq)?,
                output(self, OP, "dk", &mut dk)?,
                output(self, OP, "dv", &mut dv)?,
            );
            fast::backward(self, bk, &n, &a, &saved, &mut dsum, grads)?;
            return Ok((dq, dk, dv));
        }
        if rows > 0 {
            let f = by_dtype!(
                dt,
                OP,
                attention_bwd_dot_f32,
                attention_bwd_dot_f16,
                attention_bwd_dot_bf16
            );
            f(
                self.device(),
                LaunchCfg::for_items(rows, BLOCK),
                oi,
                gi,
                output(self, OP, "dsum", &mut dsum)?,
                a.heads,
                a.lq,
                a.dv,
                int(OP, "q", rows)?,
            )?;
            let f = by_dtype!(
                dt,
                OP,
                attention_bwd_dq_f32,
                attention_bwd_dq_f16,
                attention_bwd_dq_bf16
            );
            f(
                self.device(),
                tiled(
                    OP,
                    &n,
                    (n.q_len, ATT_BQ),
                    ATT_THREADS,
                    att_dq_smem(n.head_dim, n.v_head_dim),
                )?,
                qi,
                ki,
                vi,
                li,
                gi,
                input(self, OP, "dsum", &dsum)?,
                output(self, OP, "dq", &mut dq)?,
                a.heads,
                a.lq,
                a.lk,
                a.d,
                a.dv,
                a.causal,
                a.scale,
            )?;
        }
        if n.batch * n.heads * n.kv_len > 0 {
            // With no queries (Lq = 0) this writes dK = dV = 0. One launch for both, or one
            // for dK and one for dV where both together exceed the device's shared memory.
            let f = by_dtype!(
                dt,
                OP,
                attention_bwd_dkv_f32,
                attention_bwd_dkv_f16,
                attention_bwd_dkv_bf16
            );
            let (dsi, dko, dvo) = (
                input(self, OP, "dsum", &dsum)?,
                output(self, OP, "dk", &mut dk)?,
                output(self, OP, "dv", &mut dv)?,
            );
            for (parts, smem) in dkv_launches(self, &n) {
                f(
                    self.device(),
                    tiled(OP, &n, (n.kv_len, ATT_KB), ATT_THREADS, smem)?,
                    qi,
                    ki,
                    vi,
                    li,
                    gi,
                    dsi,
                    dko,
                    dvo,
                    a.heads,
                    a.lq,
                    a.lk,
                    a.d,
                    a.dv,
                    a.causal,
                    a.scale,
                    parts,
                )?;
            }
        }
        Ok((dq, dk, dv))
    }
}
