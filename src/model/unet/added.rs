//! SDXL's added conditioning (diffusers' `addition_embed_type: "text_time"`): the pooled text
//! embedding of the second text encoder and six size/crop ids, summed into the time embedding.
//!
//! Forward, text_embeds [N, P], time_ids [N, 6]:
//!   s    = sinusoid(time_ids flattened) reshaped [N, 6·T]   (`add_time_proj`: T-wide, the
//!          time embedding's flip_sin_to_cos and freq_shift; T = addition_time_embed_dim)
//!   a    = [text_embeds, s]                                  [N, P + 6·T]
//!   h1   = linear_1(a);  aug = linear_2(silu(h1))            (`add_embedding`, [N, 4·C0])
//!   emb  = time MLP(t) + aug;  every resnet reads silu(emb)
//!
//! Backward, only when d loss / d text_embeds is asked for (the second text encoder is
//! trained): every resnet's time projection gives d silu(emb) (summed by the UNet's backward),
//! then silu's gradient at emb, linear_2ᵀ, silu's gradient at h1, linear_1ᵀ, and the first P
//! columns are d text_embeds. Saved: emb and h1, [N, 4·C0] each. Neither linear is a LoRA
//! target (sd-scripts adapts only Transformer2D and ResNet blocks).

use crate::backend::{Activation, TimestepEmbedding};
use crate::error::{Error, Result};
use crate::model::config::TIME_IDS;
use crate::model::layers::{Ctx, Linear};
use crate::model::weights::Loader;
use crate::tensor::Tensor;

/// SDXL's added conditioning for one batch.
pub struct AddedCond {
    /// The pooled, projected text embedding of the second text encoder, [N, pooled].
    pub text_embeds: Tensor,
    /// [N, 6] f32: original height, original width, crop top, crop left, target height,
    /// target width (in pixels).
    pub time_ids: Tensor,
}

/// `add_embedding` with the `add_time_proj` sinusoid before it.
pub struct AddEmbedding {
    pub linear_1: Linear,
    pub linear_2: Linear,
    /// The width of the pooled text embedding.
    pub pooled: usize,
    /// The sinusoid of each id.
    pub sinusoid: TimestepEmbedding,
}

/// What the backward to the text embedding needs.
pub struct AddedSaved {
    /// The time embedding plus the added one, before the resnets' SiLU.
    pub emb: Tensor,
    /// linear_1's output, before its SiLU.
    pub h1: Tensor,
}

impl AddedSaved {
    pub fn size_in_bytes(&self) -> usize {
        self.emb.size_in_bytes() + self.h1.size_in_bytes()
    }
}

impl AddEmbedding {
    /// `l` at `add_embedding`; `temb` the time embedding's width (4·C0).
    pub fn load(
        l: &Loader,
        pooled: usize,
        sinusoid: TimestepEmbedding,
        temb: usize,
    ) -> Result<AddEmbedding> {
        Ok(AddEmbedding {
            linear_1: Linear::load(
                &l.at("linear_1"),
                pooled + TIME_IDS * sinusoid.dim,
                temb,
                true,
            )?,
            linear_2: Linear::load(&l.at("linear_2"), temb, temb, true)?,
            pooled,
            sinusoid,
        })
    }

    /// Checks the shapes of `added` for a batch of `n`.
    pub fn check(&self, added: &AddedCond, n: usize) -> Result<()> {
        let bad = |name: &'static str, t: &Tensor, expected: String| Error::BadShape {
            op: "unet",
            name,
            shape: t.shape().clone(),
            expected,
        };
        if added.text_embeds.dims() != [n, self.pooled] {
            return Err(bad(
                "text_embeds",
                &added.text_embeds,
                format!(
                    "[{n}, {}]: one pooled text embedding per sample",
                    self.pooled
                ),
            ));
        }
        if added.time_ids.dims() != [n, TIME_IDS] {
            return Err(bad(
                "time_ids",
                &added.time_ids,
                format!("[{n}, {TIME_IDS}]: original size, crop and target size per sample"),
            ));
        }
        Ok(())
    }

    /// The added embedding [N, temb] and linear_1's output (for [`AddedSaved`]).
    pub fn forward(&self, cx: &Ctx, added: &AddedCond) -> Result<(Tensor, Tensor)> {
        let n = added.time_ids.dims()[0];
        let ids = added.time_ids.clone().reshape([n * TIME_IDS])?;
        let s = cx.be.timestep_embedding(&ids, self.sinusoid)?;
        let s = s.reshape([n, TIME_IDS * self.sinusoid.dim])?;
        // The ids come as f32 (sizes up to 4096 and their sinusoid need no more); the
        // embedding is computed in the text embedding's dtype, the model's.
        let s = cx.be.cast(&s, added.text_embeds.dtype())?;
        let a = cx.be.concat_channels(&added.text_embeds, &s)?;
        drop(s);
        let h1 = self.linear_1.forward(cx, &a)?.y;
        let g = cx.be.activation(&h1, Activation::Silu)?;
        Ok((self.linear_2.forward(cx, &g)?.y, h1))
    }

    /// d loss / d text_embeds from d loss / d silu(emb), summed over every resnet.
    pub fn backward_text(&self, cx: &Ctx, d_temb: &Tensor, saved: &AddedSaved) -> Result<Tensor> {
        let d_emb = cx
            .be
            .activation_backward(d_temb, &saved.emb, Activation::Silu)?;
        let dg = frozen_dx(cx, &self.linear_2, &d_emb)?;
        let dh1 = cx
            .be
            .activation_backward(&dg, &saved.h1, Activation::Silu)?;
        let da = frozen_dx(cx, &self.linear_1, &dh1)?;
        Ok(cx.be.split_channels(&da, self.pooled)?.0)
    }
}

/// dX = dY·W of a linear layer that carries no adapter.
pub(super) fn frozen_dx(cx: &Ctx, l: &Linear, dy: &Tensor) -> Result<Tensor> {
    cx.be
        .linear_backward(dy, &l.weight, None, true)?
        .ok_or_else(|| Error::BadValue {
            op: "unet backward",
            name: "dx",
            value: l.name.clone(),
            expected: "the input gradient that was asked for".into(),
        })
}
