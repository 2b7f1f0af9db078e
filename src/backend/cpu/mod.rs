//! The CPU backend: the numeric reference for every GPU kernel, and the backend that runs the
//! whole workflow on small models where there is no GPU.
//!
//! Plain, readable Rust: each op family in its own file (which implements the family's trait,
//! e.g. `impl LinearOps for CpuBackend` in linear.rs), written once generic over
//! [`Real`] (f32 for work, f64 for gradient checks), rayon across batch, heads and rows,
//! the `gemm` crate for matrix products and im2col convolutions.

pub mod activation;
pub mod adafactor;
pub mod alloc;
pub mod attention;
pub mod conv;
pub mod decompose;
pub mod diffusion;
pub mod elementwise;
pub mod flash;
pub mod gemm;
pub mod gemm_bf16;
pub mod layout;
pub mod linear;
pub mod norm;
pub mod optim;
pub mod optim8;
pub mod profile;
pub mod real;
pub mod vact;
pub mod vexp;

use crate::backend::BackendInfo;
use crate::error::{Error, Result};
use crate::tensor::{DType, Shape, Tensor};
pub use real::Real;

use std::sync::atomic::{AtomicU64, Ordering};

/// The CPU backend. Threads come from rayon's global pool. Every op takes f32 or f64 inputs;
/// the compute dtype only says what models load their weights as: f32 normally, f64 for
/// gradient checks through whole models.
#[derive(Clone, Copy, Debug)]
pub struct CpuBackend {
    dtype: DType,
    precision: CpuPrecision,
}

/// How the CPU computes the products of f32 activations with frozen weights (`cpu_precision`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuPrecision {
    /// Plain f32: the reference.
    F32,
    /// PyTorch's CPU autocast in bf16, for the products only: the linear and convolution
    /// products with a frozen weight (forward and input gradient) round both operands to
    /// bf16 and sum in f32 (gemm_bf16.rs); outputs, every other op, the adapters' own
    /// products and gradients, and the optimizer stay f32. Needs AVX512_BF16.
    Bf16,
}

impl CpuPrecision {
    pub const ALL: [CpuPrecision; 2] = [CpuPrecision::F32, CpuPrecision::Bf16];
    pub fn name(self) -> &'static str {
        match self {
            CpuPrecision::F32 => "f32",
            CpuPrecision::Bf16 => "bf16",
        }
    }
    /// Why this CPU cannot compute in `self`, or None when it can.
    pub fn unsupported(self) -> Option<String> {
        match self {
            CpuPrecision::Bf16 if !gemm_bf16::available() => {
                Some(format!("this CPU lacks {}", gemm_bf16::REQUIRES))
            }
            _ => None,
        }
    }
}

impl CpuBackend {
    /// The f32 backend.
    pub const fn new() -> Self {
        CpuBackend {
            dtype: DType::F32,
            precision: CpuPrecision::F32,
        }
    }
    /// Models load in f64: for finite-difference checks of whole models.
    pub const fn f64() -> Self {
        CpuBackend {
            dtype: DType::F64,
            precision: CpuPrecision::F32,
        }
    }
    /// The f32 backend whose products with frozen weights compute in `precision`; an error
    /// naming the missing CPU feature where this CPU cannot.
    pub fn with_precision(precision: CpuPrecision) -> Result<Self> {
        if let Some(why) = precision.unsupported() {
            return Err(Error::BadValue {
                op: "the CPU backend",
                name: "cpu_precision",
                value: precision.name().into(),
                expected: format!("{why}, which bf16 products need; use cpu_precision: f32"),
            });
        }
        Ok(CpuBackend {
            precision,
            ..CpuBackend::new()
        })
    }
    /// What the products with frozen weights compute in.
    pub fn precision(&self) -> CpuPrecision {
        self.precision
    }
}

impl Default for CpuBackend {
    fn default() -> Self {
        CpuBackend::new()
    }
}

/// Runs `$f::<f32>` or `$f::<f64>` by the dtype of `$x`; f16 is refused with a hint. The call
/// is timed when the profile is on (profile.rs).
macro_rules! dispatch {
    ($op:expr, $x:expr, $f:ident ( $($arg:expr),* $(,)? )) => {{
        let _timer = $crate::backend::cpu::profile::OpTimer::start($op, $x);
        match $x.dtype() {
            $crate::tensor::DType::F32 => $f::<f32>($($arg),*),
            $crate::tensor::DType::F64 => $f::<f64>($($arg),*),
            d => Err($crate::backend::cpu::cpu_dtype_error($op, d)),
        }
    }};
}
pub(crate) use dispatch;

pub(crate) fn cpu_dtype_error(op: &'static str, got: DType) -> Error {
    Error::DType {
        op,
        name: "input",
        got,
        expected: "f32 or f64 on the CPU backend (convert f16 with `cast` first)".into(),
    }
}

/// The elements of `t` as `T`, or an error naming the op and argument.
pub(crate) fn data<'a, T: Real>(
    op: &'static str,
    name: &'static str,
    t: &'a Tensor,
) -> Result<&'a [T]> {
    T::data(t).ok_or_else(|| dtype_error::<T>(op, name, t))
}

/// The elements of `t` as `T`, mutable.
pub(crate) fn data_mut<'a, T: Real>(
    op: &'static str,
    name: &'static str,
    t: &'a mut Tensor,
) -> Result<&'a mut [T]> {
    let got = t.dtype();
    T::data_mut(t).ok_or(Error::DType {
        op,
        name,
        got,
        expected: T::DTYPE.to_string(),
    })
}

fn dtype_error<T: Real>(op: &'static str, name: &'static str, t: &Tensor) -> Error {
    Error::DType {
        op,
        name,
        got: t.dtype(),
        expected: format!("{} like the op's first input", T::DTYPE),
    }
}

/// Bytes of every tensor the CPU ops have returned since the process started: a diagnostic
/// that measures how much a forward computes in all (its intermediate activations), to compare
/// with what a tape keeps.
static OUTPUT_BYTES: AtomicU64 = AtomicU64::new(0);

/// The running total of bytes returned by CPU ops (see [`OUTPUT_BYTES`]).
pub fn output_bytes() -> u64 {
    OUTPUT_BYTES.load(Ordering::Relaxed)
}

/// Wraps computed elements into a host tensor.
pub(crate) fn tensor<T: Real>(shape: impl Into<Shape>, v: Vec<T>) -> Result<Tensor> {
    OUTPUT_BYTES.fetch_add(
        (v.len() * std::mem::size_of::<T>()) as u64,
        Ordering::Relaxed,
    );
    Tensor::from_cpu(shape, T::into_cpu_data(v))
}

impl BackendInfo for CpuBackend {
    fn name(&self) -> &'static str {
        "cpu"
    }
    fn compute_dtype(&self) -> DType {
        self.dtype
    }
}
