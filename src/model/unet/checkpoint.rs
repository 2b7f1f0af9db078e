//! Gradient checkpointing (`gradient_checkpointing: true`), per (resnet, attention) layer.
//!
//! A saving forward normally keeps everything a layer's backward reads ([`LayerSaved`]:
//! norm inputs and statistics, attention inputs, adapter hiddens and dropout masks). With
//! checkpointing it keeps only the layer's input and where the layer's LoRA dropout masks
//! start in the micro-batch's source; the layer's other activations are freed as soon as the
//! next layer has read its output. The backward runs the layer's forward again, saving this
//! time, just before the layer's own backward, so at most one layer's saved activations are
//! alive at once (plus every layer's input, and the time embedding the resnets read).
//!
//! The recompute does the same ops on the same inputs in the same order, with a dropout
//! source replayed from the layer's first draw ([`LoraDropout::replay_from`]): its saved
//! activations, and so every gradient, are bit for bit those of a run without checkpointing.
//! The price is one more forward of every layer, about a third more compute per step.

use super::{Layer, LayerSaved};
use crate::error::{Error, Result};
use crate::lora::dropout::LoraDropout;
use crate::model::layers::Ctx;
use crate::tensor::Tensor;

/// What the tape holds for one layer.
pub(super) enum LayerTape {
    /// Everything the backward reads, saved by the forward.
    Saved(Box<LayerSaved>),
    /// Gradient checkpointing: the layer's input, and the dropout source that draws the
    /// layer's masks again (None: the forward drew none).
    Recompute {
        x: Tensor,
        dropout: Option<LoraDropout>,
    },
}

impl LayerTape {
    pub(super) fn size_in_bytes(&self) -> usize {
        match self {
            LayerTape::Saved(s) => s.size_in_bytes(),
            LayerTape::Recompute { x, .. } => x.size_in_bytes(),
        }
    }
}

/// Inputs every layer of a UNet forward reads besides its own: the SiLU of the time
/// embedding and the text context.
pub(super) struct Shared<'t> {
    pub temb: &'t Tensor,
    pub context: &'t Tensor,
}

impl Layer {
    /// A training forward of this layer: the output, and with `save` its tape: saved
    /// activations, or with `cx.checkpoint` only what recomputing them needs. `name` is the
    /// layer's place for the trace.
    pub(super) fn forward_taped(
        &self,
        cx: &Ctx,
        x: Tensor,
        shared: &Shared,
        save: bool,
        name: (&str, usize),
        trace: &mut Option<&mut super::Trace>,
    ) -> Result<(Tensor, Option<LayerTape>)> {
        if save && cx.checkpoint {
            let dropout = cx.dropout.map(|d| d.replay_from(d.draws()));
            let (y, _) = self.forward(cx, x.clone(), shared, false, name, trace)?;
            return Ok((y, Some(LayerTape::Recompute { x, dropout })));
        }
        let (y, saved) = self.forward(cx, x, shared, save, name, trace)?;
        Ok((y, saved.map(|s| LayerTape::Saved(Box::new(s)))))
    }

    /// The saved activations of a tape entry, recomputed for a checkpointed layer (`shared`:
    /// the inputs the forward read, kept by a checkpointing forward's tape).
    pub(super) fn saved(
        &self,
        cx: &Ctx,
        tape: LayerTape,
        shared: Option<&Shared>,
    ) -> Result<LayerSaved> {
        match tape {
            LayerTape::Saved(s) => Ok(*s),
            LayerTape::Recompute { x, dropout } => {
                let rcx = Ctx {
                    dropout: dropout.as_ref(),
                    checkpoint: false,
                    ..*cx
                };
                let shared = shared.ok_or_else(|| internal("the time embedding was not kept"))?;
                let (_, s) = self.forward(&rcx, x, shared, true, ("", 0), &mut None)?;
                s.ok_or_else(|| internal("a recomputed layer saved nothing"))
            }
        }
    }
}

fn internal(what: &str) -> Error {
    Error::BadValue {
        op: "unet backward",
        name: "tape",
        value: what.into(),
        expected: "a tape made by a checkpointing forward of the same UNet".into(),
    }
}
