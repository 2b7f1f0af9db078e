//! The training run as a value with phases, llm.c style. [`Run`] holds the models, the data
//! and its caches, the adapters with their optimizer and loss scaler, and the progress; its
//! phases are the only places where device memory is taken:
//!
//!   Run::prepare   load the models; cache latents (and captions when they never change);
//!                  release what training no longer needs; attach adapters and optimizer;
//!                  build the fixed-noise evaluation sets and score the base model
//!   Run::step      `gradient_accumulation_steps` micro-batches (on each rank of a
//!                  data-parallel run: dist/mod.rs), then one optimizer step
//!   Run::validation_loss, Run::sample_images
//!
//! [`train`] drives them and does the writing (logs, checkpoints, state, samples: see
//! `loop_io.rs`); `plan` drives the same phases over the memory meter.

use std::sync::atomic::AtomicBool;

use crate::backend::Backend;
use crate::config::TrainConfig;
use crate::data::{captions_vary, epoch_batches, Dataset};
use crate::dist::{Communicator, Solo};
use crate::error::{Error, Result};
use crate::model::family::{family_of, vae_dtype, Models, Prediction, WeightsFrom};
use crate::model::layers::Ctx;
use crate::rng::Rng;
use crate::sample::image::RgbImage;
use crate::train::cache::Pixels;
use crate::train::eval::EvalSet;
use crate::train::inputs::{data_options, Draw, Inputs};
use crate::train::lr::LrSchedule;
use crate::train::optim::ParamGroup;
use crate::train::state::Progress;
use crate::train::trainable::TEXT_ENCODER_GROUP;
use crate::train::trainable::{Site, Trainable};

pub use crate::train::events::{Event, Observer, Quiet, Recorder, TrainReport};
pub use crate::train::loop_io::scan_data;
pub use crate::train::saves::STATE_FILE;

/// The phases, as [`PhaseHook`]s see them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Models,
    Caching,
    Adapters,
    Evaluation,
    Step,
    Validation,
    Sampling,
}

/// Told where each phase begins and ends (`plan` measures the pool there).
pub trait PhaseHook {
    fn begin(&mut self, _phase: Phase) {}
    fn end(&mut self, _phase: Phase) {}
    /// A network is on the device ("unet", "vae", "text_encoder").
    fn loaded(&mut self, _network: &'static str) {}
    /// A line of information for the user.
    fn info(&mut self, _line: String) {}
}

/// Passes the phases' information lines on to an observer.
pub struct Announce<'o>(pub &'o mut dyn Observer);

impl PhaseHook for Announce<'_> {
    fn info(&mut self, line: String) {
        self.0.on(Event::Info(line));
    }
}

/// The run's length in optimizer steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lengths {
    pub total: u64,
    pub steps_per_epoch: u64,
    pub micro_per_epoch: u64,
}

/// What one optimizer step did.
pub struct StepDone {
    pub loss: f64,
    /// The UNet's learning rate of the step.
    pub lr: f64,
    pub applied: bool,
    /// The first micro-batch's UNet tape by block.
    pub tape_by_block: Vec<(String, usize)>,
}

/// A training run between its phases.
pub struct Run<'a> {
    pub cfg: &'a TrainConfig,
    pub be: &'a dyn Backend,
    pub models: Models,
    pub inputs: Inputs,
    pub trainable: Trainable,
    pub train_set: EvalSet,
    pub val_set: EvalSet,
    pub progress: Progress,
    /// Every group's parameters at the best validation (early stopping).
    pub best: Option<Vec<Vec<f32>>>,
    pub lengths: Lengths,
    /// Learning rate per optimizer group.
    pub schedules: Vec<LrSchedule>,
    /// Fixed-noise loss of the base model on the training images.
    pub loss_before: f64,
    /// The current epoch's batches, and which epoch they are.
    order: (u64, Vec<Vec<usize>>),
    /// The other ranks of a data-parallel run ([`Solo`] on one device).
    pub comm: &'a dyn Communicator,
}

/// The communicator of a single-device run.
static SOLO: Solo = Solo;

impl<'a> Run<'a> {
    /// Every phase up to the first step: see the module documentation.
    pub fn prepare(
        cfg: &'a TrainConfig,
        be: &'a dyn Backend,
        ds: Dataset,
        from: WeightsFrom<'_>,
        pixels: Pixels,
        hook: &mut dyn PhaseHook,
    ) -> Result<Run<'a>> {
        let family = match from {
            WeightsFrom::Checkpoint(p) | WeightsFrom::Shapes(Some(p)) => family_of(p)?,
            WeightsFrom::Shapes(None) => &crate::model::family::sd1::Sd1,
            WeightsFrom::Reference(f) => f,
        };
        for note in crate::train::fits::check_family(cfg, family)? {
            hook.info(note);
        }
        hook.begin(Phase::Models);
        let vae = vae_dtype(family, be, cfg.no_half_vae);
        if vae != be.compute_dtype() {
            hook.info(format!(
                "the VAE computes in {vae} beside the model's {}{}",
                be.compute_dtype(),
                match cfg.no_half_vae {
                    Some(_) => " (no_half_vae)",
                    None => " (SDXL's VAE overflows in f16; no_half_vae: false keeps it in f16)",
                }
            ));
        }
        let mut models = family.load_with(from, be, vae, &mut |n| hook.loaded(n))?;
        models.prediction = prediction(cfg, &models, from)?;
        hook.end(Phase::Models);

        hook.begin(Phase::Caching);
        let t0 = std::time::Instant::now();
        let n = ds.items.len() + ds.validation.len();
        hook.info(format!("caching latents of {n} images"));
        let mut inputs = Inputs::new(cfg, ds, pixels, vae)?;
        inputs.tokenizer = inputs.tokenizer.clone().padding_with(family.pad_token());
        let sampling = cfg.samples_asked();
        let captions_fixed = captions_fixed(cfg);
        inputs.fill(be, &models, captions_fixed)?;
        hook.info(format!(
            "cached {} latents and {} captions in {:.1} s",
            inputs.latents.len(),
            inputs.texts.len(),
            t0.elapsed().as_secs_f64()
        ));
        if !sampling && !inputs.crops_per_step() {
            models.vae = None;
            if captions_fixed {
                models.text = None;
            }
        }
        be.release_cache()?;
        hook.end(Phase::Caching);

        hook.begin(Phase::Adapters);
        let trainable = Trainable::new(be, &models, cfg)?;
        if let (Some(s), Some(file)) = (&trainable.started, &cfg.network_weights) {
            hook.info(format!(
                "network_weights {}: {} adapters loaded, {} of the file not used, {} {}",
                file.display(),
                s.loaded,
                s.unused,
                s.missing,
                if cfg.dim_from_weights {
                    "of this run's targets not in the file left out (dim_from_weights)"
                } else {
                    "not in the file start fresh"
                }
            ));
        }
        hook.end(Phase::Adapters);

        hook.begin(Phase::Evaluation);
        let train_set = EvalSet::build(be, &models, &mut inputs, Draw::TrainPlain, cfg.batch_size)?;
        let val_set = EvalSet::build(be, &models, &mut inputs, Draw::Validation, cfg.batch_size)?;
        let loss_before = train_set.loss(
            be,
            &models,
            None,
            None,
            &trainable.objective,
            eval_seed(cfg),
        )?;
        hook.end(Phase::Evaluation);

        let lengths = lengths(cfg, &inputs.ds, 1);
        let schedules = schedules(cfg, lengths.total, &trainable.groups);
        Ok(Run {
            progress: Progress::fresh(cfg, trainable.scaler),
            cfg,
            be,
            models,
            inputs,
            trainable,
            train_set,
            val_set,
            best: None,
            lengths,
            schedules,
            loss_before,
            order: (u64::MAX, Vec::new()),
            comm: &SOLO,
        })
    }

    /// Makes this run one rank of a data-parallel run over `comm`'s ranks: each step takes
    /// `gradient_accumulation_steps` micro-batches per rank, so an epoch has fewer steps.
    pub fn on_ranks(&mut self, comm: &'a dyn Communicator) {
        self.comm = comm;
        self.progress.config_fingerprint = crate::train::state::fingerprint(self.cfg, comm.world());
        self.lengths = lengths(self.cfg, &self.inputs.ds, comm.world());
        self.schedules = schedules(self.cfg, self.lengths.total, &self.trainable.groups);
    }

    /// Whether every step has been taken.
    pub fn done(&self) -> bool {
        self.progress.step >= self.lengths.total
    }

    /// Whether the current epoch's batches are all consumed.
    pub fn epoch_finished(&mut self) -> bool {
        self.progress.batch_in_epoch as usize >= self.batches().len()
    }

    /// Moves on to the next epoch.
    pub fn next_epoch(&mut self) {
        self.progress.epoch += 1;
        self.progress.batch_in_epoch = 0;
    }

    /// The current epoch's batches (drawn from (seed, epoch), so a resume sees the same).
    fn batches(&mut self) -> &[Vec<usize>] {
        let epoch = self.progress.epoch;
        if self.order.0 != epoch {
            let mut rng = Rng::for_site(self.cfg.seed, &[2, epoch]);
            self.order = (
                epoch,
                epoch_batches(&self.inputs.ds, self.cfg.batch_size, &mut rng),
            );
        }
        &self.order.1
    }

    /// Puts the current epoch's largest batch (most pixels: its samples times its bucket's
    /// area) first, so the next step is the most demanding one; with several datasets, the
    /// one of the largest batch size. `plan` measures that step.
    pub fn largest_batch_first(&mut self) {
        self.batches();
        let items = &self.inputs.ds.items;
        let pixels = |b: &Vec<usize>| -> usize {
            b.iter()
                .map(|&i| items[i].bucket.0 * items[i].bucket.1)
                .sum()
        };
        let batches = &mut self.order.1;
        let b = self.progress.batch_in_epoch as usize;
        if let Some(k) = (b..batches.len()).max_by_key(|&k| pixels(&batches[k])) {
            batches.swap(b, k);
        }
    }

    /// One optimizer step: up to `gradient_accumulation_steps` micro-batches of the current
    /// epoch on each rank, their mean loss, the update at the scheduled rates.
    ///
    /// The step's micro-batches go out in rounds, one per rank (round k: rank r takes
    /// micro-batch k·world + r); after each round the gradients are summed over the ranks with
    /// the running sum folded into rank 0's part, so every rank gets (((g₀ + g₁) + g₂) + …)
    /// in micro-batch order: one device's sum, bit for bit (dist/mod.rs).
    pub fn step(&mut self) -> Result<StepDone> {
        let b = self.progress.batch_in_epoch as usize;
        let (rank, world) = (self.comm.rank(), self.comm.world());
        let per_step = self.cfg.gradient_accumulation_steps.max(1) * world;
        let group: Vec<Vec<usize>> = {
            let batches = self.batches();
            batches[b..(b + per_step).min(batches.len())].to_vec()
        };
        let n = group.len();
        let (mut losses, mut tape_by_block) = (vec![0.0; n], Vec::new());
        let mut sums: Vec<Vec<f32>> = Vec::new();
        for round in 0..n.div_ceil(world) {
            let j = round * world + rank;
            let mine = if j < n {
                let site = Site {
                    epoch: self.progress.epoch,
                    index: (b + j) as u64,
                    of: n,
                };
                let out = self.trainable.micro_batch(
                    self.be,
                    &self.models,
                    &mut self.inputs,
                    &group[j],
                    site,
                )?;
                if j == 0 {
                    tape_by_block = out.tape_by_block;
                }
                losses[j] = out.loss;
                Some(self.trainable.host_grads(self.be)?)
            } else {
                None
            };
            sums = self.sum_round(sums, mine)?;
        }
        self.comm.all_reduce_sum_f64(&mut losses)?;
        let loss = losses.iter().fold(0.0, |s, l| s + l / n as f64);
        let step = self.progress.step;
        let lrs: Vec<f64> = self.schedules.iter().map(|s| s.lr(step)).collect();
        let applied = self.trainable.optimizer_step(self.be, &sums, &lrs)?;
        self.progress.step += 1;
        self.progress.batch_in_epoch = (b + n) as u64;
        self.progress.train_losses.push((self.progress.step, loss));
        Ok(StepDone {
            loss,
            // The rate the step moved by: d·lr for Prodigy, as kohya logs it (the UNet's
            // rate before any block lr weight).
            lr: {
                let g = &self.trainable.groups[0];
                g.optimizer.effective_lr(lrs[0] / g.lr_weight)
            },
            applied,
            tape_by_block,
        })
    }

    /// One round's gradient sum: `sums` (the step's running sum, per group; empty before the
    /// first round) plus every rank's micro-batch gradients `mine` (None: this rank had no
    /// micro-batch left in the round). Rank 0 adds the running sum to its own part first, so
    /// the order of the additions is the micro-batches' order.
    fn sum_round(&self, sums: Vec<Vec<f32>>, mine: Option<Vec<Vec<f32>>>) -> Result<Vec<Vec<f32>>> {
        let rank0 = self.comm.rank() == 0;
        let mine = mine.map(|mut m| {
            if rank0 && !sums.is_empty() {
                for (m, s) in m.iter_mut().zip(&sums) {
                    m.iter_mut().zip(s).for_each(|(m, s)| *m += *s);
                }
            }
            m
        });
        if self.comm.world() == 1 {
            return Ok(mine.unwrap_or(sums));
        }
        let sizes: Vec<usize> = self.trainable.groups.iter().map(|g| g.len()).collect();
        let contributes = mine.is_some();
        let mut flat = match mine {
            Some(m) => m.concat(),
            None => vec![0.0; sizes.iter().sum()],
        };
        self.comm.all_reduce_sum(&mut flat, contributes)?;
        let mut rest = flat.as_slice();
        Ok(sizes
            .iter()
            .map(|&k| {
                let (part, tail) = rest.split_at(k);
                rest = tail;
                part.to_vec()
            })
            .collect())
    }

    /// The fixed-noise loss of the current adapters on the validation images (or, with
    /// `train_images`, on the training images).
    pub fn eval_loss(&self, train_images: bool) -> Result<f64> {
        let set = if train_images {
            &self.train_set
        } else {
            &self.val_set
        };
        let text = self.cfg.train_text_encoder.then_some(&self.inputs);
        set.loss(
            self.be,
            &self.models,
            Some(&self.trainable.lora),
            text,
            &self.trainable.objective,
            eval_seed(self.cfg),
        )
    }

    /// Sample images of `lines` with the current adapters.
    pub fn sample_images(&self, lines: &[String]) -> Result<Vec<RgbImage>> {
        let cx = Ctx::new(self.be, Some(&self.trainable.lora));
        crate::train::samples::generate_all(
            &cx,
            &self.models,
            &self.inputs.tokenizer,
            self.cfg,
            lines,
        )
    }
}

/// What the run trains the UNet to predict: v with `v_parameterization`, else ε; a diffusers
/// folder whose scheduler config names the other is refused (kohya would train it wrongly).
fn prediction(cfg: &TrainConfig, m: &Models, from: WeightsFrom<'_>) -> Result<Prediction> {
    let asked = if cfg.v_parameterization {
        Prediction::V
    } else {
        Prediction::Epsilon
    };
    if m.prediction_from_checkpoint && m.prediction != asked {
        let model = match from {
            WeightsFrom::Checkpoint(p) | WeightsFrom::Shapes(Some(p)) => p.display().to_string(),
            WeightsFrom::Shapes(None) | WeightsFrom::Reference(_) => "the model".into(),
        };
        return Err(Error::BadValue {
            op: "config",
            name: "v_parameterization",
            value: cfg.v_parameterization.to_string(),
            expected: format!(
                "{} for {model}: its scheduler/scheduler_config.json says prediction_type {}",
                !cfg.v_parameterization,
                match m.prediction {
                    Prediction::V => "\"v_prediction\"",
                    Prediction::Epsilon => "\"epsilon\"",
                }
            ),
        });
    }
    Ok(asked)
}

/// Captions never change (no shuffling, dropout or wildcards, no text-encoder training): their
/// embeddings are cached and the text encoder is released.
pub fn captions_fixed(cfg: &TrainConfig) -> bool {
    let varies = |c: &TrainConfig| captions_vary(&data_options(c));
    !varies(cfg) && !cfg.subsets.iter().any(|s| varies(&s.config)) && !cfg.train_text_encoder
}

/// The seed of the fixed-noise evaluations.
fn eval_seed(cfg: &TrainConfig) -> u64 {
    cfg.seed ^ 0xe7a1
}

/// The run's length in optimizer steps with `world` ranks: each rank takes its share of
/// an epoch's micro-batches (kohya's sharded data loader), `gradient_accumulation_steps` of
/// them per step. ⌈⌈m/N⌉/A⌉ = ⌈m/(N·A)⌉: a step takes N·A micro-batches.
fn lengths(cfg: &TrainConfig, ds: &Dataset, world: usize) -> Lengths {
    let micro = ds.batches_per_epoch(cfg.batch_size);
    let per_rank = micro.div_ceil(world.max(1));
    Lengths {
        total: cfg.total_steps(per_rank) as u64,
        steps_per_epoch: cfg.steps_per_epoch(per_rank) as u64,
        micro_per_epoch: micro as u64,
    }
}

/// The learning-rate schedule of each optimizer group (the UNet's, or its blocks' at their
/// lr weights, and the text encoder's).
fn schedules(cfg: &TrainConfig, total: u64, groups: &[ParamGroup]) -> Vec<LrSchedule> {
    let unet = LrSchedule {
        kind: crate::train::trainable::lr_scheduler(cfg),
        base_lr: cfg.unet_lr,
        warmup: cfg.warmup_steps(total as usize) as u64,
        total,
        num_cycles: cfg.lr_scheduler_num_cycles as f64,
        power: cfg.lr_scheduler_power,
        min_lr_ratio: cfg.lr_scheduler_min_lr_ratio.unwrap_or(0.0),
        decay: cfg.lr_decay_steps.steps(total as usize) as u64,
    };
    groups
        .iter()
        .map(|g| {
            let base = match g.name.as_str() {
                TEXT_ENCODER_GROUP => cfg.text_encoder_lr,
                _ => cfg.unet_lr,
            };
            LrSchedule {
                base_lr: base * g.lr_weight,
                ..unet
            }
        })
        .collect()
}

/// Trains a LoRA as `cfg` says, on `be`. `resume`: continue from output_dir's state file (the
/// `resume` key, when set, names the state file instead).
/// `stop`: set it (Ctrl-C) to finish the current step, save the state, and return.
pub fn train(
    cfg: &TrainConfig,
    be: &dyn Backend,
    resume: bool,
    stop: &AtomicBool,
    obs: &mut dyn Observer,
) -> Result<TrainReport> {
    train_rank(cfg, be, &SOLO, resume, stop, obs)
}

/// [`train`] as one rank of a data-parallel run over `comm` (dist/mod.rs): every rank calls
/// it with the same configuration; only rank 0 writes. A failure is told to the other ranks
/// (`comm.abort`), which then stop naming this rank.
pub fn train_rank(
    cfg: &TrainConfig,
    be: &dyn Backend,
    comm: &dyn Communicator,
    resume: bool,
    stop: &AtomicBool,
    obs: &mut dyn Observer,
) -> Result<TrainReport> {
    let resolved = crate::train::fits::with_base_model_defaults(cfg);
    let cfg = &resolved;
    let mut go = || -> Result<TrainReport> {
        use crate::train::loop_io::{after_step, end_epoch, end_partial_epoch, finish, Outputs};
        use crate::train::samples::SampleAt;
        let ds = crate::train::loop_io::scan_and_check(cfg, be, obs)?;
        obs.on(Event::Info(format!("loading {}", cfg.base_model.display())));
        let from = WeightsFrom::Checkpoint(&cfg.base_model);
        let mut run = Run::prepare(cfg, be, ds, from, Pixels::Files, &mut Announce(obs))?;
        run.on_ranks(comm);
        let mut out = Outputs::open(&run, obs)?;
        // The `resume` key names a state file (or its folder); `--resume`, output_dir's.
        let state = match &cfg.resume {
            Some(path) => {
                Some(
                    crate::config::resume_state(path).map_err(|problem| Error::BadValue {
                        op: "train",
                        name: "resume",
                        value: path.display().to_string(),
                        expected: problem,
                    })?,
                )
            }
            None => resume.then(|| out.saves.state()),
        };
        if let Some(state) = state {
            run.resume(&state)?;
            out.resumed(&run);
        }
        out.started(&run);
        if run.progress.step == 0 {
            crate::train::loop_io::samples(&run, &mut out, SampleAt::First)?;
        }
        let end = loop {
            if run.epoch_finished() {
                if let Some(stop) = end_epoch(&mut run, &mut out)? {
                    break Some(stop);
                }
            }
            if run.done() {
                end_partial_epoch(&run, &mut out)?;
                break None;
            }
            let done = run.step()?;
            out.stepped(&run, &done)?;
            if let Some(stop) = after_step(&mut run, &mut out, stop)? {
                break Some(stop);
            }
        };
        finish(run, out, end)
    };
    let out = go();
    if let Err(e) = &out {
        comm.abort(&e.to_string());
    }
    out
}
