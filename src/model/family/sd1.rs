//! Stable Diffusion 1.x: UNet with 768-wide cross-attention, CLIP ViT-L/14 text encoder
//! (clip_skip from its last layers), the KL VAE (scale 0.18215), ε-prediction on the
//! scaled-linear schedule (β 0.00085 → 0.012, 1000 steps), trained at 512x512.
//! Checkpoints: a single LDM file or a diffusers folder (`model::checkpoint::load_sd15`).

use super::{load_ldm, ModelFamily, Models, Prediction, ReferenceConfigs, WeightsFrom};
use crate::backend::Backend;
use crate::error::Result;
use crate::model::checkpoint::{Family, Generation};
use crate::model::config::{ClipTextConfig, UnetConfig, VaeConfig};
use crate::sample::schedule::NoiseSchedule;
use crate::tensor::DType;

/// The SD1.x family.
pub struct Sd1;

impl ModelFamily for Sd1 {
    fn id(&self) -> &'static str {
        "sd1"
    }
    fn display_name(&self) -> &'static str {
        "Stable Diffusion 1.x"
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
        *detected == Family::Sd1
    }

    fn generation(&self) -> Generation {
        Generation::Sd1
    }
    fn pad_token(&self) -> u32 {
        crate::model::tokenizer::EOS
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

/// SD1.5's configurations.
fn reference() -> ReferenceConfigs {
    ReferenceConfigs {
        unet: UnetConfig::sd15(),
        vae: VaeConfig::sd15(),
        text: ClipTextConfig::sd15(),
    }
}
