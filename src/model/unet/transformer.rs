//! Transformer2DModel with its BasicTransformerBlocks (one in SD1.x/SD2.x, 1, 2 or 10 in
//! SDXL, chained), as in diffusers' UNet, and their attention. Every linear here (and the 1x1
//! proj_in/proj_out, applied to tokens) is a LoRA target: 10 per block plus 2, 16
//! Transformer2Ds of one block in SD1.5, 192 modules.
//!
//! Forward, x [N, C, H, W], context [N, 77, D]:
//!   t  = tokens(GroupNorm(x))            [N, HW, C]   (32 groups, eps 1e-6)
//!   x1 = proj_in(t)
//!   each block (x1 -> x4, the next block's x1):
//!   x2 = x1 + attn1(norm1(x1))           self-attention
//!   x3 = x2 + attn2(norm2(x2), context)  cross-attention
//!   x4 = x3 + ff2(geglu(ff0(norm3(x3)))) ff0 = ff.net.0.proj [2F, C], ff2 = ff.net.2 [C, F]
//!   y  = x + map(proj_out(x4 of the last block))
//! attention(x, ctx) = to_out(softmax(q·kᵀ/sqrt(d))·v), q = to_q(x), k, v = to_k, to_v(ctx).
//!
//! Saved, and why (the weights are frozen; a LoRA needs its input X, ũ = (X·Aᵀ) ⊙ mask and
//! the dropout mask if any):
//!   x and GroupNorm stats    t is recomputed from them (proj_in's X, and GroupNorm's backward)
//!   per block, x1, x2, x3 and the three LayerNorm stats: the LayerNorm inputs; their outputs (the q/k/v
//!                            and ff0 inputs) are recomputed, one cheap pass each
//!   q, k, v, o, lse of both attentions: the flash-style backward; o is also to_out's X
//!   f = ff0 output           GEGLU's input; geglu(f), ff2's X, is recomputed
//!   x4                       proj_out's X
//!   each adapter's ũ and, with LoRA dropout, its mask (`LoraSaved`): tiny ([tokens, rank])
//! Not saved: the norm outputs, the GEGLU output, the attention probabilities, proj_out's
//! output, the block output.

use crate::backend::NormStats;
use crate::error::{Error, Result};
use crate::lora::{LayerKind, LayerRole, LoraGrads, TargetLayer};
use crate::model::attention::{
    opt_bytes, target, Attention, AttentionGrads, AttentionSaved, AttentionSpec,
};
use crate::model::layers::{Ctx, GroupNorm, LayerNorm, Linear, LoraSaved};
use crate::model::weights::Loader;
use crate::tensor::Tensor;

/// One BasicTransformerBlock: self-attention, cross-attention, GEGLU feed-forward, each
/// behind a LayerNorm and a residual.
pub struct TransformerBlock {
    pub norm1: LayerNorm,
    pub attn1: Attention,
    pub norm2: LayerNorm,
    pub attn2: Attention,
    pub norm3: LayerNorm,
    pub ff0: Linear,
    pub ff2: Linear,
}

pub struct BlockSaved {
    x1: Tensor,
    s1: NormStats,
    a1: AttentionSaved,
    x2: Tensor,
    s2: NormStats,
    a2: AttentionSaved,
    x3: Tensor,
    s3: NormStats,
    u_ff0: Option<LoraSaved>,
    f: Tensor,
    u_ff2: Option<LoraSaved>,
}

impl BlockSaved {
    pub fn size_in_bytes(&self) -> usize {
        [&self.x1, &self.x2, &self.x3, &self.f]
            .iter()
            .map(|t| t.size_in_bytes())
            .sum::<usize>()
            + [&self.s1, &self.s2, &self.s3]
                .iter()
                .map(|s| s.size_in_bytes())
                .sum::<usize>()
            + self.a1.size_in_bytes()
            + self.a2.size_in_bytes()
            + opt_bytes(&self.u_ff0)
            + opt_bytes(&self.u_ff2)
    }
}

impl TransformerBlock {
    pub fn load(l: &Loader, c: usize, c_ctx: usize, heads: usize) -> Result<Self> {
        let inner = 4 * c;
        Ok(TransformerBlock {
            norm1: LayerNorm::load(&l.at("norm1"), c, 1e-5)?,
            attn1: Attention::load(&l.at("attn1"), AttentionSpec::diffusers(c, c, heads))?,
            norm2: LayerNorm::load(&l.at("norm2"), c, 1e-5)?,
            attn2: Attention::load(&l.at("attn2"), AttentionSpec::diffusers(c, c_ctx, heads))?,
            norm3: LayerNorm::load(&l.at("norm3"), c, 1e-5)?,
            ff0: Linear::load(&l.at("ff.net.0.proj"), c, 2 * inner, true)?,
            ff2: Linear::load(&l.at("ff.net.2"), inner, c, true)?,
        })
    }

    pub fn forward(
        &self,
        cx: &Ctx,
        x1: Tensor,
        context: &Tensor,
        save: bool,
    ) -> Result<(Tensor, Option<BlockSaved>)> {
        let (n1, s1) = self.norm1.forward(cx, &x1)?;
        let (a, a1) = self.attn1.forward(cx, &n1, None, save)?;
        drop(n1);
        let x2 = cx.be.add(&x1, &a)?;
        let (n2, s2) = self.norm2.forward(cx, &x2)?;
        let (a, a2) = self.attn2.forward(cx, &n2, Some(context), save)?;
        drop(n2);
        let x3 = cx.be.add(&x2, &a)?;
        let (n3, s3) = self.norm3.forward(cx, &x3)?;
        let f = self.ff0.forward(cx, &n3)?;
        drop(n3);
        let g = cx.be.geglu(&f.y)?;
        let ff = self.ff2.forward(cx, &g)?;
        drop(g);
        let x4 = cx.be.add(&x3, &ff.y)?;
        let saved = match (a1, a2) {
            (Some(a1), Some(a2)) => Some(BlockSaved {
                x1,
                s1,
                a1,
                x2,
                s2,
                a2,
                x3,
                s3,
                u_ff0: f.lora,
                f: f.y,
                u_ff2: ff.lora,
            }),
            _ => None,
        };
        Ok((x4, saved))
    }

    pub fn backward(
        &self,
        cx: &Ctx,
        dx4: &Tensor,
        context: &Tensor,
        s: BlockSaved,
        grads: &mut LoraGrads,
        d_context: Option<&mut Tensor>,
    ) -> Result<Tensor> {
        // Feed-forward: x4 = x3 + ff2(geglu(ff0(norm3(x3)))).
        let g = cx.be.geglu(&s.f)?;
        let dg = self.ff2.backward_dx(cx, dx4, &g, s.u_ff2.as_ref(), grads)?;
        drop(g);
        let df = cx.be.geglu_backward(&dg, &s.f)?;
        drop(dg);
        let (n3, _) = self.norm3.forward(cx, &s.x3)?;
        let dn3 = self
            .ff0
            .backward_dx(cx, &df, &n3, s.u_ff0.as_ref(), grads)?;
        drop((df, n3));
        let mut dx3 = self.norm3.backward(cx, &dn3, &s.x3, &s.s3)?;
        cx.be.add_assign(&mut dx3, dx4)?;
        // Cross-attention: x3 = x2 + attn2(norm2(x2), context).
        let (n2, _) = self.norm2.forward(cx, &s.x2)?;
        let into = AttentionGrads {
            x: &n2,
            context: Some(context),
            want_dx: true,
            d_context,
        };
        let dn2 = self.attn2.backward(cx, &dx3, s.a2, grads, into)?;
        let dn2 = dn2.ok_or_else(|| missing("attn2"))?;
        drop(n2);
        let mut dx2 = self.norm2.backward(cx, &dn2, &s.x2, &s.s2)?;
        cx.be.add_assign(&mut dx2, &dx3)?;
        drop(dx3);
        // Self-attention: x2 = x1 + attn1(norm1(x1)).
        let (n1, _) = self.norm1.forward(cx, &s.x1)?;
        let into = AttentionGrads {
            x: &n1,
            context: None,
            want_dx: true,
            d_context: None,
        };
        let dn1 = self.attn1.backward(cx, &dx2, s.a1, grads, into)?;
        let dn1 = dn1.ok_or_else(|| missing("attn1"))?;
        drop(n1);
        let mut dx1 = self.norm1.backward(cx, &dn1, &s.x1, &s.s1)?;
        cx.be.add_assign(&mut dx1, &dx2)?;
        Ok(dx1)
    }

    fn targets(&self, out: &mut Vec<TargetLayer>) {
        self.attn1.targets(out);
        self.attn2.targets(out);
        out.push(target(&self.ff0, LayerKind::Linear, LayerRole::FeedForward));
        out.push(target(&self.ff2, LayerKind::Linear, LayerRole::FeedForward));
    }
}

/// What a Transformer2D is built with.
pub struct Transformer2DSpec {
    pub channels: usize,
    /// Width of the text embeddings cross-attention reads.
    pub context_dim: usize,
    pub heads: usize,
    pub groups: usize,
    /// Linear proj_in/proj_out (SD2.x, SDXL) instead of 1x1 convs (SD1.x).
    pub linear_projection: bool,
    /// The number of BasicTransformerBlocks.
    pub depth: usize,
}

/// Transformer2DModel: GroupNorm, proj_in, the blocks in order, proj_out, residual.
pub struct Transformer2D {
    pub norm: GroupNorm,
    pub proj_in: Linear,
    pub blocks: Vec<TransformerBlock>,
    pub proj_out: Linear,
    /// What proj_in/proj_out are in the checkpoint, and so the shape of their adapters in a
    /// kohya file: SD1.x's 1x1 convs, SD2.x's and SDXL's Linear layers.
    pub projection: LayerKind,
}

pub struct Transformer2DSaved {
    x: Tensor,
    stats: NormStats,
    u_in: Option<LoraSaved>,
    blocks: Vec<BlockSaved>,
    x4: Tensor,
    u_out: Option<LoraSaved>,
}

impl Transformer2DSaved {
    pub fn size_in_bytes(&self) -> usize {
        self.x.size_in_bytes()
            + self.stats.size_in_bytes()
            + self
                .blocks
                .iter()
                .map(BlockSaved::size_in_bytes)
                .sum::<usize>()
            + self.x4.size_in_bytes()
            + opt_bytes(&self.u_in)
            + opt_bytes(&self.u_out)
    }
}

impl Transformer2D {
    /// SD1.x: proj_in/proj_out are 1x1 convs ([C, C, 1, 1]) in the checkpoint;
    /// `spec.linear_projection` loads them as linear layers ([C, C]) instead.
    pub fn load(l: &Loader, spec: &Transformer2DSpec) -> Result<Self> {
        let c = spec.channels;
        let proj = |name: &str| {
            if spec.linear_projection {
                Linear::load(&l.at(name), c, c, true)
            } else {
                Linear::load_conv1x1(&l.at(name), c, c)
            }
        };
        Ok(Transformer2D {
            norm: GroupNorm::load(&l.at("norm"), c, spec.groups, 1e-6)?,
            proj_in: proj("proj_in")?,
            blocks: (0..spec.depth)
                .map(|i| {
                    let at = l.at(&format!("transformer_blocks.{i}"));
                    TransformerBlock::load(&at, c, spec.context_dim, spec.heads)
                })
                .collect::<Result<_>>()?,
            proj_out: proj("proj_out")?,
            projection: if spec.linear_projection {
                LayerKind::Linear
            } else {
                LayerKind::Conv1x1
            },
        })
    }

    pub fn forward(
        &self,
        cx: &Ctx,
        x: Tensor,
        context: &Tensor,
        save: bool,
    ) -> Result<(Tensor, Option<Transformer2DSaved>)> {
        let (h, w) = (x.dims()[2], x.dims()[3]);
        let (t, stats) = self.tokens(cx, &x)?;
        let pin = self.proj_in.forward(cx, &t)?;
        drop(t);
        let mut x4 = pin.y;
        let mut blocks = Vec::with_capacity(self.blocks.len());
        for block in &self.blocks {
            let (y, s) = block.forward(cx, x4, context, save)?;
            x4 = y;
            blocks.extend(s);
        }
        let pout = self.proj_out.forward(cx, &x4)?;
        let y = cx.be.add(&x, &cx.be.nlc_to_nchw(&pout.y, h, w)?)?;
        let saved = (save && blocks.len() == self.blocks.len()).then(|| Transformer2DSaved {
            x,
            stats,
            u_in: pin.lora,
            blocks,
            x4,
            u_out: pout.lora,
        });
        Ok((y, saved))
    }

    /// tokens(GroupNorm(x)) and the GroupNorm stats.
    fn tokens(&self, cx: &Ctx, x: &Tensor) -> Result<(Tensor, NormStats)> {
        let (g, stats) = self.norm.forward(cx, x, false)?;
        Ok((cx.be.nchw_to_nlc(&g)?, stats))
    }

    /// `want_dx` false for the model's earliest adapter: nothing before it needs a gradient.
    /// `d_context`: where to add the context's gradient (see [`Attention::backward`]).
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        cx: &Ctx,
        dy: &Tensor,
        context: &Tensor,
        s: Transformer2DSaved,
        grads: &mut LoraGrads,
        want_dx: bool,
        d_context: Option<&mut Tensor>,
    ) -> Result<Option<Tensor>> {
        let (h, w) = (s.x.dims()[2], s.x.dims()[3]);
        let dt5 = cx.be.nchw_to_nlc(dy)?;
        let dx4 = self
            .proj_out
            .backward_dx(cx, &dt5, &s.x4, s.u_out.as_ref(), grads)?;
        drop((dt5, s.x4));
        let mut dx1 = dx4;
        let mut d_context = d_context;
        for (block, saved) in self.blocks.iter().zip(s.blocks).rev() {
            dx1 = block.backward(cx, &dx1, context, saved, grads, d_context.as_deref_mut())?;
        }
        let (t, _) = self.tokens(cx, &s.x)?;
        let dt = self
            .proj_in
            .backward(cx, &dx1, &t, s.u_in.as_ref(), grads, want_dx)?;
        let Some(dt) = dt else { return Ok(None) };
        let dg = cx.be.nlc_to_nchw(&dt, h, w)?;
        let mut dx = self.norm.backward(cx, &dg, &s.x, &s.stats, false)?;
        cx.be.add_assign(&mut dx, dy)?;
        Ok(Some(dx))
    }

    /// The adapters' possible places, in forward order.
    pub fn targets(&self, out: &mut Vec<TargetLayer>) {
        out.push(target(
            &self.proj_in,
            self.projection,
            LayerRole::Projection,
        ));
        for block in &self.blocks {
            block.targets(out);
        }
        out.push(target(
            &self.proj_out,
            self.projection,
            LayerRole::Projection,
        ));
    }
}

fn missing(what: &str) -> Error {
    Error::BadValue {
        op: "transformer backward",
        name: "dx",
        value: what.to_string(),
        expected: "the input gradient that was asked for".into(),
    }
}
