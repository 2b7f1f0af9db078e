//! DoRA (weight-decomposed LoRA; LyCORIS's `dora_wd=True` with its default `wd_on_out`,
//! lycoris/modules/locon.py `apply_weight_decompose`): a LoRA (LoCon on a conv) whose adapted
//! weight has each output row rescaled to a trainable magnitude m (`dora_scale`):
//!
//!   W' = W + s·up·down                     ([out, n], n = in·k·k; f32, as LyCORIS casts W)
//!   V  = W' ⊙ m / (‖W'‖ + eps)             row by row, eps = f32's machine epsilon
//!   y  = layer(x, V) + b
//!
//! m starts as the frozen weight's row norms ‖W‖ (and up at 0), so training starts from the
//! base model up to eps. The norm is not detached (LyCORIS's forward keeps it in the graph),
//! so its gradient is part of the backward:
//!
//!   G   = dL/dV = dYᵀ·X (linear) or ∂conv(x, ·)ᵀ dY (conv), f32 [out, n]
//!   dm  = Σ_c G ⊙ W' / ν,  dW' = (m/ν)·(G − (Σ_c G ⊙ W')·W' / (ν·‖W'‖)),  ν = ‖W'‖ + eps
//!   d up = s·dW'·downᵀ, d down = s·upᵀ·dW',  dX = layerᵀ(dY, V)
//!
//! The row work is the backends' `weight_decompose` ops; the rest are their GEMMs and the
//! conv weight gradient, so nothing else is DoRA's own. Like LoHa, V is built in full for the
//! forward and again in the backward (transient [out, n] tensors, never kept between them).
//! No dropout (LyCORIS warns that dropout does not combine with weight decomposition).
//!
//! In a file: the LoRA keys plus `<module>.dora_scale`, [out, 1] on a linear layer and
//! [out, 1, 1, 1] on a conv (1x1 included), as LyCORIS writes it. diffusers' kohya converter
//! maps it to peft's `lora_magnitude_vector`, which peft holds as [out] on a linear layer and
//! [1, out, 1, 1] on a conv (README: diffusers 0.39's SD1.x loader drops it instead).

use crate::backend::{Accum, Backend};
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};

use super::loha::{matmul, transpose};
use super::{Algo, LayerKind, LoraModule, LoraSet};

/// What LyCORIS adds to each row norm: `torch.finfo(float32).eps` (W' is f32 there).
pub const EPS: f64 = f32::EPSILON as f64;

/// The tensors of a DoRA module, borrowed.
#[derive(Clone, Copy)]
pub struct Dora<'a> {
    /// [r, in] ([r, in, k, k] on a conv).
    pub down: &'a Tensor,
    /// [out, r] ([out, r, 1, 1] on a conv).
    pub up: &'a Tensor,
    /// m, `dora_scale`: one per output row.
    pub magnitude: &'a Tensor,
    /// alpha / rank.
    pub scale: f64,
}

impl LoraModule {
    /// The module's DoRA tensors, when it is one.
    pub fn dora(&self) -> Option<Dora<'_>> {
        match &self.algo {
            Algo::Dora { magnitude } => Some(Dora {
                down: &self.down,
                up: &self.up,
                magnitude,
                scale: self.scale(),
            }),
            _ => None,
        }
    }
}

/// The shape of `dora_scale` for a layer of kind `kind` with `out` rows, as LyCORIS stores it.
pub fn magnitude_shape(kind: LayerKind, out: usize) -> Vec<usize> {
    match kind {
        LayerKind::Linear => vec![out, 1],
        LayerKind::Conv1x1 | LayerKind::Conv { .. } => vec![out, 1, 1, 1],
    }
}

/// W' = W + s·up·down, V and the row norms, [out, n] f32.
pub struct Decomposed {
    pub adapted: Tensor,
    pub v: Tensor,
    pub norm: Tensor,
}

impl Decomposed {
    /// V shaped as the layer's weight `like` ([out, in] or [out, in, k, k]) in its dtype.
    pub fn like(&self, be: &dyn Backend, like: &Tensor) -> Result<Tensor> {
        be.cast(&self.v.clone().reshape(like.dims())?, like.dtype())
    }
}

/// A weight as [out, n] in `dtype`.
fn rows(be: &dyn Backend, w: &Tensor, dtype: DType) -> Result<Tensor> {
    let o = w.dims()[0];
    be.cast(&w.clone().reshape([o, w.numel() / o.max(1)])?, dtype)
}

impl Dora<'_> {
    /// (up, down) as [out, r], [r, n].
    fn factors(&self) -> Result<(Tensor, Tensor)> {
        let r = self.down.dims()[0];
        let n = self.down.numel() / r.max(1);
        Ok((
            self.up.clone().reshape([self.up.dims()[0], r])?,
            self.down.clone().reshape([r, n])?,
        ))
    }

    /// W', V and the norms for the layer's frozen weight `weight`.
    pub fn decompose(&self, be: &dyn Backend, weight: &Tensor) -> Result<Decomposed> {
        let (up, down) = self.factors()?;
        let dtype = self.up.dtype();
        let delta = be.scale(&matmul(be, &up, &down)?, self.scale)?;
        let adapted = be.add(&rows(be, weight, dtype)?, &delta)?;
        let (v, norm) = be.weight_decompose(&adapted, self.magnitude, EPS)?;
        Ok(Decomposed { adapted, v, norm })
    }

    /// Adds the gradients of down, up and m for G = dL/dV [out, n] into `grads` (the order of
    /// [`LoraModule::tensors`]) by `accum`; `d` is [`Dora::decompose`]'s.
    pub fn backward(
        &self,
        be: &dyn Backend,
        d: &Decomposed,
        g: Tensor,
        grads: Vec<&mut Tensor>,
        accum: Accum,
    ) -> Result<()> {
        let g = g.reshape(d.adapted.dims())?;
        let (dw, dm) =
            be.weight_decompose_backward(&g, &d.adapted, self.magnitude, &d.norm, EPS)?;
        let (up, down) = self.factors()?;
        // d up = s·dW'·downᵀ ([out, r]); d down = s·upᵀ·dW' ([r, n]).
        let d_up = be.scale(&be.linear(&dw, &down, None, None)?.y, self.scale)?;
        let dwt = transpose(be, dw)?;
        let d_down = be.linear(&transpose(be, up)?, &dwt, None, None)?.y;
        let d_down = be.scale(&d_down, self.scale)?;
        let news = [
            d_down.reshape(self.down.dims())?,
            d_up.reshape(self.up.dims())?,
            dm,
        ];
        for (slot, d) in grads.into_iter().zip(news) {
            let d = be.cast(&d, slot.dtype())?;
            match accum {
                Accum::Assign => *slot = d,
                Accum::Add => be.add_assign(slot, &d)?,
            }
        }
        Ok(())
    }
}

/// m for a frozen weight: its row norms, shaped as `dora_scale` for `kind`, f32.
pub fn initial_magnitude(be: &dyn Backend, weight: &Tensor, kind: LayerKind) -> Result<Tensor> {
    let w = rows(be, weight, DType::F32)?;
    let o = w.dims()[0];
    let ones = be.tensor_from_f32(&[o], &vec![1.0; o], DType::F32)?;
    let (_, norm) = be.weight_decompose(&w, &ones, EPS)?;
    norm.reshape(magnitude_shape(kind, o))
}

impl LoraSet {
    /// The set with every plain LoRA module made a DoRA one, its magnitude the row norms of
    /// the frozen weight `weight_of` gives for its name (as LyCORIS initialises `dora_scale`).
    /// A module whose layer `weight_of` does not know is an error.
    pub fn with_dora<'w>(
        self,
        be: &dyn Backend,
        weight_of: impl Fn(&str) -> Option<&'w Tensor>,
    ) -> Result<LoraSet> {
        let mut modules = self.modules;
        for m in modules.iter_mut().filter(|m| m.is_lora()) {
            let w = weight_of(&m.name).ok_or_else(|| Error::BadValue {
                op: "DoRA init",
                name: "module",
                value: m.name.clone(),
                expected: "an adapter on a layer of the loaded model".into(),
            })?;
            m.algo = Algo::Dora {
                magnitude: initial_magnitude(be, w, m.kind)?,
            };
        }
        Ok(LoraSet::new(modules))
    }
}
