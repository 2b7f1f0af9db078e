//! Validation on typed values, no disk access (paths.rs has that): each key's own range, as
//! its declaration in keys.rs states it, then the rules that need more than one value or a
//! message of their own (all of them here, in one place). Each problem names where the value
//! came from, the key, the value as written and what is allowed; all problems of one pass are
//! returned together.
//!
//! Sizes: the VAE turns an image into latents 8 times smaller, and the SD1.x UNet halves the
//! latents three times (four levels). Its skip connections concatenate the down and up paths
//! at each level, so the latent sides must divide by 2³ = 8 and the image sides by
//! 8 · 2³ = 64. kohya's buckets use the same step (bucket_reso_steps = 64); lorafuse requires
//! multiples of 64 for `resolution` and every bucket setting.

use super::error::ConfigError;
use super::keys;
use super::values::{MixedPrecision, SamplePrompts, Warmup};
use super::{Device, Resolution, TrainConfig};
use crate::lora::blocks::LrWeightArgs;
use crate::train::lr::Schedule;
use crate::train::optim::OptimizerKind;

/// Every image side is a multiple of this (see the module comment).
pub const SIDE_MULTIPLE: u32 = 64;
/// Largest image side accepted, a guard against typos (SD1.x is trained at 512).
pub const MAX_SIDE: u32 = 4096;
/// CLIP ViT-L/14's text encoder has 12 layers.
pub(super) const CLIP_LAYERS: usize = 12;

pub(crate) struct Check<'a> {
    cfg: &'a TrainConfig,
    /// The effective values, to show keys left at their default.
    effective: yaml_serde::Mapping,
    errors: Vec<ConfigError>,
}

impl Check<'_> {
    fn fail(&mut self, key: &str, problem: String) {
        let (origin, key, value) = self.cfg.describe(key, &self.effective);
        self.errors.push(ConfigError::BadValue {
            origin,
            key,
            value,
            problem,
        });
    }

    /// `ok` or "is out of range: <the key's rule>".
    pub(super) fn range(&mut self, key: &str, ok: bool) {
        if !ok {
            self.fail(key, format!("is out of range: {}", keys::rule(key)));
        }
    }

    fn is_set(&self, key: &str) -> bool {
        self.cfg.provenance.is_written(key)
    }

    /// Whether a key whose default follows another key holds a value of its own: written,
    /// or changed in code since loading. A followed value is checked as the key it follows.
    pub(super) fn is_own_value(&self, key: &str) -> bool {
        self.is_set(key) || self.effective.get(key) != self.cfg.provenance.loaded.get(key)
    }
}

pub(super) fn finite_in(x: f64, lo: f64, lo_inclusive: bool, hi: f64, hi_inclusive: bool) -> bool {
    x.is_finite()
        && (if lo_inclusive { x >= lo } else { x > lo })
        && (if hi_inclusive { x <= hi } else { x < hi })
}

/// [0, 1)
pub(super) fn unit(x: f64) -> bool {
    finite_in(x, 0.0, true, 1.0, false)
}

/// (0, 1)
pub(super) fn open_unit(x: f64) -> bool {
    finite_in(x, 0.0, false, 1.0, false)
}

fn side_ok(s: u32) -> bool {
    s.is_multiple_of(SIDE_MULTIPLE) && (SIDE_MULTIPLE..=MAX_SIDE).contains(&s)
}

const SIDE_RULE: &str = "sides must be multiples of 64 from 64 to 4096 (the VAE divides by 8, then the UNet halves 3 times)";

/// The nearest allowed side.
fn nearest_side(s: u32) -> u32 {
    ((s as f64 / SIDE_MULTIPLE as f64).round() as u32 * SIDE_MULTIPLE)
        .clamp(SIDE_MULTIPLE, MAX_SIDE)
}

impl TrainConfig {
    /// Checks every value's range and the rules between keys (no disk access). Run by
    /// [`TrainConfig::load`]; call it again after changing fields in code.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut c = Check {
            cfg: self,
            effective: self.effective(),
            errors: Vec::new(),
        };
        self.check_ranges(&mut c);
        check_outputs(&mut c);
        check_schedule(&mut c);
        check_data(&mut c);
        check_validation_and_samples(&mut c);
        check_cpu_precision(&mut c);
        // Each dataset_config subset's own values (a value they share is named once).
        for s in &self.subsets {
            if let Err(e) = s.config.validate() {
                for e in e.into_problems() {
                    if !c.errors.iter().any(|old| old.to_string() == e.to_string()) {
                        c.errors.push(e);
                    }
                }
            }
        }
        match ConfigError::from_list(c.errors) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// `cpu_precision` this CPU cannot compute in, where the run may use the CPU (`device: cpu`
/// or `auto`): refused before anything loads, naming the missing CPU feature.
fn check_cpu_precision(c: &mut Check) {
    if matches!(c.cfg.device, Device::Cuda(_)) {
        return;
    }
    if let Some(why) = c.cfg.cpu_precision.unsupported() {
        c.fail(
            "cpu_precision",
            format!(
                "is not possible here: {why}, which bf16 products need; use cpu_precision: f32"
            ),
        );
    }
}

fn check_outputs(c: &mut Check) {
    let cfg = c.cfg;
    for key in ["train_data_dir", "base_model", "output_dir", "logging_dir"] {
        let p = match key {
            "train_data_dir" => &cfg.train_data_dir,
            "base_model" => &cfg.base_model,
            "output_dir" => &cfg.output_dir,
            _ => &cfg.logging_dir,
        };
        if p.as_os_str().is_empty() {
            c.fail(key, "is empty: give a path".into());
        }
    }
    if cfg.zero_terminal_snr && !cfg.v_parameterization && cfg.min_snr_gamma.is_some() {
        c.fail(
            "min_snr_gamma",
            "cannot weight an ε-prediction loss with zero_terminal_snr: the last timestep's \
             SNR is 0 and its weight min(SNR, γ)/SNR undefined; set v_parameterization: true \
             (zero terminal SNR is meant for v-prediction) or leave min_snr_gamma empty"
                .into(),
        );
    }
    let name = cfg.output_name.as_str();
    let lower = name.to_ascii_lowercase();
    if name.is_empty() && !c.is_own_value("output_name") {
        c.fail(
            "output_dir",
            "has no last folder name to name the LoRA file after: set output_name".into(),
        );
    } else if name.trim().is_empty() || name == "." || name == ".." {
        c.fail(
            "output_name",
            format!("is not valid: {}", keys::rule("output_name")),
        );
    } else if name.contains(['/', '\\', '\0']) {
        c.fail(
            "output_name",
            "is not valid: it must be a file name, not a path (the file goes into output_dir)"
                .into(),
        );
    } else if lower.ends_with(".safetensors") || lower.ends_with(".ckpt") || lower.ends_with(".pt")
    {
        c.fail(
            "output_name",
            "is not valid: leave out the extension (lorafuse adds .safetensors)".into(),
        );
    }
}

/// The run's length against the warmup.
fn check_schedule(c: &mut Check) {
    let cfg = c.cfg;
    check_optimizer(c);
    if !cfg.train_unet && !cfg.train_text_encoder {
        c.fail(
            "train_unet",
            "leaves nothing to train: with the UNet frozen (train_unet: false, kohya's \
             network_train_text_encoder_only or unet_lr = 0) the text encoder must train \
             (train_text_encoder: true; in a kohya file, no network_train_unet_only and a \
             text_encoder_lr above 0)"
                .into(),
        );
    }
    if cfg.lr_scheduler == Schedule::CosineWithMinLr && cfg.lr_scheduler_min_lr_ratio.is_none() {
        c.fail(
            "lr_scheduler",
            "needs lr_scheduler_min_lr_ratio (the rate it ends at, as a fraction of the learning rate, e.g. 0.1), as in kohya".into(),
        );
    }
    if cfg.dora_wd && cfg.algo == crate::lora::AlgoKind::Loha {
        c.fail(
            "dora_wd",
            "= true is not supported with algo: loha (lorafuse decomposes LoRA/LoCon weights only): set algo: lora, or dora_wd: false".into(),
        );
    }
    // Adapter kinds that take no dropout, and why.
    let no_dropout = [
        (cfg.dora_wd, "dora_wd: true (LyCORIS warns that dropout does not combine with weight decomposition): set it to 0, or dora_wd: false"),
        (cfg.algo == crate::lora::AlgoKind::Loha, "algo: loha (LyCORIS ignores dropout for LoHa, and its rank_dropout drops rows of the weight change, not ranks): set it to 0, or train algo: lora"),
    ];
    for (_, why) in no_dropout.iter().filter(|(on, _)| *on) {
        for (key, p) in [
            ("lora_dropout", cfg.lora_dropout),
            ("rank_dropout", cfg.rank_dropout),
            ("module_dropout", cfg.module_dropout),
        ] {
            if p > 0.0 {
                c.fail(key, format!("= {p} is not supported with {why}"));
            }
        }
    }
    let adafactor = crate::train::trainable::adafactor_relative_step(cfg);
    if cfg.lr_scheduler == Schedule::Adafactor && !adafactor {
        c.fail(
            "lr_scheduler",
            "is not valid: adafactor is Adafactor's own rate: it needs optimizer_type: Adafactor with relative_step=True (its default), as in kohya".into(),
        );
    }
    if adafactor && !cfg.num_warmup_steps.is_zero() {
        c.fail(
            "num_warmup_steps",
            "is not valid: Adafactor with relative_step=True schedules its own rate and takes no warmup (kohya refuses it too): set it to 0, or pass relative_step=False in optimizer_args".into(),
        );
    }
    if let (Some(total), Schedule::WarmupStableDecay) = (cfg.max_train_steps, cfg.lr_scheduler) {
        let (warmup, decay) = (cfg.warmup_steps(total), cfg.lr_decay_steps.steps(total));
        if warmup + decay > total {
            c.fail(
                "lr_decay_steps",
                format!("is out of range: warmup ({warmup}) and decay ({decay}) steps are longer than the run (max_train_steps = {total})"),
            );
        }
    }
    if let (Warmup::Steps(n), Some(total)) = (cfg.num_warmup_steps, cfg.max_train_steps) {
        if n > total {
            c.fail(
                "num_warmup_steps",
                format!("is out of range: the warmup is longer than the run (max_train_steps = {total})"),
            );
        }
    }
}

/// `optimizer_type` is one lorafuse trains with, each of `optimizer_args` is valid for it,
/// and a learning rate ≥ 1 is only for an optimizer that finds its own step size.
fn check_optimizer(c: &mut Check) {
    let cfg = c.cfg;
    let ty = cfg.optimizer_type;
    if let Err(e) = crate::train::trainable::optimizer_kind(cfg) {
        let problem = match e {
            crate::error::Error::BadValue { expected, .. } => expected,
            e => e.to_string(),
        };
        c.fail("optimizer_args", problem);
    }
    if ty.finds_lr() || crate::train::trainable::adafactor_relative_step(cfg) {
        return;
    }
    for key in ["learning_rate", "unet_lr", "text_encoder_lr"] {
        let lr = match key {
            "learning_rate" => cfg.learning_rate,
            "unet_lr" => cfg.unet_lr,
            _ => cfg.text_encoder_lr,
        };
        let own = key == "learning_rate" || c.is_own_value(key);
        if own && lr.is_finite() && lr >= 1.0 {
            c.fail(
                key,
                format!(
                    "is out of range: {} (a rate ≥ 1 is for optimizer_type: Prodigy or DAdaptAdam, which find their own step size)",
                    keys::LR
                ),
            );
        }
    }
}

fn check_data(c: &mut Check) {
    let cfg = c.cfg;
    let res = cfg.resolution;
    let sides_ok = side_ok(res.width) && side_ok(res.height);
    if !sides_ok {
        let nearest = if res.width == res.height {
            format!("nearest allowed: {}", nearest_side(res.width))
        } else {
            let r = Resolution {
                width: nearest_side(res.width),
                height: nearest_side(res.height),
            };
            format!("nearest allowed: \"{r}\"")
        };
        c.fail(
            "resolution",
            format!("is out of range: {SIDE_RULE}; {nearest}"),
        );
    }

    let ext = cfg.caption_extension.as_str();
    if !ext.starts_with('.') || ext.len() < 2 || ext.contains(['/', '\\', '\0']) {
        let hint = if !ext.is_empty() && !ext.starts_with('.') && !ext.contains(['/', '\\']) {
            format!(" (write \".{ext}\")")
        } else {
            String::new()
        };
        c.fail(
            "caption_extension",
            format!("is not valid: {}{hint}", keys::rule("caption_extension")),
        );
    }

    let mut buckets_ok = true;
    for key in ["min_bucket_reso", "max_bucket_reso", "bucket_reso_steps"] {
        let v = match key {
            "min_bucket_reso" => cfg.min_bucket_reso,
            "max_bucket_reso" => cfg.max_bucket_reso,
            _ => cfg.bucket_reso_steps,
        };
        if !side_ok(v) {
            c.fail(
                key,
                format!("is out of range: {} (SD1.x image sides are multiples of 64); nearest allowed: {}", keys::rule(key), nearest_side(v)),
            );
            buckets_ok = false;
        }
    }
    if buckets_ok {
        let (lo, hi, step) = (
            cfg.min_bucket_reso,
            cfg.max_bucket_reso,
            cfg.bucket_reso_steps,
        );
        // Report on the key the user wrote (the other one may be a default).
        let blame = |c: &Check, a: &'static str, b: &'static str| if c.is_set(a) { a } else { b };
        if lo > hi {
            let key = blame(c, "max_bucket_reso", "min_bucket_reso");
            c.fail(
                key,
                format!("is out of range: min_bucket_reso ({lo}) must be ≤ max_bucket_reso ({hi})"),
            );
        }
        if cfg.enable_bucket {
            for (key, v) in [("min_bucket_reso", lo), ("max_bucket_reso", hi)] {
                if v % step != 0 {
                    c.fail(
                        key,
                        format!("is out of range: with enable_bucket it must be a multiple of bucket_reso_steps ({step})"),
                    );
                }
            }
            let (small, large) = (res.width.min(res.height), res.width.max(res.height));
            if lo > small {
                let key = blame(c, "min_bucket_reso", "resolution");
                c.fail(
                    key,
                    format!("is out of range: min_bucket_reso ({lo}) must be ≤ the smaller side of resolution ({small})"),
                );
            }
            if hi < large {
                let key = blame(c, "max_bucket_reso", "resolution");
                c.fail(
                    key,
                    format!("is out of range: max_bucket_reso ({hi}) must be ≥ the larger side of resolution ({large})"),
                );
            }
            if sides_ok && (!res.width.is_multiple_of(step) || !res.height.is_multiple_of(step)) {
                c.fail(
                    "resolution",
                    format!("is out of range: with enable_bucket both sides must be multiples of bucket_reso_steps ({step})"),
                );
            }
        }
    }

    if cfg.dim_from_weights && cfg.network_weights.is_none() {
        c.fail(
            "dim_from_weights",
            "needs network_weights: it takes the adapters' ranks from that file; set network_weights or remove dim_from_weights".into(),
        );
    }
}

fn check_validation_and_samples(c: &mut Check) {
    let cfg = c.cfg;
    let validating = cfg.validation_split > 0.0;
    if cfg.validate_every_n_steps.is_some() && !validating {
        c.fail(
            "validate_every_n_steps",
            "needs validation_split > 0 (the share of images held out for validation, e.g. 0.1)"
                .into(),
        );
    }
    if cfg.early_stopping_patience.is_some() && !validating {
        c.fail(
            "early_stopping_patience",
            "needs validation_split > 0: early stopping watches the validation loss".into(),
        );
    }
    if let SamplePrompts::List(prompts) = &cfg.sample_prompts {
        if prompts.iter().any(|p| p.trim().is_empty()) {
            c.fail("sample_prompts", "is not valid: a prompt is empty".into());
        }
        // lora-scripts' configs ask for epoch samples with prompt fields of its own: in a
        // kohya-format file those keys without sample_prompts make no samples.
        let kohya = cfg.provenance.format() == super::Format::Kohya;
        let asking = [
            ("sample_every_n_steps", cfg.sample_every_n_steps > 0),
            (
                "sample_every_n_epochs",
                cfg.sample_every_n_epochs > 0 && !kohya,
            ),
            ("sample_at_first", cfg.sample_at_first && !kohya),
        ];
        if let Some((key, _)) = asking.iter().find(|(_, asks)| *asks && prompts.is_empty()) {
            c.fail(
                key,
                "needs sample_prompts: a list of prompts, or a .txt file with one per line".into(),
            );
        }
        if let Some(problem) = bad_prompt(cfg, prompts) {
            c.fail("sample_prompts", problem);
        }
    }
}

/// The first sample prompt that does not parse (an unknown option or sampler, a bad value),
/// while samples are asked for: caught before training rather than at the first sample.
pub(super) fn bad_prompt(cfg: &TrainConfig, lines: &[String]) -> Option<String> {
    if !cfg.samples_asked() {
        return None;
    }
    let defaults = crate::sample::PromptDefaults::default();
    lines.iter().find_map(|line| {
        crate::sample::parse_prompt_line(line, &defaults)
            .err()
            .map(|e| format!("has a prompt lorafuse cannot read, {line:?}: {e}"))
    })
}

/// Valid settings that do nothing as combined, one line each.
pub(crate) fn warnings(cfg: &TrainConfig) -> Vec<String> {
    let mut w = Vec::new();
    if !cfg.num_warmup_steps.is_zero() && cfg.lr_scheduler == Schedule::Constant {
        w.push(format!(
            "num_warmup_steps = {} has no effect with lr_scheduler = constant (constant_with_warmup has a warmup)",
            cfg.num_warmup_steps
        ));
    }
    if cfg.num_warmup_steps.is_zero() && cfg.lr_scheduler == Schedule::ConstantWithWarmup {
        w.push(
            "lr_scheduler = constant_with_warmup with num_warmup_steps = 0 is the same as constant"
                .into(),
        );
    }
    if cfg.lr_scheduler_num_cycles != 1
        && !matches!(
            cfg.lr_scheduler,
            Schedule::CosineWithRestarts | Schedule::CosineWithMinLr | Schedule::WarmupStableDecay
        )
    {
        w.push(format!(
            "lr_scheduler_num_cycles = {} has no effect unless lr_scheduler = cosine_with_restarts, cosine_with_min_lr or warmup_stable_decay (it is {})",
            cfg.lr_scheduler_num_cycles, cfg.lr_scheduler
        ));
    }
    if let (Some(r), false) = (
        cfg.lr_scheduler_min_lr_ratio,
        matches!(
            cfg.lr_scheduler,
            Schedule::CosineWithMinLr | Schedule::WarmupStableDecay
        ),
    ) {
        w.push(format!(
            "lr_scheduler_min_lr_ratio = {r} has no effect unless lr_scheduler = cosine_with_min_lr or warmup_stable_decay (it is {}; kohya applies it to those schedules only)",
            cfg.lr_scheduler
        ));
    }
    if !cfg.lr_decay_steps.is_zero() && cfg.lr_scheduler != Schedule::WarmupStableDecay {
        w.push(format!(
            "lr_decay_steps = {} has no effect unless lr_scheduler = warmup_stable_decay (it is {})",
            cfg.lr_decay_steps, cfg.lr_scheduler
        ));
    }
    w.extend(adafactor_notices(cfg));
    if cfg.lr_scheduler_power != 1.0 && cfg.lr_scheduler != Schedule::Polynomial {
        w.push(format!(
            "lr_scheduler_power = {} has no effect unless lr_scheduler = polynomial (it is {})",
            cfg.lr_scheduler_power, cfg.lr_scheduler
        ));
    }
    if let (Some(alpha), None) = (cfg.conv_alpha, cfg.conv_dim) {
        w.push(format!(
            "conv_alpha = {alpha} has no effect without conv_dim (the rank of the 3x3 conv adapters)"
        ));
    }
    w.extend(block_notices(cfg));
    let tags_move = cfg.shuffle_caption || cfg.caption_tag_dropout_rate > 0.0;
    if cfg.keep_tokens > 0 && !tags_move {
        w.push(format!(
            "keep_tokens = {} has no effect without shuffle_caption: true (or caption_tag_dropout_rate)",
            cfg.keep_tokens
        ));
    }
    if let Some(sep) = cfg
        .keep_tokens_separator
        .as_deref()
        .filter(|s| !s.is_empty())
    {
        if !tags_move {
            w.push(format!(
                "keep_tokens_separator = {sep:?} is used only with shuffle_caption: true (or caption_tag_dropout_rate); without, it stays in the captions as written (as in kohya)"
            ));
        }
    }
    if cfg.text_encoder_lr != cfg.learning_rate && !cfg.train_text_encoder {
        w.push(format!(
            "text_encoder_lr = {} has no effect without train_text_encoder: true",
            cfg.text_encoder_lr
        ));
    }
    if cfg.unet_lr != cfg.learning_rate && !cfg.train_unet {
        w.push(format!(
            "unet_lr = {} has no effect with train_unet: false (the UNet is frozen)",
            cfg.unet_lr
        ));
    }
    if cfg.early_stopping_min_delta > 0.0 && cfg.early_stopping_patience.is_none() {
        w.push(format!(
            "early_stopping_min_delta = {} has no effect without early_stopping_patience",
            cfg.early_stopping_min_delta
        ));
    }
    if !cfg.enable_bucket
        && (cfg.min_bucket_reso != 256
            || cfg.max_bucket_reso != 1024
            || cfg.bucket_reso_steps != 64
            || cfg.bucket_no_upscale)
    {
        w.push(
            "min_bucket_reso, max_bucket_reso, bucket_reso_steps and bucket_no_upscale have no effect without enable_bucket: true"
                .into(),
        );
    }
    if let Some(steps) = cfg.max_train_steps {
        if cfg.provenance.is_written("epochs") {
            w.push(format!(
                "max_train_steps = {steps} decides the length of the run; epochs = {} is ignored",
                cfg.epochs
            ));
        }
    }
    if !cfg.samples_asked() && !cfg.sample_prompts.is_empty_list() {
        w.push(
            "sample_prompts are not used while sample_every_n_steps and sample_every_n_epochs \
             are 0 and sample_at_first is false"
                .into(),
        );
    }
    if cfg.sample_every_n_epochs > 0 && cfg.sample_every_n_steps > 0 {
        w.push(format!(
            "sample_every_n_steps = {} is not used: sample_every_n_epochs = {} decides when \
             samples are made (as in kohya)",
            cfg.sample_every_n_steps, cfg.sample_every_n_epochs
        ));
    }
    let pruning = [
        (
            "save_last_n_epochs",
            cfg.save_last_n_epochs,
            "save_every_n_epochs",
            cfg.save_every_n_epochs,
        ),
        (
            "save_last_n_steps",
            cfg.save_last_n_steps,
            "save_every_n_steps",
            cfg.save_every_n_steps,
        ),
    ];
    for (key, last_n, every_key, every) in pruning {
        if let (Some(n), None) = (last_n, every) {
            w.push(format!(
                "{key} = {n} has no effect without {every_key} (there are no such saves to delete)"
            ));
        }
    }
    w.extend(cfg.provenance.notices.iter().cloned());
    if cfg.device == Device::Cpu && cfg.mixed_precision != MixedPrecision::No {
        w.push(format!(
            "mixed_precision = {} applies on a GPU only: the CPU computes in {} (cpu_precision)",
            cfg.mixed_precision,
            cfg.cpu_precision.name()
        ));
    }
    w
}

/// What kohya's get_optimizer says it changes for Adafactor, said here too.
fn adafactor_notices(cfg: &TrainConfig) -> Vec<String> {
    let mut w = Vec::new();
    let Ok(OptimizerKind::Adafactor(s)) = crate::train::trainable::optimizer_kind(cfg) else {
        return w;
    };
    let says = |name: &str, value: &str| {
        cfg.optimizer_args.iter().any(|a| {
            a.split_once('=').is_some_and(|(n, v)| {
                n.trim().eq_ignore_ascii_case(name) && v.trim().eq_ignore_ascii_case(value)
            })
        })
    };
    if s.warmup_init && says("relative_step", "false") {
        w.push(
            "optimizer_args: warmup_init=True needs relative_step: relative_step is set to True, as kohya does"
                .into(),
        );
    }
    if !s.relative_step {
        // kohya's advice for a rate of one's own.
        if cfg.max_grad_norm != 0.0 {
            w.push(format!(
                "Adafactor: max_grad_norm = {} clips the gradient as well; kohya suggests 0",
                cfg.max_grad_norm
            ));
        }
        if cfg.lr_scheduler != Schedule::ConstantWithWarmup {
            w.push(format!(
                "Adafactor: lr_scheduler = {}; kohya suggests constant_with_warmup",
                cfg.lr_scheduler
            ));
        }
        if s.clip_threshold != 1.0 {
            w.push(format!(
                "Adafactor: clip_threshold = {}; kohya suggests 1.0",
                s.clip_threshold
            ));
        }
        return w;
    }
    if cfg.lr_scheduler != Schedule::Adafactor {
        w.push(format!(
            "Adafactor with relative_step=True finds its own rate: lr_scheduler = {} is replaced by adafactor and learning_rate is not used, as in kohya (relative_step=False in optimizer_args keeps them)",
            cfg.lr_scheduler
        ));
    }
    let written: Vec<&str> = ["unet_lr", "text_encoder_lr"]
        .into_iter()
        .filter(|k| cfg.provenance.is_written(k))
        .collect();
    if !written.is_empty() {
        w.push(format!(
            "{} ignored: Adafactor with relative_step=True finds its own rate, as in kohya",
            written.join(" and ")
        ));
    }
    w
}

/// Block-wise keys that do nothing as given (sd-scripts ignores them the same way).
fn block_notices(cfg: &TrainConfig) -> Vec<String> {
    let weighted = LrWeightArgs::of(cfg).given();
    let mut w = Vec::new();
    let block_mode = cfg.block_dims.is_some() || weighted;
    for (key, given) in [
        ("block_alphas", cfg.block_alphas.is_some()),
        ("conv_block_dims", cfg.conv_block_dims.is_some()),
    ] {
        if given && !block_mode {
            w.push(format!(
                "{key} has no effect without block_dims or a block lr weight (kohya ignores it too)"
            ));
        }
    }
    if cfg.conv_block_alphas.is_some() && cfg.conv_block_dims.is_none() {
        w.push(
            "conv_block_alphas has no effect without conv_block_dims (kohya ignores it too; conv_alpha applies)"
                .to_string(),
        );
    }
    if cfg.block_lr_zero_threshold != 0.0 && !weighted {
        w.push(format!(
            "block_lr_zero_threshold = {} has no effect without down_lr_weight, mid_lr_weight or up_lr_weight",
            cfg.block_lr_zero_threshold
        ));
    }
    let block_dims = cfg.block_dims.is_some() || cfg.conv_block_dims.is_some();
    if block_dims && cfg.dim_from_weights {
        w.push(
            "block_dims and conv_block_dims have no effect with dim_from_weights (the file's ranks are used)"
                .to_string(),
        );
    }
    w
}
