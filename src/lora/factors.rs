//! A truncated SVD of a module's weight delta as a kohya LoRA module: up = U·diag(S)
//! [out, k], down = Vᵀ [k, in·taps] reshaped to the layer's shapes ([`LayerKind::shapes`]), as
//! sd-scripts' resize, extract and svd-merge scripts build them; and their quantile clamp.

use crate::error::Result;
use crate::linalg::{Mat, Svd};
use crate::lora::{LayerKind, LoraModule};
use crate::tensor::Tensor;

/// The module `name` of rank svd.s.len() from `svd` (already truncated) of a weight delta
/// [out, in·taps] of a `kind` layer, with `alpha`.
pub fn module_from_svd(
    name: &str,
    kind: LayerKind,
    svd: &Svd,
    alpha: f64,
    clamp_quantile: Option<f64>,
) -> Result<LoraModule> {
    let mut up = svd.u_times_s();
    let mut down = svd.vt.clone();
    if let Some(q) = clamp_quantile {
        clamp_to_quantile(&mut up, &mut down, q);
    }
    let k = svd.s.len();
    let (out, in_features) = (up.rows, down.cols / kind.taps());
    let (ds, us) = kind.shapes(k, in_features, out);
    Ok(LoraModule {
        name: name.to_string(),
        down: Tensor::from_f64(ds, down.data)?,
        up: Tensor::from_f64(us, up.data)?,
        alpha,
        kind,
        algo: Default::default(),
    })
}

/// torch.quantile of the values (linear interpolation between the order statistics at
/// q·(n − 1)); 0 for none.
pub fn quantile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let pos = q.clamp(0.0, 1.0) * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

/// sd-scripts' clamp of extracted factors: h = the q-quantile of all entries of up and down
/// together, then both clamped to [−h, h] (h ≤ 0, possible only for a degenerate q, clamps
/// everything to h as torch does).
pub fn clamp_to_quantile(up: &mut Mat, down: &mut Mat, q: f64) {
    let all: Vec<f64> = up.data.iter().chain(&down.data).copied().collect();
    let hi = quantile(&all, q);
    for x in up.data.iter_mut().chain(down.data.iter_mut()) {
        *x = x.max(-hi).min(hi);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_interpolates_like_torch() {
        // torch.quantile(tensor([1., 2., 3., 4.]), 0.5) = 2.5; 0.99 → 3.97.
        assert_eq!(quantile(&[4.0, 1.0, 3.0, 2.0], 0.5), 2.5);
        assert!((quantile(&[1.0, 2.0, 3.0, 4.0], 0.99) - 3.97).abs() < 1e-12);
        let mut up = Mat::from_vec(1, 2, vec![-10.0, 1.0]);
        let mut down = Mat::from_vec(1, 2, vec![2.0, 3.0]);
        clamp_to_quantile(&mut up, &mut down, 0.5);
        // Values -10, 1, 2, 3: median 1.5.
        assert_eq!(up.data, vec![-1.5, 1.0]);
        assert_eq!(down.data, vec![1.5, 1.5]);
    }
}
