//! Fixed-noise evaluation: the training images (to show what training did) and the held-out
//! validation images, each scored with noise and timesteps drawn from one fixed seed, so two
//! evaluations differ only by the adapters. Early stopping watches the validation loss.

use std::collections::BTreeMap;

use crate::backend::Backend;
use crate::data::BatchGroup;
use crate::error::Result;
use crate::lora::LoraSet;
use crate::model::cond::Cond;
use crate::model::family::Models;
use crate::model::layers::Ctx;
use crate::rng::Rng;
use crate::tensor::Tensor;
use crate::train::inputs::{Draw, Inputs};
use crate::train::step::{fixed_noise_loss, Objective};

/// Images scored with fixed noise: (latents, context) per batch, and the captions the
/// contexts came from (re-encoded through the trained text encoder when it is trained).
pub struct EvalSet {
    pub pairs: Vec<(Tensor, Cond)>,
    pub captions: Vec<Vec<String>>,
}

impl EvalSet {
    /// One batch per `batch_size` images (the dataset's own batch size where it has one) of
    /// a dataset's bucket, without random choices; regularisation images are not scored.
    pub fn build(
        be: &dyn Backend,
        m: &Models,
        inputs: &mut Inputs,
        draw: Draw,
        batch_size: usize,
    ) -> Result<EvalSet> {
        let items = if draw == Draw::Validation {
            &inputs.ds.validation
        } else {
            &inputs.ds.items
        };
        // Same-bucket groups only, so every batch stacks.
        let mut by_bucket: BTreeMap<BatchGroup, Vec<usize>> = BTreeMap::new();
        for (i, item) in items.iter().enumerate().filter(|(_, it)| !it.is_reg) {
            by_bucket
                .entry((item.dataset, item.bucket))
                .or_default()
                .push(i);
        }
        let mut rng = Rng::new(0);
        let mut set = EvalSet {
            pairs: Vec::new(),
            captions: Vec::new(),
        };
        for (&(d, _), idx) in &by_bucket {
            for chunk in idx.chunks(inputs.ds.batch_size(d, batch_size)) {
                let b = inputs.batch(be, m, draw, chunk, &mut rng)?;
                let text = inputs.contexts(be, m, &b.captions)?;
                set.pairs
                    .push((b.latents, Cond::with_sizes(be, text, &b.sizes)?));
                set.captions.push(b.captions);
            }
        }
        Ok(set)
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// The fixed-noise loss with `lora` (None: the base model). With `text`, the contexts are
    /// encoded again through the text encoder and its adapters (it is being trained).
    pub fn loss(
        &self,
        be: &dyn Backend,
        m: &Models,
        lora: Option<&LoraSet>,
        text: Option<&Inputs>,
        obj: &Objective,
        seed: u64,
    ) -> Result<f64> {
        match (text, lora, &m.text) {
            (Some(inputs), Some(l), Some(_)) => {
                let cx = Ctx::new(be, Some(l));
                let mut pairs = Vec::with_capacity(self.pairs.len());
                for ((latents, cond), captions) in self.pairs.iter().zip(&self.captions) {
                    let ids = inputs.ids(captions);
                    let (text, _) = inputs.encode(m, &cx, &ids, captions.len())?;
                    pairs.push((latents.clone(), cond.with_text(text)?));
                }
                fixed_noise_loss(be, &m.unet, lora, &pairs, obj, seed)
            }
            _ => fixed_noise_loss(be, &m.unet, lora, &self.pairs, obj, seed),
        }
    }
}
