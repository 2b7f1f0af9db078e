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
//! Backward: dy -> conv2ᵀ -> norm2ᵀ -> (the time term has no gradient we need) -> conv1ᵀ ->
//! norm1ᵀ, plus the shortcut's gradient (dy itself, or conv_shortcutᵀ dy); the adapted convs
//! write their adapters' gradients on the way.

use crate::backend::NormStats;
use crate::error::Result;
use crate::lora::{LayerKind, LayerRole, LoraGrads, TargetLayer};
use crate::model::layers::{hw, Conv, ConvSaved, Ctx, GroupNorm, Linear};
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
}

impl ResnetSaved {
    pub fn size_in_bytes(&self) -> usize {
        self.x.size_in_bytes()
            + self.h.size_in_bytes()
            + self.stats1.size_in_bytes()
            + self.stats2.size_in_bytes()
            + [&self.conv1, &self.conv2]
                .iter()
                .filter_map(|c| c.as_ref())
                .map(ConvSaved::size_in_bytes)
                .sum::<usize>()
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
        if let (Some(proj), Some(t)) = (&self.time_emb_proj, temb_silu) {
            let bias = proj.forward(cx, t)?.y;
            h = cx.be.add_channel_bias(&h, &bias)?;
        }
        let (b, stats2) = self.norm2.forward(cx, &h, true)?;
        let (h2, conv2) = self.conv2.forward_saving(cx, b, save)?;
        let y = match &self.conv_shortcut {
            Some(sc) => cx.be.add(&sc.forward(cx, &x)?, &h2)?,
            None => cx.be.add(&x, &h2)?,
        };
        let saved = save.then_some(ResnetSaved {
            x,
            stats1,
            h,
            stats2,
            conv1,
            conv2,
        });
        Ok((y, saved))
    }

    /// Whether `cx` attaches an adapter to conv1 or conv2 (LoCon).
    pub fn has_adapter(&self, cx: &Ctx) -> bool {
        self.conv1.has_adapter(cx) || self.conv2.has_adapter(cx)
    }

    /// The convs LoCon adapts (conv1, conv2; not the 1x1 shortcut), as sd-scripts targets
    /// them in a `ResnetBlock2D`.
    pub fn conv_targets(&self, out: &mut Vec<TargetLayer>) {
        for c in [&self.conv1, &self.conv2] {
            out.push(conv_target(c, LayerRole::ResnetConv));
        }
    }

    /// dX from dY; the adapted convs' gradients go into `grads`.
    pub fn backward(
        &self,
        cx: &Ctx,
        dy: &Tensor,
        s: ResnetSaved,
        grads: &mut LoraGrads,
    ) -> Result<Tensor> {
        let db = self
            .conv2
            .backward_saved(cx, dy, hw(&s.h), s.conv2, grads)?;
        let dh = self.norm2.backward(cx, &db, &s.h, &s.stats2, true)?;
        drop(db);
        let da = self
            .conv1
            .backward_saved(cx, &dh, hw(&s.x), s.conv1, grads)?;
        drop(dh);
        let mut dx = self.norm1.backward(cx, &da, &s.x, &s.stats1, true)?;
        match &self.conv_shortcut {
            Some(sc) => cx.be.add_assign(&mut dx, &sc.backward(cx, dy, hw(&s.x))?)?,
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
