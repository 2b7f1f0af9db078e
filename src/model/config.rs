//! The three model configurations of Stable Diffusion 1.x, with the field names of diffusers'
//! `config.json` files so that a diffusers folder parses straight into them.
//!
//! Where they come from:
//! - a diffusers folder: `unet/config.json`, `vae/config.json`, `text_encoder/config.json`,
//!   parsed here; a field the file leaves out takes SD1.5's value (diffusers' own class defaults
//!   differ in places, e.g. `cross_attention_dim` 1280, but every SD1.x config states those);
//! - a single-file (LDM) checkpoint: inferred from the tensor shapes
//!   (`model::checkpoint::infer`), so that small models of the same topology load too;
//! - [`UnetConfig::sd15`], [`VaeConfig::sd15`], [`ClipTextConfig::sd15`]: the real model.
//!
//! The `attention_head_dim` quirk: SD1.x's `unet/config.json` says `"attention_head_dim": 8`,
//! and diffusers reads that as the NUMBER OF HEADS, not the width of one head (the name is a
//! historical mistake kept for compatibility; see the comment on `num_attention_heads` in
//! diffusers' `UNet2DConditionModel.__init__`). Every SD1.x attention therefore has 8 heads, of
//! width 320/8 = 40, 640/8 = 80 and 1280/8 = 160. Newer configs may set `num_attention_heads`,
//! which then wins. [`UnetConfig::heads`] applies this rule; use it, not the field.

use serde::{Deserialize, Serialize};

/// A config value that diffusers accepts either as one number for every level or as one
/// number per level (`attention_head_dim: 8` or `[5, 10, 20, 20]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PerLevel {
    All(usize),
    Each(Vec<usize>),
}

impl PerLevel {
    /// The value at `level`, or None when a per-level list is too short.
    pub fn at(&self, level: usize) -> Option<usize> {
        match self {
            PerLevel::All(v) => Some(*v),
            PerLevel::Each(v) => v.get(level).copied(),
        }
    }
}

/// The activation of the UNet and VAE resnets (diffusers also accepts the alias "swish").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    #[serde(alias = "swish")]
    Silu,
}

/// The UNet's down blocks. SD1.x uses cross-attention on the first three levels only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DownBlockType {
    CrossAttnDownBlock2D,
    DownBlock2D,
}

/// The UNet's up blocks, deepest first (the mirror of the down blocks).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum UpBlockType {
    UpBlock2D,
    CrossAttnUpBlock2D,
}

/// `UNet2DConditionModel`'s configuration, as far as SD1.x and SD2.x use it. SD2.x's
/// `attention_head_dim: [5, 10, 20, 20]` is again the number of heads (width 64 each).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct UnetConfig {
    /// Latent side length the model was trained at (64 for 512x512 images).
    pub sample_size: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    pub center_input_sample: bool,
    /// Timestep embedding: [cos, sin] instead of [sin, cos].
    pub flip_sin_to_cos: bool,
    /// Timestep embedding: the frequencies are exp(-ln(10000)·i/(half - freq_shift)).
    pub freq_shift: f64,
    pub down_block_types: Vec<DownBlockType>,
    pub up_block_types: Vec<UpBlockType>,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    pub downsample_padding: usize,
    pub mid_block_scale_factor: f64,
    pub act_fn: Activation,
    pub norm_num_groups: usize,
    pub norm_eps: f64,
    /// Width of the text embeddings that cross-attention reads (CLIP's hidden size).
    pub cross_attention_dim: usize,
    /// For SD1.x this is the number of heads, not the head width: see the module comment and
    /// [`UnetConfig::heads`].
    pub attention_head_dim: PerLevel,
    /// When set, the number of heads (and `attention_head_dim` is ignored).
    pub num_attention_heads: Option<PerLevel>,
    pub transformer_layers_per_block: PerLevel,
    /// SD2.x: Linear proj_in/proj_out; SD1.x: 1x1 convolutions.
    pub use_linear_projection: bool,
    pub upcast_attention: bool,
    /// SDXL: "text_time", the added embedding of the pooled text and the size/crop ids
    /// (`add_embedding`), summed into the time embedding.
    pub addition_embed_type: Option<String>,
    /// SDXL: the width of each size/crop id's sinusoidal embedding (256; six ids).
    pub addition_time_embed_dim: Option<usize>,
    /// SDXL: `add_embedding.linear_1`'s input width, pooled text + 6 · addition_time_embed_dim
    /// (1280 + 1536 = 2816).
    pub projection_class_embeddings_input_dim: Option<usize>,
}

impl UnetConfig {
    /// Stable Diffusion 1.5's UNet (`runwayml/stable-diffusion-v1-5`, `unet/config.json`).
    pub fn sd15() -> UnetConfig {
        UnetConfig {
            sample_size: 64,
            in_channels: 4,
            out_channels: 4,
            center_input_sample: false,
            flip_sin_to_cos: true,
            freq_shift: 0.0,
            down_block_types: vec![
                DownBlockType::CrossAttnDownBlock2D,
                DownBlockType::CrossAttnDownBlock2D,
                DownBlockType::CrossAttnDownBlock2D,
                DownBlockType::DownBlock2D,
            ],
            up_block_types: vec![
                UpBlockType::UpBlock2D,
                UpBlockType::CrossAttnUpBlock2D,
                UpBlockType::CrossAttnUpBlock2D,
                UpBlockType::CrossAttnUpBlock2D,
            ],
            block_out_channels: vec![320, 640, 1280, 1280],
            layers_per_block: 2,
            downsample_padding: 1,
            mid_block_scale_factor: 1.0,
            act_fn: Activation::Silu,
            norm_num_groups: 32,
            norm_eps: 1e-5,
            cross_attention_dim: 768,
            attention_head_dim: PerLevel::All(8),
            num_attention_heads: None,
            transformer_layers_per_block: PerLevel::All(1),
            use_linear_projection: false,
            upcast_attention: false,
            addition_embed_type: None,
            addition_time_embed_dim: None,
            projection_class_embeddings_input_dim: None,
        }
    }

    /// SDXL 1.0 base's UNet (`stabilityai/stable-diffusion-xl-base-1.0`, `unet/config.json`):
    /// three levels of 320/640/1280 channels, no attention on the first, 1, 2 and 10
    /// transformer blocks per attention (the mid block has the last level's 10), heads of width
    /// 64, 2048-wide cross-attention (both text encoders' states side by side) and the
    /// text-time added embedding.
    pub fn sdxl() -> UnetConfig {
        UnetConfig {
            sample_size: 128,
            down_block_types: vec![
                DownBlockType::DownBlock2D,
                DownBlockType::CrossAttnDownBlock2D,
                DownBlockType::CrossAttnDownBlock2D,
            ],
            up_block_types: vec![
                UpBlockType::CrossAttnUpBlock2D,
                UpBlockType::CrossAttnUpBlock2D,
                UpBlockType::UpBlock2D,
            ],
            block_out_channels: vec![320, 640, 1280],
            cross_attention_dim: 2048,
            attention_head_dim: PerLevel::Each(vec![5, 10, 20]),
            transformer_layers_per_block: PerLevel::Each(vec![1, 2, 10]),
            use_linear_projection: true,
            addition_embed_type: Some("text_time".into()),
            addition_time_embed_dim: Some(256),
            projection_class_embeddings_input_dim: Some(2816),
            ..UnetConfig::sd15()
        }
    }

    /// Stable Diffusion 2.1's UNet (`stabilityai/stable-diffusion-2-1`, `unet/config.json`):
    /// SD1.5's but 1024-wide cross-attention, Linear projections, heads of width 64.
    pub fn sd2() -> UnetConfig {
        UnetConfig {
            sample_size: 96,
            cross_attention_dim: 1024,
            attention_head_dim: PerLevel::Each(vec![5, 10, 20, 20]),
            use_linear_projection: true,
            upcast_attention: true,
            ..UnetConfig::sd15()
        }
    }

    /// Number of attention heads at `level` (0 = the first down block), following diffusers:
    /// `num_attention_heads` when set, else `attention_head_dim` (which SD1.x's configs use to
    /// mean the number of heads). The mid block uses the last level's value.
    pub fn heads(&self, level: usize) -> Option<usize> {
        self.num_attention_heads
            .as_ref()
            .unwrap_or(&self.attention_head_dim)
            .at(level)
    }

    /// Width of one attention head at `level`.
    pub fn head_dim(&self, level: usize) -> Option<usize> {
        let heads = self.heads(level)?;
        let channels = *self.block_out_channels.get(level)?;
        (heads > 0 && channels % heads == 0).then(|| channels / heads)
    }

    /// Checks that this is a UNet lorafuse can build: SD1.x's, SD2.x's or SDXL's topology
    /// (attention on a level in both directions or in neither, any transformer depth per
    /// level, no added embedding or SDXL's text-time one), consistent lists, heads and groups
    /// that divide the channels. The error says which field is wrong.
    pub fn validate(&self) -> Result<(), String> {
        let levels = check_levels(
            self.block_out_channels.len(),
            self.down_block_types.len(),
            self.up_block_types.len(),
        )?;
        if self.layers_per_block == 0 {
            return Err("layers_per_block is 0".into());
        }
        self.added_embedding_widths()?;
        for level in 0..levels {
            let down = self.down_block_types[level] == DownBlockType::CrossAttnDownBlock2D;
            let up = self.up_block_types[levels - 1 - level] == UpBlockType::CrossAttnUpBlock2D;
            if down != up {
                return Err(format!(
                    "down_block_types[{level}] is {:?} but its mirror up_block_types[{}] is {:?}: \
                     lorafuse builds UNets whose up path mirrors the down path",
                    self.down_block_types[level],
                    levels - 1 - level,
                    self.up_block_types[levels - 1 - level]
                ));
            }
            match self.transformer_layers_per_block.at(level) {
                Some(d) if d > 0 => {}
                depth => {
                    return Err(format!(
                        "transformer_layers_per_block at level {level} is {depth:?}; it needs \
                         one positive depth per level (SD1.x: 1, SDXL: [1, 2, 10])"
                    ))
                }
            }
            let c = self.block_out_channels[level];
            if self.norm_num_groups == 0 || !c.is_multiple_of(self.norm_num_groups) {
                return Err(format!(
                    "block_out_channels[{level}] = {c} is not divisible by norm_num_groups = {}",
                    self.norm_num_groups
                ));
            }
            if self.head_dim(level).is_none() {
                return Err(format!(
                    "block_out_channels[{level}] = {c} is not divisible by the number of heads \
                     ({:?})",
                    self.heads(level)
                ));
            }
        }
        Ok(())
    }

    /// The number of transformer blocks in each attention of `level` (the mid block's: the
    /// last level's, as diffusers builds it).
    pub fn transformer_depth(&self, level: usize) -> usize {
        self.transformer_layers_per_block.at(level).unwrap_or(1)
    }

    /// SDXL's added embedding, when the config has one: (pooled text width, width of each
    /// size/crop id's sinusoid). `add_embedding.linear_1` reads pooled + 6 · that. None for
    /// SD1.x/SD2.x; an error for any other `addition_embed_type` or inconsistent widths.
    pub fn added_embedding_widths(&self) -> Result<Option<(usize, usize)>, String> {
        match self.addition_embed_type.as_deref() {
            None => Ok(None),
            Some("text_time") => {
                let (Some(time), Some(input)) = (
                    self.addition_time_embed_dim,
                    self.projection_class_embeddings_input_dim,
                ) else {
                    return Err(
                        "addition_embed_type \"text_time\" needs addition_time_embed_dim and \
                         projection_class_embeddings_input_dim (SDXL: 256 and 2816)"
                            .into(),
                    );
                };
                let ids = TIME_IDS * time;
                if time == 0 || input <= ids {
                    return Err(format!(
                        "projection_class_embeddings_input_dim = {input} leaves no room for the \
                         pooled text beside {TIME_IDS} size/crop ids of width \
                         addition_time_embed_dim = {time}"
                    ));
                }
                Ok(Some((input - ids, time)))
            }
            Some(other) => Err(format!(
                "addition_embed_type is \"{other}\"; lorafuse knows none or SDXL's \"text_time\""
            )),
        }
    }
}

/// SDXL's size and crop conditioning: original height and width, crop top and left, target
/// height and width, each embedded on its own.
pub const TIME_IDS: usize = 6;

impl Default for UnetConfig {
    fn default() -> Self {
        UnetConfig::sd15()
    }
}

/// The VAE's down blocks (the only kind AutoencoderKL uses).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum VaeDownBlockType {
    DownEncoderBlock2D,
}

/// The VAE's up blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum VaeUpBlockType {
    UpDecoderBlock2D,
}

/// `AutoencoderKL`'s configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct VaeConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub down_block_types: Vec<VaeDownBlockType>,
    pub up_block_types: Vec<VaeUpBlockType>,
    /// Encoder order; the decoder runs them reversed.
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    pub act_fn: Activation,
    pub latent_channels: usize,
    pub norm_num_groups: usize,
    pub sample_size: usize,
    /// Latents are `scaling_factor · z` for the UNet (SD1.x: 0.18215; older configs omit it).
    pub scaling_factor: f64,
}

impl VaeConfig {
    /// Stable Diffusion 1.5's VAE (`vae/config.json`, scaling factor from the LDM config).
    pub fn sd15() -> VaeConfig {
        VaeConfig {
            in_channels: 3,
            out_channels: 3,
            down_block_types: vec![VaeDownBlockType::DownEncoderBlock2D; 4],
            up_block_types: vec![VaeUpBlockType::UpDecoderBlock2D; 4],
            block_out_channels: vec![128, 256, 512, 512],
            layers_per_block: 2,
            act_fn: Activation::Silu,
            latent_channels: 4,
            norm_num_groups: 32,
            sample_size: 512,
            scaling_factor: 0.18215,
        }
    }

    /// SDXL's VAE: SD1.5's architecture, latents scaled by 0.13025. (Its f16 overflow is a
    /// property of the weights, not of the configuration.)
    pub fn sdxl() -> VaeConfig {
        VaeConfig {
            sample_size: 1024,
            scaling_factor: 0.13025,
            ..VaeConfig::sd15()
        }
    }

    /// The GroupNorm epsilon of every VAE norm. Not a config field: diffusers' Encoder and
    /// Decoder hard-code 1e-6 (LDM's `Normalize` does the same).
    pub fn norm_eps(&self) -> f64 {
        1e-6
    }

    /// Checks consistency, as [`UnetConfig::validate`].
    pub fn validate(&self) -> Result<(), String> {
        check_levels(
            self.block_out_channels.len(),
            self.down_block_types.len(),
            self.up_block_types.len(),
        )?;
        if self.layers_per_block == 0 || self.latent_channels == 0 {
            return Err("layers_per_block and latent_channels must be positive".into());
        }
        for (level, &c) in self.block_out_channels.iter().enumerate() {
            if self.norm_num_groups == 0 || c % self.norm_num_groups != 0 {
                return Err(format!(
                    "block_out_channels[{level}] = {c} is not divisible by norm_num_groups = {}",
                    self.norm_num_groups
                ));
            }
        }
        Ok(())
    }
}

impl Default for VaeConfig {
    fn default() -> Self {
        VaeConfig::sd15()
    }
}

/// CLIP's MLP activation. SD1.x's ViT-L/14 text encoder uses quick_gelu (x·σ(1.702x)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HiddenAct {
    QuickGelu,
    Gelu,
}

/// `CLIPTextModel`'s configuration (transformers' `CLIPTextConfig`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClipTextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    pub layer_norm_eps: f64,
    pub hidden_act: HiddenAct,
    /// The output width of CLIPTextModelWithProjection's `text_projection` (transformers'
    /// `projection_dim`), where the model has one: SDXL's second encoder, whose pooled output
    /// goes through it. None for a CLIPTextModel (SD1.x, SD2.x, SDXL's first encoder). Not
    /// read from a config.json (every CLIPTextConfig says a `projection_dim`, with or without
    /// the layer): the loaders set it from the `text_projection` weight.
    pub text_projection: Option<usize>,
}

impl ClipTextConfig {
    /// SD1.x's text encoder: OpenAI CLIP ViT-L/14's text tower.
    pub fn sd15() -> ClipTextConfig {
        ClipTextConfig {
            vocab_size: 49408,
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            max_position_embeddings: 77,
            layer_norm_eps: 1e-5,
            hidden_act: HiddenAct::QuickGelu,
            text_projection: None,
        }
    }

    /// SD2.x's text encoder: OpenCLIP ViT-H/14's text tower without its last layer, as
    /// diffusers' SD2 `text_encoder/config.json` has it (23 layers, GELU).
    pub fn sd2() -> ClipTextConfig {
        ClipTextConfig {
            hidden_size: 1024,
            intermediate_size: 4096,
            num_hidden_layers: 23,
            num_attention_heads: 16,
            hidden_act: HiddenAct::Gelu,
            ..ClipTextConfig::sd15()
        }
    }

    /// SDXL's first text encoder: OpenAI CLIP ViT-L/14's text tower, SD1.x's (SDXL reads its
    /// penultimate layer).
    pub fn sdxl_te1() -> ClipTextConfig {
        ClipTextConfig::sd15()
    }

    /// SDXL's second text encoder: OpenCLIP ViT-bigG/14's text tower, all 32 layers (the
    /// context is the penultimate layer's output, the pooled output goes through the last
    /// layer, final_layer_norm and the 1280-wide text_projection).
    pub fn sdxl_te2() -> ClipTextConfig {
        ClipTextConfig {
            hidden_size: 1280,
            intermediate_size: 5120,
            num_hidden_layers: 32,
            num_attention_heads: 20,
            hidden_act: HiddenAct::Gelu,
            text_projection: Some(1280),
            ..ClipTextConfig::sd15()
        }
    }

    /// Width of one attention head (64 for SD1.x).
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads.max(1)
    }

    /// Checks consistency, as [`UnetConfig::validate`].
    pub fn validate(&self) -> Result<(), String> {
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return Err(format!(
                "hidden_size = {} is not divisible by num_attention_heads = {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.num_hidden_layers == 0 || self.vocab_size == 0 || self.intermediate_size == 0 {
            return Err(
                "num_hidden_layers, vocab_size and intermediate_size must be positive".into(),
            );
        }
        if self.text_projection == Some(0) {
            return Err("text_projection must be positive where there is one".into());
        }
        Ok(())
    }
}

impl Default for ClipTextConfig {
    fn default() -> Self {
        ClipTextConfig::sd15()
    }
}

/// The level lists of a UNet or VAE config agree and are not empty; returns the level count.
fn check_levels(levels: usize, down: usize, up: usize) -> Result<usize, String> {
    if levels == 0 {
        return Err("block_out_channels is empty".into());
    }
    if down != levels || up != levels {
        return Err(format!(
            "block_out_channels has {levels} levels but down_block_types has {down} and \
             up_block_types {up}"
        ));
    }
    Ok(levels)
}

/// A model's `validate()` result as the crate's error: `model` names the model ("unet"),
/// `what` the configuration expected.
pub fn checked(result: Result<(), String>, model: &'static str, what: &str) -> crate::Result<()> {
    result.map_err(|why| crate::Error::BadValue {
        op: model,
        name: "config",
        value: why,
        expected: what.to_string(),
    })
}
