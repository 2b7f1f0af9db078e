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
pub(crate) fn activation(be: &CudaBackend, x: &Tensor, act: Activation) -> Result<Tensor> {
    Err(todo("activation"))
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn activation_backward(
    be: &CudaBackend,
    dy: &Tensor,
    x: &Tensor,
    act: Activation,
) -> Result<Tensor> {
    Err(todo("activation_backward"))
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn geglu(be: &CudaBackend, x: &Tensor) -> Result<Tensor> {
    Err(todo("geglu"))
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn geglu_backward(be: &CudaBackend, dy: &Tensor, x: &Tensor) -> Result<Tensor> {
    Err(todo("geglu_backward"))
}
