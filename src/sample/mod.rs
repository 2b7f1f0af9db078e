//! Image sampling: text-to-image with the frozen SD1.x model and, when the [`Ctx`] carries a
//! [`crate::lora::LoraSet`], its adapters. Used for sample images during training (kohya's
//! `--sample_prompts`) and by `lorafuse sample`.
//!
//! - [`prompt`]: kohya's prompt-line syntax (`a cat --n blurry --w 512 --d 42 --ss euler`).
//! - [`schedule`]: the DDPM training schedule (ᾱ_t, SNR), shared with training.
//! - [`sampler`]: DDIM (η = 0), Euler and Euler ancestral, as diffusers computes them, the
//!   step as a linear map, the sampling loop, and classifier-free guidance; [`dpm`]:
//!   DPM-Solver (++) 2M, with Karras σ.
//! - [`image`]: 8-bit RGB images and PNG writing.
//!
//! [`generate`] does what diffusers' StableDiffusionPipeline does:
//!   1. text embeddings of the negative prompt and the prompt (batch of 2, uncond first, as
//!      diffusers concatenates them), or of the prompt alone when cfg_scale ≤ 1;
//!   2. unit Gaussian latents [1, 4, H/8, W/8] from the crate's [`Rng`] seeded with the seed.
//!      **Not torch's generator**: the same seed gives other noise than diffusers, kohya or
//!      A1111, so images differ from theirs for the same seed (they are reproducible here, on
//!      every machine);
//!   3. the sampler loop, Euler ancestral's fresh noise drawn from the same generator after the
//!      initial latents; at each step the UNet runs once on a batch of 2 (uncond, cond) and
//!      ε = ε_u + cfg·(ε_c − ε_u) ([`sampler::guidance`]); with cfg ≤ 1 it runs on the prompt
//!      alone (diffusers' and kohya's `do_classifier_free_guidance = guidance_scale > 1`);
//!   4. VAE decode, and [-1, 1] → u8 with clamping.
//!
//! The library never prints: progress goes to an optional callback, and what the caller may
//! want to show (a truncated prompt, the drawn seed) comes back in [`Generated::notes`].

pub mod dpm;
pub mod error;
mod grid;
pub mod image;
pub mod prompt;
pub mod sampler;
pub mod schedule;

pub use error::SampleError;
pub use image::{encode_png, load_png, save_png, RgbImage};
pub use prompt::{parse_prompt_file, parse_prompt_line, PromptDefaults, PromptSpec};
pub use sampler::{
    guidance, Sampler, SamplerConfig, SamplerKind, StepCoefficients, StepNoise, TimestepSpacing,
};
pub use schedule::NoiseSchedule;

use crate::data::SizeCond;
use crate::model::cond::{unet_forward, Cond, TextCond};
use crate::model::family::{Prediction, TextEncoders};
use crate::model::layers::Ctx;
use crate::model::tokenizer::Tokenizer;
use crate::model::unet::Unet;
use crate::model::vae::Vae;
use crate::rng::Rng;
use crate::tensor::Tensor;

/// A prompt as token ids for the text encoder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenizedPrompt {
    /// The ids the text encoder reads (SD1.x: 77: BOS, tokens, EOS, padding).
    pub ids: Vec<u32>,
    /// The prompt was longer than the encoder takes and was cut.
    pub truncated: bool,
}

/// Turns prompt text into token ids. Implemented by the CLIP [`Tokenizer`] and by any
/// `Fn(&str) -> Vec<u32>` (a toy tokenizer for a small test model, say).
pub trait PromptTokenizer {
    fn tokenize_prompt(&self, text: &str) -> TokenizedPrompt;
}

impl PromptTokenizer for Tokenizer {
    fn tokenize_prompt(&self, text: &str) -> TokenizedPrompt {
        let e = self.encode(text);
        TokenizedPrompt {
            ids: e.ids,
            truncated: e.truncated,
        }
    }
}

/// CLIP's tokenizer with sd-scripts' long prompts: `max_tokens` (75, 150 or 225) tokens in
/// windows of 75 (see `Tokenizer::encode_long`).
pub struct LongPrompts<'a> {
    pub tokenizer: &'a Tokenizer,
    pub max_tokens: usize,
}

impl PromptTokenizer for LongPrompts<'_> {
    fn tokenize_prompt(&self, text: &str) -> TokenizedPrompt {
        let e = self.tokenizer.encode_long(text, self.max_tokens);
        TokenizedPrompt {
            ids: e.ids,
            truncated: e.truncated,
        }
    }
}

impl<F: Fn(&str) -> Vec<u32>> PromptTokenizer for F {
    fn tokenize_prompt(&self, text: &str) -> TokenizedPrompt {
        TokenizedPrompt {
            ids: self(text),
            truncated: false,
        }
    }
}

/// The models and settings that sampling reads. The adapters, if any, come with the [`Ctx`].
pub struct Pipeline<'a> {
    pub unet: &'a Unet,
    pub vae: &'a Vae,
    pub text_encoder: &'a TextEncoders,
    pub tokenizer: &'a dyn PromptTokenizer,
    /// The training schedule the samplers run on (SD1.x's by default).
    pub schedule: NoiseSchedule,
    /// Timestep spacing and offsets (SD1.5's scheduler config by default).
    pub sampler_config: SamplerConfig,
    /// What the UNet predicts (ε by default; SD2.x 768-v: v, turned into ε before each step).
    pub prediction: Prediction,
}

/// What [`generate`] made.
#[derive(Clone, Debug)]
pub struct Generated {
    pub image: RgbImage,
    /// The seed used: the spec's, or the one drawn when it had none.
    pub seed: u64,
    /// Things to tell the user: a prompt cut at the encoder's length, a drawn seed.
    pub notes: Vec<String>,
}

impl<'a> Pipeline<'a> {
    /// A pipeline with SD1.x's schedule and SD1.5's scheduler config.
    pub fn new(
        unet: &'a Unet,
        vae: &'a Vae,
        text_encoder: &'a TextEncoders,
        tokenizer: &'a dyn PromptTokenizer,
    ) -> Self {
        Pipeline {
            unet,
            vae,
            text_encoder,
            tokenizer,
            schedule: NoiseSchedule::sd15(),
            sampler_config: SamplerConfig::sd15(),
            prediction: Prediction::Epsilon,
        }
    }

    /// Pixels per latent: 2^(VAE levels − 1) (8 for SD1.x).
    pub fn vae_factor(&self) -> usize {
        1usize
            << self
                .vae
                .config
                .block_out_channels
                .len()
                .clamp(1, 16)
                .saturating_sub(1)
    }

    /// Image sides must be multiples of this: the VAE factor times the UNet's
    /// 2^(levels − 1) (64 for SD1.x).
    pub fn size_multiple(&self) -> usize {
        self.vae_factor() << self.unet.down.len().clamp(1, 16).saturating_sub(1)
    }

    /// The text conditioning (embeddings [N, L, D], SDXL's pooled text) of `prompts`, in
    /// order, with a note for each one cut.
    pub fn encode_prompts(
        &self,
        cx: &Ctx,
        prompts: &[&str],
        clip_skip: usize,
    ) -> Result<(TextCond, Vec<String>), SampleError> {
        let te = self.text_encoder;
        let (window, vocab_size) = (te.positions(), te.vocab_size());
        let mut ids = Vec::new();
        let mut notes = Vec::new();
        let mut len = None;
        for text in prompts {
            let t = self.tokenizer.tokenize_prompt(text);
            if t.ids.is_empty() || (t.ids.len() > window && t.ids.len() % window != 0) {
                return Err(SampleError::BadSetting {
                    name: "token ids",
                    value: format!("{} ids for {text:?}", t.ids.len()),
                    expected: format!(
                        "1 to {window} ids from the tokenizer, or a multiple of {window} (long prompts)"
                    ),
                });
            }
            if *len.get_or_insert(t.ids.len()) != t.ids.len() {
                return Err(SampleError::BadSetting {
                    name: "token ids",
                    value: format!("{} ids for {text:?}", t.ids.len()),
                    expected: "as many ids for every prompt (a padding tokenizer)".into(),
                });
            }
            if let Some(&bad) = t.ids.iter().find(|&&id| id as usize >= vocab_size) {
                return Err(SampleError::BadSetting {
                    name: "token id",
                    value: format!("{bad} in {text:?}"),
                    expected: format!(
                        "below the text encoder's vocabulary size {vocab_size} (is this \
                         tokenizer the model's?)"
                    ),
                });
            }
            if t.truncated {
                let tokens = if t.ids.len() > window {
                    t.ids.len() / window * (window - 2)
                } else {
                    window - 2
                };
                notes.push(format!(
                    "the prompt {text:?} is longer than the {tokens} tokens the text encoder \
                     takes (max_token_length); the rest was cut"
                ));
            }
            ids.extend(t.ids);
        }
        let (text, _) = te.forward_train(cx, &ids, prompts.len(), clip_skip, false)?;
        Ok((text, notes))
    }

    /// The noise prediction for latents [1, C, h, w] at timestep t. `cond` of 1 is the
    /// prompt's conditioning; of 2 it is (negative, prompt), and then the UNet runs once on the
    /// batch of 2 and guidance with `cfg_scale` combines the halves.
    pub fn predict_noise(
        &self,
        cx: &Ctx,
        latents: &Tensor,
        t: f64,
        cond: &Cond,
        cfg_scale: f64,
    ) -> Result<Tensor, SampleError> {
        let d = latents.dims().to_vec();
        let context = &cond.context;
        let n_ctx = cond.len();
        if d.len() != 4 || d[0] != 1 || !(n_ctx == 1 || n_ctx == 2) {
            return Err(SampleError::BadSetting {
                name: "latents and context",
                value: format!("{} and {}", latents.shape(), context.shape()),
                expected: "latents [1, C, h, w] and a context of 1 (prompt) or 2 (negative, \
                           prompt) embeddings"
                    .into(),
            });
        }
        let be = cx.be;
        let ts = be.tensor_from_f32(&[n_ctx], &vec![t as f32; n_ctx], be.compute_dtype())?;
        if n_ctx == 1 {
            return Ok(unet_forward(self.unet, cx, latents, &ts, cond, false, None)?.0);
        }
        let (c, h, w) = (d[1], d[2], d[3]);
        let doubled = be
            .concat_channels(latents, latents)?
            .reshape([2, c, h, w])?;
        let out = unet_forward(self.unet, cx, &doubled, &ts, cond, false, None)?.0;
        let c_out = out.dims().get(1).copied().unwrap_or(0);
        let (uncond, cond) = be.split_channels(&out.reshape([1, 2 * c_out, h, w])?, c_out)?;
        guidance(be, &uncond, &cond, cfg_scale)
    }
}

/// The noise prediction from a v-prediction at timestep t (fractional for Euler) with the
/// model input x (x_t, the variance-preserving latents every sampler hands the model):
/// ε = √ᾱ·v + √(1−ᾱ)·x, with ᾱ = 1/(σ(t)²+1) and σ(t) interpolated as the samplers do, so
/// that the sampler's x₀ = (x − √(1−ᾱ)·ε)/√ᾱ is √ᾱ·x − √(1−ᾱ)·v, diffusers' v_prediction
/// rule (for DPM-Solver++ with Karras σ diffusers uses the drawn σ, whose timestep is rounded
/// here: the two differ by the rounding).
pub fn v_to_eps(
    be: &dyn crate::backend::Backend,
    schedule: &NoiseSchedule,
    x: &Tensor,
    t: f64,
    v: &Tensor,
) -> Result<Tensor, SampleError> {
    let sigma = grid::interp(t, &schedule.sigmas());
    let alpha_bar = 1.0 / (sigma * sigma + 1.0);
    let n = x.dims().first().copied().unwrap_or(0);
    Ok(be.add_noise(
        v,
        x,
        &vec![alpha_bar.sqrt(); n],
        &vec![(1.0 - alpha_bar).sqrt(); n],
    )?)
}

/// A seed for a spec without one, from the process's hash keys and the clock.
pub fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hash, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    std::time::SystemTime::now().hash(&mut h);
    std::process::id().hash(&mut h);
    h.finish()
}

/// Makes the image `spec` describes; see the module documentation for the steps.
/// `clip_skip` counts as kohya's (1 = the last layer). `progress(step, steps)` is called after
/// every sampler step.
pub fn generate(
    pipe: &Pipeline,
    cx: &Ctx,
    spec: &PromptSpec,
    clip_skip: usize,
    progress: Option<&mut dyn FnMut(usize, usize)>,
) -> Result<Generated, SampleError> {
    let m = pipe.size_multiple();
    for (name, v) in [("width", spec.width), ("height", spec.height)] {
        if v == 0 || v % m != 0 || v > prompt::MAX_SIDE {
            return Err(SampleError::BadSetting {
                name,
                value: v.to_string(),
                expected: format!(
                    "a multiple of {m} pixels for this model, at most {}",
                    prompt::MAX_SIDE
                ),
            });
        }
    }
    if !spec.cfg_scale.is_finite() {
        return Err(SampleError::BadSetting {
            name: "cfg_scale",
            value: spec.cfg_scale.to_string(),
            expected: "a finite number".into(),
        });
    }
    let c = pipe.unet.config.in_channels;
    if pipe.vae.config.latent_channels != c {
        return Err(SampleError::BadSetting {
            name: "latent channels",
            value: format!("UNet {c}, VAE {}", pipe.vae.config.latent_channels),
            expected: "a UNet and VAE of the same model".into(),
        });
    }
    let sampler = Sampler::new(
        spec.sampler,
        &pipe.schedule,
        &pipe.sampler_config,
        spec.steps,
    )?;

    let mut notes = Vec::new();
    let guided = spec.cfg_scale > 1.0;
    let prompts: Vec<&str> = if guided {
        vec![&spec.negative_prompt, &spec.prompt]
    } else {
        vec![&spec.prompt]
    };
    let (text, n) = pipe.encode_prompts(cx, &prompts, clip_skip)?;
    notes.extend(n);
    let sizes = vec![SizeCond::for_generation((spec.width, spec.height)); prompts.len()];
    let cond = Cond::with_sizes(cx.be, text, &sizes)?;

    let seed = match spec.seed {
        Some(s) => s,
        None => {
            let s = random_seed();
            notes.push(format!("seed {s} (drawn: the prompt gave none)"));
            s
        }
    };
    let f = pipe.vae_factor();
    let (h, w) = (spec.height / f, spec.width / f);
    let be = cx.be;
    let mut rng = Rng::new(seed);
    let noise: Vec<f32> = rng
        .normal_vec(c * h * w)
        .into_iter()
        .map(|v| v as f32)
        .collect();
    let noise = be.tensor_from_f32(&[1, c, h, w], &noise, be.compute_dtype())?;
    let mut model = |x: &Tensor, t: f64| {
        let out = pipe.predict_noise(cx, x, t, &cond, spec.cfg_scale)?;
        match pipe.prediction {
            Prediction::Epsilon => Ok(out),
            Prediction::V => v_to_eps(be, &pipe.schedule, x, t, &out),
        }
    };
    let latents = sampler.run_with(be, &noise, Some(&mut rng), &mut model, progress)?;

    let decoded = pipe.vae.decode(cx, &latents)?;
    if decoded.dims() != [1, 3, spec.height, spec.width] {
        return Err(SampleError::BadSetting {
            name: "decoded image",
            value: decoded.shape().to_string(),
            expected: format!("[1, 3, {}, {}]", spec.height, spec.width),
        });
    }
    let pixels = be.to_f32_vec(&decoded)?;
    let image = RgbImage::from_planar(spec.width, spec.height, &pixels)?;
    Ok(Generated { image, seed, notes })
}
