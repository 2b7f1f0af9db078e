//! What a training run reports as it goes ([`Event`] to an [`Observer`]) and how it ended
//! ([`TrainReport`]). The library never prints: the CLI's observer draws the progress line.

use std::path::PathBuf;

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

/// An observer that discards everything (`plan`'s metered run).
pub struct Quiet;

impl Observer for Quiet {
    fn on(&mut self, _: Event) {}
}
