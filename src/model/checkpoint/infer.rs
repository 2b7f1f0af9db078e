//! Configurations of a single-file checkpoint, read off its tensor shapes, so that any model
//! of SD1.x's topology loads, not only the 860M-parameter original.
//!
//! What the shapes tell:
//! - UNet: in/out channels (conv_in, conv_out), block_out_channels (each level's first resnet
//!   conv1), the number of levels and layers_per_block (which resnets exist), which levels have
//!   attention, cross_attention_dim (attn2.to_k's input width), transformer depth.
//! - VAE: in/out channels, block_out_channels, layers_per_block, latent_channels
//!   (post_quant_conv).
//! - CLIP: vocab_size and hidden_size (token embedding), max_position_embeddings (position
//!   embedding), intermediate_size (fc1), num_hidden_layers (which layers exist); for a
//!   CLIPModel's image tower (`lorafuse caption --clip`) also the patch and image size.
//!
//! What they cannot tell follows SD1.x: 8 heads in every UNet attention, CLIP heads of width
//! 64, GroupNorm with 32 groups, eps 1e-5 (UNet, CLIP) and 1e-6 (VAE), VAE scaling 0.18215,
//! quick_gelu, flip_sin_to_cos, freq_shift 0. SD2.x (LDM's v2 configs): UNet heads of width
//! 64 (`num_head_channels: 64`, so 5, 10, 20, 20 heads), GELU in the text encoder. A model where these cannot hold (channels not
//! divisible by 32 or 8, a CLIP width not a multiple of 64) is refused rather than guessed at.

use std::path::Path;

use crate::model::clip_vision::ClipVisionConfig;
use crate::model::config::{
    ClipTextConfig, DownBlockType, HiddenAct, PerLevel, UnetConfig, UpBlockType, VaeConfig,
};

use super::Generation;

use super::error::CheckpointError;
use super::weights::Weights;

/// SD1.x's width of one CLIP attention head (OpenCLIP ViT-H's too).
const CLIP_HEAD_DIM: usize = 64;

/// SD2.x's and SDXL's width of one UNet attention head (LDM's `num_head_channels`).
pub const SD2_UNET_HEAD_DIM: usize = 64;

/// Counts `{prefix}{i}.{suffix}` for i = 0, 1, … until the first gap.
fn count(w: &Weights, prefix: &str, suffix: &str) -> usize {
    (0..)
        .take_while(|i| w.contains(&format!("{prefix}{i}.{suffix}")))
        .count()
}

fn dim(
    w: &Weights,
    name: &str,
    axis: usize,
    rank: usize,
    fail: &dyn Fn(String) -> CheckpointError,
) -> Result<usize, CheckpointError> {
    let shape = w.require_shape(name)?;
    if shape.len() != rank {
        return Err(fail(format!(
            "`{name}` has shape {shape:?}, expected {rank} dimensions"
        )));
    }
    Ok(shape[axis])
}

/// What tensor shapes cannot tell, when a model departs from SD1.x's conventions (the tiny
/// test fixtures use 4 GroupNorm groups, SD1.x 32). None keeps the convention.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConfigHints {
    pub norm_num_groups: Option<usize>,
    /// SD2.x and SDXL: the UNet's attention head width (64 when None); SD1.x files use 8 heads.
    pub attention_head_width: Option<usize>,
    /// SDXL: the width of each size/crop id's sinusoid (256 when None); the added embedding's
    /// input width is the pooled text's plus six of these, which the shapes do not separate.
    pub addition_time_embed_dim: Option<usize>,
}

pub fn unet(
    path: &Path,
    w: &Weights,
    generation: Generation,
    hints: &ConfigHints,
) -> Result<UnetConfig, CheckpointError> {
    let fail = unet_error(path);
    let cfg = unet_topology(path, w, hints)?;
    if cfg.transformer_layers_per_block != PerLevel::All(1) {
        return Err(fail(format!(
            "transformer_layers_per_block {:?}: more than one transformer block per attention \
             (SD1.x and SD2.x have one)",
            cfg.transformer_layers_per_block
        )));
    }
    let attention_head_dim = match generation {
        Generation::Sd1 => PerLevel::All(8),
        // SDXL's UNet is read by `sdxl_unet`; its heads are 64 wide as SD2.x's.
        Generation::Sd2 | Generation::Sdxl => {
            heads_of_width(&cfg.block_out_channels, hints, &fail)?
        }
    };
    let cfg = UnetConfig {
        attention_head_dim,
        ..cfg
    };
    cfg.validate().map_err(fail)?;
    Ok(cfg)
}

/// An SDXL UNet's configuration from its `unet.…` tensors: the topology as [`unet`] reads
/// it, with the transformer depth of each level, heads of width 64 (or the hint's), and the
/// text-time added embedding (`add_embedding.linear_1`'s input width is the pooled text's
/// plus 6 · addition_time_embed_dim, 256 unless hinted).
pub fn sdxl_unet(
    path: &Path,
    w: &Weights,
    hints: &ConfigHints,
) -> Result<UnetConfig, CheckpointError> {
    let fail = unet_error(path);
    let cfg = unet_topology(path, w, hints)?;
    let added_in = dim(w, "unet.add_embedding.linear_1.weight", 1, 2, &fail)?;
    let sdxl = UnetConfig::sdxl();
    let cfg = UnetConfig {
        attention_head_dim: heads_of_width(&cfg.block_out_channels, hints, &fail)?,
        sample_size: sdxl.sample_size,
        addition_embed_type: sdxl.addition_embed_type,
        addition_time_embed_dim: hints
            .addition_time_embed_dim
            .or(sdxl.addition_time_embed_dim),
        projection_class_embeddings_input_dim: Some(added_in),
        ..cfg
    };
    cfg.validate().map_err(fail)?;
    Ok(cfg)
}

/// The error of a UNet configuration the shapes of `path` do not give.
fn unet_error(path: &Path) -> impl Fn(String) -> CheckpointError + '_ {
    move |detail| CheckpointError::Infer {
        path: path.to_path_buf(),
        component: "UNet",
        detail,
    }
}

/// One head count per level, for heads of the hinted width (64 when None).
fn heads_of_width(
    channels: &[usize],
    hints: &ConfigHints,
    fail: &dyn Fn(String) -> CheckpointError,
) -> Result<PerLevel, CheckpointError> {
    let width = hints.attention_head_width.unwrap_or(SD2_UNET_HEAD_DIM);
    if let Some(c) = channels.iter().find(|&&c| width == 0 || c % width != 0) {
        return Err(fail(format!(
            "block_out_channels {channels:?}: {c} is not a multiple of the attention head \
             width {width}"
        )));
    }
    Ok(PerLevel::Each(channels.iter().map(|c| c / width).collect()))
}

/// What the shapes of `unet.…` tensors show: levels, channels, block types, in/out channels,
/// cross-attention width, projection kind and the transformer depth per level (levels without
/// attention take the mid block's when last, else 1); SD1.5's values for the rest (8 heads).
fn unet_topology(
    path: &Path,
    w: &Weights,
    hints: &ConfigHints,
) -> Result<UnetConfig, CheckpointError> {
    let fail = unet_error(path);
    let levels = count(w, "unet.down_blocks.", "resnets.0.conv1.weight");
    if levels == 0 {
        w.require_shape("unet.down_blocks.0.resnets.0.conv1.weight")?;
    }
    let layers_per_block = count(w, "unet.down_blocks.0.resnets.", "conv1.weight");
    let mut block_out_channels = Vec::with_capacity(levels);
    let mut down_block_types = Vec::with_capacity(levels);
    let mut up_block_types = Vec::with_capacity(levels);
    for i in 0..levels {
        let conv1 = format!("unet.down_blocks.{i}.resnets.0.conv1.weight");
        block_out_channels.push(dim(w, &conv1, 0, 4, &fail)?);
        let n = count(w, &format!("unet.down_blocks.{i}.resnets."), "conv1.weight");
        if n != layers_per_block {
            return Err(fail(format!(
                "down block {i} has {n} resnets but down block 0 has {layers_per_block}"
            )));
        }
        down_block_types.push(
            if w.contains(&format!("unet.down_blocks.{i}.attentions.0.proj_in.weight")) {
                DownBlockType::CrossAttnDownBlock2D
            } else {
                DownBlockType::DownBlock2D
            },
        );
        up_block_types.push(
            if w.contains(&format!("unet.up_blocks.{i}.attentions.0.proj_in.weight")) {
                UpBlockType::CrossAttnUpBlock2D
            } else {
                UpBlockType::UpBlock2D
            },
        );
    }
    let in_channels = dim(w, "unet.conv_in.weight", 1, 4, &fail)?;
    let out_channels = dim(w, "unet.conv_out.weight", 0, 4, &fail)?;

    let mut cross = None;
    let mut linear_proj = false;
    for k in w.keys_with_prefix("unet.") {
        if k.ends_with(".attn2.to_k.weight") {
            let d = dim(w, k, 1, 2, &fail)?;
            match cross {
                Some(c) if c != d => {
                    return Err(fail(format!(
                        "`{k}` reads {d}-wide text embeddings but another attention reads {c}"
                    )))
                }
                _ => cross = Some(d),
            }
        }
        if k.ends_with(".proj_in.weight") && w.shape(k).map(<[usize]>::len) == Some(2) {
            linear_proj = true;
        }
    }
    let cross_attention_dim = cross.ok_or_else(|| {
        w.require_shape("unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight")
            .err()
            .unwrap_or_else(|| fail("no cross-attention".into()))
    })?;

    let transformer_layers_per_block = depths(w, &down_block_types, layers_per_block, &fail)?;
    Ok(UnetConfig {
        in_channels,
        out_channels,
        block_out_channels,
        layers_per_block,
        down_block_types,
        up_block_types,
        cross_attention_dim,
        use_linear_projection: linear_proj,
        transformer_layers_per_block,
        norm_num_groups: hints
            .norm_num_groups
            .unwrap_or(UnetConfig::sd15().norm_num_groups),
        ..UnetConfig::sd15()
    })
}

/// The transformer depth of each level: how many `transformer_blocks.N` its first down
/// attention has, the same in every attention of the level (down and up) and in the mid
/// block for the last level. One value for all levels when they agree.
fn depths(
    w: &Weights,
    down: &[DownBlockType],
    layers_per_block: usize,
    fail: &dyn Fn(String) -> CheckpointError,
) -> Result<PerLevel, CheckpointError> {
    let blocks = |attention: &str| {
        count(
            w,
            &format!("unet.{attention}.transformer_blocks."),
            "attn1.to_q.weight",
        )
    };
    let levels = down.len();
    let mid = blocks("mid_block.attentions.0");
    let mut out = Vec::with_capacity(levels);
    for (i, t) in down.iter().enumerate() {
        if *t != DownBlockType::CrossAttnDownBlock2D {
            out.push(if i + 1 == levels && mid > 0 { mid } else { 1 });
            continue;
        }
        let depth = blocks(&format!("down_blocks.{i}.attentions.0"));
        let up = levels - 1 - i;
        let mut all: Vec<String> = (0..layers_per_block)
            .map(|j| format!("down_blocks.{i}.attentions.{j}"))
            .chain((0..=layers_per_block).map(|j| format!("up_blocks.{up}.attentions.{j}")))
            .collect();
        if i + 1 == levels {
            all.push("mid_block.attentions.0".into());
        }
        if let Some((a, d)) = all
            .iter()
            .map(|a| (a, blocks(a)))
            .find(|(_, d)| *d != depth)
        {
            return Err(fail(format!(
                "`unet.{a}` has {d} transformer blocks but `unet.down_blocks.{i}.attentions.0` \
                 has {depth}: one depth per level"
            )));
        }
        out.push(depth);
    }
    Ok(match out.first() {
        Some(&d) if out.iter().all(|&x| x == d) => PerLevel::All(d),
        _ => PerLevel::Each(out),
    })
}

/// How many `{layers}N.mlp.fc1.weight` there are, and the first one's output width.
fn layers_and_mlp(
    w: &Weights,
    layers: &str,
    fail: &dyn Fn(String) -> CheckpointError,
) -> Result<(usize, usize), CheckpointError> {
    let n = count(w, layers, "mlp.fc1.weight");
    if n == 0 {
        w.require_shape(&format!("{layers}0.mlp.fc1.weight"))?;
    }
    Ok((n, dim(w, &format!("{layers}0.mlp.fc1.weight"), 0, 2, fail)?))
}

/// A CLIPModel's vision tower (`vision_model.…`) from its shapes: width and patch size
/// (patch_embedding), image size (position_embedding: (size/patch)² + 1 tokens), layers and
/// MLP width (fc1), and the projection width (visual_projection); heads of width 64 and
/// quick_gelu, as OpenAI's CLIP models have them.
pub fn clip_vision(path: &Path, w: &Weights) -> Result<(ClipVisionConfig, usize), CheckpointError> {
    let fail = |detail: String| CheckpointError::Infer {
        path: path.to_path_buf(),
        component: "CLIP vision tower",
        detail,
    };
    let patch = "vision_model.embeddings.patch_embedding.weight";
    let hidden_size = dim(w, patch, 0, 4, &fail)?;
    let patch_size = dim(w, patch, 2, 4, &fail)?;
    let position = "vision_model.embeddings.position_embedding.weight";
    let tokens = dim(w, position, 0, 2, &fail)?;
    let grid = (1..=tokens).find(|g| g * g + 1 >= tokens).unwrap_or(0);
    if grid * grid + 1 != tokens {
        return Err(fail(format!(
            "`{position}` has {tokens} rows, not a square number of patches plus the class token"
        )));
    }
    let (num_hidden_layers, intermediate_size) =
        layers_and_mlp(w, "vision_model.encoder.layers.", &fail)?;
    let projection_dim = dim(w, "visual_projection.weight", 0, 2, &fail)?;
    if hidden_size % CLIP_HEAD_DIM != 0 {
        return Err(fail(format!(
            "hidden_size {hidden_size} is not a multiple of CLIP's head width {CLIP_HEAD_DIM}, \
             so the number of heads is unknown (put the model's config.json beside it)"
        )));
    }
    let cfg = ClipVisionConfig {
        hidden_size,
        intermediate_size,
        num_hidden_layers,
        num_attention_heads: hidden_size / CLIP_HEAD_DIM,
        image_size: grid * patch_size,
        patch_size,
        ..ClipVisionConfig::default()
    };
    cfg.validate().map_err(fail)?;
    Ok((cfg, projection_dim))
}

pub fn vae(path: &Path, w: &Weights, hints: &ConfigHints) -> Result<VaeConfig, CheckpointError> {
    let fail = |detail: String| CheckpointError::Infer {
        path: path.to_path_buf(),
        component: "VAE",
        detail,
    };
    let levels = count(w, "vae.encoder.down_blocks.", "resnets.0.conv1.weight");
    if levels == 0 {
        w.require_shape("vae.encoder.down_blocks.0.resnets.0.conv1.weight")?;
    }
    let layers_per_block = count(w, "vae.encoder.down_blocks.0.resnets.", "conv1.weight");
    let mut block_out_channels = Vec::with_capacity(levels);
    for i in 0..levels {
        let conv1 = format!("vae.encoder.down_blocks.{i}.resnets.0.conv1.weight");
        block_out_channels.push(dim(w, &conv1, 0, 4, &fail)?);
    }
    let decoder_levels = count(w, "vae.decoder.up_blocks.", "resnets.0.conv1.weight");
    if decoder_levels != levels {
        return Err(fail(format!(
            "the encoder has {levels} levels but the decoder {decoder_levels}"
        )));
    }
    let cfg = VaeConfig {
        in_channels: dim(w, "vae.encoder.conv_in.weight", 1, 4, &fail)?,
        out_channels: dim(w, "vae.decoder.conv_out.weight", 0, 4, &fail)?,
        down_block_types: vec![VaeConfig::sd15().down_block_types[0]; levels],
        up_block_types: vec![VaeConfig::sd15().up_block_types[0]; levels],
        block_out_channels,
        layers_per_block,
        latent_channels: dim(w, "vae.post_quant_conv.weight", 0, 4, &fail)?,
        norm_num_groups: hints
            .norm_num_groups
            .unwrap_or(VaeConfig::sd15().norm_num_groups),
        ..VaeConfig::sd15()
    };
    cfg.validate().map_err(fail)?;
    Ok(cfg)
}

pub fn clip(
    path: &Path,
    w: &Weights,
    generation: Generation,
) -> Result<ClipTextConfig, CheckpointError> {
    let act = match generation {
        // SDXL's first encoder is SD1.x's CLIP ViT-L (its second is read by `sdxl_text`).
        Generation::Sd1 | Generation::Sdxl => HiddenAct::QuickGelu,
        Generation::Sd2 => HiddenAct::Gelu,
    };
    clip_text_at(path, w, "text_encoder.", act)
}

/// The text tower's configuration from the tensors `{prefix}text_model.…`, with the MLP's
/// activation `act` (the tensors do not say it).
pub fn clip_text_at(
    path: &Path,
    w: &Weights,
    prefix: &str,
    act: HiddenAct,
) -> Result<ClipTextConfig, CheckpointError> {
    let fail = |detail: String| CheckpointError::Infer {
        path: path.to_path_buf(),
        component: "text encoder",
        detail,
    };
    let token = format!("{prefix}text_model.embeddings.token_embedding.weight");
    let vocab_size = dim(w, &token, 0, 2, &fail)?;
    let hidden_size = dim(w, &token, 1, 2, &fail)?;
    let position = format!("{prefix}text_model.embeddings.position_embedding.weight");
    let max_position_embeddings = dim(w, &position, 0, 2, &fail)?;
    let layers = format!("{prefix}text_model.encoder.layers.");
    let (num_hidden_layers, intermediate_size) = layers_and_mlp(w, &layers, &fail)?;
    if hidden_size % CLIP_HEAD_DIM != 0 {
        return Err(fail(format!(
            "hidden_size {hidden_size} is not a multiple of SD1.x's CLIP head width \
             {CLIP_HEAD_DIM}, so the number of heads is unknown"
        )));
    }
    let cfg = ClipTextConfig {
        vocab_size,
        hidden_size,
        intermediate_size,
        num_hidden_layers,
        num_attention_heads: hidden_size / CLIP_HEAD_DIM,
        max_position_embeddings,
        hidden_act: act,
        ..ClipTextConfig::sd15()
    };
    cfg.validate().map_err(fail)?;
    Ok(cfg)
}
