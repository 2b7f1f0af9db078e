//! DPM-Solver 2M and DPM-Solver++ 2M, following diffusers' `DPMSolverMultistepScheduler`
//! (diffusers 0.39) formula for formula with its defaults for SD: solver_order 2, midpoint
//! solver, lower_order_final, epsilon prediction, no thresholding; tests/sample.rs checks the
//! timesteps, σ and whole trajectories against values diffusers computed.
//!
//! Timesteps for n steps over T training steps:
//! - `Linspace`: n+1 values evenly spaced from T−1 to 0, rounded half to even, the last (0)
//!   dropped. For n = 10: 999, 899, 799, …, 100.
//! - `Leading`: r = T div (n+1), t_i = (n−i)·r + steps_offset (note n+1, unlike DDIM).
//! - Karras (`dpmsolver++_karras`, diffusers' `use_karras_sigmas`; the spacing is not used):
//!   σ_i = (σ_max^(1/7) + i/(n−1)·(σ_min^(1/7) − σ_max^(1/7)))^7 with σ_max = σ(T−1),
//!   σ_min = σ(0), and t_i = σ_i's timestep by interpolation of ln σ, rounded half to even.
//!
//! σ_i = σ(t_i) (for Karras, as drawn), then a final σ_n: 0 for DPM-Solver++, σ(0) for
//! DPM-Solver (diffusers refuses DPM-Solver with a final 0, `final_sigmas_type="zero"`, its
//! default, and asks for `sigma_min`: kohya's `dpmsolver` does not run on diffusers 0.39).
//!
//! In the variance-preserving form: α_i = 1/√(σ_i²+1), s_i = σ_i·α_i, λ_i = ln α_i − ln s_i.
//! The model reads x unscaled; the initial latents are unit noise. At step i with ε the
//! model's prediction, m_i = x₀ = (x − s_i·ε)/α_i (DPM-Solver++) or ε (DPM-Solver), and with
//! h = λ_{i+1} − λ_i:
//! - first order (the first step, and the last step of DPM-Solver++ or of a run under 15
//!   steps): x_next = (s_{i+1}/s_i)·x − α_{i+1}·(e^−h − 1)·m_i (DPM-Solver++),
//!   x_next = (α_{i+1}/α_i)·x − s_{i+1}·(e^h − 1)·m_i (DPM-Solver);
//! - second order otherwise, with r = (λ_i − λ_{i−1})/h and D = m_i + (m_i − m_{i−1})/(2r)
//!   in place of m_i.
//!
//! With a final σ of 0 (s = 0, λ = ∞): e^−h = 0 and the last step returns x₀.

use crate::sample::grid::{interp, karras, linspace, sigma_to_t};
use crate::sample::sampler::{
    Sampler, SamplerConfig, SamplerKind, StepCoefficients, TimestepSpacing,
};
use crate::sample::schedule::NoiseSchedule;
use crate::sample::SampleError;

/// diffusers runs the last step at first order below this many steps (`lower_order_final`).
const LOWER_ORDER_FINAL_BELOW: usize = 15;

/// A DPM-Solver (++) 2M sampler of `n` steps (n between 1 and T, checked by the caller).
pub(super) fn sampler(
    kind: SamplerKind,
    schedule: &NoiseSchedule,
    config: &SamplerConfig,
    n: usize,
) -> Result<Sampler, SampleError> {
    let plus = kind != SamplerKind::DpmSolver;
    let table = schedule.sigmas();
    let (timesteps, mut sigmas) = if kind == SamplerKind::DpmSolverPPKarras {
        karras_steps(&table, n)
    } else {
        let timesteps = timesteps(schedule.num_train_timesteps(), config, n)?;
        let sigmas = timesteps.iter().map(|&t| interp(t, &table)).collect();
        (timesteps, sigmas)
    };
    sigmas.push(if plus { 0.0 } else { table[0] });

    let vp = |sigma: f64| {
        let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
        let s = sigma * alpha;
        (alpha, s, alpha.ln() - s.ln())
    };
    let final_zero = plus;
    let steps = (0..n)
        .map(|i| {
            let (a0, s0, l0) = vp(sigmas[i]);
            let (a1, s1, l1) = vp(sigmas[i + 1]);
            let h = l1 - l0;
            let lower_final = i + 1 == n && (final_zero || n < LOWER_ORDER_FINAL_BELOW);
            // D = (1 + 1/(2r))·m_i − 1/(2r)·m_{i−1} at second order, m_i at first.
            let half_inv_r = if i == 0 || lower_final {
                0.0
            } else {
                let (_, _, l_prev) = vp(sigmas[i - 1]);
                0.5 * h / (l0 - l_prev)
            };
            let (x, d) = if plus {
                (s1 / s0, -(a1 * ((-h).exp() - 1.0)))
            } else {
                (a1 / a0, -(s1 * (h.exp() - 1.0)))
            };
            let (pred_x, pred_eps) = if plus {
                (1.0 / a0, -s0 / a0)
            } else {
                (0.0, 1.0)
            };
            StepCoefficients {
                pred_x,
                pred_eps,
                x,
                this: d * (1.0 + half_inv_r),
                prev: -d * half_inv_r,
                noise: 0.0,
            }
        })
        .collect();
    Ok(Sampler {
        kind,
        timesteps,
        sigmas,
        steps,
        input_scales: vec![1.0; n],
        init_noise_sigma: 1.0,
    })
}

/// The n timesteps of the spacing (see the module documentation).
fn timesteps(t_max: usize, config: &SamplerConfig, n: usize) -> Result<Vec<f64>, SampleError> {
    let mut t: Vec<f64> = match config.timestep_spacing {
        TimestepSpacing::Linspace => linspace(0.0, (t_max - 1) as f64, n + 1)
            .into_iter()
            .map(f64::round_ties_even)
            .collect(),
        TimestepSpacing::Leading => {
            let ratio = t_max / (n + 1);
            (0..=n)
                .map(|k| (k * ratio + config.steps_offset) as f64)
                .collect()
        }
    };
    t.reverse();
    t.pop();
    let last = (t_max - 1) as f64;
    if t.first().is_some_and(|&first| first > last) || t.windows(2).any(|w| w[0] <= w[1]) {
        return Err(SampleError::BadSetting {
            name: "steps",
            value: n.to_string(),
            expected: format!(
                "fewer for DPM-Solver with this spacing: its timesteps would repeat or pass the \
                 schedule's last ({last})"
            ),
        });
    }
    Ok(t)
}

/// Karras σ from σ(T−1) down to σ(0) and their rounded timesteps.
fn karras_steps(table: &[f64], n: usize) -> (Vec<f64>, Vec<f64>) {
    let log_sigmas: Vec<f64> = table.iter().map(|s| s.ln()).collect();
    let sigmas = karras(table[0], table[table.len() - 1], n);
    let timesteps = sigmas
        .iter()
        .map(|&s| sigma_to_t(s, &log_sigmas).round_ties_even())
        .collect();
    (timesteps, sigmas)
}
