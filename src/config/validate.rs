//! Ranges and the rules between keys, on typed values; no disk access (paths.rs has that).
//! Each problem names where the value came from, the key, the value as written and what is
//! allowed; all problems of one pass are returned together.
//!
//! Sizes: the VAE turns an image into latents 8 times smaller, and the SD1.x UNet halves the
//! latents three times (four levels). Its skip connections concatenate the down and up paths
//! at each level, so the latent sides must divide by 2³ = 8 and the image sides by
//! 8 · 2³ = 64. kohya's buckets use the same step (bucket_reso_steps = 64); lorafuse requires
//! multiples of 64 for `resolution` and every bucket setting.

use super::error::ConfigError;
use super::keys;
use super::values::{LrScheduler, MixedPrecision, SamplePrompts, Warmup};
use super::{Device, Resolution, TrainConfig};

/// Every image side is a multiple of this (see the module comment).
pub const SIDE_MULTIPLE: u32 = 64;
/// Largest image side accepted, a guard against typos (SD1.x is trained at 512).
pub const MAX_SIDE: u32 = 4096;
/// CLIP ViT-L/14's text encoder has 12 layers.
const CLIP_LAYERS: usize = 12;

struct Check<'a> {
    cfg: &'a TrainConfig,
    /// The effective values, to show keys left at their default.
    effective: yaml_serde::Mapping,
    errors: Vec<ConfigError>,
}

impl Check<'_> {
    fn fail(&mut self, key: &str, problem: String) {
        let (origin, value) = self.cfg.describe(key, &self.effective);
        self.errors.push(ConfigError::BadValue {
            origin,
            key: key.to_string(),
            value,
            problem,
        });
    }

    /// `ok` or "is out of range: <the key's rule>".
    fn range(&mut self, key: &str, ok: bool) {
        if !ok {
            self.fail(key, format!("is out of range: {}", keys::rule(key)));
        }
    }

    fn is_set(&self, key: &str) -> bool {
        self.cfg.provenance.is_written(key)
    }
}

fn finite_in(x: f64, lo: f64, lo_inclusive: bool, hi: f64, hi_inclusive: bool) -> bool {
    x.is_finite()
        && (if lo_inclusive { x >= lo } else { x > lo })
        && (if hi_inclusive { x <= hi } else { x < hi })
}

/// [0, 1)
fn unit(x: f64) -> bool {
    finite_in(x, 0.0, true, 1.0, false)
}

/// (0, 1)
fn open_unit(x: f64) -> bool {
    finite_in(x, 0.0, false, 1.0, false)
}

fn side_ok(s: u32) -> bool {
    s % SIDE_MULTIPLE == 0 && (SIDE_MULTIPLE..=MAX_SIDE).contains(&s)
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
        check_outputs(&mut c);
        check_network(&mut c);
        check_schedule(&mut c);
        check_data(&mut c);
        check_validation_and_samples(&mut c);
        match ConfigError::from_list(c.errors) {
            Some(e) => Err(e),
            None => Ok(()),
        }
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
    let name = cfg.output_name.as_str();
    let lower = name.to_ascii_lowercase();
    if name.trim().is_empty() || name == "." || name == ".." {
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
    if let Some(n) = cfg.save_every_n_epochs {
        c.range("save_every_n_epochs", n >= 1);
    }
    if let Some(n) = cfg.save_every_n_steps {
        c.range("save_every_n_steps", n >= 1);
    }
}

fn check_network(c: &mut Check) {
    let cfg = c.cfg;
    c.range("lora_rank", (1..=1024).contains(&cfg.lora_rank));
    // lora_alpha echoes lora_rank when not written: report it only when it differs.
    if c.is_set("lora_alpha") || cfg.lora_alpha != cfg.lora_rank as f64 {
        c.range(
            "lora_alpha",
            cfg.lora_alpha.is_finite() && cfg.lora_alpha > 0.0,
        );
    }
    c.range("lora_dropout", unit(cfg.lora_dropout));
}

fn check_schedule(c: &mut Check) {
    let cfg = c.cfg;
    c.range("batch_size", cfg.batch_size >= 1);
    c.range(
        "gradient_accumulation_steps",
        cfg.gradient_accumulation_steps >= 1,
    );
    c.range("epochs", cfg.epochs >= 1);
    if let Some(n) = cfg.max_train_steps {
        c.range("max_train_steps", n >= 1);
    }
    c.range("learning_rate", open_unit(cfg.learning_rate));
    // The per-network rates echo learning_rate when not written; report them only when
    // written, so one bad learning_rate is one error.
    for (key, lr) in [
        ("unet_lr", cfg.unet_lr),
        ("text_encoder_lr", cfg.text_encoder_lr),
    ] {
        if c.is_set(key) || lr != cfg.learning_rate {
            c.range(key, open_unit(lr));
        }
    }
    c.range("lr_scheduler_num_cycles", cfg.lr_scheduler_num_cycles >= 1);
    match cfg.num_warmup_steps {
        Warmup::Fraction(f) => c.range("num_warmup_steps", open_unit(f)),
        Warmup::Steps(n) => {
            if let Some(total) = cfg.max_train_steps {
                if n > total {
                    c.fail(
                        "num_warmup_steps",
                        format!("is out of range: the warmup is longer than the run (max_train_steps = {total})"),
                    );
                }
            }
        }
    }
    c.range("weight_decay", unit(cfg.weight_decay));
    c.range("adam_beta1", unit(cfg.adam_beta1));
    c.range("adam_beta2", unit(cfg.adam_beta2));
    c.range("adam_epsilon", open_unit(cfg.adam_epsilon));
    c.range(
        "max_grad_norm",
        cfg.max_grad_norm.is_finite() && cfg.max_grad_norm >= 0.0,
    );
    c.range(
        "noise_offset",
        finite_in(cfg.noise_offset, 0.0, true, 1.0, true),
    );
    if let Some(g) = cfg.min_snr_gamma {
        c.range("min_snr_gamma", g.is_finite() && g > 0.0);
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
            if sides_ok && (res.width % step != 0 || res.height % step != 0) {
                c.fail(
                    "resolution",
                    format!("is out of range: with enable_bucket both sides must be multiples of bucket_reso_steps ({step})"),
                );
            }
        }
    }

    c.range("caption_dropout_rate", unit(cfg.caption_dropout_rate));
    c.range("clip_skip", (1..=CLIP_LAYERS).contains(&cfg.clip_skip));
    match cfg.max_token_length {
        75 => {}
        150 | 225 => c.fail(
            "max_token_length",
            "is not supported yet: lorafuse encodes one 77-token CLIP window (75 caption tokens); set 75".into(),
        ),
        _ => c.range("max_token_length", false),
    }
    if cfg.random_crop && cfg.cache_latents_to_disk {
        c.fail(
            "random_crop",
            "cannot be combined with cache_latents_to_disk: true (a cached latent fixes the crop); turn one of them off".into(),
        );
    }
}

fn check_validation_and_samples(c: &mut Check) {
    let cfg = c.cfg;
    c.range("validation_split", unit(cfg.validation_split));
    let validating = cfg.validation_split > 0.0;
    if let Some(n) = cfg.validate_every_n_steps {
        c.range("validate_every_n_steps", n >= 1);
        if !validating {
            c.fail(
                "validate_every_n_steps",
                "needs validation_split > 0 (the share of images held out for validation, e.g. 0.1)".into(),
            );
        }
    }
    if let Some(n) = cfg.early_stopping_patience {
        c.range("early_stopping_patience", n >= 1);
        if !validating {
            c.fail(
                "early_stopping_patience",
                "needs validation_split > 0: early stopping watches the validation loss".into(),
            );
        }
    }
    c.range(
        "early_stopping_min_delta",
        cfg.early_stopping_min_delta.is_finite() && cfg.early_stopping_min_delta >= 0.0,
    );
    if let SamplePrompts::List(prompts) = &cfg.sample_prompts {
        if prompts.iter().any(|p| p.trim().is_empty()) {
            c.fail("sample_prompts", "is not valid: a prompt is empty".into());
        }
        if cfg.sample_every_n_steps > 0 && prompts.is_empty() {
            c.fail(
                "sample_every_n_steps",
                "needs sample_prompts: a list of prompts, or a .txt file with one per line".into(),
            );
        }
    }
}

/// Valid settings that do nothing as combined, one line each.
pub(crate) fn warnings(cfg: &TrainConfig) -> Vec<String> {
    let mut w = Vec::new();
    if !cfg.num_warmup_steps.is_zero() && cfg.lr_scheduler == LrScheduler::Constant {
        w.push(format!(
            "num_warmup_steps = {} has no effect with lr_scheduler = constant (constant_with_warmup has a warmup)",
            cfg.num_warmup_steps
        ));
    }
    if cfg.num_warmup_steps.is_zero() && cfg.lr_scheduler == LrScheduler::ConstantWithWarmup {
        w.push(
            "lr_scheduler = constant_with_warmup with num_warmup_steps = 0 is the same as constant"
                .into(),
        );
    }
    if cfg.lr_scheduler_num_cycles != 1 && cfg.lr_scheduler != LrScheduler::CosineWithRestarts {
        w.push(format!(
            "lr_scheduler_num_cycles = {} has no effect unless lr_scheduler = cosine_with_restarts (it is {})",
            cfg.lr_scheduler_num_cycles, cfg.lr_scheduler
        ));
    }
    if cfg.keep_tokens > 0 && !cfg.shuffle_caption {
        w.push(format!(
            "keep_tokens = {} has no effect without shuffle_caption: true",
            cfg.keep_tokens
        ));
    }
    if cfg.text_encoder_lr != cfg.learning_rate && !cfg.train_text_encoder {
        w.push(format!(
            "text_encoder_lr = {} has no effect without train_text_encoder: true",
            cfg.text_encoder_lr
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
    if cfg.sample_every_n_steps == 0 && !cfg.sample_prompts.is_empty_list() {
        w.push("sample_prompts are not used while sample_every_n_steps = 0".into());
    }
    if cfg.device == Device::Cpu && cfg.mixed_precision != MixedPrecision::No {
        w.push(format!(
            "mixed_precision = {} applies on a GPU only: the CPU computes in f32",
            cfg.mixed_precision
        ));
    }
    w
}
