//! Adafactor (transformers' `Adafactor`) on the flat buffer, tensor by tensor as the table
//! cuts it (formulas on `backend::AdafactorStep`). Every sum (the RMS of the parameters and
//! of the update, the row and column means, the mean of a matrix's row moments) is taken in
//! f64 in element order and rounded to f32 once; the moments, the update and the parameters
//! are f32, in the order of operations of kernels/adafactor.cu.

use super::{data, data_mut, CpuBackend};
use crate::backend::{check, AdafactorBuffers, AdafactorSegment, AdafactorStep, AdafactorTable};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Checks params and grads against the table and each buffer's length (shared with the CUDA
/// launcher).
pub(crate) fn check_adafactor(
    op: &'static str,
    params: &Tensor,
    grads: &Tensor,
    table: &AdafactorTable,
    t: &AdafactorBuffers<'_>,
) -> Result<()> {
    check::diffusion::flat_f32(op, &[("params", params), ("grads", grads)])?;
    let n = table.numel();
    let m_len = if t.m.is_some() { n } else { 0 };
    for (name, buf, want) in [
        ("params", Some(params), n),
        ("row", t.row.as_deref(), table.rows_len),
        ("col", t.col.as_deref(), table.cols_len),
        ("v", t.v.as_deref(), table.v_len),
        ("m", t.m.as_deref(), m_len),
        ("row_mean", t.row_mean.as_deref(), table.means_len),
    ] {
        let got = buf.map_or(0, |b| b.numel());
        if got != want {
            return Err(Error::BadValue {
                op,
                name,
                value: format!("{got} values"),
                expected: format!("{want} values: the table's tensors"),
            });
        }
        if let Some(b) = buf {
            check::diffusion::flat_f32(op, &[(name, b)])?;
        }
    }
    Ok(())
}

/// The f32 constants of a step, shared with the CUDA launcher's arguments.
pub(crate) struct AdafactorConsts {
    pub gs: f32,
    pub eps1: f32,
    /// β and 1 − β (the latter from f64).
    pub b2: f32,
    pub c2: f32,
    /// β1 and 1 − β1 (0 and 1 without a first moment).
    pub b1: f32,
    pub c1: f32,
}

impl AdafactorConsts {
    pub(crate) fn new(h: &AdafactorStep) -> AdafactorConsts {
        let beta1 = h.beta1.unwrap_or(0.0);
        AdafactorConsts {
            gs: h.grad_scale as f32,
            eps1: h.eps1 as f32,
            b2: h.beta2t as f32,
            c2: (1.0 - h.beta2t) as f32,
            b1: beta1 as f32,
            c1: (1.0 - beta1) as f32,
        }
    }
}

/// The scale of one tensor's update: lr / max(1, rms(u)/clip), and its rate lr.
pub(crate) fn update_scale(h: &AdafactorStep, rms_p: f64, rms_u: f64) -> (f64, f64) {
    let lr = h.lr(rms_p);
    (lr / (rms_u / h.clip_threshold).max(1.0), lr)
}

impl CpuBackend {
    pub(super) fn adafactor(
        &self,
        params: &mut Tensor,
        grads: &Tensor,
        table: &AdafactorTable,
        t: AdafactorBuffers<'_>,
        h: &AdafactorStep,
    ) -> Result<f64> {
        const OP: &str = "adafactor_step";
        check_adafactor(OP, params, grads, table, &t)?;
        let k = AdafactorConsts::new(h);
        let g = data::<f32>(OP, "grads", grads)?;
        let p = data_mut::<f32>(OP, "params", params)?;
        let row = slot(t.row, "row")?;
        let col = slot(t.col, "col")?;
        let v = slot(t.v, "v")?;
        let mean = slot(t.row_mean, "row_mean")?;
        let mut m = t.m.map(|b| data_mut::<f32>(OP, "m", b)).transpose()?;
        let mut first_lr = h.lr(0.0);
        for (i, s) in table.segments.iter().enumerate() {
            let range = s.offset..s.offset + s.len;
            let (p, g) = (&mut p[range.clone()], &g[range.clone()]);
            let rms_p = rms(p.iter().copied());
            let grad = |j: usize| g[j] * k.gs;
            // The moments, then the update of element j.
            let u: Box<dyn Fn(usize) -> f32> = if s.rows > 0 {
                factored_moments(s, &grad, &k, row, col, mean);
                let (row, col, mean) = (&*row, &*col, &*mean);
                let s = *s;
                Box::new(move |j| {
                    let (b, r, c) = (j / (s.rows * s.cols), j / s.cols % s.rows, j % s.cols);
                    let rf = 1.0 / (row[s.row_at + b * s.rows + r] / mean[s.mean_at + b]).sqrt();
                    let cf = 1.0 / col[s.col_at + b * s.cols + c].sqrt();
                    rf * cf * grad(j)
                })
            } else {
                let v = &mut v[s.v_at..s.v_at + s.len];
                for (j, v) in v.iter_mut().enumerate() {
                    let gj = grad(j);
                    *v = k.b2 * *v + k.c2 * (gj * gj + k.eps1);
                }
                let v = &*v;
                Box::new(move |j| 1.0 / v[j].sqrt() * grad(j))
            };
            let rms_u = rms((0..s.len).map(&u));
            let (scale, lr) = update_scale(h, rms_p, rms_u);
            if i == 0 {
                first_lr = lr;
            }
            // The decay as transformers adds it: p + (−wd·lr)·p, then p − u.
            let (scale, decay) = (scale as f32, (-h.weight_decay * lr) as f32);
            let mut m = m.as_deref_mut().map(|m| &mut m[range.clone()]);
            for j in 0..s.len {
                let mut uj = u(j) * scale;
                if let Some(m) = m.as_deref_mut() {
                    m[j] = k.b1 * m[j] + k.c1 * uj;
                    uj = m[j];
                }
                p[j] = (p[j] + decay * p[j]) - uj;
            }
        }
        Ok(first_lr)
    }
}

/// A buffer's values; an absent buffer (checked to need none) as an empty slice.
fn slot<'a>(b: Option<&'a mut Tensor>, name: &'static str) -> Result<&'a mut [f32]> {
    match b {
        Some(b) => data_mut::<f32>("adafactor_step", name, b),
        None => Ok(&mut []),
    }
}

/// sqrt(mean(x²)), summed in f64 in order.
fn rms(xs: impl ExactSizeIterator<Item = f32>) -> f64 {
    let n = xs.len().max(1) as f64;
    (xs.map(|x| x as f64 * x as f64).sum::<f64>() / n).sqrt()
}

/// A factored tensor's row and column moments and the mean of each matrix's row moments.
fn factored_moments(
    s: &AdafactorSegment,
    grad: &dyn Fn(usize) -> f32,
    k: &AdafactorConsts,
    row: &mut [f32],
    col: &mut [f32],
    mean: &mut [f32],
) {
    let (rows, cols) = (s.rows, s.cols);
    let sq = |j: usize| {
        let g = grad(j);
        (g * g + k.eps1) as f64
    };
    for b in 0..s.batch {
        let base = b * rows * cols;
        for r in 0..rows {
            let sum: f64 = (0..cols).map(|c| sq(base + r * cols + c)).sum();
            let x = &mut row[s.row_at + b * rows + r];
            *x = k.b2 * *x + k.c2 * (sum / cols as f64) as f32;
        }
        for c in 0..cols {
            let sum: f64 = (0..rows).map(|r| sq(base + r * cols + c)).sum();
            let x = &mut col[s.col_at + b * cols + c];
            *x = k.b2 * *x + k.c2 * (sum / rows as f64) as f32;
        }
        let sum: f64 = row[s.row_at + b * rows..s.row_at + (b + 1) * rows]
            .iter()
            .map(|&x| x as f64)
            .sum();
        mean[s.mean_at + b] = (sum / rows as f64) as f32;
    }
}
