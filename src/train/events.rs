//! What a training run reports as it goes ([`Event`] to an [`Observer`]) and how it ended
//! ([`TrainReport`]). The library never prints: the CLI's observer draws the progress line.

use std::path::PathBuf;

use serde_json::{json, Value};

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

impl Event {
    /// The event as a JSON object whose `"event"` names it ("info", "warning", "started",
    /// "step", "validation", "saved"), as the C ABI and `serve` send it. A loss that is not
    /// finite is `null`; paths are text (lossy where not UTF-8).
    pub fn to_json(&self) -> Value {
        match self {
            Event::Info(m) => json!({"event": "info", "message": m}),
            Event::Warning(m) => json!({"event": "warning", "message": m}),
            Event::Started {
                total_steps,
                first_step,
                steps_per_epoch,
                images,
                validation_images,
                trainable,
            } => json!({"event": "started", "total_steps": total_steps, "first_step": first_step,
                   "steps_per_epoch": steps_per_epoch, "images": images,
                   "validation_images": validation_images, "trainable": trainable}),
            Event::Step {
                step,
                total,
                epoch,
                loss,
                lr,
                seconds,
                skipped,
                device_memory,
            } => json!({"event": "step", "step": step, "total": total, "epoch": epoch,
                   "loss": loss, "lr": lr, "seconds": seconds, "skipped": skipped,
                   "device_memory": device_memory.map(|m| json!({"in_use": m.in_use, "peak": m.peak}))}),
            Event::Validation { step, loss, best } => {
                json!({"event": "validation", "step": step, "loss": loss, "best": best})
            }
            Event::Saved { what, path } => {
                json!({"event": "saved", "what": what, "path": path.to_string_lossy()})
            }
        }
    }
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

impl TrainReport {
    /// The report as a JSON object (paths as text, `best_validation` as `{step, loss}`).
    pub fn to_json(&self) -> Value {
        json!({
            "lora_path": self.lora_path.to_string_lossy(),
            "state_path": self.state_path.to_string_lossy(),
            "steps": self.steps,
            "stopped": self.stopped,
            "interrupted": self.interrupted,
            "train_loss_before": self.train_loss_before,
            "train_loss_after": self.train_loss_after,
            "best_validation": self.best_validation.map(|(step, loss)| json!({"step": step, "loss": loss})),
            "skipped_steps": self.skipped_steps,
        })
    }
}

/// An observer that discards everything (`plan`'s metered run).
pub struct Quiet;

impl Observer for Quiet {
    fn on(&mut self, _: Event) {}
}
