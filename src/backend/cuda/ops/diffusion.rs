//! Timestep embedding, DDPM noising, the VAE posterior sample and the MSE loss
//! (kernels/diffusion.cu).

use super::super::backend::CudaBackend;
use super::super::launch::{kernels, In, LaunchCfg, Out};
use super::super::tiles::MSE_CHUNK;
use super::{alloc, buffer, by_dtype, float_dtype, input, int, output, BLOCK};
use crate::backend::{check, DiffusionOps, Tensors, TimestepEmbedding};
use crate::error::Result;
use crate::tensor::{DType, Tensor};

kernels! {
    module "diffusion";
    fn timestep_embedding_f32(t: In, freq: In, out: Out, rows: i32, dim: i32, half: i32, flip: i32);
    fn timestep_embedding_f16(t: In, freq: In, out: Out, rows: i32, dim: i32, half: i32, flip: i32);
    fn timestep_embedding_bf16(t: In, freq: In, out: Out, rows: i32, dim: i32, half: i32, flip: i32);
    fn add_noise_f32(x: In, z: In, a: In, b: In, y: Out, per: i32, n: i32);
    fn add_noise_f16(x: In, z: In, a: In, b: In, y: Out, per: i32, n: i32);
    fn add_noise_bf16(x: In, z: In, a: In, b: In, y: Out, per: i32, n: i32);
    fn gaussian_sample_f32(mean: In, logvar: In, noise: In, y: Out, scale: f32, n: i32);
    fn gaussian_sample_f16(mean: In, logvar: In, noise: In, y: Out, scale: f32, n: i32);
    fn gaussian_sample_bf16(mean: In, logvar: In, noise: In, y: Out, scale: f32, n: i32);
    fn mse_f32(pred: In, target: In, coef: In, grad: Out, partial: Out, per: i32);
    fn mse_f16(pred: In, target: In, coef: In, grad: Out, partial: Out, per: i32);
    fn mse_bf16(pred: In, target: In, coef: In, grad: Out, partial: Out, per: i32);
}

/// Host scalars as a small f32 device vector.
fn floats(be: &CudaBackend, v: &[f64]) -> Result<Tensor> {
    let f: Vec<f32> = v.iter().map(|&x| x as f32).collect();
    be.tensor_from_f32(&[f.len()], &f, DType::F32)
}

impl DiffusionOps for CudaBackend {
    fn timestep_embedding(&self, t: &Tensor, p: TimestepEmbedding) -> Result<Tensor> {
        const OP: &str = "timestep_embedding";
        check::diffusion::timestep_embedding(t, &p)?;
        let half = p.dim / 2;
        let d = float_dtype(OP, "timesteps", t)?;
        // The frequencies in f64, as the CPU backend computes them, then rounded to f32.
        let freq: Vec<f64> = (0..half)
            .map(|i| (-(p.max_period.ln()) * i as f64 / (half as f64 - p.freq_shift)).exp())
            .collect();
        let freq = floats(self, &freq)?;
        let rows = t.numel();
        let mut out = alloc(self, [rows, p.dim], d)?;
        let f = by_dtype!(
            d,
            OP,
            timestep_embedding_f32,
            timestep_embedding_f16,
            timestep_embedding_bf16
        );
        f(
            self.device(),
            LaunchCfg::for_items(rows * p.dim, BLOCK),
            input(self, OP, "timesteps", t)?,
            input(self, OP, "freq", &freq)?,
            output(self, OP, "out", &mut out)?,
            int(OP, "timesteps", rows)?,
            int(OP, "dim", p.dim)?,
            int(OP, "dim", half)?,
            p.flip_sin_to_cos as i32,
        )?;
        Ok(out)
    }

    fn add_noise(&self, x: &Tensor, z: &Tensor, a: &[f64], b: &[f64]) -> Result<Tensor> {
        const OP: &str = "add_noise";
        check::diffusion::add_noise(x, z, a, b)?;
        let n = x.dims()[0];
        let d = float_dtype(OP, "x", x)?;
        check::dtype(OP, "noise", z, d)?;
        let (at, bt) = (floats(self, a)?, floats(self, b)?);
        let mut y = alloc(self, x.shape().clone(), d)?;
        let per = x.numel() / n.max(1);
        let f = by_dtype!(d, OP, add_noise_f32, add_noise_f16, add_noise_bf16);
        f(
            self.device(),
            LaunchCfg::for_items(x.numel(), BLOCK),
            input(self, OP, "x", x)?,
            input(self, OP, "noise", z)?,
            input(self, OP, "a", &at)?,
            input(self, OP, "b", &bt)?,
            output(self, OP, "y", &mut y)?,
            int(OP, "x", per.max(1))?,
            int(OP, "x", x.numel())?,
        )?;
        Ok(y)
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
        let d = float_dtype(OP, "mean", mean)?;
        check::dtype(OP, "logvar", logvar, d)?;
        if let Some(z) = noise {
            check::dtype(OP, "noise", z, d)?;
        }
        let zi = match noise {
            Some(z) => input(self, OP, "noise", z)?,
            None => super::super::launch::In(0),
        };
        let mut y = alloc(self, mean.shape().clone(), d)?;
        let f = by_dtype!(
            d,
            OP,
            gaussian_sample_f32,
            gaussian_sample_f16,
            gaussian_sample_bf16
        );
        f(
            self.device(),
            LaunchCfg::for_items(mean.numel(), BLOCK),
            input(self, OP, "mean", mean)?,
            input(self, OP, "logvar", logvar)?,
            zi,
            output(self, OP, "y", &mut y)?,
            scale as f32,
            int(OP, "mean", mean.numel())?,
        )?;
        Ok(y)
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
        let n = pred.dims()[0];
        let d = float_dtype(OP, "pred", pred)?;
        check::dtype(OP, "target", target, d)?;
        let per = pred.numel() / n;
        let w: Vec<f64> = (0..n).map(|i| weights.map_or(1.0, |w| w[i])).collect();
        let coef: Vec<f64> = w
            .iter()
            .map(|wi| grad_scale * 2.0 * wi / (n * per) as f64)
            .collect();
        let coef = floats(self, &coef)?;
        let chunks = per.div_ceil(MSE_CHUNK);
        let mut grad = alloc(self, pred.shape().clone(), d)?;
        let mut partial = alloc(self, [n, chunks], DType::F32)?;
        let f = by_dtype!(d, OP, mse_f32, mse_f16, mse_bf16);
        f(
            self.device(),
            LaunchCfg::new(
                (int(OP, "pred", chunks)? as u32, n as u32, 1),
                (BLOCK, 1, 1),
                0,
            ),
            input(self, OP, "pred", pred)?,
            input(self, OP, "target", target)?,
            input(self, OP, "coef", &coef)?,
            output(self, OP, "grad", &mut grad)?,
            output(self, OP, "partial", &mut partial)?,
            int(OP, "pred", per)?,
        )?;
        let partial = buffer(self, OP, "partial", &partial)?.to_f32_vec()?;
        let loss = partial
            .chunks(chunks)
            .zip(&w)
            .map(|(p, wi)| wi * p.iter().map(|&x| x as f64).sum::<f64>() / per as f64)
            .sum::<f64>()
            / n as f64;
        Ok((loss, grad))
    }
}
