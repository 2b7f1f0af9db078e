//! The training run: a checked configuration in, a kohya-format LoRA out.
//!
//! Order of work: scan and check every image; load the model; cache latents (and, when the
//! captions never change, text embeddings, then release the text encoder); attach fresh
//! adapters; then optimizer steps of `gradient_accumulation_steps` micro-batches each, with
//! validation, sample images, checkpoints and a resumable state on the way, and the LoRA,
//! TensorBoard events and a loss curve at the end. The library reports progress through an
//! [`Observer`] and never prints.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crate::backend::{Accum, Backend};
use crate::config::{LrScheduler, SavePrecision as CfgPrecision, TrainConfig};
use crate::data::{epoch_batches, process_caption, scan, DataOptions, Dataset};
use crate::error::{Error, Result};
use crate::lora::export::{
    save_kohya, training_metadata, BaseModelInfo, SavePrecision, TrainingInfo,
};
use crate::lora::{LoraDropout, LoraSet};
use crate::model::checkpoint::load_sd15;
use crate::model::clip::ClipTextModel;
use crate::model::layers::Ctx;
use crate::model::tokenizer::Tokenizer;
use crate::model::unet::Unet;
use crate::model::vae::Vae;
use crate::monitor::tensorboard::{wall_time_now, EventWriter};
use crate::rng::Rng;
use crate::sample::schedule::NoiseSchedule;
use crate::tensor::Tensor;
use crate::train::cache::{stack, LatentCache, TextCache};
use crate::train::lr::{LrSchedule, Schedule};
use crate::train::optim::{clip_coefficient, AdamWSettings, FlatOptimizer, LossScaler};
use crate::train::state::{self, Progress};
use crate::train::step::{fixed_noise_loss, train_micro_batch, Objective};

/// What a run reports as it goes.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A line of information ("caching latents for 24 images").
    Info(String),
    Warning(String),
    /// Training starts (or resumes at `first_step`).
    Started {
        total_steps: u64,
        first_step: u64,
        steps_per_epoch: u64,
        images: usize,
        validation_images: usize,
        trainable: usize,
    },
    /// After every optimizer step.
    Step {
        step: u64,
        total: u64,
        epoch: u64,
        loss: f64,
        lr: f64,
        seconds: f64,
        skipped: bool,
    },
    Validation {
        step: u64,
        loss: f64,
        best: bool,
    },
    Saved {
        what: &'static str,
        path: PathBuf,
    },
}

/// Receives [`Event`]s.
pub trait Observer {
    fn on(&mut self, event: Event);
}

/// An observer that keeps everything (tests, embedding programs).
#[derive(Default)]
pub struct Recorder(pub Vec<Event>);

impl Observer for Recorder {
    fn on(&mut self, event: Event) {
        self.0.push(event);
    }
}

/// How the run ended.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainReport {
    pub lora_path: PathBuf,
    pub state_path: PathBuf,
    pub steps: u64,
    /// Why training ended before `total_steps`, if it did (early stopping, interruption).
    pub stopped: Option<String>,
    pub interrupted: bool,
    /// Fixed-noise loss on the training images with the untouched model, and with the
    /// trained adapters (the same noise and timesteps both times).
    pub train_loss_before: f64,
    pub train_loss_after: f64,
    pub best_validation: Option<(u64, f64)>,
    pub skipped_steps: u64,
}

/// The file name of the resumable state inside output_dir.
pub const STATE_FILE: &str = "state.safetensors";

fn data_options(cfg: &TrainConfig) -> DataOptions {
    DataOptions {
        train_data_dir: cfg.train_data_dir.clone(),
        caption_extension: cfg.caption_extension.clone(),
        resolution: (
            cfg.resolution.width as usize,
            cfg.resolution.height as usize,
        ),
        enable_bucket: cfg.enable_bucket,
        min_bucket_reso: cfg.min_bucket_reso as usize,
        max_bucket_reso: cfg.max_bucket_reso as usize,
        bucket_reso_steps: cfg.bucket_reso_steps as usize,
        bucket_no_upscale: cfg.bucket_no_upscale,
        flip_aug: cfg.flip_aug,
        random_crop: cfg.random_crop,
        shuffle_caption: cfg.shuffle_caption,
        keep_tokens: cfg.keep_tokens,
        caption_dropout_rate: cfg.caption_dropout_rate,
        validation_split: cfg.validation_split,
        seed: cfg.seed,
    }
}

fn unsupported(key: &'static str, value: String, why: &str) -> Error {
    Error::BadValue {
        op: "train",
        name: key,
        value,
        expected: why.to_string(),
    }
}

/// A fingerprint of everything that shapes the run's draws and updates: a resume with a
/// different one would not continue the same run.
fn fingerprint(cfg: &TrainConfig) -> String {
    let mut c = cfg.clone();
    // Where things are written and how often may change between a run and its resume.
    c.output_dir = PathBuf::new();
    c.logging_dir = PathBuf::new();
    c.save_every_n_epochs = None;
    c.save_every_n_steps = None;
    c.sample_every_n_steps = 0;
    c.max_train_steps = None;
    c.epochs = 0;
    c.to_yaml()
}

struct Models {
    unet: Unet,
    vae: Option<Vae>,
    te: Option<ClipTextModel>,
}

/// The data the loop reads: the scanned set and its caches.
struct Inputs<'a> {
    ds: &'a Dataset,
    opts: &'a DataOptions,
    latents: LatentCache,
    texts: TextCache,
    tokenizer: Tokenizer,
}

impl Inputs<'_> {
    /// Latents [N, 4, h, w] and text embeddings [N, 77, D] of one micro-batch, with its
    /// random choices (flip, caption shuffle and dropout) drawn from `rng`.
    /// `opts` decides the random choices: the run's, or none for fixed-noise evaluation.
    #[allow(clippy::too_many_arguments)]
    fn batch(
        &mut self,
        be: &dyn Backend,
        m: &Models,
        cfg: &TrainConfig,
        opts: &DataOptions,
        idx: &[usize],
        validation: bool,
        rng: &mut Rng,
    ) -> Result<(Tensor, Tensor)> {
        let items = if validation {
            &self.ds.validation
        } else {
            &self.ds.items
        };
        let mut lat = Vec::with_capacity(idx.len());
        let mut ctx = Vec::with_capacity(idx.len());
        for &i in idx {
            let item = &items[i];
            let flipped = !validation && opts.flip_aug && rng.uniform() < 0.5;
            let key = if validation { usize::MAX - i } else { i };
            lat.push(self.latents.get_or_encode(
                be,
                m.vae.as_ref(),
                key,
                item,
                flipped,
                self.opts,
                cfg.seed,
            )?);
            let caption = if validation {
                item.caption.clone()
            } else {
                process_caption(&item.caption, opts, rng)
            };
            ctx.push(self.texts.get_or_encode(
                be,
                m.te.as_ref(),
                &self.tokenizer,
                &caption,
                cfg.clip_skip,
            )?);
        }
        Ok((stack(be, &lat)?, stack(be, &ctx)?))
    }
}

/// Trains a LoRA as `cfg` says, on `be`. `resume`: continue from output_dir's state file.
/// `stop`: set it (Ctrl-C) to finish the current step, save everything, and return.
pub fn train(
    cfg: &TrainConfig,
    be: &dyn Backend,
    resume: bool,
    stop: &AtomicBool,
    obs: &mut dyn Observer,
) -> Result<TrainReport> {
    if cfg.train_text_encoder {
        return Err(unsupported(
            "train_text_encoder",
            "true".into(),
            "false: the text encoder has no backward pass yet",
        ));
    }
    let started = wall_time_now();
    let out = &cfg.output_dir;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, "create the output folder", e))?;

    // 1. Data: every file checked before anything heavy.
    let opts = data_options(cfg);
    let ds = scan(&opts)?;
    for w in &ds.warnings {
        obs.on(Event::Warning(w.to_string()));
    }
    // 2. The model.
    obs.on(Event::Info(format!("loading {}", cfg.base_model.display())));
    let ck = load_sd15(&cfg.base_model)?;
    let mut m = Models {
        unet: Unet::load(&ck.unet.0, &ck.unet.1, be, "unet")?,
        vae: Some(Vae::load(&ck.vae.0, &ck.vae.1, be, "vae")?),
        te: Some(ClipTextModel::load(
            &ck.text_encoder.0,
            &ck.text_encoder.1,
            be,
            "text_encoder",
        )?),
    };
    drop(ck);
    let sampling = cfg.sample_every_n_steps > 0;
    let disk = cfg
        .cache_latents_to_disk
        .then(|| out.join("cache").join("latents"));
    let mut inputs = Inputs {
        ds: &ds,
        opts: &opts,
        latents: LatentCache::new(disk)?,
        texts: TextCache::default(),
        tokenizer: Tokenizer::new()?,
    };

    // 3. Caches: latents of every image (both orientations under flip_aug); captions when
    //    they never change. Then release what training no longer needs.
    let t0 = Instant::now();
    obs.on(Event::Info(format!(
        "caching latents of {} images",
        ds.items.len() + ds.validation.len()
    )));
    for (i, item) in ds.items.iter().enumerate() {
        for flipped in [false, true]
            .into_iter()
            .take(if opts.flip_aug { 2 } else { 1 })
        {
            inputs
                .latents
                .get_or_encode(be, m.vae.as_ref(), i, item, flipped, &opts, cfg.seed)?;
        }
    }
    for (i, item) in ds.validation.iter().enumerate() {
        inputs.latents.get_or_encode(
            be,
            m.vae.as_ref(),
            usize::MAX - i,
            item,
            false,
            &opts,
            cfg.seed,
        )?;
    }
    let captions_fixed = !cfg.shuffle_caption && cfg.caption_dropout_rate == 0.0;
    if captions_fixed {
        for item in ds.items.iter().chain(&ds.validation) {
            inputs.texts.get_or_encode(
                be,
                m.te.as_ref(),
                &inputs.tokenizer,
                &item.caption,
                cfg.clip_skip,
            )?;
        }
    }
    obs.on(Event::Info(format!(
        "cached {} latents and {} captions in {:.1} s",
        inputs.latents.len(),
        inputs.texts.len(),
        t0.elapsed().as_secs_f64()
    )));
    if !sampling {
        m.vae = None;
        if captions_fixed {
            m.te = None;
        }
    }

    // 4. Adapters, optimizer, schedule.
    let targets = m.unet.lora_targets(cfg.lora_targets);
    let mut lora = LoraSet::init(
        be,
        &targets,
        cfg.lora_rank,
        cfg.lora_alpha,
        &mut Rng::for_site(cfg.seed, &[1]),
    )?;
    let settings = AdamWSettings {
        beta1: cfg.adam_beta1,
        beta2: cfg.adam_beta2,
        eps: cfg.adam_epsilon,
        weight_decay: cfg.weight_decay,
    };
    let mut opt = FlatOptimizer::new(be, &lora, settings)?;
    let mut scaler = LossScaler::new(be.compute_dtype() == crate::tensor::DType::F16);
    let micro_per_epoch = ds.batches_per_epoch(cfg.batch_size);
    let steps_per_epoch = cfg.steps_per_epoch(micro_per_epoch) as u64;
    let total = cfg.total_steps(micro_per_epoch) as u64;
    let schedule = LrSchedule {
        kind: match cfg.lr_scheduler {
            LrScheduler::Constant => Schedule::Constant,
            LrScheduler::ConstantWithWarmup => Schedule::ConstantWithWarmup,
            LrScheduler::Linear => Schedule::Linear,
            LrScheduler::Cosine => Schedule::Cosine,
            LrScheduler::CosineWithRestarts => Schedule::CosineWithRestarts,
        },
        base_lr: cfg.unet_lr,
        warmup: cfg.warmup_steps(total as usize) as u64,
        total,
        num_cycles: cfg.lr_scheduler_num_cycles as f64,
    };
    let noise = NoiseSchedule::sd15();
    let obj = Objective {
        noise_offset: cfg.noise_offset,
        min_snr_gamma: cfg.min_snr_gamma,
    };
    let state_path = out.join(STATE_FILE);
    let mut progress = Progress {
        step: 0,
        epoch: 0,
        batch_in_epoch: 0,
        loss_scale: scaler.scale,
        loss_scale_good_steps: 0,
        skipped_steps: 0,
        best_validation: None,
        validations_since_best: 0,
        train_losses: Vec::new(),
        validation_losses: Vec::new(),
        config_fingerprint: fingerprint(cfg),
    };
    let mut best_params: Option<Tensor> = None;
    if resume {
        let saved = state::load(&state_path)?;
        if saved.progress.config_fingerprint != progress.config_fingerprint {
            return Err(unsupported("resume", state_path.display().to_string(), "a state saved with the same settings (this config changes what the run computes; start a new output_dir instead)"));
        }
        if saved.params.numel() != opt.params.numel() {
            return Err(unsupported(
                "resume",
                state_path.display().to_string(),
                "a state of the same adapters",
            ));
        }
        opt.params = be.tensor_from_f32(
            saved.params.dims(),
            &saved.params.to_f32_vec(),
            crate::tensor::DType::F32,
        )?;
        opt.m = be.tensor_from_f32(
            saved.m.dims(),
            &saved.m.to_f32_vec(),
            crate::tensor::DType::F32,
        )?;
        opt.v = be.tensor_from_f32(
            saved.v.dims(),
            &saved.v.to_f32_vec(),
            crate::tensor::DType::F32,
        )?;
        progress = saved.progress;
        opt.step = progress.step - progress.skipped_steps;
        scaler.scale = progress.loss_scale;
        scaler.good_steps = progress.loss_scale_good_steps;
        scaler.skipped = progress.skipped_steps;
        opt.store(be, &mut lora)?;
        obs.on(Event::Info(format!(
            "resuming at step {} of {} (epoch {})",
            progress.step,
            total,
            progress.epoch + 1
        )));
    }

    // Fixed-noise evaluation sets: the training images (to show what training did) and the
    // validation images.
    let eval_seed = cfg.seed ^ 0xe7a1;
    let train_pairs = eval_pairs(be, &m, cfg, &mut inputs, false)?;
    let val_pairs = eval_pairs(be, &m, cfg, &mut inputs, true)?;
    let train_loss_before = fixed_noise_loss(be, &m.unet, None, &train_pairs, &noise, eval_seed)?;

    cfg.write_effective()
        .map_err(|e| unsupported("output_dir", out.display().to_string(), &e.to_string()))?;
    let mut tb = EventWriter::create(&cfg.logging_dir)?;
    obs.on(Event::Started {
        total_steps: total,
        first_step: progress.step,
        steps_per_epoch,
        images: ds.items.len(),
        validation_images: ds.validation.len(),
        trainable: lora.num_params(),
    });

    let mut grads = lora.zero_grads(be)?;
    let accum = cfg.gradient_accumulation_steps.max(1);
    let mut stopped: Option<String> = None;
    let mut interrupted = false;
    let loop_start = Instant::now();
    'run: while progress.step < total {
        let mut order_rng = Rng::for_site(cfg.seed, &[2, progress.epoch]);
        let batches = epoch_batches(&ds, cfg.batch_size, &mut order_rng);
        let mut b = progress.batch_in_epoch as usize;
        while b < batches.len() && progress.step < total {
            let group = &batches[b..(b + accum).min(batches.len())];
            let mut loss = 0.0;
            for (k, idx) in group.iter().enumerate() {
                let mut rng = Rng::for_site(cfg.seed, &[3, progress.epoch, (b + k) as u64]);
                let (latents, context) = inputs.batch(be, &m, cfg, &opts, idx, false, &mut rng)?;
                grads.accum = if k == 0 { Accum::Assign } else { Accum::Add };
                let scale = scaler.scale / group.len() as f64;
                let dropout = LoraDropout::for_site(
                    cfg.lora_dropout,
                    cfg.seed,
                    &[4, progress.epoch, (b + k) as u64],
                )?;
                loss += train_micro_batch(
                    be,
                    &m.unet,
                    &lora,
                    &mut grads,
                    &latents,
                    &context,
                    &noise,
                    &obj,
                    scale,
                    &mut rng,
                    Some(&dropout),
                )? / group.len() as f64;
            }
            b += group.len();
            opt.load_grads(be, &grads)?;
            let norm = opt.grad_norm(be)? / scaler.scale;
            let apply = scaler.update(norm.is_finite());
            let lr = schedule.lr(progress.step);
            if apply {
                opt.update(
                    be,
                    lr,
                    clip_coefficient(norm, cfg.max_grad_norm) / scaler.scale,
                )?;
                opt.store(be, &mut lora)?;
            }
            progress.step += 1;
            progress.batch_in_epoch = b as u64;
            progress.train_losses.push((progress.step, loss));
            let wall = wall_time_now();
            tb.add_scalar("loss/train", progress.step, loss as f32, wall)?;
            tb.add_scalar("lr", progress.step, lr as f32, wall)?;
            obs.on(Event::Step {
                step: progress.step,
                total,
                epoch: progress.epoch,
                loss,
                lr,
                seconds: loop_start.elapsed().as_secs_f64(),
                skipped: !apply,
            });

            if let Some(n) = cfg.validate_every_n_steps {
                if !val_pairs.is_empty() && progress.step % n as u64 == 0 {
                    if let Some(why) = validate(
                        be,
                        &m.unet,
                        &lora,
                        &val_pairs,
                        &noise,
                        eval_seed,
                        cfg,
                        &opt,
                        &mut progress,
                        &mut best_params,
                        &mut tb,
                        obs,
                    )? {
                        stopped = Some(why);
                        break 'run;
                    }
                }
            }
            if let Some(n) = cfg.save_every_n_steps {
                if progress.step % n as u64 == 0 && progress.step < total {
                    let p = out.join(format!(
                        "{}-step{:06}.safetensors",
                        cfg.output_name, progress.step
                    ));
                    save_lora(
                        cfg,
                        &lora,
                        &p,
                        &ds,
                        &progress,
                        started,
                        total,
                        steps_per_epoch,
                    )?;
                    obs.on(Event::Saved {
                        what: "checkpoint",
                        path: p,
                    });
                }
            }
            if sampling && progress.step % cfg.sample_every_n_steps as u64 == 0 {
                for p in samples(be, &m, &lora, cfg, &inputs.tokenizer, progress.step)? {
                    obs.on(Event::Saved {
                        what: "sample",
                        path: p,
                    });
                }
            }
            if stop.load(Ordering::SeqCst) {
                interrupted = true;
                stopped = Some(format!(
                    "interrupted at step {}; continue with --resume",
                    progress.step
                ));
                save_state(&state_path, &progress, &opt, &scaler)?;
                obs.on(Event::Saved {
                    what: "state",
                    path: state_path.clone(),
                });
                break 'run;
            }
        }
        if b >= batches.len() {
            progress.epoch += 1;
            progress.batch_in_epoch = 0;
            if cfg.validate_every_n_steps.is_none() && !val_pairs.is_empty() {
                if let Some(why) = validate(
                    be,
                    &m.unet,
                    &lora,
                    &val_pairs,
                    &noise,
                    eval_seed,
                    cfg,
                    &opt,
                    &mut progress,
                    &mut best_params,
                    &mut tb,
                    obs,
                )? {
                    stopped = Some(why);
                    break 'run;
                }
            }
            if let Some(n) = cfg.save_every_n_epochs {
                if progress.epoch % n as u64 == 0 && progress.step < total {
                    let p = out.join(format!(
                        "{}-{:06}.safetensors",
                        cfg.output_name, progress.epoch
                    ));
                    save_lora(
                        cfg,
                        &lora,
                        &p,
                        &ds,
                        &progress,
                        started,
                        total,
                        steps_per_epoch,
                    )?;
                    obs.on(Event::Saved {
                        what: "checkpoint",
                        path: p,
                    });
                }
            }
        }
    }
    tb.flush()?;

    // Early stopping keeps the best adapters; otherwise the last ones are the result.
    if let (Some(_), Some(best)) = (&stopped, &best_params) {
        if !interrupted {
            opt.params = best.clone();
            opt.store(be, &mut lora)?;
        }
    }
    let train_loss_after =
        fixed_noise_loss(be, &m.unet, Some(&lora), &train_pairs, &noise, eval_seed)?;
    let lora_path = out.join(format!("{}.safetensors", cfg.output_name));
    if !interrupted {
        save_lora(
            cfg,
            &lora,
            &lora_path,
            &ds,
            &progress,
            started,
            total,
            steps_per_epoch,
        )?;
        obs.on(Event::Saved {
            what: "LoRA",
            path: lora_path.clone(),
        });
        save_state(&state_path, &progress, &opt, &scaler)?;
        let png = out.join(format!("{}-loss.png", cfg.output_name));
        crate::monitor::plot::loss_curve_png(
            &png,
            &progress.train_losses,
            &progress.validation_losses,
        )?;
        obs.on(Event::Saved {
            what: "loss curve",
            path: png,
        });
    }
    Ok(TrainReport {
        lora_path,
        state_path,
        steps: progress.step,
        stopped,
        interrupted,
        train_loss_before,
        train_loss_after,
        best_validation: progress.best_validation,
        skipped_steps: scaler.skipped,
    })
}

/// One (latents, context) pair per image, batched by `batch_size`, without random choices.
fn eval_pairs(
    be: &dyn Backend,
    m: &Models,
    cfg: &TrainConfig,
    inputs: &mut Inputs,
    validation: bool,
) -> Result<Vec<(Tensor, Tensor)>> {
    let n = if validation {
        inputs.ds.validation.len()
    } else {
        inputs.ds.items.len()
    };
    let mut pairs = Vec::new();
    // Same-bucket groups only, so every pair stacks.
    let mut by_bucket: std::collections::BTreeMap<(usize, usize), Vec<usize>> = Default::default();
    for i in 0..n {
        let item = if validation {
            &inputs.ds.validation[i]
        } else {
            &inputs.ds.items[i]
        };
        by_bucket.entry(item.bucket).or_default().push(i);
    }
    let mut rng = Rng::new(0);
    let fixed = DataOptions {
        shuffle_caption: false,
        caption_dropout_rate: 0.0,
        flip_aug: false,
        ..inputs.opts.clone()
    };
    for idx in by_bucket.values() {
        for chunk in idx.chunks(cfg.batch_size.max(1)) {
            pairs.push(inputs.batch(be, m, cfg, &fixed, chunk, validation, &mut rng)?);
        }
    }
    Ok(pairs)
}

#[allow(clippy::too_many_arguments)]
fn validate(
    be: &dyn Backend,
    unet: &Unet,
    lora: &LoraSet,
    pairs: &[(Tensor, Tensor)],
    noise: &NoiseSchedule,
    seed: u64,
    cfg: &TrainConfig,
    opt: &FlatOptimizer,
    progress: &mut Progress,
    best_params: &mut Option<Tensor>,
    tb: &mut EventWriter,
    obs: &mut dyn Observer,
) -> Result<Option<String>> {
    let loss = fixed_noise_loss(be, unet, Some(lora), pairs, noise, seed)?;
    progress.validation_losses.push((progress.step, loss));
    tb.add_scalar(
        "loss/validation",
        progress.step,
        loss as f32,
        wall_time_now(),
    )?;
    let improved = progress
        .best_validation
        .is_none_or(|(_, b)| loss < b - cfg.early_stopping_min_delta);
    if improved {
        progress.best_validation = Some((progress.step, loss));
        progress.validations_since_best = 0;
        *best_params = Some(opt.params.clone());
    } else {
        progress.validations_since_best += 1;
    }
    obs.on(Event::Validation {
        step: progress.step,
        loss,
        best: improved,
    });
    if let (Some(patience), Some((at, best))) =
        (cfg.early_stopping_patience, progress.best_validation)
    {
        if progress.validations_since_best >= patience as u64 {
            return Ok(Some(format!(
                "early stopping: validation loss has not improved by more than {} for {patience} validations; keeping the best adapters, from step {at} (validation loss {best:.5})",
                cfg.early_stopping_min_delta
            )));
        }
    }
    Ok(None)
}

fn save_state(
    path: &Path,
    progress: &Progress,
    opt: &FlatOptimizer,
    scaler: &LossScaler,
) -> Result<()> {
    let mut p = progress.clone();
    p.loss_scale = scaler.scale;
    p.loss_scale_good_steps = scaler.good_steps;
    p.skipped_steps = scaler.skipped;
    state::save(path, &p, &opt.params, &opt.m, &opt.v)
}

#[allow(clippy::too_many_arguments)]
fn save_lora(
    cfg: &TrainConfig,
    lora: &LoraSet,
    path: &Path,
    ds: &Dataset,
    progress: &Progress,
    started: f64,
    total: u64,
    steps_per_epoch: u64,
) -> Result<()> {
    let precision = match cfg.save_precision {
        CfgPrecision::Fp16 => SavePrecision::Fp16,
        CfgPrecision::Fp32 => SavePrecision::Fp32,
        CfgPrecision::Bf16 => SavePrecision::Bf16,
    };
    let info = TrainingInfo {
        output_name: cfg.output_name.clone(),
        training_started_at: started,
        training_finished_at: wall_time_now(),
        steps: progress.step,
        epoch: progress.epoch,
        base_model: BaseModelInfo {
            name: cfg
                .base_model
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            legacy_hash: None,
            sha256: None,
        },
        lora_rank: cfg.lora_rank,
        lora_alpha: cfg.lora_alpha,
        targets: cfg.lora_targets,
        learning_rate: cfg.learning_rate,
        unet_lr: Some(cfg.unet_lr),
        lr_scheduler: cfg.lr_scheduler.to_string(),
        lr_warmup_steps: cfg.warmup_steps(total as usize) as u64,
        max_train_steps: total,
        num_epochs: total.div_ceil(steps_per_epoch.max(1)),
        num_batches_per_epoch: ds.batches_per_epoch(cfg.batch_size) as u64,
        batch_size: cfg.batch_size,
        gradient_accumulation_steps: cfg.gradient_accumulation_steps,
        max_grad_norm: cfg.max_grad_norm,
        mixed_precision: cfg.mixed_precision.to_string(),
        cache_latents: true,
        seed: cfg.seed,
        resolution: (cfg.resolution.width, cfg.resolution.height),
        clip_skip: Some(cfg.clip_skip as u32),
        noise_offset: (cfg.noise_offset != 0.0).then_some(cfg.noise_offset),
        min_snr_gamma: cfg.min_snr_gamma,
        flip_aug: cfg.flip_aug,
        random_crop: cfg.random_crop,
        num_train_images: ds.samples_per_epoch() as u64,
        num_validation_images: ds.validation.len() as u64,
        validation_split: cfg.validation_split,
        validate_every_n_steps: cfg.validate_every_n_steps.map(|n| n as u64),
        ..TrainingInfo::default()
    };
    save_kohya(path, lora, precision, &training_metadata(&info))
}

/// Sample images for every prompt in `sample_prompts`, written to output_dir/samples/.
fn samples(
    be: &dyn Backend,
    m: &Models,
    lora: &LoraSet,
    cfg: &TrainConfig,
    tokenizer: &Tokenizer,
    step: u64,
) -> Result<Vec<PathBuf>> {
    use crate::sample::{generate, parse_prompt_line, save_png, Pipeline, PromptDefaults};
    let (Some(vae), Some(te)) = (m.vae.as_ref(), m.te.as_ref()) else {
        return Ok(Vec::new());
    };
    let lines = cfg
        .sample_prompt_lines()
        .map_err(|e| unsupported("sample_prompts", String::new(), &e.to_string()))?;
    let dir = cfg.output_dir.join("samples");
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, "create the samples folder", e))?;
    let defaults = PromptDefaults {
        width: cfg.resolution.width as usize,
        height: cfg.resolution.height as usize,
        seed: Some(cfg.seed),
        ..PromptDefaults::default()
    };
    let pipe = Pipeline::new(&m.unet, vae, te, tokenizer);
    let cx = Ctx::new(be, Some(lora));
    let mut written = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let spec = parse_prompt_line(line, &defaults)
            .map_err(|e| unsupported("sample_prompts", line.clone(), &e.to_string()))?;
        let img = generate(&pipe, &cx, &spec, cfg.clip_skip, None)
            .map_err(|e| unsupported("sample_prompts", line.clone(), &e.to_string()))?;
        let path = dir.join(format!("{}_{step:06}_{i:02}.png", cfg.output_name));
        save_png(&path, &img.image).map_err(|e| {
            unsupported("sample_prompts", path.display().to_string(), &e.to_string())
        })?;
        written.push(path);
    }
    Ok(written)
}
