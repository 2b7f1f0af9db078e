//! The model-family seam: what differs between Stable Diffusion generations, in one place.
//!
//! A [`ModelFamily`] says which networks a model has and how a checkpoint maps onto them,
//! how captions become the UNet's conditioning, what the denoiser predicts, its noise schedule
//! and its default resolution. [`Models`] is a loaded model of a family, as the trainer,
//! `plan`, `sample` and `merge` hold it.
//!
//! A new family (SD2.x, SDXL) is a new file here implementing [`ModelFamily`] and one entry in
//! [`FAMILIES`]; detection (`model::checkpoint::detect`) names it, and everything that loads a
//! model goes through [`family_of`].
//!
//! - `sd1.rs`: Stable Diffusion 1.x (CLIP ViT-L/14 text encoder, ε-prediction, 512 px).

pub mod sd1;

use std::path::Path;

use crate::backend::Backend;
use crate::error::Result;
use crate::lora::{LoraGrads, LoraTargets, TargetLayer};
use crate::model::checkpoint::{CheckpointError, Family};
use crate::model::clip::{ClipTape, ClipTextModel};
use crate::model::layers::Ctx;
use crate::model::unet::Unet;
use crate::model::vae::Vae;
use crate::sample::schedule::NoiseSchedule;
use crate::tensor::Tensor;

/// What the denoiser is trained to predict from x_t.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prediction {
    /// The added noise ε (SD1.x, SD2.x base 512).
    Epsilon,
}

/// Where a model's weights come from.
#[derive(Clone, Copy, Debug)]
pub enum WeightsFrom<'a> {
    /// A checkpoint: a single file or a diffusers folder.
    Checkpoint(&'a Path),
    /// Shapes only (the memory meter): the configurations of this checkpoint when it can be
    /// read, else the family's reference model; every tensor is zeros from the backend.
    Shapes(Option<&'a Path>),
}

/// A Stable Diffusion generation.
pub trait ModelFamily: Sync {
    /// Short id ("sd1"), as metadata and messages name it.
    fn id(&self) -> &'static str;
    /// Its name in messages ("Stable Diffusion 1.x").
    fn display_name(&self) -> &'static str;
    /// The square side it was trained at, in pixels.
    fn default_resolution(&self) -> usize;
    fn prediction(&self) -> Prediction;
    /// The training noise schedule.
    fn noise_schedule(&self) -> NoiseSchedule;
    /// Whether a detected single-file checkpoint is of this family.
    fn accepts(&self, detected: &Family) -> bool;
    /// Loads the networks onto `be`, calling `loaded` with each network's name ("unet",
    /// "vae", "text_encoder") once it is on the device (`plan` measures each one so).
    fn load(
        &'static self,
        from: WeightsFrom<'_>,
        be: &dyn Backend,
        loaded: &mut dyn FnMut(&'static str),
    ) -> Result<Models>;
}

/// Every family lorafuse trains, in detection order.
pub const FAMILIES: &[&dyn ModelFamily] = &[&sd1::Sd1];

/// The family of the checkpoint at `path` (a diffusers folder is read as SD1.x's layout, the
/// only one whose folder loader exists), or a refusal naming what was found.
pub fn family_of(path: &Path) -> Result<&'static dyn ModelFamily> {
    if path.is_dir() {
        return Ok(&sd1::Sd1);
    }
    let detected = crate::model::checkpoint::detect_family(path)?;
    FAMILIES
        .iter()
        .copied()
        .find(|f| f.accepts(&detected))
        .ok_or_else(|| {
            let path = path.to_path_buf();
            match detected {
                Family::Sd2 { evidence } => CheckpointError::UnsupportedModel {
                    path,
                    family: "SD2.x",
                    evidence,
                },
                Family::Sdxl { evidence } => CheckpointError::UnsupportedModel {
                    path,
                    family: "SDXL",
                    evidence,
                },
                Family::Sd1 | Family::Other { .. } => CheckpointError::NotAModel {
                    path,
                    detail: match detected {
                        Family::Other { detail } => detail,
                        _ => "no family accepts it".into(),
                    },
                },
            }
            .into()
        })
}

/// A loaded model: the denoiser, the VAE and the text conditioning, any of the last two
/// released once training no longer needs them.
pub struct Models {
    pub family: &'static dyn ModelFamily,
    pub unet: Unet,
    pub vae: Option<Vae>,
    pub text: Option<ClipTextModel>,
}

/// What the text conditioning's training forward saves for its backward.
pub struct TextTape(ClipTape);

impl Models {
    /// The layers that can carry adapters: the UNet's `targets`, then with `text` the text
    /// encoder's (when it is still loaded). Returns the layers and how many are the UNet's.
    pub fn adapter_targets(&self, targets: LoraTargets, text: bool) -> (Vec<TargetLayer>, usize) {
        let mut layers = self.unet.lora_targets(targets);
        let n_unet = layers.len();
        if text {
            if let Some(te) = &self.text {
                layers.extend(te.lora_targets());
            }
        }
        (layers, n_unet)
    }

    /// The UNet's conditioning for `batch` captions of token ids, [batch, tokens, width].
    pub fn encode_text(
        &self,
        cx: &Ctx,
        ids: &[u32],
        batch: usize,
        clip_skip: usize,
    ) -> Result<Tensor> {
        Ok(self.encode_text_train(cx, ids, batch, clip_skip, false)?.0)
    }

    /// [`Models::encode_text`], and with `save` the tape of its adapters' backward.
    pub fn encode_text_train(
        &self,
        cx: &Ctx,
        ids: &[u32],
        batch: usize,
        clip_skip: usize,
        save: bool,
    ) -> Result<(Tensor, Option<TextTape>)> {
        let te = self.text_encoder("encode captions")?;
        let (c, tape) = te.forward_train(cx, ids, batch, clip_skip, save)?;
        Ok((c, tape.map(TextTape)))
    }

    /// The text adapters' gradients from d loss / d conditioning.
    pub fn text_backward(
        &self,
        cx: &Ctx,
        d_context: &Tensor,
        tape: TextTape,
        grads: &mut LoraGrads,
    ) -> Result<()> {
        self.text_encoder("train its adapters")?
            .backward(cx, d_context, tape.0, grads)
    }

    /// The VAE and the text encoder, which sampling needs (an error once released).
    pub fn sampling_parts(&self) -> Result<(&Vae, &ClipTextModel)> {
        let vae = self
            .vae
            .as_ref()
            .ok_or_else(|| crate::error::Error::BadValue {
                op: "models",
                name: "vae",
                value: "released".into(),
                expected: "a loaded VAE to decode samples".into(),
            })?;
        Ok((vae, self.text_encoder("encode prompts")?))
    }

    /// The conditioning's width (the UNet's cross-attention input).
    pub fn context_width(&self) -> usize {
        self.unet.config.cross_attention_dim
    }

    fn text_encoder(&self, to: &str) -> Result<&ClipTextModel> {
        self.text
            .as_ref()
            .ok_or_else(|| crate::error::Error::BadValue {
                op: "models",
                name: "text_encoder",
                value: "released".into(),
                expected: format!("a loaded text encoder to {to}"),
            })
    }
}
