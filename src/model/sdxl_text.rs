//! SDXL's two text encoders as its UNet reads them, and kohya's text-encoder LoRA through both.
//!
//!   te1 = CLIP ViT-L/14's text tower (quick_gelu, 12 layers, 768 wide), ids padded with EOS;
//!   te2 = OpenCLIP ViT-bigG/14's (gelu, 32 layers, 1280 wide, text_projection 1280), ids
//!         padded with 0 (its tokenizer's `!`);
//!   context = concat(te1 hidden_states[-2], te2 hidden_states[-2]) along the width: the
//!             penultimate layers' outputs without final_layer_norm, [N, 77, 2048];
//!   pooled  = te2.text_projection(te2.final_layer_norm(te2's last layer)[first EOS]),
//!             [N, 1280], which the UNet adds to its time embedding.
//! As sd-scripts' `get_hidden_states_sdxl` and diffusers' `StableDiffusionXLPipeline.
//! encode_prompt` compute them (clip_skip is not applied: SDXL's context is fixed at the
//! penultimate layer). Long captions (`max_token_length` 150, 225): each encoder encodes
//! each 77-id window alone and joins them as for SD1.x (first BOS state, every window's
//! states 1..=75, last window's last state); the pooled output is the first window's.
//!
//! Ids come in as SD1.x pads them (BOS, tokens, EOS, EOS padding, cut into windows by
//! [`crate::model::tokenizer::Tokenizer::encode_long`]); te2's are made from them
//! ([`SdxlText::te2_ids`]): the caption's EOS is the first of the trailing run of EOS ids
//! (every later one is padding), its padding becomes 0, and the caption is cut into windows
//! again with sd-scripts' rule for tokenizers whose padding is not EOS
//! ([`crate::model::tokenizer::caption_windows`]). This equals tokenizer2's ids except for a
//! caption that itself ends in a written `<|endoftext|>` (tokenizer2 keeps it as a token,
//! here it is taken for the caption's end and the one after it becomes padding).
//!
//! LoRA: kohya's names `lora_te1_text_model_encoder_layers_N_…` and `lora_te2_…`, 6 per layer
//! (q/k/v/out_proj, fc1, fc2): 72 + 192 = 264 on SDXL. sd-scripts does not target te2's
//! text_projection (a Linear outside the CLIPAttention/CLIPMLP modules it searches). te2's
//! adapters get gradients from the context and from the pooled output; the last layer's only
//! from the pooled output, te1's last layer none (it does not run).

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::lora::{LoraGrads, TargetLayer};
use crate::model::clip::{ClipOutput, ClipTape, ClipTextModel};
use crate::model::config::ClipTextConfig;
use crate::model::layers::Ctx;
use crate::model::tokenizer::caption_windows;
use crate::model::weights::WeightSource;
use crate::tensor::Tensor;

/// The weight prefixes of the two encoders (diffusers' folder names).
pub const TE1_PREFIX: &str = "text_encoder";
pub const TE2_PREFIX: &str = "text_encoder_2";
/// kohya's adapter name prefixes of the two encoders.
pub const TE1_LORA: &str = "lora_te1";
pub const TE2_LORA: &str = "lora_te2";

/// te2's padding id (`!`, which sd-scripts sets as tokenizer2's pad_token_id).
pub const TE2_PAD: u32 = 0;

/// SDXL's text encoders.
pub struct SdxlText {
    pub te1: ClipTextModel,
    /// With its text_projection.
    pub te2: ClipTextModel,
}

/// The UNet's text conditioning.
pub struct SdxlCond {
    /// [N, T, w1 + w2]: te1's penultimate states then te2's (T = 77, or the joined windows).
    pub context: Tensor,
    /// [N, projection]: te2's pooled text embedding.
    pub pooled: Tensor,
}

/// What [`SdxlText::backward`] needs.
pub struct SdxlTextTape {
    te1: ClipTape,
    te2: ClipTape,
}

impl SdxlTextTape {
    /// Bytes held by the tape.
    pub fn size_in_bytes(&self) -> usize {
        self.te1.size_in_bytes() + self.te2.size_in_bytes()
    }
}

impl SdxlText {
    /// Both encoders from weights named as diffusers' `text_encoder/` (below
    /// [`TE1_PREFIX`]) and `text_encoder_2/` (below [`TE2_PREFIX`], with its
    /// `text_projection.weight`), as `model::checkpoint::sdxl_text` returns them.
    pub fn load(
        te1: (&ClipTextConfig, &dyn WeightSource),
        te2: (&ClipTextConfig, &dyn WeightSource),
        be: &dyn Backend,
    ) -> Result<Self> {
        let bad = |name: &'static str, value: String, expected: &str| Error::BadValue {
            op: "sdxl text encoders",
            name,
            value,
            expected: expected.into(),
        };
        let (c1, c2) = (te1.0, te2.0);
        if c2.text_projection.is_none() {
            return Err(bad(
                "text_projection",
                "none".into(),
                "the second text encoder with its text_projection (CLIPTextModelWithProjection)",
            ));
        }
        if c1.max_position_embeddings != c2.max_position_embeddings
            || c1.vocab_size != c2.vocab_size
        {
            return Err(bad(
                "config",
                format!(
                    "{} and {} positions, vocabularies of {} and {}",
                    c1.max_position_embeddings,
                    c2.max_position_embeddings,
                    c1.vocab_size,
                    c2.vocab_size
                ),
                "two encoders of one tokenizer: the same positions and vocabulary",
            ));
        }
        Ok(SdxlText {
            te1: ClipTextModel::load_as(c1, te1.1, be, TE1_PREFIX, TE1_LORA)?,
            te2: ClipTextModel::load_as(c2, te2.1, be, TE2_PREFIX, TE2_LORA)?,
        })
    }

    /// CLIP's `<|endoftext|>`: the last id of the vocabulary (49407 of 49408).
    pub fn eos(&self) -> u32 {
        (self.te1.config.vocab_size - 1) as u32
    }

    /// The context's width, w1 + w2 (2048 on SDXL).
    pub fn context_width(&self) -> usize {
        self.te1.config.hidden_size + self.te2.config.hidden_size
    }

    /// The pooled output's width (1280 on SDXL).
    pub fn pooled_width(&self) -> usize {
        self.te2.config.text_projection.unwrap_or(0)
    }

    /// The conditioning for `batch` captions of SD1.x-padded ids (see the top of this file).
    pub fn forward(&self, cx: &Ctx, ids: &[u32], batch: usize) -> Result<SdxlCond> {
        Ok(self.forward_train(cx, ids, batch, false)?.0)
    }

    /// [`SdxlText::forward`], and with `save` the tape for [`SdxlText::backward`]; the same
    /// outputs bit for bit with and without it.
    pub fn forward_train(
        &self,
        cx: &Ctx,
        ids: &[u32],
        batch: usize,
        save: bool,
    ) -> Result<(SdxlCond, Option<SdxlTextTape>)> {
        let ids2 = self.te2_ids(ids, batch)?;
        let at = self.pooled_positions(&ids2, batch);
        let e1 = self
            .te1
            .encode(cx, ids, batch, ClipOutput::Penultimate, None, save)?;
        let e2 = self
            .te2
            .encode(cx, &ids2, batch, ClipOutput::Penultimate, Some(&at), save)?;
        let pooled = e2
            .pooled
            .ok_or_else(|| tape_error("the second encoder made no pooled output"))?;
        let context = concat_width(cx, e1.states, e2.states)?;
        let tape = match (e1.tape, e2.tape) {
            (Some(te1), Some(te2)) => Some(SdxlTextTape { te1, te2 }),
            _ => None,
        };
        Ok((SdxlCond { context, pooled }, tape))
    }

    /// Gradients of every adapter of both encoders in `cx`'s set from d loss / d context
    /// and, where the UNet gives it, d loss / d pooled, into `grads` (`=` or `+=` by
    /// `grads.accum`, as [`ClipTextModel::backward`]; without `d_pooled` te2's last layer gets
    /// none).
    pub fn backward(
        &self,
        cx: &Ctx,
        d_context: &Tensor,
        d_pooled: Option<&Tensor>,
        tape: SdxlTextTape,
        grads: &mut LoraGrads,
    ) -> Result<()> {
        let dims = d_context.dims();
        let (w1, w) = (self.te1.config.hidden_size, self.context_width());
        if dims.len() != 3 || dims[2] != w {
            return Err(Error::BadValue {
                op: "sdxl text backward",
                name: "d_context",
                value: format!("{dims:?}"),
                expected: format!("[N, T, {w}], the context's shape"),
            });
        }
        let (n, t) = (dims[0], dims[1]);
        let flat = d_context.clone().reshape([n * t, w, 1])?;
        let (d1, d2) = cx.be.split_channels(&flat, w1)?;
        drop(flat);
        self.te1
            .backward_pooled(cx, &d1.reshape([n, t, w1])?, None, tape.te1, grads)?;
        self.te2
            .backward_pooled(cx, &d2.reshape([n, t, w - w1])?, d_pooled, tape.te2, grads)
    }

    /// te1's adapters then te2's, each in forward order.
    pub fn lora_targets(&self) -> Vec<TargetLayer> {
        let mut t = self.te1.lora_targets();
        t.extend(self.te2.lora_targets());
        t
    }

    /// Every frozen linear weight that can carry an adapter, by kohya name.
    pub fn adaptable_weights(&self) -> Vec<(&str, &Tensor)> {
        let mut w = self.te1.adaptable_weights();
        w.extend(self.te2.adaptable_weights());
        w
    }

    /// te2's ids from te1's (SD1.x-padded, `batch` sequences of one or more windows): see the
    /// top of this file.
    pub fn te2_ids(&self, ids: &[u32], batch: usize) -> Result<Vec<u32>> {
        let p = self.te1.config.max_position_embeddings;
        let len = ids.len().checked_div(batch).unwrap_or(0);
        let windows = if len > p && len.is_multiple_of(p) {
            len / p
        } else {
            1
        };
        let window = len / windows;
        if batch == 0 || len * batch != ids.len() || window < 3 || window > p {
            return Err(Error::BadValue {
                op: "sdxl text encoders",
                name: "ids",
                value: format!("{} ids for {batch} sequences", ids.len()),
                expected: format!(
                    "batch·L ids with 3 <= L <= {p}, or L a multiple of {p} (long captions)"
                ),
            });
        }
        let eos = self.eos();
        let mut out = Vec::with_capacity(ids.len());
        for seq in ids.chunks(len) {
            // The whole caption: BOS, every window's inner ids, the last window's last id.
            let mut full = Vec::with_capacity(windows * (window - 2) + 2);
            full.push(seq[0]);
            for row in seq.chunks(window) {
                full.extend_from_slice(&row[1..window - 1]);
            }
            full.push(seq[len - 1]);
            let mut end = full.len();
            while end > 1 && full[end - 1] == eos {
                end -= 1;
            }
            // full[end] is the caption's EOS (when there is one); padding after it.
            for id in full.iter_mut().skip(end + 1) {
                *id = TE2_PAD;
            }
            out.extend(caption_windows(&full, window, eos, TE2_PAD));
        }
        Ok(out)
    }

    /// Where each sequence is pooled: the first EOS of its first window (sd-scripts'
    /// `pool_workaround`; 0 when there is none).
    fn pooled_positions(&self, ids2: &[u32], batch: usize) -> Vec<usize> {
        let len = ids2.len() / batch;
        let window = len.min(self.te2.config.max_position_embeddings);
        let eos = self.eos();
        ids2.chunks(len)
            .map(|seq| seq[..window].iter().position(|&i| i == eos).unwrap_or(0))
            .collect()
    }
}

/// [N, T, a] and [N, T, b] -> [N, T, a + b].
fn concat_width(cx: &Ctx, a: Tensor, b: Tensor) -> Result<Tensor> {
    let (da, db) = (a.dims().to_vec(), b.dims().to_vec());
    if da.len() != 3 || db.len() != 3 || da[..2] != db[..2] {
        return Err(tape_error(&format!(
            "states of shapes {da:?} and {db:?} cannot be joined"
        )));
    }
    let (n, t, wa, wb) = (da[0], da[1], da[2], db[2]);
    let a = a.reshape([n * t, wa, 1])?;
    let b = b.reshape([n * t, wb, 1])?;
    cx.be.concat_channels(&a, &b)?.reshape([n, t, wa + wb])
}

fn tape_error(what: &str) -> Error {
    Error::BadValue {
        op: "sdxl text encoders",
        name: "states",
        value: what.into(),
        expected: "the two encoders' outputs of one forward".into(),
    }
}
