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
pub(crate) fn linear(
    be: &CudaBackend,
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    lora: Option<Lora<'_>>,
) -> Result<LinearOut> {
    Err(todo("linear"))
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn linear_backward(
    be: &CudaBackend,
    dy: &Tensor,
    w: &Tensor,
    lora: Option<LoraBackward<'_>>,
    want_dx: bool,
) -> Result<Option<Tensor>> {
    Err(todo("linear_backward"))
}
