//! Shape and dtype checks for the weight-decomposition ops (DoRA), shared by every backend.

use super::{dtype, mismatch, rank, same_shape};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// w [rows, n] and a magnitude `m` of `rows` elements (any shape: [rows, 1] or
/// [rows, 1, 1, 1] as the files store it) of w's dtype; returns (rows, n).
pub fn forward(op: &'static str, w: &Tensor, m: &Tensor) -> Result<(usize, usize)> {
    rank(op, "w", w, 2, "[rows, n]")?;
    dtype(op, "m", m, w.dtype())?;
    let (rows, n) = (w.dims()[0], w.dims()[1]);
    if m.numel() != rows {
        return Err(mismatch(
            op,
            "w",
            w,
            "m",
            m,
            "m must hold one magnitude per row of w",
        ));
    }
    Ok((rows, n))
}

/// [`forward`]'s checks, and g shaped as w, `norm` [rows], all of w's dtype.
pub fn backward(
    op: &'static str,
    g: &Tensor,
    w: &Tensor,
    m: &Tensor,
    norm: &Tensor,
) -> Result<(usize, usize)> {
    let (rows, n) = forward(op, w, m)?;
    same_shape(op, "g", g, "w", w)?;
    dtype(op, "g", g, w.dtype())?;
    dtype(op, "norm", norm, w.dtype())?;
    if norm.dims() != [rows] {
        return Err(Error::BadShape {
            op,
            name: "norm",
            shape: norm.shape().clone(),
            expected: format!("[{rows}], the forward's row norms"),
        });
    }
    Ok((rows, n))
}
