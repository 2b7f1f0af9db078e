//! LoRA dropout: kohya's `network_dropout` (our config key `lora_dropout`), and its
//! `network_args` `rank_dropout` and `module_dropout`.
//!
//! kohya (networks/lora.py, `LoRAModule.forward`) applies
//! `torch.nn.functional.dropout(lora_down(x), p)` while training: inverted dropout on each
//! adapter's hidden u = x·Aᵀ, element by element, before lora_up and the alpha/rank scale.
//! Kept elements are multiplied by 1/(1−p), so the expected hidden is u and inference (no
//! dropout) needs no rescaling.
//!
//! `rank_dropout` (same forward) drops whole ranks per sample: a keep draw per (sample, rank),
//! broadcast over the sample's tokens or pixels, kept ranks scaled by 1/(1−p_rank) (kohya
//! scales the adapter by that factor; the mask carries it here, which is the same product).
//! `module_dropout` skips the adapter for the whole forward with probability p_module (kohya
//! returns the frozen layer's output): here an all-zero mask, which gives the same output and
//! zero gradients for that adapter. kohya's order: the module draw, then the elementwise mask,
//! then the rank mask; all three multiply into one mask.
//!
//! Here the backend op takes the keep mask as an input ([`crate::backend::Lora::dropout`]);
//! this module draws the masks. A [`LoraDropout`] is the source for one training micro-batch:
//! [`crate::model::layers::Ctx::with_dropout`] hands it to the model, every adapter call of a
//! forward draws a fresh mask from it, and the layer saves that mask beside the hidden for its
//! backward (`model::layers::LoraSaved`). A forward without a source (inference, sampling, the
//! fixed-noise validation loss) draws nothing and is bit-identical to a model without dropout.
//!
//! Masks are a pure function of (seed, adapter index, draw number): the k-th mask a source
//! draws comes from its own generator, `Rng::for_site(seed, [adapter, k])`. So a source made
//! again from the same (p, seed), or [`LoraDropout::replay`], draws the same masks in a forward
//! of the same model, which makes runs resumable and gradients checkable. A backward never
//! draws: it reads the masks its forward saved (the UNet's backward recomputes norms and
//! GEGLU, never a LoRA-carrying linear; gradient checkpointing's recompute draws from a
//! [`LoraDropout::replay_from`] source positioned at the layer's first mask, so it applies
//! the very masks the forward applied).
//!
//! Not kohya's masks bit for bit: torch's generator is not ours, so only the distribution
//! (independent Bernoulli(1−p) keeps, scaled by 1/(1−p)) is the same.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::backend::check::bad_value;
use crate::backend::Backend;
use crate::error::Result;
use crate::rng::Rng;
use crate::tensor::{DType, Shape, Tensor};

/// The dropout source of one training forward: the probabilities and the seed of its masks.
#[derive(Debug)]
pub struct LoraDropout {
    p: f64,
    /// kohya's `rank_dropout`: a whole rank of one sample.
    rank_p: f64,
    /// kohya's `module_dropout`: the whole adapter for this forward.
    module_p: f64,
    seed: u64,
    /// Masks drawn so far: the next mask's draw number.
    draws: AtomicU64,
}

impl LoraDropout {
    /// A source dropping each hidden element with probability `p`, 0 ≤ p < 1 (p = 0 draws
    /// no masks at all: the adapters run exactly as without dropout).
    pub fn new(p: f64, seed: u64) -> Result<LoraDropout> {
        check_probability("p", p)?;
        Ok(LoraDropout {
            p,
            rank_p: 0.0,
            module_p: 0.0,
            seed,
            draws: AtomicU64::new(0),
        })
    }

    /// The same source also dropping whole ranks per sample with probability `rank_p` and
    /// the whole adapter with probability `module_p` (kohya's `rank_dropout` and
    /// `module_dropout`), each ≥ 0 and < 1.
    pub fn with_rank_and_module(mut self, rank_p: f64, module_p: f64) -> Result<LoraDropout> {
        check_probability("rank_p", rank_p)?;
        check_probability("module_p", module_p)?;
        self.rank_p = rank_p;
        self.module_p = module_p;
        Ok(self)
    }

    /// The source for one draw site of a run, e.g. a training micro-batch:
    /// `LoraDropout::for_site(cfg.lora_dropout, cfg.seed, &[site, epoch, batch])`. Its seed
    /// mixes `seed` with `parts` as [`Rng::for_site`] does, so each micro-batch gets its own
    /// masks, and a resumed run draws the same masks as an uninterrupted one.
    pub fn for_site(p: f64, seed: u64, parts: &[u64]) -> Result<LoraDropout> {
        LoraDropout::new(p, Rng::for_site(seed, parts).next_u64())
    }

    /// A fresh source with the same p and seed: it draws the same masks again, in order.
    pub fn replay(&self) -> LoraDropout {
        self.replay_from(0)
    }

    /// A source with the same p and seed whose next mask is draw number `draw`: it draws
    /// again the masks this source drew from `draw` on (gradient checkpointing's recompute).
    pub fn replay_from(&self, draw: u64) -> LoraDropout {
        LoraDropout {
            p: self.p,
            rank_p: self.rank_p,
            module_p: self.module_p,
            seed: self.seed,
            draws: AtomicU64::new(draw),
        }
    }

    pub fn p(&self) -> f64 {
        self.p
    }
    /// Whether [`LoraDropout::mask`] draws masks (some probability is not 0).
    pub fn draws_masks(&self) -> bool {
        self.p != 0.0 || self.rank_p != 0.0 || self.module_p != 0.0
    }
    pub fn seed(&self) -> u64 {
        self.seed
    }
    /// How many masks this source has drawn.
    pub fn draws(&self) -> u64 {
        self.draws.load(Ordering::Relaxed)
    }

    /// A fresh keep mask for the hidden of adapter `adapter` (its index in the `LoraSet`),
    /// shaped `shape` (samples first; the rank on axis `rank_axis`: the last for a linear
    /// layer's [.., rank], 1 for a conv's [N, rank, H, W]) in `dtype` on `be`. Each element
    /// is the product of its keeps: the module's (0 with probability p_module), the element's
    /// (0 with probability p, else 1/(1−p)) and its (sample, rank)'s (0 with probability
    /// p_rank, else 1/(1−p_rank)). `None` when every probability is 0.
    pub fn mask(
        &self,
        be: &dyn Backend,
        adapter: usize,
        shape: &Shape,
        rank_axis: usize,
        dtype: DType,
    ) -> Result<Option<Tensor>> {
        if !self.draws_masks() {
            return Ok(None);
        }
        let dims = shape.dims();
        if rank_axis >= dims.len() {
            return Err(bad_value(
                "lora dropout",
                "rank_axis",
                rank_axis,
                &format!("an axis of the hidden's shape {shape}"),
            ));
        }
        let k = self.draws.fetch_add(1, Ordering::Relaxed);
        let mut rng = Rng::for_site(self.seed, &[adapter as u64, k]);
        let n = shape.numel();
        let module_kept = self.module_p == 0.0 || rng.uniform() >= self.module_p;
        let mut keep: Vec<f32> = if self.p == 0.0 {
            vec![1.0; n]
        } else {
            (0..n)
                .map(|_| if rng.uniform() < self.p { 0.0 } else { 1.0 })
                .collect()
        };
        if self.rank_p > 0.0 {
            let samples = dims[0];
            let rank = dims[rank_axis];
            let rank_keep: Vec<bool> = (0..samples * rank)
                .map(|_| rng.uniform() >= self.rank_p)
                .collect();
            // Element i's sample and rank: strides of the axes before and after each.
            let per_sample = n / samples.max(1);
            let inner: usize = dims[rank_axis + 1..].iter().product();
            for (i, v) in keep.iter_mut().enumerate() {
                let (s, r) = (i / per_sample, i / inner % rank);
                if !rank_keep[s * rank + r] {
                    *v = 0.0;
                }
            }
        }
        if !module_kept {
            keep.fill(0.0);
        }
        // 0/1 uploaded exactly in any dtype, then scaled in that dtype: kept elements are
        // 1/((1−p)(1−p_rank)) rounded once to `dtype` (exact to f64 on the f64 CPU path).
        let ones = be.tensor_from_f32(dims, &keep, dtype)?;
        be.scale(&ones, 1.0 / ((1.0 - self.p) * (1.0 - self.rank_p)))
            .map(Some)
    }
}

fn check_probability(name: &'static str, p: f64) -> Result<()> {
    if p.is_finite() && (0.0..1.0).contains(&p) {
        Ok(())
    } else {
        Err(bad_value(
            "lora dropout",
            name,
            p,
            "a probability ≥ 0 and < 1",
        ))
    }
}
