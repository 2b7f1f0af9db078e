//! The training configuration: one YAML file of `key: value` lines, then `--set key=value`
//! overrides, then validation, all before any model is loaded.
//!
//! ```text
//! TrainConfig::load("config.yaml", &["learning_rate=2e-4"])   read, merge, type, validate
//!     -> cfg.check_paths()                                       folders exist, output writable
//!     -> cfg.write_effective()                                   output_dir/config.effective.yaml
//! ```
//!
//! Key names are kohya sd-scripts' where lorafuse means the same thing (`learning_rate`,
//! `resolution`, `noise_offset`, ...); a few are lorafuse's own (`lora_rank`, `epochs`,
//! `batch_size`), and kohya's names for those are recognised and answered with the lorafuse
//! name. Every key, its type, default and meaning: README.md (a test keeps it in
//! step with [`TrainConfig`]).
//!
//! Paths are used as written: a relative path is relative to the folder lorafuse runs in (as
//! in kohya), not to the config file.

mod error;
mod keys;
mod parse;
mod paths;
mod validate;
mod values;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::lora::LoraTargets;

pub use error::{ConfigError, KeyHint, Origin};
pub use values::{
    Choice, Device, LrScheduler, MixedPrecision, Resolution, SamplePrompts, SavePrecision, Warmup,
};

/// The file name of the effective configuration written into `output_dir`.
pub const EFFECTIVE_CONFIG_FILE: &str = "config.effective.yaml";

/// Every training setting, with defaults filled in and derived defaults resolved (`lora_alpha`
/// is a number even when the file left it out). Field names are the YAML keys.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TrainConfig {
    // --- what to train on, and where the results go
    /// Folder of training images and captions (required).
    #[serde(serialize_with = "values::serialize_path")]
    pub train_data_dir: PathBuf,
    /// SD1.x checkpoint: a single `.safetensors` file or a diffusers folder (required).
    #[serde(serialize_with = "values::serialize_path")]
    pub base_model: PathBuf,
    /// Folder for the LoRA files, logs and the effective config (required).
    #[serde(serialize_with = "values::serialize_path")]
    pub output_dir: PathBuf,
    /// LoRA file name without extension. Default: the last component of `output_dir`.
    pub output_name: String,
    /// Dtype of the saved LoRA tensors. Default fp16.
    pub save_precision: SavePrecision,
    /// Also save every N epochs (as `<output_name>-<epoch>.safetensors`). Default: end only.
    pub save_every_n_epochs: Option<usize>,
    /// Also save every N optimizer steps. Default: end only.
    pub save_every_n_steps: Option<usize>,
    /// Where the logs go. Default `output_dir/logs`.
    #[serde(serialize_with = "values::serialize_path")]
    pub logging_dir: PathBuf,

    // --- the adapters
    /// Rank r of every adapter. Default 32.
    pub lora_rank: usize,
    /// Adapter scale numerator: scale = lora_alpha / lora_rank. Default: lora_rank (scale 1).
    pub lora_alpha: f64,
    /// Dropout on the adapters' down-projection output, in [0, 1). Default 0.
    pub lora_dropout: f64,
    /// Which UNet layers get adapters. Default transformer (kohya's 192 modules).
    #[serde(serialize_with = "values::serialize_lora_targets")]
    pub lora_targets: LoraTargets,
    /// Train text-encoder adapters too. Default false (`true` is refused for now).
    pub train_text_encoder: bool,

    // --- length of the run
    /// Images per micro-batch. Default 1.
    pub batch_size: usize,
    /// Micro-batches per optimizer step. Default 1.
    pub gradient_accumulation_steps: usize,
    /// Passes over the data set. Default 10.
    pub epochs: usize,
    /// Stop after this many optimizer steps, whatever `epochs` says. Default: unset.
    pub max_train_steps: Option<usize>,

    // --- optimizer (AdamW) and learning-rate schedule
    /// Base learning rate. Default 1e-4.
    pub learning_rate: f64,
    /// Learning rate of the UNet adapters. Default: learning_rate.
    pub unet_lr: f64,
    /// Learning rate of the text-encoder adapters. Default: learning_rate.
    pub text_encoder_lr: f64,
    /// Default cosine.
    pub lr_scheduler: LrScheduler,
    /// Cosine cycles for cosine_with_restarts. Default 1.
    pub lr_scheduler_num_cycles: usize,
    /// Linear warmup from 0: steps, or a fraction of the run. Default 0.
    pub num_warmup_steps: Warmup,
    /// AdamW's decoupled weight decay. Default 0.01.
    pub weight_decay: f64,
    /// Default 0.9.
    pub adam_beta1: f64,
    /// Default 0.999.
    pub adam_beta2: f64,
    /// Default 1e-8.
    pub adam_epsilon: f64,
    /// Clip the global gradient norm to this; 0 = no clipping. Default 1.0.
    pub max_grad_norm: f64,

    // --- the diffusion loss
    /// Offset noise strength. Default 0.
    pub noise_offset: f64,
    /// Min-SNR loss weighting γ. Default: off.
    pub min_snr_gamma: Option<f64>,

    // --- compute
    /// Default fp16. The CPU backend always computes in f32.
    pub mixed_precision: MixedPrecision,
    /// Default auto.
    pub device: Device,
    /// Seed of every random choice (init, noise, timesteps, shuffles). Default 42.
    pub seed: u64,

    // --- data
    /// Training size, width x height. Default 512x512.
    pub resolution: Resolution,
    /// Caption file extension. Default ".txt".
    pub caption_extension: String,
    /// Aspect-ratio bucketing. Default false.
    pub enable_bucket: bool,
    /// Default 256.
    pub min_bucket_reso: u32,
    /// Default 1024.
    pub max_bucket_reso: u32,
    /// Default 64.
    pub bucket_reso_steps: u32,
    /// Never enlarge an image to fit a bucket. Default false.
    pub bucket_no_upscale: bool,
    /// Random horizontal flips. Default false.
    pub flip_aug: bool,
    /// Random crops instead of center crops. Default false.
    pub random_crop: bool,
    /// Shuffle comma-separated caption tags. Default false.
    pub shuffle_caption: bool,
    /// Keep the first N tags in place when shuffling. Default 0.
    pub keep_tokens: usize,
    /// Probability of training an image with an empty caption. Default 0.
    pub caption_dropout_rate: f64,
    /// Keep the latent cache on disk, so later runs skip the VAE. Default false.
    pub cache_latents_to_disk: bool,
    /// Use CLIP's output this many layers from the end (1 = last). Default 1.
    pub clip_skip: usize,
    /// Caption tokens per image. 75 only, for now.
    pub max_token_length: usize,

    // --- validation and early stopping
    /// Share of images held out for validation loss. Default 0 (none).
    pub validation_split: f64,
    /// Validate every N optimizer steps. Default: at the end of each epoch.
    pub validate_every_n_steps: Option<usize>,
    /// Stop after this many validations without improvement. Default: off.
    pub early_stopping_patience: Option<usize>,
    /// Smallest validation-loss drop that counts as an improvement. Default 0.
    pub early_stopping_min_delta: f64,

    // --- sample images
    /// Generate sample images every N optimizer steps; 0 = never. Default 0.
    pub sample_every_n_steps: usize,
    /// kohya prompt lines, or a .txt file of them. Default: none.
    pub sample_prompts: SamplePrompts,

    /// Where each value came from, for error messages. Not part of the configuration's
    /// value: two configs compare equal whatever their provenance.
    #[serde(skip)]
    pub provenance: Provenance,
}

/// The file and `--set` arguments a configuration was read from, and each key's value as
/// written, so that later checks ([`TrainConfig::validate`], [`TrainConfig::check_paths`])
/// can name them. A field changed in code after loading is reported as "configuration" with
/// its current value.
#[derive(Clone, Debug, Default)]
pub struct Provenance {
    file: Option<PathBuf>,
    /// Key -> (where its value came from, the value as written).
    written: BTreeMap<String, (Origin, String)>,
    /// The effective values when the configuration was read.
    loaded: yaml_serde::Mapping,
}

impl PartialEq for Provenance {
    fn eq(&self, _: &Provenance) -> bool {
        true
    }
}

impl Provenance {
    /// The config file, when there was one.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// Whether the file or a `--set` argument gave `key` a value.
    pub fn is_written(&self, key: &str) -> bool {
        self.written.contains_key(key)
    }

    /// Where `key` came from: its `--set` argument or the file, or the file (or
    /// "configuration") for a key left at its default.
    pub fn origin(&self, key: &str) -> Origin {
        match self.written.get(key) {
            Some((origin, _)) => origin.clone(),
            None => self.default_origin(),
        }
    }

    fn default_origin(&self) -> Origin {
        match &self.file {
            Some(f) => Origin::File(f.clone()),
            None => Origin::Defaults,
        }
    }
}

impl TrainConfig {
    /// The effective values as a YAML mapping (key -> value), in field order.
    fn effective(&self) -> yaml_serde::Mapping {
        match yaml_serde::to_value(self) {
            Ok(yaml_serde::Value::Mapping(m)) => m,
            _ => yaml_serde::Mapping::new(),
        }
    }

    /// Where `key`'s value came from and how to show it: as written in the file or `--set`,
    /// or the value with " (default)", or, for a field changed in code since loading,
    /// "configuration" and the current value.
    fn describe(&self, key: &str, effective: &yaml_serde::Mapping) -> (Origin, String) {
        let p = &self.provenance;
        let now = effective.get(key);
        let shown = || now.map_or_else(|| "(unset)".to_string(), parse::render);
        if now != p.loaded.get(key) {
            return (Origin::Defaults, shown());
        }
        match p.written.get(key) {
            Some((origin, raw)) => (origin.clone(), raw.clone()),
            None => (p.default_origin(), format!("{} (default)", shown())),
        }
    }
}

impl TrainConfig {
    /// Reads a YAML config file, applies `--set key=value` overrides in order, and validates
    /// every value (no disk access beyond reading the file; see [`TrainConfig::check_paths`]).
    pub fn load(
        path: impl AsRef<Path>,
        overrides: &[impl AsRef<str>],
    ) -> Result<TrainConfig, ConfigError> {
        let path = path.as_ref();
        let text = parse::read_config_file(path)?;
        TrainConfig::from_yaml(&text, path, overrides)
    }

    /// As [`TrainConfig::load`], from text; `file` names it in error messages.
    pub fn from_yaml(
        text: &str,
        file: impl AsRef<Path>,
        overrides: &[impl AsRef<str>],
    ) -> Result<TrainConfig, ConfigError> {
        let overrides: Vec<&str> = overrides.iter().map(AsRef::as_ref).collect();
        let cfg = parse::build(Some((text, file.as_ref())), &overrides)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// A configuration from `--set key=value` arguments alone (no file).
    pub fn from_overrides(overrides: &[impl AsRef<str>]) -> Result<TrainConfig, ConfigError> {
        let overrides: Vec<&str> = overrides.iter().map(AsRef::as_ref).collect();
        let cfg = parse::build(None, &overrides)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Every lorafuse key, in field order (the names README.md must list).
    pub fn key_names() -> Vec<&'static str> {
        keys::KEYS.iter().map(|k| k.name).collect()
    }

    /// The effective configuration as YAML: every key with the value a run uses, loadable
    /// again with [`TrainConfig::load`] (derived defaults such as lora_alpha and
    /// output_name are written out as numbers and names, so they no longer follow
    /// lora_rank or output_dir when the file is reused with `--set`).
    pub fn to_yaml(&self) -> String {
        let body = match yaml_serde::to_string(self) {
            Ok(s) => s,
            // Every field serializes to a string, number, bool, null or list of strings;
            // nothing here can fail, but a config is never worth a panic.
            Err(e) => format!("# lorafuse could not write this configuration as YAML: {e}\n"),
        };
        format!(
            "# lorafuse effective configuration: every key, with the value this run used\n{body}"
        )
    }

    /// Writes [`TrainConfig::to_yaml`] to `output_dir/config.effective.yaml` and returns the
    /// path.
    pub fn write_effective(&self) -> Result<PathBuf, ConfigError> {
        let path = self.output_dir.join(EFFECTIVE_CONFIG_FILE);
        std::fs::write(&path, self.to_yaml()).map_err(|source| ConfigError::Write {
            path: path.clone(),
            source,
        })?;
        Ok(path)
    }

    /// Optimizer steps per epoch for an epoch of `micro_batches` batches of `batch_size`
    /// (a last partial accumulation still makes a step, as in kohya).
    pub fn steps_per_epoch(&self, micro_batches: usize) -> usize {
        micro_batches.div_ceil(self.gradient_accumulation_steps.max(1))
    }

    /// Total optimizer steps: `max_train_steps` when set, else `epochs` × steps per epoch.
    pub fn total_steps(&self, micro_batches_per_epoch: usize) -> usize {
        match self.max_train_steps {
            Some(n) => n,
            None => self
                .epochs
                .saturating_mul(self.steps_per_epoch(micro_batches_per_epoch)),
        }
    }

    /// Warmup length in optimizer steps for a run of `total_steps` (see [`Warmup::steps`]).
    pub fn warmup_steps(&self, total_steps: usize) -> usize {
        self.num_warmup_steps.steps(total_steps)
    }

    /// Settings that are valid but do nothing as combined (a warmup with the constant
    /// scheduler, keep_tokens without shuffle_caption, ...): one line each, for the CLI to
    /// print before training.
    pub fn warnings(&self) -> Vec<String> {
        validate::warnings(self)
    }
}

impl fmt::Display for TrainConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_yaml())
    }
}
