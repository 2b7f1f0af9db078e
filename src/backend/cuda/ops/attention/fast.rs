//! The fast attention kernels (kernels/attention_fast.cu) for f16 backends, and bf16 ones on
//! compute capability 8.0+ (`CudaBackend::fast16`; the `_bf16` entry points, same tiles and
//! shared memory): flash-attention-2 style on tensor cores, one launch for the forward; the
//! backward as rowsum(dO ⊙ O), then dK, dV per key tile and dQ per query tile (no atomics:
//! deterministic). The head width picks a bucket DM (64, 96 or 160: the kernels' register
//! arrays and shared-memory rows).
//!
//! Declines (the caller then runs the simple kernels of attention.rs): heads wider than
//! [`FAST_MAX_HEAD_DIM`] (up to 256), dv = 0 and Lk = 0, tensors in another dtype than the
//! backend's. The lse of either forward feeds
//! either backward.
//!
//! Key tiles from the device's shared memory per block ([`Bucket`]): the forward and dQ take
//! AF_KT (64 keys; 32 at DM = 160) where it fits, else AF_KT_SMALL (half). On 64 KiB (sm_75:
//! T4, RTX 20xx) the 96 bucket's forward and dQ and the 160 bucket's dQ run on half tiles
//! (SD1.5's 80- and 160-wide heads); every other launch, and every launch on 99 KiB and
//! more, on the full tiles. dK/dV fit 64 KiB in every bucket (64768 bytes at DM = 160).

use super::super::super::backend::CudaBackend;
use super::super::super::launch::{kernels, In, LaunchCfg, Out};
use super::super::super::tiles::{
    af_dkv_smem, af_dq_smem, af_fwd_smem, af_kt, af_kt_small, AF_ROWS, AF_THREADS,
};
use super::super::{input, int, output};
use super::{tiled, Args, Saved};
use crate::backend::check::attention::AttentionDims;
use crate::backend::BackendInfo;
use crate::error::Result;
use crate::tensor::{DType, Tensor};

kernels! {
    module "attention_fast";
    fn attention_fast_fwd_d64(q: In, k: In, v: In, o: Out, lse: Out, heads: i32, lq: i32,
        lk: i32, d: i32, dv: i32, causal: i32, scale: f32);
    fn attention_fast_fwd_d96(q: In, k: In, v: In, o: Out, lse: Out, heads: i32, lq: i32,
        lk: i32, d: i32, dv: i32, causal: i32, scale: f32);
    fn attention_fast_fwd_d160(q: In, k: In, v: In, o: Out, lse: Out, heads: i32, lq: i32,
        lk: i32, d: i32, dv: i32, causal: i32, scale: f32);
    fn attention_fast_fwd_d96_kt32(q: In, k: In, v: In, o: Out, lse: Out, heads: i32, lq: i32,
        lk: i32, d: i32, dv: i32, causal: i32, scale: f32);
    fn attention_fast_dot(o: In, d_o: In, dsum: Out, heads: i32, lq: i32, dv: i32, n: i32);
    fn attention_fast_dkv_d64(q: In, k: In, v: In, lse: In, d_o: In, dsum: In, dk: Out,
        dv_out: Out, heads: i32, lq: i32, lk: i32, d: i32, dv: i32, causal: i32, scale: f32);
    fn attention_fast_dkv_d96(q: In, k: In, v: In, lse: In, d_o: In, dsum: In, dk: Out,
        dv_out: Out, heads: i32, lq: i32, lk: i32, d: i32, dv: i32, causal: i32, scale: f32);
    fn attention_fast_dkv_d160(q: In, k: In, v: In, lse: In, d_o: In, dsum: In, dk: Out,
        dv_out: Out, heads: i32, lq: i32, lk: i32, d: i32, dv: i32, causal: i32, scale: f32);
    fn attention_fast_dq_d64(q: In, k: In, v: In, lse: In, d_o: In, dsum: In, dq: Out,
        heads: i32, lq: i32, lk: i32, d: i32, dv: i32, causal: i32, scale: f32);
    fn attention_fast_dq_d96(q: In, k: In, v: In, lse: In, d_o: In, dsum: In, dq: Out,
        heads: i32, lq: i32, lk: i32, d: i32, dv: i32, causal: i32, scale: f32);
    fn attention_fast_dq_d160(q: In, k: In, v: In, lse: In, d_o: In, dsum: In, dq: Out,
        heads: i32, lq: i32, lk: i32, d: i32, dv: i32, causal: i32, scale: f32);
    fn attention_fast_dq_d96_kt32(q: In, k: In, v: In, lse: In, d_o: In, dsum: In, dq: Out,
        heads: i32, lq: i32, lk: i32, d: i32, dv: i32, causal: i32, scale: f32);
    fn attention_fast_dq_d160_kt16(q: In, k: In, v: In, lse: In, d_o: In, dsum: In, dq: Out,
        heads: i32, lq: i32, lk: i32, d: i32, dv: i32, causal: i32, scale: f32);
    fn attention_fast_fwd_d64_bf16(q: In, k: In, v: In, o: Out, lse: Out, heads: i32, lq: i32,
        lk: i32, d: i32, dv: i32, causal: i32, scale: f32);
    fn attention_fast_fwd_d96_bf16(q: In, k: In, v: In, o: Out, lse: Out, heads: i32, lq: i32,
        lk: i32, d: i32, dv: i32, causal: i32, scale: f32);
    fn attention_fast_fwd_d160_bf16(q: In, k: In, v: In, o: Out, lse: Out, heads: i32, lq: i32,
        lk: i32, d: i32, dv: i32, causal: i32, scale: f32);
    fn attention_fast_fwd_d96_kt32_bf16(q: In, k: In, v: In, o: Out, lse: Out, heads: i32, lq: i32,
        lk: i32, d: i32, dv: i32, causal: i32, scale: f32);
    fn attention_fast_dot_bf16(o: In, d_o: In, dsum: Out, heads: i32, lq: i32, dv: i32, n: i32);
    fn attention_fast_dkv_d64_bf16(q: In, k: In, v: In, lse: In, d_o: In, dsum: In, dk: Out,
        dv_out: Out, heads: i32, lq: i32, lk: i32, d: i32, dv: i32, causal: i32, scale: f32);
    fn attention_fast_dkv_d96_bf16(q: In, k: In, v: In, lse: In, d_o: In, dsum: In, dk: Out,
        dv_out: Out, heads: i32, lq: i32, lk: i32, d: i32, dv: i32, causal: i32, scale: f32);
    fn attention_fast_dkv_d160_bf16(q: In, k: In, v: In, lse: In, d_o: In, dsum: In, dk: Out,
        dv_out: Out, heads: i32, lq: i32, lk: i32, d: i32, dv: i32, causal: i32, scale: f32);
    fn attention_fast_dq_d64_bf16(q: In, k: In, v: In, lse: In, d_o: In, dsum: In, dq: Out,
        heads: i32, lq: i32, lk: i32, d: i32, dv: i32, causal: i32, scale: f32);
    fn attention_fast_dq_d96_bf16(q: In, k: In, v: In, lse: In, d_o: In, dsum: In, dq: Out,
        heads: i32, lq: i32, lk: i32, d: i32, dv: i32, causal: i32, scale: f32);
    fn attention_fast_dq_d160_bf16(q: In, k: In, v: In, lse: In, d_o: In, dsum: In, dq: Out,
        heads: i32, lq: i32, lk: i32, d: i32, dv: i32, causal: i32, scale: f32);
    fn attention_fast_dq_d96_kt32_bf16(q: In, k: In, v: In, lse: In, d_o: In, dsum: In, dq: Out,
        heads: i32, lq: i32, lk: i32, d: i32, dv: i32, causal: i32, scale: f32);
    fn attention_fast_dq_d160_kt16_bf16(q: In, k: In, v: In, lse: In, d_o: In, dsum: In, dq: Out,
        heads: i32, lq: i32, lk: i32, d: i32, dv: i32, causal: i32, scale: f32);
}

/// The widest head (d and dv) the fast kernels take (their largest bucket).
pub(crate) const FAST_MAX_HEAD_DIM: usize = 160;
/// A shape's fast kernels on this device: the head bucket DM (a multiple of 16 >= d, dv: the
/// kernels' register arrays and smem rows) and the key tiles of the forward and dQ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Bucket {
    pub dm: usize,
    pub fwd_kt: usize,
    pub dq_kt: usize,
    /// bf16 tensors (the `_bf16` entry points), else f16.
    pub bf16: bool,
}

/// The fast kernels for shape `n` of tensors in `dtype` on `be`'s device, or None when the
/// shape stays on the simple kernels (see the module doc; also when a kernel's shared memory
/// fits neither tile, which no supported device's limits cause).
pub(super) fn bucket(be: &CudaBackend, n: &AttentionDims, dtype: DType) -> Option<Bucket> {
    let w = n.head_dim.max(n.v_head_dim);
    if !be.fast16(be.kernels().attention)
        || dtype != be.compute_dtype()
        || n.head_dim == 0
        || n.v_head_dim == 0
        || n.kv_len == 0
    {
        return None;
    }
    let dm = [64, 96, FAST_MAX_HEAD_DIM]
        .into_iter()
        .find(|&dm| w <= dm)?;
    let limit = be.device().limits().smem_per_block as usize;
    let tile = |smem: fn(usize, usize) -> usize| {
        [af_kt(dm), af_kt_small(dm)]
            .into_iter()
            .find(|&kt| smem(dm, kt) <= limit)
    };
    if af_dkv_smem(dm) > limit {
        return None;
    }
    Some(Bucket {
        dm,
        fwd_kt: tile(af_fwd_smem)?,
        dq_kt: tile(af_dq_smem)?,
        bf16: dtype == DType::BF16,
    })
}

/// O and lse of the forward in bucket `bk` (`n` has at least one query row).
pub(super) fn forward(
    be: &CudaBackend,
    bk: Bucket,
    n: &AttentionDims,
    a: &Args,
    [q, k, v]: [In; 3],
    (o, lse): (Out, Out),
) -> Result<()> {
    const OP: &str = "attention";
    let f = match (bk.dm, bk.fwd_kt, bk.bf16) {
        (64, _, false) => attention_fast_fwd_d64,
        (96, 32, false) => attention_fast_fwd_d96_kt32,
        (96, _, false) => attention_fast_fwd_d96,
        (_, _, false) => attention_fast_fwd_d160,
        (64, _, true) => attention_fast_fwd_d64_bf16,
        (96, 32, true) => attention_fast_fwd_d96_kt32_bf16,
        (96, _, true) => attention_fast_fwd_d96_bf16,
        (_, _, true) => attention_fast_fwd_d160_bf16,
    };
    f(
        be.device(),
        tiled(
            OP,
            n,
            (n.q_len, AF_ROWS),
            AF_THREADS,
            af_fwd_smem(bk.dm, bk.fwd_kt),
        )?,
        q,
        k,
        v,
        o,
        lse,
        a.heads,
        a.lq,
        a.lk,
        a.d,
        a.dv,
        a.causal,
        a.scale,
    )
}

/// dQ, dK and dV in bucket `bk`; `dsum` [B·H·Lq] f32 receives D = rowsum(dO ⊙ O).
pub(super) fn backward(
    be: &CudaBackend,
    bk: Bucket,
    n: &AttentionDims,
    a: &Args,
    s: &Saved,
    dsum: &mut Tensor,
    (dq, dk, dv): (Out, Out, Out),
) -> Result<()> {
    const OP: &str = "attention_backward";
    let rows = n.batch * n.heads * n.q_len;
    if rows > 0 {
        let warps = AF_THREADS / 32;
        let dot = if bk.bf16 {
            attention_fast_dot_bf16
        } else {
            attention_fast_dot
        };
        dot(
            be.device(),
            LaunchCfg::new(
                (int(OP, "q", rows.div_ceil(warps))? as u32, 1, 1),
                (AF_THREADS as u32, 1, 1),
                0,
            ),
            s.o,
            s.d_o,
            output(be, OP, "dsum", dsum)?,
            a.heads,
            a.lq,
            a.dv,
            int(OP, "q", rows)?,
        )?;
    }
    let di = input(be, OP, "dsum", dsum)?;
    if n.batch * n.heads > 0 {
        // Lq = 0: the dK/dV kernel writes dK = dV = 0.
        let f = match (bk.dm, bk.bf16) {
            (64, false) => attention_fast_dkv_d64,
            (96, false) => attention_fast_dkv_d96,
            (_, false) => attention_fast_dkv_d160,
            (64, true) => attention_fast_dkv_d64_bf16,
            (96, true) => attention_fast_dkv_d96_bf16,
            (_, true) => attention_fast_dkv_d160_bf16,
        };
        f(
            be.device(),
            tiled(OP, n, (n.kv_len, AF_ROWS), AF_THREADS, af_dkv_smem(bk.dm))?,
            s.q,
            s.k,
            s.v,
            s.lse,
            s.d_o,
            di,
            dk,
            dv,
            a.heads,
            a.lq,
            a.lk,
            a.d,
            a.dv,
            a.causal,
            a.scale,
        )?;
    }
    if rows > 0 {
        let f = match (bk.dm, bk.dq_kt, bk.bf16) {
            (64, _, false) => attention_fast_dq_d64,
            (96, 32, false) => attention_fast_dq_d96_kt32,
            (96, _, false) => attention_fast_dq_d96,
            (_, 16, false) => attention_fast_dq_d160_kt16,
            (_, _, false) => attention_fast_dq_d160,
            (64, _, true) => attention_fast_dq_d64_bf16,
            (96, 32, true) => attention_fast_dq_d96_kt32_bf16,
            (96, _, true) => attention_fast_dq_d96_bf16,
            (_, 16, true) => attention_fast_dq_d160_kt16_bf16,
            (_, _, true) => attention_fast_dq_d160_bf16,
        };
        f(
            be.device(),
            tiled(
                OP,
                n,
                (n.q_len, AF_ROWS),
                AF_THREADS,
                af_dq_smem(bk.dm, bk.dq_kt),
            )?,
            s.q,
            s.k,
            s.v,
            s.lse,
            s.d_o,
            di,
            dq,
            a.heads,
            a.lq,
            a.lk,
            a.d,
            a.dv,
            a.causal,
            a.scale,
        )?;
    }
    Ok(())
}
