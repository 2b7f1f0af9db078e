//! Shape checks for the layout ops (upsampling, channel concat/split, NCHW <-> NLC), shared by
//! every backend. Each returns the sizes the op needs; errors between two tensors, or between
//! a tensor and the shape a size argument implies, name both shapes.

use super::{bad_value, min_rank, mismatch, rank};
use crate::backend::Pad2d;
use crate::error::{Error, Result};
use crate::tensor::{Shape, Tensor};

/// [N, C, H, W] of a rank-4 feature map.
fn nchw(op: &'static str, name: &'static str, x: &Tensor) -> Result<[usize; 4]> {
    rank(op, name, x, 4, "[N, C, H, W]")?;
    let d = x.dims();
    Ok([d[0], d[1], d[2], d[3]])
}

/// Checks x [N, C, H, W] for 2x upsampling; returns [N, C, H, W] (of x).
pub fn upsample(x: &Tensor) -> Result<[usize; 4]> {
    const OP: &str = "upsample_nearest2x";
    let d = nchw(OP, "x", x)?;
    // N·C·2H·2W must be representable (it only could fail for an empty x of absurd H, W).
    if [d[0], d[1], d[2], d[3], 4]
        .iter()
        .try_fold(1usize, |a, &b| a.checked_mul(b))
        .is_some()
    {
        return Ok(d);
    }
    Err(Error::BadShape {
        op: OP,
        name: "x",
        shape: x.shape().clone(),
        expected: "a size whose 2x upsampling is representable".into(),
    })
}

/// Checks dy [N, C, 2H, 2W] for the upsampling gradient; returns [N, C, H, W] (of dx).
pub fn upsample_backward(dy: &Tensor) -> Result<[usize; 4]> {
    const OP: &str = "upsample_nearest2x_backward";
    let [n, c, h2, w2] = nchw(OP, "dy", dy)?;
    if h2 % 2 != 0 || w2 % 2 != 0 {
        return Err(Error::BadShape {
            op: OP,
            name: "dy",
            shape: dy.shape().clone(),
            expected: "even height and width [N, C, 2H, 2W] (the output of a 2x upsampling)".into(),
        });
    }
    Ok([n, c, h2 / 2, w2 / 2])
}

/// The sizes of a channel concat: [N, Ca, ..] ++ [N, Cb, ..], `inner` = the product of the
/// dims after the channel dim.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConcatDims {
    pub n: usize,
    pub ca: usize,
    pub cb: usize,
    pub inner: usize,
}

/// Checks a and b: rank >= 2, same rank, equal dims except dim 1.
pub fn concat(a: &Tensor, b: &Tensor) -> Result<ConcatDims> {
    const OP: &str = "concat_channels";
    let (da, db) = (a.dims(), b.dims());
    if da.len() < 2 || db.len() < 2 {
        return Err(mismatch(
            OP,
            "a",
            a,
            "b",
            b,
            "both must have at least 2 dimensions [N, C, ..]",
        ));
    }
    if da.len() != db.len() || da[0] != db[0] || da[2..] != db[2..] {
        return Err(mismatch(
            OP,
            "a",
            a,
            "b",
            b,
            "all dimensions but the channels (dimension 1) must be equal",
        ));
    }
    if da[1].checked_add(db[1]).is_none() {
        return Err(mismatch(OP, "a", a, "b", b, "Ca + Cb overflows"));
    }
    Ok(ConcatDims {
        n: da[0],
        ca: da[1],
        cb: db[1],
        inner: da[2..].iter().product(),
    })
}

/// Checks dy [N, C, ..] and 0 <= ca <= C for splitting off the first ca channels.
pub fn split(dy: &Tensor, ca: usize) -> Result<ConcatDims> {
    const OP: &str = "split_channels";
    min_rank(OP, "dy", dy, 2, "[N, C, ..]")?;
    let d = dy.dims();
    if ca > d[1] {
        return Err(bad_value(
            OP,
            "ca",
            ca,
            &format!(
                "at most the {} channels of dy, which has shape {}",
                d[1],
                dy.shape()
            ),
        ));
    }
    Ok(ConcatDims {
        n: d[0],
        ca,
        cb: d[1] - ca,
        inner: d[2..].iter().product(),
    })
}

/// Checks x [N, C, H, W]; returns its dims.
pub fn nchw_to_nlc(x: &Tensor) -> Result<[usize; 4]> {
    nchw("nchw_to_nlc", "x", x)
}

/// Checks x [N, L, C] with L = h·w; returns [N, C, h, w] (of the result).
pub fn nlc_to_nchw(x: &Tensor, h: usize, w: usize) -> Result<[usize; 4]> {
    const OP: &str = "nlc_to_nchw";
    rank(OP, "x", x, 3, "[N, L, C] with L = h·w")?;
    let [n, l, c] = [x.dims()[0], x.dims()[1], x.dims()[2]];
    if h.checked_mul(w) != Some(l) {
        return Err(Error::ShapeMismatch {
            op: OP,
            lhs_name: "x",
            lhs: x.shape().clone(),
            rhs_name: "the requested output",
            rhs: Shape::new([n, c, h, w]),
            rule: format!("x's length L = {l} must equal h·w = {h}·{w}"),
        });
    }
    Ok([n, c, h, w])
}

/// pad2d: x [N, C, H, W]; the padded size must not overflow.
pub fn pad2d(x: &Tensor, p: Pad2d) -> Result<[usize; 4]> {
    let d = nchw("pad2d", "x", x)?;
    let fits =
        |a: usize, b: usize, n: usize| a.checked_add(b).and_then(|s| s.checked_add(n)).is_some();
    if !fits(p.top, p.bottom, d[2]) || !fits(p.left, p.right, d[3]) {
        return Err(bad_value(
            "pad2d",
            "pad",
            format!("{p:?}"),
            "a padding that fits in memory",
        ));
    }
    Ok(d)
}
