//! DAdaptAdam (facebookresearch's dadaptation 3.x `DAdaptAdam`): Adam whose step size d is
//! estimated by D-Adaptation. Two launches over the flat buffer (`Backend::dadapt_moments`,
//! then `Backend::prodigy_update`), the scalar arithmetic between them on the host in f64, as
//! dadaptation does it in Python floats. With k the step (0-based), lr the scheduled rate,
//! sb2 = sqrt(β2) and bc = sqrt(1−β2^(k+1))/(1−β1^(k+1)) when `use_bias_correction` (else 1):
//!
//!   dlr = d·lr·bc;  g = grad_scale·grad (+ wd·p when decouple=False)
//!   a = Σ g·s/(sqrt(v) + eps)                         (s, v before this step)
//!   m ← β1·m + dlr(1−β1)·g;  v ← β2·v + (1−β2)·g²;  s ← sb2·s + dlr(1−sb2)·g
//!   r ← sb2·r + (1−sb2)·dlr·a
//!   d̂ = r / ((1−sb2)·Σ|s|);  d ← max(d, min(d̂, d·growth_rate))
//!   p ← p·(1 − wd·dlr) − m / (sqrt(v) + eps)            (decay only when decouple=True)
//!
//! When Σ|s| = 0 (no gradient yet) the step stops before r, d, k and p change, as dadaptation
//! returns early; with lr = 0 (a warm-up's first step) dadaptation skips the moments too, and
//! so does this. `log_every` (dadaptation's logging) is accepted and ignored.
//!
//! Like Prodigy here, each learning-rate group (UNet, text encoder) has its own d; kohya runs
//! one DAdaptAdam over both groups with one d (and dadaptation refuses two different nonzero
//! rates).
//!
//! State: `m` (exp_avg), `v` (exp_avg_sq) and `s`, f32 per parameter; and `scalars`: d, the
//! running numerator r and k, each f64 stored exactly as three f32 parts.

use super::{restore_named, restore_scalars, scalars_tensor, Optimizer};
use crate::backend::{Backend, DAdaptBuffers, DAdaptMoments, ProdigyUpdate};
use crate::error::Result;
use crate::tensor::{DType, Tensor};

/// DAdaptAdam's settings (dadaptation's argument names).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DAdaptSettings {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// AdamW-style decay (true) or decay added to the gradient (false, the default).
    pub decouple: bool,
    pub use_bias_correction: bool,
    /// The first estimate of d.
    pub d0: f64,
    /// Largest factor d may grow by in one step (inf: no limit).
    pub growth_rate: f64,
}

impl Default for DAdaptSettings {
    /// dadaptation's defaults.
    fn default() -> Self {
        DAdaptSettings {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            decouple: false,
            use_bias_correction: false,
            d0: 1e-6,
            growth_rate: f64::INFINITY,
        }
    }
}

/// DAdaptAdam over one flat buffer.
pub struct DAdaptAdam {
    pub settings: DAdaptSettings,
    pub m: Tensor,
    pub v: Tensor,
    pub s: Tensor,
    d: f64,
    numerator: f64,
    k: u64,
    /// d, numerator and k as saved, refreshed after every step.
    scalars: Tensor,
    steps: u64,
}

impl DAdaptAdam {
    /// Fresh state for `n` parameters: d = d0.
    pub fn new(be: &dyn Backend, n: usize, settings: DAdaptSettings) -> Result<DAdaptAdam> {
        let zeros = || be.zeros(&[n], DType::F32);
        let mut o = DAdaptAdam {
            settings,
            m: zeros()?,
            v: zeros()?,
            s: zeros()?,
            d: settings.d0,
            numerator: 0.0,
            k: 0,
            scalars: be.zeros(&[9], DType::F32)?,
            steps: 0,
        };
        o.store_scalars(be)?;
        Ok(o)
    }

    /// The current step-size estimate d.
    pub fn d(&self) -> f64 {
        self.d
    }

    fn store_scalars(&mut self, be: &dyn Backend) -> Result<()> {
        self.scalars = scalars_tensor(be, &[self.d, self.numerator, self.k as f64])?;
        Ok(())
    }
}

impl Optimizer for DAdaptAdam {
    fn name(&self) -> &'static str {
        "DAdaptAdam"
    }

    fn describe(&self) -> String {
        let s = &self.settings;
        format!(
            "DAdaptAdam(weight_decay={},betas=({},{}),eps={},decouple={},use_bias_correction={},d0={},growth_rate={})",
            s.weight_decay, s.beta1, s.beta2, s.eps, s.decouple, s.use_bias_correction, s.d0,
            s.growth_rate
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
        self.steps += 1;
        let k1 = self.k.saturating_add(1).min(i32::MAX as u64) as i32;
        let bc = if s.use_bias_correction {
            (1.0 - s.beta2.powi(k1)).sqrt() / (1.0 - s.beta1.powi(k1))
        } else {
            1.0
        };
        let dlr = self.d * lr * bc;
        let sb2 = s.beta2.sqrt();
        if lr <= 0.0 {
            return Ok(());
        }
        let sums = be.dadapt_moments(
            DAdaptBuffers {
                params,
                m: &mut self.m,
                v: &mut self.v,
                s: &mut self.s,
            },
            grads,
            &DAdaptMoments {
                beta1: s.beta1,
                beta2: s.beta2,
                eps: s.eps,
                dlr,
                coupled_decay: if s.decouple { 0.0 } else { s.weight_decay },
                grad_scale,
            },
        )?;
        let numerator = sb2 * self.numerator + (1.0 - sb2) * dlr * sums.dot;
        if sums.s_abs == 0.0 {
            return Ok(());
        }
        let d_hat = numerator / ((1.0 - sb2) * sums.s_abs);
        self.d = self.d.max(d_hat.min(self.d * s.growth_rate));
        self.numerator = numerator;
        be.prodigy_update(
            params,
            &self.m,
            &self.v,
            &ProdigyUpdate {
                dlr: 1.0,
                d_eps: s.eps,
                decay: if s.decouple {
                    s.weight_decay * dlr
                } else {
                    0.0
                },
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
            &mut [("m", &mut self.m), ("v", &mut self.v), ("s", &mut self.s)],
        )?;
        let [d, numerator, k] = restore_scalars(get, "DAdaptAdam's d, numerator and k")?;
        (self.d, self.numerator, self.k) = (d, numerator, k as u64);
        self.store_scalars(be)?;
        self.steps = steps;
        Ok(())
    }
}
