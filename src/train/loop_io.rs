//! The writing side of a training run, around [`Run`]'s phases: the data check before
//! anything heavy, TensorBoard scalars and progress events after every step, validation and
//! early stopping, save points (LoRA checkpoint + state, then pruning: `saves.rs`), sample
//! images, Ctrl-C, and the end (final LoRA, state, loss curve).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crate::backend::Backend;
use crate::config::TrainConfig;
use crate::data::{scan_sources, Dataset};
use crate::error::{Error, Result};
use crate::lora::export::{save_kohya, training_metadata};
use crate::model::tokenizer::Tokenizer;
use crate::monitor::tensorboard::{wall_time_now, EventWriter};
use crate::train::events::{Event, Observer, TrainReport};
use crate::train::inputs::{data_sources, long_captions};
use crate::train::metadata::{training_info, RunIdentity, SaveKind};
use crate::train::samples::{write_samples, SampleAt, SampleRun};
use crate::train::saves::{SavePoint, Saves};
use crate::train::trainer::{Run, StepDone};

/// Why the loop ended before its last step.
pub enum Stop {
    /// Early stopping, with the reason.
    Early(String),
    /// Ctrl-C: the state is saved, nothing else is written.
    Interrupted,
}

/// The data set a configuration trains on, every file checked (what `train` reads first).
pub fn scan_data(cfg: &TrainConfig) -> Result<Dataset> {
    Ok(scan_sources(&data_sources(cfg))?)
}

/// The output folder, the data set (warnings reported), and on a GPU the memory plan.
pub fn scan_and_check(
    cfg: &TrainConfig,
    be: &dyn Backend,
    obs: &mut dyn Observer,
) -> Result<Dataset> {
    let out = &cfg.output_dir;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, "create the output folder", e))?;
    let ds = scan_data(cfg)?;
    for w in &ds.warnings {
        obs.on(Event::Warning(w.to_string()));
    }
    let max = cfg.max_token_length;
    if let (n, Some((path, tokens))) = long_captions(&ds, &Tokenizer::new()?, max) {
        obs.on(Event::Warning(format!(
            "{n} image(s) have a caption longer than max_token_length = {max} tokens, cut to its first {max} (the first: {}, {tokens} tokens){}",
            path.display(),
            if max < 225 { "; kohya's max_token_length 150 or 225 keeps more" } else { "" }
        )));
    }
    if ds.sources.iter().any(|s| s.is_reg) {
        obs.on(Event::Info(format!(
            "{} train images with repeats, {} reg images with repeats (balanced to {} per epoch, loss weight prior_loss_weight = {})",
            ds.train_samples_per_epoch(),
            ds.num_reg_images,
            ds.samples_per_epoch() - ds.train_samples_per_epoch(),
            cfg.prior_loss_weight
        )));
    }
    if let Some(p) = crate::plan::device_plan(cfg, be, &ds)? {
        obs.on(Event::Info(crate::plan::report::summary(&p)));
        crate::plan::check_fits(&p, be)?;
    }
    Ok(ds)
}

/// Where the run writes, and who it tells. In a data-parallel run only rank 0 writes (logs,
/// samples, LoRAs, state); the other ranks' `tb` is None and their save points write nothing.
pub struct Outputs<'o> {
    pub saves: Saves,
    tb: Option<EventWriter>,
    obs: &'o mut dyn Observer,
    id: RunIdentity,
    loop_start: Instant,
}

impl<'o> Outputs<'o> {
    /// `config.effective.yaml` and the TensorBoard writer (rank 0's).
    pub fn open(run: &Run, obs: &'o mut dyn Observer) -> Result<Outputs<'o>> {
        let cfg = run.cfg;
        let id = RunIdentity::new(&cfg.base_model)?;
        let writes = run.comm.rank() == 0;
        if writes {
            cfg.write_effective().map_err(|e| Error::BadValue {
                op: "train",
                name: "output_dir",
                value: cfg.output_dir.display().to_string(),
                expected: e.to_string(),
            })?;
        }
        Ok(Outputs {
            saves: Saves::new(cfg),
            tb: match writes {
                true => Some(EventWriter::create(&cfg.logging_dir)?),
                false => None,
            },
            obs,
            id,
            loop_start: Instant::now(),
        })
    }

    pub fn resumed(&mut self, run: &Run) {
        self.obs.on(Event::Info(format!(
            "resuming at step {} of {} (epoch {})",
            run.progress.step,
            run.lengths.total,
            run.progress.epoch + 1
        )));
    }

    pub fn started(&mut self, run: &Run) {
        self.obs.on(Event::Started {
            total_steps: run.lengths.total,
            first_step: run.progress.step,
            steps_per_epoch: run.lengths.steps_per_epoch,
            images: run.inputs.ds.items.len(),
            validation_images: run.inputs.ds.validation.len(),
            trainable: run.trainable.lora.num_params(),
        });
        self.loop_start = Instant::now();
    }

    /// The step's scalars and event.
    pub fn stepped(&mut self, run: &Run, done: &StepDone) -> Result<()> {
        let step = run.progress.step;
        if let Some(tb) = &mut self.tb {
            let wall = wall_time_now();
            tb.add_scalar("loss/train", step, done.loss as f32, wall)?;
            tb.add_scalar("lr", step, done.lr as f32, wall)?;
        }
        self.obs.on(Event::Step {
            step,
            total: run.lengths.total,
            epoch: run.progress.epoch,
            loss: done.loss,
            lr: done.lr,
            seconds: self.loop_start.elapsed().as_secs_f64(),
            skipped: !done.applied,
            device_memory: run.be.device_memory(),
        });
        Ok(())
    }

    fn saved(&mut self, what: &'static str, path: std::path::PathBuf) {
        self.obs.on(Event::Saved { what, path });
    }
}

/// After a step: a validation and a step save point when due, sample images, Ctrl-C.
pub fn after_step(run: &mut Run, out: &mut Outputs, stop: &AtomicBool) -> Result<Option<Stop>> {
    let cfg = run.cfg;
    let step = run.progress.step;
    let due = |n: Option<usize>| n.is_some_and(|n| step.is_multiple_of(n as u64));
    if !run.val_set.is_empty() && due(cfg.validate_every_n_steps) {
        if let Some(s) = validate(run, out)? {
            return Ok(Some(s));
        }
    }
    if due(cfg.save_every_n_steps) && step < run.lengths.total {
        save_point(run, out, SavePoint::Step(step))?;
    }
    samples(run, out, SampleAt::Step(step))?;
    // A stop seen on any rank stops every rank after this same step.
    if run.comm.any(stop.load(Ordering::SeqCst))? {
        if out.tb.is_some() {
            let path = out.saves.state();
            run.save_state(&path)?;
            out.saved("state", path);
        }
        return Ok(Some(Stop::Interrupted));
    }
    Ok(None)
}

/// At the end of an epoch: the next epoch begins; a validation (when not counted in steps)
/// and an epoch save point when due.
pub fn end_epoch(run: &mut Run, out: &mut Outputs) -> Result<Option<Stop>> {
    run.next_epoch();
    let cfg = run.cfg;
    if cfg.validate_every_n_steps.is_none() && !run.val_set.is_empty() {
        if let Some(s) = validate(run, out)? {
            return Ok(Some(s));
        }
    }
    let epoch = run.progress.epoch;
    if cfg
        .save_every_n_epochs
        .is_some_and(|n| epoch.is_multiple_of(n as u64))
        && !run.done()
    {
        save_point(run, out, SavePoint::Epoch(epoch))?;
    }
    samples(run, out, SampleAt::Epoch(epoch))?;
    Ok(None)
}

/// Sample images, when `cfg` asks for them at `at` (kohya's rules: [`SampleAt::due`]).
pub fn samples(run: &Run, out: &mut Outputs, at: SampleAt) -> Result<()> {
    let Some(tb) = &mut out.tb else {
        return Ok(());
    };
    if !at.due(run.cfg) {
        return Ok(());
    }
    let cx = crate::model::layers::Ctx::new(run.be, Some(&run.trainable.lora));
    let sample_run = SampleRun {
        cx: &cx,
        models: &run.models,
        tokenizer: &run.inputs.tokenizer,
        cfg: run.cfg,
    };
    let written = write_samples(&sample_run, tb, at, run.progress.step)?;
    for p in written {
        out.saved("sample", p);
    }
    Ok(())
}

/// The run reached its last step inside an epoch (`max_train_steps`): that partial epoch
/// ends too, for sampling, as kohya ends it (kohya's epoch count rounds up).
pub fn end_partial_epoch(run: &Run, out: &mut Outputs) -> Result<()> {
    if run.progress.batch_in_epoch == 0 {
        return Ok(());
    }
    samples(run, out, SampleAt::Epoch(run.progress.epoch + 1))
}

/// A validation: the loss recorded, the best adapters kept, early stopping decided.
fn validate(run: &mut Run, out: &mut Outputs) -> Result<Option<Stop>> {
    let loss = run.eval_loss(false)?;
    let cfg = run.cfg;
    let p = &mut run.progress;
    p.validation_losses.push((p.step, loss));
    if let Some(tb) = &mut out.tb {
        tb.add_scalar("loss/validation", p.step, loss as f32, wall_time_now())?;
    }
    let improved = p
        .best_validation
        .is_none_or(|(_, b)| loss < b - cfg.early_stopping_min_delta);
    if improved {
        p.best_validation = Some((p.step, loss));
        p.validations_since_best = 0;
    } else {
        p.validations_since_best += 1;
    }
    let (step, since, best_at) = (p.step, p.validations_since_best, p.best_validation);
    if improved {
        run.best = Some(run.trainable.params(run.be)?);
    }
    out.obs.on(Event::Validation {
        step,
        loss,
        best: improved,
    });
    match (cfg.early_stopping_patience, best_at) {
        (Some(patience), Some((at, best))) if since >= patience as u64 => {
            Ok(Some(Stop::Early(format!(
                "early stopping: validation loss has not improved by more than {} for {patience} \
             validations; keeping the best adapters, from step {at} (validation loss {best:.5})",
                cfg.early_stopping_min_delta
            ))))
        }
        _ => Ok(None),
    }
}

/// A save point: the LoRA checkpoint, the state (and its own copy when kept), then pruning.
fn save_point(run: &mut Run, out: &mut Outputs, at: SavePoint) -> Result<()> {
    if out.tb.is_none() {
        return Ok(());
    }
    let state = out.saves.state();
    run.save_state(&state)?;
    if out.saves.keeps_state(at) {
        let copy = out.saves.keep_state_copy(at)?;
        out.saved("state", copy);
    }
    let path = out.saves.checkpoint(at);
    save_lora(run, &path, &out.id, SaveKind::Point(at))?;
    out.saved("checkpoint", path);
    out.saves.prune(at)?;
    Ok(())
}

/// The end: with early stopping the best adapters, the final LoRA, the state and the loss
/// curve (after Ctrl-C only the state, saved already).
pub fn finish(mut run: Run, mut out: Outputs, stop: Option<Stop>) -> Result<TrainReport> {
    let writes = match &mut out.tb {
        Some(tb) => {
            tb.flush()?;
            true
        }
        None => false,
    };
    let interrupted = matches!(stop, Some(Stop::Interrupted));
    if let (Some(Stop::Early(_)), Some(best)) = (&stop, run.best.clone()) {
        run.trainable.set_params(run.be, &best)?;
    }
    let train_loss_after = run.eval_loss(true)?;
    let lora_path = out.saves.lora();
    let state_path = out.saves.state();
    if !interrupted && writes {
        save_lora(&run, &lora_path, &out.id, SaveKind::Final)?;
        out.saved("LoRA", lora_path.clone());
        run.save_state(&state_path)?;
        let cfg = run.cfg;
        let png = cfg.output_dir.join(format!("{}-loss.png", cfg.output_name));
        crate::monitor::plot::loss_curve_png(
            &png,
            &run.progress.train_losses,
            &run.progress.validation_losses,
        )?;
        out.saved("loss curve", png);
    }
    Ok(TrainReport {
        lora_path,
        state_path,
        steps: run.progress.step,
        stopped: match stop {
            Some(Stop::Early(why)) => Some(why),
            Some(Stop::Interrupted) => Some(format!(
                "interrupted at step {}; continue with --resume",
                run.progress.step
            )),
            None => None,
        },
        interrupted,
        train_loss_before: run.loss_before,
        train_loss_after,
        best_validation: run.progress.best_validation,
        skipped_steps: run.trainable.scaler.skipped,
    })
}

/// The LoRA with kohya's training metadata.
fn save_lora(run: &Run, path: &std::path::Path, id: &RunIdentity, kind: SaveKind) -> Result<()> {
    let info = training_info(run, id, kind);
    save_kohya(
        path,
        &run.trainable.lora,
        run.cfg.save_precision,
        &training_metadata(&info),
    )
}
