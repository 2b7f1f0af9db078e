//! Diffusion-specific ops: the sinusoidal timestep embedding and the (min-SNR weighted)
//! epsilon MSE loss with its gradient.
//!
//! timestep_embedding (diffusers `get_timestep_embedding`), t [N] -> [N, dim]:
//!   half = dim/2, f_i = exp(-ln(max_period)·i / (half - freq_shift)), i < half
//!   e = [sin(t·f), cos(t·f)], or [cos, sin] with flip_sin_to_cos; odd dim: a zero column last.
//! mse_loss over pred, target [N, ...] with P = elements per sample:
//!   loss = (1/N) Σ_n w_n · (1/P) Σ_p (pred - target)²
//!   d(grad_scale·loss)/d pred = grad_scale · 2·w_n·(pred - target) / (N·P)
//! add_noise, per sample n: y_n = a_n·x_n + b_n·z_n (DDPM: a = sqrt(ᾱ_t), b = sqrt(1-ᾱ_t))
//! gaussian_sample: scale·(mean + exp(clamp(logvar, -30, 20)/2)·noise)

use rayon::prelude::*;

use super::CpuBackend;
use super::{data, dispatch, tensor, Real};
use crate::backend::{check, DiffusionOps, TimestepEmbedding};
use crate::error::Result;
use crate::tensor::Tensor;

impl DiffusionOps for CpuBackend {
    fn timestep_embedding(&self, t: &Tensor, p: TimestepEmbedding) -> Result<Tensor> {
        const OP: &str = "timestep_embedding";
        check::diffusion::timestep_embedding(t, &p)?;
        dispatch!(OP, t, timestep_embedding_t(t, p))
    }

    fn add_noise(&self, x: &Tensor, z: &Tensor, a: &[f64], b: &[f64]) -> Result<Tensor> {
        const OP: &str = "add_noise";
        check::diffusion::add_noise(x, z, a, b)?;
        dispatch!(OP, x, add_noise_t(x, z, a, b))
    }

    fn gaussian_sample(
        &self,
        mean: &Tensor,
        logvar: &Tensor,
        noise: Option<&Tensor>,
        scale: f64,
    ) -> Result<Tensor> {
        const OP: &str = "gaussian_sample";
        check::diffusion::gaussian_sample(mean, logvar, noise)?;
        dispatch!(OP, mean, gaussian_sample_t(mean, logvar, noise, scale))
    }

    fn mse_loss(
        &self,
        pred: &Tensor,
        target: &Tensor,
        weights: Option<&[f64]>,
        grad_scale: f64,
    ) -> Result<(f64, Tensor)> {
        const OP: &str = "mse_loss";
        check::diffusion::mse_loss(pred, target, weights)?;
        dispatch!(OP, pred, mse_loss_t(pred, target, weights, grad_scale))
    }
}

fn timestep_embedding_t<T: Real>(t: &Tensor, p: TimestepEmbedding) -> Result<Tensor> {
    let ts = data::<T>("timestep_embedding", "timesteps", t)?;
    let half = p.dim / 2;
    let mut out = vec![T::ZERO; ts.len() * p.dim];
    for (row, &tv) in out.chunks_mut(p.dim).zip(ts) {
        for i in 0..half {
            let exponent = -(p.max_period.ln()) * i as f64 / (half as f64 - p.freq_shift);
            let arg = tv * T::from_f64(exponent.exp());
            let (sin, cos) = (arg.sin(), arg.cos());
            let (first, second) = if p.flip_sin_to_cos {
                (cos, sin)
            } else {
                (sin, cos)
            };
            row[i] = first;
            row[half + i] = second;
        }
    }
    tensor([ts.len(), p.dim], out)
}

fn mse_loss_t<T: Real>(
    pred: &Tensor,
    target: &Tensor,
    weights: Option<&[f64]>,
    grad_scale: f64,
) -> Result<(f64, Tensor)> {
    let ps = data::<T>("mse_loss", "pred", pred)?;
    let ts = data::<T>("mse_loss", "target", target)?;
    let n = pred.dims()[0];
    let per = ps.len() / n;
    let mut grad = vec![T::ZERO; ps.len()];
    // Per sample: the mean squared error in f64 (a sum of up to 16k terms), and its gradient.
    let per_sample: Vec<f64> = grad
        .par_chunks_mut(per)
        .enumerate()
        .map(|(i, g)| {
            let w = weights.map_or(1.0, |w| w[i]);
            let coef = T::from_f64(grad_scale * 2.0 * w / (n * per) as f64);
            let (p, t) = (&ps[i * per..(i + 1) * per], &ts[i * per..(i + 1) * per]);
            let mut sum = 0.0f64;
            for ((g, &p), &t) in g.iter_mut().zip(p).zip(t) {
                let d = p - t;
                sum += (d * d).to_f64();
                *g = coef * d;
            }
            w * sum / per as f64
        })
        .collect();
    let loss = per_sample.iter().sum::<f64>() / n as f64;
    Ok((loss, tensor(pred.shape().clone(), grad)?))
}

fn add_noise_t<T: Real>(x: &Tensor, z: &Tensor, a: &[f64], b: &[f64]) -> Result<Tensor> {
    let xs = data::<T>("add_noise", "x", x)?;
    let zs = data::<T>("add_noise", "noise", z)?;
    let per = x.numel() / x.dims()[0].max(1);
    let mut y = vec![T::ZERO; xs.len()];
    if per > 0 {
        y.par_chunks_mut(per).enumerate().for_each(|(i, y)| {
            let (ai, bi) = (T::from_f64(a[i]), T::from_f64(b[i]));
            let (xi, zi) = (&xs[i * per..(i + 1) * per], &zs[i * per..(i + 1) * per]);
            for ((y, &xv), &zv) in y.iter_mut().zip(xi).zip(zi) {
                *y = ai * xv + bi * zv;
            }
        });
    }
    tensor(x.shape().clone(), y)
}

fn gaussian_sample_t<T: Real>(
    mean: &Tensor,
    logvar: &Tensor,
    noise: Option<&Tensor>,
    scale: f64,
) -> Result<Tensor> {
    const OP: &str = "gaussian_sample";
    let ms = data::<T>(OP, "mean", mean)?;
    let ls = data::<T>(OP, "logvar", logvar)?;
    let s = T::from_f64(scale);
    let y = match noise {
        None => ms.iter().map(|&m| s * m).collect(),
        Some(z) => {
            let zs = data::<T>(OP, "noise", z)?;
            let (lo, hi, half) = (T::from_f64(-30.0), T::from_f64(20.0), T::from_f64(0.5));
            ms.par_iter()
                .zip(ls.par_iter())
                .zip(zs.par_iter())
                .map(|((&m, &l), &zv)| {
                    let l = if l < lo {
                        lo
                    } else if l > hi {
                        hi
                    } else {
                        l
                    };
                    s * (m + (half * l).exp() * zv)
                })
                .collect()
        }
    };
    tensor(mean.shape().clone(), y)
}
