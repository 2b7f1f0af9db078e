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
pub(crate) fn upsample_nearest2x(be: &CudaBackend, x: &Tensor) -> Result<Tensor> {
    Err(todo("upsample_nearest2x"))
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn upsample_nearest2x_backward(be: &CudaBackend, dy: &Tensor) -> Result<Tensor> {
    Err(todo("upsample_nearest2x_backward"))
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn concat_channels(be: &CudaBackend, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    Err(todo("concat_channels"))
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn split_channels(be: &CudaBackend, dy: &Tensor, ca: usize) -> Result<(Tensor, Tensor)> {
    Err(todo("split_channels"))
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn pad2d(be: &CudaBackend, x: &Tensor, pad: Pad2d) -> Result<Tensor> {
    Err(todo("pad2d"))
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn nchw_to_nlc(be: &CudaBackend, x: &Tensor) -> Result<Tensor> {
    Err(todo("nchw_to_nlc"))
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn nlc_to_nchw(be: &CudaBackend, x: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    Err(todo("nlc_to_nchw"))
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn embedding(be: &CudaBackend, table: &Tensor, ids: &[u32]) -> Result<Tensor> {
    Err(todo("embedding"))
}
