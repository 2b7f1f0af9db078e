//! timm's `VisionTransformer` (timm/models/vision_transformer.py) for inference, as the WD14 v3
//! taggers ship it (SmilingWolf's wd-vit-tagger-v3: timm weights names, no Python):
//!
//!   tokens = patches(x)·Wpᵀ + bp          x [3, S, S] -> (S/p)² patches of 3·p·p values, in
//!                                         row-major order, each flattened as (c, ky, kx): the
//!                                         stride-p conv `patch_embed.proj` as one linear
//!   [cls_token ++] tokens + pos_embed     the class token (if any) first, then the positions
//!   norm_pre (if any)                     timm `pre_norm`; CLIP's `pre_layrnorm`
//!   block i: x = x + proj(attention(q, k, v of norm1(x)))    q, k, v: the rows of the fused
//!                                                            `attn.qkv` [3D, D], in that order
//!            x = x + fc2(act(fc1(norm2(x))))                 act: GELU (exact or tanh) per
//!                                                            `act_layer`
//!   norm (unless fc_norm), pool (mean of the patch tokens for `avg`, the class token for
//!   `token`), fc_norm (if used), head -> logits [num_classes]
//! LayerNorm eps is timm's 1e-6. Attention heads are D/heads wide, scaled by 1/sqrt(d).
//! Pooling runs on the backend as a linear over the token axis: the tokens transposed to
//! [1, D, L] times a [1, L] row of weights (1/count on the pooled tokens, else 0).
//! The forward is the same for CLIP's vision tower (src/model/clip_vision.rs loads its
//! transformers names into [`VitWeights`]): pre_layrnorm as norm_pre, post_layernorm on the
//! class token as `norm` before token pooling (a LayerNorm acts per token), visual_projection
//! as a head without bias.

use crate::backend::{Activation, Backend};
use crate::error::{Error, Result};
use crate::model::attention::Attention;
use crate::model::layers::{Ctx, LayerNorm, Linear};
use crate::model::weights::{Loader, WeightSource};
use crate::tensor::Tensor;

/// timm's ViT LayerNorm epsilon.
pub const VIT_LN_EPS: f64 = 1e-6;

/// How the tokens become one feature vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pool {
    /// Mean over the patch tokens (timm `global_pool="avg"`).
    Avg,
    /// The class token (timm `global_pool="token"`).
    Token,
}

/// The shape of one timm ViT, after the architecture's defaults and the config's model_args.
#[derive(Clone, Debug, PartialEq)]
pub struct VitConfig {
    pub img_size: usize,
    pub patch_size: usize,
    pub embed_dim: usize,
    pub depth: usize,
    pub num_heads: usize,
    /// The MLP's hidden width (embed_dim · mlp_ratio).
    pub mlp_hidden: usize,
    pub class_token: bool,
    pub qkv_bias: bool,
    pub pool: Pool,
    /// LayerNorm after pooling (`fc_norm`) instead of before it (`norm`).
    pub fc_norm: bool,
    pub act: Activation,
    pub num_classes: usize,
}

impl VitConfig {
    /// Patches per side.
    pub fn grid(&self) -> usize {
        self.img_size / self.patch_size
    }
    /// Tokens in the sequence: patches plus the class token.
    pub fn tokens(&self) -> usize {
        self.grid() * self.grid() + usize::from(self.class_token)
    }
}

/// One encoder block: x + attn(norm1(x)), then + fc2(act(fc1(norm2(x)))).
pub struct Block {
    pub norm1: LayerNorm,
    pub attn: Attention,
    pub norm2: LayerNorm,
    pub fc1: Linear,
    pub fc2: Linear,
}

/// A ViT's weights on the backend, whatever names they were stored under (timm's here,
/// transformers' CLIP vision tower in src/model/clip_vision.rs).
pub struct VitWeights {
    /// The patch embedding as a linear [D, 3·p·p] (bias optional: CLIP's has none).
    pub patch: Linear,
    /// [D] on the host.
    pub cls_token: Option<Vec<f32>>,
    /// [1, tokens, D].
    pub pos_embed: Tensor,
    /// A LayerNorm on the embedded tokens before the blocks (timm `pre_norm`, CLIP's
    /// `pre_layrnorm`).
    pub norm_pre: Option<LayerNorm>,
    pub blocks: Vec<Block>,
    /// On every token after the blocks (before pooling).
    pub norm: Option<LayerNorm>,
    /// On the pooled vector.
    pub fc_norm: Option<LayerNorm>,
    /// [num_classes, D]: the classifier, or CLIP's `visual_projection` (no bias).
    pub head: Linear,
}

/// A loaded ViT classifier. The class token is put in front of the tokens on the host (the
/// only host-side step of the forward).
pub struct Vit {
    pub config: VitConfig,
    w: VitWeights,
    /// [1, L]: the pooling weights over the tokens.
    pool_weights: Tensor,
}

/// A [rows, cols] slice of rows of a host matrix, on the backend.
fn rows(
    be: &dyn Backend,
    host: &[f32],
    cols: usize,
    range: std::ops::Range<usize>,
) -> Result<Tensor> {
    let data = &host[range.start * cols..range.end * cols];
    let shape: Vec<usize> = if cols == 1 {
        vec![range.len()]
    } else {
        vec![range.len(), cols]
    };
    be.tensor_from_f32(&shape, data, be.compute_dtype())
}

impl Vit {
    /// The weights under timm's names (`patch_embed.proj.weight`, `blocks.0.attn.qkv.weight`,
    /// ...); errors name a missing tensor or a wrong shape.
    pub fn load(src: &dyn WeightSource, be: &dyn Backend, config: VitConfig) -> Result<Vit> {
        let c = &config;
        let (d, p) = (c.embed_dim, c.patch_size);
        if c.num_heads == 0 || d % c.num_heads != 0 {
            return Err(Error::BadValue {
                op: "vit",
                name: "num_heads",
                value: c.num_heads.to_string(),
                expected: format!("a divisor of embed_dim {d}"),
            });
        }
        let l = Loader::new(src, be, "");
        let pw = src.tensor("patch_embed.proj.weight", &[d, 3, p, p])?;
        let patch = Linear {
            name: "vit_patch_embed".into(),
            weight: be.tensor_from_f32(&[d, 3 * p * p], &pw.to_f32_vec(), be.compute_dtype())?,
            bias: Some(l.tensor("patch_embed.proj.bias", &[d])?),
        };
        let cls_token = if c.class_token {
            Some(src.tensor("cls_token", &[1, 1, d])?.to_f32_vec())
        } else {
            None
        };
        let pos_embed = l.tensor("pos_embed", &[1, c.tokens(), d])?;
        let mut blocks = Vec::with_capacity(c.depth);
        for i in 0..c.depth {
            let b = l.at(&format!("blocks.{i}"));
            let qkv_w = src
                .tensor(&b.join("attn.qkv.weight"), &[3 * d, d])?
                .to_f32_vec();
            let qkv_b = if c.qkv_bias {
                Some(src.tensor(&b.join("attn.qkv.bias"), &[3 * d])?.to_f32_vec())
            } else {
                None
            };
            let part = |j: usize, name: &str| -> Result<Linear> {
                Ok(Linear {
                    name: format!("vit_blocks_{i}_attn_{name}"),
                    weight: rows(be, &qkv_w, d, j * d..(j + 1) * d)?,
                    bias: match &qkv_b {
                        Some(bias) => Some(rows(be, bias, 1, j * d..(j + 1) * d)?),
                        None => None,
                    },
                })
            };
            blocks.push(Block {
                norm1: LayerNorm::load(&b.at("norm1"), d, VIT_LN_EPS)?,
                attn: Attention {
                    to_q: part(0, "q")?,
                    to_k: part(1, "k")?,
                    to_v: part(2, "v")?,
                    to_out: Linear::load(&b.at("attn.proj"), d, d, true)?,
                    heads: c.num_heads,
                    causal: false,
                },
                norm2: LayerNorm::load(&b.at("norm2"), d, VIT_LN_EPS)?,
                fc1: Linear::load(&b.at("mlp.fc1"), d, c.mlp_hidden, true)?,
                fc2: Linear::load(&b.at("mlp.fc2"), c.mlp_hidden, d, true)?,
            });
        }
        let (norm, fc_norm) = if c.fc_norm {
            (
                None,
                Some(LayerNorm::load(&l.at("fc_norm"), d, VIT_LN_EPS)?),
            )
        } else {
            (Some(LayerNorm::load(&l.at("norm"), d, VIT_LN_EPS)?), None)
        };
        let head = Linear::load(&l.at("head"), d, c.num_classes, true)?;
        let w = VitWeights {
            patch,
            cls_token,
            pos_embed,
            norm_pre: None,
            blocks,
            norm,
            fc_norm,
            head,
        };
        Vit::assemble(be, config, w)
    }

    /// The model from its weights (already checked against `config` by the loader).
    pub fn assemble(be: &dyn Backend, config: VitConfig, w: VitWeights) -> Result<Vit> {
        let c = &config;
        let prefix = usize::from(c.class_token);
        let tokens = c.tokens();
        let weights: Vec<f32> = (0..tokens)
            .map(|t| match c.pool {
                Pool::Token => f32::from(t == 0),
                Pool::Avg if t < prefix => 0.0,
                Pool::Avg => 1.0 / (tokens - prefix) as f32,
            })
            .collect();
        let pool_weights = be.tensor_from_f32(&[1, tokens], &weights, be.compute_dtype())?;
        Ok(Vit {
            config,
            w,
            pool_weights,
        })
    }

    /// The patch rows of a [3, S, S] image: [(S/p)², 3·p·p].
    fn patches(&self, pixels: &[f32]) -> Vec<f32> {
        let (s, p, g) = (
            self.config.img_size,
            self.config.patch_size,
            self.config.grid(),
        );
        let mut out = Vec::with_capacity(pixels.len());
        for gy in 0..g {
            for gx in 0..g {
                for ch in 0..3 {
                    for ky in 0..p {
                        let row = ch * s * s + (gy * p + ky) * s + gx * p;
                        out.extend_from_slice(&pixels[row..row + p]);
                    }
                }
            }
        }
        out
    }

    /// The head's output (the logits; CLIP's image embedding) for one preprocessed image, `pixels` [3, S, S] in the model's channel order.
    pub fn logits(&self, be: &dyn Backend, pixels: &[f32]) -> Result<Vec<f32>> {
        let c = &self.config;
        let (s, d) = (c.img_size, c.embed_dim);
        if pixels.len() != 3 * s * s {
            return Err(Error::BadValue {
                op: "vit",
                name: "pixels",
                value: pixels.len().to_string(),
                expected: format!("3·{s}·{s} values ([3, {s}, {s}])"),
            });
        }
        let cx = Ctx::new(be, None);
        let n_patches = c.grid() * c.grid();
        let patches = be.tensor_from_f32(
            &[1, n_patches, 3 * c.patch_size * c.patch_size],
            &self.patches(pixels),
            be.compute_dtype(),
        )?;
        let w = &self.w;
        let mut x = w.patch.forward(&cx, &patches)?.y;
        if let Some(cls) = &w.cls_token {
            let mut host = cls.clone();
            host.extend(be.to_f32_vec(&x)?);
            x = be.tensor_from_f32(&[1, c.tokens(), d], &host, be.compute_dtype())?;
        }
        let mut x = be.add(&x, &w.pos_embed)?;
        if let Some(norm) = &w.norm_pre {
            x = norm.forward(&cx, &x)?.0;
        }
        for b in &w.blocks {
            let (n1, _) = b.norm1.forward(&cx, &x)?;
            let (a, _) = b.attn.forward(&cx, &n1, None, false)?;
            be.add_assign(&mut x, &a)?;
            let (n2, _) = b.norm2.forward(&cx, &x)?;
            let f = b.fc1.forward(&cx, &n2)?.y;
            let g = be.activation(&f, c.act)?;
            let m = b.fc2.forward(&cx, &g)?.y;
            be.add_assign(&mut x, &m)?;
        }
        if let Some(norm) = &w.norm {
            x = norm.forward(&cx, &x)?.0;
        }
        let tokens = c.tokens();
        let xt = be.nlc_to_nchw(&x, 1, tokens)?.reshape([1, d, tokens])?;
        let mut pooled = be
            .linear(&xt, &self.pool_weights, None, None)?
            .y
            .reshape([1, d])?;
        if let Some(norm) = &w.fc_norm {
            pooled = norm.forward(&cx, &pooled)?.0;
        }
        be.to_f32_vec(&w.head.forward(&cx, &pooled)?.y)
    }
}
