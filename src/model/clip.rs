//! CLIPTextModel (transformers), the SD1.x text encoder: token ids -> embeddings that the
//! UNet's cross-attention reads, and the backward of kohya's text-encoder LoRA through it.
//!
//!   h0 = token_embedding[ids] + position_embedding[0..L]
//!   layer i: x2 = x + out_proj(causal_attention(q, k, v of layer_norm1(x)))     x = h_i
//!            h_{i+1} = x2 + fc2(act(fc1(layer_norm2(x2))))     act = quick_gelu in SD1.x
//!   last_hidden_state = final_layer_norm(h_L)
//! `clip_skip = n` (kohya, A1111): the output of layer L+1-n, then final_layer_norm; n = 1 is
//! the plain last_hidden_state (per window, for kohya's long captions: `forward`). Attention heads are hidden/heads wide (64 in SD1.x).
//!
//! LoRA: kohya's text-encoder targets are every layer's self_attn.{q,k,v,out}_proj, mlp.fc1 and
//! mlp.fc2 (`lora_te_text_model_encoder_layers_N_…`): 6 per layer, 72 on SD1.5. Adapters in a
//! set are applied in the forward; [`ClipTextModel::backward`] gives their dA, dB.
//!
//! Saved by a training forward, and why (weights and embeddings are frozen; a LoRA needs its
//! input X and u = X·Aᵀ, and the gradient must flow back down to layer 0's q/k/v):
//!   per layer that runs:
//!     x and layer_norm1's stats  layer_norm1's input: its output (the q/k/v input) is
//!                                recomputed from it, and its stats serve layer_norm1's
//!                                backward. Layer 0 keeps no stats: the backward stops at its
//!                                q/k/v adapters, no gradient is wanted below them.
//!     q, k, v, o, lse            the flash-style causal attention backward; o is out_proj's X
//!     x2 and layer_norm2's stats layer_norm2's input (fc1's X is recomputed) and its backward
//!     f = fc1's output           the activation's backward; act(f), fc2's X, is recomputed
//!     each adapter's u           tiny ([tokens, rank])
//!   final_layer_norm's input (the last run layer's output) and its stats.
//! Not saved: the norm outputs, act(f), the attention probabilities, the embeddings (no
//! gradient goes into them), anything of the layers that clip_skip skips (they do not run).

use crate::backend::{Accum, Activation, Backend, NormStats};
use crate::error::{Error, Result};
use crate::lora::{LayerKind, LayerRole, LoraGrads, TargetLayer};
use crate::model::attention::{
    opt_bytes, Attention, AttentionGrads, AttentionSaved, AttentionSpec,
};
use crate::model::config::{ClipTextConfig, HiddenAct};
use crate::model::layers::{kohya_name, Ctx, LayerNorm, Linear, LoraSaved};
use crate::model::weights::{Loader, WeightSource};
use crate::tensor::Tensor;

pub struct ClipLayer {
    pub layer_norm1: LayerNorm,
    /// self_attn: q_proj, k_proj, v_proj, out_proj (causal).
    pub attn: Attention,
    pub layer_norm2: LayerNorm,
    pub fc1: Linear,
    pub fc2: Linear,
}

/// The frozen text encoder.
pub struct ClipTextModel {
    pub config: ClipTextConfig,
    pub token_embedding: Tensor,
    pub position_embedding: Tensor,
    pub layers: Vec<ClipLayer>,
    pub final_layer_norm: LayerNorm,
    /// CLIPTextModelWithProjection's `text_projection` (no bias), [projection, hidden]: SDXL's
    /// second encoder has one ([`ClipTextConfig::text_projection`]), SD1.x/SD2.x's do not.
    pub text_projection: Option<Linear>,
}

/// Which hidden states a forward returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClipOutput {
    /// final_layer_norm of layer L+1-clip_skip's output (SD1.x, SD2.x; 1 = transformers'
    /// last_hidden_state).
    Normed { clip_skip: usize },
    /// transformers' hidden_states[-2]: layer L-1's output as it is, without final_layer_norm
    /// (SDXL reads both encoders' context there).
    Penultimate,
}

/// What [`ClipTextModel::encode`] returns.
pub struct ClipEncoded {
    /// [N, L, hidden], or the joined windows of a long caption (see [`ClipTextModel::forward`]).
    pub states: Tensor,
    /// text_projection(final_layer_norm(h_L)) at each sequence's pooled position, [N,
    /// projection]; None unless asked for.
    pub pooled: Option<Tensor>,
    pub tape: Option<ClipTape>,
}

/// What one encoder layer's training forward keeps (see the top of this file).
struct LayerSaved {
    x: Tensor,
    /// layer_norm1's stats; None in layer 0, whose input gets no gradient.
    s1: Option<NormStats>,
    attn: AttentionSaved,
    x2: Tensor,
    s2: NormStats,
    u_fc1: Option<LoraSaved>,
    f: Tensor,
    u_fc2: Option<LoraSaved>,
}

impl LayerSaved {
    fn size_in_bytes(&self) -> usize {
        [&self.x, &self.x2, &self.f]
            .iter()
            .map(|t| t.size_in_bytes())
            .sum::<usize>()
            + self.s1.as_ref().map_or(0, NormStats::size_in_bytes)
            + self.s2.size_in_bytes()
            + self.attn.size_in_bytes()
            + opt_bytes(&self.u_fc1)
            + opt_bytes(&self.u_fc2)
    }
}

/// Everything [`ClipTextModel::backward`] needs, saved by a training forward: one entry per
/// layer that ran (clip_skip decides how many; all of them when the pooled output is asked
/// for), final_layer_norm's input and stats where the states are normed, and what the pooled
/// output's backward needs.
pub struct ClipTape {
    layers: Vec<LayerSaved>,
    /// How many layers feed the states (the rest, up to `layers.len()`, feed only `pooled`).
    states_layers: usize,
    /// final_layer_norm's input (the states' layer output) and its stats; None for
    /// [`ClipOutput::Penultimate`], whose states are that output itself.
    out: Option<(Tensor, NormStats)>,
    /// The states before any long-caption join: [rows, L, hidden].
    dims: [usize; 3],
    pooled: Option<PooledSaved>,
    /// Windows per sequence (kohya's long captions), 1 for one window.
    windows: usize,
}

/// What the pooled output's backward needs: the pooled rows of the last layer's output
/// (final_layer_norm's input there, [N, hidden]), their stats, and where they sit in the
/// [rows·L, hidden] states.
struct PooledSaved {
    x: Tensor,
    stats: NormStats,
    rows: Vec<u32>,
}

impl ClipTape {
    /// Bytes held by the tape.
    pub fn size_in_bytes(&self) -> usize {
        self.layers
            .iter()
            .map(LayerSaved::size_in_bytes)
            .sum::<usize>()
            + self
                .out
                .as_ref()
                .map_or(0, |(x, s)| x.size_in_bytes() + s.size_in_bytes())
            + self
                .pooled
                .as_ref()
                .map_or(0, |p| p.x.size_in_bytes() + p.stats.size_in_bytes())
    }
    /// How many encoder layers ran (num_hidden_layers + 1 - clip_skip; all of them with the
    /// pooled output).
    pub fn layers_run(&self) -> usize {
        self.layers.len()
    }
}

/// The fixed parameters of every layer's forward and backward.
#[derive(Clone, Copy)]
struct LayerParams {
    act: Activation,
}

impl ClipLayer {
    /// The six LoRA-able linears in forward order.
    fn linears(&self) -> [&Linear; 6] {
        let [q, k, v, o] = self.attn.linears();
        [q, k, v, o, &self.fc1, &self.fc2]
    }

    /// h -> the layer's output; with `save`, what the backward needs. `first`: layer 0,
    /// whose layer_norm1 stats are not kept.
    fn forward(
        &self,
        cx: &Ctx,
        x: Tensor,
        p: LayerParams,
        save: bool,
        first: bool,
    ) -> Result<(Tensor, Option<LayerSaved>)> {
        let (n1, s1) = self.layer_norm1.forward(cx, &x)?;
        let (out, attn) = self.attn.forward(cx, &n1, None, save)?;
        drop(n1);
        let x2 = cx.be.add(&x, &out)?;
        drop(out);
        let (n2, s2) = self.layer_norm2.forward(cx, &x2)?;
        let f = self.fc1.forward(cx, &n2)?;
        drop(n2);
        let a = cx.be.activation(&f.y, p.act)?;
        let g = self.fc2.forward(cx, &a)?;
        drop(a);
        let y = cx.be.add(&x2, &g.y)?;
        let saved = attn.map(|attn| LayerSaved {
            x,
            s1: (!first).then_some(s1),
            attn,
            x2,
            s2,
            u_fc1: f.lora,
            f: f.y,
            u_fc2: g.lora,
        });
        Ok((y, saved))
    }

    /// From dy = d loss / d the layer's output: the adapters' gradients, and d loss / d the
    /// layer's input when `want_dx` (false in layer 0: nothing below its q/k/v needs one).
    fn backward(
        &self,
        cx: &Ctx,
        dy: &Tensor,
        s: LayerSaved,
        p: LayerParams,
        grads: &mut LoraGrads,
        want_dx: bool,
    ) -> Result<Option<Tensor>> {
        // MLP: y = x2 + fc2(act(fc1(layer_norm2(x2)))).
        let a = cx.be.activation(&s.f, p.act)?;
        let da = self.fc2.backward_dx(cx, dy, &a, s.u_fc2.as_ref(), grads)?;
        drop(a);
        let df = cx.be.activation_backward(&da, &s.f, p.act)?;
        drop((da, s.f));
        let (n2, _) = self.layer_norm2.forward(cx, &s.x2)?;
        let dn2 = self
            .fc1
            .backward_dx(cx, &df, &n2, s.u_fc1.as_ref(), grads)?;
        drop((df, n2));
        let mut dx2 = self.layer_norm2.backward(cx, &dn2, &s.x2, &s.s2)?;
        drop((dn2, s.x2));
        cx.be.add_assign(&mut dx2, dy)?;
        // Attention: x2 = x + self_attn(layer_norm1(x)).
        let (n1, _) = self.layer_norm1.forward(cx, &s.x)?;
        let into = AttentionGrads {
            x: &n1,
            context: None,
            want_dx,
            d_context: None,
        };
        let dn1 = self.attn.backward(cx, &dx2, s.attn, grads, into)?;
        drop(n1);
        if !want_dx {
            return Ok(None);
        }
        let (Some(dn1), Some(s1)) = (dn1, s.s1) else {
            return Err(tape_error(
                "layer input gradient or layer_norm1 stats missing",
            ));
        };
        let mut dx = self.layer_norm1.backward(cx, &dn1, &s.x, &s1)?;
        cx.be.add_assign(&mut dx, &dx2)?;
        Ok(Some(dx))
    }
}

impl ClipTextModel {
    /// Builds the model from weights named as transformers' `CLIPTextModel` state dict below
    /// `prefix` ("text_encoder"): `text_model.embeddings.…`, `text_model.encoder.layers.N.…`,
    /// and with [`ClipTextConfig::text_projection`] CLIPTextModelWithProjection's
    /// `text_projection.weight`. Adapters are named by the prefix (`lora_te_…` below
    /// "text_encoder", see [`kohya_name`]).
    pub fn load(
        config: &ClipTextConfig,
        src: &dyn WeightSource,
        be: &dyn Backend,
        prefix: &str,
    ) -> Result<Self> {
        crate::model::config::checked(
            config.validate(),
            "clip",
            "a CLIP text encoder configuration",
        )?;
        let root = Loader::new(src, be, prefix);
        let l = root.at("text_model");
        let (d, f, eps) = (
            config.hidden_size,
            config.intermediate_size,
            config.layer_norm_eps,
        );
        let attention = AttentionSpec {
            c: d,
            c_kv: d,
            heads: config.num_attention_heads,
            causal: true,
            qkv_bias: true,
            names: ["q_proj", "k_proj", "v_proj", "out_proj"],
        };
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let ll = l.at(&format!("encoder.layers.{i}"));
                Ok(ClipLayer {
                    layer_norm1: LayerNorm::load(&ll.at("layer_norm1"), d, eps)?,
                    attn: Attention::load(&ll.at("self_attn"), attention)?,
                    layer_norm2: LayerNorm::load(&ll.at("layer_norm2"), d, eps)?,
                    fc1: Linear::load(&ll.at("mlp.fc1"), d, f, true)?,
                    fc2: Linear::load(&ll.at("mlp.fc2"), f, d, true)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let text_projection = config
            .text_projection
            .map(|p| Linear::load(&root.at("text_projection"), d, p, false))
            .transpose()?;
        Ok(ClipTextModel {
            config: config.clone(),
            token_embedding: l
                .tensor("embeddings.token_embedding.weight", &[config.vocab_size, d])?,
            position_embedding: l.tensor(
                "embeddings.position_embedding.weight",
                &[config.max_position_embeddings, d],
            )?,
            layers,
            final_layer_norm: LayerNorm::load(&l.at("final_layer_norm"), d, eps)?,
            text_projection,
        })
    }

    /// [`ClipTextModel::load`] with the adapters named `{lora_prefix}_text_model_…` whatever
    /// the weights' prefix: SDXL's encoders are `lora_te1` and `lora_te2` in kohya's files.
    pub fn load_as(
        config: &ClipTextConfig,
        src: &dyn WeightSource,
        be: &dyn Backend,
        prefix: &str,
        lora_prefix: &str,
    ) -> Result<Self> {
        let mut te = Self::load(config, src, be, prefix)?;
        // What kohya_name makes of `prefix` itself: every name of the model starts with it.
        let marked = kohya_name(&format!("{prefix}.x"));
        let old = &marked[..marked.len() - 1];
        let linears = te.layers.iter_mut().flat_map(|l| {
            let [q, k, v, o] = [
                &mut l.attn.to_q,
                &mut l.attn.to_k,
                &mut l.attn.to_v,
                &mut l.attn.to_out,
            ];
            [q, k, v, o, &mut l.fc1, &mut l.fc2]
        });
        for lin in linears.chain(te.text_projection.as_mut()) {
            if let Some(rest) = lin.name.strip_prefix(old) {
                lin.name = format!("{lora_prefix}_{rest}");
            }
        }
        Ok(te)
    }

    /// Every frozen linear weight that can carry an adapter, by kohya name.
    pub fn adaptable_weights(&self) -> Vec<(&str, &Tensor)> {
        let l = self.layers.iter().flat_map(|l| l.linears());
        l.map(|l| (l.name.as_str(), &l.weight)).collect()
    }

    /// The layers that can carry an adapter (kohya's text-encoder LoRA), in forward order:
    /// per layer q_proj, k_proj, v_proj, out_proj, fc1, fc2. 6 per layer, 72 on SD1.5. Not
    /// the text_projection: sd-scripts targets the Linear layers inside CLIPAttention and
    /// CLIPMLP modules only.
    pub fn lora_targets(&self) -> Vec<TargetLayer> {
        self.layers
            .iter()
            .flat_map(|l| {
                l.linears()
                    .into_iter()
                    .enumerate()
                    .map(|(j, lin)| TargetLayer {
                        name: lin.name.clone(),
                        in_features: lin.in_features(),
                        out_features: lin.out_features(),
                        kind: LayerKind::Linear,
                        role: if j < 4 {
                            LayerRole::Attention
                        } else {
                            LayerRole::FeedForward
                        },
                    })
            })
            .collect()
    }

    fn params(&self) -> LayerParams {
        LayerParams {
            act: match self.config.hidden_act {
                HiddenAct::QuickGelu => Activation::QuickGelu,
                HiddenAct::Gelu => Activation::Gelu,
            },
        }
    }

    /// Text embeddings for N sequences of L token ids each (`ids` row-major), with
    /// `clip_skip` >= 1 as kohya and A1111 count it: [N, L, hidden] for L <=
    /// max_position_embeddings (P); for L = n·P with n > 1, sd-scripts' long captions
    /// (`Tokenizer::encode_long`): each of the n windows of P ids is encoded alone and the
    /// results joined, the first window's BOS state, every window's P-2 states between its
    /// BOS and EOS, the last window's EOS state: [N, n·(P-2)+2, hidden].
    pub fn forward(&self, cx: &Ctx, ids: &[u32], batch: usize, clip_skip: usize) -> Result<Tensor> {
        Ok(self.forward_train(cx, ids, batch, clip_skip, false)?.0)
    }

    /// transformers' `pooler_output`: the last_hidden_state row of each of the `batch`
    /// sequences (L ids each, L <= max_position_embeddings) at its `eos[i]`, the position of
    /// its first `<|endoftext|>` ([`crate::model::tokenizer::Encoded::eos_position`]):
    /// [batch, hidden]. CLIPModel's `text_projection` of it is the text embedding.
    pub fn pooled(&self, cx: &Ctx, ids: &[u32], batch: usize, eos: &[usize]) -> Result<Tensor> {
        let len = ids.len().checked_div(batch).unwrap_or(0);
        let window = self.config.max_position_embeddings;
        if eos.len() != batch || len > window || eos.iter().any(|&e| e >= len) {
            return Err(Error::BadValue {
                op: "clip",
                name: "eos",
                value: format!("{eos:?} for {batch} sequences of {len} ids"),
                expected: format!("one position per sequence of at most {window} ids"),
            });
        }
        let out = self.forward(cx, ids, batch, 1)?;
        let d = self.config.hidden_size;
        let rows: Vec<u32> = eos
            .iter()
            .enumerate()
            .map(|(b, &e)| (b * len + e) as u32)
            .collect();
        cx.be.embedding(&out.reshape([batch * len, d])?, &rows)
    }

    /// [`ClipTextModel::forward`], and with `save` the tape for [`ClipTextModel::backward`].
    /// The output is the same, bit for bit, with and without `save`.
    pub fn forward_train(
        &self,
        cx: &Ctx,
        ids: &[u32],
        batch: usize,
        clip_skip: usize,
        save: bool,
    ) -> Result<(Tensor, Option<ClipTape>)> {
        let out = ClipOutput::Normed { clip_skip };
        let e = self.encode(cx, ids, batch, out, None, save)?;
        Ok((e.states, e.tape))
    }

    /// The general forward: the hidden states `output` names, for `batch` sequences of one
    /// window or of whole windows (long captions, joined as [`ClipTextModel::forward`] says),
    /// and with `pooled_at` (one position per sequence, in its first window: sd-scripts pools
    /// the first window of a long caption) the pooled output through the text_projection,
    /// which runs every layer. With `save`, the tape of [`ClipTextModel::backward_pooled`];
    /// the outputs are the same, bit for bit, with and without it.
    pub fn encode(
        &self,
        cx: &Ctx,
        ids: &[u32],
        batch: usize,
        output: ClipOutput,
        pooled_at: Option<&[usize]>,
        save: bool,
    ) -> Result<ClipEncoded> {
        let p = self.config.max_position_embeddings;
        let len = ids.len().checked_div(batch).unwrap_or(0);
        let windows = if len > p && len.is_multiple_of(p) {
            len / p
        } else {
            1
        };
        if batch == 0 || len * batch != ids.len() || len == 0 || (len > p && windows == 1) {
            return Err(Error::BadValue {
                op: "clip",
                name: "ids",
                value: format!("{} ids for {batch} sequences", ids.len()),
                expected: format!(
                    "batch·L ids with 1 <= L <= {p}, or L a multiple of {p} (long captions)"
                ),
            });
        }
        let window = len / windows;
        let rows = match pooled_at {
            Some(at) => Some(self.pooled_rows(at, batch, windows, window)?),
            None => None,
        };
        let states_layers = self.states_layers(output)?;
        let run = if rows.is_some() {
            self.config.num_hidden_layers
        } else {
            states_layers
        };
        let mut h = self.embed(cx, ids, batch * windows, window)?;
        let prm = self.params();
        let mut saved = Vec::with_capacity(if save { run } else { 0 });
        let mut states = None;
        for (i, layer) in self.layers[..run].iter().enumerate() {
            if i == states_layers {
                // The pooled output runs on: keep the states' layer output.
                states = Some(h.clone());
            }
            let (y, s) = layer.forward(cx, h, prm, save, i == 0)?;
            h = y;
            saved.extend(s);
        }
        let d = self.config.hidden_size;
        let mut pooled = None;
        let mut pooled_saved = None;
        if let Some(rows) = rows {
            let Some(proj) = &self.text_projection else {
                return Err(Error::BadValue {
                    op: "clip",
                    name: "text_projection",
                    value: "none".into(),
                    expected:
                        "a text encoder with a text_projection (CLIPTextModelWithProjection) \
                               for the pooled output"
                            .into(),
                });
            };
            let flat = h.reshape([batch * windows * window, d])?;
            let x = cx.be.embedding(&flat, &rows)?;
            h = flat.reshape([batch * windows, window, d])?;
            let (n, stats) = self.final_layer_norm.forward(cx, &x)?;
            pooled = Some(proj.forward(cx, &n)?.y);
            if save {
                pooled_saved = Some(PooledSaved { x, stats, rows });
            }
        }
        if let Some(s) = states {
            h = s;
        }
        let (out, out_saved) = match output {
            ClipOutput::Normed { .. } => {
                let (out, stats) = self.final_layer_norm.forward(cx, &h)?;
                (out, save.then_some((h, stats)))
            }
            ClipOutput::Penultimate => (h, None),
        };
        let tape = save.then(|| ClipTape {
            layers: saved,
            states_layers,
            out: out_saved,
            dims: [batch * windows, window, d],
            pooled: pooled_saved,
            windows,
        });
        let states = if windows == 1 {
            out
        } else {
            let rows = joined_rows(batch, windows, p);
            cx.be
                .embedding(&out.reshape([batch * windows * p, d])?, &rows)?
                .reshape([batch, rows.len() / batch, d])?
        };
        Ok(ClipEncoded {
            states,
            pooled,
            tape,
        })
    }

    /// token_embedding[ids] + position_embedding[0..len] for `rows` rows of `len` ids.
    fn embed(&self, cx: &Ctx, ids: &[u32], rows: usize, len: usize) -> Result<Tensor> {
        let d = self.config.hidden_size;
        let tok = cx
            .be
            .embedding(&self.token_embedding, ids)?
            .reshape([rows, len, d])?;
        let positions: Vec<u32> = (0..rows).flat_map(|_| 0..len as u32).collect();
        let pos = cx
            .be
            .embedding(&self.position_embedding, &positions)?
            .reshape([rows, len, d])?;
        cx.be.add(&tok, &pos)
    }

    /// The rows of the [batch·windows·window, hidden] states where each sequence is pooled
    /// (`at[b]` in its first window).
    fn pooled_rows(
        &self,
        at: &[usize],
        batch: usize,
        windows: usize,
        window: usize,
    ) -> Result<Vec<u32>> {
        if at.len() != batch || at.iter().any(|&e| e >= window) {
            return Err(Error::BadValue {
                op: "clip",
                name: "pooled_at",
                value: format!("{at:?} for {batch} sequences of windows of {window} ids"),
                expected: "one position per sequence, inside its first window".into(),
            });
        }
        Ok(at
            .iter()
            .enumerate()
            .map(|(b, &e)| (b * windows * window + e) as u32)
            .collect())
    }

    /// How many layers run for `output`, or an error for one out of range.
    fn states_layers(&self, output: ClipOutput) -> Result<usize> {
        let n = self.config.num_hidden_layers;
        match output {
            ClipOutput::Normed { clip_skip } if clip_skip == 0 || clip_skip > n => {
                Err(Error::BadValue {
                    op: "clip",
                    name: "clip_skip",
                    value: clip_skip.to_string(),
                    expected: format!("between 1 and {n} (1 = the last layer)"),
                })
            }
            ClipOutput::Normed { clip_skip } => Ok(n + 1 - clip_skip),
            ClipOutput::Penultimate if n < 2 => Err(Error::BadValue {
                op: "clip",
                name: "num_hidden_layers",
                value: n.to_string(),
                expected: "at least 2 for the penultimate layer's states".into(),
            }),
            ClipOutput::Penultimate => Ok(n - 1),
        }
    }

    /// Gradients of the loss with respect to every text-encoder adapter in `cx`'s set, from
    /// `d_out` = d loss / d the output of [`ClipTextModel::forward_train`], into `grads`
    /// (`=` or `+=` by `grads.accum`; every adapter of the model is written exactly once).
    /// Adapters of the layers that clip_skip skipped have a zero gradient: with
    /// [`Accum::Assign`] theirs are set to 0, with [`Accum::Add`] left unchanged. The backward
    /// stops at layer 0's q/k/v adapters: the embeddings are frozen.
    pub fn backward(
        &self,
        cx: &Ctx,
        d_out: &Tensor,
        tape: ClipTape,
        grads: &mut LoraGrads,
    ) -> Result<()> {
        self.backward_pooled(cx, d_out, None, tape, grads)
    }

    /// [`ClipTextModel::backward`] of [`ClipTextModel::encode`]: from d loss / d states and,
    /// where the pooled output was made, d loss / d pooled ([N, projection]), which flows
    /// back through the text_projection and final_layer_norm at the pooled rows into the last
    /// layer and down with the states' gradient. Without `d_pooled` the layers above the
    /// states get no gradient (zero, as clip_skip's skipped layers).
    pub fn backward_pooled(
        &self,
        cx: &Ctx,
        d_states: &Tensor,
        d_pooled: Option<&Tensor>,
        tape: ClipTape,
        grads: &mut LoraGrads,
    ) -> Result<()> {
        let run = tape.layers.len();
        if tape.states_layers == 0 || run < tape.states_layers || run > self.layers.len() {
            return Err(tape_error(&format!(
                "{run} saved layers, {} for the states",
                tape.states_layers
            )));
        }
        let split;
        let d_states = if tape.windows > 1 {
            split = split_joined(cx, d_states, &tape)?;
            &split
        } else {
            d_states
        };
        if d_states.dims() != tape.dims {
            return Err(Error::BadValue {
                op: "clip backward",
                name: "d_out",
                value: format!("{:?}", d_states.dims()),
                expected: format!(
                    "the shape of the forward's output, {:?}: the gradient of the forward's \
                     output has its shape",
                    tape.dims
                ),
            });
        }
        let pooled = match (tape.pooled, d_pooled) {
            (Some(p), Some(dp)) => Some((p, dp)),
            (None, Some(_)) => {
                return Err(tape_error(
                    "a pooled gradient for a forward without pooled output",
                ))
            }
            _ => None,
        };
        // The layers from `top` up get no gradient.
        let top = if pooled.is_some() {
            run
        } else {
            tape.states_layers
        };
        if grads.accum == Accum::Assign {
            if let Some(set) = cx.lora {
                for lin in self.layers[top..].iter().flat_map(|l| l.linears()) {
                    if let Some(i) = set.find(&lin.name) {
                        for g in grads.of_mut(i) {
                            *g = cx.be.zeros(g.dims(), g.dtype())?;
                        }
                    }
                }
            }
        }
        let mut d_top = match pooled {
            Some((p, dp)) => Some(self.pooled_backward(cx, dp, p, tape.dims, grads)?),
            None => None,
        };
        let mut d_at_states = Some(match tape.out {
            Some((x, stats)) => self.final_layer_norm.backward(cx, d_states, &x, &stats)?,
            None => d_states.clone(),
        });
        let prm = self.params();
        for (i, (layer, s)) in self.layers.iter().zip(tape.layers).enumerate().rev() {
            if i >= top {
                continue;
            }
            if i + 1 == tape.states_layers {
                let d = d_at_states
                    .take()
                    .ok_or_else(|| tape_error("states gradient"))?;
                d_top = Some(match d_top {
                    Some(mut dh) => {
                        cx.be.add_assign(&mut dh, &d)?;
                        dh
                    }
                    None => d,
                });
            }
            let dh = d_top.take().ok_or_else(|| tape_error("layer gradient"))?;
            match layer.backward(cx, &dh, s, prm, grads, i > 0)? {
                Some(d) => d_top = Some(d),
                None => break,
            }
        }
        Ok(())
    }

    /// d loss / d the last layer's output, [rows, L, hidden], from d loss / d pooled: back
    /// through the text_projection and final_layer_norm at the pooled rows, zero elsewhere.
    fn pooled_backward(
        &self,
        cx: &Ctx,
        d_pooled: &Tensor,
        p: PooledSaved,
        dims: [usize; 3],
        grads: &mut LoraGrads,
    ) -> Result<Tensor> {
        let proj = self
            .text_projection
            .as_ref()
            .ok_or_else(|| tape_error("a pooled tape without a text_projection"))?;
        let n = p.rows.len();
        if d_pooled.dims() != [n, proj.out_features()] {
            return Err(Error::BadValue {
                op: "clip backward",
                name: "d_pooled",
                value: format!("{:?}", d_pooled.dims()),
                expected: format!("[{n}, {}], the pooled output's shape", proj.out_features()),
            });
        }
        let (normed, _) = self.final_layer_norm.forward(cx, &p.x)?;
        let d_normed = proj.backward_dx(cx, d_pooled, &normed, None, grads)?;
        drop(normed);
        let dx = self
            .final_layer_norm
            .backward(cx, &d_normed, &p.x, &p.stats)?;
        // Scatter: row r of the result is dx's row j where r is the j-th pooled row, else a
        // zero row (the gather from [dx; 0] below).
        let d = dims[2];
        let zero = cx.be.zeros(&[1, 1, d], dx.dtype())?;
        let table = cx
            .be
            .concat_channels(&dx.reshape([1, n, d])?, &zero)?
            .reshape([n + 1, d])?;
        let mut pick = vec![n as u32; dims[0] * dims[1]];
        for (j, &r) in p.rows.iter().enumerate() {
            pick[r as usize] = j as u32;
        }
        cx.be.embedding(&table, &pick)?.reshape(dims)
    }
}

/// For each position of the joined long-caption embeddings of `batch` sequences of
/// `windows` windows of `p` states, the row it is taken from in the [batch·windows·p, D]
/// window states: the first window's BOS, positions 1..p-1 of every window, the last
/// window's EOS (sd-scripts' join for SD1.x).
pub fn joined_rows(batch: usize, windows: usize, p: usize) -> Vec<u32> {
    let mut rows = Vec::with_capacity(batch * (windows * (p - 2) + 2));
    for b in 0..batch {
        let first = b * windows * p;
        rows.push(first as u32);
        for w in 0..windows {
            rows.extend((first + w * p + 1..first + w * p + p - 1).map(|r| r as u32));
        }
        rows.push((first + windows * p - 1) as u32);
    }
    rows
}

/// d loss / d the joined embeddings -> d loss / d each window's states (0 at the states the
/// join leaves out: the inner BOS and EOS states).
fn split_joined(cx: &Ctx, d_out: &Tensor, tape: &ClipTape) -> Result<Tensor> {
    let [rows_all, p, d] = tape.dims;
    let batch = rows_all / tape.windows;
    let rows = joined_rows(batch, tape.windows, p);
    if d_out.dims() != [batch, rows.len() / batch.max(1), d] {
        return Err(tape_error(&format!(
            "a gradient of shape {:?} for {batch} sequences of {} windows",
            d_out.dims(),
            tape.windows
        )));
    }
    let src = cx.be.to_f32_vec(d_out)?;
    let mut dst = vec![0.0f32; rows_all * p * d];
    for (k, &r) in rows.iter().enumerate() {
        let r = r as usize;
        dst[r * d..(r + 1) * d].copy_from_slice(&src[k * d..(k + 1) * d]);
    }
    cx.be.tensor_from_f32(&tape.dims, &dst, d_out.dtype())
}

fn tape_error(what: &str) -> Error {
    Error::BadValue {
        op: "clip backward",
        name: "tape",
        value: what.into(),
        expected: "a tape made by a saving forward of the same text encoder".into(),
    }
}
