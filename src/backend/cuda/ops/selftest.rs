//! Launchers for kernels/selftest.cu: the reductions, shuffles and tensor-core wrappers that
//! every other kernel relies on, run on host data and returned to the host, so that tests can
//! compare them with a CPU computation (in the emulator and on a GPU).

use super::super::backend::CudaBackend;
use super::super::launch::{kernels, In, LaunchCfg, Out};
use super::{alloc, input, output};
use crate::backend::Tensors;
use crate::error::{Error, Result};
use crate::tensor::DType;

kernels! {
    module "selftest";
    fn selftest_block_reduce(x: In, out: Out, cols: i32);
    fn selftest_shuffle(x: In, y: Out);
    fn selftest_mma(a: In, bt: In, c: In, d: Out, a_trans: i32);
    fn selftest_mma_bf16(a: In, bt: In, c: In, d: Out, a_trans: i32);
    fn selftest_mma_k8(a: In, bt: In, c: In, d: Out);
    fn selftest_cp_async(x: In, y: Out, n: i32);
    fn selftest_no_barrier(y: Out);
}

const OP: &str = "selftest";

/// (sum, max) of each row of x [rows, cols], with `block` threads per row.
pub fn block_reduce(
    be: &CudaBackend,
    x: &[f32],
    rows: usize,
    cols: usize,
    block: u32,
) -> Result<Vec<f32>> {
    let xt = be.tensor_from_f32(&[rows, cols], x, DType::F32)?;
    let mut out = alloc(be, [rows, 2], DType::F32)?;
    let cfg = LaunchCfg::new((rows as u32, 1, 1), (block, 1, 1), 0);
    selftest_block_reduce(
        be.device(),
        cfg,
        input(be, OP, "x", &xt)?,
        output(be, OP, "out", &mut out)?,
        cols as i32,
    )?;
    be.to_f32_vec(&out)
}

/// Per element: (shfl_down 1, shfl_xor 5, shfl from lane 7), x.len() a multiple of 32.
pub fn shuffles(be: &CudaBackend, x: &[f32], block: u32) -> Result<Vec<f32>> {
    let xt = be.tensor_from_f32(&[x.len()], x, DType::F32)?;
    let mut y = alloc(be, [x.len() * 3], DType::F32)?;
    let cfg = LaunchCfg::new(((x.len() / block as usize) as u32, 1, 1), (block, 1, 1), 0);
    selftest_shuffle(
        be.device(),
        cfg,
        input(be, OP, "x", &xt)?,
        output(be, OP, "y", &mut y)?,
    )?;
    be.to_f32_vec(&y)
}

/// D = A·B + C through ldmatrix and mma.sync: `a` is A [16, 16] row-major, or Aᵀ with
/// `a_transposed`; `bt` is Bᵀ [8, 16]; `c` is C [16, 8]. Inputs are rounded to `dtype`, f16
/// (mma.sync .f16) or bf16 (mma.sync .bf16, compute capability 8.0 and later).
pub fn mma_tile(
    be: &CudaBackend,
    a: &[f32],
    bt: &[f32],
    c: &[f32],
    a_transposed: bool,
    dtype: DType,
) -> Result<Vec<f32>> {
    let kernel = match dtype {
        DType::F16 => selftest_mma,
        DType::BF16 => selftest_mma_bf16,
        got => {
            return Err(Error::DType {
                op: OP,
                name: "dtype",
                got,
                expected: "f16 or bf16 (the tensor cores' 16-bit input types)".into(),
            })
        }
    };
    let at = be.tensor_from_f32(&[16, 16], a, dtype)?;
    let btt = be.tensor_from_f32(&[8, 16], bt, dtype)?;
    let ct = be.tensor_from_f32(&[16, 8], c, DType::F32)?;
    let mut d = alloc(be, [16, 8], DType::F32)?;
    let cfg = LaunchCfg::new((1, 1, 1), (32, 1, 1), 0);
    kernel(
        be.device(),
        cfg,
        input(be, OP, "a", &at)?,
        input(be, OP, "bt", &btt)?,
        input(be, OP, "c", &ct)?,
        output(be, OP, "d", &mut d)?,
        a_transposed as i32,
    )?;
    be.to_f32_vec(&d)
}

/// D = A·B + C through one mma.sync m16n8k8 (Turing's tensor-core shape; every architecture
/// from sm_75 has it): `a` is A [16, 8] row-major, `bt` is Bᵀ [8, 8], `c` is C [16, 8]. Inputs
/// are rounded to f16.
pub fn mma_k8_tile(be: &CudaBackend, a: &[f32], bt: &[f32], c: &[f32]) -> Result<Vec<f32>> {
    let at = be.tensor_from_f32(&[16, 8], a, DType::F16)?;
    let btt = be.tensor_from_f32(&[8, 8], bt, DType::F16)?;
    let ct = be.tensor_from_f32(&[16, 8], c, DType::F32)?;
    let mut d = alloc(be, [16, 8], DType::F32)?;
    let cfg = LaunchCfg::new((1, 1, 1), (32, 1, 1), 0);
    selftest_mma_k8(
        be.device(),
        cfg,
        input(be, OP, "a", &at)?,
        input(be, OP, "bt", &btt)?,
        input(be, OP, "c", &ct)?,
        output(be, OP, "d", &mut d)?,
    )?;
    be.to_f32_vec(&d)
}

/// x[0..n) copied through shared memory by cp.async in 16-byte chunks; y [256] holds the
/// whole chunks of x and zeros after them. x.len() must be at least 256.
pub fn cp_async_copy(be: &CudaBackend, x: &[f32], n: usize) -> Result<Vec<f32>> {
    let xt = be.tensor_from_f32(&[x.len()], x, DType::F32)?;
    let mut y = alloc(be, [256], DType::F32)?;
    let cfg = LaunchCfg::new((1, 1, 1), (64, 1, 1), 256 * 4);
    selftest_cp_async(
        be.device(),
        cfg,
        input(be, OP, "x", &xt)?,
        output(be, OP, "y", &mut y)?,
        n as i32,
    )?;
    be.to_f32_vec(&y)
}

/// A kernel that lacks a `__syncthreads` between writing and reading shared memory, run on
/// `blocks` blocks of `threads` threads (the emulator must expose it; not for a GPU).
pub fn missing_barrier(be: &CudaBackend, blocks: u32, threads: u32) -> Result<Vec<f32>> {
    let mut y = alloc(be, [(blocks * threads) as usize], DType::F32)?;
    let cfg = LaunchCfg::new((blocks, 1, 1), (threads, 1, 1), threads * 4);
    selftest_no_barrier(be.device(), cfg, output(be, OP, "y", &mut y)?)?;
    be.to_f32_vec(&y)
}
