//! The samplers, following diffusers' schedulers (diffusers 0.39) formula for formula: DDIM
//! (η = 0, `DDIMScheduler`), Euler (`EulerDiscreteScheduler`), Euler ancestral
//! (`EulerAncestralDiscreteScheduler`) here, DPM-Solver (++) 2M in dpm.rs. tests/sample.rs
//! checks the timesteps, sigmas and whole trajectories against values diffusers computed
//! (tests/fixtures/schedulers.json). Names as kohya's `get_my_scheduler` maps them
//! ([`SamplerKind`]).
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
//! Euler ancestral: Euler's timesteps, σ, input scale and initial latents; from σ = σ_i to
//!   σ' = σ_{i+1}: σ_up = √(σ'²·(σ² − σ'²)/σ²), σ_down = √(σ'² − σ_up²),
//!   x_next = x + (σ_down − σ)·ε + σ_up·z with z fresh unit noise ([`StepNoise`]; the last
//!   step, σ' = 0, draws none). When sampling, z comes from the generator that drew the
//!   initial latents, so an image is reproducible from its seed (not torch's noise: the
//!   images differ from diffusers' for the same seed).
//!
//! Every step is linear in x, ε, the previous step's prediction and z
//! ([`StepCoefficients`]), done with the backend's `add_noise` so that the loop runs
//! wherever the tensors live.
//!
//! Not implemented: η > 0, diffusers' `clip_sample` (kohya turns it on for DDIM; SD1.5's
//! config and diffusers' StableDiffusionPipeline turn it off), v-prediction, "trailing" spacing
//! (numpy's float `arange` gives some step counts an extra timestep there), Karras σ for
//! anything but DPM-Solver++.

use crate::backend::Backend;
use crate::rng::Rng;
use crate::sample::grid::{interp, linspace_desc};
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
    /// Euler ancestral (`EulerAncestralDiscreteScheduler`, A1111's "Euler a"): each step
    /// goes below the next σ and adds fresh noise back up to it.
    EulerAncestral,
    /// DPM-Solver 2M (`DPMSolverMultistepScheduler`, algorithm_type "dpmsolver"), noise
    /// prediction; its last step lands on σ_0, not 0 (see dpm.rs).
    DpmSolver,
    /// DPM-Solver++ 2M (`DPMSolverMultistepScheduler`'s default, A1111's "DPM++ 2M").
    DpmSolverPP,
    /// DPM-Solver++ 2M on Karras et al.'s σ schedule (`use_karras_sigmas`, A1111's
    /// "DPM++ 2M Karras"). lorafuse's name: kohya has no Karras sampler.
    DpmSolverPPKarras,
}

/// kohya's sampler names (`get_my_scheduler`) that lorafuse does not implement: why, and which
/// to use instead.
const NOT_IMPLEMENTED: &[(&[&str], &str)] = &[
    (
        &["ddpm"],
        "DDPM is not implemented: it needs hundreds of steps (kohya leaves it out of its --sample_sampler choices); use euler_a, also stochastic, or ddim",
    ),
    (
        &["pndm"],
        "PNDM (PLMS) is not implemented; use dpmsolver++, a multistep solver that does better in few steps",
    ),
    (
        &["lms", "k_lms"],
        "LMS is not implemented; use dpmsolver++ (also multistep) or euler",
    ),
    (
        &["heun"],
        "Heun (two model calls per step) is not implemented; use dpmsolver++, second order with one call per step",
    ),
    (
        &["dpm_2", "k_dpm_2"],
        "DPM2 (KDPM2DiscreteScheduler, two model calls per step) is not implemented; use dpmsolver++ or dpmsolver++_karras",
    ),
    (
        &["dpm_2_a", "k_dpm_2_a"],
        "DPM2 ancestral is not implemented; use euler_a (ancestral) or dpmsolver++",
    ),
    (
        &["dpmsingle"],
        "single-step DPM-Solver is not implemented; use dpmsolver++ (multistep DPM-Solver++)",
    ),
];

impl SamplerKind {
    /// Every sampler, in the order messages and README.md list them.
    pub const ALL: [SamplerKind; 6] = [
        SamplerKind::Ddim,
        SamplerKind::Euler,
        SamplerKind::EulerAncestral,
        SamplerKind::DpmSolver,
        SamplerKind::DpmSolverPP,
        SamplerKind::DpmSolverPPKarras,
    ];

    /// kohya's name for it (`--ss`, `--sample_sampler`); `dpmsolver++_karras` is lorafuse's.
    pub fn name(self) -> &'static str {
        match self {
            SamplerKind::Ddim => "ddim",
            SamplerKind::Euler => "euler",
            SamplerKind::EulerAncestral => "euler_a",
            SamplerKind::DpmSolver => "dpmsolver",
            SamplerKind::DpmSolverPP => "dpmsolver++",
            SamplerKind::DpmSolverPPKarras => "dpmsolver++_karras",
        }
    }

    /// The other spellings accepted: kohya's `k_` names, A1111's and ComfyUI's for DPM++ 2M
    /// (Karras).
    pub fn aliases(self) -> &'static [&'static str] {
        match self {
            SamplerKind::Ddim | SamplerKind::DpmSolver => &[],
            SamplerKind::Euler => &["k_euler"],
            SamplerKind::EulerAncestral => &["k_euler_a"],
            SamplerKind::DpmSolverPP => &["dpmpp_2m", "k_dpmpp_2m"],
            SamplerKind::DpmSolverPPKarras => &[
                "dpmpp_2m_karras",
                "k_dpmpp_2m_karras",
                "k_dpmpp_2m_ka",
                "k_dpm_2m_karras",
            ],
        }
    }

    /// The sampler of a name or alias, in any case.
    pub fn parse(name: &str) -> Option<SamplerKind> {
        let lower = name.trim().to_ascii_lowercase();
        Self::ALL
            .into_iter()
            .find(|k| k.name() == lower || k.aliases().contains(&lower.as_str()))
    }

    /// For a kohya sampler lorafuse lacks: why, and what to use instead.
    pub fn not_implemented(name: &str) -> Option<&'static str> {
        let lower = name.trim().to_ascii_lowercase();
        NOT_IMPLEMENTED
            .iter()
            .find(|(names, _)| names.contains(&lower.as_str()))
            .map(|(_, why)| *why)
    }

    /// The accepted names, as messages list them: "ddim, euler (k_euler), …".
    pub fn accepted() -> String {
        Self::ALL
            .iter()
            .map(|k| match k.aliases().first() {
                Some(a) => format!("{} ({a})", k.name()),
                None => k.name().to_string(),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The sampler of a name (case-insensitive), or what to write instead: the accepted
    /// names, and for a kohya sampler lorafuse lacks, why and which to use.
    pub fn from_name(name: &str) -> Result<SamplerKind, String> {
        if let Some(k) = Self::parse(name) {
            return Ok(k);
        }
        let accepted = format!("one of {}", Self::accepted());
        Err(match Self::not_implemented(name) {
            Some(why) => format!("{accepted}; kohya's sampler {name:?}: {why}"),
            None => accepted,
        })
    }

    /// Draws fresh noise at every step but the last.
    pub fn is_ancestral(self) -> bool {
        self == SamplerKind::EulerAncestral
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

/// One step as a linear map (diffusers' `step` unrolled for the sampler's settings), with ε the
/// model's prediction, z fresh unit noise and m_{i−1} the previous step's m:
///
///   m_i    = pred_x·x + pred_eps·ε    (what the step keeps of the prediction: ε itself, or
///                                      DPM-Solver++'s x₀)
///   x_next = x·x + this·m_i + prev·m_{i−1} + noise·z
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepCoefficients {
    pub pred_x: f64,
    pub pred_eps: f64,
    pub x: f64,
    pub this: f64,
    /// Non-zero only on DPM-Solver's second-order steps.
    pub prev: f64,
    /// Non-zero only on Euler ancestral's steps (σ_up).
    pub noise: f64,
}

impl StepCoefficients {
    /// x_next = a·x + b·ε: a step that keeps ε and reads nothing else (DDIM, Euler).
    pub(super) fn plain(a: f64, b: f64) -> StepCoefficients {
        StepCoefficients {
            pred_x: 0.0,
            pred_eps: 1.0,
            x: a,
            this: b,
            prev: 0.0,
            noise: 0.0,
        }
    }

    /// m is ε itself.
    fn keeps_eps(&self) -> bool {
        self.pred_x == 0.0 && self.pred_eps == 1.0
    }
}

/// Where an ancestral sampler's fresh noise comes from: the crate's [`Rng`] when sampling; a
/// test can replay recorded noise.
pub trait StepNoise {
    /// `n` independent standard normal values.
    fn unit_noise(&mut self, n: usize) -> Vec<f64>;
}

impl StepNoise for Rng {
    fn unit_noise(&mut self, n: usize) -> Vec<f64> {
        self.normal_vec(n)
    }
}

/// A sampler with its timesteps set (diffusers' scheduler after `set_timesteps(n)`).
#[derive(Clone, Debug)]
pub struct Sampler {
    pub(super) kind: SamplerKind,
    pub(super) timesteps: Vec<f64>,
    /// σ_0..σ_{n−1} and the final σ (0, or σ_0 of the schedule for DPM-Solver). DDIM: empty.
    pub(super) sigmas: Vec<f64>,
    pub(super) steps: Vec<StepCoefficients>,
    /// The model reads input_scale_i·x.
    pub(super) input_scales: Vec<f64>,
    pub(super) init_noise_sigma: f64,
}

impl Sampler {
    /// `steps` inference steps of `kind` over `schedule`. Errors when `steps` is 0, exceeds
    /// the schedule's length, or puts a timestep past its end or twice (leading spacing with
    /// steps_offset 1: DDIM at steps = T, which diffusers cannot run either; DPM-Solver at
    /// steps ≥ T − 1).
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
            SamplerKind::Euler | SamplerKind::EulerAncestral => {
                Self::euler(kind, schedule, config, steps)
            }
            SamplerKind::DpmSolver | SamplerKind::DpmSolverPP | SamplerKind::DpmSolverPPKarras => {
                crate::sample::dpm::sampler(kind, schedule, config, steps)
            }
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
        let mut steps = Vec::with_capacity(n);
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
            steps.push(StepCoefficients::plain(pa / sa, pb - pa * sb / sa));
        }
        Ok(Sampler {
            kind: SamplerKind::Ddim,
            timesteps: timesteps.iter().map(|&t| t as f64).collect(),
            sigmas: Vec::new(),
            input_scales: vec![1.0; n],
            steps,
            init_noise_sigma: 1.0,
        })
    }

    /// Euler and Euler ancestral: the same timesteps, σ, input scales and initial noise.
    fn euler(
        kind: SamplerKind,
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
        let table = schedule.sigmas();
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
        let steps = sigmas
            .windows(2)
            .map(|w| {
                let (from, to) = (w[0], w[1]);
                if kind.is_ancestral() {
                    // Down to σ_down with the prediction, then noise σ_up back up to σ_to.
                    let up = (to * to * (from * from - to * to) / (from * from)).sqrt();
                    let down = (to * to - up * up).sqrt();
                    StepCoefficients {
                        noise: up,
                        ..StepCoefficients::plain(1.0, down - from)
                    }
                } else {
                    StepCoefficients::plain(1.0, to - from)
                }
            })
            .collect();
        Ok(Sampler {
            kind,
            timesteps,
            sigmas,
            steps,
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

    /// σ of each step, then the final σ (n + 1 values): 0 for Euler (ancestral) and
    /// DPM-Solver++, the schedule's σ_0 for DPM-Solver. DDIM: empty.
    pub fn sigmas(&self) -> &[f64] {
        &self.sigmas
    }

    /// The standard deviation of the initial latents: unit noise is multiplied by it.
    pub fn init_noise_sigma(&self) -> f64 {
        self.init_noise_sigma
    }

    /// The factor the model's input is multiplied by at step i (diffusers' `scale_model_input`):
    /// 1/√(σ_i²+1) for Euler (ancestral), 1 for the others. None past the last step.
    pub fn model_input_scale(&self, i: usize) -> Option<f64> {
        self.input_scales.get(i).copied()
    }

    /// Step i as a linear map. None past the last step.
    pub fn coefficients(&self, i: usize) -> Option<StepCoefficients> {
        self.steps.get(i).copied()
    }

    /// (a, b) with x_next = a·x + b·ε at step i, for a step of that form: every step of DDIM
    /// and Euler, DPM-Solver's first-order ones. None past the last step, or for a step that
    /// also reads the previous prediction or noise.
    pub fn step_coefficients(&self, i: usize) -> Option<(f64, f64)> {
        let c = self.coefficients(i)?;
        (c.prev == 0.0 && c.noise == 0.0).then_some((c.x + c.this * c.pred_x, c.this * c.pred_eps))
    }

    /// What step i keeps of the noise prediction ε for the latents x: m_i (ε itself, or
    /// DPM-Solver++'s x₀), the `prev` of the step after it.
    pub fn prediction(
        &self,
        be: &dyn Backend,
        i: usize,
        x: &Tensor,
        eps: Tensor,
    ) -> Result<Tensor, SampleError> {
        let c = self.coefficients(i).ok_or_else(|| self.past_end(i))?;
        Ok(predicted(be, &c, x, &eps)?.unwrap_or(eps))
    }

    /// Step i from the latents x [N, ...], this step's prediction m ([`Sampler::prediction`]),
    /// the previous step's m (read by DPM-Solver's second-order steps) and unit noise z (read
    /// by Euler ancestral's steps but the last), all of x's shape. An input the step does not
    /// read may be None; one it reads is an error when missing.
    pub fn advance(
        &self,
        be: &dyn Backend,
        i: usize,
        x: &Tensor,
        m: &Tensor,
        prev: Option<&Tensor>,
        noise: Option<&Tensor>,
    ) -> Result<Tensor, SampleError> {
        let c = self.coefficients(i).ok_or_else(|| self.past_end(i))?;
        let n = batch(x);
        let mut y = be.add_noise(x, m, &vec![c.x; n], &vec![c.this; n])?;
        for (coef, input, what) in [
            (c.prev, prev, "the previous step's prediction"),
            (c.noise, noise, "fresh noise"),
        ] {
            if coef != 0.0 {
                let input = input.ok_or_else(|| self.needs(i, what))?;
                y = be.add_noise(&y, input, &vec![1.0; n], &vec![coef; n])?;
            }
        }
        Ok(y)
    }

    /// One step that reads only x and ε (every step of DDIM and Euler): the latents after step
    /// i from the latents x [N, ...] before it and the noise prediction ε (guidance already
    /// applied), same shape. Multistep and ancestral steps: [`Sampler::advance`].
    pub fn step(
        &self,
        be: &dyn Backend,
        i: usize,
        x: &Tensor,
        eps: &Tensor,
    ) -> Result<Tensor, SampleError> {
        let c = self.coefficients(i).ok_or_else(|| self.past_end(i))?;
        match predicted(be, &c, x, eps)? {
            Some(m) => self.advance(be, i, x, &m, None, None),
            None => self.advance(be, i, x, eps, None, None),
        }
    }

    /// The whole loop from unit noise [N, C, h, w] for a sampler that draws no noise of its
    /// own (all but Euler ancestral): see [`Sampler::run_with`].
    pub fn run(
        &self,
        be: &dyn Backend,
        noise: &Tensor,
        model: &mut dyn FnMut(&Tensor, f64) -> Result<Tensor, SampleError>,
        progress: Option<&mut dyn FnMut(usize, usize)>,
    ) -> Result<Tensor, SampleError> {
        self.run_with(be, noise, None, model, progress)
    }

    /// The whole loop from unit noise [N, C, h, w]: x = noise·init_noise_sigma, then for each
    /// step i, ε = `model(x·model_input_scale(i), timesteps[i])`, m = prediction(i, x, ε) and
    /// x = advance(i, x, m, previous m, z) with z drawn from `step_noise` when the step reads
    /// it. `progress(i + 1, n)` is called after each step.
    pub fn run_with(
        &self,
        be: &dyn Backend,
        noise: &Tensor,
        mut step_noise: Option<&mut dyn StepNoise>,
        model: &mut dyn FnMut(&Tensor, f64) -> Result<Tensor, SampleError>,
        mut progress: Option<&mut dyn FnMut(usize, usize)>,
    ) -> Result<Tensor, SampleError> {
        let mut x = be.scale(noise, self.init_noise_sigma)?;
        let mut prev: Option<Tensor> = None;
        for (i, &t) in self.timesteps.iter().enumerate() {
            let c = self.coefficients(i).ok_or_else(|| self.past_end(i))?;
            let scale = self.model_input_scale(i).ok_or_else(|| self.past_end(i))?;
            let eps = if scale == 1.0 {
                model(&x, t)?
            } else {
                model(&be.scale(&x, scale)?, t)?
            };
            let m = self.prediction(be, i, &x, eps)?;
            let z = if c.noise != 0.0 {
                let source = step_noise
                    .as_deref_mut()
                    .ok_or_else(|| self.needs(i, "a noise source (Sampler::run_with)"))?;
                let values: Vec<f32> = source
                    .unit_noise(x.numel())
                    .into_iter()
                    .map(|v| v as f32)
                    .collect();
                Some(be.tensor_from_f32(x.dims(), &values, x.dtype())?)
            } else {
                None
            };
            x = self.advance(be, i, &x, &m, prev.as_ref(), z.as_ref())?;
            prev = Some(m);
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

    fn needs(&self, i: usize, what: &str) -> SampleError {
        SampleError::BadSetting {
            name: "sampler step",
            value: format!("{} step {i}", self.kind),
            expected: format!("{what} for this step"),
        }
    }
}

/// m = pred_x·x + pred_eps·ε, or None when m is ε itself.
fn predicted(
    be: &dyn Backend,
    c: &StepCoefficients,
    x: &Tensor,
    eps: &Tensor,
) -> Result<Option<Tensor>, SampleError> {
    if c.keeps_eps() {
        return Ok(None);
    }
    let n = batch(x);
    Ok(Some(be.add_noise(
        x,
        eps,
        &vec![c.pred_x; n],
        &vec![c.pred_eps; n],
    )?))
}

/// The batch size: the first dimension.
fn batch(x: &Tensor) -> usize {
    x.dims().first().copied().unwrap_or(0)
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
