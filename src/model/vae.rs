//! AutoencoderKL as SD1.x uses it (diffusers), forward only: the VAE is frozen and runs once
//! per image to cache latents, and to decode samples.
//!
//! Encoder, image [N, 3, H, W] in [-1, 1]:
//!   conv_in; per level: resnets × layers_per_block, then (not on the last level) a stride-2
//!   3x3 conv after a (0, 1, 0, 1) zero pad; mid: resnet, attention, resnet;
//!   silu(GroupNorm) + conv_out -> 2·latent channels; quant_conv (1x1) -> moments
//!   mean, logvar = moments split along channels; latents = scaling_factor·(mean + std·ε)
//! Decoder, latents / scaling_factor:
//!   post_quant_conv (1x1); conv_in; mid; per level (channels reversed): resnets ×
//!   (layers_per_block + 1), then (not on the last) nearest 2x + 3x3 conv;
//!   silu(GroupNorm) + conv_out -> [N, 3, 8·h, 8·w]
//! The mid attention is single-head over the H·W positions with GroupNorm in front and a
//! residual around it. Every GroupNorm here has eps 1e-6.
//!
//! Its dtype may differ from the caller's backend: with `no_half_vae` (SDXL 1.0's VAE
//! overflows in f16) the weights and every op are f32 on the same device while the UNet
//! computes in f16; images and latents are cast at the boundary.

use crate::backend::{Backend, Pad2d};
use crate::error::{Error, Result};
use crate::model::attention::{Attention, AttentionSpec};
use crate::model::config::VaeConfig;
use crate::model::layers::{Conv, Ctx, GroupNorm};
use crate::model::unet::resnet::ResnetBlock;
use crate::model::weights::{Loader, WeightSource};
use crate::tensor::{DType, Tensor};

/// GroupNorm, single-head self-attention over positions, residual.
pub struct VaeAttention {
    pub group_norm: GroupNorm,
    /// to_q, to_k, to_v (with bias), to_out.0; one head as wide as the channels.
    pub attn: Attention,
}

impl VaeAttention {
    fn load(l: &Loader, c: usize, groups: usize, eps: f64) -> Result<Self> {
        Ok(VaeAttention {
            group_norm: GroupNorm::load(&l.at("group_norm"), c, groups, eps)?,
            attn: Attention::load(
                l,
                AttentionSpec {
                    qkv_bias: true,
                    ..AttentionSpec::diffusers(c, c, 1)
                },
            )?,
        })
    }
    fn forward(&self, cx: &Ctx, x: Tensor) -> Result<Tensor> {
        let (h, w) = (x.dims()[2], x.dims()[3]);
        let t = cx
            .be
            .nchw_to_nlc(&self.group_norm.forward(cx, &x, false)?.0)?;
        let (y, _) = self.attn.forward(cx, &t, None, false)?;
        drop(t);
        cx.be.add(&x, &cx.be.nlc_to_nchw(&y, h, w)?)
    }
}

/// resnet, attention, resnet.
pub struct VaeMid {
    pub resnet0: ResnetBlock,
    pub attention: VaeAttention,
    pub resnet1: ResnetBlock,
}

impl VaeMid {
    fn load(l: &Loader, c: usize, groups: usize, eps: f64) -> Result<Self> {
        Ok(VaeMid {
            resnet0: ResnetBlock::load(&l.at("resnets.0"), c, c, None, groups, eps)?,
            attention: VaeAttention::load(&l.at("attentions.0"), c, groups, eps)?,
            resnet1: ResnetBlock::load(&l.at("resnets.1"), c, c, None, groups, eps)?,
        })
    }
    fn forward(&self, cx: &Ctx, x: Tensor) -> Result<Tensor> {
        let h = self.resnet0.forward(cx, x, None, false)?.0;
        let h = self.attention.forward(cx, h)?;
        Ok(self.resnet1.forward(cx, h, None, false)?.0)
    }
}

pub struct Encoder {
    pub conv_in: Conv,
    pub down: Vec<(Vec<ResnetBlock>, Option<Conv>)>,
    pub mid: VaeMid,
    pub conv_norm_out: GroupNorm,
    pub conv_out: Conv,
}

pub struct Decoder {
    pub conv_in: Conv,
    pub mid: VaeMid,
    pub up: Vec<(Vec<ResnetBlock>, Option<Conv>)>,
    pub conv_norm_out: GroupNorm,
    pub conv_out: Conv,
}

/// The frozen VAE.
pub struct Vae {
    pub config: VaeConfig,
    pub encoder: Encoder,
    pub quant_conv: Conv,
    pub post_quant_conv: Conv,
    pub decoder: Decoder,
    /// The backend the VAE computes on when its dtype is not the caller's: the caller's
    /// device in `dtype` (sharing its memory pool).
    own: Option<Box<dyn Backend>>,
    /// The dtype of its weights and activations.
    dtype: DType,
}

/// The encoder's posterior: a diagonal Gaussian per latent element.
pub struct Posterior {
    pub mean: Tensor,
    pub logvar: Tensor,
}

impl Vae {
    /// Builds the VAE from weights named as diffusers' `AutoencoderKL` below `prefix` ("vae"),
    /// computing in `be`'s dtype.
    pub fn load(
        config: &VaeConfig,
        src: &dyn WeightSource,
        be: &dyn Backend,
        prefix: &str,
    ) -> Result<Vae> {
        Self::load_in(config, src, be, prefix, be.compute_dtype())
    }

    /// [`Vae::load`] with weights and activations in `dtype` on `be`'s device (f32 beside an
    /// f16 backend: kohya's `no_half_vae`); an error where `be` cannot compute in it.
    pub fn load_in(
        config: &VaeConfig,
        src: &dyn WeightSource,
        be: &dyn Backend,
        prefix: &str,
        dtype: DType,
    ) -> Result<Vae> {
        let own = if dtype == be.compute_dtype() {
            None
        } else {
            Some(
                be.with_compute_dtype(dtype)
                    .ok_or_else(|| Error::BadValue {
                        op: "vae",
                        name: "dtype",
                        value: dtype.to_string(),
                        expected: format!(
                            "{} (the {} backend computes in that dtype only)",
                            be.compute_dtype(),
                            be.name()
                        ),
                    })?,
            )
        };
        let be = own.as_deref().unwrap_or(be);
        let l = Loader::new(src, be, prefix);
        let ch = &config.block_out_channels;
        crate::model::config::checked(config.validate(), "vae", "an SD1.x VAE configuration")?;
        let (levels, g, lat) = (ch.len(), config.norm_num_groups, config.latent_channels);
        let eps = config.norm_eps();
        let resnets =
            |l: &Loader, n: usize, c_in: usize, c_out: usize| -> Result<Vec<ResnetBlock>> {
                (0..n)
                    .map(|j| {
                        ResnetBlock::load(
                            &l.at(&format!("resnets.{j}")),
                            if j == 0 { c_in } else { c_out },
                            c_out,
                            None,
                            g,
                            eps,
                        )
                    })
                    .collect()
            };

        let el = l.at("encoder");
        let mut down = Vec::with_capacity(levels);
        for (i, &c) in ch.iter().enumerate() {
            let dl = el.at(&format!("down_blocks.{i}"));
            let c_in = if i == 0 { ch[0] } else { ch[i - 1] };
            let ds = (i + 1 < levels)
                .then(|| Conv::load(&dl.at("downsamplers.0.conv"), c, c, 3, 2, 0))
                .transpose()?;
            down.push((resnets(&dl, config.layers_per_block, c_in, c)?, ds));
        }
        let c_last = ch[levels - 1];
        let encoder = Encoder {
            conv_in: Conv::load(&el.at("conv_in"), config.in_channels, ch[0], 3, 1, 1)?,
            down,
            mid: VaeMid::load(&el.at("mid_block"), c_last, g, eps)?,
            conv_norm_out: GroupNorm::load(&el.at("conv_norm_out"), c_last, g, eps)?,
            conv_out: Conv::load(&el.at("conv_out"), c_last, 2 * lat, 3, 1, 1)?,
        };

        let dl = l.at("decoder");
        let rev: Vec<usize> = ch.iter().rev().copied().collect();
        let mut up = Vec::with_capacity(levels);
        for (i, &c) in rev.iter().enumerate() {
            let ul = dl.at(&format!("up_blocks.{i}"));
            let c_in = if i == 0 { rev[0] } else { rev[i - 1] };
            let us = (i + 1 < levels)
                .then(|| Conv::load(&ul.at("upsamplers.0.conv"), c, c, 3, 1, 1))
                .transpose()?;
            up.push((resnets(&ul, config.layers_per_block + 1, c_in, c)?, us));
        }
        let decoder = Decoder {
            conv_in: Conv::load(&dl.at("conv_in"), lat, c_last, 3, 1, 1)?,
            mid: VaeMid::load(&dl.at("mid_block"), c_last, g, eps)?,
            up,
            conv_norm_out: GroupNorm::load(&dl.at("conv_norm_out"), ch[0], g, eps)?,
            conv_out: Conv::load(&dl.at("conv_out"), ch[0], config.out_channels, 3, 1, 1)?,
        };
        Ok(Vae {
            config: config.clone(),
            encoder,
            quant_conv: Conv::load(&l.at("quant_conv"), 2 * lat, 2 * lat, 1, 1, 0)?,
            post_quant_conv: Conv::load(&l.at("post_quant_conv"), lat, lat, 1, 1, 0)?,
            decoder,
            own,
            dtype,
        })
    }

    /// The dtype of its weights and activations: what it encodes and decodes in.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The context the VAE's ops run in: its own backend where it has one, else the caller's.
    fn ctx<'b>(&'b self, cx: &Ctx<'b>) -> Ctx<'b> {
        Ctx::new(self.own.as_deref().unwrap_or(cx.be), None)
    }

    /// `x` in the VAE's dtype.
    fn to_own(&self, cx: &Ctx, x: &Tensor) -> Result<Tensor> {
        if x.dtype() == self.dtype {
            Ok(x.clone())
        } else {
            cx.be.cast(x, self.dtype)
        }
    }

    /// The posterior of images [N, 3, H, W] (H, W multiples of 2^(levels-1)), in the VAE's
    /// dtype.
    pub fn encode(&self, cx: &Ctx, image: &Tensor) -> Result<Posterior> {
        let cx = &self.ctx(cx);
        let d = image.dims();
        let f = 1usize << (self.encoder.down.len() - 1);
        if d.len() != 4
            || d[1] != self.config.in_channels
            || !d[2].is_multiple_of(f)
            || !d[3].is_multiple_of(f)
            || d[2] == 0
            || d[3] == 0
        {
            return Err(Error::BadShape {
                op: "vae encode",
                name: "image",
                shape: image.shape().clone(),
                expected: format!(
                    "[N, {}, H, W] with H and W multiples of {f}",
                    self.config.in_channels
                ),
            });
        }
        let e = &self.encoder;
        let mut h = e.conv_in.forward(cx, &self.to_own(cx, image)?)?;
        for (resnets, ds) in &e.down {
            for r in resnets {
                h = r.forward(cx, h, None, false)?.0;
            }
            if let Some(conv) = ds {
                let p = cx.be.pad2d(
                    &h,
                    Pad2d {
                        top: 0,
                        bottom: 1,
                        left: 0,
                        right: 1,
                    },
                )?;
                h = conv.forward(cx, &p)?;
            }
        }
        h = e.mid.forward(cx, h)?;
        let a = e.conv_norm_out.forward(cx, &h, true)?.0;
        let moments = self.quant_conv.forward(cx, &e.conv_out.forward(cx, &a)?)?;
        let (mean, logvar) = cx
            .be
            .split_channels(&moments, self.config.latent_channels)?;
        Ok(Posterior { mean, logvar })
    }

    /// scaling_factor·(mean + std·noise), or scaling_factor·mean without noise: the latents the
    /// UNet trains on, in the VAE's dtype (`noise` in it too).
    pub fn latents(&self, cx: &Ctx, p: &Posterior, noise: Option<&Tensor>) -> Result<Tensor> {
        self.ctx(cx)
            .be
            .gaussian_sample(&p.mean, &p.logvar, noise, self.config.scaling_factor)
    }

    /// Images [N, 3, 8h, 8w] (roughly in [-1, 1]), in the VAE's dtype, from latents
    /// [N, latent, h, w] as the UNet sees them (already multiplied by the scaling factor).
    pub fn decode(&self, cx: &Ctx, latents: &Tensor) -> Result<Tensor> {
        let cx = &self.ctx(cx);
        let d = latents.dims();
        if d.len() != 4 || d[1] != self.config.latent_channels {
            return Err(Error::BadShape {
                op: "vae decode",
                name: "latents",
                shape: latents.shape().clone(),
                expected: format!("[N, {}, h, w]", self.config.latent_channels),
            });
        }
        let z = cx
            .be
            .scale(&self.to_own(cx, latents)?, 1.0 / self.config.scaling_factor)?;
        let dec = &self.decoder;
        let mut h = dec
            .conv_in
            .forward(cx, &self.post_quant_conv.forward(cx, &z)?)?;
        h = dec.mid.forward(cx, h)?;
        for (resnets, us) in &dec.up {
            for r in resnets {
                h = r.forward(cx, h, None, false)?.0;
            }
            if let Some(conv) = us {
                h = conv.forward(cx, &cx.be.upsample_nearest2x(&h)?)?;
            }
        }
        let a = dec.conv_norm_out.forward(cx, &h, true)?.0;
        dec.conv_out.forward(cx, &a)
    }
}
