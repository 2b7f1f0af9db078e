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
pub(crate) fn sum_squares(be: &CudaBackend, x: &Tensor) -> Result<f64> {
    Err(todo("sum_squares"))
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn adamw_step(
    be: &CudaBackend,
    params: &mut Tensor,
    grads: &Tensor,
    m: &mut Tensor,
    v: &mut Tensor,
    h: &AdamW,
) -> Result<()> {
    Err(todo("adamw_step"))
}
