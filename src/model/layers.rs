//! The frozen layers the models are built from, each with its forward and, where a gradient
//! flows through it, its backward side by side. Nothing here holds activations: the blocks
//! decide what to save (see each block's `Saved`).

use crate::backend::{
    Adapter, AdapterBackward, Backend, Conv2d as ConvParams, LoraBackward, NormStats,
};
use crate::error::{Error, Result};
use crate::lora::dora::Dora;
use crate::lora::loha::{self, Hada};
use crate::lora::{LoraDropout, LoraGrads, LoraSet};
use crate::model::weights::Loader;
use crate::tensor::{Shape, Tensor};

/// What every forward and backward needs: the backend, the adapters if any, and during a
/// training forward the LoRA dropout source if any.
#[derive(Clone, Copy)]
pub struct Ctx<'a> {
    pub be: &'a dyn Backend,
    pub lora: Option<&'a LoraSet>,
    /// Draws a fresh keep mask for every adapter call of a forward (kohya's
    /// `network_dropout`). `None` (inference, sampling, validation): no dropout.
    pub dropout: Option<&'a LoraDropout>,
    /// Gradient checkpointing: a saving forward of the UNet keeps only each layer's input,
    /// and its backward runs the layer's forward again (model/unet/checkpoint.rs).
    pub checkpoint: bool,
}

impl<'a> Ctx<'a> {
    /// A context without dropout.
    pub fn new(be: &'a dyn Backend, lora: Option<&'a LoraSet>) -> Self {
        Ctx {
            be,
            lora,
            dropout: None,
            checkpoint: false,
        }
    }
    /// The same context with LoRA dropout drawn from `dropout` (one source per training
    /// micro-batch, see [`LoraDropout::for_site`]). The backward needs no source: each layer
    /// saves its mask (see [`LoraSaved`]).
    pub fn with_dropout(self, dropout: Option<&'a LoraDropout>) -> Self {
        Ctx { dropout, ..self }
    }
    /// The same context with gradient checkpointing on or off.
    pub fn with_checkpointing(self, checkpoint: bool) -> Self {
        Ctx { checkpoint, ..self }
    }
}

/// A linear layer (or a 1x1 conv applied to tokens) that may carry a LoRA.
pub struct Linear {
    /// kohya's module name (`lora_unet_…`): the key of its adapter in a `LoraSet`.
    pub name: String,
    /// [out, in].
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

/// What an adapter's forward leaves for its backward.
pub struct LoraSaved {
    /// ũ = (x·Aᵀ) ⊙ mask, [.., rank]: the hidden after dropout (u itself without), for dB.
    pub hidden: Tensor,
    /// The keep mask the forward drew ([.., rank], 0 or 1/(1−p)), for dA and dX; `None`
    /// without dropout.
    pub mask: Option<Tensor>,
}

impl LoraSaved {
    pub fn size_in_bytes(&self) -> usize {
        self.hidden.size_in_bytes() + self.mask.as_ref().map_or(0, Tensor::size_in_bytes)
    }
}

/// What a linear layer's forward returns: y, and what its adapter's backward needs when an
/// adapter is attached.
pub struct LinearOut {
    pub y: Tensor,
    pub lora: Option<LoraSaved>,
}

impl Linear {
    /// `path.weight` [out, in] (or [out, in, 1, 1] for a 1x1 conv) and optionally `path.bias`.
    pub fn load(l: &Loader, in_f: usize, out_f: usize, bias: bool) -> Result<Linear> {
        Ok(Linear {
            name: l.module_name(),
            weight: l.tensor("weight", &[out_f, in_f])?,
            bias: if bias {
                Some(l.tensor("bias", &[out_f])?)
            } else {
                None
            },
        })
    }
    /// A 1x1 conv's weights [out, in, 1, 1] used as a linear layer on tokens.
    pub fn load_conv1x1(l: &Loader, in_f: usize, out_f: usize) -> Result<Linear> {
        let w = l
            .tensor("weight", &[out_f, in_f, 1, 1])?
            .reshape([out_f, in_f])?;
        Ok(Linear {
            name: l.module_name(),
            weight: w,
            bias: Some(l.tensor("bias", &[out_f])?),
        })
    }
    pub fn in_features(&self) -> usize {
        self.weight.dims()[1]
    }
    pub fn out_features(&self) -> usize {
        self.weight.dims()[0]
    }
    /// The adapter attached to this layer: its index in the set, and the set.
    fn adapter<'c>(&self, cx: &Ctx<'c>) -> Option<(usize, &'c LoraSet)> {
        let set = cx.lora?;
        set.find(&self.name).map(|i| (i, set))
    }
    /// Whether `cx` attaches an adapter to this layer (its backward then writes gradients).
    pub fn has_adapter(&self, cx: &Ctx) -> bool {
        self.adapter(cx).is_some()
    }

    /// y = x·Wᵀ + b (+ the adapter's term), x [.., in]. With a dropout source in `cx`, the
    /// adapter's hidden gets a fresh mask, returned in `LinearOut::lora` for the backward.
    pub fn forward(&self, cx: &Ctx, x: &Tensor) -> Result<LinearOut> {
        let Some((i, set)) = self.adapter(cx) else {
            let out = cx.be.linear(x, &self.weight, self.bias.as_ref(), None)?;
            return Ok(LinearOut {
                y: out.y,
                lora: None,
            });
        };
        let module = &set.modules()[i];
        if let Some(d) = module.dora() {
            no_dropout(cx, &self.name, "DoRA")?;
            let v = d
                .decompose(cx.be, &self.weight)?
                .like(cx.be, &self.weight)?;
            let y = cx.be.linear(x, &v, self.bias.as_ref(), None)?.y;
            return Ok(LinearOut { y, lora: None });
        }
        if let Some(h) = module.hada() {
            no_dropout(cx, &self.name, "LoHa")?;
            let dw = h.delta(cx.be)?.like(cx.be, &self.weight)?;
            let base = cx.be.linear(x, &self.weight, self.bias.as_ref(), None)?.y;
            let delta = cx.be.linear(x, &dw, None, None)?.y;
            return Ok(LinearOut {
                y: cx.be.add(&base, &delta)?,
                lora: None,
            });
        }
        let mask = match cx.dropout {
            Some(d) => {
                let shape = x.shape().with_last(module.rank());
                d.mask(cx.be, i, &shape, shape.rank() - 1, x.dtype())?
            }
            None => None,
        };
        let mut lora = module.as_lora();
        lora.dropout = mask.as_ref();
        let out = cx.be.linear(
            x,
            &self.weight,
            self.bias.as_ref(),
            Some(Adapter::Lora(lora)),
        )?;
        Ok(LinearOut {
            y: out.y,
            lora: out.lora_hidden.map(|hidden| LoraSaved { hidden, mask }),
        })
    }

    /// Accumulates the adapter's dA, dB into `grads` and returns dX if `want_dx`. `x` and
    /// `saved` are the forward's input and `LinearOut::lora`.
    pub fn backward(
        &self,
        cx: &Ctx,
        dy: &Tensor,
        x: &Tensor,
        saved: Option<&LoraSaved>,
        grads: &mut LoraGrads,
        want_dx: bool,
    ) -> Result<Option<Tensor>> {
        let Some((i, set)) = self.adapter(cx) else {
            return cx.be.linear_backward(dy, &self.weight, None, want_dx);
        };
        if let Some(dora) = set.modules()[i].dora() {
            let be = cx.be;
            let d = dora.decompose(be, &self.weight)?;
            let g = loha::linear_weight_grad(be, x, dy, 1.0, dora.up.dtype())?;
            let accum = grads.accum;
            dora.backward(be, &d, g, grads.of_mut(i), accum)?;
            if !want_dx {
                return Ok(None);
            }
            return be.linear_backward(dy, &d.like(be, &self.weight)?, None, true);
        }
        if let Some(h) = set.modules()[i].hada() {
            let be = cx.be;
            let d = h.delta(be)?;
            let g = loha::linear_weight_grad(be, x, dy, h.scale, h.w1_a.dtype())?;
            let accum = grads.accum;
            h.backward(be, &d, g, grads.of_mut(i), accum)?;
            if !want_dx {
                return Ok(None);
            }
            let dw = d.like(be, &self.weight)?;
            return add_opt(
                be,
                be.linear_backward(dy, &self.weight, None, true)?,
                be.linear_backward(dy, &dw, None, true)?,
            );
        }
        let saved = saved.ok_or_else(|| Error::BadValue {
            op: "linear backward",
            name: "saved lora hidden",
            value: self.name.clone(),
            expected: "the forward's x·Aᵀ, saved when the adapter was attached".into(),
        })?;
        let mut lora = set.modules()[i].as_lora();
        lora.dropout = saved.mask.as_ref();
        let accum = grads.accum;
        let (gd, gu) = (&mut grads.down[i], &mut grads.up[i]);
        cx.be.linear_backward(
            dy,
            &self.weight,
            Some(AdapterBackward::Lora(LoraBackward {
                lora,
                x,
                hidden: &saved.hidden,
                grad_down: gd,
                grad_up: gu,
                accum,
            })),
            want_dx,
        )
    }
}

impl Linear {
    /// [`Linear::backward`] when dX is wanted: always returns it.
    pub fn backward_dx(
        &self,
        cx: &Ctx,
        dy: &Tensor,
        x: &Tensor,
        saved: Option<&LoraSaved>,
        grads: &mut LoraGrads,
    ) -> Result<Tensor> {
        self.backward(cx, dy, x, saved, grads, true)?
            .ok_or_else(|| Error::BadValue {
                op: "linear backward",
                name: "dx",
                value: self.name.clone(),
                expected: "an input gradient when one is asked for".into(),
            })
    }
}

/// LoHa and DoRA draw no dropout masks (lora/loha.rs, lora/dora.rs): an active dropout
/// source is an error naming the layer and the adapter kind.
fn no_dropout(cx: &Ctx, name: &str, kind: &str) -> Result<()> {
    match cx.dropout {
        Some(d) if d.draws_masks() => Err(Error::BadValue {
            op: "adapter forward",
            name: "dropout",
            value: name.to_string(),
            expected: format!(
                "no lora_dropout, rank_dropout or module_dropout on a {kind} adapter"
            ),
        }),
        _ => Ok(()),
    }
}

/// a + b of two gradients a backward returned.
fn add_opt(be: &dyn Backend, a: Option<Tensor>, b: Option<Tensor>) -> Result<Option<Tensor>> {
    Ok(match (a, b) {
        (Some(a), Some(b)) => Some(be.add(&a, &b)?),
        (a, b) => a.or(b),
    })
}

/// kohya's prefix of the (one) text encoder's modules, SD1.x's and SD2.x's.
pub const TE_LORA: &str = "lora_te";

/// `unet.down_blocks.0.attentions.0.proj_in` -> `lora_unet_down_blocks_0_attentions_0_proj_in`.
pub fn kohya_name(path: &str) -> String {
    let (model, _) = path.split_once('.').unwrap_or((path, ""));
    let prefix = match model {
        "unet" => "lora_unet",
        "text_encoder" => TE_LORA,
        other => other,
    };
    kohya_name_as(path, prefix)
}

/// [`kohya_name`] with the path's first part (the model's component) replaced by
/// `lora_prefix`: SDXL's `text_encoder.…` and `text_encoder_2.…` are `lora_te1_…` and
/// `lora_te2_…` in kohya's files.
pub fn kohya_name_as(path: &str, lora_prefix: &str) -> String {
    let rest = path.split_once('.').map_or("", |(_, r)| r);
    format!("{lora_prefix}_{}", rest.replace('.', "_"))
}

/// A frozen 2-D convolution that may carry a LoRA (LoCon: down [r, in, k, k] with the conv's
/// stride and padding, up [out, r, 1, 1]).
pub struct Conv {
    /// kohya's module name (`lora_unet_down_blocks_0_resnets_0_conv1`): the key of its
    /// adapter in a `LoraSet`.
    pub name: String,
    /// [O, C, k, k].
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub params: ConvParams,
}

/// What a conv adapter's forward leaves for its backward: the layer's input (for d(down)) and
/// the adapter's hidden and mask.
pub struct ConvSaved {
    pub x: Tensor,
    /// A LoRA's hidden and mask (`None` for LoHa and DoRA, whose backward needs only x).
    pub lora: Option<LoraSaved>,
}

impl ConvSaved {
    pub fn size_in_bytes(&self) -> usize {
        self.x.size_in_bytes() + self.lora.as_ref().map_or(0, LoraSaved::size_in_bytes)
    }
}

impl Conv {
    pub fn load(
        l: &Loader,
        c: usize,
        o: usize,
        k: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Conv> {
        Ok(Conv {
            name: l.module_name(),
            weight: l.tensor("weight", &[o, c, k, k])?,
            bias: Some(l.tensor("bias", &[o])?),
            params: ConvParams { stride, padding },
        })
    }
    pub fn in_channels(&self) -> usize {
        self.weight.dims()[1]
    }
    pub fn out_channels(&self) -> usize {
        self.weight.dims()[0]
    }
    pub fn kernel(&self) -> usize {
        self.weight.dims()[2]
    }
    /// The adapter attached to this conv: its index in the set, and the set.
    fn adapter<'c>(&self, cx: &Ctx<'c>) -> Option<(usize, &'c LoraSet)> {
        let set = cx.lora?;
        set.find(&self.name).map(|i| (i, set))
    }
    /// Whether `cx` attaches an adapter to this conv (its backward then writes gradients).
    pub fn has_adapter(&self, cx: &Ctx) -> bool {
        self.adapter(cx).is_some()
    }
    /// y = conv(x) + b (+ the adapter's term, without dropout: inference).
    pub fn forward(&self, cx: &Ctx, x: &Tensor) -> Result<Tensor> {
        let module = self.adapter(cx).map(|(i, set)| &set.modules()[i]);
        if let Some(h) = module.and_then(|m| m.hada()) {
            return self.forward_hada(cx, x, h);
        }
        if let Some(d) = module.and_then(|m| m.dora()) {
            return self.forward_dora(cx, x, d);
        }
        let adapter = module.map(|m| Adapter::Lora(m.as_lora()));
        cx.be
            .conv2d(x, &self.weight, self.bias.as_ref(), self.params, adapter)
    }
    /// conv(x, V) + b for a DoRA adapter (lora/dora.rs).
    fn forward_dora(&self, cx: &Ctx, x: &Tensor, d: Dora) -> Result<Tensor> {
        no_dropout(cx, &self.name, "DoRA")?;
        let v = d
            .decompose(cx.be, &self.weight)?
            .like(cx.be, &self.weight)?;
        cx.be.conv2d(x, &v, self.bias.as_ref(), self.params, None)
    }
    /// conv(x, W) + b + conv(x, ΔW) for a LoHa adapter (lora/loha.rs).
    fn forward_hada(&self, cx: &Ctx, x: &Tensor, h: Hada) -> Result<Tensor> {
        no_dropout(cx, &self.name, "LoHa")?;
        let dw = h.delta(cx.be)?.like(cx.be, &self.weight)?;
        let base = cx
            .be
            .conv2d(x, &self.weight, self.bias.as_ref(), self.params, None)?;
        let delta = cx.be.conv2d(x, &dw, None, self.params, None)?;
        cx.be.add(&base, &delta)
    }
    /// The forward of a training step: with an adapter attached, its dropout mask drawn from
    /// `cx` and, when `save`, what [`Conv::backward_saved`] needs (x is kept then).
    pub fn forward_saving(
        &self,
        cx: &Ctx,
        x: Tensor,
        save: bool,
    ) -> Result<(Tensor, Option<ConvSaved>)> {
        let Some((i, set)) = self.adapter(cx) else {
            return Ok((self.forward(cx, &x)?, None));
        };
        let module = &set.modules()[i];
        if let Some(h) = module.hada() {
            let y = self.forward_hada(cx, &x, h)?;
            return Ok((y, save.then_some(ConvSaved { x, lora: None })));
        }
        if let Some(d) = module.dora() {
            let y = self.forward_dora(cx, &x, d)?;
            return Ok((y, save.then_some(ConvSaved { x, lora: None })));
        }
        let mask = match cx.dropout {
            Some(d) => {
                let (h, w) = hw(&x);
                let k = self.kernel();
                let size = |n| self.params.out_size(n, k).unwrap_or(0);
                let shape = [x.dims()[0], module.rank(), size(h), size(w)];
                d.mask(cx.be, i, &Shape::new(shape), 1, x.dtype())?
            }
            None => None,
        };
        let mut lora = module.as_lora();
        lora.dropout = mask.as_ref();
        let out = cx.be.conv2d_out(
            &x,
            &self.weight,
            self.bias.as_ref(),
            self.params,
            Some(Adapter::Lora(lora)),
        )?;
        let saved = match (save, out.lora_hidden) {
            (true, Some(hidden)) => Some(ConvSaved {
                x,
                lora: Some(LoraSaved { hidden, mask }),
            }),
            _ => None,
        };
        Ok((out.y, saved))
    }
    /// dX for an input of spatial size `input_hw` (the weights are frozen: only the shape of
    /// the input is needed, never its values).
    pub fn backward(&self, cx: &Ctx, dy: &Tensor, input_hw: (usize, usize)) -> Result<Tensor> {
        cx.be
            .conv2d_input_grad(dy, &self.weight, input_hw, self.params)
    }
    /// dX, and with an adapter attached its d(down), d(up) into `grads` from what
    /// [`Conv::forward_saving`] saved.
    pub fn backward_saved(
        &self,
        cx: &Ctx,
        dy: &Tensor,
        input_hw: (usize, usize),
        saved: Option<ConvSaved>,
        grads: &mut LoraGrads,
    ) -> Result<Tensor> {
        let Some((i, set)) = self.adapter(cx) else {
            return self.backward(cx, dy, input_hw);
        };
        let saved = saved.ok_or_else(|| Error::BadValue {
            op: "conv backward",
            name: "saved lora hidden",
            value: self.name.clone(),
            expected: "the forward's input and hidden, saved when the adapter was attached".into(),
        })?;
        if let Some(dora) = set.modules()[i].dora() {
            let be = cx.be;
            let (p, w) = (self.params, &self.weight);
            let d = dora.decompose(be, w)?;
            let g = loha::conv_weight_grad(be, &saved.x, dy, p, w, 1.0, dora.up.dtype())?;
            let accum = grads.accum;
            dora.backward(be, &d, g, grads.of_mut(i), accum)?;
            return be.conv2d_input_grad(dy, &d.like(be, w)?, input_hw, p);
        }
        if let Some(h) = set.modules()[i].hada() {
            let be = cx.be;
            let d = h.delta(be)?;
            let (p, w) = (self.params, &self.weight);
            let g = loha::conv_weight_grad(be, &saved.x, dy, p, w, h.scale, h.w1_a.dtype())?;
            let accum = grads.accum;
            h.backward(be, &d, g, grads.of_mut(i), accum)?;
            let dw = d.like(be, w)?;
            let dx = be.conv2d_input_grad(dy, w, input_hw, p)?;
            return be.add(&dx, &be.conv2d_input_grad(dy, &dw, input_hw, p)?);
        }
        let saved_lora = saved.lora.as_ref().ok_or_else(|| Error::BadValue {
            op: "conv backward",
            name: "saved lora hidden",
            value: self.name.clone(),
            expected: "the forward's hidden, saved when the LoRA was attached".into(),
        })?;
        let mut lora = set.modules()[i].as_lora();
        lora.dropout = saved_lora.mask.as_ref();
        let accum = grads.accum;
        let (gd, gu) = (&mut grads.down[i], &mut grads.up[i]);
        cx.be.conv2d_backward(
            dy,
            &self.weight,
            input_hw,
            self.params,
            Some(AdapterBackward::Lora(LoraBackward {
                lora,
                x: &saved.x,
                hidden: &saved_lora.hidden,
                grad_down: gd,
                grad_up: gu,
                accum,
            })),
        )
    }
}

/// A frozen GroupNorm, optionally followed by SiLU in the same op.
pub struct GroupNorm {
    pub gamma: Tensor,
    pub beta: Tensor,
    pub groups: usize,
    pub eps: f64,
}

impl GroupNorm {
    pub fn load(l: &Loader, c: usize, groups: usize, eps: f64) -> Result<GroupNorm> {
        Ok(GroupNorm {
            gamma: l.tensor("weight", &[c])?,
            beta: l.tensor("bias", &[c])?,
            groups,
            eps,
        })
    }
    pub fn forward(&self, cx: &Ctx, x: &Tensor, silu: bool) -> Result<(Tensor, NormStats)> {
        cx.be
            .group_norm(x, &self.gamma, &self.beta, self.groups, self.eps, silu)
    }
    pub fn backward(
        &self,
        cx: &Ctx,
        dy: &Tensor,
        x: &Tensor,
        stats: &NormStats,
        silu: bool,
    ) -> Result<Tensor> {
        cx.be
            .group_norm_backward(dy, x, &self.gamma, &self.beta, stats, self.groups, silu)
    }
}

/// A frozen LayerNorm over the last dimension.
pub struct LayerNorm {
    pub gamma: Tensor,
    pub beta: Tensor,
    pub eps: f64,
}

impl LayerNorm {
    pub fn load(l: &Loader, c: usize, eps: f64) -> Result<LayerNorm> {
        Ok(LayerNorm {
            gamma: l.tensor("weight", &[c])?,
            beta: l.tensor("bias", &[c])?,
            eps,
        })
    }
    pub fn forward(&self, cx: &Ctx, x: &Tensor) -> Result<(Tensor, NormStats)> {
        cx.be.layer_norm(x, &self.gamma, &self.beta, self.eps)
    }
    pub fn backward(&self, cx: &Ctx, dy: &Tensor, x: &Tensor, stats: &NormStats) -> Result<Tensor> {
        cx.be.layer_norm_backward(dy, x, &self.gamma, stats)
    }
}

/// (H, W) of an NCHW tensor.
pub fn hw(x: &Tensor) -> (usize, usize) {
    let d = x.dims();
    (d[2], d[3])
}
