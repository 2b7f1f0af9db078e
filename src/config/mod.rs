//! The training configuration: one file (lorafuse's YAML of `key: value` lines, or the TOML
//! of kohya sd-scripts' `--config_file` / lora-scripts, kohya.rs; with sd-scripts'
//! `dataset_config`, dataset.rs), then `--set key=value` overrides, then validation, all
//! before any model is loaded.
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
//! name. Every key is declared once, in keys.rs (type, default, range, meaning, other
//! trainers' names); the reader, the range checks, `config.effective.yaml` and README.md's
//! table of keys are made from that declaration.
//!
//! Paths are used as written: a relative path is relative to the folder lorafuse runs in (as
//! in kohya), not to the config file.

mod dataset;
mod decl;
mod docs;
mod error;
mod foreign;
mod keys;
mod kohya;
mod network_args;
mod parse;
mod paths;
mod validate;
mod values;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Serialize, Serializer};

pub use crate::lora::export::SavePrecision;
pub use crate::train::lr::Schedule;
pub use docs::KeyDoc;
pub use error::{ConfigError, KeyHint, Origin};
pub use keys::TrainConfig;
pub use parse::Format;
pub use paths::resume_state;
pub use values::{Choice, Device, MixedPrecision, Resolution, SamplePrompts, Warmup};

/// One `[[datasets.subsets]]` of sd-scripts' dataset config, read as a whole configuration:
/// the main file's keys, then `[general]`'s, its `[[datasets]]`'s and its own options (its
/// `image_dir` as `train_data_dir`), then the `--set` arguments.
#[derive(Clone, Debug, PartialEq)]
pub struct DataSubset {
    /// Its `[[datasets]]`, in file order.
    pub dataset: usize,
    /// kohya's `is_reg`: regularisation images.
    pub is_reg: bool,
    pub config: TrainConfig,
}

/// The file name of the effective configuration written into `output_dir`.
pub const EFFECTIVE_CONFIG_FILE: &str = "config.effective.yaml";

/// The file and `--set` arguments a configuration was read from, and each key's value as
/// written, so that later checks ([`TrainConfig::validate`], [`TrainConfig::check_paths`])
/// can name them. A field changed in code after loading is reported as "configuration" with
/// its current value.
#[derive(Clone, Debug)]
pub struct Provenance {
    file: Option<PathBuf>,
    /// The file's format (YAML when there is no file).
    format: Format,
    /// Key -> where its value came from and how it was written.
    written: BTreeMap<String, Written>,
    /// The effective values when the configuration was read.
    loaded: yaml_serde::Mapping,
    /// One line each, for [`TrainConfig::warnings`]: what accepted kohya options do here,
    /// the lorafuse names of other trainers' keys in a YAML file, and kohya meanings that
    /// changed a value.
    notices: Vec<String>,
    /// The family a kohya file's `sdxl`/`v2` options name ([`Provenance::named_family`]).
    named_family: Option<&'static str>,
}

impl Default for Provenance {
    fn default() -> Provenance {
        Provenance {
            file: None,
            format: Format::Yaml,
            written: BTreeMap::new(),
            loaded: yaml_serde::Mapping::new(),
            notices: Vec::new(),
            named_family: None,
        }
    }
}

/// A key's value as the file or a `--set` argument wrote it.
#[derive(Clone, Debug)]
pub(crate) struct Written {
    origin: Origin,
    /// The value as written, for messages.
    raw: String,
    /// The name it was written under (`network_dim` for lora_rank).
    name: String,
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

    /// The config file's format: lorafuse's YAML or a kohya-format TOML.
    pub fn format(&self) -> Format {
        self.format
    }

    /// The model family (an id: "sd2", "sdxl") a kohya file's options name: `sdxl = true`,
    /// lora-scripts' `model_train_type = "sdxl-lora"`, `v2 = true`. The checkpoint decides
    /// the family; this is for planning without one.
    pub fn named_family(&self) -> Option<&'static str> {
        self.named_family
    }

    /// Whether the file or a `--set` argument gave `key` a value.
    pub fn is_written(&self, key: &str) -> bool {
        self.written.contains_key(key)
    }

    /// Where `key` came from: its `--set` argument or the file, or the file (or
    /// "configuration") for a key left at its default.
    pub fn origin(&self, key: &str) -> Origin {
        match self.written.get(key) {
            Some(w) => w.origin.clone(),
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
    /// Where `key`'s value came from and how to show it: as written in the file or `--set`
    /// (under the name written there), or the value with " (default)", or, for a field
    /// changed in code since loading, "configuration" and the current value. Returns
    /// (origin, key name, value).
    fn describe(&self, key: &str, effective: &yaml_serde::Mapping) -> (Origin, String, String) {
        let p = &self.provenance;
        let now = effective.get(key);
        let shown = || now.map_or_else(|| "(unset)".to_string(), parse::render);
        if now != p.loaded.get(key) {
            return (Origin::Defaults, key.to_string(), shown());
        }
        match p.written.get(key) {
            Some(w) => (w.origin.clone(), w.name.clone(), w.raw.clone()),
            None => (
                p.default_origin(),
                key.to_string(),
                format!("{} (default)", shown()),
            ),
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
        TrainConfig::from_text(&text, path, Format::of(path, &text), overrides)
    }

    /// As [`TrainConfig::load`], from YAML text; `file` names it in error messages.
    pub fn from_yaml(
        text: &str,
        file: impl AsRef<Path>,
        overrides: &[impl AsRef<str>],
    ) -> Result<TrainConfig, ConfigError> {
        TrainConfig::from_text(text, file, Format::Yaml, overrides)
    }

    /// As [`TrainConfig::load`], from text in the given format; `file` names it in error
    /// messages.
    pub fn from_text(
        text: &str,
        file: impl AsRef<Path>,
        format: Format,
        overrides: &[impl AsRef<str>],
    ) -> Result<TrainConfig, ConfigError> {
        let overrides: Vec<&str> = overrides.iter().map(AsRef::as_ref).collect();
        let doc = parse::Document {
            text,
            path: file.as_ref(),
            format,
        };
        let cfg = parse::build(Some(doc), &overrides)?;
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

    /// Every lorafuse key, in field order (the names README.md lists).
    pub fn key_names() -> Vec<&'static str> {
        keys::KEYS.iter().map(|k| k.name).collect()
    }

    /// Every key's documentation (type, default, rule, meaning), in field order.
    pub fn key_docs() -> Vec<KeyDoc> {
        docs::key_docs()
    }

    /// README.md's table of keys (type, default, meaning), made from the declarations.
    pub fn markdown_table() -> String {
        docs::markdown_table()
    }

    /// README.md's table of the kohya options lorafuse has no key for (accepted values, what
    /// lorafuse does, why other values are refused), made from src/config/foreign.rs.
    pub fn kohya_options_table() -> String {
        foreign::markdown_table()
    }

    /// The effective configuration as YAML: every key with the value a run uses, loadable
    /// again with [`TrainConfig::load`] (derived defaults such as lora_alpha and
    /// output_name are written out as numbers and names, so they no longer follow
    /// lora_rank or output_dir when the file is reused with `--set`).
    pub fn to_yaml(&self) -> String {
        let body = match yaml_serde::to_string(&self.effective()) {
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
        std::fs::create_dir_all(&self.output_dir)
            .and_then(|()| std::fs::write(&path, self.to_yaml()))
            .map_err(|source| ConfigError::Write {
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

    /// Sample images are made: prompts are given and `sample_every_n_steps`,
    /// `sample_every_n_epochs` or `sample_at_first` asks for them (a kohya-format file may ask
    /// without prompts: lora-scripts writes its own prompt fields, which lorafuse does not
    /// read).
    pub fn samples_asked(&self) -> bool {
        !self.sample_prompts.is_empty_list()
            && (self.sample_every_n_steps > 0
                || self.sample_every_n_epochs > 0
                || self.sample_at_first)
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

/// A configuration serializes as its effective values (the mapping of
/// [`TrainConfig::to_yaml`]).
impl Serialize for TrainConfig {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.effective().serialize(s)
    }
}

impl fmt::Display for TrainConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_yaml())
    }
}
