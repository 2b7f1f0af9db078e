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
use crate::config::TrainConfig;
use crate::data::{epoch_batches, process_caption, scan, DataOptions, Dataset};
use crate::error::{Error, Result};
use crate::lora::export::{save_kohya, training_metadata, BaseModelInfo, TrainingInfo};
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
use crate::train::lr::LrSchedule;
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
        /// The GPU pool's memory (None on the CPU).
        device_memory: Option<crate::backend::DeviceMemory>,
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

/// The data set a configuration trains on, every file checked (what `train` reads first).
pub fn scan_data(cfg: &TrainConfig) -> Result<crate::data::Dataset> {
    Ok(scan(&data_options(cfg))?)
}

/// On a GPU: the memory plan of this run (printed), and a refusal, with what would fit, when
/// its peak exceeds the device's free memory.
fn check_memory(
    cfg: &TrainConfig,
    be: &dyn Backend,
    ds: &crate::data::Dataset,
    obs: &mut dyn Observer,
) -> Result<()> {
    use crate::plan::{fit::fit, plan, report, PlanInput};
    let Some(free) = be.device_free_memory() else {
        return Ok(());
    };
    let input = PlanInput::from_config(cfg, Some((ds.items.len(), ds.validation.len())));
    let p = plan(&input)?;
    obs.on(Event::Info(report::summary(&p)));
    if p.pool_peak() <= free {
        return Ok(());
    }
    // The context is already allocated: what fits is what the pool can have.
    let f = fit(&input, free + p.context)?;
    let mut fix = Vec::new();
    if let Some(b) = f.batch.filter(|&b| b < input.batch) {
        fix.push(format!("batch_size: {b}"));
    }
    if let Some(side) = f.side {
        fix.push(format!("resolution: {side}"));
    }
    if input.dtype == crate::tensor::DType::F32 {
        fix.push("mixed_precision: fp16".into());
    }
    Err(Error::OutOfMemory(format!(
        "this run needs about {} of device memory beyond the CUDA context (the memory plan: \
         {}) and {} is free on {}. Set {} (`lorafuse plan CONFIG --gpu-memory SIZE` shows the \
         breakdown), or use `device: cpu`",
        report::gib(p.pool_peak()),
        report::summary(&p),
        report::gib(free),
        be.name(),
        if fix.is_empty() {
            "a smaller batch_size or resolution".to_string()
        } else {
            fix.join(" or ")
        },
    )))
}

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
    ) -> Result<(Tensor, Vec<String>)> {
        let items = if validation {
            &self.ds.validation
        } else {
            &self.ds.items
        };
        let mut lat = Vec::with_capacity(idx.len());
        let mut captions = Vec::with_capacity(idx.len());
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
            captions.push(caption);
        }
        Ok((stack(be, &lat)?, captions))
    }

    /// Text embeddings [N, 77, D] of the frozen text encoder, from the cache.
    fn contexts(
        &mut self,
        be: &dyn Backend,
        m: &Models,
        cfg: &TrainConfig,
        captions: &[String],
    ) -> Result<Tensor> {
        let mut ctx = Vec::with_capacity(captions.len());
        for c in captions {
            ctx.push(self.texts.get_or_encode(
                be,
                m.te.as_ref(),
                &self.tokenizer,
                c,
                cfg.clip_skip,
            )?);
        }
        stack(be, &ctx)
    }

    /// The token ids of captions, 77 per caption.
    fn ids(&self, captions: &[String]) -> Vec<u32> {
        captions
            .iter()
            .flat_map(|c| self.tokenizer.encode(c).ids)
            .collect()
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
    let started = wall_time_now();
    let out = &cfg.output_dir;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, "create the output folder", e))?;

    // 1. Data: every file checked before anything heavy.
    let opts = data_options(cfg);
    let ds = scan(&opts)?;
    for w in &ds.warnings {
        obs.on(Event::Warning(w.to_string()));
    }
    check_memory(cfg, be, &ds, obs)?;
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
    let train_te = cfg.train_text_encoder;
    let captions_fixed = !cfg.shuffle_caption && cfg.caption_dropout_rate == 0.0 && !train_te;
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
    be.release_cache();
    // 4. Adapters (the UNet's, then the text encoder's when it is trained), one optimizer per
    //    learning rate, the schedule.
    let mut targets = m.unet.lora_targets(cfg.lora_targets);
    let n_unet = targets.len();
    if train_te {
        if let Some(te) = &m.te {
            targets.extend(te.lora_targets());
        }
    }
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
    let mut opt = Optimizers {
        unet: FlatOptimizer::for_modules(be, &lora, 0..n_unet, settings)?,
        te: if train_te {
            Some(FlatOptimizer::for_modules(
                be,
                &lora,
                n_unet..targets.len(),
                settings,
            )?)
        } else {
            None
        },
    };
    let mut scaler = LossScaler::new(be.compute_dtype() == crate::tensor::DType::F16);
    let micro_per_epoch = ds.batches_per_epoch(cfg.batch_size);
    let steps_per_epoch = cfg.steps_per_epoch(micro_per_epoch) as u64;
    let total = cfg.total_steps(micro_per_epoch) as u64;
    let schedule = LrSchedule {
        kind: cfg.lr_scheduler,
        base_lr: cfg.unet_lr,
        warmup: cfg.warmup_steps(total as usize) as u64,
        total,
        num_cycles: cfg.lr_scheduler_num_cycles as f64,
    };
    let te_schedule = LrSchedule {
        base_lr: cfg.text_encoder_lr,
        ..schedule
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
    let mut best_params: Option<(Vec<f32>, Vec<f32>, Vec<f32>)> = None;
    if resume {
        let saved = state::load(&state_path)?;
        if saved.progress.config_fingerprint != progress.config_fingerprint {
            return Err(unsupported("resume", state_path.display().to_string(), "a state saved with the same settings (this config changes what the run computes; start a new output_dir instead)"));
        }
        opt.restore(be, &saved.params, &saved.m, &saved.v, &mut lora)
            .map_err(|_| {
                unsupported(
                    "resume",
                    state_path.display().to_string(),
                    "a state of the same adapters",
                )
            })?;
        progress = saved.progress;
        opt.set_step(progress.step - progress.skipped_steps);
        scaler.scale = progress.loss_scale;
        scaler.good_steps = progress.loss_scale_good_steps;
        scaler.skipped = progress.skipped_steps;
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
    let train_set = eval_set(be, &m, cfg, &mut inputs, false)?;
    let val_set = eval_set(be, &m, cfg, &mut inputs, true)?;
    let train_loss_before = eval_loss(be, &m, None, &train_set, &inputs, &noise, eval_seed, cfg)?;

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

    // After a step and at the end of an epoch: a validation when due, then a LoRA checkpoint
    // when `save_as` names one. Evaluates to Some(reason) when early stopping ends the run
    // (no checkpoint is written then: the best adapters are restored and saved at the end).
    macro_rules! periodic {
        ($validate:expr, $save_as:expr) => {{
            let mut reason = None;
            if $validate {
                let loss = eval_loss(
                    be,
                    &m,
                    Some(&lora),
                    &val_set,
                    &inputs,
                    &noise,
                    eval_seed,
                    cfg,
                )?;
                reason = validate(
                    be,
                    loss,
                    cfg,
                    &opt,
                    &mut progress,
                    &mut best_params,
                    &mut tb,
                    obs,
                )?;
            }
            if let (None, Some(name)) = (&reason, $save_as) {
                let p = out.join(name);
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
            reason
        }};
    }
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
                let (latents, captions) = inputs.batch(be, &m, cfg, &opts, idx, false, &mut rng)?;
                grads.accum = if k == 0 { Accum::Assign } else { Accum::Add };
                let scale = scaler.scale / group.len() as f64;
                let dropout = LoraDropout::for_site(
                    cfg.lora_dropout,
                    cfg.seed,
                    &[4, progress.epoch, (b + k) as u64],
                )?;
                // The text encoder runs with its adapters (and keeps a tape) when trained;
                // otherwise the cached embeddings are the context.
                let (context, te_tape) = match (&m.te, train_te) {
                    (Some(te), true) => {
                        let cx = Ctx::new(be, Some(&lora)).with_dropout(Some(&dropout));
                        let ids = inputs.ids(&captions);
                        te.forward_train(&cx, &ids, captions.len(), cfg.clip_skip, true)?
                    }
                    _ => (inputs.contexts(be, &m, cfg, &captions)?, None),
                };
                let (l, d_context) = train_micro_batch(
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
                    te_tape.is_some(),
                )?;
                if let (Some(te), Some(tape), Some(dc)) = (&m.te, te_tape, d_context) {
                    let cx = Ctx::new(be, Some(&lora)).with_dropout(Some(&dropout));
                    te.backward(&cx, &dc, tape, &mut grads)?;
                }
                loss += l / group.len() as f64;
            }
            b += group.len();
            opt.load_grads(be, &grads)?;
            let norm = opt.grad_norm(be)? / scaler.scale;
            let apply = scaler.update(norm.is_finite());
            let lr = schedule.lr(progress.step);
            if apply {
                let coef = clip_coefficient(norm, cfg.max_grad_norm) / scaler.scale;
                opt.update(be, lr, te_schedule.lr(progress.step), coef, &mut lora)?;
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
                device_memory: be.device_memory(),
            });

            let validate_now = !val_set.pairs.is_empty()
                && cfg
                    .validate_every_n_steps
                    .is_some_and(|n| progress.step % n as u64 == 0);
            let save_as = cfg
                .save_every_n_steps
                .filter(|&n| progress.step % n as u64 == 0 && progress.step < total)
                .map(|_| format!("{}-step{:06}.safetensors", cfg.output_name, progress.step));
            if let Some(why) = periodic!(validate_now, save_as) {
                stopped = Some(why);
                break 'run;
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
                save_state(be, &state_path, &progress, &opt, &scaler)?;
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
            let validate_now = cfg.validate_every_n_steps.is_none() && !val_set.pairs.is_empty();
            let save_as = cfg
                .save_every_n_epochs
                .filter(|&n| progress.epoch % n as u64 == 0 && progress.step < total)
                .map(|_| format!("{}-{:06}.safetensors", cfg.output_name, progress.epoch));
            if let Some(why) = periodic!(validate_now, save_as) {
                stopped = Some(why);
                break 'run;
            }
        }
    }
    tb.flush()?;

    // Early stopping keeps the best adapters; otherwise the last ones are the result.
    if let (Some(_), Some(best)) = (&stopped, &best_params) {
        if !interrupted {
            opt.restore_flat(be, best, &mut lora)?;
        }
    }
    let train_loss_after = eval_loss(
        be,
        &m,
        Some(&lora),
        &train_set,
        &inputs,
        &noise,
        eval_seed,
        cfg,
    )?;
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
        save_state(be, &state_path, &progress, &opt, &scaler)?;
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

/// Images scored with fixed noise: (latents, context) per batch, and the captions the
/// contexts came from (re-encoded through the trained text encoder when it is trained).
struct EvalSet {
    pairs: Vec<(Tensor, Tensor)>,
    captions: Vec<Vec<String>>,
}

/// One batch per `batch_size` images of a bucket, without random choices.
fn eval_set(
    be: &dyn Backend,
    m: &Models,
    cfg: &TrainConfig,
    inputs: &mut Inputs,
    validation: bool,
) -> Result<EvalSet> {
    let items = if validation {
        &inputs.ds.validation
    } else {
        &inputs.ds.items
    };
    // Same-bucket groups only, so every batch stacks.
    let mut by_bucket: std::collections::BTreeMap<(usize, usize), Vec<usize>> = Default::default();
    for (i, item) in items.iter().enumerate() {
        by_bucket.entry(item.bucket).or_default().push(i);
    }
    let mut rng = Rng::new(0);
    let fixed = DataOptions {
        shuffle_caption: false,
        caption_dropout_rate: 0.0,
        flip_aug: false,
        ..inputs.opts.clone()
    };
    let mut set = EvalSet {
        pairs: Vec::new(),
        captions: Vec::new(),
    };
    for idx in by_bucket.values() {
        for chunk in idx.chunks(cfg.batch_size.max(1)) {
            let (latents, captions) =
                inputs.batch(be, m, cfg, &fixed, chunk, validation, &mut rng)?;
            let context = inputs.contexts(be, m, cfg, &captions)?;
            set.pairs.push((latents, context));
            set.captions.push(captions);
        }
    }
    Ok(set)
}

/// The fixed-noise loss of `set` with `lora` (None: the base model).
#[allow(clippy::too_many_arguments)]
fn eval_loss(
    be: &dyn Backend,
    m: &Models,
    lora: Option<&LoraSet>,
    set: &EvalSet,
    inputs: &Inputs,
    noise: &NoiseSchedule,
    seed: u64,
    cfg: &TrainConfig,
) -> Result<f64> {
    match (&m.te, lora, cfg.train_text_encoder) {
        (Some(te), Some(l), true) => {
            let cx = Ctx::new(be, Some(l));
            let mut pairs = Vec::with_capacity(set.pairs.len());
            for ((latents, _), captions) in set.pairs.iter().zip(&set.captions) {
                let ctx = te.forward(&cx, &inputs.ids(captions), captions.len(), cfg.clip_skip)?;
                pairs.push((latents.clone(), ctx));
            }
            fixed_noise_loss(be, &m.unet, lora, &pairs, noise, seed)
        }
        _ => fixed_noise_loss(be, &m.unet, lora, &set.pairs, noise, seed),
    }
}

#[allow(clippy::too_many_arguments)]
fn validate(
    be: &dyn Backend,
    loss: f64,
    cfg: &TrainConfig,
    opt: &Optimizers,
    progress: &mut Progress,
    best_params: &mut Option<(Vec<f32>, Vec<f32>, Vec<f32>)>,
    tb: &mut EventWriter,
    obs: &mut dyn Observer,
) -> Result<Option<String>> {
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
        *best_params = Some(opt.snapshot(be)?);
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
    be: &dyn Backend,
    path: &Path,
    progress: &Progress,
    opt: &Optimizers,
    scaler: &LossScaler,
) -> Result<()> {
    let mut p = progress.clone();
    p.loss_scale = scaler.scale;
    p.loss_scale_good_steps = scaler.good_steps;
    p.skipped_steps = scaler.skipped;
    let (params, m, v) = opt.snapshot(be)?;
    let n = params.len();
    state::save(
        path,
        &p,
        &Tensor::from_f32([n], params)?,
        &Tensor::from_f32([n], m)?,
        &Tensor::from_f32([n], v)?,
    )
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
    let precision = cfg.save_precision;
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
        train_text_encoder: cfg.train_text_encoder,
        network_dropout: (cfg.lora_dropout > 0.0).then_some(cfg.lora_dropout),
        text_encoder_lr: cfg.train_text_encoder.then_some(cfg.text_encoder_lr),
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

/// The UNet's optimizer and, when the text encoder is trained, its own (another learning
/// rate), seen as one for clipping, state and early stopping.
struct Optimizers {
    unet: FlatOptimizer,
    te: Option<FlatOptimizer>,
}

impl Optimizers {
    fn all(&self) -> impl Iterator<Item = &FlatOptimizer> {
        std::iter::once(&self.unet).chain(self.te.as_ref())
    }
    fn load_grads(&mut self, be: &dyn Backend, grads: &crate::lora::LoraGrads) -> Result<()> {
        self.unet.load_grads(be, grads)?;
        if let Some(t) = &mut self.te {
            t.load_grads(be, grads)?;
        }
        Ok(())
    }
    /// ‖g‖ over every adapter (kohya clips the UNet's and the text encoder's together).
    fn grad_norm(&self, be: &dyn Backend) -> Result<f64> {
        let mut sq = 0.0;
        for o in self.all() {
            sq += o.grad_norm(be)?.powi(2);
        }
        Ok(sq.sqrt())
    }
    fn update(
        &mut self,
        be: &dyn Backend,
        lr: f64,
        te_lr: f64,
        grad_scale: f64,
        lora: &mut LoraSet,
    ) -> Result<()> {
        self.unet.update(be, lr, grad_scale)?;
        self.unet.store(be, lora)?;
        if let Some(t) = &mut self.te {
            t.update(be, te_lr, grad_scale)?;
            t.store(be, lora)?;
        }
        Ok(())
    }
    fn set_step(&mut self, step: u64) {
        self.unet.step = step;
        if let Some(t) = &mut self.te {
            t.step = step;
        }
    }
    /// (params, m, v), every optimizer's end to end.
    fn snapshot(&self, be: &dyn Backend) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
        let (mut p, mut m, mut v) = (Vec::new(), Vec::new(), Vec::new());
        for o in self.all() {
            p.extend(be.to_f32_vec(&o.params)?);
            m.extend(be.to_f32_vec(&o.m)?);
            v.extend(be.to_f32_vec(&o.v)?);
        }
        Ok((p, m, v))
    }
    /// The inverse of [`Optimizers::snapshot`]; also writes the parameters into `lora`.
    fn restore_flat(
        &mut self,
        be: &dyn Backend,
        snap: &(Vec<f32>, Vec<f32>, Vec<f32>),
        lora: &mut LoraSet,
    ) -> Result<()> {
        let total: usize = self.all().map(|o| o.params.numel()).sum();
        if snap.0.len() != total || snap.1.len() != total || snap.2.len() != total {
            return Err(unsupported(
                "state",
                format!("{} parameters", snap.0.len()),
                &format!("{total} parameters: the same adapters"),
            ));
        }
        let mut at = 0;
        for o in std::iter::once(&mut self.unet).chain(self.te.as_mut()) {
            let n = o.params.numel();
            let dims = [n];
            o.params = be.tensor_from_f32(&dims, &snap.0[at..at + n], crate::tensor::DType::F32)?;
            o.m = be.tensor_from_f32(&dims, &snap.1[at..at + n], crate::tensor::DType::F32)?;
            o.v = be.tensor_from_f32(&dims, &snap.2[at..at + n], crate::tensor::DType::F32)?;
            o.store(be, lora)?;
            at += n;
        }
        Ok(())
    }
    fn restore(
        &mut self,
        be: &dyn Backend,
        params: &Tensor,
        m: &Tensor,
        v: &Tensor,
        lora: &mut LoraSet,
    ) -> Result<()> {
        let snap = (params.to_f32_vec(), m.to_f32_vec(), v.to_f32_vec());
        self.restore_flat(be, &snap, lora)
    }
}
