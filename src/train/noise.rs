//! The training objective's randomness and weights: DDPM's forward process as kohya trains
//! SD1.x (scaled_linear β from 0.00085 to 0.012 over 1000 steps, ε-prediction), uniform
//! timesteps, offset noise, and min-SNR loss weights.
//!
//!   ᾱ_t = Π_{s<=t} (1 − β_s),  β = linspace(sqrt(0.00085), sqrt(0.012), 1000)²
//!   x_t = sqrt(ᾱ_t)·x_0 + sqrt(1 − ᾱ_t)·ε
//!   offset noise: ε += noise_offset·n, n ~ N(0, 1) per (sample, channel)   (kohya, Guttenberg)
//!   min-SNR-γ (ε-prediction): w_t = min(SNR_t, γ)/SNR_t, SNR_t = ᾱ_t/(1 − ᾱ_t)

use crate::rng::Rng;

/// ᾱ_t of kohya's SD1.x training schedule, t = 0..999.
pub fn alphas_cumprod() -> Vec<f64> {
    let (a, b, n) = (0.00085f64.sqrt(), 0.012f64.sqrt(), 1000);
    let mut acc = 1.0;
    (0..n)
        .map(|i| {
            let beta = (a + (b - a) * i as f64 / (n - 1) as f64).powi(2);
            acc *= 1.0 - beta;
            acc
        })
        .collect()
}

/// (sqrt(ᾱ_t), sqrt(1 − ᾱ_t)) for each timestep: the add_noise coefficients.
pub fn noise_coefficients(abar: &[f64], timesteps: &[usize]) -> (Vec<f64>, Vec<f64>) {
    timesteps
        .iter()
        .map(|&t| (abar[t].sqrt(), (1.0 - abar[t]).sqrt()))
        .unzip()
}

/// min(SNR_t, γ)/SNR_t per timestep.
pub fn min_snr_weights(abar: &[f64], timesteps: &[usize], gamma: f64) -> Vec<f64> {
    timesteps
        .iter()
        .map(|&t| {
            let snr = abar[t] / (1.0 - abar[t]);
            snr.min(gamma) / snr
        })
        .collect()
}

/// `n` timesteps uniform in [0, 1000).
pub fn sample_timesteps(rng: &mut Rng, n: usize) -> Vec<usize> {
    (0..n).map(|_| rng.below(1000) as usize).collect()
}

/// Standard normal noise, as f32.
pub fn gaussian(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.normal() as f32).collect()
}
