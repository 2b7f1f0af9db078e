//! Stable Diffusion 2.x: UNet with Linear proj_in/proj_out, heads of width 64 (5, 10, 20, 20
//! per level) and 1024-wide cross-attention; OpenCLIP ViT-H/14 text encoder (GELU, 1024 wide,
//! the penultimate of its 24 layers through the final LayerNorm: diffusers' 23-layer
//! `text_encoder`), its tokenizer padding with `!` (id 0); SD1.x's VAE and noise schedule.
//! Two kinds share the architecture: the 512 base predicts ε, the 768 model v. A single file
//! does not say which: kohya's `v_parameterization` key does (a diffusers folder's scheduler
//! config says it too, and must agree). Checkpoints: a single LDM file (OpenCLIP's layout) or
//! a diffusers folder (`model::checkpoint::load_sd15`).

use super::{load_ldm, ModelFamily, Models, Prediction, ReferenceConfigs, WeightsFrom};
use crate::backend::Backend;
use crate::error::Result;
use crate::model::checkpoint::{Family, Generation};
use crate::model::config::{ClipTextConfig, UnetConfig, VaeConfig};
use crate::sample::schedule::NoiseSchedule;
use crate::tensor::DType;

/// The SD2.x family.
pub struct Sd2;

impl ModelFamily for Sd2 {
    fn id(&self) -> &'static str {
        "sd2"
    }
    fn display_name(&self) -> &'static str {
        "Stable Diffusion 2.x"
    }
    fn default_resolution(&self) -> usize {
        512
    }
    fn prediction(&self) -> Prediction {
        Prediction::Epsilon
    }
    fn noise_schedule(&self) -> NoiseSchedule {
        NoiseSchedule::sd15()
    }
    fn accepts(&self, detected: &Family) -> bool {
        matches!(detected, Family::Sd2 { .. })
    }
    fn generation(&self) -> Generation {
        Generation::Sd2
    }
    fn pad_token(&self) -> u32 {
        0
    }

    fn load_with(
        &'static self,
        from: WeightsFrom<'_>,
        be: &dyn Backend,
        vae: DType,
        loaded: &mut dyn FnMut(&'static str),
    ) -> Result<Models> {
        load_ldm(self, reference, from, (be, vae), loaded)
    }
}

/// SD2.1 768-v's configurations (`stabilityai/stable-diffusion-2-1`).
fn reference() -> ReferenceConfigs {
    ReferenceConfigs {
        unet: UnetConfig::sd2(),
        vae: VaeConfig::sd15(),
        text: ClipTextConfig::sd2(),
    }
}
