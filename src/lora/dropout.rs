//! LoRA dropout: kohya's `network_dropout` (our config key `lora_dropout`).
//!
//! kohya (networks/lora.py, `LoRAModule.forward`) applies
//! `torch.nn.functional.dropout(lora_down(x), p)` while training: inverted dropout on each
//! adapter's hidden u = x·Aᵀ, element by element, before lora_up and the alpha/rank scale.
//! Kept elements are multiplied by 1/(1−p), so the expected hidden is u and inference (no
//! dropout) needs no rescaling.
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

/// The dropout source of one training forward: probability p and the seed of its masks.
#[derive(Debug)]
pub struct LoraDropout {
    p: f64,
    seed: u64,
    /// Masks drawn so far: the next mask's draw number.
    draws: AtomicU64,
}

impl LoraDropout {
    /// A source dropping each hidden element with probability `p`, 0 ≤ p < 1 (p = 0 draws
    /// no masks at all: the adapters run exactly as without dropout).
    pub fn new(p: f64, seed: u64) -> Result<LoraDropout> {
        if !(p.is_finite() && (0.0..1.0).contains(&p)) {
            return Err(bad_value(
                "lora dropout",
                "p",
                p,
                "a probability ≥ 0 and < 1",
            ));
        }
        Ok(LoraDropout {
            p,
            seed,
            draws: AtomicU64::new(0),
        })
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
            seed: self.seed,
            draws: AtomicU64::new(draw),
        }
    }

    pub fn p(&self) -> f64 {
        self.p
    }
    pub fn seed(&self) -> u64 {
        self.seed
    }
    /// How many masks this source has drawn.
    pub fn draws(&self) -> u64 {
        self.draws.load(Ordering::Relaxed)
    }

    /// A fresh keep mask for the hidden of adapter `adapter` (its index in the `LoraSet`),
    /// shaped `shape` ([.., rank]) in `dtype` on `be`: each element independently 0 with
    /// probability p, else 1/(1−p). `None` when p = 0.
    pub fn mask(
        &self,
        be: &dyn Backend,
        adapter: usize,
        shape: &Shape,
        dtype: DType,
    ) -> Result<Option<Tensor>> {
        if self.p == 0.0 {
            return Ok(None);
        }
        let k = self.draws.fetch_add(1, Ordering::Relaxed);
        let mut rng = Rng::for_site(self.seed, &[adapter as u64, k]);
        let keep: Vec<f32> = (0..shape.numel())
            .map(|_| if rng.uniform() < self.p { 0.0 } else { 1.0 })
            .collect();
        // 0/1 uploaded exactly in any dtype, then scaled in that dtype: kept elements are
        // 1/(1−p) rounded once to `dtype` (exact to f64 on the f64 CPU path).
        let ones = be.tensor_from_f32(shape.dims(), &keep, dtype)?;
        be.scale(&ones, 1.0 / (1.0 - self.p)).map(Some)
    }
}
