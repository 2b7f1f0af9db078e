//! The VRAM planner: what a training run will hold on the GPU, predicted without one.
//!
//! It runs the trainer's own sequence (load the three models, cache a latent and a caption,
//! release what training does not need, make the adapters and optimizer, one optimizer step,
//! a sample image when sampling is on) on the CUDA backend over the memory meter
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

use crate::config::TrainConfig;
use crate::lora::LoraTargets;
use crate::tensor::DType;

pub use run::plan;

/// Device memory outside lorafuse's pool: the CUDA context with the driver's own state and
/// our loaded kernel modules, and the allocator's rounding. An estimate, to be replaced by the
/// figure measured on a GPU (`lorafuse bench` reports the driver's used-memory delta beside
/// the pool's peak).
pub const CONTEXT_BYTES: usize = 512 << 20;

/// What decides a run's device memory.
#[derive(Clone, Debug, PartialEq)]
pub struct PlanInput {
    /// Images per micro-batch.
    pub batch: usize,
    /// Training size in pixels (with buckets: the largest bucket's area is about this).
    pub width: usize,
    pub height: usize,
    pub rank: usize,
    pub alpha: f64,
    pub targets: LoraTargets,
    /// Activation and frozen-weight dtype on the GPU (f16 for mixed_precision fp16).
    pub dtype: DType,
    pub train_text_encoder: bool,
    /// Sample images during training: the VAE (and text encoder) stay on the device.
    pub sampling: bool,
    /// Captions never change (no shuffling, no caption dropout, no text-encoder training):
    /// their embeddings are cached and the text encoder is released.
    pub captions_fixed: bool,
    /// `lora_dropout` > 0: a dropout mask per adapter and micro-batch.
    pub dropout: bool,
    pub clip_skip: usize,
    /// Latents held in the device cache (images x orientations, validation images too).
    pub cached_latents: usize,
    /// Caption embeddings held in the device cache.
    pub cached_captions: usize,
}

impl PlanInput {
    /// A plain training step: kohya's default targets, alpha = rank, no text-encoder training,
    /// sampling or dropout, fixed captions, nothing cached (benches and tests).
    pub fn step(batch: usize, width: usize, height: usize, rank: usize, dtype: DType) -> PlanInput {
        PlanInput {
            batch,
            width,
            height,
            rank,
            alpha: rank as f64,
            targets: LoraTargets::Transformer,
            dtype,
            train_text_encoder: false,
            sampling: false,
            captions_fixed: true,
            dropout: false,
            clip_skip: 1,
            cached_latents: 0,
            cached_captions: 0,
        }
    }

    /// The plan input of a configuration; `images` is (training, validation) image counts,
    /// when the data folder could be read.
    pub fn from_config(cfg: &TrainConfig, images: Option<(usize, usize)>) -> PlanInput {
        let (train, val) = images.unwrap_or((0, 0));
        let captions_fixed =
            !cfg.shuffle_caption && cfg.caption_dropout_rate == 0.0 && !cfg.train_text_encoder;
        PlanInput {
            batch: cfg.batch_size,
            width: cfg.resolution.width as usize,
            height: cfg.resolution.height as usize,
            rank: cfg.lora_rank,
            alpha: cfg.lora_alpha,
            targets: cfg.lora_targets,
            dtype: crate::backend::select::gpu_dtype(cfg.mixed_precision).0,
            train_text_encoder: cfg.train_text_encoder,
            sampling: cfg.sample_every_n_steps > 0,
            captions_fixed,
            dropout: cfg.lora_dropout > 0.0,
            clip_skip: cfg.clip_skip,
            cached_latents: train * if cfg.flip_aug { 2 } else { 1 } + val,
            cached_captions: if captions_fixed { train + val } else { 0 },
        }
    }
}

/// The predicted device memory of one configuration, in bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct MemoryPlan {
    pub input: PlanInput,
    /// Frozen weights by model ("unet", "vae", "text_encoder") and whether each stays on the
    /// device during training.
    pub weights: Vec<(&'static str, usize, bool)>,
    /// LoRA down/up matrices (f32).
    pub lora: usize,
    /// The optimizer's flat parameters, gradients, first and second moments (f32).
    pub optimizer: usize,
    /// The per-module gradient accumulators (f32).
    pub grads: usize,
    /// Cached latents and caption embeddings.
    pub caches: usize,
    /// The training forward's tape by block.
    pub tape: Vec<(String, usize)>,
    /// Pool peak while caching (all three models, a VAE encode, a caption).
    pub caching_peak: usize,
    /// Pool peak over one optimizer step.
    pub training_peak: usize,
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
        w + self.lora + self.optimizer + self.grads + self.caches
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
        } else {
            "caching"
        }
    }
}
