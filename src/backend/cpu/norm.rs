//! STUB (replaced by the norm work).
use crate::backend::NormStats;
use crate::error::{Error, Result};
use crate::tensor::Tensor;
fn todo(op: &'static str) -> Error {
    Error::CudaUnavailable(format!("{op} not written yet"))
}
pub fn group_norm(
    _x: &Tensor,
    _g: &Tensor,
    _b: &Tensor,
    _groups: usize,
    _eps: f64,
    _silu: bool,
) -> Result<(Tensor, NormStats)> {
    Err(todo("group_norm"))
}
pub fn group_norm_backward(
    _dy: &Tensor,
    _x: &Tensor,
    _g: &Tensor,
    _b: &Tensor,
    _s: &NormStats,
    _groups: usize,
    _silu: bool,
) -> Result<Tensor> {
    Err(todo("group_norm_backward"))
}
pub fn layer_norm(_x: &Tensor, _g: &Tensor, _b: &Tensor, _eps: f64) -> Result<(Tensor, NormStats)> {
    Err(todo("layer_norm"))
}
pub fn layer_norm_backward(
    _dy: &Tensor,
    _x: &Tensor,
    _g: &Tensor,
    _s: &NormStats,
) -> Result<Tensor> {
    Err(todo("layer_norm_backward"))
}
