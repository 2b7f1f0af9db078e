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
pub(crate) fn conv2d(
    be: &CudaBackend,
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    p: Conv2d,
) -> Result<Tensor> {
    Err(todo("conv2d"))
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn conv2d_input_grad(
    be: &CudaBackend,
    dy: &Tensor,
    w: &Tensor,
    input_hw: (usize, usize),
    p: Conv2d,
) -> Result<Tensor> {
    Err(todo("conv2d_input_grad"))
}
