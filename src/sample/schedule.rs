//! The DDPM noise schedule that SD1.x was trained with, shared by training (noising latents,
//! min-SNR weights) and sampling.
//!
//! `scaled_linear` (diffusers' name): β_t = (√β_start + t·(√β_end − √β_start)/(T−1))², t = 0..T−1,
//! α_t = 1 − β_t, ᾱ_t = Π_{s≤t} α_s. SD1.x and kohya use T = 1000, β 0.00085 → 0.012
//! ([`NoiseSchedule::sd15`]). Timestep t noises x₀ as x_t = √ᾱ_t·x₀ + √(1−ᾱ_t)·ε.
//!
//! Values are computed in f64. diffusers computes the same formula in float32 (torch.linspace,
//! then a cumulative product); the two agree to about 1e-6 relative (ᾱ_999: 0.004660098513 here,
//! 0.004660095 in diffusers), far below anything a sampler or a loss can see.

use crate::sample::SampleError;

/// ᾱ_t for t = 0..T−1 and what training and sampling derive from it.
#[derive(Clone, Debug, PartialEq)]
pub struct NoiseSchedule {
    betas: Vec<f64>,
    alphas_cumprod: Vec<f64>,
}

impl NoiseSchedule {
    /// SD1.x's training schedule: scaled_linear, 1000 steps, β 0.00085 → 0.012 (kohya's
    /// `get_noise_scheduler`, the `scheduler_config.json` of every SD1.x model).
    pub fn sd15() -> NoiseSchedule {
        Self::build(1000, 0.00085, 0.012)
    }

    /// diffusers' `beta_schedule="scaled_linear"`: betas evenly spaced in √β, squared.
    /// Needs at least one step and 0 < β < 1 at both ends (so every ᾱ_t is in (0, 1)).
    pub fn scaled_linear(
        num_train_timesteps: usize,
        beta_start: f64,
        beta_end: f64,
    ) -> Result<NoiseSchedule, SampleError> {
        let bad = |name: &'static str, value: String, expected: &str| SampleError::BadSetting {
            name,
            value,
            expected: expected.into(),
        };
        if num_train_timesteps == 0 {
            return Err(bad("num_train_timesteps", "0".into(), "at least 1"));
        }
        for (name, b) in [("beta_start", beta_start), ("beta_end", beta_end)] {
            if !(b > 0.0 && b < 1.0) {
                return Err(bad(name, b.to_string(), "a number in (0, 1)"));
            }
        }
        Ok(Self::build(num_train_timesteps, beta_start, beta_end))
    }

    fn build(n: usize, beta_start: f64, beta_end: f64) -> NoiseSchedule {
        let (a, b) = (beta_start.sqrt(), beta_end.sqrt());
        // torch.linspace: start + i·step, with the last value exactly `end`.
        let step = if n > 1 { (b - a) / (n - 1) as f64 } else { 0.0 };
        let betas: Vec<f64> = (0..n)
            .map(|i| {
                let s = if i + 1 == n && n > 1 {
                    b
                } else {
                    a + i as f64 * step
                };
                s * s
            })
            .collect();
        let mut prod = 1.0;
        let alphas_cumprod = betas
            .iter()
            .map(|beta| {
                prod *= 1.0 - beta;
                prod
            })
            .collect();
        NoiseSchedule {
            betas,
            alphas_cumprod,
        }
    }

    /// This schedule rescaled to zero terminal SNR (Lin et al., "Common Diffusion Noise
    /// Schedules and Sample Steps are Flawed", algorithm 1; kohya's `zero_terminal_snr`,
    /// diffusers' `rescale_zero_terminal_snr`): √ᾱ_t is shifted so that √ᾱ_{T−1} = 0 and
    /// scaled so that √ᾱ_0 keeps its value; the betas follow from the new ᾱ. σ_{T−1} is then
    /// infinite, so samplers keep the original schedule (as kohya's do).
    pub fn with_zero_terminal_snr(&self) -> NoiseSchedule {
        let sqrt: Vec<f64> = self.alphas_cumprod.iter().map(|a| a.sqrt()).collect();
        let (Some(&first), Some(&last)) = (sqrt.first(), sqrt.last()) else {
            return self.clone();
        };
        let alphas_cumprod: Vec<f64> = sqrt
            .iter()
            .map(|s| {
                let r = (s - last) * first / (first - last);
                r * r
            })
            .collect();
        let betas = alphas_cumprod
            .iter()
            .enumerate()
            .map(|(t, a)| {
                if t == 0 {
                    1.0 - a
                } else {
                    1.0 - a / alphas_cumprod[t - 1]
                }
            })
            .collect();
        NoiseSchedule {
            betas,
            alphas_cumprod,
        }
    }

    /// T, the number of training timesteps (1000 for SD1.x).
    pub fn num_train_timesteps(&self) -> usize {
        self.alphas_cumprod.len()
    }

    /// β_t for every t.
    pub fn betas(&self) -> &[f64] {
        &self.betas
    }

    /// ᾱ_t for every t (diffusers' `alphas_cumprod`).
    pub fn alphas_cumprod(&self) -> &[f64] {
        &self.alphas_cumprod
    }

    /// ᾱ_t, or None when t ≥ T.
    pub fn alpha_bar(&self, t: usize) -> Option<f64> {
        self.alphas_cumprod.get(t).copied()
    }

    /// √ᾱ_t: the signal's coefficient in x_t. None when t ≥ T.
    pub fn sqrt_alpha_bar(&self, t: usize) -> Option<f64> {
        self.alpha_bar(t).map(f64::sqrt)
    }

    /// √(1−ᾱ_t): the noise's coefficient in x_t. None when t ≥ T.
    pub fn sqrt_one_minus_alpha_bar(&self, t: usize) -> Option<f64> {
        self.alpha_bar(t).map(|a| (1.0 - a).sqrt())
    }

    /// Signal-to-noise ratio ᾱ_t / (1−ᾱ_t) (min-SNR weighting). None when t ≥ T.
    pub fn snr(&self, t: usize) -> Option<f64> {
        self.alpha_bar(t).map(|a| a / (1.0 - a))
    }

    /// The k-diffusion noise level σ_t = √((1−ᾱ_t)/ᾱ_t) = 1/√SNR (Euler samplers). None when t ≥ T.
    pub fn sigma(&self, t: usize) -> Option<f64> {
        self.alpha_bar(t).map(|a| ((1.0 - a) / a).sqrt())
    }

    /// σ_t for every t (rising with t).
    pub fn sigmas(&self) -> Vec<f64> {
        (0..self.num_train_timesteps())
            .filter_map(|t| self.sigma(t))
            .collect()
    }

    /// The per-sample coefficients of the forward process for a batch of timesteps,
    /// `(√ᾱ_t, √(1−ᾱ_t))` each, as [`crate::backend::DiffusionOps::add_noise`] takes them.
    pub fn add_noise_coefficients(
        &self,
        timesteps: &[usize],
    ) -> Result<(Vec<f64>, Vec<f64>), SampleError> {
        let mut a = Vec::with_capacity(timesteps.len());
        let mut b = Vec::with_capacity(timesteps.len());
        for &t in timesteps {
            let ab = self.alpha_bar(t).ok_or_else(|| SampleError::BadSetting {
                name: "timestep",
                value: t.to_string(),
                expected: format!("below the schedule's {} steps", self.num_train_timesteps()),
            })?;
            a.push(ab.sqrt());
            b.push((1.0 - ab).sqrt());
        }
        Ok((a, b))
    }
}
