//! The library API for programs that embed lorafuse: a [`Trainer`] built from a configuration
//! (a file or text), checked (every problem at once, as values), planned, and run with its
//! [`Event`]s going to a callback, cancelled from any thread, within [`Caps`] the host sets.
//!
//! The library never prints, never exits the process and installs no signal handler (the
//! CLI does those). Trainers do not share state: several can run in one process at once,
//! each on its own thread pool when [`Caps::threads`] is set.
//!
//! ```no_run
//! use lorafuse::api::{Caps, Trainer};
//! let trainer = Trainer::from_file("my-lora.yaml", &[] as &[&str])
//!     .unwrap()
//!     .with_caps(Caps { threads: Some(2), ..Caps::default() });
//! let cancel = trainer.canceller();
//! std::thread::spawn(move || {
//!     std::thread::sleep(std::time::Duration::from_secs(600));
//!     cancel.cancel(); // finishes the step, saves the state, returns
//! });
//! let report = trainer.run(|event| eprintln!("{event:?}")).unwrap();
//! println!("LoRA: {}", report.lora_path.display());
//! ```

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::backend::select::select;
use crate::config::{ConfigError, Device, TrainConfig};
use crate::plan::{plan, MemoryPlan, PlanInput};
use crate::train::events::{Event, Observer, TrainReport};
use crate::train::trainer::train;

/// Limits a host program puts on a run.
#[derive(Clone, Debug, Default)]
pub struct Caps {
    /// Refuse a run whose planned memory (the `plan` prediction: weights, adapters, optimizer
    /// state, caches and the largest phase's activations) exceeds this many bytes.
    pub max_memory_bytes: Option<u64>,
    /// Over `max_memory_bytes`, turn on gradient checkpointing and split the batch into
    /// accumulated micro-batches (the same batch per optimizer step) until the plan fits,
    /// instead of refusing.
    pub adapt_to_memory: bool,
    /// Worker threads for the CPU work (a thread pool of this run's own); `None`: rayon's
    /// global pool.
    pub threads: Option<usize>,
    /// Every path the run writes (`output_dir`, `logging_dir`) must lie under this folder.
    pub output_root: Option<PathBuf>,
}

/// One problem with a configuration: the key it is about (when it is about one) and the
/// message the CLI would print.
#[derive(Clone, Debug, PartialEq)]
pub struct Problem {
    pub key: Option<String>,
    pub message: String,
}

impl Problem {
    fn of(e: ConfigError) -> Problem {
        let key = match &e {
            ConfigError::BadValue { key, .. } | ConfigError::UnknownKey { key, .. } => {
                Some(key.clone())
            }
            ConfigError::Missing { key, .. } => Some(key.to_string()),
            _ => None,
        };
        Problem {
            key,
            message: e.to_string(),
        }
    }
    fn list(e: ConfigError) -> Vec<Problem> {
        e.into_problems().into_iter().map(Problem::of).collect()
    }
}

/// Why a run did not start or did not finish.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The configuration (or its paths) has problems; nothing was done.
    #[error("{}", .0.iter().map(|p| p.message.as_str()).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Problem>),
    /// A cap refuses the run; nothing was done.
    #[error("{0}")]
    Refused(String),
    /// The run failed (a bad image, a device error, a full disk); what was saved is named in
    /// the error where there is something.
    #[error(transparent)]
    Failed(#[from] crate::Error),
}

/// Cancels a run from any thread: the run finishes its current step, saves its state and
/// returns a report with `interrupted` set.
#[derive(Clone, Debug, Default)]
pub struct Canceller(Arc<AtomicBool>);

impl Canceller {
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// A configured training run.
pub struct Trainer {
    cfg: TrainConfig,
    caps: Caps,
    cancel: Canceller,
}

/// Events to a closure.
struct Callback<F>(F);

impl<F: FnMut(Event)> Observer for Callback<F> {
    fn on(&mut self, event: Event) {
        (self.0)(event)
    }
}

impl Trainer {
    /// A trainer from a config file (YAML, or a kohya TOML) and `key=value` overrides.
    pub fn from_file(
        path: impl AsRef<Path>,
        overrides: &[impl AsRef<str>],
    ) -> Result<Trainer, ApiError> {
        TrainConfig::load(path, overrides)
            .map(Trainer::new)
            .map_err(|e| ApiError::Invalid(Problem::list(e)))
    }

    /// A trainer from YAML text; `name` stands for the file in messages, and relative paths
    /// in it are read against the working folder.
    pub fn from_yaml(
        text: &str,
        name: &str,
        overrides: &[impl AsRef<str>],
    ) -> Result<Trainer, ApiError> {
        TrainConfig::from_yaml(text, name, overrides)
            .map(Trainer::new)
            .map_err(|e| ApiError::Invalid(Problem::list(e)))
    }

    /// A trainer from `key=value` settings alone (no file), each read as `--set` reads it.
    pub fn from_overrides(overrides: &[impl AsRef<str>]) -> Result<Trainer, ApiError> {
        TrainConfig::from_overrides(overrides)
            .map(Trainer::new)
            .map_err(|e| ApiError::Invalid(Problem::list(e)))
    }

    /// A trainer from a configuration value.
    pub fn new(cfg: TrainConfig) -> Trainer {
        Trainer {
            cfg,
            caps: Caps::default(),
            cancel: Canceller::default(),
        }
    }

    pub fn with_caps(mut self, caps: Caps) -> Trainer {
        self.caps = caps;
        self
    }

    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }

    /// Notices about the configuration (keys without effect, kohya meanings applied): what
    /// the CLI prints as warnings.
    pub fn notices(&self) -> Vec<String> {
        self.cfg.warnings()
    }

    /// Every problem that would stop the run before it starts: the paths (the data folder
    /// exists, the output folder can be written) and the output root. Empty: it can start.
    pub fn validate(&self) -> Vec<Problem> {
        let mut problems = match self.cfg.check_paths() {
            Ok(()) => Vec::new(),
            Err(e) => Problem::list(e),
        };
        if let Some(root) = &self.caps.output_root {
            let logging = &self.cfg.logging_dir;
            for (key, path) in [
                ("output_dir", &self.cfg.output_dir),
                ("logging_dir", logging),
            ] {
                if !inside(path, root) {
                    let p = path;
                    problems.push(Problem {
                        key: Some(key.into()),
                        message: format!(
                            "{key} = {} is outside the output root {} this program allows: \
                             give a folder inside it",
                            p.display(),
                            root.display()
                        ),
                    });
                }
            }
        }
        problems
    }

    /// The predicted memory of the run (`lorafuse plan`).
    pub fn plan(&self) -> Result<MemoryPlan, ApiError> {
        plan_of(&self.cfg)
    }

    /// The planned bytes of `cfg`: the pool's peak, with the context where the run may take a
    /// GPU (`cuda`, or `auto` in a build with CUDA).
    fn planned(cfg: &TrainConfig) -> Result<u64, ApiError> {
        let p = plan_of(cfg)?;
        let gpu = match cfg.device {
            Device::Cpu => false,
            Device::Auto => cfg!(feature = "cuda"),
            Device::Cuda(_) => true,
        };
        Ok(if gpu { p.peak() } else { p.pool_peak() } as u64)
    }

    /// The configuration to run under a memory cap: as it is when it fits; with
    /// [`Caps::adapt_to_memory`], with gradient checkpointing, then also the largest divisor
    /// of `batch_size` that fits with the accumulation raised to keep the batch each optimizer
    /// step sees (each change reported as a warning); else refused.
    fn within(&self, cap: u64, obs: &mut dyn Observer) -> Result<TrainConfig, ApiError> {
        within(
            &self.cfg,
            cap,
            self.caps.adapt_to_memory,
            obs,
            Trainer::planned,
        )
    }

    /// A handle that cancels this trainer's run.
    pub fn canceller(&self) -> Canceller {
        self.cancel.clone()
    }

    /// Trains from the start, sending every event to `on_event`.
    pub fn run(&self, on_event: impl FnMut(Event) + Send) -> Result<TrainReport, ApiError> {
        self.start(false, on_event)
    }

    /// Continues from the state file in `output_dir` (or the `resume` key's).
    pub fn resume(&self, on_event: impl FnMut(Event) + Send) -> Result<TrainReport, ApiError> {
        self.start(true, on_event)
    }

    fn start(
        &self,
        resume: bool,
        on_event: impl FnMut(Event) + Send,
    ) -> Result<TrainReport, ApiError> {
        let problems = self.validate();
        if !problems.is_empty() {
            return Err(ApiError::Invalid(problems));
        }
        let mut obs = Callback(on_event);
        let cfg = match self.caps.max_memory_bytes {
            None => self.cfg.clone(),
            Some(cap) => self.within(cap, &mut obs)?,
        };
        let mut go = move || -> Result<TrainReport, ApiError> {
            let be = select(cfg.device, cfg.mixed_precision, cfg.cpu_precision)?;
            obs.on(Event::Info(be.note));
            Ok(train(
                &cfg,
                be.backend.as_ref(),
                resume,
                &self.cancel.0,
                &mut obs,
            )?)
        };
        match self.caps.threads {
            None => go(),
            Some(n) => rayon::ThreadPoolBuilder::new()
                .num_threads(n.max(1))
                .build()
                .map_err(|e| ApiError::Refused(format!("cannot start {n} worker threads: {e}")))?
                .install(go),
        }
    }
}

const MIB: f64 = 1024.0 * 1024.0;

/// The memory plan of `cfg` (`lorafuse plan` with the configured batch).
fn plan_of(cfg: &TrainConfig) -> Result<MemoryPlan, ApiError> {
    let cfg = crate::train::fits::with_base_model_defaults(cfg);
    Ok(plan(&PlanInput::from_config(&cfg, None))?)
}

/// Whether `path` lies under `root`, both made absolute against the working folder and with
/// `.`/`..` resolved by name (the folders need not exist yet).
fn inside(path: &Path, root: &Path) -> bool {
    let abs = |p: &Path| {
        let p = std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf());
        let mut out = PathBuf::new();
        for c in p.components() {
            match c {
                std::path::Component::ParentDir => {
                    out.pop();
                }
                std::path::Component::CurDir => {}
                other => out.push(other),
            }
        }
        out
    };
    abs(path).starts_with(abs(root))
}

/// [`Trainer::within`] with the planner `planned` (the peak a configuration is planned to
/// need): `cfg` as it is when it fits; with `adapt`, with gradient checkpointing, then also
/// the largest divisor of `batch_size` that fits with the accumulation raised to keep the
/// images per optimizer step.
fn within(
    cfg: &TrainConfig,
    cap: u64,
    adapt: bool,
    obs: &mut dyn Observer,
    planned: impl Fn(&TrainConfig) -> Result<u64, ApiError>,
) -> Result<TrainConfig, ApiError> {
    let peak = planned(cfg)?;
    if peak <= cap {
        return Ok(cfg.clone());
    }
    if adapt {
        let b = cfg.batch_size;
        for batch in (1..=b).rev().filter(|d| b.is_multiple_of(*d)) {
            let mut c = cfg.clone();
            c.gradient_checkpointing = true;
            c.batch_size = batch;
            c.gradient_accumulation_steps *= b / batch;
            if planned(&c)? <= cap {
                obs.on(Event::Warning(format!(
                    "to stay within the memory cap of {:.1} MiB (planned {:.1} MiB): \
                     gradient_checkpointing: true, batch_size {b} -> {batch}, \
                     gradient_accumulation_steps {} -> {}",
                    cap as f64 / MIB,
                    peak as f64 / MIB,
                    cfg.gradient_accumulation_steps,
                    c.gradient_accumulation_steps
                )));
                return Ok(c);
            }
        }
    }
    Err(ApiError::Refused(format!(
        "the run is planned to need {:.1} MiB, above the cap of {:.1} MiB{}: lower \
         batch_size or resolution, set gradient_checkpointing: true, or raise the cap",
        peak as f64 / MIB,
        cap as f64 / MIB,
        if adapt {
            " even with gradient checkpointing at batch size 1"
        } else {
            ""
        }
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The memory-cap search: checkpointing first, then the largest divisor of the batch
    /// that fits, the accumulation raised to keep the images per step; refused when nothing
    /// fits or without leave to adapt. The planner here: 100 + 10 per image, checkpointing
    /// saves 20.
    #[test]
    fn the_cap_splits_the_batch_into_accumulated_micro_batches() {
        let text = "train_data_dir: d\nbase_model: m\noutput_dir: o\nbatch_size: 6\n\
                    gradient_accumulation_steps: 2\n";
        let cfg = TrainConfig::from_yaml(text, "t.yaml", &[] as &[&str]).unwrap();
        let planned = |c: &TrainConfig| -> Result<u64, ApiError> {
            let ckpt = if c.gradient_checkpointing { 20 } else { 0 };
            Ok(100 + 10 * c.batch_size as u64 - ckpt)
        };
        let mut obs = crate::train::trainer::Recorder::default();
        // Fits as it is (160): unchanged, nothing said.
        let c = within(&cfg, 160, true, &mut obs, planned).unwrap();
        assert_eq!((c.batch_size, c.gradient_checkpointing), (6, false));
        // Checkpointing alone (140).
        let c = within(&cfg, 140, true, &mut obs, planned).unwrap();
        assert_eq!((c.batch_size, c.gradient_accumulation_steps), (6, 2));
        assert!(c.gradient_checkpointing);
        // 6 -> 3 (110), accumulation 2 -> 4: 12 images a step as before; 5 and 4 do not
        // divide 6.
        let c = within(&cfg, 125, true, &mut obs, planned).unwrap();
        assert_eq!((c.batch_size, c.gradient_accumulation_steps), (3, 4));
        // 6 -> 1 (90), accumulation 12.
        let c = within(&cfg, 95, true, &mut obs, planned).unwrap();
        assert_eq!((c.batch_size, c.gradient_accumulation_steps), (1, 12));
        let said: Vec<String> = obs
            .0
            .iter()
            .filter_map(|e| match e {
                Event::Warning(w) => Some(w.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(said.len(), 3, "{said:?}");
        assert!(said[1].contains("batch_size 6 -> 3, gradient_accumulation_steps 2 -> 4"));
        // Nothing fits (below batch 1's 90), or no leave to adapt.
        let mut quiet = crate::train::trainer::Recorder::default();
        let e = within(&cfg, 80, true, &mut quiet, planned).unwrap_err();
        assert!(
            e.to_string().contains("even with gradient checkpointing"),
            "{e}"
        );
        let e = within(&cfg, 140, false, &mut quiet, planned).unwrap_err();
        assert!(matches!(e, ApiError::Refused(_)), "{e}");
    }

    #[test]
    fn paths_inside_the_root() {
        let root = Path::new("/data/runs");
        assert!(inside(Path::new("/data/runs/a/b"), root));
        assert!(inside(Path::new("/data/runs"), root));
        assert!(!inside(Path::new("/data/runs/../secrets"), root));
        assert!(!inside(Path::new("/data/runsX"), root));
    }
}
