//! CLIPTextModel (transformers), the SD1.x text encoder, forward: token ids -> embeddings
//! that the UNet's cross-attention reads.
//!
//!   h0 = token_embedding[ids] + position_embedding[0..L]
//!   layer i: h = h + out_proj(causal_attention(q, k, v of layer_norm1(h)))
//!            h = h + fc2(act(fc1(layer_norm2(h))))           act = quick_gelu in SD1.x
//!   last_hidden_state = final_layer_norm(h_L)
//! `clip_skip = n` (kohya, A1111): the output of layer L+1-n, then final_layer_norm; n = 1 is
//! the plain last_hidden_state. Attention heads are hidden/heads wide (64 in SD1.x).
//! The adapters of kohya's text-encoder LoRA (`lora_te_…` on q/k/v/out_proj, fc1, fc2) are
//! applied in the forward when a set holds them.

use crate::backend::{Activation, Attention as AttnParams, Backend};
use crate::error::{Error, Result};
use crate::model::config::{ClipTextConfig, HiddenAct};
use crate::model::layers::{Ctx, LayerNorm, Linear};
use crate::model::weights::{Loader, WeightSource};
use crate::tensor::Tensor;

pub struct ClipLayer {
    pub layer_norm1: LayerNorm,
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub out_proj: Linear,
    pub layer_norm2: LayerNorm,
    pub fc1: Linear,
    pub fc2: Linear,
}

/// The frozen text encoder.
pub struct ClipTextModel {
    pub config: ClipTextConfig,
    pub token_embedding: Tensor,
    pub position_embedding: Tensor,
    pub layers: Vec<ClipLayer>,
    pub final_layer_norm: LayerNorm,
}

impl ClipTextModel {
    /// Builds the model from weights named as transformers' `CLIPTextModel` state dict below
    /// `prefix` ("text_encoder"): `text_model.embeddings.…`, `text_model.encoder.layers.N.…`.
    pub fn load(
        config: &ClipTextConfig,
        src: &dyn WeightSource,
        be: &dyn Backend,
        prefix: &str,
    ) -> Result<Self> {
        config.validate().map_err(|why| Error::BadValue {
            op: "clip",
            name: "config",
            value: why,
            expected: "a CLIP text encoder configuration".into(),
        })?;
        let l = Loader::new(src, be, prefix).at("text_model");
        let (d, f, eps) = (
            config.hidden_size,
            config.intermediate_size,
            config.layer_norm_eps,
        );
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let ll = l.at(&format!("encoder.layers.{i}"));
                Ok(ClipLayer {
                    layer_norm1: LayerNorm::load(&ll.at("layer_norm1"), d, eps)?,
                    q_proj: Linear::load(&ll.at("self_attn.q_proj"), d, d, true)?,
                    k_proj: Linear::load(&ll.at("self_attn.k_proj"), d, d, true)?,
                    v_proj: Linear::load(&ll.at("self_attn.v_proj"), d, d, true)?,
                    out_proj: Linear::load(&ll.at("self_attn.out_proj"), d, d, true)?,
                    layer_norm2: LayerNorm::load(&ll.at("layer_norm2"), d, eps)?,
                    fc1: Linear::load(&ll.at("mlp.fc1"), d, f, true)?,
                    fc2: Linear::load(&ll.at("mlp.fc2"), f, d, true)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(ClipTextModel {
            config: config.clone(),
            token_embedding: l
                .tensor("embeddings.token_embedding.weight", &[config.vocab_size, d])?,
            position_embedding: l.tensor(
                "embeddings.position_embedding.weight",
                &[config.max_position_embeddings, d],
            )?,
            layers,
            final_layer_norm: LayerNorm::load(&l.at("final_layer_norm"), d, eps)?,
        })
    }

    /// Text embeddings [N, L, hidden] for N sequences of L token ids each (`ids` row-major,
    /// L <= max_position_embeddings), with `clip_skip` >= 1 as kohya and A1111 count it.
    pub fn forward(&self, cx: &Ctx, ids: &[u32], batch: usize, clip_skip: usize) -> Result<Tensor> {
        let c = &self.config;
        let len = ids.len().checked_div(batch).unwrap_or(0);
        if batch == 0 || len * batch != ids.len() || len == 0 || len > c.max_position_embeddings {
            return Err(Error::BadValue {
                op: "clip",
                name: "ids",
                value: format!("{} ids for {batch} sequences", ids.len()),
                expected: format!("batch·L ids with 1 <= L <= {}", c.max_position_embeddings),
            });
        }
        if clip_skip == 0 || clip_skip > c.num_hidden_layers {
            return Err(Error::BadValue {
                op: "clip",
                name: "clip_skip",
                value: clip_skip.to_string(),
                expected: format!("between 1 and {} (1 = the last layer)", c.num_hidden_layers),
            });
        }
        let d = c.hidden_size;
        let tok = cx
            .be
            .embedding(&self.token_embedding, ids)?
            .reshape([batch, len, d])?;
        let positions: Vec<u32> = (0..batch).flat_map(|_| 0..len as u32).collect();
        let pos = cx
            .be
            .embedding(&self.position_embedding, &positions)?
            .reshape([batch, len, d])?;
        let mut h = cx.be.add(&tok, &pos)?;
        drop((tok, pos));
        let act = match c.hidden_act {
            HiddenAct::QuickGelu => Activation::QuickGelu,
            HiddenAct::Gelu => Activation::Gelu,
        };
        let attn = AttnParams {
            heads: c.num_attention_heads,
            causal: true,
        };
        for layer in &self.layers[..c.num_hidden_layers + 1 - clip_skip] {
            let n = layer.layer_norm1.forward(cx, &h)?.0;
            let q = layer.q_proj.forward(cx, &n)?.y;
            let k = layer.k_proj.forward(cx, &n)?.y;
            let v = layer.v_proj.forward(cx, &n)?.y;
            drop(n);
            let (o, _) = cx.be.attention(&q, &k, &v, attn)?;
            h = cx.be.add(&h, &layer.out_proj.forward(cx, &o)?.y)?;
            let n = layer.layer_norm2.forward(cx, &h)?.0;
            let a = cx.be.activation(&layer.fc1.forward(cx, &n)?.y, act)?;
            h = cx.be.add(&h, &layer.fc2.forward(cx, &a)?.y)?;
        }
        Ok(self.final_layer_norm.forward(cx, &h)?.0)
    }
}
