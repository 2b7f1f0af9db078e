//! UNet2DConditionModel of SD1.x, SD2.x and SDXL, forward and the manual backward that
//! computes the gradient of the loss with respect to every LoRA adapter (the UNet itself is
//! frozen).
//!
//! Forward (diffusers' order), sample [N, 4, H, W], timesteps [N], context [N, 77, D]:
//!   emb  = linear_2(silu(linear_1(sinusoid(t))))              time MLP, [N, 4·C0]
//!   SDXL: emb += add_embedding(text_embeds, time_ids)         see added.rs
//!   h    = conv_in(sample);                 skips = [h]
//!   down level i: (resnet, attention?) × layers_per_block, each output pushed to skips;
//!                 then a stride-2 conv (not on the last level), pushed too
//!   mid:  resnet, attention, resnet
//!   up level i:   (concat(h, skips.pop()), resnet, attention?) × (layers_per_block + 1);
//!                 then nearest 2x + conv (not on the last level)
//!   out  = conv_out(silu(conv_norm_out(h)))
//!
//! Backward, from d loss / d out, is the literal reverse. Skip gradients are split off each
//! concat and added (`+=`) to the gradient flowing back into the down block that produced the
//! skip. It stops at the first layer of the down path that needs a gradient: the earliest
//! adapter (with the default targets, proj_in of the first attention: down level 0's in SD1.x,
//! level 1's in SDXL, whose first level has no attention), or the first attention when d
//! context is asked for. Nothing before it (conv_in, the resnets before it, the time MLP, the
//! text embeddings) needs one, unless d loss / d text_embeds is asked for (SDXL, see
//! added.rs): then it runs through every resnet, each adding its time projection's input
//! gradient.
//! What each block saves, and why, is written at the top of resnet.rs and transformer.rs; the
//! UNet adds only the conv_norm_out input and its stats, and the skip channel counts.

pub mod added;
mod checkpoint;
pub mod resnet;
pub mod transformer;

use crate::backend::{Activation, NormStats, TimestepEmbedding};
use crate::error::{Error, Result};
use crate::lora::{LayerRole, LoraGrads, LoraTargets, TargetLayer};
use crate::model::checkpoint::ldm::{diffusers_to_ldm_unet, LdmLayout};
use crate::model::config::{DownBlockType, UnetConfig, UpBlockType};
use crate::model::layers::{hw, kohya_name, Conv, ConvSaved, Ctx, GroupNorm, Linear};
use crate::model::weights::{Loader, WeightSource};
use crate::tensor::Tensor;
pub use added::AddedCond;
use added::{AddEmbedding, AddedSaved};
use checkpoint::{LayerTape, Shared};
use resnet::{ResnetBlock, ResnetSaved};
use transformer::{Transformer2D, Transformer2DSaved, Transformer2DSpec};

/// One (resnet, optional attention) pair of a down, mid or up level.
pub struct Layer {
    pub resnet: ResnetBlock,
    pub attention: Option<Transformer2D>,
}

struct LayerSaved {
    resnet: ResnetSaved,
    attention: Option<Transformer2DSaved>,
}

impl LayerSaved {
    fn size_in_bytes(&self) -> usize {
        self.resnet.size_in_bytes()
            + self
                .attention
                .as_ref()
                .map_or(0, Transformer2DSaved::size_in_bytes)
    }
}

impl UnetTape {
    /// Bytes held by the tape: everything a training forward keeps for the backward.
    pub fn size_in_bytes(&self) -> usize {
        self.bytes_by_block().iter().map(|(_, b)| b).sum()
    }
    /// The tape's bytes by diffusers block (`down_blocks.0` .. `up_blocks.3`, `mid_block`,
    /// `conv_norm_out` for the output norm's input and statistics), in forward order.
    pub fn bytes_by_block(&self) -> Vec<(String, usize)> {
        let mut out: Vec<(String, usize)> = Vec::new();
        for (i, d) in self.down.iter().enumerate() {
            let b: usize = d.layers.iter().map(LayerTape::size_in_bytes).sum();
            let conv = d.conv.as_ref().map_or(0, ConvSaved::size_in_bytes);
            out.push((format!("down_blocks.{i}"), b + conv));
        }
        let mid = self.mid.iter().map(LayerTape::size_in_bytes).sum();
        out.push(("mid_block".into(), mid));
        for (i, u) in self.up.iter().enumerate() {
            let b: usize = u.layers.iter().map(|(s, _)| s.size_in_bytes()).sum();
            let conv = u.conv.as_ref().map_or(0, ConvSaved::size_in_bytes);
            out.push((format!("up_blocks.{i}"), b + conv));
        }
        out.push((
            "conv_norm_out".into(),
            self.out_x.size_in_bytes() + self.out_stats.size_in_bytes(),
        ));
        let temb = self.temb.as_ref().map_or(0, Tensor::size_in_bytes)
            + self.added.as_ref().map_or(0, AddedSaved::size_in_bytes);
        if temb > 0 {
            out.push(("time_embedding".into(), temb));
        }
        out
    }
}

impl Layer {
    /// `name` is the layer's place, e.g. ("down_blocks.0", 1), for the trace.
    fn forward(
        &self,
        cx: &Ctx,
        x: Tensor,
        shared: &Shared,
        save: bool,
        name: (&str, usize),
        trace: &mut Option<&mut Trace>,
    ) -> Result<(Tensor, Option<LayerSaved>)> {
        let (h, rs) = self.resnet.forward(cx, x, Some(shared.temb), save)?;
        record(trace, || format!("{}.resnets.{}", name.0, name.1), &h);
        let (h, ats) = match &self.attention {
            Some(a) => {
                let (h, s) = a.forward(cx, h, shared.context, save)?;
                record(trace, || format!("{}.attentions.{}", name.0, name.1), &h);
                (h, s.map(Some))
            }
            None => (h, Some(None)),
        };
        let saved = match (rs, ats) {
            (Some(resnet), Some(attention)) => Some(LayerSaved { resnet, attention }),
            _ => None,
        };
        Ok((h, saved))
    }

    /// Returns None when the attention is the model's earliest adapter (want_dx false, no
    /// adapter on the resnet below it and no time gradient asked for).
    fn backward(
        &self,
        cx: &Ctx,
        dy: Tensor,
        context: &Tensor,
        s: LayerSaved,
        sinks: &mut Sinks,
        want_dx: bool,
    ) -> Result<Option<Tensor>> {
        // LoCon on the resnet, or the time input's gradient, needs the gradient below the
        // attention too.
        let want_dx = want_dx || self.resnet.has_adapter(cx) || sinks.d_temb.is_some();
        let dh = match (&self.attention, s.attention) {
            (Some(a), Some(sa)) => {
                let d_context = sinks.d_context.as_mut();
                match a.backward(cx, &dy, context, sa, sinks.grads, want_dx, d_context)? {
                    Some(d) => d,
                    None => return Ok(None),
                }
            }
            _ => dy,
        };
        let d_temb = sinks.d_temb.as_mut();
        Ok(Some(self.resnet.backward(
            cx,
            &dh,
            s.resnet,
            sinks.grads,
            d_temb,
        )?))
    }
}

/// Where a UNet backward puts what it computes besides the gradient flowing back.
struct Sinks<'g> {
    grads: &'g mut LoraGrads,
    /// d loss / d context, summed over every cross-attention, when asked for.
    d_context: Option<Tensor>,
    /// d loss / d silu(emb), summed over every resnet's time projection, when asked for.
    d_temb: Option<Tensor>,
}

/// The conditioning a UNet forward reads besides the sample and the timesteps: the text
/// context, and SDXL's added conditioning. A bare `&Tensor` converts to it (SD1.x/SD2.x).
#[derive(Clone, Copy)]
pub struct UnetCond<'a> {
    pub context: &'a Tensor,
    pub added: Option<&'a AddedCond>,
}

impl<'a> From<&'a Tensor> for UnetCond<'a> {
    fn from(context: &'a Tensor) -> Self {
        UnetCond {
            context,
            added: None,
        }
    }
}

/// Which input gradients a backward returns besides the adapters'.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WantGrads {
    /// d loss / d context (the text encoders are trained).
    pub context: bool,
    /// d loss / d text_embeds (SDXL's second text encoder is trained through its pooled output).
    pub text_embeds: bool,
}

/// The input gradients a backward was asked for.
#[derive(Default)]
pub struct CondGrads {
    pub context: Option<Tensor>,
    pub text_embeds: Option<Tensor>,
}

pub struct DownLevel {
    pub layers: Vec<Layer>,
    pub downsample: Option<Conv>,
}

pub struct UpLevel {
    pub layers: Vec<Layer>,
    pub upsample: Option<Conv>,
}

/// The frozen UNet.
pub struct Unet {
    pub config: UnetConfig,
    pub time_linear_1: Linear,
    pub time_linear_2: Linear,
    pub conv_in: Conv,
    pub down: Vec<DownLevel>,
    pub mid: Vec<Layer>,
    pub up: Vec<UpLevel>,
    pub conv_norm_out: GroupNorm,
    pub conv_out: Conv,
    /// SDXL's text-time embedding (`add_embedding`); None for SD1.x/SD2.x.
    pub add_embedding: Option<AddEmbedding>,
}

/// A down level's saved layers, the spatial size its downsampler read, and what the
/// downsampler's adapter saved (LoCon).
struct DownSaved {
    layers: Vec<LayerTape>,
    conv_hw: Option<(usize, usize)>,
    conv: Option<ConvSaved>,
}

/// An up level's saved layers, each with the channels of h before its skip concat, the
/// spatial size before upsampling, and what the upsampler's adapter saved (LoCon).
struct UpSaved {
    layers: Vec<(LayerTape, usize)>,
    pre_upsample_hw: Option<(usize, usize)>,
    conv: Option<ConvSaved>,
}

/// Everything the backward needs, saved by a training forward.
pub struct UnetTape {
    down: Vec<DownSaved>,
    mid: Vec<LayerTape>,
    up: Vec<UpSaved>,
    out_x: Tensor,
    out_stats: NormStats,
    /// The resnets' time input, kept with gradient checkpointing for the recompute.
    temb: Option<Tensor>,
    /// SDXL: what d text_embeds needs.
    added: Option<AddedSaved>,
}

/// Named intermediate activations of a forward, for golden tests against diffusers: the
/// names are diffusers' module paths (`down_blocks.0.resnets.1`, `mid_block.attentions.0`,
/// `up_blocks.2.upsamplers.0`, `time_embedding`, `conv_in`, `conv_act`), each the module's output.
pub type Trace = Vec<(String, Tensor)>;

fn record(trace: &mut Option<&mut Trace>, name: impl FnOnce() -> String, t: &Tensor) {
    if let Some(tr) = trace.as_deref_mut() {
        tr.push((name(), t.clone()));
    }
}

/// kohya's name of the module at diffusers path `path` (`{prefix}.down_blocks.1.attentions.0.
/// proj_in`) of a UNet of `config`: from that path for SD1.x/SD2.x, from the module's SGM path
/// for SDXL (`lora_unet_input_blocks_4_1_proj_in`; the text-time embedding tells SDXL), as
/// sd-scripts names them.
pub fn lora_module_name(config: &UnetConfig, prefix: &str, path: &str) -> String {
    if !matches!(config.added_embedding_widths(), Ok(Some(_))) {
        return kohya_name(path);
    }
    let layout = LdmLayout {
        unet_layers_per_block: config.layers_per_block,
        unet_levels: config.block_out_channels.len(),
        vae_levels: 0,
    };
    let up_attention: Vec<bool> = (config.up_block_types.iter())
        .map(|t| *t == UpBlockType::CrossAttnUpBlock2D)
        .collect();
    let sgm = path
        .strip_prefix(prefix)
        .and_then(|p| p.strip_prefix('.'))
        .and_then(|rest| diffusers_to_ldm_unet(rest, &layout, &up_attention));
    kohya_name(&sgm.map_or_else(|| path.to_string(), |n| format!("{prefix}.{n}")))
}

impl Unet {
    /// Builds the UNet described by `config` from `src`, with weights named as diffusers'
    /// `UNet2DConditionModel` state dict below `prefix` (e.g. "unet"). The layers' LoRA names
    /// are kohya's: from the diffusers paths for SD1.x/SD2.x
    /// (`lora_unet_down_blocks_0_attentions_0_proj_in`), from SGM's for SDXL, as sd-scripts
    /// names them (`lora_unet_input_blocks_4_1_proj_in`).
    pub fn load(
        config: &UnetConfig,
        src: &dyn WeightSource,
        be: &dyn crate::backend::Backend,
        prefix: &str,
    ) -> Result<Unet> {
        crate::model::config::checked(
            config.validate(),
            "unet",
            "an SD1.x, SD2.x or SDXL UNet configuration",
        )?;
        let ch = &config.block_out_channels;
        let levels = ch.len();
        let sgm_name = |path: &str| lora_module_name(config, prefix, path);
        let l = Loader::new(src, be, prefix);
        let l = match config.added_embedding_widths() {
            Ok(Some(_)) => l.with_naming(&sgm_name),
            _ => l,
        };
        let temb = 4 * ch[0];
        let (groups, eps) = (config.norm_num_groups, config.norm_eps);
        // The attention of a level (the mid block's is the last level's).
        let spec = |level: usize| Transformer2DSpec {
            channels: ch[level],
            context_dim: config.cross_attention_dim,
            heads: config.heads(level).unwrap_or(8),
            groups,
            linear_projection: config.use_linear_projection,
            depth: config.transformer_depth(level),
        };
        let layer = |l: &Loader,
                     i: usize,
                     c_in: usize,
                     c_out: usize,
                     attn: bool,
                     level: usize|
         -> Result<Layer> {
            Ok(Layer {
                resnet: ResnetBlock::load(
                    &l.at(&format!("resnets.{i}")),
                    c_in,
                    c_out,
                    Some(temb),
                    groups,
                    eps,
                )?,
                attention: if attn {
                    Some(Transformer2D::load(
                        &l.at(&format!("attentions.{i}")),
                        &spec(level),
                    )?)
                } else {
                    None
                },
            })
        };

        let mut down = Vec::with_capacity(levels);
        for (i, &c_out) in ch.iter().enumerate() {
            let dl = l.at(&format!("down_blocks.{i}"));
            let attn = config.down_block_types[i] == DownBlockType::CrossAttnDownBlock2D;
            let c_in = if i == 0 { ch[0] } else { ch[i - 1] };
            let layers = (0..config.layers_per_block)
                .map(|j| layer(&dl, j, if j == 0 { c_in } else { c_out }, c_out, attn, i))
                .collect::<Result<Vec<_>>>()?;
            let downsample = if i + 1 < levels {
                Some(Conv::load(
                    &dl.at("downsamplers.0.conv"),
                    c_out,
                    c_out,
                    3,
                    2,
                    1,
                )?)
            } else {
                None
            };
            down.push(DownLevel { layers, downsample });
        }

        let c_mid = ch[levels - 1];
        let ml = l.at("mid_block");
        let mid = vec![
            Layer {
                resnet: ResnetBlock::load(
                    &ml.at("resnets.0"),
                    c_mid,
                    c_mid,
                    Some(temb),
                    groups,
                    eps,
                )?,
                attention: Some(Transformer2D::load(
                    &ml.at("attentions.0"),
                    &spec(levels - 1),
                )?),
            },
            Layer {
                resnet: ResnetBlock::load(
                    &ml.at("resnets.1"),
                    c_mid,
                    c_mid,
                    Some(temb),
                    groups,
                    eps,
                )?,
                attention: None,
            },
        ];

        let rev: Vec<usize> = ch.iter().rev().copied().collect();
        let mut up = Vec::with_capacity(levels);
        for i in 0..levels {
            let ul = l.at(&format!("up_blocks.{i}"));
            let attn = config.up_block_types[i] == UpBlockType::CrossAttnUpBlock2D;
            let c_out = rev[i];
            let c_prev = if i == 0 { rev[0] } else { rev[i - 1] };
            let c_skip_in = rev[(i + 1).min(levels - 1)];
            let n = config.layers_per_block + 1;
            let layers = (0..n)
                .map(|j| {
                    let skip = if j == n - 1 { c_skip_in } else { c_out };
                    let res_in = if j == 0 { c_prev } else { c_out };
                    layer(&ul, j, res_in + skip, c_out, attn, levels - 1 - i)
                })
                .collect::<Result<Vec<_>>>()?;
            let upsample = if i + 1 < levels {
                Some(Conv::load(
                    &ul.at("upsamplers.0.conv"),
                    c_out,
                    c_out,
                    3,
                    1,
                    1,
                )?)
            } else {
                None
            };
            up.push(UpLevel { layers, upsample });
        }

        Ok(Unet {
            config: config.clone(),
            time_linear_1: Linear::load(&l.at("time_embedding.linear_1"), ch[0], temb, true)?,
            time_linear_2: Linear::load(&l.at("time_embedding.linear_2"), temb, temb, true)?,
            conv_in: Conv::load(&l.at("conv_in"), config.in_channels, ch[0], 3, 1, 1)?,
            down,
            mid,
            up,
            conv_norm_out: GroupNorm::load(&l.at("conv_norm_out"), ch[0], groups, eps)?,
            conv_out: Conv::load(&l.at("conv_out"), ch[0], config.out_channels, 3, 1, 1)?,
            add_embedding: match config.added_embedding_widths() {
                Ok(Some((pooled, dim))) => Some(AddEmbedding::load(
                    &l.at("add_embedding"),
                    pooled,
                    TimestepEmbedding {
                        dim,
                        ..Self::time_sinusoid(config)
                    },
                    temb,
                )?),
                _ => None,
            },
        })
    }

    /// The layers that can carry an adapter, in forward order, with kohya's names.
    pub fn lora_targets(&self, which: LoraTargets) -> Vec<TargetLayer> {
        let mut all = Vec::new();
        let attns = self
            .down
            .iter()
            .flat_map(|d| d.layers.iter())
            .chain(self.mid.iter())
            .chain(self.up.iter().flat_map(|u| u.layers.iter()))
            .filter_map(|l| l.attention.as_ref());
        for a in attns {
            a.targets(&mut all);
        }
        match which {
            LoraTargets::Transformer => all,
            LoraTargets::Attention => all
                .into_iter()
                .filter(|t| t.role == LayerRole::Attention)
                .collect(),
        }
    }

    /// The 3x3 convs LoCon adapts at `conv_dim`, in forward order: sd-scripts'
    /// `UNET_TARGET_REPLACE_MODULE_CONV2D_3X3` = ResnetBlock2D (conv1, conv2), Downsample2D and
    /// Upsample2D (their conv); not conv_in or conv_out.
    pub fn conv_targets(&self) -> Vec<TargetLayer> {
        let mut all = Vec::new();
        for d in &self.down {
            for l in &d.layers {
                l.resnet.conv_targets(&mut all);
            }
            if let Some(c) = &d.downsample {
                all.push(resnet::conv_target(c, LayerRole::SamplerConv));
            }
        }
        for l in &self.mid {
            l.resnet.conv_targets(&mut all);
        }
        for u in &self.up {
            for l in &u.layers {
                l.resnet.conv_targets(&mut all);
            }
            if let Some(c) = &u.upsample {
                all.push(resnet::conv_target(c, LayerRole::SamplerConv));
            }
        }
        all
    }

    /// The layers inside those blocks that sd-scripts adapts at the linear rank once
    /// `conv_dim` targets the blocks: every ResNet's time_emb_proj and 1x1 conv_shortcut, in
    /// forward order.
    pub fn resnet_linear_targets(&self) -> Vec<TargetLayer> {
        let mut all = Vec::new();
        let layers = self
            .down
            .iter()
            .flat_map(|d| d.layers.iter())
            .chain(self.mid.iter())
            .chain(self.up.iter().flat_map(|u| u.layers.iter()));
        for l in layers {
            l.resnet.linear_targets(&mut all);
        }
        all
    }

    /// Every frozen linear and conv weight that can carry an adapter, by kohya name (DoRA
    /// starts its magnitudes from them, lora/dora.rs).
    pub fn adaptable_weights(&self) -> Vec<(&str, &Tensor)> {
        let mut out: Vec<(&str, &Tensor)> = Vec::new();
        fn lin(l: &Linear) -> (&str, &Tensor) {
            (l.name.as_str(), &l.weight)
        }
        fn conv(c: &Conv) -> (&str, &Tensor) {
            (c.name.as_str(), &c.weight)
        }
        let layers = self
            .down
            .iter()
            .flat_map(|d| d.layers.iter())
            .chain(self.mid.iter())
            .chain(self.up.iter().flat_map(|u| u.layers.iter()));
        for l in layers {
            let r = &l.resnet;
            out.extend([conv(&r.conv1), conv(&r.conv2)]);
            out.extend(r.time_emb_proj.as_ref().map(lin));
            out.extend(r.conv_shortcut.as_ref().map(conv));
            if let Some(t) = &l.attention {
                out.extend([lin(&t.proj_in), lin(&t.proj_out)]);
                for b in &t.blocks {
                    out.extend([lin(&b.ff0), lin(&b.ff2)]);
                    for a in [&b.attn1, &b.attn2] {
                        out.extend(a.linears().map(lin));
                    }
                }
            }
        }
        let samplers = self.down.iter().filter_map(|d| d.downsample.as_ref());
        out.extend(
            samplers
                .chain(self.up.iter().filter_map(|u| u.upsample.as_ref()))
                .map(conv),
        );
        out
    }

    /// The timesteps' sinusoid (`time_proj`; SDXL's `add_time_proj` is the same but for its
    /// width).
    fn time_sinusoid(config: &UnetConfig) -> TimestepEmbedding {
        TimestepEmbedding {
            dim: config.block_out_channels[0],
            flip_sin_to_cos: config.flip_sin_to_cos,
            freq_shift: config.freq_shift,
            max_period: 10000.0,
        }
    }

    /// time MLP(sinusoid(t)), [N, 4·C0]; every resnet's time projection reads its SiLU.
    fn time_embedding(&self, cx: &Ctx, timesteps: &Tensor) -> Result<Tensor> {
        let t = cx
            .be
            .timestep_embedding(timesteps, Self::time_sinusoid(&self.config))?;
        let h = self.time_linear_1.forward(cx, &t)?.y;
        let h = cx.be.activation(&h, Activation::Silu)?;
        Ok(self.time_linear_2.forward(cx, &h)?.y)
    }

    fn check_input(&self, sample: &Tensor, timesteps: &Tensor, cond: UnetCond) -> Result<()> {
        let context = cond.context;
        let d = sample.dims();
        let down = 1usize << (self.down.len() - 1);
        if d.len() != 4
            || d[1] != self.config.in_channels
            || !d[2].is_multiple_of(down)
            || !d[3].is_multiple_of(down)
            || d[2] == 0
            || d[3] == 0
        {
            return Err(Error::BadShape {
                op: "unet",
                name: "sample",
                shape: sample.shape().clone(),
                expected: format!(
                    "[N, {}, H, W] with H and W multiples of {down}",
                    self.config.in_channels
                ),
            });
        }
        if timesteps.dims() != [d[0]] {
            return Err(crate::backend::check::mismatch(
                "unet",
                "timesteps",
                timesteps,
                "sample",
                sample,
                "one timestep per sample",
            ));
        }
        let c = context.dims();
        if c.len() != 3 || c[0] != d[0] || c[2] != self.config.cross_attention_dim {
            return Err(crate::backend::check::mismatch(
                "unet",
                "context",
                context,
                "sample",
                sample,
                format!(
                    "context must be [N, tokens, {}] for N samples",
                    self.config.cross_attention_dim
                ),
            ));
        }
        match (&self.add_embedding, cond.added) {
            (Some(a), Some(added)) => a.check(added, d[0]),
            (None, None) => Ok(()),
            (Some(_), None) => Err(Error::BadValue {
                op: "unet",
                name: "added conditioning",
                value: "none".into(),
                expected: "SDXL's pooled text embedding and size/crop ids (this UNet has \
                           addition_embed_type \"text_time\")"
                    .into(),
            }),
            (None, Some(_)) => Err(Error::BadValue {
                op: "unet",
                name: "added conditioning",
                value: "a pooled text embedding and size/crop ids".into(),
                expected: "none: only SDXL's UNet reads them".into(),
            }),
        }
    }

    /// The predicted noise [N, out_channels, H, W]. `cond`: the text context (`&Tensor`),
    /// or a [`UnetCond`] with SDXL's added conditioning. With `save`, also the tape for
    /// [`Unet::backward`]. With `trace`, named block outputs are pushed to it.
    pub fn forward<'c>(
        &self,
        cx: &Ctx,
        sample: &Tensor,
        timesteps: &Tensor,
        cond: impl Into<UnetCond<'c>>,
        save: bool,
        mut trace: Option<&mut Trace>,
    ) -> Result<(Tensor, Option<UnetTape>)> {
        let cond = cond.into();
        let context = cond.context;
        self.check_input(sample, timesteps, cond)?;
        let mut emb = self.time_embedding(cx, timesteps)?;
        record(&mut trace, || "time_embedding".into(), &emb);
        let mut h1 = None;
        if let (Some(a), Some(cond)) = (&self.add_embedding, cond.added) {
            let (aug, h) = a.forward(cx, cond)?;
            record(&mut trace, || "add_embedding".into(), &aug);
            cx.be.add_assign(&mut emb, &aug)?;
            h1 = save.then_some(h);
        }
        let temb = cx.be.activation(&emb, Activation::Silu)?;
        let added = h1.map(|h1| AddedSaved { emb, h1 });
        let shared = Shared {
            temb: &temb,
            context,
        };
        let mut h = self.conv_in.forward(cx, sample)?;
        record(&mut trace, || "conv_in".into(), &h);
        let mut skips = vec![h.clone()];
        let mut down_saved = Vec::new();
        for (i, level) in self.down.iter().enumerate() {
            let mut saved = Vec::new();
            let name = format!("down_blocks.{i}");
            for (j, layer) in level.layers.iter().enumerate() {
                let (y, s) = layer.forward_taped(cx, h, &shared, save, (&name, j), &mut trace)?;
                h = y;
                skips.push(h.clone());
                saved.extend(s);
            }
            let (mut down_hw, mut down_conv) = (None, None);
            if let Some(conv) = &level.downsample {
                down_hw = Some(hw(&h));
                let (y, s) = conv.forward_saving(cx, h, save)?;
                (h, down_conv) = (y, s);
                record(&mut trace, || format!("{name}.downsamplers.0"), &h);
                skips.push(h.clone());
            }
            down_saved.push(DownSaved {
                layers: saved,
                conv_hw: down_hw,
                conv: down_conv,
            });
        }
        let mut mid_saved = Vec::new();
        for (j, layer) in self.mid.iter().enumerate() {
            let (y, s) = layer.forward_taped(cx, h, &shared, save, ("mid_block", j), &mut trace)?;
            h = y;
            mid_saved.extend(s);
        }
        let mut up_saved = Vec::new();
        for (i, level) in self.up.iter().enumerate() {
            let mut saved = Vec::new();
            let name = format!("up_blocks.{i}");
            for (j, layer) in level.layers.iter().enumerate() {
                let skip = skips.pop().ok_or_else(|| internal("skip stack ran out"))?;
                let c_h = h.dims()[1];
                let x = cx.be.concat_channels(&h, &skip)?;
                drop((h, skip));
                let (y, s) = layer.forward_taped(cx, x, &shared, save, (&name, j), &mut trace)?;
                h = y;
                saved.extend(s.map(|s| (s, c_h)));
            }
            let (mut up_hw, mut up_conv) = (None, None);
            if let Some(conv) = &level.upsample {
                up_hw = Some(hw(&h));
                let (y, s) = conv.forward_saving(cx, cx.be.upsample_nearest2x(&h)?, save)?;
                (h, up_conv) = (y, s);
                record(&mut trace, || format!("{name}.upsamplers.0"), &h);
            }
            up_saved.push(UpSaved {
                layers: saved,
                pre_upsample_hw: up_hw,
                conv: up_conv,
            });
        }
        let (a, out_stats) = self.conv_norm_out.forward(cx, &h, true)?;
        record(&mut trace, || "conv_act".into(), &a);
        let out = self.conv_out.forward(cx, &a)?;
        drop(a);
        let tape = save.then_some(UnetTape {
            down: down_saved,
            mid: mid_saved,
            up: up_saved,
            out_x: h,
            out_stats,
            temb: cx.checkpoint.then_some(temb),
            added,
        });
        Ok((out, tape))
    }

    /// Gradients of the loss with respect to every adapter, from `d_out` = d loss / d output,
    /// into `grads` (`=` or `+=` by `grads.accum`; every adapter is written exactly once).
    pub fn backward(
        &self,
        cx: &Ctx,
        d_out: &Tensor,
        context: &Tensor,
        tape: UnetTape,
        grads: &mut LoraGrads,
    ) -> Result<()> {
        self.backward_with_context_grad(cx, d_out, context, tape, grads, false)
            .map(|_| ())
    }

    /// [`Unet::backward`], and with `want_context_grad` also d loss / d context, summed over
    /// every cross-attention: what the text encoder's backward starts from when it is trained.
    pub fn backward_with_context_grad(
        &self,
        cx: &Ctx,
        d_out: &Tensor,
        context: &Tensor,
        tape: UnetTape,
        grads: &mut LoraGrads,
        want_context_grad: bool,
    ) -> Result<Option<Tensor>> {
        let want = WantGrads {
            context: want_context_grad,
            text_embeds: false,
        };
        Ok(self
            .backward_with_cond_grads(cx, d_out, context, tape, grads, want)?
            .context)
    }

    /// [`Unet::backward`], and the input gradients `want` asks for: d loss / d context (summed
    /// over every cross-attention) and, for SDXL, d loss / d text_embeds (through every
    /// resnet's time projection and `add_embedding`).
    pub fn backward_with_cond_grads(
        &self,
        cx: &Ctx,
        d_out: &Tensor,
        context: &Tensor,
        mut tape: UnetTape,
        grads: &mut LoraGrads,
        want: WantGrads,
    ) -> Result<CondGrads> {
        let added = tape.added.take();
        let text = match (want.text_embeds, &added, &self.add_embedding) {
            (false, _, _) => None,
            (true, Some(saved), Some(a)) => Some((saved, a)),
            (true, _, _) => {
                return Err(Error::BadValue {
                    op: "unet backward",
                    name: "text_embeds gradient",
                    value: "asked for".into(),
                    expected: "an SDXL UNet and a tape of its saving forward with the added \
                               conditioning"
                        .into(),
                })
            }
        };
        let mut sinks = Sinks {
            grads,
            d_context: if want.context {
                Some(cx.be.zeros(context.dims(), context.dtype())?)
            } else {
                None
            },
            d_temb: match text {
                Some((saved, _)) => Some(cx.be.zeros(saved.emb.dims(), saved.emb.dtype())?),
                None => None,
            },
        };
        self.backward_layers(cx, d_out, context, tape, &mut sinks)?;
        let text_embeds = match (text, &sinks.d_temb) {
            (Some((saved, a)), Some(d_temb)) => Some(a.backward_text(cx, d_temb, saved)?),
            _ => None,
        };
        Ok(CondGrads {
            context: sinks.d_context,
            text_embeds,
        })
    }

    /// The earliest place in the down path, (level, layer) in forward order with the
    /// downsampler at layer = the level's layer count, that the backward must reach: the first
    /// with an adapter, or with an attention when d context is asked for, or the very first
    /// when d silu(temb) is. None: no place.
    fn down_needed_from(&self, cx: &Ctx, sinks: &Sinks) -> Option<(usize, usize)> {
        let adapted = |t: &Transformer2D| {
            let mut targets = Vec::new();
            t.targets(&mut targets);
            let set = cx.lora;
            targets
                .iter()
                .any(|t| set.is_some_and(|s| s.find(&t.name).is_some()))
        };
        for (i, level) in self.down.iter().enumerate() {
            for (j, layer) in level.layers.iter().enumerate() {
                let needed = sinks.d_temb.is_some()
                    || layer.resnet.has_adapter(cx)
                    || layer
                        .attention
                        .as_ref()
                        .is_some_and(|a| sinks.d_context.is_some() || adapted(a));
                if needed {
                    return Some((i, j));
                }
            }
            if level.downsample.as_ref().is_some_and(|c| c.has_adapter(cx)) {
                return Some((i, level.layers.len()));
            }
        }
        None
    }

    /// The backward through the layers, from d loss / d output, into `sinks`.
    fn backward_layers(
        &self,
        cx: &Ctx,
        d_out: &Tensor,
        context: &Tensor,
        tape: UnetTape,
        sinks: &mut Sinks,
    ) -> Result<()> {
        let temb = tape.temb;
        let shared = temb.as_ref().map(|temb| Shared { temb, context });
        let shared = shared.as_ref();
        let da = self.conv_out.backward(cx, d_out, hw(&tape.out_x))?;
        let mut dh = self
            .conv_norm_out
            .backward(cx, &da, &tape.out_x, &tape.out_stats, true)?;
        drop((da, tape.out_x));

        // Up levels, last first; skip gradients collected in the order the skips were made.
        let mut d_skips: Vec<Tensor> = Vec::new();
        for (level, saved) in self.up.iter().zip(tape.up).rev() {
            if let (Some(conv), Some(size)) = (&level.upsample, saved.pre_upsample_hw) {
                let du = conv.backward_saved(
                    cx,
                    &dh,
                    (2 * size.0, 2 * size.1),
                    saved.conv,
                    sinks.grads,
                )?;
                dh = cx.be.upsample_nearest2x_backward(&du)?;
            }
            for (layer, (s, c_h)) in level.layers.iter().zip(saved.layers).rev() {
                let s = layer.saved(cx, s, shared)?;
                let dx = layer
                    .backward(cx, dh, context, s, sinks, true)?
                    .ok_or_else(|| internal("up layer lost dx"))?;
                let (d_h, d_skip) = cx.be.split_channels(&dx, c_h)?;
                dh = d_h;
                d_skips.push(d_skip);
            }
        }
        for (layer, s) in self.mid.iter().zip(tape.mid).rev() {
            let s = layer.saved(cx, s, shared)?;
            dh = layer
                .backward(cx, dh, context, s, sinks, true)?
                .ok_or_else(|| internal("mid layer lost dx"))?;
        }
        // d_skips now holds the gradient of the last skip first; pop matches the down order
        // reversed. The first skip (conv_in's output) needs no gradient, nor does anything
        // before the first layer of the down path that has an adapter or feeds an asked-for
        // gradient (SDXL's first level has no attention: with attention-only adapters the
        // backward ends at the second level).
        let Some(stop) = self.down_needed_from(cx, sinks) else {
            return Ok(());
        };
        for (i, (level, saved)) in self.down.iter().zip(tape.down).enumerate().rev() {
            if let (Some(conv), Some(size)) = (&level.downsample, saved.conv_hw) {
                if (i, level.layers.len()) < stop {
                    return Ok(());
                }
                let mut d = d_skips
                    .pop()
                    .ok_or_else(|| internal("skip gradients ran out"))?;
                cx.be.add_assign(&mut d, &dh)?;
                dh = conv.backward_saved(cx, &d, size, saved.conv, sinks.grads)?;
            }
            for (j, (layer, s)) in level.layers.iter().zip(saved.layers).enumerate().rev() {
                if (i, j) < stop {
                    return Ok(());
                }
                let d_skip = d_skips
                    .pop()
                    .ok_or_else(|| internal("skip gradients ran out"))?;
                cx.be.add_assign(&mut dh, &d_skip)?;
                let s = layer.saved(cx, s, shared)?;
                let first = (i, j) == stop;
                match layer.backward(cx, dh, context, s, sinks, !first)? {
                    Some(d) if !first => dh = d,
                    _ => return Ok(()),
                }
            }
        }
        Ok(())
    }
}

fn internal(what: &str) -> Error {
    Error::BadValue {
        op: "unet backward",
        name: "tape",
        value: what.into(),
        expected: "a tape made by a saving forward of the same UNet".into(),
    }
}
