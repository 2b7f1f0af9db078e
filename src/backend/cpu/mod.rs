//! The CPU backend: the numeric reference for every GPU kernel, and the backend that runs the
//! whole workflow on small models where there is no GPU.
//!
//! Plain, readable Rust: each op family in its own file, written once generic over
//! [`Real`] (f32 for work, f64 for gradient checks), rayon across batch, heads and rows,
//! matrixmultiply for matrix products and im2col convolutions.

pub mod activation;
pub mod attention;
pub mod conv;
pub mod diffusion;
pub mod elementwise;
pub mod gemm;
pub mod layout;
pub mod linear;
pub mod norm;
pub mod optim;
pub mod real;

use crate::backend::{
    Activation, AdamW, Attention, Backend, Conv2d, LinearOut, Lora, LoraBackward, NormStats, Pad2d,
    TimestepEmbedding,
};
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
}

impl CpuBackend {
    /// The f32 backend.
    pub const fn new() -> Self {
        CpuBackend { dtype: DType::F32 }
    }
    /// Models load in f64: for finite-difference checks of whole models.
    pub const fn f64() -> Self {
        CpuBackend { dtype: DType::F64 }
    }
}

impl Default for CpuBackend {
    fn default() -> Self {
        CpuBackend::new()
    }
}

/// Runs `$f::<f32>` or `$f::<f64>` by the dtype of `$x`; f16 is refused with a hint.
macro_rules! dispatch {
    ($op:expr, $x:expr, $f:ident ( $($arg:expr),* $(,)? )) => {
        match $x.dtype() {
            $crate::tensor::DType::F32 => $f::<f32>($($arg),*),
            $crate::tensor::DType::F64 => $f::<f64>($($arg),*),
            d => Err($crate::backend::cpu::cpu_dtype_error($op, d)),
        }
    };
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

impl Backend for CpuBackend {
    fn name(&self) -> &'static str {
        "cpu"
    }
    fn compute_dtype(&self) -> DType {
        self.dtype
    }
    fn zeros(&self, shape: &[usize], dtype: DType) -> Result<Tensor> {
        Ok(Tensor::zeros(shape, dtype))
    }
    fn tensor_from_f32(&self, shape: &[usize], data: &[f32], dtype: DType) -> Result<Tensor> {
        let t = Tensor::from_f32(shape, data.to_vec())?;
        if dtype == DType::F32 {
            Ok(t)
        } else {
            elementwise::cast(&t, dtype)
        }
    }
    fn to_f32_vec(&self, x: &Tensor) -> Result<Vec<f32>> {
        Ok(x.to_f32_vec())
    }
    fn cast(&self, x: &Tensor, dtype: DType) -> Result<Tensor> {
        elementwise::cast(x, dtype)
    }

    fn linear(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: Option<&Tensor>,
        lora: Option<Lora<'_>>,
    ) -> Result<LinearOut> {
        linear::forward(x, w, bias, lora)
    }
    fn linear_backward(
        &self,
        dy: &Tensor,
        w: &Tensor,
        lora: Option<LoraBackward<'_>>,
        want_dx: bool,
    ) -> Result<Option<Tensor>> {
        linear::backward(dy, w, lora, want_dx)
    }

    fn conv2d(&self, x: &Tensor, w: &Tensor, bias: Option<&Tensor>, p: Conv2d) -> Result<Tensor> {
        conv::conv2d(x, w, bias, p)
    }
    fn conv2d_input_grad(
        &self,
        dy: &Tensor,
        w: &Tensor,
        input_hw: (usize, usize),
        p: Conv2d,
    ) -> Result<Tensor> {
        conv::conv2d_input_grad(dy, w, input_hw, p)
    }

    fn group_norm(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        groups: usize,
        eps: f64,
        silu: bool,
    ) -> Result<(Tensor, NormStats)> {
        norm::group_norm(x, gamma, beta, groups, eps, silu)
    }
    fn group_norm_backward(
        &self,
        dy: &Tensor,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        stats: &NormStats,
        groups: usize,
        silu: bool,
    ) -> Result<Tensor> {
        norm::group_norm_backward(dy, x, gamma, beta, stats, groups, silu)
    }
    fn layer_norm(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        eps: f64,
    ) -> Result<(Tensor, NormStats)> {
        norm::layer_norm(x, gamma, beta, eps)
    }
    fn layer_norm_backward(
        &self,
        dy: &Tensor,
        x: &Tensor,
        gamma: &Tensor,
        stats: &NormStats,
    ) -> Result<Tensor> {
        norm::layer_norm_backward(dy, x, gamma, stats)
    }

    fn activation(&self, x: &Tensor, act: Activation) -> Result<Tensor> {
        activation::forward(x, act)
    }
    fn activation_backward(&self, dy: &Tensor, x: &Tensor, act: Activation) -> Result<Tensor> {
        activation::backward(dy, x, act)
    }
    fn geglu(&self, x: &Tensor) -> Result<Tensor> {
        activation::geglu(x)
    }
    fn geglu_backward(&self, dy: &Tensor, x: &Tensor) -> Result<Tensor> {
        activation::geglu_backward(dy, x)
    }

    fn attention(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        p: Attention,
    ) -> Result<(Tensor, Tensor)> {
        attention::forward(q, k, v, p)
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
        attention::backward(q, k, v, o, lse, d_o, p)
    }

    fn upsample_nearest2x(&self, x: &Tensor) -> Result<Tensor> {
        layout::upsample_nearest2x(x)
    }
    fn upsample_nearest2x_backward(&self, dy: &Tensor) -> Result<Tensor> {
        layout::upsample_nearest2x_backward(dy)
    }
    fn concat_channels(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        layout::concat_channels(a, b)
    }
    fn split_channels(&self, dy: &Tensor, ca: usize) -> Result<(Tensor, Tensor)> {
        layout::split_channels(dy, ca)
    }
    fn pad2d(&self, x: &Tensor, pad: Pad2d) -> Result<Tensor> {
        layout::pad2d(x, pad)
    }
    fn nchw_to_nlc(&self, x: &Tensor) -> Result<Tensor> {
        layout::nchw_to_nlc(x)
    }
    fn nlc_to_nchw(&self, x: &Tensor, h: usize, w: usize) -> Result<Tensor> {
        layout::nlc_to_nchw(x, h, w)
    }
    fn add(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        elementwise::add(a, b)
    }
    fn add_assign(&self, a: &mut Tensor, b: &Tensor) -> Result<()> {
        elementwise::add_assign(a, b)
    }
    fn scale(&self, x: &Tensor, s: f64) -> Result<Tensor> {
        elementwise::scale(x, s)
    }
    fn add_channel_bias(&self, x: &Tensor, bias: &Tensor) -> Result<Tensor> {
        elementwise::add_channel_bias(x, bias)
    }

    fn embedding(&self, table: &Tensor, ids: &[u32]) -> Result<Tensor> {
        elementwise::embedding(table, ids)
    }

    fn add_noise(&self, x: &Tensor, z: &Tensor, a: &[f64], b: &[f64]) -> Result<Tensor> {
        diffusion::add_noise(x, z, a, b)
    }
    fn gaussian_sample(
        &self,
        mean: &Tensor,
        logvar: &Tensor,
        noise: Option<&Tensor>,
        scale: f64,
    ) -> Result<Tensor> {
        diffusion::gaussian_sample(mean, logvar, noise, scale)
    }
    fn timestep_embedding(&self, t: &Tensor, p: TimestepEmbedding) -> Result<Tensor> {
        diffusion::timestep_embedding(t, p)
    }
    fn mse_loss(
        &self,
        pred: &Tensor,
        target: &Tensor,
        weights: Option<&[f64]>,
        grad_scale: f64,
    ) -> Result<(f64, Tensor)> {
        diffusion::mse_loss(pred, target, weights, grad_scale)
    }

    fn sum_squares(&self, x: &Tensor) -> Result<f64> {
        optim::sum_squares(x)
    }
    fn adamw_step(
        &self,
        params: &mut Tensor,
        grads: &Tensor,
        m: &mut Tensor,
        v: &mut Tensor,
        h: &AdamW,
    ) -> Result<()> {
        optim::adamw_step(params, grads, m, v, h)
    }
}
