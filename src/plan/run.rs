//! One metered run of the trainer's sequence (train/trainer.rs, in the same order: models,
//! caches, release, adapters and optimizer, one optimizer step, sampling), on the CUDA backend
//! over the memory meter, with the real SD1.5 configurations and shape-only weights.

use std::sync::Arc;

use super::{MemoryPlan, PlanInput, CONTEXT_BYTES};
use crate::backend::cuda::{CudaBackend, Device};
use crate::backend::prelude::*;
use crate::error::{Error, Result};
use crate::lora::{LoraDropout, LoraSet};
use crate::model::clip::ClipTextModel;
use crate::model::config::{ClipTextConfig, UnetConfig, VaeConfig};
use crate::model::layers::Ctx;
use crate::model::unet::Unet;
use crate::model::vae::Vae;
use crate::model::weights::ShapeOnly;
use crate::rng::Rng;
use crate::sample::schedule::NoiseSchedule;
use crate::tensor::DType;
use crate::train::optim::{AdamWSettings, FlatOptimizer};
use crate::train::step::{train_micro_batch, Objective};

/// Tokens per caption (CLIP's 77 positions).
const TOKENS: usize = 77;

fn in_use(dev: &Device) -> usize {
    dev.pool_stats().in_use
}

/// Pool peak of `f`, measured from what is in use when it starts.
fn peak_of<T>(dev: &Device, f: impl FnOnce() -> Result<T>) -> Result<(T, usize)> {
    dev.reset_peak();
    let out = f()?;
    Ok((out, dev.pool_stats().peak_in_use))
}

/// Measures `input`'s device memory: see the module documentation.
pub fn plan(input: &PlanInput) -> Result<MemoryPlan> {
    check(input)?;
    let dev: Arc<Device> = Device::meter();
    let be = CudaBackend::new(dev.clone(), input.dtype)?;
    let dtype = input.dtype;
    let (lh, lw) = (input.height / 8, input.width / 8);

    // 1. The models.
    let unet = Unet::load(&UnetConfig::sd15(), &ShapeOnly, &be, "unet")?;
    let unet_bytes = in_use(&dev);
    let vae = Vae::load(&VaeConfig::sd15(), &ShapeOnly, &be, "vae")?;
    let vae_bytes = in_use(&dev) - unet_bytes;
    let te_config = ClipTextConfig::sd15();
    let width = te_config.hidden_size;
    let te = ClipTextModel::load(&te_config, &ShapeOnly, &be, "text_encoder")?;
    let te_bytes = in_use(&dev) - unet_bytes - vae_bytes;

    // 2. Caches: one image through the VAE, one caption through CLIP, then every cached
    //    latent and embedding as the caches hold them ([1, ..] each).
    let cx = Ctx::new(&be, None);
    let before_caches = in_use(&dev);
    let (caches, caching_peak) = peak_of(&dev, || {
        let image = be.zeros(&[1, 3, input.height, input.width], dtype)?;
        let post = vae.encode(&cx, &image)?;
        let noise = be.zeros(post.mean.dims(), post.mean.dtype())?;
        let first = vae.latents(&cx, &post, Some(&noise))?;
        drop((image, post, noise));
        let emb = te.forward(&cx, &[0; TOKENS], 1, input.clip_skip)?;
        // The encoded latent and embedding are the caches' first entries, when they cache any.
        let mut held: Vec<_> = (input.cached_latents > 0)
            .then_some(first)
            .into_iter()
            .collect();
        held.extend((input.cached_captions > 0).then_some(emb));
        for _ in 1..input.cached_latents {
            held.push(be.zeros(&[1, 4, lh, lw], dtype)?);
        }
        for _ in 1..input.cached_captions {
            held.push(be.zeros(&[1, TOKENS, width], dtype)?);
        }
        Ok(held)
    })?;
    let cache_bytes = in_use(&dev) - before_caches;
    let keep_vae = input.sampling;
    let keep_te = input.sampling || !input.captions_fixed;
    let vae = keep_vae.then_some(vae);
    let te = keep_te.then_some(te);
    be.release_cache();

    // 3. Adapters, gradients, optimizers.
    let mut targets = unet.lora_targets(input.targets);
    let n_unet = targets.len();
    if input.train_text_encoder {
        if let Some(te) = &te {
            targets.extend(te.lora_targets());
        }
    }
    let at = in_use(&dev);
    let mut lora = LoraSet::init(&be, &targets, input.rank, input.alpha, &mut Rng::new(1))?;
    let lora_bytes = in_use(&dev) - at;
    let settings = AdamWSettings {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.01,
    };
    let at = in_use(&dev);
    let mut opts = vec![FlatOptimizer::for_modules(&be, &lora, 0..n_unet, settings)?];
    if input.train_text_encoder && targets.len() > n_unet {
        opts.push(FlatOptimizer::for_modules(
            &be,
            &lora,
            n_unet..targets.len(),
            settings,
        )?);
    }
    let opt_bytes = in_use(&dev) - at;
    let at = in_use(&dev);
    let mut grads = lora.zero_grads(&be)?;
    let grad_bytes = in_use(&dev) - at;

    // 4. The tape of one training forward, by block (measured on its own, then dropped).
    let latents = be.zeros(&[input.batch, 4, lh, lw], dtype)?;
    let context = be.zeros(&[input.batch, TOKENS, width], dtype)?;
    let tape = {
        let t = be.zeros(&[input.batch], dtype)?;
        let (_, tape) = unet.forward(
            &Ctx::new(&be, Some(&lora)),
            &latents,
            &t,
            &context,
            true,
            None,
        )?;
        tape.map(|t| t.bytes_by_block()).unwrap_or_default()
    };

    // 5. One optimizer step, as the trainer runs it.
    let schedule = NoiseSchedule::sd15();
    let obj = Objective {
        noise_offset: 0.0,
        min_snr_gamma: None,
    };
    let p = if input.dropout { 0.1 } else { 0.0 };
    let ((), training_peak) = peak_of(&dev, || {
        let dropout = LoraDropout::for_site(p, 1, &[4])?;
        let ids = vec![0u32; TOKENS * input.batch];
        let (ctx, te_tape) = match (&te, input.train_text_encoder) {
            (Some(te), true) => {
                let cx = Ctx::new(&be, Some(&lora)).with_dropout(Some(&dropout));
                te.forward_train(&cx, &ids, input.batch, input.clip_skip, true)?
            }
            _ => (be.zeros(&[input.batch, TOKENS, width], dtype)?, None),
        };
        let (_, d_ctx) = train_micro_batch(
            &be,
            &unet,
            &lora,
            &mut grads,
            &latents,
            &ctx,
            &schedule,
            &obj,
            1.0,
            &mut Rng::new(3),
            Some(&dropout),
            te_tape.is_some(),
        )?;
        drop(ctx);
        if let (Some(te), Some(tape), Some(dc)) = (&te, te_tape, d_ctx) {
            let cx = Ctx::new(&be, Some(&lora)).with_dropout(Some(&dropout));
            te.backward(&cx, &dc, tape, &mut grads)?;
        }
        for o in &mut opts {
            o.load_grads(&be, &grads)?;
            o.grad_norm(&be)?;
            o.update(&be, 1e-4, 1.0)?;
            o.store(&be, &mut lora)?;
        }
        Ok(())
    })?;
    drop((latents, context));

    // 6. A sample image: the UNet on (negative, prompt) at the training size, then the VAE.
    let sampling_peak = match &vae {
        Some(vae) if input.sampling => {
            let cx = Ctx::new(&be, Some(&lora));
            let ((), peak) = peak_of(&dev, || {
                let x = be.zeros(&[2, 4, lh, lw], dtype)?;
                let t = be.zeros(&[2], dtype)?;
                let c = be.zeros(&[2, TOKENS, width], dtype)?;
                let (eps, _) = unet.forward(&cx, &x, &t, &c, false, None)?;
                drop((x, t, c, eps));
                let z = be.zeros(&[1, 4, lh, lw], dtype)?;
                vae.decode(&cx, &z)?;
                Ok(())
            })?;
            Some(peak)
        }
        _ => None,
    };
    drop(caches);

    Ok(MemoryPlan {
        input: input.clone(),
        weights: vec![
            ("unet", unet_bytes, true),
            ("text_encoder", te_bytes, keep_te),
            ("vae", vae_bytes, keep_vae),
        ],
        lora: lora_bytes,
        optimizer: opt_bytes,
        grads: grad_bytes,
        caches: cache_bytes,
        tape,
        caching_peak,
        training_peak,
        sampling_peak,
        reserved_peak: dev.pool_stats().peak_reserved,
        context: CONTEXT_BYTES,
    })
}

/// The sizes the models accept: a multiple of 64 pixels (8 latent pixels, through three
/// stride-2 downsamplers) and a batch of at least 1.
fn check(input: &PlanInput) -> Result<()> {
    let bad = |name: &'static str, value: String, expected: &str| {
        Err(Error::BadValue {
            op: "plan",
            name,
            value,
            expected: expected.into(),
        })
    };
    if input.batch == 0 {
        return bad("batch_size", "0".into(), "at least 1");
    }
    if input.width < 64 || input.height < 64 || input.width % 64 != 0 || input.height % 64 != 0 {
        return bad(
            "resolution",
            format!("{}x{}", input.width, input.height),
            "multiples of 64 pixels, at least 64",
        );
    }
    if input.dtype == DType::F64 {
        return bad("mixed_precision", "f64".into(), "fp16 or no (f32)");
    }
    Ok(())
}
