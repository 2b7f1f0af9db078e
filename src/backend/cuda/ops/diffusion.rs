//! STUB: to be replaced by the kernels of this family.
#![allow(unused_variables)]
use super::super::backend::CudaBackend;
#[allow(unused_imports)]
use crate::backend::{
    Activation, AdamW, Attention, Conv2d, LinearOut, Lora, LoraBackward, NormStats, Pad2d,
    TimestepEmbedding,
};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

fn todo(op: &str) -> Error {
    Error::CudaUnavailable(format!("{op} has no CUDA kernel yet"))
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn timestep_embedding(
    be: &CudaBackend,
    t: &Tensor,
    p: TimestepEmbedding,
) -> Result<Tensor> {
    Err(todo("timestep_embedding"))
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn add_noise(
    be: &CudaBackend,
    x: &Tensor,
    z: &Tensor,
    a: &[f64],
    b: &[f64],
) -> Result<Tensor> {
    Err(todo("add_noise"))
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn gaussian_sample(
    be: &CudaBackend,
    mean: &Tensor,
    logvar: &Tensor,
    noise: Option<&Tensor>,
    scale: f64,
) -> Result<Tensor> {
    Err(todo("gaussian_sample"))
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn mse_loss(
    be: &CudaBackend,
    pred: &Tensor,
    target: &Tensor,
    weights: Option<&[f64]>,
    grad_scale: f64,
) -> Result<(f64, Tensor)> {
    Err(todo("mse_loss"))
}
