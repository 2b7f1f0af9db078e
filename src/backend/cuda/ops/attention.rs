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
pub(crate) fn attention(
    be: &CudaBackend,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    p: Attention,
) -> Result<(Tensor, Tensor)> {
    Err(todo("attention"))
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn attention_backward(
    be: &CudaBackend,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    o: &Tensor,
    lse: &Tensor,
    d_o: &Tensor,
    p: Attention,
) -> Result<(Tensor, Tensor, Tensor)> {
    Err(todo("attention_backward"))
}
