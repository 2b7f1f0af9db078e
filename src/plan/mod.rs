//! The VRAM planner: what a training run will hold on the GPU, predicted without one.
//!
//! It runs the trainer's own phases (`train::trainer::Run`: load the models, cache every
//! latent and caption, release what training does not need, attach the adapters and
//! optimizer, build the evaluation sets; then one optimizer step, a validation and the sample
//! images when the run has them) on the CUDA backend over the memory meter
//! ([`Device::meter`]): every op runs its real host code and asks the real pool for its
//! buffers, but no kernel runs and no memory exists. The pool's figures are therefore the
//! ones a GPU run produces, allocation for allocation; only the CUDA context (driver, kernels
//! and their modules) is not the pool's, and is an estimate ([`CONTEXT_BYTES`]).
//!
//! - [`plan`] measures one configuration ([`PlanInput`]) and returns its [`MemoryPlan`].
//! - [`fit`] finds the largest batch size and resolution that fit a memory budget.
//! - [`report`] prints the breakdown.

pub mod fit;
pub mod report;
mod run;

use crate::backend::cuda::DeviceLimits;
use crate::backend::Backend;
use crate::config::TrainConfig;
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::tensor::DType;

pub use run::plan;

/// Device memory outside lorafuse's pool: the CUDA context with the driver's own state and
/// our loaded kernel modules, and the allocator's rounding. An estimate, to be replaced by the
/// figure measured on a GPU (`lorafuse bench` reports the driver's used-memory delta beside
/// the pool's peak).
pub const CONTEXT_BYTES: usize = 512 << 20;

/// What decides a run's device memory: the configuration and the images.
#[derive(Clone, Debug)]
pub struct PlanInput {
    /// Batch size, resolution, rank, targets, precision, text-encoder training, sampling, ...
    /// (`base_model`, when it exists, gives the networks' shapes; otherwise SD1.5's).
    pub cfg: TrainConfig,
    pub data: PlanData,
    /// The device whose launch limits the run's kernels are chosen for (an A100's unless
    /// `--gpu` names a card or the run is on a GPU).
    pub device: DeviceLimits,
    /// The model family whose reference shapes are planned when `base_model` does not exist
    /// ("sd1": SD1.5, "sd2": SD2.1 768-v).
    pub family: &'static str,
}

/// The images a plan caches and trains on.
#[derive(Clone, Debug)]
pub enum PlanData {
    /// The scanned data folder: its buckets and repeats.
    Scanned(Dataset),
    /// Images at the configured resolution, one caption each (the folder could not be read,
    /// or a fit search tries other sizes).
    Images { train: usize, validation: usize },
}

impl PlanInput {
    /// A plain training step on SD1.5: kohya's default targets, alpha = rank, no text-encoder
    /// training, sampling or dropout, fixed captions, `batch` images (benches and tests).
    pub fn step(batch: usize, width: usize, height: usize, rank: usize, dtype: DType) -> PlanInput {
        let precision = match dtype {
            DType::F16 => "fp16",
            DType::BF16 => "bf16",
            _ => "no",
        };
        let sets = [
            "train_data_dir=plan-images".to_string(),
            "base_model=sd15-reference".to_string(),
            "output_dir=plan-output".to_string(),
            format!("lora_rank={}", rank.max(1)),
            format!("lora_alpha={}", rank.max(1)),
            format!("mixed_precision={precision}"),
        ];
        let cfg = TrainConfig::from_overrides(&sets).expect("the plan's own settings are valid");
        // Sizes are set unchecked: `plan` refuses the ones the models cannot take.
        let resolution = crate::config::Resolution {
            width: width as u32,
            height: height as u32,
        };
        PlanInput {
            cfg: TrainConfig {
                batch_size: batch,
                resolution,
                ..cfg
            },
            data: PlanData::Images {
                train: batch.max(1),
                validation: 0,
            },
            device: DeviceLimits::default_target(),
            family: "sd1",
        }
    }

    /// The plan input of a configuration; `images` is (training, validation) image counts,
    /// when known (else one batch of images).
    pub fn from_config(cfg: &TrainConfig, images: Option<(usize, usize)>) -> PlanInput {
        let (train, validation) = images.unwrap_or((cfg.batch_size.max(1), 0));
        PlanInput {
            cfg: cfg.clone(),
            data: PlanData::Images { train, validation },
            device: DeviceLimits::default_target(),
            family: "sd1",
        }
    }

    /// The plan input of a configuration and its scanned data folder.
    pub fn with_dataset(cfg: &TrainConfig, ds: Dataset) -> PlanInput {
        PlanInput {
            cfg: cfg.clone(),
            data: PlanData::Scanned(ds),
            device: DeviceLimits::default_target(),
            family: "sd1",
        }
    }

    /// The same input planned for a device with `limits`.
    pub fn on(&self, limits: DeviceLimits) -> PlanInput {
        PlanInput {
            device: limits,
            ..self.clone()
        }
    }

    /// The same input with another batch size (with at least a batch of images).
    pub fn with_batch(&self, batch: usize) -> PlanInput {
        let (train, validation) = self.image_counts();
        let mut i = self.clone();
        i.cfg.batch_size = batch;
        // A scanned folder's batches follow its own batch size.
        if let PlanData::Scanned(ds) = &mut i.data {
            for s in &mut ds.sources {
                s.opts.batch_size = batch;
            }
        }
        if train < batch {
            i.data = PlanData::Images {
                train: batch,
                validation,
            };
        }
        i
    }

    /// The same input with gradient checkpointing on or off.
    pub fn with_checkpointing(&self, on: bool) -> PlanInput {
        let mut i = self.clone();
        i.cfg.gradient_checkpointing = on;
        i
    }

    /// The same input at a square resolution (the images drawn at that size).
    pub fn with_side(&self, side: usize) -> PlanInput {
        let (train, validation) = self.image_counts();
        let mut i = self.clone();
        i.cfg.resolution = crate::config::Resolution {
            width: side as u32,
            height: side as u32,
        };
        i.data = PlanData::Images { train, validation };
        i
    }

    pub fn image_counts(&self) -> (usize, usize) {
        match &self.data {
            PlanData::Scanned(ds) => (ds.items.len(), ds.validation.len()),
            PlanData::Images { train, validation } => (*train, *validation),
        }
    }
    pub fn batch(&self) -> usize {
        self.cfg.batch_size
    }
    pub fn width(&self) -> usize {
        self.cfg.resolution.width as usize
    }
    pub fn height(&self) -> usize {
        self.cfg.resolution.height as usize
    }
    pub fn rank(&self) -> usize {
        self.cfg.lora_rank
    }
    /// Activation and frozen-weight dtype on the GPU.
    pub fn dtype(&self) -> DType {
        crate::backend::select::gpu_dtype(self.cfg.mixed_precision)
    }
}

/// The predicted device memory of one configuration, in bytes.
#[derive(Clone, Debug)]
pub struct MemoryPlan {
    pub input: PlanInput,
    /// The model family's name ("SD1.5" shapes unless `base_model` gave others).
    pub family: String,
    /// Latents (in host memory) and caption embeddings (on the device) in the caches.
    pub cached: (usize, usize),
    /// Frozen weights by model ("unet", "vae", "text_encoder") and whether each stays on the
    /// device during training.
    pub weights: Vec<(&'static str, usize, bool)>,
    /// LoRA down/up matrices (f32).
    pub lora: usize,
    /// The optimizer's flat parameters, gradients, first and second moments (f32).
    pub optimizer: usize,
    /// The per-module gradient accumulators (f32).
    pub grads: usize,
    /// Cached caption embeddings on the device (latents stay in host memory).
    pub caches: usize,
    /// The fixed-noise evaluation sets: stacked latents and contexts of every image.
    pub eval_sets: usize,
    /// The training forward's tape by block.
    pub tape: Vec<(String, usize)>,
    /// Pool peak while caching (all three models, a VAE encode, a caption).
    pub caching_peak: usize,
    /// Pool peak over one optimizer step.
    pub training_peak: usize,
    /// Pool peak over the fixed-noise evaluations (the base model's loss, a validation).
    pub evaluation_peak: usize,
    /// Pool peak while sampling, when sampling is on.
    pub sampling_peak: Option<usize>,
    /// The most the pool held from the driver (in use + cached for reuse) at once.
    pub reserved_peak: usize,
    /// [`CONTEXT_BYTES`].
    pub context: usize,
}

impl MemoryPlan {
    /// Bytes resident through training: weights kept, adapters, optimizer, caches.
    pub fn resident(&self) -> usize {
        let w: usize = self.weights.iter().filter(|w| w.2).map(|w| w.1).sum();
        w + self.lora + self.optimizer + self.grads + self.caches + self.eval_sets
    }
    pub fn tape_bytes(&self) -> usize {
        self.tape.iter().map(|(_, b)| b).sum()
    }
    /// Transient buffers at the training peak: what is neither resident nor taped.
    pub fn workspace(&self) -> usize {
        self.training_peak
            .saturating_sub(self.resident() + self.tape_bytes())
    }
    /// The pool's peak over the whole run.
    pub fn pool_peak(&self) -> usize {
        self.caching_peak
            .max(self.training_peak)
            .max(self.evaluation_peak)
            .max(self.sampling_peak.unwrap_or(0))
    }
    /// The predicted peak device memory: the pool's peak plus the context. A run fits a
    /// device when this is at most its free memory (the pool gives its cached blocks back
    /// and retries before it reports running out, so the reserve beyond the peak in use is
    /// not needed).
    pub fn peak(&self) -> usize {
        self.pool_peak() + self.context
    }
    /// The phase whose pool peak is the run's.
    pub fn peak_phase(&self) -> &'static str {
        let p = self.pool_peak();
        if p == self.training_peak {
            "training step"
        } else if Some(p) == self.sampling_peak {
            "sampling"
        } else if p == self.evaluation_peak {
            "evaluation"
        } else {
            "caching"
        }
    }
}

/// On a GPU (a backend that reports free memory): the memory plan of a run over `ds`.
pub fn device_plan(
    cfg: &TrainConfig,
    be: &dyn Backend,
    ds: &Dataset,
) -> Result<Option<MemoryPlan>> {
    let (Some(_), Some(limits)) = (be.device_free_memory(), be.device_limits()) else {
        return Ok(None);
    };
    plan(&PlanInput::with_dataset(cfg, ds.clone()).on(limits)).map(Some)
}

/// A refusal, naming what would fit, when `p`'s peak exceeds the device's free memory.
pub fn check_fits(p: &MemoryPlan, be: &dyn Backend) -> Result<()> {
    let Some(free) = be.device_free_memory() else {
        return Ok(());
    };
    if p.pool_peak() <= free {
        return Ok(());
    }
    let input = &p.input;
    // The context is already allocated: what fits is what the pool can have.
    let f = fit::fit(input, free + p.context)?;
    let mut fix = Vec::new();
    if let Some(b) = f.batch.filter(|&b| b < input.batch()) {
        fix.push(format!("batch_size: {b}"));
    }
    if let Some(side) = f.side {
        fix.push(format!("resolution: {side}"));
    }
    if f.checkpointed.as_ref().is_some_and(|c| c.fits) {
        fix.push("gradient_checkpointing: true".into());
    }
    if input.dtype() == DType::F32 {
        fix.push("mixed_precision: fp16".into());
    }
    Err(Error::OutOfMemory(format!(
        "this run needs about {} of device memory beyond the CUDA context (the memory plan: \
         {}) and {} is free on {}. Set {} (`lorafuse plan CONFIG --gpu-memory SIZE` shows the \
         breakdown), or use `device: cpu`",
        report::gib(p.pool_peak()),
        report::summary(p),
        report::gib(free),
        be.name(),
        if fix.is_empty() {
            "a smaller batch_size or resolution".to_string()
        } else {
            fix.join(" or ")
        },
    )))
}
