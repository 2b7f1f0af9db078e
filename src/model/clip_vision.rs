//! The image tower of transformers' `CLIPModel` (`CLIPVisionTransformer` and
//! `visual_projection`) for inference: a ViT, run by src/model/vit.rs from the weights under
//! transformers' names.
//!
//!   tokens = class_embedding ++ patch_embedding(x) (a stride-p conv without bias)
//!            + position_embedding
//!   pre_layrnorm, encoder layers (layer_norm1, self_attn q/k/v/out_proj with biases, not
//!   causal; layer_norm2, mlp fc1, act, fc2), post_layernorm of the class token,
//!   visual_projection (no bias) -> image_embeds [projection_dim]
//! act is `hidden_act` (quick_gelu for OpenAI's models, gelu for some others); LayerNorm eps
//! is `layer_norm_eps` (1e-5).

use serde::Deserialize;

use crate::backend::{Activation, Backend};
use crate::error::Result;
use crate::model::attention::{Attention, AttentionSpec};
use crate::model::config::HiddenAct;
use crate::model::layers::{LayerNorm, Linear};
use crate::model::vit::{Block, Pool, Vit, VitConfig, VitWeights};
use crate::model::weights::{Loader, WeightSource};

/// transformers' `CLIPVisionConfig`, with its defaults for keys a config.json leaves out.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default)]
pub struct ClipVisionConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_channels: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub layer_norm_eps: f64,
    pub hidden_act: HiddenAct,
}

impl Default for ClipVisionConfig {
    fn default() -> Self {
        ClipVisionConfig {
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            num_channels: 3,
            image_size: 224,
            patch_size: 32,
            layer_norm_eps: 1e-5,
            hidden_act: HiddenAct::QuickGelu,
        }
    }
}

impl ClipVisionConfig {
    /// Consistency: RGB input, heads dividing the width, whole patches.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.num_channels != 3 {
            return Err(format!(
                "num_channels = {} (only RGB models, 3, are supported)",
                self.num_channels
            ));
        }
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return Err(format!(
                "hidden_size = {} is not divisible by num_attention_heads = {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.patch_size == 0 || !self.image_size.is_multiple_of(self.patch_size) {
            return Err(format!(
                "image_size = {} is not a multiple of patch_size = {}",
                self.image_size, self.patch_size
            ));
        }
        if self.num_hidden_layers == 0 || self.intermediate_size == 0 {
            return Err("num_hidden_layers and intermediate_size must be positive".into());
        }
        Ok(())
    }

    /// The shape as src/model/vit.rs runs it, with `projection_dim` outputs.
    pub fn vit(&self, projection_dim: usize) -> VitConfig {
        VitConfig {
            img_size: self.image_size,
            patch_size: self.patch_size,
            embed_dim: self.hidden_size,
            depth: self.num_hidden_layers,
            num_heads: self.num_attention_heads,
            mlp_hidden: self.intermediate_size,
            class_token: true,
            qkv_bias: true,
            pool: Pool::Token,
            fc_norm: false,
            act: match self.hidden_act {
                HiddenAct::QuickGelu => Activation::QuickGelu,
                HiddenAct::Gelu => Activation::Gelu,
            },
            num_classes: projection_dim,
        }
    }
}

/// The vision tower and `visual_projection` from a CLIPModel state dict (`vision_model.…`);
/// errors name a missing tensor or a wrong shape.
pub fn load(
    src: &dyn WeightSource,
    be: &dyn Backend,
    config: &ClipVisionConfig,
    projection_dim: usize,
) -> Result<Vit> {
    crate::model::config::checked(
        config.validate(),
        "clip vision",
        "a CLIP vision configuration",
    )?;
    let vc = config.vit(projection_dim);
    let (d, p, eps) = (config.hidden_size, config.patch_size, config.layer_norm_eps);
    let l = Loader::new(src, be, "vision_model");
    let e = l.at("embeddings");
    let patch = Linear {
        name: "clip_vision_patch_embedding".into(),
        weight: e
            .tensor("patch_embedding.weight", &[d, 3, p, p])?
            .reshape([d, 3 * p * p])?,
        bias: None,
    };
    let cls_token = Some(src.tensor(&e.join("class_embedding"), &[d])?.to_f32_vec());
    let tokens = vc.tokens();
    let pos_embed = e
        .tensor("position_embedding.weight", &[tokens, d])?
        .reshape([1, tokens, d])?;
    let spec = AttentionSpec {
        c: d,
        c_kv: d,
        heads: config.num_attention_heads,
        causal: false,
        qkv_bias: true,
        names: ["q_proj", "k_proj", "v_proj", "out_proj"],
    };
    let blocks = (0..config.num_hidden_layers)
        .map(|i| {
            let b = l.at(&format!("encoder.layers.{i}"));
            Ok(Block {
                norm1: LayerNorm::load(&b.at("layer_norm1"), d, eps)?,
                attn: Attention::load(&b.at("self_attn"), spec)?,
                norm2: LayerNorm::load(&b.at("layer_norm2"), d, eps)?,
                fc1: Linear::load(&b.at("mlp.fc1"), d, config.intermediate_size, true)?,
                fc2: Linear::load(&b.at("mlp.fc2"), config.intermediate_size, d, true)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let root = Loader::new(src, be, "");
    let w = VitWeights {
        patch,
        cls_token,
        pos_embed,
        norm_pre: Some(LayerNorm::load(&l.at("pre_layrnorm"), d, eps)?),
        blocks,
        norm: Some(LayerNorm::load(&l.at("post_layernorm"), d, eps)?),
        fc_norm: None,
        head: Linear::load(&root.at("visual_projection"), d, projection_dim, false)?,
    };
    Vit::assemble(be, vc, w)
}
