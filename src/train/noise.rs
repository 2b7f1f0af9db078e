//! The training objective's randomness and weights: DDPM's forward process as kohya trains
//! SD1.x (the schedule is `sample::schedule::NoiseSchedule::sd15()`, ε-prediction), uniform
//! timesteps, offset noise, and min-SNR loss weights.
//!
//!   x_t = sqrt(ᾱ_t)·x_0 + sqrt(1 − ᾱ_t)·ε
//!   offset noise: ε += noise_offset·n, n ~ N(0, 1) per (sample, channel)   (kohya, Guttenberg)
//!   min-SNR-γ (ε-prediction): w_t = min(SNR_t, γ)/SNR_t, SNR_t = ᾱ_t/(1 − ᾱ_t);
//!   with v-prediction min(SNR_t, γ)/(SNR_t + 1) (kohya's `apply_snr_weight`)

use crate::model::family::Prediction;
use crate::rng::Rng;
use crate::sample::schedule::NoiseSchedule;

/// min(SNR_t, γ)/SNR_t per timestep (timesteps from [`sample_timesteps`], always in range);
/// for v-prediction min(SNR_t, γ)/(SNR_t + 1).
pub fn min_snr_weights(
    schedule: &NoiseSchedule,
    timesteps: &[usize],
    gamma: f64,
    prediction: Prediction,
) -> Vec<f64> {
    timesteps
        .iter()
        .map(|&t| {
            let snr = schedule.snr(t).unwrap_or(f64::INFINITY);
            match prediction {
                Prediction::Epsilon => snr.min(gamma) / snr,
                Prediction::V => snr.min(gamma) / (snr + 1.0),
            }
        })
        .collect()
}

/// `n` timesteps uniform over the schedule's steps.
pub fn sample_timesteps(rng: &mut Rng, schedule: &NoiseSchedule, n: usize) -> Vec<usize> {
    let steps = schedule.num_train_timesteps() as u64;
    (0..n).map(|_| rng.below(steps.max(1)) as usize).collect()
}

/// Standard normal noise, as f32.
pub fn gaussian(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.normal() as f32).collect()
}
