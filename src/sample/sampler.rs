//! DDIM (η = 0) and Euler discrete samplers, following diffusers' `DDIMScheduler` and
//! `EulerDiscreteScheduler` (diffusers 0.39) formula for formula; tests/sample.rs checks the
//! timesteps, sigmas and whole trajectories against values diffusers computed
//! (tests/fixtures/schedulers.json).
//!
//! Timesteps for n steps over T training steps ([`SamplerConfig`]):
//! - `Leading` (SD1.5's scheduler config, with `steps_offset` 1): r = T div n,
//!   t_i = (n−1−i)·r + steps_offset. For n = 30: 958, 925, …, 34, 1.
//! - `Linspace`: n values evenly spaced from T−1 down to 0; DDIM rounds them half to even
//!   (numpy's `round`), Euler keeps them fractional (rounded to float32 as diffusers stores them).
//!
//! DDIM, step i at t = t_i with ε the model's prediction:
//!   t_prev = t − T div n (diffusers' rule, whatever the spacing), ᾱ_prev = ᾱ_{t_prev}, or, when
//!   t_prev < 0, 1 with `set_alpha_to_one` and ᾱ_0 without (SD1.5);
//!   x₀ = (x − √(1−ᾱ_t)·ε)/√ᾱ_t,  x_prev = √ᾱ_prev·x₀ + √(1−ᾱ_prev)·ε.
//!   The model reads x unscaled; the initial latents are unit noise.
//!
//! Euler (s_churn = 0, epsilon prediction):
//!   σ(t) = √((1−ᾱ_t)/ᾱ_t) interpolated linearly between integer t (numpy's `interp`,
//!   clamped at the ends), σ_i = σ(t_i), σ_n = 0;
//!   the model reads x/√(σ_i²+1) (`scale_model_input`), and
//!   x₀ = x − σ_i·ε, x_next = x + (x − x₀)/σ_i·(σ_{i+1} − σ_i) = x + (σ_{i+1} − σ_i)·ε.
//!   Initial latents: unit noise × `init_noise_sigma` = √(σ_0²+1) with leading spacing, σ_0
//!   otherwise.
//!
//! Both steps are linear in (x, ε): x_next = a·x + b·ε ([`Sampler::step_coefficients`]), done
//! with the backend's `add_noise` so that the loop runs wherever the tensors live.
//!
//! Not implemented: η > 0, diffusers' `clip_sample` (kohya turns it on for DDIM; SD1.5's
//! config and diffusers' StableDiffusionPipeline turn it off), v-prediction, "trailing" spacing
//! (numpy's float `arange` gives some step counts an extra timestep there), Karras sigmas.

use crate::backend::Backend;
use crate::sample::schedule::NoiseSchedule;
use crate::sample::SampleError;
use crate::tensor::Tensor;

/// Which sampler turns noise into latents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SamplerKind {
    /// DDIM with η = 0 (deterministic), kohya's default `--sample_sampler`.
    Ddim,
    /// Euler discrete (k-diffusion's `sample_euler`, no churn).
    Euler,
}

impl SamplerKind {
    /// kohya's name for it (`--ss`, `--sample_sampler`).
    pub fn name(self) -> &'static str {
        match self {
            SamplerKind::Ddim => "ddim",
            SamplerKind::Euler => "euler",
        }
    }

    /// The sampler of a kohya sampler name (case-insensitive): `ddim`, `euler` or `k_euler`.
    /// The error says what is accepted, and whether the name is a kohya sampler lorafuse lacks.
    pub fn from_name(name: &str) -> Result<SamplerKind, String> {
        let lower = name.to_ascii_lowercase();
        match lower.as_str() {
            "ddim" => Ok(SamplerKind::Ddim),
            "euler" | "k_euler" => Ok(SamplerKind::Euler),
            "ddpm" | "pndm" | "lms" | "k_lms" | "euler_a" | "k_euler_a" | "dpmsolver"
            | "dpmsolver++" | "dpmsingle" | "heun" | "dpm_2" | "k_dpm_2" | "dpm_2_a"
            | "k_dpm_2_a" => Err(format!(
                "ddim or euler (k_euler): kohya's sampler {name:?} is not implemented in lorafuse"
            )),
            _ => Err("ddim or euler (k_euler)".into()),
        }
    }
}

impl std::fmt::Display for SamplerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How n inference timesteps are picked among the T training timesteps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimestepSpacing {
    /// (n−1−i)·(T div n) + steps_offset: SD1.5's (and A1111's DDIM) choice.
    Leading,
    /// Evenly from T−1 to 0: EulerDiscreteScheduler's default (and kohya's Euler).
    Linspace,
}

/// The scheduler settings that change the timesteps (diffusers' config keys).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SamplerConfig {
    pub timestep_spacing: TimestepSpacing,
    /// Added to every leading timestep (SD1.5: 1).
    pub steps_offset: usize,
    /// DDIM's last step goes to ᾱ = 1 instead of ᾱ_0 (SD1.5: false).
    pub set_alpha_to_one: bool,
}

impl SamplerConfig {
    /// SD1.5's `scheduler_config.json` as diffusers' StableDiffusionPipeline reads it:
    /// leading spacing, steps_offset 1, set_alpha_to_one false.
    pub fn sd15() -> SamplerConfig {
        SamplerConfig {
            timestep_spacing: TimestepSpacing::Leading,
            steps_offset: 1,
            set_alpha_to_one: false,
        }
    }
}

impl Default for SamplerConfig {
    fn default() -> Self {
        Self::sd15()
    }
}

/// A sampler with its timesteps set (diffusers' scheduler after `set_timesteps(n)`).
#[derive(Clone, Debug)]
pub struct Sampler {
    kind: SamplerKind,
    timesteps: Vec<f64>,
    /// Euler: σ_0..σ_{n−1} and the final 0. DDIM: empty.
    sigmas: Vec<f64>,
    /// x_next = a_i·x + b_i·ε.
    coefficients: Vec<(f64, f64)>,
    /// The model reads input_scale_i·x.
    input_scales: Vec<f64>,
    init_noise_sigma: f64,
}

impl Sampler {
    /// `steps` inference steps of `kind` over `schedule`. Errors when `steps` is 0, exceeds
    /// the schedule's length, or puts a DDIM timestep past its end (leading spacing with
    /// steps_offset 1 and steps = T, which diffusers cannot run either).
    pub fn new(
        kind: SamplerKind,
        schedule: &NoiseSchedule,
        config: &SamplerConfig,
        steps: usize,
    ) -> Result<Sampler, SampleError> {
        let t_max = schedule.num_train_timesteps();
        if steps == 0 || steps > t_max {
            return Err(SampleError::BadSetting {
                name: "steps",
                value: steps.to_string(),
                expected: format!("between 1 and the schedule's {t_max} training steps"),
            });
        }
        match kind {
            SamplerKind::Ddim => Self::ddim(schedule, config, steps),
            SamplerKind::Euler => Self::euler(schedule, config, steps),
        }
    }

    fn ddim(
        schedule: &NoiseSchedule,
        config: &SamplerConfig,
        n: usize,
    ) -> Result<Sampler, SampleError> {
        let t_max = schedule.num_train_timesteps();
        let ratio = t_max / n;
        let timesteps: Vec<usize> = match config.timestep_spacing {
            TimestepSpacing::Leading => (0..n)
                .rev()
                .map(|i| i * ratio + config.steps_offset)
                .collect(),
            TimestepSpacing::Linspace => linspace_desc(t_max, n)
                .into_iter()
                .map(|t| t.round_ties_even() as usize)
                .collect(),
        };
        let ac = schedule.alphas_cumprod();
        let final_alpha = if config.set_alpha_to_one { 1.0 } else { ac[0] };
        let mut coefficients = Vec::with_capacity(n);
        for &t in &timesteps {
            let a_t = schedule
                .alpha_bar(t)
                .ok_or_else(|| SampleError::BadSetting {
                    name: "steps",
                    value: n.to_string(),
                    expected: format!(
                        "fewer: with steps_offset {} the first DDIM timestep would be {t}, past \
                         the schedule's last ({})",
                        config.steps_offset,
                        t_max - 1
                    ),
                })?;
            let a_prev = t
                .checked_sub(ratio)
                .and_then(|p| schedule.alpha_bar(p))
                .unwrap_or(final_alpha);
            let (sa, sb) = (a_t.sqrt(), (1.0 - a_t).sqrt());
            let (pa, pb) = (a_prev.sqrt(), (1.0 - a_prev).sqrt());
            coefficients.push((pa / sa, pb - pa * sb / sa));
        }
        Ok(Sampler {
            kind: SamplerKind::Ddim,
            timesteps: timesteps.iter().map(|&t| t as f64).collect(),
            sigmas: Vec::new(),
            input_scales: vec![1.0; n],
            coefficients,
            init_noise_sigma: 1.0,
        })
    }

    fn euler(
        schedule: &NoiseSchedule,
        config: &SamplerConfig,
        n: usize,
    ) -> Result<Sampler, SampleError> {
        let t_max = schedule.num_train_timesteps();
        let ratio = t_max / n;
        let timesteps: Vec<f64> = match config.timestep_spacing {
            TimestepSpacing::Leading => (0..n)
                .rev()
                .map(|i| (i * ratio + config.steps_offset) as f64)
                .collect(),
            // np.linspace(..., dtype=float32): computed in f64, stored as f32.
            TimestepSpacing::Linspace => linspace_desc(t_max, n)
                .into_iter()
                .map(|t| t as f32 as f64)
                .collect(),
        };
        let table: Vec<f64> = (0..t_max)
            .map(|t| schedule.sigma(t).unwrap_or(f64::NAN))
            .collect();
        let mut sigmas: Vec<f64> = timesteps.iter().map(|&t| interp(t, &table)).collect();
        sigmas.push(0.0);
        let sigma_max = sigmas.iter().copied().fold(0.0, f64::max);
        let init_noise_sigma = match config.timestep_spacing {
            TimestepSpacing::Leading => (sigma_max * sigma_max + 1.0).sqrt(),
            TimestepSpacing::Linspace => sigma_max,
        };
        let input_scales = sigmas[..n]
            .iter()
            .map(|s| 1.0 / (s * s + 1.0).sqrt())
            .collect();
        let coefficients = sigmas.windows(2).map(|w| (1.0, w[1] - w[0])).collect();
        Ok(Sampler {
            kind: SamplerKind::Euler,
            timesteps,
            sigmas,
            coefficients,
            input_scales,
            init_noise_sigma,
        })
    }

    pub fn kind(&self) -> SamplerKind {
        self.kind
    }

    /// The number of steps.
    pub fn len(&self) -> usize {
        self.timesteps.len()
    }

    /// Never true: a sampler has at least one step.
    pub fn is_empty(&self) -> bool {
        self.timesteps.is_empty()
    }

    /// The timestep of each step, as the UNet reads it, first (noisiest) first.
    pub fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    /// Euler: σ of each step, then the final 0 (n + 1 values). DDIM: empty.
    pub fn sigmas(&self) -> &[f64] {
        &self.sigmas
    }

    /// The standard deviation of the initial latents: unit noise is multiplied by it.
    pub fn init_noise_sigma(&self) -> f64 {
        self.init_noise_sigma
    }

    /// The factor the model's input is multiplied by at step i (diffusers' `scale_model_input`):
    /// 1 for DDIM, 1/√(σ_i²+1) for Euler. None past the last step.
    pub fn model_input_scale(&self, i: usize) -> Option<f64> {
        self.input_scales.get(i).copied()
    }

    /// (a, b) with x_next = a·x + b·ε at step i. None past the last step.
    pub fn step_coefficients(&self, i: usize) -> Option<(f64, f64)> {
        self.coefficients.get(i).copied()
    }

    /// One step: the latents after step i from the latents x [N, ...] before it and the noise
    /// prediction ε (guidance already applied), same shape.
    pub fn step(
        &self,
        be: &dyn Backend,
        i: usize,
        x: &Tensor,
        eps: &Tensor,
    ) -> Result<Tensor, SampleError> {
        let (a, b) = self.step_coefficients(i).ok_or_else(|| self.past_end(i))?;
        let n = x.dims().first().copied().unwrap_or(0);
        Ok(be.add_noise(x, eps, &vec![a; n], &vec![b; n])?)
    }

    /// The whole loop from unit noise [N, C, h, w]: x = noise·init_noise_sigma, then for each
    /// step i, ε = `model(x·model_input_scale(i), timesteps[i])` and x = step(i, x, ε).
    /// `progress(i + 1, n)` is called after each step.
    pub fn run(
        &self,
        be: &dyn Backend,
        noise: &Tensor,
        model: &mut dyn FnMut(&Tensor, f64) -> Result<Tensor, SampleError>,
        mut progress: Option<&mut dyn FnMut(usize, usize)>,
    ) -> Result<Tensor, SampleError> {
        let mut x = be.scale(noise, self.init_noise_sigma)?;
        for (i, &t) in self.timesteps.iter().enumerate() {
            let scale = self.model_input_scale(i).ok_or_else(|| self.past_end(i))?;
            let eps = if scale == 1.0 {
                model(&x, t)?
            } else {
                model(&be.scale(&x, scale)?, t)?
            };
            x = self.step(be, i, &x, &eps)?;
            if let Some(p) = progress.as_deref_mut() {
                p(i + 1, self.len());
            }
        }
        Ok(x)
    }

    fn past_end(&self, i: usize) -> SampleError {
        SampleError::BadSetting {
            name: "step index",
            value: i.to_string(),
            expected: format!("below the sampler's {} steps", self.len()),
        }
    }
}

/// np.linspace(0, T−1, n)[::-1] in f64: i·((T−1)/(n−1)), the last exactly T−1.
fn linspace_desc(t_max: usize, n: usize) -> Vec<f64> {
    let stop = (t_max - 1) as f64;
    let mut v: Vec<f64> = if n == 1 {
        vec![0.0]
    } else {
        let step = stop / (n - 1) as f64;
        (0..n)
            .map(|i| if i + 1 == n { stop } else { i as f64 * step })
            .collect()
    };
    v.reverse();
    v
}

/// np.interp(x, 0..len, table): linear between integer points, clamped at both ends.
fn interp(x: f64, table: &[f64]) -> f64 {
    let last = table.len().saturating_sub(1);
    if table.is_empty() {
        return f64::NAN;
    }
    if x <= 0.0 {
        return table[0];
    }
    if x >= last as f64 {
        return table[last];
    }
    let i = x.floor() as usize;
    let f = x - i as f64;
    if f == 0.0 {
        table[i]
    } else {
        table[i] + f * (table[i + 1] - table[i])
    }
}

/// Classifier-free guidance: ε = ε_uncond + scale·(ε_cond − ε_uncond), computed as
/// (1−scale)·ε_uncond + scale·ε_cond. With scale 1 the result is ε_cond exactly.
pub fn guidance(
    be: &dyn Backend,
    uncond: &Tensor,
    cond: &Tensor,
    scale: f64,
) -> Result<Tensor, SampleError> {
    let n = cond.dims().first().copied().unwrap_or(0);
    Ok(be.add_noise(uncond, cond, &vec![1.0 - scale; n], &vec![scale; n])?)
}
