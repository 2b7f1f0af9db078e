//! Shapes of a linear layer with an optional LoRA and its optional dropout mask.

use super::{min_rank, mismatch, rank, same_dim};
use crate::backend::Lora;
use crate::error::Result;
use crate::tensor::{Shape, Tensor};

/// The sizes of one linear layer: rows of x, in and out features, LoRA rank (0 without).
#[derive(Clone, Copy, Debug)]
pub struct LinearDims {
    pub rows: usize,
    pub in_features: usize,
    pub out_features: usize,
    pub rank: usize,
}

/// Checks W [out, in], bias [out] and a LoRA's A [r, in], B [out, r]; returns (in, out, r).
pub fn weights(
    op: &'static str,
    w: &Tensor,
    bias: Option<&Tensor>,
    lora: Option<&Lora<'_>>,
) -> Result<(usize, usize, usize)> {
    rank(op, "w", w, 2, "[out_features, in_features]")?;
    let (out_f, in_f) = (w.dims()[0], w.dims()[1]);
    if let Some(b) = bias {
        rank(op, "bias", b, 1, "[out_features]")?;
        same_dim(op, "bias", b, 0, "w", w, 0)?;
    }
    let mut r = 0;
    if let Some(l) = lora {
        rank(op, "lora down (A)", l.down, 2, "[rank, in_features]")?;
        rank(op, "lora up (B)", l.up, 2, "[out_features, rank]")?;
        same_dim(op, "lora down (A)", l.down, 1, "w", w, 1)?;
        same_dim(op, "lora up (B)", l.up, 0, "w", w, 0)?;
        same_dim(op, "lora up (B)", l.up, 1, "lora down (A)", l.down, 0)?;
        r = l.down.dims()[0];
    }
    Ok((in_f, out_f, r))
}

/// Checks a forward call: x [.., in] against W and the LoRA.
pub fn forward(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    lora: Option<&Lora<'_>>,
) -> Result<LinearDims> {
    const OP: &str = "linear";
    min_rank(OP, "x", x, 1, "[.., in_features]")?;
    let (in_f, out_f, r) = weights(OP, w, bias, lora)?;
    same_dim(OP, "x", x, -1, "w", w, 1)?;
    if let Some(mask) = lora.and_then(|l| l.dropout) {
        dropout_mask(OP, mask, &x.shape().with_last(r), "x", x)?;
    }
    Ok(LinearDims {
        rows: x.shape().rows(),
        in_features: in_f,
        out_features: out_f,
        rank: r,
    })
}

/// Checks a backward call: dY [.., out], and for the LoRA the saved X, u and the gradients.
pub fn backward(
    dy: &Tensor,
    w: &Tensor,
    lora: Option<(&Lora<'_>, &Tensor, &Tensor, &Tensor, &Tensor)>,
) -> Result<LinearDims> {
    const OP: &str = "linear_backward";
    min_rank(OP, "dy", dy, 1, "[.., out_features]")?;
    let (in_f, out_f, r) = weights(OP, w, None, lora.map(|l| l.0))?;
    same_dim(OP, "dy", dy, -1, "w", w, 0)?;
    if let Some((l, x, hidden, gd, gu)) = lora {
        if x.shape().with_last(out_f) != *dy.shape() {
            return Err(mismatch(
                OP,
                "x",
                x,
                "dy",
                dy,
                "x must be [.., in] with dy's leading dims",
            ));
        }
        same_dim(OP, "x", x, -1, "w", w, 1)?;
        if *hidden.shape() != dy.shape().with_last(r) {
            return Err(mismatch(
                OP,
                "lora hidden (x·Aᵀ)",
                hidden,
                "dy",
                dy,
                "hidden must be [.., rank] with dy's leading dims",
            ));
        }
        if let Some(mask) = l.dropout {
            dropout_mask(OP, mask, hidden.shape(), "lora hidden", hidden)?;
        }
        if gd.shape() != l.down.shape() {
            return Err(mismatch(
                OP,
                "grad_down",
                gd,
                "lora down (A)",
                l.down,
                "a gradient has its parameter's shape",
            ));
        }
        if gu.shape() != l.up.shape() {
            return Err(mismatch(
                OP,
                "grad_up",
                gu,
                "lora up (B)",
                l.up,
                "a gradient has its parameter's shape",
            ));
        }
    }
    Ok(LinearDims {
        rows: dy.shape().rows(),
        in_features: in_f,
        out_features: out_f,
        rank: r,
    })
}

/// A LoRA dropout mask must be shaped like the hidden u = x·Aᵀ it multiplies, `expected`
/// ([.., rank] with x's leading dims); the error names the mask and `other` (x or the hidden).
fn dropout_mask(
    op: &'static str,
    mask: &Tensor,
    expected: &Shape,
    other_name: &'static str,
    other: &Tensor,
) -> Result<()> {
    if mask.shape() != expected {
        return Err(mismatch(
            op,
            "lora dropout mask",
            mask,
            other_name,
            other,
            format!("the mask must be shaped like the lora hidden x·Aᵀ, {expected}"),
        ));
    }
    Ok(())
}
