//! `CudaBackend`: the whole `Backend` op set on a [`Device`] (a GPU or the kernel emulator).
//! Each method checks its arguments with the shared checks, allocates its outputs from the
//! device's pool and launches the family's kernels (ops/<family>.rs, kernels/<family>.cu).

use std::sync::Arc;

use super::choice::{Impl, KernelChoice};
use super::device::Device;
use super::ops;
use crate::backend::{
    Activation, AdamW, Attention, Backend, Conv2d, DeviceMemory, LinearOut, Lora, LoraBackward,
    NormStats, Pad2d, TimestepEmbedding,
};
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};

/// The CUDA backend: activations and frozen weights in `dtype` (f16 or f32), LoRA weights,
/// their gradients and the optimizer state in f32, f32 accumulation everywhere.
#[derive(Clone)]
pub struct CudaBackend {
    dev: Arc<Device>,
    dtype: DType,
    kernels: KernelChoice,
}

impl CudaBackend {
    /// A backend computing in `dtype` (f16 or f32) on `dev`.
    pub fn new(dev: Arc<Device>, dtype: DType) -> Result<CudaBackend> {
        if dtype == DType::F64 {
            return Err(Error::DType {
                op: "CudaBackend::new",
                name: "dtype",
                got: dtype,
                expected: "f16 or f32 (f64 exists on the CPU backend only)".into(),
            });
        }
        Ok(CudaBackend {
            dev,
            dtype,
            kernels: KernelChoice::from_env()?,
        })
    }
    /// The same backend with the kernel families chosen by `kernels` (tests compare the fast
    /// kernels with their simple twins this way).
    pub fn with_kernels(mut self, kernels: KernelChoice) -> CudaBackend {
        self.kernels = kernels;
        self
    }
    /// Which implementation each kernel family runs as asked; fast kernels serve f16 only
    /// (see [`CudaBackend::fast`]).
    pub fn kernels(&self) -> KernelChoice {
        self.kernels
    }
    /// Whether a family set to `choice` runs its fast kernels here: asked for, and f16.
    pub(crate) fn fast(&self, choice: Impl) -> bool {
        choice == Impl::Fast && self.dtype == DType::F16
    }
    pub fn device(&self) -> &Arc<Device> {
        &self.dev
    }
}

impl Backend for CudaBackend {
    fn name(&self) -> &'static str {
        self.dev.name()
    }
    fn compute_dtype(&self) -> DType {
        self.dtype
    }
    fn device_memory(&self) -> Option<DeviceMemory> {
        let s = self.dev.pool_stats();
        Some(DeviceMemory {
            in_use: s.in_use,
            peak: s.peak_in_use,
        })
    }
    fn release_cache(&self) {
        self.dev.release_cache();
    }
    fn device_free_memory(&self) -> Option<usize> {
        self.dev.mem_info().map(|(free, _)| free)
    }
    fn zeros(&self, shape: &[usize], dtype: DType) -> Result<Tensor> {
        ops::elementwise::zeros(self, shape, dtype)
    }
    fn tensor_from_f32(&self, shape: &[usize], data: &[f32], dtype: DType) -> Result<Tensor> {
        ops::elementwise::tensor_from_f32(self, shape, data, dtype)
    }
    fn to_f32_vec(&self, x: &Tensor) -> Result<Vec<f32>> {
        ops::elementwise::to_f32_vec(self, x)
    }
    fn cast(&self, x: &Tensor, dtype: DType) -> Result<Tensor> {
        ops::elementwise::cast(self, x, dtype)
    }

    fn linear(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: Option<&Tensor>,
        lora: Option<Lora<'_>>,
    ) -> Result<LinearOut> {
        ops::linear::linear(self, x, w, bias, lora)
    }
    fn linear_backward(
        &self,
        dy: &Tensor,
        w: &Tensor,
        lora: Option<LoraBackward<'_>>,
        want_dx: bool,
    ) -> Result<Option<Tensor>> {
        ops::linear::linear_backward(self, dy, w, lora, want_dx)
    }

    fn conv2d(&self, x: &Tensor, w: &Tensor, bias: Option<&Tensor>, p: Conv2d) -> Result<Tensor> {
        ops::conv::conv2d(self, x, w, bias, p)
    }
    fn conv2d_input_grad(
        &self,
        dy: &Tensor,
        w: &Tensor,
        input_hw: (usize, usize),
        p: Conv2d,
    ) -> Result<Tensor> {
        ops::conv::conv2d_input_grad(self, dy, w, input_hw, p)
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
        ops::norm::group_norm(self, x, gamma, beta, groups, eps, silu)
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
        ops::norm::group_norm_backward(self, dy, x, gamma, beta, stats, groups, silu)
    }
    fn layer_norm(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        eps: f64,
    ) -> Result<(Tensor, NormStats)> {
        ops::norm::layer_norm(self, x, gamma, beta, eps)
    }
    fn layer_norm_backward(
        &self,
        dy: &Tensor,
        x: &Tensor,
        gamma: &Tensor,
        stats: &NormStats,
    ) -> Result<Tensor> {
        ops::norm::layer_norm_backward(self, dy, x, gamma, stats)
    }

    fn activation(&self, x: &Tensor, act: Activation) -> Result<Tensor> {
        ops::activation::activation(self, x, act)
    }
    fn activation_backward(&self, dy: &Tensor, x: &Tensor, act: Activation) -> Result<Tensor> {
        ops::activation::activation_backward(self, dy, x, act)
    }
    fn geglu(&self, x: &Tensor) -> Result<Tensor> {
        ops::activation::geglu(self, x)
    }
    fn geglu_backward(&self, dy: &Tensor, x: &Tensor) -> Result<Tensor> {
        ops::activation::geglu_backward(self, dy, x)
    }

    fn attention(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        p: Attention,
    ) -> Result<(Tensor, Tensor)> {
        ops::attention::attention(self, q, k, v, p)
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
        ops::attention::attention_backward(self, q, k, v, o, lse, d_o, p)
    }

    fn upsample_nearest2x(&self, x: &Tensor) -> Result<Tensor> {
        ops::layout::upsample_nearest2x(self, x)
    }
    fn upsample_nearest2x_backward(&self, dy: &Tensor) -> Result<Tensor> {
        ops::layout::upsample_nearest2x_backward(self, dy)
    }
    fn concat_channels(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        ops::layout::concat_channels(self, a, b)
    }
    fn split_channels(&self, dy: &Tensor, ca: usize) -> Result<(Tensor, Tensor)> {
        ops::layout::split_channels(self, dy, ca)
    }
    fn pad2d(&self, x: &Tensor, pad: Pad2d) -> Result<Tensor> {
        ops::layout::pad2d(self, x, pad)
    }
    fn nchw_to_nlc(&self, x: &Tensor) -> Result<Tensor> {
        ops::layout::nchw_to_nlc(self, x)
    }
    fn nlc_to_nchw(&self, x: &Tensor, h: usize, w: usize) -> Result<Tensor> {
        ops::layout::nlc_to_nchw(self, x, h, w)
    }
    fn add(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        ops::elementwise::add(self, a, b)
    }
    fn add_assign(&self, a: &mut Tensor, b: &Tensor) -> Result<()> {
        ops::elementwise::add_assign(self, a, b)
    }
    fn scale(&self, x: &Tensor, s: f64) -> Result<Tensor> {
        ops::elementwise::scale(self, x, s)
    }
    fn add_channel_bias(&self, x: &Tensor, bias: &Tensor) -> Result<Tensor> {
        ops::elementwise::add_channel_bias(self, x, bias)
    }
    fn embedding(&self, table: &Tensor, ids: &[u32]) -> Result<Tensor> {
        ops::layout::embedding(self, table, ids)
    }

    fn timestep_embedding(&self, t: &Tensor, p: TimestepEmbedding) -> Result<Tensor> {
        ops::diffusion::timestep_embedding(self, t, p)
    }
    fn add_noise(&self, x: &Tensor, z: &Tensor, a: &[f64], b: &[f64]) -> Result<Tensor> {
        ops::diffusion::add_noise(self, x, z, a, b)
    }
    fn gaussian_sample(
        &self,
        mean: &Tensor,
        logvar: &Tensor,
        noise: Option<&Tensor>,
        scale: f64,
    ) -> Result<Tensor> {
        ops::diffusion::gaussian_sample(self, mean, logvar, noise, scale)
    }
    fn mse_loss(
        &self,
        pred: &Tensor,
        target: &Tensor,
        weights: Option<&[f64]>,
        grad_scale: f64,
    ) -> Result<(f64, Tensor)> {
        ops::diffusion::mse_loss(self, pred, target, weights, grad_scale)
    }

    fn sum_squares(&self, x: &Tensor) -> Result<f64> {
        ops::optim::sum_squares(self, x)
    }
    fn adamw_step(
        &self,
        params: &mut Tensor,
        grads: &Tensor,
        m: &mut Tensor,
        v: &mut Tensor,
        h: &AdamW,
    ) -> Result<()> {
        ops::optim::adamw_step(self, params, grads, m, v, h)
    }
}
