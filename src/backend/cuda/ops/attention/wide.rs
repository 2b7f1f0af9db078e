//! Attention forward for heads wider than the tiled kernels take ([`MAX_HEAD_DIM`]): the
//! VAE's single 512-wide head (kernels/attention_wide.cu). One block per query row keeps the
//! row's scores in shared memory, a chunk of keys at a time with an online softmax: the chunk
//! is as many keys as the device's shared memory per block holds beside the query row
//! ([`max_keys`]: an sm_80 about 41000, an sm_86/sm_89 about 24800, an sm_75 15840), so the
//! VAE at 1024x1024 (16384 keys) is one chunk on sm_80+ and two on Turing. Forward only:
//! nothing trains through a wide head.

use super::super::super::backend::CudaBackend;
use super::super::super::launch::{kernels, In, LaunchCfg, Out};
use super::super::super::profile::DeviceLimits;
use super::super::super::tiles::{wide_smem, WIDE_MAX_DIM, WIDE_STATIC_SMEM, WIDE_THREADS};
use super::super::{alloc, by_dtype, input, int, output};
use super::MAX_HEAD_DIM;
use crate::backend::check;
use crate::backend::check::attention::AttentionDims;
use crate::error::Result;
use crate::tensor::{DType, Tensor};

kernels! {
    module "attention_wide";
    fn attention_wide_fwd_f32(q: In, k: In, v: In, o: Out, lse: Out, heads: i32, lq: i32,
        lk: i32, d: i32, dv: i32, causal: i32, scale: f32, chunk: i32);
    fn attention_wide_fwd_f16(q: In, k: In, v: In, o: Out, lse: Out, heads: i32, lq: i32,
        lk: i32, d: i32, dv: i32, causal: i32, scale: f32, chunk: i32);
    fn attention_wide_fwd_bf16(q: In, k: In, v: In, o: Out, lse: Out, heads: i32, lq: i32,
        lk: i32, d: i32, dv: i32, causal: i32, scale: f32, chunk: i32);
}

/// The most keys of a chunk whose scores fit the shared memory of a device with `limits`
/// beside a `head_dim`-wide query row and the kernel's static scratch.
fn max_keys(limits: &DeviceLimits, head_dim: usize) -> usize {
    let smem = (limits.smem_per_block as usize).saturating_sub(WIDE_STATIC_SMEM);
    (0..=smem / 4)
        .rev()
        .find(|&lk| wide_smem(head_dim, lk) <= smem)
        .unwrap_or(0)
}

/// O and lse of attention with a head wider than [`MAX_HEAD_DIM`] (`n` already checked, `dt`
/// the dtype of q, k and v).
pub(crate) fn forward(
    be: &CudaBackend,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    n: &AttentionDims,
    dt: DType,
) -> Result<(Tensor, Tensor)> {
    const OP: &str = "attention";
    debug_assert!(n.head_dim > MAX_HEAD_DIM || n.v_head_dim > MAX_HEAD_DIM);
    for (name, dim) in [("q", n.head_dim), ("v", n.v_head_dim)] {
        if dim > WIDE_MAX_DIM {
            return Err(check::bad_value(
                OP,
                name,
                dim,
                &format!("a head at most {WIDE_MAX_DIM} wide on the CUDA backend"),
            ));
        }
    }
    let keys = max_keys(be.device().limits(), n.head_dim);
    if keys == 0 {
        return Err(check::bad_value(
            OP,
            "q",
            n.head_dim,
            &format!(
                "a head narrow enough for the shared memory of {}",
                be.device().limits().name
            ),
        ));
    }
    let chunk = n.kv_len.clamp(1, keys);
    let (qi, ki, vi) = (
        input(be, OP, "q", q)?,
        input(be, OP, "k", k)?,
        input(be, OP, "v", v)?,
    );
    let mut o = alloc(be, n.o_shape(), dt)?;
    let mut lse = alloc(be, n.lse_shape(), DType::F32)?;
    let rows = n.batch * n.heads * n.q_len;
    if rows == 0 {
        return Ok((o, lse));
    }
    let smem = wide_smem(n.head_dim, chunk);
    let cfg = LaunchCfg::new(
        (int(OP, "q", rows)? as u32, 1, 1),
        (WIDE_THREADS as u32, 1, 1),
        smem as u32,
    );
    let f = by_dtype!(
        dt,
        OP,
        attention_wide_fwd_f32,
        attention_wide_fwd_f16,
        attention_wide_fwd_bf16
    );
    f(
        be.device(),
        cfg,
        qi,
        ki,
        vi,
        output(be, OP, "o", &mut o)?,
        output(be, OP, "lse", &mut lse)?,
        int(OP, "heads", n.heads)?,
        int(OP, "q", n.q_len)?,
        int(OP, "k", n.kv_len)?,
        int(OP, "q", n.head_dim)?,
        int(OP, "v", n.v_head_dim)?,
        n.causal as i32,
        (1.0 / (n.head_dim as f64).sqrt()) as f32,
        int(OP, "k", chunk)?,
    )?;
    Ok((o, lse))
}
