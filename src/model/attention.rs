//! Multi-head attention with LoRA-able projections, the one block every network here uses:
//! the UNet's self- and cross-attention (diffusers' `Attention`: to_q, to_k, to_v without
//! bias, to_out.0), CLIP's causal self-attention (q_proj, k_proj, v_proj, out_proj, all with
//! bias) and the VAE's single-head attention over positions (to_q.. with bias).
//!
//!   out = out_proj(softmax(q·kᵀ/sqrt(d))·v),  q = q_proj(x),  k, v = k_proj, v_proj(kv)
//! kv = x for self-attention, the context for cross-attention.
//!
//! Saved by a training forward, and why: q, k, v, o and the log-sum-exp of every score row
//! (the flash-style backward recomputes the probabilities from them; o is out_proj's input),
//! and each adapter's ũ (and dropout mask). The projections' input is not saved: the caller
//! has it (or recomputes it from a norm's input) and passes it to the backward.

use crate::backend::Attention as AttnParams;
use crate::error::Result;
use crate::lora::{LayerKind, LayerRole, LoraGrads, TargetLayer};
use crate::model::layers::{Ctx, Linear, LoraSaved};
use crate::model::weights::Loader;
use crate::tensor::Tensor;

/// The shape of an attention block and its weights' names.
#[derive(Clone, Copy, Debug)]
pub struct AttentionSpec {
    /// Query (and output) width.
    pub c: usize,
    /// Key/value input width (the text width for cross-attention).
    pub c_kv: usize,
    pub heads: usize,
    /// Query i sees keys 0..=i only (CLIP).
    pub causal: bool,
    /// The q/k/v projections carry biases (CLIP, the VAE).
    pub qkv_bias: bool,
    /// Names of the q, k, v and output projections below the block's path.
    pub names: [&'static str; 4],
}

impl AttentionSpec {
    /// diffusers' `Attention` as the UNet uses it: to_q/to_k/to_v without bias, to_out.0.
    pub fn diffusers(c: usize, c_kv: usize, heads: usize) -> Self {
        AttentionSpec {
            c,
            c_kv,
            heads,
            causal: false,
            qkv_bias: false,
            names: ["to_q", "to_k", "to_v", "to_out.0"],
        }
    }
}

/// Multi-head attention with LoRA-able projections.
pub struct Attention {
    pub to_q: Linear,
    pub to_k: Linear,
    pub to_v: Linear,
    pub to_out: Linear,
    pub heads: usize,
    pub causal: bool,
}

/// What the forward keeps for the backward (see the top of this file).
pub struct AttentionSaved {
    uq: Option<LoraSaved>,
    uk: Option<LoraSaved>,
    uv: Option<LoraSaved>,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    o: Tensor,
    lse: Tensor,
    uo: Option<LoraSaved>,
}

pub(crate) fn opt_bytes(t: &Option<LoraSaved>) -> usize {
    t.as_ref().map_or(0, LoraSaved::size_in_bytes)
}

impl AttentionSaved {
    pub fn size_in_bytes(&self) -> usize {
        [&self.q, &self.k, &self.v, &self.o, &self.lse]
            .iter()
            .map(|t| t.size_in_bytes())
            .sum::<usize>()
            + opt_bytes(&self.uq)
            + opt_bytes(&self.uk)
            + opt_bytes(&self.uv)
            + opt_bytes(&self.uo)
    }
}

/// Where the backward's input gradients go.
pub struct AttentionGrads<'a> {
    /// The projections' input (the query input; for self-attention also the key/value input).
    pub x: &'a Tensor,
    /// The context of a cross-attention; None for self-attention.
    pub context: Option<&'a Tensor>,
    /// d loss / d x is wanted (false where nothing below needs it: CLIP's first layer).
    pub want_dx: bool,
    /// For cross-attention: where to add d loss / d context (the text encoder is trained);
    /// None skips that work.
    pub d_context: Option<&'a mut Tensor>,
}

impl Attention {
    pub fn load(l: &Loader, spec: AttentionSpec) -> Result<Self> {
        let [q, k, v, o] = spec.names;
        let (c, c_kv, bias) = (spec.c, spec.c_kv, spec.qkv_bias);
        Ok(Attention {
            to_q: Linear::load(&l.at(q), c, c, bias)?,
            to_k: Linear::load(&l.at(k), c_kv, c, bias)?,
            to_v: Linear::load(&l.at(v), c_kv, c, bias)?,
            to_out: Linear::load(&l.at(o), c, c, true)?,
            heads: spec.heads,
            causal: spec.causal,
        })
    }

    fn params(&self) -> AttnParams {
        AttnParams {
            heads: self.heads,
            causal: self.causal,
        }
    }

    /// `x` [N, L, C]; `context` None for self-attention.
    pub fn forward(
        &self,
        cx: &Ctx,
        x: &Tensor,
        context: Option<&Tensor>,
        save: bool,
    ) -> Result<(Tensor, Option<AttentionSaved>)> {
        let kv_in = context.unwrap_or(x);
        let q = self.to_q.forward(cx, x)?;
        let k = self.to_k.forward(cx, kv_in)?;
        let v = self.to_v.forward(cx, kv_in)?;
        let (o, lse) = cx.be.attention(&q.y, &k.y, &v.y, self.params())?;
        let out = self.to_out.forward(cx, &o)?;
        let saved = save.then_some(AttentionSaved {
            uq: q.lora,
            uk: k.lora,
            uv: v.lora,
            q: q.y,
            k: k.y,
            v: v.y,
            o,
            lse,
            uo: out.lora,
        });
        Ok((out.y, saved))
    }

    /// The adapters' gradients and, when `g.want_dx`, d loss / d x (self-attention: through
    /// the query and the key/value paths); for cross-attention the key/value paths go into
    /// `g.d_context` when it is given.
    pub fn backward(
        &self,
        cx: &Ctx,
        dy: &Tensor,
        s: AttentionSaved,
        grads: &mut LoraGrads,
        mut g: AttentionGrads,
    ) -> Result<Option<Tensor>> {
        let d_o = self
            .to_out
            .backward_dx(cx, dy, &s.o, s.uo.as_ref(), grads)?;
        let (dq, dk, dv) =
            cx.be
                .attention_backward(&s.q, &s.k, &s.v, &s.o, &s.lse, &d_o, self.params())?;
        drop((d_o, s.q, s.k, s.v, s.o, s.lse));
        let mut dx = self
            .to_q
            .backward(cx, &dq, g.x, s.uq.as_ref(), grads, g.want_dx)?;
        drop(dq);
        let kv_in = g.context.unwrap_or(g.x);
        let self_attn = g.context.is_none();
        let want_kv = (self_attn && g.want_dx) || g.d_context.is_some();
        for (layer, d, u) in [
            (&self.to_k, dk, s.uk.as_ref()),
            (&self.to_v, dv, s.uv.as_ref()),
        ] {
            if let Some(gk) = layer.backward(cx, &d, kv_in, u, grads, want_kv)? {
                match (self_attn, dx.as_mut(), g.d_context.as_deref_mut()) {
                    (true, Some(acc), _) => cx.be.add_assign(acc, &gk)?,
                    (false, _, Some(dc)) => cx.be.add_assign(dc, &gk)?,
                    _ => {}
                }
            }
        }
        Ok(dx)
    }

    /// The four projections as adapter targets.
    pub fn targets(&self, out: &mut Vec<TargetLayer>) {
        for l in self.linears() {
            out.push(target(l, LayerKind::Linear, LayerRole::Attention));
        }
    }

    /// q, k, v and output projections, in forward order.
    pub fn linears(&self) -> [&Linear; 4] {
        [&self.to_q, &self.to_k, &self.to_v, &self.to_out]
    }
}

/// A linear layer as an adapter target.
pub fn target(l: &Linear, kind: LayerKind, role: LayerRole) -> TargetLayer {
    TargetLayer {
        name: l.name.clone(),
        in_features: l.in_features(),
        out_features: l.out_features(),
        kind,
        role,
    }
}
