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
pub(crate) fn group_norm(
    be: &CudaBackend,
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    groups: usize,
    eps: f64,
    silu: bool,
) -> Result<(Tensor, NormStats)> {
    Err(todo("group_norm"))
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn group_norm_backward(
    be: &CudaBackend,
    dy: &Tensor,
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    stats: &NormStats,
    groups: usize,
    silu: bool,
) -> Result<Tensor> {
    Err(todo("group_norm_backward"))
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn layer_norm(
    be: &CudaBackend,
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
) -> Result<(Tensor, NormStats)> {
    Err(todo("layer_norm"))
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn layer_norm_backward(
    be: &CudaBackend,
    dy: &Tensor,
    x: &Tensor,
    gamma: &Tensor,
    stats: &NormStats,
) -> Result<Tensor> {
    Err(todo("layer_norm_backward"))
}
