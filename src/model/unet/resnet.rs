//! ResnetBlock2D (diffusers), as SD1.x uses it in the UNet and the VAE:
//!   h  = conv1(silu(norm1(x)))          GroupNorm+SiLU fused, 3x3 conv
//!   h += time_emb_proj(silu(temb))      per (n, c), UNet only
//!   h2 = conv2(silu(norm2(h)))          (dropout is 0 in SD1.x)
//!   y  = shortcut(x) + h2               shortcut = 1x1 conv when channels change, else x
//!
//! Saved for the backward (the weights are frozen, so the convs need only shapes):
//!   x and norm1's stats  - GroupNorm+SiLU backward recomputes x̂ and the SiLU input from them
//!   h and norm2's stats  - the same for norm2
//!   with LoCon on conv1/conv2: each adapted conv's input and its adapter's hidden and mask
//!   (`ConvSaved`), for d(down) and d(up)
//! Backward: dy -> conv2ᵀ -> norm2ᵀ -> conv1ᵀ -> norm1ᵀ, plus the shortcut's gradient (dy
//! itself, or conv_shortcutᵀ dy); the adapted convs write their adapters' gradients on the
//! way. The time term's gradient is computed only for an adapter on time_emb_proj, or when
//! the caller asks for d silu(temb) (SDXL's pooled text embedding is trained through it).

use crate::backend::NormStats;
use crate::error::Error;
use crate::error::Result;
use crate::lora::{LayerKind, LayerRole, LoraGrads, TargetLayer};
use crate::model::layers::{hw, Conv, ConvSaved, Ctx, GroupNorm, Linear, LoraSaved};
use crate::model::weights::Loader;
use crate::tensor::Tensor;

pub struct ResnetBlock {
    pub norm1: GroupNorm,
    pub conv1: Conv,
    /// [out, temb_dim]; None in the VAE.
    pub time_emb_proj: Option<Linear>,
    pub norm2: GroupNorm,
    pub conv2: Conv,
    pub conv_shortcut: Option<Conv>,
}

pub struct ResnetSaved {
    x: Tensor,
    stats1: NormStats,
    h: Tensor,
    stats2: NormStats,
    conv1: Option<ConvSaved>,
    conv2: Option<ConvSaved>,
    shortcut: Option<ConvSaved>,
    /// The time projection's input and, for a LoRA, its hidden, when it has an adapter.
    time: Option<(Tensor, Option<LoraSaved>)>,
}

impl ResnetSaved {
    pub fn size_in_bytes(&self) -> usize {
        self.x.size_in_bytes()
            + self.h.size_in_bytes()
            + self.stats1.size_in_bytes()
            + self.stats2.size_in_bytes()
            + [&self.conv1, &self.conv2, &self.shortcut]
                .iter()
                .filter_map(|c| c.as_ref())
                .map(ConvSaved::size_in_bytes)
                .sum::<usize>()
            + self.time.as_ref().map_or(0, |(t, l)| {
                t.size_in_bytes() + l.as_ref().map_or(0, LoraSaved::size_in_bytes)
            })
    }
}

impl ResnetBlock {
    /// `temb_dim` = None for the VAE's blocks.
    pub fn load(
        l: &Loader,
        c_in: usize,
        c_out: usize,
        temb_dim: Option<usize>,
        groups: usize,
        eps: f64,
    ) -> Result<Self> {
        Ok(ResnetBlock {
            norm1: GroupNorm::load(&l.at("norm1"), c_in, groups, eps)?,
            conv1: Conv::load(&l.at("conv1"), c_in, c_out, 3, 1, 1)?,
            time_emb_proj: temb_dim
                .map(|t| Linear::load(&l.at("time_emb_proj"), t, c_out, true))
                .transpose()?,
            norm2: GroupNorm::load(&l.at("norm2"), c_out, groups, eps)?,
            conv2: Conv::load(&l.at("conv2"), c_out, c_out, 3, 1, 1)?,
            conv_shortcut: if c_in != c_out {
                Some(Conv::load(&l.at("conv_shortcut"), c_in, c_out, 1, 1, 0)?)
            } else {
                None
            },
        })
    }

    /// `temb_silu` = silu(time embedding) [N, temb_dim], shared by all blocks of a UNet.
    pub fn forward(
        &self,
        cx: &Ctx,
        x: Tensor,
        temb_silu: Option<&Tensor>,
        save: bool,
    ) -> Result<(Tensor, Option<ResnetSaved>)> {
        let (a, stats1) = self.norm1.forward(cx, &x, true)?;
        let (mut h, conv1) = self.conv1.forward_saving(cx, a, save)?;
        let mut time = None;
        if let (Some(proj), Some(t)) = (&self.time_emb_proj, temb_silu) {
            let out = proj.forward(cx, t)?;
            h = cx.be.add_channel_bias(&h, &out.y)?;
            // With an adapter on the time projection (LoCon's network-rank layers): its
            // input (a copy of the shared silu(temb), [N, temb_dim]) and hidden.
            if save && proj.has_adapter(cx) {
                time = Some((t.clone(), out.lora));
            }
        }
        let (b, stats2) = self.norm2.forward(cx, &h, true)?;
        let (h2, conv2) = self.conv2.forward_saving(cx, b, save)?;
        let (y, shortcut) = match &self.conv_shortcut {
            Some(sc) if sc.has_adapter(cx) => {
                let (s, saved) = sc.forward_saving(cx, x.clone(), save)?;
                (cx.be.add(&s, &h2)?, saved)
            }
            Some(sc) => (cx.be.add(&sc.forward(cx, &x)?, &h2)?, None),
            None => (cx.be.add(&x, &h2)?, None),
        };
        let saved = save.then_some(ResnetSaved {
            x,
            stats1,
            h,
            stats2,
            conv1,
            conv2,
            shortcut,
            time,
        });
        Ok((y, saved))
    }

    /// Whether `cx` attaches an adapter to any layer of the block (LoCon).
    pub fn has_adapter(&self, cx: &Ctx) -> bool {
        let linear = |l: &Option<Linear>| {
            l.as_ref()
                .is_some_and(|l| cx.lora.is_some_and(|s| s.find(&l.name).is_some()))
        };
        self.conv1.has_adapter(cx)
            || self.conv2.has_adapter(cx)
            || self
                .conv_shortcut
                .as_ref()
                .is_some_and(|c| c.has_adapter(cx))
            || linear(&self.time_emb_proj)
    }

    /// The 3x3 convs LoCon adapts at `conv_dim` (conv1, conv2), as sd-scripts targets them
    /// in a `ResnetBlock2D`.
    pub fn conv_targets(&self, out: &mut Vec<TargetLayer>) {
        for c in [&self.conv1, &self.conv2] {
            out.push(conv_target(c, LayerRole::ResnetConv));
        }
    }

    /// The block's layers sd-scripts adapts at the linear rank once `conv_dim` targets the
    /// block: time_emb_proj (a linear) and conv_shortcut (a 1x1 conv), in module order.
    pub fn linear_targets(&self, out: &mut Vec<TargetLayer>) {
        if let Some(p) = &self.time_emb_proj {
            out.push(TargetLayer {
                name: p.name.clone(),
                in_features: p.in_features(),
                out_features: p.out_features(),
                kind: LayerKind::Linear,
                role: LayerRole::TimeProjection,
            });
        }
        if let Some(c) = &self.conv_shortcut {
            out.push(TargetLayer {
                kind: LayerKind::Conv1x1,
                ..conv_target(c, LayerRole::Shortcut)
            });
        }
    }

    /// dX from dY; the adapted convs' gradients go into `grads`. With `d_temb`, the gradient
    /// of the time input silu(temb) [N, temb_dim] is added to it.
    pub fn backward(
        &self,
        cx: &Ctx,
        dy: &Tensor,
        s: ResnetSaved,
        grads: &mut LoraGrads,
        d_temb: Option<&mut Tensor>,
    ) -> Result<Tensor> {
        let db = self
            .conv2
            .backward_saved(cx, dy, hw(&s.h), s.conv2, grads)?;
        let dh = self.norm2.backward(cx, &db, &s.h, &s.stats2, true)?;
        drop(db);
        if let Some(proj) = &self.time_emb_proj {
            if s.time.is_some() || d_temb.is_some() {
                // d(time bias)[n, c] = Σ over the pixels of dh[n, c]: a product with ones.
                let [n, c, h, w] = dh.dims().try_into().map_err(|_| shape_error(&dh))?;
                let rows = dh.clone().reshape([n * c, h * w])?;
                let ones = cx
                    .be
                    .tensor_from_f32(&[1, h * w], &vec![1.0; h * w], dh.dtype())?;
                let d_bias = cx.be.linear(&rows, &ones, None, None)?.y.reshape([n, c])?;
                let want = d_temb.is_some();
                let dt = match &s.time {
                    Some((t, lora)) => proj.backward(cx, &d_bias, t, lora.as_ref(), grads, want)?,
                    None => cx.be.linear_backward(&d_bias, &proj.weight, None, true)?,
                };
                if let (Some(acc), Some(dt)) = (d_temb, dt) {
                    cx.be.add_assign(acc, &dt)?;
                }
            }
        }
        let da = self
            .conv1
            .backward_saved(cx, &dh, hw(&s.x), s.conv1, grads)?;
        drop(dh);
        let mut dx = self.norm1.backward(cx, &da, &s.x, &s.stats1, true)?;
        match &self.conv_shortcut {
            Some(sc) => {
                let ds = sc.backward_saved(cx, dy, hw(&s.x), s.shortcut, grads)?;
                cx.be.add_assign(&mut dx, &ds)?
            }
            None => cx.be.add_assign(&mut dx, dy)?,
        }
        Ok(dx)
    }
}

/// A k x k conv as a LoCon target, named and sized as the checkpoint has it.
pub fn conv_target(c: &Conv, role: LayerRole) -> TargetLayer {
    TargetLayer {
        name: c.name.clone(),
        in_features: c.in_channels(),
        out_features: c.out_channels(),
        kind: LayerKind::Conv { kernel: c.kernel() },
        role,
    }
}

fn shape_error(t: &Tensor) -> Error {
    Error::BadShape {
        op: "resnet backward",
        name: "dh",
        shape: t.shape().clone(),
        expected: "[N, C, H, W]".into(),
    }
}
