//! The op families of the CUDA backend, one file per kernels/<family>.cu: each declares its
//! kernels' launchers with `kernels!` and implements its `Backend` methods. Shared here: how a
//! tensor's device buffer is reached, how outputs are allocated, and dtype dispatch.

pub(crate) mod activation;
pub(crate) mod adafactor;
pub(crate) mod attention;
pub(crate) mod conv;
pub(crate) mod decompose;
pub(crate) mod diffusion;
pub(crate) mod elementwise;
pub(crate) mod layout;
pub(crate) mod linear;
pub(crate) mod norm;
pub(crate) mod optim;
pub(crate) mod optim8;
pub mod selftest;

use super::backend::CudaBackend;
use super::buffer::DeviceBuffer;
use super::launch::{In, Out};
use crate::error::{Error, Result};
use crate::tensor::{DType, Shape, Storage, Tensor};

/// Threads per block for the simple elementwise and row kernels.
pub(crate) const BLOCK: u32 = 256;

/// The device buffer of `t`, which must live on `be`'s device.
pub(crate) fn buffer<'t>(
    be: &CudaBackend,
    op: &'static str,
    name: &'static str,
    t: &'t Tensor,
) -> Result<&'t DeviceBuffer> {
    match t.storage() {
        Storage::Device(b) if std::sync::Arc::ptr_eq(b.device(), be.device()) => Ok(b),
        s => Err(Error::Device {
            op,
            name,
            got: s.device_name().into(),
            backend: be.device().name(),
        }),
    }
}

/// `t` as a kernel input.
pub(crate) fn input(
    be: &CudaBackend,
    op: &'static str,
    name: &'static str,
    t: &Tensor,
) -> Result<In> {
    Ok(In(buffer(be, op, name, t)?.addr))
}

/// `t` as a kernel output (it must live on `be`'s device).
pub(crate) fn output(
    be: &CudaBackend,
    op: &'static str,
    name: &'static str,
    t: &mut Tensor,
) -> Result<Out> {
    Ok(Out(buffer(be, op, name, t)?.addr))
}

/// A fresh device tensor; its contents are unspecified (NaN-poisoned in the emulator), so the
/// kernel that fills it must write every element.
pub(crate) fn alloc(be: &CudaBackend, shape: impl Into<Shape>, dtype: DType) -> Result<Tensor> {
    let shape = shape.into();
    let buf = be.device().alloc(shape.numel(), dtype)?;
    Tensor::from_device(shape, buf)
}

/// The float dtypes device tensors and kernels hold.
pub(crate) const FLOAT_DTYPES: &str = "f16, bf16 or f32 on the CUDA backend";

/// `x` must hold `f16`, `bf16` or `f32` (the dtypes kernels are built for).
pub(crate) fn float_dtype(op: &'static str, name: &'static str, x: &Tensor) -> Result<DType> {
    device_dtype(op, name, x.dtype())
}

/// `d` must be `f16`, `bf16` or `f32`: what device tensors and kernels hold.
pub(crate) fn device_dtype(op: &'static str, name: &'static str, d: DType) -> Result<DType> {
    match d {
        DType::F16 | DType::BF16 | DType::F32 => Ok(d),
        d => Err(Error::DType {
            op,
            name,
            got: d,
            expected: FLOAT_DTYPES.into(),
        }),
    }
}

/// Element counts and sizes cross to kernels as i32: refuse what does not fit.
pub(crate) fn int(op: &'static str, name: &'static str, n: usize) -> Result<i32> {
    i32::try_from(n).map_err(|_| Error::BadValue {
        op,
        name,
        value: n.to_string(),
        expected: "at most 2^31 - 1 (split the batch)".into(),
    })
}

/// Launches the f32, f16 or bf16 twin of a kernel by `$dtype`:
/// `by_dtype!(dtype, op, add_f32, add_f16, add_bf16)(dev, cfg, args..)`.
macro_rules! by_dtype {
    ($dtype:expr, $op:expr, $f32:path, $f16:path, $bf16:path) => {
        match $dtype {
            $crate::tensor::DType::F32 => $f32,
            $crate::tensor::DType::F16 => $f16,
            $crate::tensor::DType::BF16 => $bf16,
            d => {
                return Err($crate::error::Error::DType {
                    op: $op,
                    name: "input",
                    got: d,
                    expected: $crate::backend::cuda::ops::FLOAT_DTYPES.into(),
                })
            }
        }
    };
}
pub(crate) use by_dtype;
