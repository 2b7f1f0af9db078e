//! Prodigy (prodigyopt 1.x's `Prodigy`): Adam whose step size d is estimated from the
//! distance travelled from the initial parameters p0. Two launches over the flat buffer
//! (`Backend::prodigy_moments`, then `Backend::prodigy_update`), with the scalar arithmetic
//! between them on the host in f64, as prodigyopt does it in Python floats. With
//! k the step (0-based), lr the scheduled rate and bc = sqrt(1−β2^(k+1))/(1−β1^(k+1)) when
//! `use_bias_correction` (else 1):
//!
//!   dlr = d·lr·bc;  r ← β3·r
//!   g = grad_scale·grad (+ wd·p when decouple=False)
//!   r ← r + (d/d0)·dlr·Σ g·(p0 − p)
//!   m ← β1·m + d(1−β1)·g;  v ← β2·v + d²(1−β2)·g²
//!   s ← β3·s + (d/d0)·dlr·g   ((d/d0)·d·g with safeguard_warmup)
//!   d̂ = d_coef·r / Σ|s|;  d ← max(d, d̂) while d = d0;  d_max ← max(d_max, d̂);
//!   d ← min(d_max, d·growth_rate)
//!   p ← p·(1 − wd·dlr) − dlr·m / (sqrt(v) + d·eps)     (decay only when decouple=True)
//!
//! (dlr of the update is the one computed before d changed; ε is scaled by the new d, as in
//! prodigyopt.) When Σ|s| = 0 (no gradient yet) the step stops before d and p change, as
//! prodigyopt returns early; with lr = 0 (a warm-up's first step) prodigyopt skips the
//! moments too, and so does this.
//!
//! State: `p0`, `m` (exp_avg), `v` (exp_avg_sq) and `s`, f32 per parameter; and `scalars`:
//! d, d_max, the running numerator r and k, each f64 stored exactly as three f32 parts
//! (hi + mid + lo) so that a resume is bit-exact.

use super::{restore_named, restore_scalars, scalars_tensor, Optimizer};
use crate::backend::{Backend, ProdigyBuffers, ProdigyMoments, ProdigyUpdate};
use crate::error::Result;
use crate::tensor::{DType, Tensor};

/// Prodigy's settings (prodigyopt's argument names).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProdigySettings {
    pub beta1: f64,
    pub beta2: f64,
    /// None: sqrt(β2), as prodigyopt.
    pub beta3: Option<f64>,
    pub eps: f64,
    pub weight_decay: f64,
    /// AdamW-style decay (true) or decay added to the gradient (false).
    pub decouple: bool,
    pub use_bias_correction: bool,
    pub safeguard_warmup: bool,
    /// The first estimate of d.
    pub d0: f64,
    pub d_coef: f64,
    /// Largest factor d may grow by in one step (inf: no limit).
    pub growth_rate: f64,
}

impl Default for ProdigySettings {
    /// prodigyopt's defaults.
    fn default() -> Self {
        ProdigySettings {
            beta1: 0.9,
            beta2: 0.999,
            beta3: None,
            eps: 1e-8,
            weight_decay: 0.0,
            decouple: true,
            use_bias_correction: false,
            safeguard_warmup: false,
            d0: 1e-6,
            d_coef: 1.0,
            growth_rate: f64::INFINITY,
        }
    }
}

/// Prodigy over one flat buffer.
pub struct Prodigy {
    pub settings: ProdigySettings,
    pub p0: Tensor,
    pub m: Tensor,
    pub v: Tensor,
    pub s: Tensor,
    /// The step-size estimate, its maximum so far, and the running numerator.
    d: f64,
    d_max: f64,
    numerator: f64,
    /// prodigyopt's k: steps that reached the update (for the bias correction).
    k: u64,
    /// The scalars as saved (see the module comment), refreshed after every step.
    scalars: Tensor,
    steps: u64,
}

impl Prodigy {
    /// Fresh state for `n` parameters: d = d0.
    pub fn new(be: &dyn Backend, n: usize, settings: ProdigySettings) -> Result<Prodigy> {
        let zeros = || be.zeros(&[n], DType::F32);
        let mut p = Prodigy {
            settings,
            p0: zeros()?,
            m: zeros()?,
            v: zeros()?,
            s: zeros()?,
            d: settings.d0,
            d_max: settings.d0,
            numerator: 0.0,
            k: 0,
            scalars: be.zeros(&[12], DType::F32)?,
            steps: 0,
        };
        p.store_scalars(be)?;
        Ok(p)
    }

    /// The current step-size estimate d.
    pub fn d(&self) -> f64 {
        self.d
    }

    fn store_scalars(&mut self, be: &dyn Backend) -> Result<()> {
        let xs = [self.d, self.d_max, self.numerator, self.k as f64];
        self.scalars = scalars_tensor(be, &xs)?;
        Ok(())
    }
}

impl Optimizer for Prodigy {
    fn name(&self) -> &'static str {
        "Prodigy"
    }

    fn describe(&self) -> String {
        let s = &self.settings;
        let beta3 = s.beta3.map_or("None".to_string(), |b| b.to_string());
        format!(
            "Prodigy(weight_decay={},betas=({},{}),beta3={beta3},eps={},decouple={},use_bias_correction={},safeguard_warmup={},d0={},d_coef={},growth_rate={})",
            s.weight_decay, s.beta1, s.beta2, s.eps, s.decouple, s.use_bias_correction,
            s.safeguard_warmup, s.d0, s.d_coef, s.growth_rate
        )
    }

    fn effective_lr(&self, lr: f64) -> f64 {
        self.d * lr
    }

    fn step(
        &mut self,
        be: &dyn Backend,
        params: &mut Tensor,
        grads: &Tensor,
        lr: f64,
        grad_scale: f64,
    ) -> Result<()> {
        let s = self.settings;
        if self.steps == 0 {
            self.p0 = be.tensor_from_f32(params.dims(), &be.to_f32_vec(params)?, DType::F32)?;
        }
        self.steps += 1;
        let beta3 = s.beta3.unwrap_or(s.beta2.sqrt());
        let k1 = self.k.saturating_add(1).min(i32::MAX as u64) as i32;
        let bc = if s.use_bias_correction {
            (1.0 - s.beta2.powi(k1)).sqrt() / (1.0 - s.beta1.powi(k1))
        } else {
            1.0
        };
        let d = self.d;
        let dlr = d * lr * bc;
        let mut numerator = self.numerator * beta3;
        if lr <= 0.0 {
            return Ok(());
        }
        let ratio = d / s.d0;
        let sums = be.prodigy_moments(
            ProdigyBuffers {
                params,
                p0: &self.p0,
                m: &mut self.m,
                v: &mut self.v,
                s: &mut self.s,
            },
            grads,
            &ProdigyMoments {
                beta1: s.beta1,
                beta2: s.beta2,
                beta3,
                d,
                s_scale: if s.safeguard_warmup {
                    ratio * d
                } else {
                    ratio * dlr
                },
                coupled_decay: if s.decouple { 0.0 } else { s.weight_decay },
                grad_scale,
            },
        )?;
        numerator += ratio * dlr * sums.dot;
        if sums.s_abs == 0.0 {
            return Ok(());
        }
        let d_hat = s.d_coef * numerator / sums.s_abs;
        let mut d_new = d;
        if d_new == s.d0 {
            d_new = d_new.max(d_hat);
        }
        self.d_max = self.d_max.max(d_hat);
        self.d = self.d_max.min(d_new * s.growth_rate);
        self.numerator = numerator;
        be.prodigy_update(
            params,
            &self.m,
            &self.v,
            &ProdigyUpdate {
                dlr,
                d_eps: self.d * s.eps,
                decay: if s.decouple { s.weight_decay } else { 0.0 },
            },
        )?;
        self.k += 1;
        self.store_scalars(be)
    }

    fn steps(&self) -> u64 {
        self.steps
    }

    fn state(&self) -> Vec<(&'static str, &Tensor)> {
        vec![
            ("p0", &self.p0),
            ("m", &self.m),
            ("v", &self.v),
            ("s", &self.s),
            ("scalars", &self.scalars),
        ]
    }

    fn restore(
        &mut self,
        be: &dyn Backend,
        steps: u64,
        get: &mut dyn FnMut(&'static str) -> Result<Tensor>,
    ) -> Result<()> {
        restore_named(
            be,
            get,
            &mut [
                ("p0", &mut self.p0),
                ("m", &mut self.m),
                ("v", &mut self.v),
                ("s", &mut self.s),
            ],
        )?;
        let [d, d_max, numerator, k] = restore_scalars(get, "Prodigy's d, d_max, numerator and k")?;
        (self.d, self.d_max, self.numerator, self.k) = (d, d_max, numerator, k as u64);
        self.store_scalars(be)?;
        self.steps = steps;
        Ok(())
    }
}
