//! Shape checks for the pointwise activations and GEGLU, shared by every backend.
//!
//!   activation:          x any shape -> y like x
//!   activation_backward: dy like x
//!   geglu:               x [.., 2F] -> y [.., F] (hidden = first F, gate = last F)
//!   geglu_backward:      dy [.., F] with x's leading dims -> dx [.., 2F]

use super::{mismatch, same_shape};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Checks an activation backward: dy must have x's shape.
pub fn backward(op: &'static str, dy: &Tensor, x: &Tensor) -> Result<()> {
    same_shape(op, "dy", dy, "x", x)
}

/// The sizes of one GEGLU call: rows (all leading dims of x) and F (half of x's last dim).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GegluDims {
    pub rows: usize,
    pub features: usize,
}

/// Checks a GEGLU forward: x [.., 2F] with rank >= 1 and an even last dimension.
pub fn geglu(op: &'static str, x: &Tensor) -> Result<GegluDims> {
    if x.shape().rank() == 0 || !x.shape().last().is_multiple_of(2) {
        return Err(Error::BadShape {
            op,
            name: "x",
            shape: x.shape().clone(),
            expected: "[.., 2F]: an even last dimension, split into hidden and gate halves".into(),
        });
    }
    Ok(GegluDims {
        rows: x.shape().rows(),
        features: x.shape().last() / 2,
    })
}

/// Checks a GEGLU backward: x as in the forward and dy [.., F] with x's leading dims.
pub fn geglu_backward(dy: &Tensor, x: &Tensor) -> Result<GegluDims> {
    const OP: &str = "geglu_backward";
    let d = geglu(OP, x)?;
    if *dy.shape() != x.shape().with_last(d.features) {
        return Err(mismatch(
            OP,
            "dy",
            dy,
            "x",
            x,
            format!(
                "dy must be [.., F] = {} for x [.., 2F]",
                x.shape().with_last(d.features)
            ),
        ));
    }
    Ok(d)
}
