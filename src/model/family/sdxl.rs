//! SDXL 1.0 base: a three-level UNet (no attention at the first level; 1, 2 and 10
//! transformer blocks per attention at 320/640/1280 channels, heads of width 64) whose
//! cross-attention reads both text encoders' penultimate states side by side (768 + 1280 =
//! 2048 wide), and whose time embedding also takes the second encoder's pooled, projected text
//! and each sample's size/crop ids (`data::SizeCond`, `model::unet::added`); CLIP ViT-L/14
//! (`te1`) and OpenCLIP ViT-bigG/14 (`te2`, padding with `!`); SD1.x's VAE architecture with
//! latents scaled by 0.13025; SD1.x's noise schedule, ε-prediction, 1024 px.
//! Checkpoints: an SGM single file or a diffusers folder (`model::checkpoint::sdxl`).

use super::{ModelFamily, Models, Prediction, TextEncoders, WeightsFrom};
use crate::backend::Backend;
use crate::error::Result;
use crate::model::checkpoint::sdxl::load_sdxl;
use crate::model::checkpoint::{Family, Generation};
use crate::model::config::{ClipTextConfig, UnetConfig, VaeConfig};
use crate::model::sdxl_text::SdxlText;
use crate::model::unet::Unet;
use crate::model::vae::Vae;
use crate::model::weights::{ShapeOnly, WeightSource};
use crate::sample::schedule::NoiseSchedule;
use crate::tensor::DType;

/// The SDXL family.
pub struct Sdxl;

impl ModelFamily for Sdxl {
    fn id(&self) -> &'static str {
        "sdxl"
    }
    fn display_name(&self) -> &'static str {
        "SDXL"
    }
    fn default_resolution(&self) -> usize {
        1024
    }
    fn prediction(&self) -> Prediction {
        Prediction::Epsilon
    }
    fn noise_schedule(&self) -> NoiseSchedule {
        NoiseSchedule::sd15()
    }
    fn accepts(&self, detected: &Family) -> bool {
        matches!(detected, Family::Sdxl { .. })
    }
    fn generation(&self) -> Generation {
        Generation::Sdxl
    }
    /// The first encoder's padding (`<|endoftext|>`); the second's (`!`, 0) is made from it
    /// inside [`SdxlText`].
    fn pad_token(&self) -> u32 {
        crate::model::tokenizer::EOS
    }

    /// SDXL 1.0's VAE (and its 0.9 VAE) overflow in f16: their activations outgrow 65504.
    fn vae_overflows_in_f16(&self) -> bool {
        true
    }

    fn load_with(
        &'static self,
        from: WeightsFrom<'_>,
        be: &dyn Backend,
        vae: DType,
        loaded: &mut dyn FnMut(&'static str),
    ) -> Result<Models> {
        let be = (be, vae);
        match from {
            WeightsFrom::Checkpoint(path) => {
                let ck = load_sdxl(path)?;
                let parts = Parts {
                    unet: (&ck.unet.0, &ck.unet.1),
                    vae: (&ck.vae.0, &ck.vae.1),
                    te1: (&ck.text_encoder.0, &ck.text_encoder.1),
                    te2: (&ck.text_encoder_2.0, &ck.text_encoder_2.1),
                };
                let mut m = self.build(parts, be, loaded)?;
                if let Some(p) = ck.prediction {
                    m.prediction = p;
                    m.prediction_from_checkpoint = true;
                }
                Ok(m)
            }
            WeightsFrom::Shapes(Some(path)) if path.exists() => {
                let ck = load_sdxl(path)?;
                let parts = Parts {
                    unet: (&ck.unet.0, &ShapeOnly),
                    vae: (&ck.vae.0, &ShapeOnly),
                    te1: (&ck.text_encoder.0, &ShapeOnly),
                    te2: (&ck.text_encoder_2.0, &ShapeOnly),
                };
                self.build(parts, be, loaded)
            }
            WeightsFrom::Shapes(_) | WeightsFrom::Reference(_) => {
                let (unet, vae) = (UnetConfig::sdxl(), VaeConfig::sdxl());
                let (te1, te2) = (ClipTextConfig::sdxl_te1(), ClipTextConfig::sdxl_te2());
                let parts = Parts {
                    unet: (&unet, &ShapeOnly),
                    vae: (&vae, &ShapeOnly),
                    te1: (&te1, &ShapeOnly),
                    te2: (&te2, &ShapeOnly),
                };
                self.build(parts, be, loaded)
            }
        }
    }
}

/// Each network's configuration and weights.
struct Parts<'a> {
    unet: (&'a UnetConfig, &'a dyn WeightSource),
    vae: (&'a VaeConfig, &'a dyn WeightSource),
    te1: (&'a ClipTextConfig, &'a dyn WeightSource),
    te2: (&'a ClipTextConfig, &'a dyn WeightSource),
}

impl Sdxl {
    fn build(
        &'static self,
        p: Parts<'_>,
        (be, vae_dtype): (&dyn Backend, DType),
        loaded: &mut dyn FnMut(&'static str),
    ) -> Result<Models> {
        let unet = Unet::load(p.unet.0, p.unet.1, be, "unet")?;
        loaded("unet");
        let vae = Vae::load_in(p.vae.0, p.vae.1, be, "vae", vae_dtype)?;
        loaded("vae");
        let text = SdxlText::load(p.te1, p.te2, be)?;
        loaded("text_encoder");
        check_widths(&unet, &text)?;
        Ok(Models {
            family: self,
            unet,
            vae: Some(vae),
            text: Some(TextEncoders::Sdxl(Box::new(text))),
            prediction: Prediction::Epsilon,
            prediction_from_checkpoint: false,
        })
    }
}

/// The UNet reads what the encoders give: the context's width, and the pooled text's.
fn check_widths(unet: &Unet, text: &SdxlText) -> Result<()> {
    let pooled = unet
        .config
        .added_embedding_widths()
        .ok()
        .flatten()
        .map(|w| w.0);
    let (context, want_pooled) = (text.context_width(), text.pooled_width());
    if unet.config.cross_attention_dim == context && pooled == Some(want_pooled) {
        return Ok(());
    }
    Err(crate::error::Error::BadValue {
        op: "models",
        name: "text encoders",
        value: format!("context {context} wide, pooled text {want_pooled} wide"),
        expected: format!(
            "what the UNet reads: cross-attention {} wide, pooled text {:?} wide (the UNet and \
             the text encoders are not of one SDXL model)",
            unet.config.cross_attention_dim, pooled
        ),
    })
}
