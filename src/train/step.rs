//! One micro-batch of LoRA training on cached latents and text embeddings, and the
//! fixed-noise evaluation that makes losses comparable across evaluations and runs.
//!
//!   t ~ U{0..999}, ε ~ N(0, I) (+ noise_offset·n per sample and channel)
//!   x_t = sqrt(ᾱ_t)·x_0 + sqrt(1 − ᾱ_t)·ε
//!   loss = (1/N) Σ_n w_n·mean((UNet(x_t, t, c) − target)²),
//!   target = ε, or with v-prediction v = sqrt(ᾱ_t)·ε − sqrt(1 − ᾱ_t)·x_0
//!   w_n = (min-SNR-γ weight or 1) · (prior_loss_weight for a regularisation image, else 1)
//! The backward writes `= ` or `+=` into the LoRA gradients by `grads.accum`; the loss
//! gradient is multiplied by `grad_scale` (the loss scale over the accumulation steps).
//! With a dropout source in the `Ctx`, each adapter's hidden is masked as kohya's
//! `network_dropout` does; the masks are saved with the tape and reused by the backward.

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::lora::{LoraGrads, LoraSet};
use crate::model::cond::{unet_backward, unet_forward, Cond, TextCondGrad};
use crate::model::family::Prediction;
use crate::model::layers::Ctx;
use crate::model::unet::Unet;
use crate::rng::Rng;
use crate::sample::schedule::NoiseSchedule;
use crate::tensor::{DType, Tensor};
use crate::train::noise::{gaussian, min_snr_weights, sample_timesteps};

/// The training objective: the family's noise schedule and prediction, and the options.
#[derive(Clone, Debug, PartialEq)]
pub struct Objective {
    pub schedule: NoiseSchedule,
    pub prediction: Prediction,
    pub noise_offset: f64,
    pub min_snr_gamma: Option<f64>,
}

impl Objective {
    /// Plain ε-prediction MSE on `schedule`: no offset noise, no weights (the fixed-noise
    /// evaluation's objective).
    pub fn plain(schedule: NoiseSchedule) -> Objective {
        Objective {
            schedule,
            prediction: Prediction::Epsilon,
            noise_offset: 0.0,
            min_snr_gamma: None,
        }
    }

    /// This objective without offset noise and weights, for the fixed-noise evaluation.
    pub fn unweighted(&self) -> Objective {
        Objective {
            noise_offset: 0.0,
            min_snr_gamma: None,
            ..self.clone()
        }
    }

    /// What the UNet is trained to output for `nz`: ε, or v = √ᾱ_t·ε − √(1−ᾱ_t)·x₀.
    pub fn target(&self, be: &dyn Backend, latents: &Tensor, nz: &Noised) -> Result<Tensor> {
        match self.prediction {
            Prediction::Epsilon => Ok(nz.noise.clone()),
            Prediction::V => {
                let (a, b) = self.coefficients(&nz.timesteps)?;
                let minus_b: Vec<f64> = b.iter().map(|b| -b).collect();
                be.add_noise(&nz.noise, latents, &a, &minus_b)
            }
        }
    }

    /// (√ᾱ_t, √(1−ᾱ_t)) per timestep.
    fn coefficients(&self, timesteps: &[usize]) -> Result<(Vec<f64>, Vec<f64>)> {
        self.schedule
            .add_noise_coefficients(timesteps)
            .map_err(|e| Error::BadValue {
                op: "noise",
                name: "timesteps",
                value: format!("{timesteps:?}"),
                expected: e.to_string(),
            })
    }
}

/// Draws the noise of one micro-batch: timesteps, ε (with offset noise) and x_t.
pub struct Noised {
    pub timesteps: Vec<usize>,
    pub noise: Tensor,
    pub noisy: Tensor,
}

/// Noises `latents` [N, C, h, w] with draws from `rng`.
pub fn noise_batch(
    be: &dyn Backend,
    latents: &Tensor,
    obj: &Objective,
    rng: &mut Rng,
) -> Result<Noised> {
    let schedule = &obj.schedule;
    let d = latents.dims().to_vec();
    let (n, c) = (d[0], d[1]);
    let dtype = latents.dtype();
    let timesteps = sample_timesteps(rng, schedule, n);
    let mut noise = be.tensor_from_f32(&d, &gaussian(rng, latents.numel()), dtype)?;
    if obj.noise_offset != 0.0 {
        let offset: Vec<f32> = gaussian(rng, n * c)
            .iter()
            .map(|v| v * obj.noise_offset as f32)
            .collect();
        noise = be.add_channel_bias(&noise, &be.tensor_from_f32(&[n, c], &offset, dtype)?)?;
    }
    let (a, b) = obj.coefficients(&timesteps)?;
    let noisy = be.add_noise(latents, &noise, &a, &b)?;
    Ok(Noised {
        timesteps,
        noise,
        noisy,
    })
}

fn timestep_tensor(be: &dyn Backend, t: &[usize], dtype: DType) -> Result<Tensor> {
    let v: Vec<f32> = t.iter().map(|&t| t as f32).collect();
    be.tensor_from_f32(&[v.len()], &v, dtype)
}

/// One micro-batch's inputs to the denoiser.
pub struct MicroBatch<'a> {
    /// Clean latents [N, C, h, w].
    pub latents: &'a Tensor,
    /// The UNet's conditioning (text, and SDXL's pooled text and size ids).
    pub cond: &'a Cond,
    /// Multiplies the loss gradient: the loss scale over the accumulation steps.
    pub grad_scale: f64,
    /// Return d loss / d text conditioning (the text encoder is trained).
    pub want_text_grad: bool,
    /// Each sample's loss weight (kohya's `prior_loss_weight` for regularisation images),
    /// multiplied with the min-SNR weight; None: all 1.
    pub loss_weights: Option<&'a [f64]>,
}

/// What a micro-batch gives back.
pub struct MicroOut {
    /// The (unscaled) loss.
    pub loss: f64,
    /// d loss / d text conditioning, when asked for.
    pub d_text: Option<TextCondGrad>,
    /// The UNet tape's bytes by block, measured before the backward consumed it.
    pub tape_by_block: Vec<(String, usize)>,
}

/// Forward with tape, loss and LoRA backward of one micro-batch: noise and timesteps drawn
/// from `rng`, the adapters (and dropout) of `cx`, gradients into `grads` by `grads.accum`.
pub fn denoise_micro_batch(
    cx: &Ctx,
    unet: &Unet,
    obj: &Objective,
    batch: &MicroBatch,
    grads: &mut LoraGrads,
    rng: &mut Rng,
) -> Result<MicroOut> {
    let be = cx.be;
    let nz = noise_batch(be, batch.latents, obj, rng)?;
    let t = timestep_tensor(be, &nz.timesteps, batch.latents.dtype())?;
    let (pred, tape) = unet_forward(unet, cx, &nz.noisy, &t, batch.cond, true, None)?;
    let snr = obj
        .min_snr_gamma
        .map(|g| min_snr_weights(&obj.schedule, &nz.timesteps, g, obj.prediction));
    let weights = match (snr, batch.loss_weights) {
        (Some(s), Some(w)) => Some(s.iter().zip(w).map(|(a, b)| a * b).collect()),
        (s, w) => s.or_else(|| w.map(<[f64]>::to_vec)),
    };
    let target = obj.target(be, batch.latents, &nz)?;
    let (loss, d_pred) = be.mse_loss(&pred, &target, weights.as_deref(), batch.grad_scale)?;
    drop(target);
    drop(pred);
    let mut out = MicroOut {
        loss,
        d_text: None,
        tape_by_block: Vec::new(),
    };
    if let Some(tape) = tape {
        out.tape_by_block = tape.bytes_by_block();
        out.d_text = unet_backward(
            unet,
            cx,
            &d_pred,
            batch.cond,
            tape,
            grads,
            batch.want_text_grad,
        )?;
    }
    Ok(out)
}

/// The loss of `lora` on (latents, conditioning) pairs with noise and timesteps drawn from a fixed
/// seed, one draw per pair in order: the same seed gives the same noise, so two evaluations
/// differ only by the adapters. Unweighted MSE against `obj`'s target (its offset noise and
/// weights left out), averaged over pairs.
pub fn fixed_noise_loss(
    be: &dyn Backend,
    unet: &Unet,
    lora: Option<&LoraSet>,
    pairs: &[(Tensor, Cond)],
    obj: &Objective,
    seed: u64,
) -> Result<f64> {
    let cx = Ctx::new(be, lora);
    let mut rng = Rng::new(seed);
    let obj = obj.unweighted();
    let mut total = 0.0;
    for (latents, cond) in pairs {
        let nz = noise_batch(be, latents, &obj, &mut rng)?;
        let t = timestep_tensor(be, &nz.timesteps, latents.dtype())?;
        let (pred, _) = unet_forward(unet, &cx, &nz.noisy, &t, cond, false, None)?;
        total += be
            .mse_loss(&pred, &obj.target(be, latents, &nz)?, None, 1.0)?
            .0;
    }
    Ok(total / pairs.len().max(1) as f64)
}
