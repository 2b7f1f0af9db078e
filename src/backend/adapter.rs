//! Adapters as the backend takes them: a trainable low-rank term added to a frozen linear or
//! conv layer, passed to [`LinearOps::linear`](super::LinearOps::linear) and
//! [`ConvOps::conv2d`](super::ConvOps::conv2d) as an input.
//!
//! One variant per adapter kind the backends fuse into their kernels. Today there is LoRA
//! (with kohya's dropout on its hidden); a new fused kind adds its variant to [`Adapter`] and
//! [`AdapterBackward`], and its forward and backward to each backend's linear.rs (and
//! conv.rs): every `match` on an adapter then names the places that must learn it. A kind
//! made of the backends' existing ops needs no variant: LoHa (ΔW = (B₁A₁) ⊙ (B₂A₂), built in
//! full per layer) is composed in lora/loha.rs, DoRA (the weight rescaled row by row, with
//! the `weight_decompose` ops) in lora/dora.rs, and both are run by model/layers.rs. On a conv, [`Adapter::Lora`] is LoCon (sd-scripts' `conv_dim`): down
//! [rank, C, k, k] run with the layer's stride and padding, up [O, rank, 1, 1], the mask and
//! the hidden [N, rank, Ho, Wo] ([`ConvOps::conv2d_out`](super::ConvOps::conv2d_out)).

use super::Accum;
use crate::tensor::Tensor;

/// The adapter a linear (or conv) layer carries in one forward.
#[derive(Clone, Copy)]
pub enum Adapter<'a> {
    /// y += scale · ((x·downᵀ) ⊙ mask)·upᵀ.
    Lora(Lora<'a>),
}

/// The adapter half of a layer's backward: the adapter, what its forward saved, and where its
/// gradients go (one variant per kind, as [`Adapter`]).
pub enum AdapterBackward<'a> {
    Lora(LoraBackward<'a>),
}

/// A LoRA adapter on a linear layer: y += scale · ((x·downᵀ) ⊙ mask)·upᵀ.
/// `down` is A, [rank, in]; `up` is B, [out, rank]; kohya's scale is alpha / rank.
/// On a conv (LoCon): y += scale · conv1x1(conv(x, down) ⊙ mask, up), down [rank, C, k, k],
/// up [O, rank, 1, 1], the mask [N, rank, Ho, Wo].
#[derive(Clone, Copy)]
pub struct Lora<'a> {
    pub down: &'a Tensor,
    pub up: &'a Tensor,
    pub scale: f64,
    /// Dropout on the adapter's hidden u = x·Aᵀ (kohya's `network_dropout`, applied to
    /// lora_down's output during training): a pre-scaled keep mask shaped like u, [.., rank]
    /// with x's leading dims, each element 0 (dropped) or 1/(1−p) (kept), in x's dtype.
    /// The mask is an input, not drawn here: the same mask must reach the backward (it is
    /// part of [`LoraBackward::lora`]). `None`: no dropout (inference, or p = 0).
    pub dropout: Option<&'a Tensor>,
}

/// The LoRA half of a linear (or conv) layer's backward: what was saved and where the
/// gradients go. On a conv: x [N, C, H, W], hidden [N, rank, Ho, Wo], the gradients shaped
/// like down and up.
pub struct LoraBackward<'a> {
    /// The adapter, with the forward's dropout mask if it had one.
    pub lora: Lora<'a>,
    /// The layer's input X, [.., in].
    pub x: &'a Tensor,
    /// ũ = (X·Aᵀ) ⊙ mask from the forward ([`LinearOut::lora_hidden`](super::LinearOut)),
    /// [.., rank].
    pub hidden: &'a Tensor,
    /// dA, [rank, in]: `+=` or `=` s·gᵀ·X with g = (dY·B) ⊙ mask, summed over all rows.
    pub grad_down: &'a mut Tensor,
    /// dB, [out, rank]: `+=` or `=` s·dYᵀ·ũ.
    pub grad_up: &'a mut Tensor,
    pub accum: Accum,
}
