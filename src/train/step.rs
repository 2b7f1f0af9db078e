//! One micro-batch of LoRA training on cached latents and text embeddings, and the
//! fixed-noise evaluation that makes losses comparable across evaluations and runs.
//!
//!   t ~ U{0..999}, ε ~ N(0, I) (+ noise_offset·n per sample and channel)
//!   x_t = sqrt(ᾱ_t)·x_0 + sqrt(1 − ᾱ_t)·ε
//!   loss = (1/N) Σ_n w_n·mean((UNet(x_t, t, c) − ε)²),
//!   w_n = (min-SNR-γ weight or 1) · (prior_loss_weight for a regularisation image, else 1)
//! The backward writes `= ` or `+=` into the LoRA gradients by `grads.accum`; the loss
//! gradient is multiplied by `grad_scale` (the loss scale over the accumulation steps).
//! With a dropout source in the `Ctx`, each adapter's hidden is masked as kohya's
//! `network_dropout` does; the masks are saved with the tape and reused by the backward.

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::lora::{LoraGrads, LoraSet};
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
    pub noise_offset: f64,
    pub min_snr_gamma: Option<f64>,
}

impl Objective {
    /// Plain ε-prediction MSE on `schedule`: no offset noise, no weights (the fixed-noise
    /// evaluation's objective).
    pub fn plain(schedule: NoiseSchedule) -> Objective {
        Objective {
            schedule,
            noise_offset: 0.0,
            min_snr_gamma: None,
        }
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
    let (a, b) = schedule
        .add_noise_coefficients(&timesteps)
        .map_err(|e| Error::BadValue {
            op: "noise",
            name: "timesteps",
            value: format!("{timesteps:?}"),
            expected: e.to_string(),
        })?;
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
    /// The text conditioning [N, tokens, width].
    pub context: &'a Tensor,
    /// Multiplies the loss gradient: the loss scale over the accumulation steps.
    pub grad_scale: f64,
    /// Return d loss / d context (the text encoder is trained).
    pub want_context_grad: bool,
    /// Each sample's loss weight (kohya's `prior_loss_weight` for regularisation images),
    /// multiplied with the min-SNR weight; None: all 1.
    pub loss_weights: Option<&'a [f64]>,
}

/// What a micro-batch gives back.
pub struct MicroOut {
    /// The (unscaled) loss.
    pub loss: f64,
    /// d loss / d context, when asked for.
    pub d_context: Option<Tensor>,
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
    let (pred, tape) = unet.forward(cx, &nz.noisy, &t, batch.context, true, None)?;
    let snr = obj
        .min_snr_gamma
        .map(|g| min_snr_weights(&obj.schedule, &nz.timesteps, g));
    let weights = match (snr, batch.loss_weights) {
        (Some(s), Some(w)) => Some(s.iter().zip(w).map(|(a, b)| a * b).collect()),
        (s, w) => s.or_else(|| w.map(<[f64]>::to_vec)),
    };
    let (loss, d_pred) = be.mse_loss(&pred, &nz.noise, weights.as_deref(), batch.grad_scale)?;
    drop(pred);
    let mut out = MicroOut {
        loss,
        d_context: None,
        tape_by_block: Vec::new(),
    };
    if let Some(tape) = tape {
        out.tape_by_block = tape.bytes_by_block();
        out.d_context = unet.backward_with_context_grad(
            cx,
            &d_pred,
            batch.context,
            tape,
            grads,
            batch.want_context_grad,
        )?;
    }
    Ok(out)
}

/// The loss of `lora` on (latents, context) pairs with noise and timesteps drawn from a fixed
/// seed, one draw per pair in order: the same seed gives the same noise, so two evaluations
/// differ only by the adapters. Unweighted MSE, averaged over pairs.
pub fn fixed_noise_loss(
    be: &dyn Backend,
    unet: &Unet,
    lora: Option<&LoraSet>,
    pairs: &[(Tensor, Tensor)],
    schedule: &NoiseSchedule,
    seed: u64,
) -> Result<f64> {
    let cx = Ctx::new(be, lora);
    let mut rng = Rng::new(seed);
    let obj = Objective::plain(schedule.clone());
    let mut total = 0.0;
    for (latents, context) in pairs {
        let nz = noise_batch(be, latents, &obj, &mut rng)?;
        let t = timestep_tensor(be, &nz.timesteps, latents.dtype())?;
        let (pred, _) = unet.forward(&cx, &nz.noisy, &t, context, false, None)?;
        total += be.mse_loss(&pred, &nz.noise, None, 1.0)?.0;
    }
    Ok(total / pairs.len().max(1) as f64)
}
