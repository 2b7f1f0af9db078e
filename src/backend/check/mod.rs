//! Argument checks shared by every backend: each op validates shapes and dtypes here before
//! any work, and a failure names the op, the arguments and both shapes.

pub mod activation;
pub mod attention;
pub mod conv;
pub mod decompose;
pub mod diffusion;
pub mod layout;
pub mod linear;
pub mod norm;

use crate::error::{Error, Result};
use crate::tensor::{DType, Shape, Tensor};

/// x must have exactly `rank` dimensions; `what` describes them ("[N, C, H, W]").
pub fn rank(
    op: &'static str,
    name: &'static str,
    x: &Tensor,
    rank: usize,
    what: &str,
) -> Result<()> {
    if x.shape().rank() != rank {
        return Err(Error::BadShape {
            op,
            name,
            shape: x.shape().clone(),
            expected: format!("{rank} dimensions {what}"),
        });
    }
    Ok(())
}

/// x must have at least `rank` dimensions.
pub fn min_rank(
    op: &'static str,
    name: &'static str,
    x: &Tensor,
    rank: usize,
    what: &str,
) -> Result<()> {
    if x.shape().rank() < rank {
        return Err(Error::BadShape {
            op,
            name,
            shape: x.shape().clone(),
            expected: format!("at least {rank} dimensions {what}"),
        });
    }
    Ok(())
}

/// a and b must have identical shapes.
pub fn same_shape(
    op: &'static str,
    a_name: &'static str,
    a: &Tensor,
    b_name: &'static str,
    b: &Tensor,
) -> Result<()> {
    if a.shape() != b.shape() {
        return Err(mismatch(
            op,
            a_name,
            a,
            b_name,
            b,
            "the shapes must be equal",
        ));
    }
    Ok(())
}

/// A shape mismatch between two tensors, with the rule in words.
pub fn mismatch(
    op: &'static str,
    a_name: &'static str,
    a: &Tensor,
    b_name: &'static str,
    b: &Tensor,
    rule: impl Into<String>,
) -> Error {
    Error::ShapeMismatch {
        op,
        lhs_name: a_name,
        lhs: a.shape().clone(),
        rhs_name: b_name,
        rhs: b.shape().clone(),
        rule: rule.into(),
    }
}

/// `dim` of a must equal `dim` of b (negative indices count from the end).
pub fn same_dim(
    op: &'static str,
    a_name: &'static str,
    a: &Tensor,
    a_dim: isize,
    b_name: &'static str,
    b: &Tensor,
    b_dim: isize,
) -> Result<()> {
    let da = dim(a.shape(), a_dim);
    let db = dim(b.shape(), b_dim);
    if da.is_none() || da != db {
        return Err(mismatch(
            op,
            a_name,
            a,
            b_name,
            b,
            format!("{a_name} dimension {a_dim} must equal {b_name} dimension {b_dim}"),
        ));
    }
    Ok(())
}

/// The size of dimension `i` (negative: from the end), if it exists.
pub fn dim(s: &Shape, i: isize) -> Option<usize> {
    let r = s.rank() as isize;
    let j = if i < 0 { r + i } else { i };
    (0..r).contains(&j).then(|| s.dims()[j as usize])
}

/// x must hold `dtype`.
pub fn dtype(op: &'static str, name: &'static str, x: &Tensor, dtype: DType) -> Result<()> {
    if x.dtype() != dtype {
        return Err(Error::DType {
            op,
            name,
            got: x.dtype(),
            expected: dtype.to_string(),
        });
    }
    Ok(())
}

/// A scalar out of its range.
pub fn bad_value(
    op: &'static str,
    name: &'static str,
    value: impl ToString,
    expected: &str,
) -> Error {
    Error::BadValue {
        op,
        name,
        value: value.to_string(),
        expected: expected.into(),
    }
}
