//! Adafactor (transformers' `Adafactor`, the class kohya's `optimizer_type = "Adafactor"`
//! builds): second moments factored into row and column means for every tensor of two or
//! more dims, a rate relative to each tensor's RMS, the update clipped by its own RMS. One
//! launch per step (`Backend::adafactor_step`; the formulas are on `backend::AdafactorStep`),
//! over the flat buffer cut into its tensors by the group's [`super::Layout`].
//!
//! At step k (1-based): with relative_step the rate is min(1e-2, 1/sqrt(k)) (min(1e-6·k,
//! 1/sqrt(k)) with warmup_init) and the scheduled rate is not used; otherwise the scheduled
//! rate. With scale_parameter it is multiplied by max(eps2, RMS(p)) per tensor.
//! β = 1 − k^decay_rate.
//!
//! State: `row` and `col` (exp_avg_sq_row / exp_avg_sq_col of every factored tensor, end to
//! end), `v` (exp_avg_sq of the 1-D tensors), `m` (exp_avg, with beta1), each f32 and saved
//! only when it holds values; the step count k is the optimizer's step count. transformers'
//! per-tensor `RMS` is the parameters' RMS taken at the start of each step, so it needs no
//! saving.

use super::{restore_named, Layout, Optimizer};
use crate::backend::{AdafactorBuffers, AdafactorStep, AdafactorTable, Backend};
use crate::error::Result;
use crate::tensor::{DType, Tensor};

/// Adafactor's settings (transformers' argument names; kohya's defaults).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdafactorSettings {
    /// eps[0]: added to the squared gradient.
    pub eps1: f64,
    /// eps[1]: the smallest parameter RMS the rate is scaled by.
    pub eps2: f64,
    pub clip_threshold: f64,
    pub decay_rate: f64,
    /// The first moment's decay; None: no first moment.
    pub beta1: Option<f64>,
    pub weight_decay: f64,
    pub scale_parameter: bool,
    pub relative_step: bool,
    pub warmup_init: bool,
}

impl Default for AdafactorSettings {
    /// transformers' defaults, which kohya keeps (relative_step True).
    fn default() -> Self {
        AdafactorSettings {
            eps1: 1e-30,
            eps2: 1e-3,
            clip_threshold: 1.0,
            decay_rate: -0.8,
            beta1: None,
            weight_decay: 0.0,
            scale_parameter: true,
            relative_step: true,
            warmup_init: false,
        }
    }
}

impl AdafactorSettings {
    /// The step size before the parameter scale at step `k` (1-based) and scheduled rate `lr`.
    pub fn rel_step(&self, k: u64, lr: f64) -> f64 {
        if !self.relative_step {
            return lr;
        }
        let k = k as f64;
        let min_step = if self.warmup_init { 1e-6 * k } else { 1e-2 };
        min_step.min(1.0 / k.sqrt())
    }
}

/// Adafactor over one flat buffer.
pub struct Adafactor {
    pub settings: AdafactorSettings,
    table: AdafactorTable,
    row: Option<Tensor>,
    col: Option<Tensor>,
    v: Option<Tensor>,
    m: Option<Tensor>,
    /// The means of each matrix's row moments, recomputed every step (not saved).
    row_mean: Option<Tensor>,
    /// The rate the last step applied to the first tensor.
    last_lr: Option<f64>,
    steps: u64,
}

impl Adafactor {
    /// Fresh state for the tensors of `layout`.
    pub fn new(be: &dyn Backend, layout: &Layout, settings: AdafactorSettings) -> Result<Self> {
        let table = AdafactorTable::new(be, layout.shapes())?;
        let zeros = |n: usize| -> Result<Option<Tensor>> {
            Ok(if n == 0 {
                None
            } else {
                Some(be.zeros(&[n], DType::F32)?)
            })
        };
        Ok(Adafactor {
            settings,
            row: zeros(table.rows_len)?,
            col: zeros(table.cols_len)?,
            v: zeros(table.v_len)?,
            m: zeros(if settings.beta1.is_some() {
                table.numel()
            } else {
                0
            })?,
            row_mean: zeros(table.means_len)?,
            table,
            last_lr: None,
            steps: 0,
        })
    }
}

/// kohya's `optimizer_args` spelling of a flag.
fn py(b: bool) -> &'static str {
    if b {
        "True"
    } else {
        "False"
    }
}

impl Optimizer for Adafactor {
    fn name(&self) -> &'static str {
        "Adafactor"
    }

    fn describe(&self) -> String {
        let s = &self.settings;
        let beta1 = s.beta1.map_or("None".to_string(), |b| b.to_string());
        format!(
            "Adafactor(eps=({},{}),clip_threshold={},decay_rate={},beta1={beta1},weight_decay={},scale_parameter={},relative_step={},warmup_init={})",
            s.eps1,
            s.eps2,
            s.clip_threshold,
            s.decay_rate,
            s.weight_decay,
            py(s.scale_parameter),
            py(s.relative_step),
            py(s.warmup_init)
        )
    }

    /// With relative_step, the rate Adafactor applied to the first tensor at the last step
    /// (transformers' AdafactorSchedule, which kohya then logs); otherwise the scheduled rate,
    /// as kohya logs it.
    fn effective_lr(&self, lr: f64) -> f64 {
        match self.last_lr {
            Some(x) if self.settings.relative_step => x,
            _ => lr,
        }
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
        let k = self.steps + 1;
        let h = AdafactorStep {
            rel_step: s.rel_step(k, lr),
            scale_parameter: s.scale_parameter,
            eps1: s.eps1,
            eps2: s.eps2,
            clip_threshold: s.clip_threshold,
            beta2t: 1.0 - (k as f64).powf(s.decay_rate),
            beta1: s.beta1,
            weight_decay: s.weight_decay,
            grad_scale,
        };
        let first = be.adafactor_step(
            params,
            grads,
            &self.table,
            AdafactorBuffers {
                row: self.row.as_mut(),
                col: self.col.as_mut(),
                v: self.v.as_mut(),
                m: self.m.as_mut(),
                row_mean: self.row_mean.as_mut(),
            },
            &h,
        )?;
        self.last_lr = Some(first);
        self.steps = k;
        Ok(())
    }

    fn steps(&self) -> u64 {
        self.steps
    }

    fn state(&self) -> Vec<(&'static str, &Tensor)> {
        [
            ("col", &self.col),
            ("m", &self.m),
            ("row", &self.row),
            ("v", &self.v),
        ]
        .into_iter()
        .filter_map(|(name, t)| t.as_ref().map(|t| (name, t)))
        .collect()
    }

    /// The scratch of the row moments' means and the tensor table.
    fn workspace_bytes(&self) -> usize {
        self.row_mean.as_ref().map_or(0, Tensor::size_in_bytes) + self.table.device.size_in_bytes()
    }

    fn restore(
        &mut self,
        be: &dyn Backend,
        steps: u64,
        get: &mut dyn FnMut(&'static str) -> Result<Tensor>,
    ) -> Result<()> {
        let mut slots: Vec<(&'static str, &mut Tensor)> = [
            ("col", &mut self.col),
            ("m", &mut self.m),
            ("row", &mut self.row),
            ("v", &mut self.v),
        ]
        .into_iter()
        .filter_map(|(name, t)| t.as_mut().map(|t| (name, t)))
        .collect();
        restore_named(be, get, &mut slots)?;
        self.steps = steps;
        Ok(())
    }
}
