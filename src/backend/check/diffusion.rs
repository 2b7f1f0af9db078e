//! Arguments of the diffusion ops and of AdamW, checked the same way by every backend.

use super::{bad_value, dtype, min_rank, rank, same_shape};
use crate::backend::{AdamW, TimestepEmbedding};
use crate::error::Result;
use crate::tensor::{DType, Tensor};

/// timesteps [N]; dim >= 2 with dim/2 > freq_shift; max_period > 0.
pub fn timestep_embedding(t: &Tensor, p: &TimestepEmbedding) -> Result<()> {
    const OP: &str = "timestep_embedding";
    rank(OP, "timesteps", t, 1, "[N]")?;
    let half = p.dim / 2;
    if p.dim < 2 || (half as f64 - p.freq_shift) <= 0.0 {
        return Err(bad_value(
            OP,
            "dim",
            p.dim,
            "at least 2, and dim/2 must exceed freq_shift",
        ));
    }
    if p.max_period <= 0.0 {
        return Err(bad_value(
            OP,
            "max_period",
            p.max_period,
            "must be positive",
        ));
    }
    Ok(())
}

/// x and noise of one shape [N, ...], one a and one b per sample.
pub fn add_noise(x: &Tensor, z: &Tensor, a: &[f64], b: &[f64]) -> Result<()> {
    const OP: &str = "add_noise";
    same_shape(OP, "x", x, "noise", z)?;
    min_rank(OP, "x", x, 1, "[N, ...]")?;
    let n = x.dims()[0];
    for (name, v) in [("a", a), ("b", b)] {
        if v.len() != n {
            return Err(bad_value(
                OP,
                name,
                format!("{} values", v.len()),
                &format!("one per sample of x {}", x.shape()),
            ));
        }
    }
    Ok(())
}

/// mean, logvar (and noise) of one shape.
pub fn gaussian_sample(mean: &Tensor, logvar: &Tensor, noise: Option<&Tensor>) -> Result<()> {
    const OP: &str = "gaussian_sample";
    same_shape(OP, "mean", mean, "logvar", logvar)?;
    if let Some(z) = noise {
        same_shape(OP, "mean", mean, "noise", z)?;
    }
    Ok(())
}

/// pred and target of one non-empty shape [N, ...], one weight per sample.
pub fn mse_loss(pred: &Tensor, target: &Tensor, weights: Option<&[f64]>) -> Result<()> {
    const OP: &str = "mse_loss";
    same_shape(OP, "pred", pred, "target", target)?;
    min_rank(OP, "pred", pred, 1, "[N, ...]")?;
    let n = pred.dims()[0];
    if let Some(w) = weights {
        if w.len() != n {
            return Err(bad_value(
                OP,
                "weights",
                format!("{} values", w.len()),
                &format!("one weight per sample: {n}"),
            ));
        }
    }
    if n == 0 || pred.numel() == 0 {
        return Err(bad_value(OP, "pred", pred.shape(), "a non-empty batch"));
    }
    Ok(())
}

/// Four f32 buffers of one shape, a 1-based step, betas in [0, 1).
pub fn adamw(params: &Tensor, grads: &Tensor, m: &Tensor, v: &Tensor, h: &AdamW) -> Result<()> {
    const OP: &str = "adamw_step";
    for (name, t) in [("params", params), ("grads", grads), ("m", m), ("v", v)] {
        dtype(OP, name, t, DType::F32)?;
    }
    same_shape(OP, "params", params, "grads", grads)?;
    same_shape(OP, "params", params, "m", m)?;
    same_shape(OP, "params", params, "v", v)?;
    if h.step == 0 {
        return Err(bad_value(OP, "step", h.step, "steps count from 1"));
    }
    for (name, b) in [("beta1", h.beta1), ("beta2", h.beta2)] {
        if !(0.0..1.0).contains(&b) {
            return Err(bad_value(OP, name, b, "in [0, 1)"));
        }
    }
    Ok(())
}

/// The flat f32 buffers of one optimizer step (Lion, SGD, Prodigy): all f32, all the shape of
/// the first.
pub fn flat_f32(op: &'static str, buffers: &[(&'static str, &Tensor)]) -> Result<()> {
    let Some(&(first_name, first)) = buffers.first() else {
        return Ok(());
    };
    for &(name, t) in buffers {
        dtype(op, name, t, DType::F32)?;
        same_shape(op, first_name, first, name, t)?;
    }
    Ok(())
}
