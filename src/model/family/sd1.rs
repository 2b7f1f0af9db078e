//! Stable Diffusion 1.x: UNet with 768-wide cross-attention, CLIP ViT-L/14 text encoder
//! (clip_skip from its last layers), the KL VAE (scale 0.18215), ε-prediction on the
//! scaled-linear schedule (β 0.00085 → 0.012, 1000 steps), trained at 512x512.
//! Checkpoints: a single LDM file or a diffusers folder (`model::checkpoint::load_sd15`).

use super::{ModelFamily, Models, Prediction, WeightsFrom};
use crate::backend::Backend;
use crate::error::Result;
use crate::model::checkpoint::{load_sd15, Family};
use crate::model::clip::ClipTextModel;
use crate::model::config::{ClipTextConfig, UnetConfig, VaeConfig};
use crate::model::unet::Unet;
use crate::model::vae::Vae;
use crate::model::weights::{ShapeOnly, WeightSource};
use crate::sample::schedule::NoiseSchedule;

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

    fn load(
        &'static self,
        from: WeightsFrom<'_>,
        be: &dyn Backend,
        loaded: &mut dyn FnMut(&'static str),
    ) -> Result<Models> {
        match from {
            WeightsFrom::Checkpoint(path) => {
                let ck = load_sd15(path)?;
                self.build(
                    (&ck.unet.0, &ck.unet.1),
                    (&ck.vae.0, &ck.vae.1),
                    (&ck.text_encoder.0, &ck.text_encoder.1),
                    be,
                    loaded,
                )
            }
            WeightsFrom::Shapes(path) => {
                let (u, v, t) = match path.filter(|p| p.exists()) {
                    Some(p) => {
                        let ck = load_sd15(p)?;
                        (ck.unet.0, ck.vae.0, ck.text_encoder.0)
                    }
                    None => (
                        UnetConfig::sd15(),
                        VaeConfig::sd15(),
                        ClipTextConfig::sd15(),
                    ),
                };
                self.build(
                    (&u, &ShapeOnly),
                    (&v, &ShapeOnly),
                    (&t, &ShapeOnly),
                    be,
                    loaded,
                )
            }
        }
    }
}

impl Sd1 {
    fn build(
        &'static self,
        unet: (&UnetConfig, &dyn WeightSource),
        vae: (&VaeConfig, &dyn WeightSource),
        text: (&ClipTextConfig, &dyn WeightSource),
        be: &dyn Backend,
        loaded: &mut dyn FnMut(&'static str),
    ) -> Result<Models> {
        let u = Unet::load(unet.0, unet.1, be, "unet")?;
        loaded("unet");
        let v = Vae::load(vae.0, vae.1, be, "vae")?;
        loaded("vae");
        let t = ClipTextModel::load(text.0, text.1, be, "text_encoder")?;
        loaded("text_encoder");
        Ok(Models {
            family: self,
            unet: u,
            vae: Some(v),
            text: Some(t),
        })
    }
}
