//! Shape and argument checks for GroupNorm and LayerNorm, shared by every backend.
//!
//! GroupNorm: x [N, C, ...spatial] (rank >= 2), gamma, beta [C], C = groups · (C/groups);
//!   statistics [N, groups], each over the C/groups · spatial elements of one (n, g).
//! LayerNorm: x [.., C] (rank >= 1), gamma, beta [C]; statistics [rows], rows = all leading
//!   dims flattened, each over one row of C elements.
//! Backward: dy has x's shape, and the saved statistics have the forward's shapes.
//!
//! Dtypes are left to the backend: the CPU computes in x's dtype, a GPU may keep f32 stats
//! next to f16 activations.

use super::{bad_value, min_rank, mismatch, same_shape};
use crate::backend::NormStats;
use crate::error::{Error, Result};
use crate::tensor::{Shape, Tensor};

/// The sizes of one GroupNorm call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupNormDims {
    /// Batch size N.
    pub batch: usize,
    /// Channels C.
    pub channels: usize,
    pub groups: usize,
    /// Elements per channel per sample: the product of the spatial dims (1 for [N, C]).
    pub spatial: usize,
}

impl GroupNormDims {
    /// Channels per group, C/groups.
    pub fn channels_per_group(&self) -> usize {
        self.channels / self.groups
    }
    /// Elements normalized together: C/groups · spatial. Contiguous in NCHW.
    pub fn group_len(&self) -> usize {
        self.channels_per_group() * self.spatial
    }
    /// The shape of the saved statistics, [N, groups].
    pub fn stats_shape(&self) -> Shape {
        Shape::new([self.batch, self.groups])
    }
}

/// The sizes of one LayerNorm call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayerNormDims {
    /// Rows: all leading dims of x flattened.
    pub rows: usize,
    /// The normalized (last) dimension C.
    pub channels: usize,
}

impl LayerNormDims {
    /// The shape of the saved statistics, [rows].
    pub fn stats_shape(&self) -> Shape {
        Shape::new([self.rows])
    }
}

/// eps must be a positive, finite number (eps = 0 divides by zero on a constant group).
pub fn eps(op: &'static str, eps: f64) -> Result<()> {
    if !(eps > 0.0 && eps.is_finite()) {
        return Err(bad_value(op, "eps", eps, "eps must be positive and finite"));
    }
    Ok(())
}

/// gamma or beta must be [C] with C = `c`, the size of x's dimension `axis`.
fn affine(
    op: &'static str,
    name: &'static str,
    p: &Tensor,
    x: &Tensor,
    c: usize,
    axis: &str,
) -> Result<()> {
    if p.dims() != [c] {
        return Err(mismatch(
            op,
            name,
            p,
            "x",
            x,
            format!("{name} must be [C] = [{c}], C being x's {axis} dimension"),
        ));
    }
    Ok(())
}

/// A saved statistic (`mean` or `rstd`) must have the shape the forward gave it.
fn stat(op: &'static str, name: &'static str, s: &Tensor, x: &Tensor, want: &Shape) -> Result<()> {
    if s.shape() != want {
        return Err(mismatch(
            op,
            name,
            s,
            "x",
            x,
            format!("the forward's statistics for this x are {want}"),
        ));
    }
    Ok(())
}

/// Checks a GroupNorm forward: x [N, C, ...], gamma and beta [C], groups dividing C, eps.
pub fn group_norm(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    groups: usize,
    eps_: f64,
) -> Result<GroupNormDims> {
    let d = group_norm_dims("group_norm", x, gamma, beta, groups)?;
    eps("group_norm", eps_)?;
    Ok(d)
}

/// Checks a GroupNorm backward: the forward's arguments, dy [N, C, ...] like x, and stats
/// (mean and rstd) [N, groups].
pub fn group_norm_backward(
    dy: &Tensor,
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    stats: &NormStats,
    groups: usize,
) -> Result<GroupNormDims> {
    const OP: &str = "group_norm_backward";
    let d = group_norm_dims(OP, x, gamma, beta, groups)?;
    same_shape(OP, "dy", dy, "x", x)?;
    let want = d.stats_shape();
    stat(OP, "stats.mean", &stats.mean, x, &want)?;
    stat(OP, "stats.rstd", &stats.rstd, x, &want)?;
    Ok(d)
}

fn group_norm_dims(
    op: &'static str,
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    groups: usize,
) -> Result<GroupNormDims> {
    min_rank(op, "x", x, 2, "[N, C, ...spatial]")?;
    let dims = x.dims();
    let (batch, channels) = (dims[0], dims[1]);
    let spatial = dims[2..].iter().product::<usize>();
    if groups == 0 {
        return Err(bad_value(
            op,
            "groups",
            groups,
            "at least one group is needed",
        ));
    }
    if channels % groups != 0 {
        return Err(bad_value(
            op,
            "groups",
            groups,
            &format!(
                "groups must divide the channel count C = {channels} (x has shape {})",
                x.shape()
            ),
        ));
    }
    if channels == 0 || spatial == 0 {
        // Every group would be empty: its mean and variance do not exist.
        return Err(Error::BadShape {
            op,
            name: "x",
            shape: x.shape().clone(),
            expected: "non-zero channel and spatial sizes (a group needs elements)".into(),
        });
    }
    affine(op, "gamma", gamma, x, channels, "second")?;
    affine(op, "beta", beta, x, channels, "second")?;
    Ok(GroupNormDims {
        batch,
        channels,
        groups,
        spatial,
    })
}

/// Checks a LayerNorm forward: x [.., C], gamma and beta [C], eps.
pub fn layer_norm(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps_: f64) -> Result<LayerNormDims> {
    const OP: &str = "layer_norm";
    let d = layer_norm_dims(OP, x, gamma)?;
    affine(OP, "beta", beta, x, d.channels, "last")?;
    eps(OP, eps_)?;
    Ok(d)
}

/// Checks a LayerNorm backward: x and gamma as in the forward, dy like x, stats [rows].
pub fn layer_norm_backward(
    dy: &Tensor,
    x: &Tensor,
    gamma: &Tensor,
    stats: &NormStats,
) -> Result<LayerNormDims> {
    const OP: &str = "layer_norm_backward";
    let d = layer_norm_dims(OP, x, gamma)?;
    same_shape(OP, "dy", dy, "x", x)?;
    let want = d.stats_shape();
    stat(OP, "stats.mean", &stats.mean, x, &want)?;
    stat(OP, "stats.rstd", &stats.rstd, x, &want)?;
    Ok(d)
}

fn layer_norm_dims(op: &'static str, x: &Tensor, gamma: &Tensor) -> Result<LayerNormDims> {
    min_rank(op, "x", x, 1, "[.., C]")?;
    let channels = x.shape().last();
    if channels == 0 {
        return Err(Error::BadShape {
            op,
            name: "x",
            shape: x.shape().clone(),
            expected: "a non-zero last dimension (a row needs elements)".into(),
        });
    }
    affine(op, "gamma", gamma, x, channels, "last")?;
    Ok(LayerNormDims {
        rows: x.shape().rows(),
        channels,
    })
}
