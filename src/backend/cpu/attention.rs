//! STUB (replaced by the attention work).
use crate::backend::Attention;
use crate::error::{Error, Result};
use crate::tensor::Tensor;
fn todo(op: &'static str) -> Error {
    Error::CudaUnavailable(format!("{op} not written yet"))
}
pub fn forward(_q: &Tensor, _k: &Tensor, _v: &Tensor, _p: Attention) -> Result<(Tensor, Tensor)> {
    Err(todo("attention"))
}
#[allow(clippy::too_many_arguments)]
pub fn backward(
    _q: &Tensor,
    _k: &Tensor,
    _v: &Tensor,
    _o: &Tensor,
    _lse: &Tensor,
    _d_o: &Tensor,
    _p: Attention,
) -> Result<(Tensor, Tensor, Tensor)> {
    Err(todo("attention_backward"))
}
