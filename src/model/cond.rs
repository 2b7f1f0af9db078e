//! The UNet's conditioning of a batch, whatever the family: the text states its
//! cross-attention reads and, for SDXL, the pooled text and each sample's size/crop ids
//! (`data::SizeCond`) that its added embedding reads. Training, evaluation and sampling build a
//! [`Cond`] and run the UNet through [`unet_forward`] / [`unet_backward`], the one place that
//! knows how each family's UNet takes it.

use crate::data::SizeCond;
use crate::error::{Error, Result};
use crate::lora::LoraGrads;
use crate::model::layers::Ctx;
use crate::model::unet::{Trace, Unet, UnetTape};
use crate::tensor::Tensor;

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
#[derive(Clone, Debug)]
pub struct Cond {
    pub text: TextCond,
    /// [N, 6] f32 size/crop ids ([`SizeCond::ids`]) for a UNet with SDXL's added embedding.
    pub time_ids: Option<Tensor>,
}

impl Cond {
    /// `text` for a UNet without an added embedding (SD1.x, SD2.x).
    pub fn text_only(text: TextCond) -> Cond {
        Cond {
            text,
            time_ids: None,
        }
    }

    /// `text` with each sample's size/crop ids when the text has a pooled part (SDXL).
    pub fn with_sizes(
        be: &dyn crate::backend::Backend,
        text: TextCond,
        sizes: &[SizeCond],
    ) -> Result<Cond> {
        let time_ids = match text.pooled {
            Some(_) => {
                let ids: Vec<f32> = sizes.iter().flat_map(SizeCond::ids).collect();
                Some(be.tensor_from_f32(&[sizes.len(), 6], &ids, crate::tensor::DType::F32)?)
            }
            None => None,
        };
        Ok(Cond { text, time_ids })
    }

    /// The batch size.
    pub fn len(&self) -> usize {
        self.text.context.dims().first().copied().unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
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
    if cond.text.pooled.is_some() || cond.time_ids.is_some() {
        return Err(no_added_embedding());
    }
    unet.forward(cx, sample, timesteps, &cond.text.context, save, trace)
}

/// The adapters' gradients into `grads` from d loss / d prediction, and with `want_text_grad`
/// d loss / d the text conditioning.
pub fn unet_backward(
    unet: &Unet,
    cx: &Ctx,
    d_out: &Tensor,
    cond: &Cond,
    tape: UnetTape,
    grads: &mut LoraGrads,
    want_text_grad: bool,
) -> Result<Option<TextCondGrad>> {
    if cond.text.pooled.is_some() || cond.time_ids.is_some() {
        return Err(no_added_embedding());
    }
    let d = unet.backward_with_context_grad(
        cx,
        d_out,
        &cond.text.context,
        tape,
        grads,
        want_text_grad,
    )?;
    Ok(d.map(|context| TextCondGrad {
        context,
        pooled: None,
    }))
}

fn no_added_embedding() -> Error {
    Error::BadValue {
        op: "unet",
        name: "conditioning",
        value: "pooled text and size ids".into(),
        expected: "text states only: this UNet has no added (text-time) embedding".into(),
    }
}
