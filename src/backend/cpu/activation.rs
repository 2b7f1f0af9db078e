//! STUB (replaced by the activation work).
use crate::backend::Activation;
use crate::error::{Error, Result};
use crate::tensor::Tensor;
fn todo(op: &'static str) -> Error {
    Error::CudaUnavailable(format!("{op} not written yet"))
}
pub fn forward(_x: &Tensor, _a: Activation) -> Result<Tensor> {
    Err(todo("activation"))
}
pub fn backward(_dy: &Tensor, _x: &Tensor, _a: Activation) -> Result<Tensor> {
    Err(todo("activation_backward"))
}
pub fn geglu(_x: &Tensor) -> Result<Tensor> {
    Err(todo("geglu"))
}
pub fn geglu_backward(_dy: &Tensor, _x: &Tensor) -> Result<Tensor> {
    Err(todo("geglu_backward"))
}
