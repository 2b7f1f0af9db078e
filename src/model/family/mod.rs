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
//! - `sd2.rs`: Stable Diffusion 2.x (OpenCLIP ViT-H/14, 512 ε or 768 v-prediction).
//! - `sdxl.rs`: SDXL 1.0 base (CLIP ViT-L/14 and OpenCLIP ViT-bigG/14, size/crop ids, 1024 px).

pub mod sd1;
pub mod sd2;
pub mod sdxl;

use std::path::Path;

use crate::backend::Backend;
use crate::error::Result;
use crate::lora::{LoraGrads, LoraTargets, TargetLayer};
use crate::model::checkpoint::{load_sd15, CheckpointError, Family, Generation};
use crate::model::clip::{ClipTape, ClipTextModel};
use crate::model::cond::{TextCond, TextCondGrad};
use crate::model::config::{ClipTextConfig, UnetConfig, VaeConfig};
use crate::model::layers::Ctx;
use crate::model::sdxl_text::{SdxlText, SdxlTextTape};
use crate::model::unet::Unet;
use crate::model::vae::Vae;
use crate::model::weights::{ShapeOnly, WeightSource};
use crate::sample::schedule::NoiseSchedule;
use crate::tensor::{DType, Tensor};

/// What the denoiser is trained to predict from x_t.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prediction {
    /// The added noise ε (SD1.x, SD2.x base 512).
    Epsilon,
    /// v = √ᾱ_t·ε − √(1−ᾱ_t)·x₀ (SD2.x 768-v; kohya's `v_parameterization`).
    V,
}

/// Where a model's weights come from.
#[derive(Clone, Copy, Debug)]
pub enum WeightsFrom<'a> {
    /// A checkpoint: a single file or a diffusers folder.
    Checkpoint(&'a Path),
    /// Shapes only (the memory meter): the configurations of this checkpoint when it can be
    /// read, else the family's reference model; every tensor is zeros from the backend.
    Shapes(Option<&'a Path>),
    /// Shapes only, of this family's reference model (SD1.5, SD2.1 768-v).
    Reference(&'static dyn ModelFamily),
}

/// A Stable Diffusion generation.
pub trait ModelFamily: Sync {
    /// Short id ("sd1"), as metadata and messages name it.
    fn id(&self) -> &'static str;
    /// Its name in messages ("Stable Diffusion 1.x").
    fn display_name(&self) -> &'static str;
    /// The generation of the checkpoints it loads.
    fn generation(&self) -> Generation;
    /// The id that pads a caption's token ids after its EOS: SD1.x's tokenizer pads with
    /// `<|endoftext|>` (49407), SD2.x's with `!` (0), as OpenCLIP does.
    fn pad_token(&self) -> u32;
    /// The square side training defaults to when `resolution` is unset, in pixels: the size
    /// the family was trained at (SD2.x's 512 base; its 768-v model needs `resolution: 768`,
    /// as a single file does not say which it is).
    fn default_resolution(&self) -> usize;
    /// What its models predict when the checkpoint does not say (a single file never does).
    fn prediction(&self) -> Prediction;
    /// The training noise schedule.
    fn noise_schedule(&self) -> NoiseSchedule;
    /// Whether a detected single-file checkpoint is of this family.
    fn accepts(&self, detected: &Family) -> bool;
    /// Whether its VAE's activations overflow f16 (SDXL 1.0's), so that the VAE computes in
    /// f32 beside an f16 backend unless `no_half_vae` says otherwise ([`vae_dtype`]).
    fn vae_overflows_in_f16(&self) -> bool {
        false
    }
    /// Loads the networks onto `be`, the VAE in `vae` (`be`'s dtype, or f32 beside f16),
    /// calling `loaded` with each network's name ("unet", "vae", "text_encoder") once it is on
    /// the device (`plan` measures each one so).
    fn load_with(
        &'static self,
        from: WeightsFrom<'_>,
        be: &dyn Backend,
        vae: DType,
        loaded: &mut dyn FnMut(&'static str),
    ) -> Result<Models>;
    /// [`ModelFamily::load_with`], the VAE in `be`'s dtype.
    fn load(
        &'static self,
        from: WeightsFrom<'_>,
        be: &dyn Backend,
        loaded: &mut dyn FnMut(&'static str),
    ) -> Result<Models> {
        self.load_with(from, be, be.compute_dtype(), loaded)
    }
}

/// The dtype `family`'s VAE computes in on `be`: f32 where `be` computes in f16 and
/// `no_half_vae` is true or, left unset, the family's VAE overflows in f16 (SDXL); else `be`'s
/// own (the CPU always computes in f32).
pub fn vae_dtype(family: &dyn ModelFamily, be: &dyn Backend, no_half_vae: Option<bool>) -> DType {
    let own = be.compute_dtype();
    let upcast = no_half_vae.unwrap_or_else(|| family.vae_overflows_in_f16());
    if upcast && own == DType::F16 {
        DType::F32
    } else {
        own
    }
}

impl std::fmt::Debug for dyn ModelFamily {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.id())
    }
}

/// The family whose [`ModelFamily::id`] is `id` ("sd1", "sd2", "sdxl").
pub fn family_by_id(id: &str) -> Option<&'static dyn ModelFamily> {
    FAMILIES.iter().copied().find(|f| f.id() == id)
}

/// Every family lorafuse trains, in detection order.
pub const FAMILIES: &[&dyn ModelFamily] = &[&sd1::Sd1, &sd2::Sd2, &sdxl::Sdxl];

/// The family of the checkpoint at `path` (a diffusers folder by its configs, a single file by
/// its keys and shapes), or a refusal naming what was found.
pub fn family_of(path: &Path) -> Result<&'static dyn ModelFamily> {
    if path.is_dir() {
        if crate::model::checkpoint::sdxl::folder_is_sdxl(path)? {
            return Ok(&sdxl::Sdxl);
        }
        let generation = load_sd15(path)?.generation;
        return Ok(FAMILIES
            .iter()
            .copied()
            .find(|f| f.generation() == generation)
            .unwrap_or(&sd1::Sd1));
    }
    let detected = crate::model::checkpoint::detect_family(path)?;
    FAMILIES
        .iter()
        .copied()
        .find(|f| f.accepts(&detected))
        .ok_or_else(|| {
            let path = path.to_path_buf();
            match detected {
                Family::Unsupported { family, evidence } => CheckpointError::UnsupportedModel {
                    path,
                    family,
                    evidence,
                    takes: crate::model::checkpoint::error::TRAINS,
                },
                Family::Sd1 | Family::Sd2 { .. } | Family::Sdxl { .. } | Family::Other { .. } => {
                    CheckpointError::NotAModel {
                        path,
                        detail: match detected {
                            Family::Other { detail } => detail,
                            _ => "no family accepts it".into(),
                        },
                    }
                }
            }
            .into()
        })
}

/// The reference configurations of a family, for `plan` without a checkpoint.
pub struct ReferenceConfigs {
    pub unet: UnetConfig,
    pub vae: VaeConfig,
    pub text: ClipTextConfig,
}

/// Loads an SD1.x or SD2.x model (the two share the checkpoint loader): the checkpoint at
/// `from`, refused when it is of another generation than `family`'s, or shapes only.
pub(crate) fn load_ldm(
    family: &'static dyn ModelFamily,
    reference: fn() -> ReferenceConfigs,
    from: WeightsFrom<'_>,
    be: (&dyn Backend, DType),
    loaded: &mut dyn FnMut(&'static str),
) -> Result<Models> {
    match from {
        WeightsFrom::Checkpoint(path) => {
            let ck = load_sd15(path)?;
            if ck.generation != family.generation() {
                return Err(crate::error::Error::BadValue {
                    op: "models",
                    name: "checkpoint",
                    value: format!("{} ({:?})", path.display(), ck.generation),
                    expected: format!("a {} checkpoint", family.display_name()),
                });
            }
            let prediction = ck.prediction.unwrap_or(family.prediction());
            let mut m = build(
                family,
                (&ck.unet.0, &ck.unet.1),
                (&ck.vae.0, &ck.vae.1),
                (&ck.text_encoder.0, &ck.text_encoder.1),
                be,
                loaded,
            )?;
            m.prediction = prediction;
            m.prediction_from_checkpoint = ck.prediction.is_some();
            Ok(m)
        }
        WeightsFrom::Reference(_) | WeightsFrom::Shapes(_) => {
            let on_disk = match from {
                WeightsFrom::Shapes(path) => path.filter(|p| p.exists()),
                _ => None,
            };
            let c = match on_disk {
                Some(p) => {
                    let ck = load_sd15(p)?;
                    ReferenceConfigs {
                        unet: ck.unet.0,
                        vae: ck.vae.0,
                        text: ck.text_encoder.0,
                    }
                }
                None => reference(),
            };
            build(
                family,
                (&c.unet, &ShapeOnly),
                (&c.vae, &ShapeOnly),
                (&c.text, &ShapeOnly),
                be,
                loaded,
            )
        }
    }
}

fn build(
    family: &'static dyn ModelFamily,
    unet: (&UnetConfig, &dyn WeightSource),
    vae: (&VaeConfig, &dyn WeightSource),
    text: (&ClipTextConfig, &dyn WeightSource),
    (be, vae_dtype): (&dyn Backend, DType),
    loaded: &mut dyn FnMut(&'static str),
) -> Result<Models> {
    let u = Unet::load(unet.0, unet.1, be, "unet")?;
    loaded("unet");
    let v = Vae::load_in(vae.0, vae.1, be, "vae", vae_dtype)?;
    loaded("vae");
    let t = ClipTextModel::load(text.0, text.1, be, "text_encoder")?;
    loaded("text_encoder");
    Ok(Models {
        family,
        unet: u,
        vae: Some(v),
        text: Some(TextEncoders::Clip(Box::new(t))),
        prediction: family.prediction(),
        prediction_from_checkpoint: false,
    })
}

/// A loaded model: the denoiser, the VAE and the text conditioning, any of the last two
/// released once training no longer needs them.
pub struct Models {
    pub family: &'static dyn ModelFamily,
    pub unet: Unet,
    pub vae: Option<Vae>,
    pub text: Option<TextEncoders>,
    /// What the denoiser predicts: the checkpoint's word where it has one, else the family's.
    pub prediction: Prediction,
    /// Whether `prediction` is the checkpoint's word (a diffusers folder's scheduler config).
    pub prediction_from_checkpoint: bool,
}

/// A family's text encoder(s), frozen; adapters come with the [`Ctx`].
pub enum TextEncoders {
    /// One CLIP text model: SD1.x's ViT-L/14, SD2.x's OpenCLIP ViT-H/14.
    Clip(Box<ClipTextModel>),
    /// SDXL's two (`clip_skip` does not apply: SDXL reads both encoders' penultimate layers).
    Sdxl(Box<SdxlText>),
}

/// What the text conditioning's training forward saves for its backward.
pub enum TextTape {
    Clip(Box<ClipTape>),
    Sdxl(Box<SdxlTextTape>),
}

impl TextEncoders {
    /// The conditioning of `batch` captions of token ids, and with `save` the tape of the
    /// adapters' backward.
    pub fn forward_train(
        &self,
        cx: &Ctx,
        ids: &[u32],
        batch: usize,
        clip_skip: usize,
        save: bool,
    ) -> Result<(TextCond, Option<TextTape>)> {
        match self {
            TextEncoders::Clip(te) => {
                let (context, tape) = te.forward_train(cx, ids, batch, clip_skip, save)?;
                let text = TextCond {
                    context,
                    pooled: None,
                };
                Ok((text, tape.map(|t| TextTape::Clip(Box::new(t)))))
            }
            TextEncoders::Sdxl(te) => {
                let (c, tape) = te.forward_train(cx, ids, batch, save)?;
                let text = TextCond {
                    context: c.context,
                    pooled: Some(c.pooled),
                };
                Ok((text, tape.map(|t| TextTape::Sdxl(Box::new(t)))))
            }
        }
    }

    /// The adapters' gradients from d loss / d conditioning.
    pub fn backward(
        &self,
        cx: &Ctx,
        d: &TextCondGrad,
        tape: TextTape,
        grads: &mut LoraGrads,
    ) -> Result<()> {
        match (self, tape) {
            (TextEncoders::Clip(te), TextTape::Clip(t)) => te.backward(cx, &d.context, *t, grads),
            (TextEncoders::Sdxl(te), TextTape::Sdxl(t)) => {
                te.backward(cx, &d.context, d.pooled.as_ref(), *t, grads)
            }
            _ => Err(crate::error::Error::BadValue {
                op: "text backward",
                name: "tape",
                value: "another model's tape".into(),
                expected: "the tape of this model's text forward".into(),
            }),
        }
    }

    /// The layers that can carry adapters, kohya-named.
    pub fn lora_targets(&self) -> Vec<TargetLayer> {
        match self {
            TextEncoders::Clip(te) => te.lora_targets(),
            TextEncoders::Sdxl(te) => te.lora_targets(),
        }
    }

    /// Every adaptable layer's frozen weight by kohya name.
    pub fn adaptable_weights(&self) -> Vec<(&str, &Tensor)> {
        match self {
            TextEncoders::Clip(te) => te.adaptable_weights(),
            TextEncoders::Sdxl(te) => te.adaptable_weights(),
        }
    }

    /// The token ids the encoder(s) take are below this.
    pub fn vocab_size(&self) -> usize {
        match self {
            TextEncoders::Clip(te) => te.config.vocab_size,
            TextEncoders::Sdxl(te) => te.te1.config.vocab_size,
        }
    }

    /// Tokens per window (77).
    pub fn positions(&self) -> usize {
        match self {
            TextEncoders::Clip(te) => te.config.max_position_embeddings,
            TextEncoders::Sdxl(te) => te.te1.config.max_position_embeddings,
        }
    }
}

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

    /// The frozen weight of the UNet's or the text encoder's layer of kohya name `name`.
    pub fn adaptable_weight(&self, name: &str) -> Option<&Tensor> {
        let text = self.text.iter().flat_map(|t| t.adaptable_weights());
        let mut all = self.unet.adaptable_weights().into_iter().chain(text);
        all.find(|(n, _)| *n == name).map(|(_, w)| w)
    }

    /// The text conditioning of `batch` captions of token ids (context [batch, tokens, width]).
    pub fn encode_text(
        &self,
        cx: &Ctx,
        ids: &[u32],
        batch: usize,
        clip_skip: usize,
    ) -> Result<TextCond> {
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
    ) -> Result<(TextCond, Option<TextTape>)> {
        self.text_encoder("encode captions")?
            .forward_train(cx, ids, batch, clip_skip, save)
    }

    /// The text adapters' gradients from d loss / d conditioning.
    pub fn text_backward(
        &self,
        cx: &Ctx,
        d: &TextCondGrad,
        tape: TextTape,
        grads: &mut LoraGrads,
    ) -> Result<()> {
        self.text_encoder("train its adapters")?
            .backward(cx, d, tape, grads)
    }

    /// The VAE and the text encoder, which sampling needs (an error once released).
    pub fn sampling_parts(&self) -> Result<(&Vae, &TextEncoders)> {
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

    fn text_encoder(&self, to: &str) -> Result<&TextEncoders> {
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
