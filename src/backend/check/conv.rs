//! Shape checks for the 2-D convolution ops, shared by every backend.
//!
//! x [N, C, H, W], w [O, C, k, k], bias [O], dy [N, O, Ho, Wo] with
//! Ho = (H + 2·padding - k) / stride + 1 (and Wo alike). Every shape error names both
//! tensors' shapes so that a wrong call can be fixed from the message alone.

use super::{bad_value, mismatch};
use crate::backend::{Conv2d, Lora, LoraBackward};
use crate::error::{Error, Result};
use crate::tensor::{Shape, Tensor};

/// The sizes of a LoCon adapter's two convolutions (see [`lora`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoraDims {
    /// x -> u: the layer's convolution with `down` [r, C, k, k] as its weight (O = r).
    pub down: ConvDims,
    /// ũ -> z: a 1x1 convolution with `up` [O, r, 1, 1] on the output grid.
    pub up: ConvDims,
}

/// Checks a LoRA on a convolution (LoCon) against the layer's sizes `d` (from [`forward`] or
/// [`input_grad`]): down [r, C, k, k] with the layer's k (it runs with the layer's stride and
/// padding), up [O, r, 1, 1], the dropout mask [N, r, Ho, Wo]. On a 1x1 conv the LoRA may
/// also be down [r, C], up [O, r] (as a linear layer's: the same numbers).
pub fn lora(op: &'static str, w: &Tensor, d: &ConvDims, l: &Lora<'_>) -> Result<LoraDims> {
    let (down, up) = (l.down, l.up);
    let dd = down.dims();
    // A 1x1 conv's LoRA may come as the linear layers keep it: down [r, C], up [O, r].
    let flat = d.k == 1 && dd.len() == 2;
    let down_ok = dd.first().is_some_and(|&r| r > 0)
        && dd.get(1) == Some(&d.c)
        && (flat || dd[2..] == [d.k, d.k]);
    if !down_ok || !(flat || dd.len() == 4) {
        return Err(mismatch(
            op,
            "lora down",
            down,
            "w",
            w,
            "a conv LoRA's down must be [r, C, k, k] with r >= 1 and the layer's C and k \
             (w is [O, C, k, k]; a 1x1 conv's may be [r, C])",
        ));
    }
    let r = dd[0];
    let up_ok = up.dims() == [d.o, r, 1, 1] || (flat && up.dims() == [d.o, r]);
    if !up_ok {
        return Err(mismatch(
            op,
            "lora up",
            up,
            "lora down",
            down,
            format!(
                "a conv LoRA's up must be [O, r, 1, 1] = [{}, {r}, 1, 1]",
                d.o
            ),
        ));
    }
    if let Some(m) = l.dropout {
        if m.dims() != [d.n, r, d.ho, d.wo] {
            return Err(mismatch(
                op,
                "lora dropout mask",
                m,
                "lora down",
                down,
                format!(
                    "the mask must be shaped like the adapter's hidden [N, r, Ho, Wo] = \
                     [{}, {r}, {}, {}]",
                    d.n, d.ho, d.wo
                ),
            ));
        }
    }
    Ok(LoraDims {
        down: ConvDims { o: r, ..*d },
        up: ConvDims {
            c: r,
            h: d.ho,
            w: d.wo,
            k: 1,
            stride: 1,
            padding: 0,
            ..*d
        },
    })
}

/// Checks a LoCon backward: the adapter as [`lora`], x the layer's input [N, C, H, W], the
/// saved hidden [N, r, Ho, Wo], and gradients shaped like down and up.
pub fn lora_backward(
    op: &'static str,
    w: &Tensor,
    d: &ConvDims,
    lb: &LoraBackward<'_>,
) -> Result<LoraDims> {
    let ld = lora(op, w, d, &lb.lora)?;
    if lb.x.dims() != d.input_shape().dims() {
        return Err(mismatch(
            op,
            "x",
            lb.x,
            "w",
            w,
            format!(
                "x must be the layer's input {:?} (from dy and input_hw)",
                d.input_shape().dims()
            ),
        ));
    }
    if lb.hidden.dims() != ld.up.input_shape().dims() {
        return Err(mismatch(
            op,
            "lora hidden",
            lb.hidden,
            "lora down",
            lb.lora.down,
            "the saved hidden must be the forward's [N, r, Ho, Wo]",
        ));
    }
    for (name, g, p) in [
        ("grad_down", &*lb.grad_down, lb.lora.down),
        ("grad_up", &*lb.grad_up, lb.lora.up),
    ] {
        if g.dims() != p.dims() {
            return Err(mismatch(
                op,
                name,
                g,
                "its adapter weight",
                p,
                "a gradient must be shaped like its weight",
            ));
        }
    }
    Ok(ld)
}

/// Checks a weight-gradient call: x [N, C, H, W], dy [N, O, Ho, Wo], dw [O, C, k, k] with
/// dy the conv output size of x under dw's kernel and `p`.
pub fn weight_grad(x: &Tensor, dy: &Tensor, dw: &Tensor, p: Conv2d) -> Result<ConvDims> {
    const OP: &str = "conv2d_weight_grad";
    let d = forward(x, dw, None, p).map_err(|e| match e {
        Error::ShapeMismatch { rule, .. } => mismatch(OP, "x", x, "dw", dw, rule),
        e => e,
    })?;
    if dy.dims() != d.output_shape().dims() {
        return Err(mismatch(
            OP,
            "dy",
            dy,
            "x",
            x,
            format!(
                "dy must be the conv output [N, O, Ho, Wo] = {:?} of x under dw's kernel \
                 (stride {}, padding {})",
                d.output_shape().dims(),
                p.stride,
                p.padding
            ),
        ));
    }
    Ok(d)
}

/// The sizes of one convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvDims {
    /// Batch size N.
    pub n: usize,
    /// Input channels C.
    pub c: usize,
    /// Input height and width.
    pub h: usize,
    pub w: usize,
    /// Output channels O.
    pub o: usize,
    /// Kernel size k (square).
    pub k: usize,
    /// Output height and width.
    pub ho: usize,
    pub wo: usize,
    pub stride: usize,
    pub padding: usize,
}

impl ConvDims {
    /// [N, C, H, W].
    pub fn input_shape(&self) -> Shape {
        Shape::new([self.n, self.c, self.h, self.w])
    }
    /// [N, O, Ho, Wo].
    pub fn output_shape(&self) -> Shape {
        Shape::new([self.n, self.o, self.ho, self.wo])
    }
}

/// Checks a forward call: x [N, C, H, W], w [O, C, k, k], bias [O].
pub fn forward(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, p: Conv2d) -> Result<ConvDims> {
    const OP: &str = "conv2d";
    if x.shape().rank() != 4 {
        return Err(mismatch(
            OP,
            "x",
            x,
            "w",
            w,
            "x must have 4 dimensions [N, C, H, W]",
        ));
    }
    let (o, c, k) = weight(OP, w, "x", x)?;
    if x.dims()[1] != c {
        return Err(mismatch(
            OP,
            "x",
            x,
            "w",
            w,
            "x's channels (dimension 1) must equal w's input channels (dimension 1)",
        ));
    }
    if let Some(b) = bias {
        if b.dims() != [o] {
            return Err(mismatch(
                OP,
                "bias",
                b,
                "w",
                w,
                "bias must be [O], O being w's first dimension",
            ));
        }
    }
    let (n, h, wd) = (x.dims()[0], x.dims()[2], x.dims()[3]);
    let (ho, wo) = output_hw(OP, (h, wd), k, p, || {
        mismatch(
            OP,
            "x",
            x,
            "w",
            w,
            format!(
                "the input padded by {} on each side must not be smaller than the kernel",
                p.padding
            ),
        )
    })?;
    dims(OP, n, c, (h, wd), o, k, (ho, wo), p)
}

/// Checks an input-gradient call: dy [N, O, Ho, Wo] against w [O, C, k, k] and the input's
/// spatial size `input_hw` (with stride 2, two input sizes give one output size).
pub fn input_grad(
    dy: &Tensor,
    w: &Tensor,
    input_hw: (usize, usize),
    p: Conv2d,
) -> Result<ConvDims> {
    const OP: &str = "conv2d_input_grad";
    if dy.shape().rank() != 4 {
        return Err(mismatch(
            OP,
            "dy",
            dy,
            "w",
            w,
            "dy must have 4 dimensions [N, O, Ho, Wo]",
        ));
    }
    let (o, c, k) = weight(OP, w, "dy", dy)?;
    if dy.dims()[1] != o {
        return Err(mismatch(
            OP,
            "dy",
            dy,
            "w",
            w,
            "dy's channels (dimension 1) must equal w's output channels (dimension 0)",
        ));
    }
    let n = dy.dims()[0];
    let (h, wd) = input_hw;
    // The implied input [N, C, H, W], named in the errors below as the other shape.
    let input = Shape::new([n, c, h, wd]);
    let wrong_size = |rule: String| Error::ShapeMismatch {
        op: OP,
        lhs_name: "dy",
        lhs: dy.shape().clone(),
        rhs_name: "input (from input_hw)",
        rhs: input.clone(),
        rule,
    };
    let (ho, wo) = output_hw(OP, input_hw, k, p, || {
        wrong_size(format!(
            "the input padded by {} on each side must not be smaller than the {k}x{k} kernel",
            p.padding
        ))
    })?;
    if dy.dims()[2..] != [ho, wo] {
        return Err(wrong_size(format!(
            "dy's spatial size must be the conv output size {ho}x{wo} of the input \
             (kernel {k}, stride {}, padding {})",
            p.stride, p.padding
        )));
    }
    dims(OP, n, c, input_hw, o, k, (ho, wo), p)
}

/// Checks w [O, C, k, k] with k >= 1, naming `other` in the errors; returns (O, C, k).
fn weight(
    op: &'static str,
    w: &Tensor,
    other_name: &'static str,
    other: &Tensor,
) -> Result<(usize, usize, usize)> {
    let d = w.dims();
    if d.len() != 4 {
        return Err(mismatch(
            op,
            "w",
            w,
            other_name,
            other,
            "w must have 4 dimensions [O, C, k, k]",
        ));
    }
    if d[2] != d[3] || d[2] == 0 {
        return Err(mismatch(
            op,
            "w",
            w,
            other_name,
            other,
            "w's kernel must be square and not empty ([O, C, k, k] with k >= 1)",
        ));
    }
    Ok((d[0], d[1], d[2]))
}

/// (Ho, Wo) for an input of size `hw`, or the error from `too_small` when the padded input
/// is smaller than the kernel. Also refuses stride 0 and sizes that overflow.
fn output_hw(
    op: &'static str,
    hw: (usize, usize),
    k: usize,
    p: Conv2d,
    too_small: impl Fn() -> Error,
) -> Result<(usize, usize)> {
    if p.stride == 0 {
        return Err(bad_value(op, "stride", p.stride, "the stride must be >= 1"));
    }
    // H + 2·padding must not overflow before `Conv2d::out_size` computes it.
    let fits = |n: usize| p.padding.checked_mul(2).and_then(|p2| n.checked_add(p2));
    if fits(hw.0).is_none() || fits(hw.1).is_none() {
        return Err(bad_value(
            op,
            "padding",
            p.padding,
            "the padded input size overflows",
        ));
    }
    match (p.out_size(hw.0, k), p.out_size(hw.1, k)) {
        (Some(ho), Some(wo)) => Ok((ho, wo)),
        _ => Err(too_small()),
    }
}

#[allow(clippy::too_many_arguments)]
fn dims(
    op: &'static str,
    n: usize,
    c: usize,
    (h, w): (usize, usize),
    o: usize,
    k: usize,
    (ho, wo): (usize, usize),
    p: Conv2d,
) -> Result<ConvDims> {
    // The backends allocate x- and y-sized buffers and an im2col matrix [C·k·k, rows of Wo];
    // a size that overflows is refused here, not left to panic in an allocation (a huge
    // padding makes Ho·Wo explode, and w [0, C, k, k] holds no elements whatever C and k).
    let numel = |d: [usize; 4]| d.iter().try_fold(1usize, |a, &b| a.checked_mul(b));
    if numel([n, o, ho, wo]).is_none()
        || numel([n, c, h, w]).is_none()
        || numel([c, k, k, wo]).is_none()
    {
        return Err(bad_value(
            op,
            "padding",
            p.padding,
            "the output size overflows",
        ));
    }
    Ok(ConvDims {
        n,
        c,
        h,
        w,
        o,
        k,
        ho,
        wo,
        stride: p.stride,
        padding: p.padding,
    })
}
