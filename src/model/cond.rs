//! The UNet's conditioning of a batch, whatever the family: the text states its
//! cross-attention reads and, for SDXL, the pooled text and each sample's size/crop ids
//! (`data::SizeCond`) that its added embedding reads. Training, evaluation and sampling build a
//! [`Cond`] and run the UNet through [`unet_forward`] / [`unet_backward`], the one place that
//! knows how each family's UNet takes it.

use crate::data::SizeCond;
use crate::error::{Error, Result};
use crate::lora::LoraGrads;
use crate::model::config::TIME_IDS;
use crate::model::layers::Ctx;
use crate::model::unet::{AddedCond, Trace, Unet, UnetCond, UnetTape, WantGrads};
use crate::tensor::{DType, Tensor};

/// What the text encoder(s) give the UNet for N captions.
#[derive(Clone, Debug)]
pub struct TextCond {
    /// [N, tokens, width]: what cross-attention reads.
    pub context: Tensor,
    /// [N, width]: SDXL's pooled text (the second encoder's projected EOS state); None for
    /// SD1.x and SD2.x.
    pub pooled: Option<Tensor>,
}

/// d loss / d [`TextCond`], what a trained text encoder's backward starts from.
pub struct TextCondGrad {
    pub context: Tensor,
    pub pooled: Option<Tensor>,
}

/// The UNet's whole conditioning of a batch.
pub struct Cond {
    /// [N, tokens, width]: what cross-attention reads.
    pub context: Tensor,
    /// SDXL's pooled text and each sample's size/crop ids; None for SD1.x and SD2.x.
    pub added: Option<AddedCond>,
}

impl Cond {
    /// `text` for a UNet without an added embedding (SD1.x, SD2.x).
    pub fn text_only(text: TextCond) -> Cond {
        Cond {
            context: text.context,
            added: None,
        }
    }

    /// `text` with each sample's size/crop ids when the text has a pooled part (SDXL).
    pub fn with_sizes(
        be: &dyn crate::backend::Backend,
        text: TextCond,
        sizes: &[SizeCond],
    ) -> Result<Cond> {
        let added = match text.pooled {
            Some(text_embeds) => Some(AddedCond {
                text_embeds,
                time_ids: size_ids(be, sizes)?,
            }),
            None => None,
        };
        Ok(Cond {
            context: text.context,
            added,
        })
    }

    /// `text` in place of this conditioning's text, the size ids kept.
    pub fn with_text(&self, text: TextCond) -> Result<Cond> {
        let added = match (text.pooled, &self.added) {
            (Some(text_embeds), Some(a)) => Some(AddedCond {
                text_embeds,
                time_ids: a.time_ids.clone(),
            }),
            (None, None) => None,
            _ => {
                return Err(Error::BadValue {
                    op: "conditioning",
                    name: "pooled text",
                    value: "present in one of two conditionings".into(),
                    expected: "conditionings of one model".into(),
                })
            }
        };
        Ok(Cond {
            context: text.context,
            added,
        })
    }

    /// The batch size.
    pub fn len(&self) -> usize {
        self.context.dims().first().copied().unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn unet(&self) -> UnetCond<'_> {
        UnetCond {
            context: &self.context,
            added: self.added.as_ref(),
        }
    }
}

/// [N, 6] f32 of the samples' [`SizeCond::ids`].
fn size_ids(be: &dyn crate::backend::Backend, sizes: &[SizeCond]) -> Result<Tensor> {
    let ids: Vec<f32> = sizes.iter().flat_map(SizeCond::ids).collect();
    be.tensor_from_f32(&[sizes.len(), TIME_IDS], &ids, DType::F32)
}

/// The UNet's prediction for `sample` at `timesteps` under `cond`, with the tape when `save`.
pub fn unet_forward(
    unet: &Unet,
    cx: &Ctx,
    sample: &Tensor,
    timesteps: &Tensor,
    cond: &Cond,
    save: bool,
    trace: Option<&mut Trace>,
) -> Result<(Tensor, Option<UnetTape>)> {
    unet.forward(cx, sample, timesteps, cond.unet(), save, trace)
}

/// The adapters' gradients into `grads` from d loss / d prediction, and with `want_text_grad`
/// d loss / d the text conditioning (the context, and SDXL's pooled text).
pub fn unet_backward(
    unet: &Unet,
    cx: &Ctx,
    d_out: &Tensor,
    cond: &Cond,
    tape: UnetTape,
    grads: &mut LoraGrads,
    want_text_grad: bool,
) -> Result<Option<TextCondGrad>> {
    let want = WantGrads {
        context: want_text_grad,
        text_embeds: want_text_grad && cond.added.is_some(),
    };
    let d = unet.backward_with_cond_grads(cx, d_out, &cond.context, tape, grads, want)?;
    Ok(d.context.map(|context| TextCondGrad {
        context,
        pooled: d.text_embeds,
    }))
}
