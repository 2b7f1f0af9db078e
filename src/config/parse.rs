//! From text to a typed [`TrainConfig`]: the YAML document and the `--set` arguments become
//! one map of key -> (value, origin); unknown keys are answered with a hint; each known key
//! is read into its type; missing required keys are named. Ranges and cross-key rules are
//! validate.rs's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use yaml_serde::Value;

use super::error::{ConfigError, Origin};
use super::keys::{self, REQUIRED};
use super::values::{
    parse_lora_targets, Choice, Device, MixedPrecision, Resolution, SamplePrompts, Warmup,
    LORA_TARGET_CHOICES,
};
use super::{Provenance, TrainConfig};
use crate::lora::LoraTargets;

/// A config file is a few kilobytes; anything much larger is the wrong file (a model passed
/// where the config goes), refused before it is read.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

pub(crate) fn read_config_file(path: &Path) -> Result<String, ConfigError> {
    let read_err = |source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read_err)?;
    if meta.is_dir() {
        return Err(read_err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "it is a folder; give the path of a .yaml file",
        )));
    }
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(read_err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "it is {:.1} MB, too large for a config file (was a model file given instead?)",
                meta.len() as f64 / 1e6
            ),
        )));
    }
    let bytes = std::fs::read(path).map_err(read_err)?;
    String::from_utf8(bytes).map_err(|_| {
        read_err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "it is not UTF-8 text (a config is a YAML text file)",
        ))
    })
}

/// One key's value and where it came from.
struct Entry {
    value: Value,
    origin: Origin,
}

/// Reads the document and the overrides into a [`TrainConfig`] (types only; no ranges).
pub(crate) fn build(
    doc: Option<(&str, &Path)>,
    overrides: &[&str],
) -> Result<TrainConfig, ConfigError> {
    let mut errors = Vec::new();
    let mut entries: BTreeMap<String, Entry> = BTreeMap::new();
    let file = doc.map(|(_, f)| f.to_path_buf());

    if let Some((text, path)) = doc {
        let origin = Origin::File(path.to_path_buf());
        for (key, value) in document_entries(text, &origin)? {
            if keys::find(&key).is_some() {
                entries.insert(
                    key,
                    Entry {
                        value,
                        origin: origin.clone(),
                    },
                );
            } else {
                errors.push(unknown(&key, origin.clone()));
            }
        }
    }
    for arg in overrides {
        match parse_override(arg) {
            Ok((key, value)) => {
                let origin = Origin::Override(arg.to_string());
                entries.insert(key, Entry { value, origin });
            }
            Err(e) => errors.push(e),
        }
    }

    let default_origin = match &file {
        Some(f) => Origin::File(f.clone()),
        None => Origin::Defaults,
    };
    let mut r = Reader {
        entries: &entries,
        errors,
    };
    let cfg = read_fields(&mut r, &default_origin);
    if let Some(e) = ConfigError::from_list(r.errors) {
        return Err(e);
    }
    // read_fields returns None only after recording why, so this is never the empty list.
    let mut cfg = cfg.ok_or_else(|| ConfigError::Several(Vec::new()))?;
    let written = entries
        .iter()
        .filter(|(_, e)| !e.value.is_null())
        .map(|(k, e)| (k.clone(), (e.origin.clone(), render(&e.value))))
        .collect();
    let loaded = cfg.effective();
    cfg.provenance = Provenance {
        file,
        written,
        loaded,
    };
    Ok(cfg)
}

/// The top-level `key: value` pairs of a YAML document, in file order.
fn document_entries(text: &str, origin: &Origin) -> Result<Vec<(String, Value)>, ConfigError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let value: Value = yaml_serde::from_str(text).map_err(|e| syntax_error(&e, text, origin))?;
    let not_mapping = |found: &str| ConfigError::Syntax {
        origin: origin.clone(),
        line: None,
        column: None,
        message: format!(
            "a config is a YAML mapping of `key: value` lines, but this is {found}{}",
            toml_hint(text)
        ),
    };
    match value {
        Value::Null => Ok(Vec::new()),
        Value::Mapping(m) => Ok(m
            .into_iter()
            .map(|(k, v)| {
                let key = match k {
                    Value::String(s) => s,
                    other => render(&other),
                };
                (key, v)
            })
            .collect()),
        Value::Sequence(_) => Err(not_mapping("a list")),
        Value::Tagged(_) => Err(not_mapping("a tagged value")),
        _ => Err(not_mapping("a single value")),
    }
}

/// kohya users have TOML configs; say so when the text looks like one.
fn toml_hint(text: &str) -> &'static str {
    if text.lines().filter(|l| looks_like_toml(l)).count() >= 1 {
        " (it looks like TOML: lorafuse reads YAML, write `key: value` instead of `key = value`)"
    } else {
        ""
    }
}

fn looks_like_toml(line: &str) -> bool {
    let line = line.trim();
    if line.starts_with('[') && line.ends_with(']') && !line.contains(',') {
        return true;
    }
    match line.split_once('=') {
        Some((k, _)) => {
            let k = k.trim();
            !k.is_empty()
                && !k.contains(':')
                && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        }
        None => false,
    }
}

fn syntax_error(e: &yaml_serde::Error, text: &str, origin: &Origin) -> ConfigError {
    let loc = e.location();
    let mut message = e.to_string();
    if let Some(l) = &loc {
        // The parser repeats the position we print in front; say it once.
        message = message.replacen(
            &format!(" at line {} column {}", l.line(), l.column()),
            "",
            1,
        );
    }
    let line_text = loc
        .as_ref()
        .and_then(|l| text.lines().nth(l.line().saturating_sub(1)));
    let hint = if line_text.is_some_and(|t| t.contains('\t')) {
        " (YAML does not allow tabs for indentation; use spaces)"
    } else {
        toml_hint(text)
    };
    let message = format!("YAML syntax error: {message}{hint}");
    // A position inside a one-line `--set` value says nothing the value does not.
    let (line, column) = match origin {
        Origin::Override(_) => (None, None),
        _ => (
            loc.as_ref().map(|l| l.line()),
            loc.as_ref().map(|l| l.column()),
        ),
    };
    ConfigError::Syntax {
        origin: origin.clone(),
        line,
        column,
        message,
    }
}

fn unknown(key: &str, origin: Origin) -> ConfigError {
    ConfigError::UnknownKey {
        origin,
        key: key.to_string(),
        hint: keys::hint(key),
    }
}

/// `key=value`: the key must be a lorafuse key; the value is read as YAML (`2e-4`, `true`,
/// `[512, 768]`, empty for "the default"), except for paths and names, taken as written.
fn parse_override(arg: &str) -> Result<(String, Value), ConfigError> {
    let Some((key, text)) = arg.split_once('=') else {
        return Err(ConfigError::BadOverride {
            arg: arg.to_string(),
            problem: "expected key=value, for example --set learning_rate=2e-4".into(),
        });
    };
    let key = key.trim();
    let origin = Origin::Override(arg.to_string());
    let Some(spec) = keys::find(key) else {
        if key.is_empty() {
            return Err(ConfigError::BadOverride {
                arg: arg.to_string(),
                problem: "the key before `=` is empty".into(),
            });
        }
        return Err(unknown(key, origin));
    };
    let value = if text.trim().is_empty() {
        Value::Null
    } else if spec.verbatim {
        Value::String(text.to_string())
    } else {
        yaml_serde::from_str(text).map_err(|e| syntax_error(&e, text, &origin))?
    };
    Ok((key.to_string(), value))
}

/// Why a value cannot be read: the key's rule says what is allowed.
enum Bad {
    /// Wrong kind of value ("is not valid: <rule>").
    Type,
    /// The right kind, outside the range the type can hold ("is out of range: <rule>").
    Range,
    /// Anything else, the full text after the value.
    Other(String),
}

struct Reader<'a> {
    entries: &'a BTreeMap<String, Entry>,
    errors: Vec<ConfigError>,
}

impl Reader<'_> {
    /// The typed value of `key`; None when absent or empty (the default applies) or bad
    /// (an error is recorded).
    fn get<T>(
        &mut self,
        key: &'static str,
        read: impl FnOnce(&Value) -> Result<T, Bad>,
    ) -> Option<T> {
        let e = self.entries.get(key)?;
        if e.value.is_null() {
            return None;
        }
        match read(&e.value) {
            Ok(v) => Some(v),
            Err(bad) => {
                let problem = match bad {
                    Bad::Type => format!("is not valid: {}", keys::rule(key)),
                    Bad::Range => format!("is out of range: {}", keys::rule(key)),
                    Bad::Other(text) => text,
                };
                self.errors.push(ConfigError::BadValue {
                    origin: e.origin.clone(),
                    key: key.to_string(),
                    value: render(&e.value),
                    problem,
                });
                None
            }
        }
    }

    fn required<T>(
        &mut self,
        key: &'static str,
        origin: &Origin,
        read: impl FnOnce(&Value) -> Result<T, Bad>,
    ) -> Option<T> {
        let present = self.entries.get(key).is_some_and(|e| !e.value.is_null());
        if !present {
            let meaning = REQUIRED
                .iter()
                .find(|(k, _)| *k == key)
                .map_or("", |(_, m)| *m);
            self.errors.push(ConfigError::Missing {
                origin: origin.clone(),
                key,
                meaning,
            });
            return None;
        }
        self.get(key, read)
    }
}

/// Every field, typed, with its default; None if anything was missing or unreadable (the
/// reader holds the errors).
fn read_fields(r: &mut Reader, origin: &Origin) -> Option<TrainConfig> {
    let train_data_dir = r.required("train_data_dir", origin, path);
    let base_model = r.required("base_model", origin, path);
    let output_dir = r.required("output_dir", origin, path);
    let output_name = r.get("output_name", text);
    let save_precision = r
        .get("save_precision", choice)
        .unwrap_or(super::SavePrecision::Fp16);
    let save_every_n_epochs = r.get("save_every_n_epochs", count);
    let save_every_n_steps = r.get("save_every_n_steps", count);
    let logging_dir = r.get("logging_dir", path);
    let lora_rank = r.get("lora_rank", count).unwrap_or(32);
    let lora_alpha = r.get("lora_alpha", float);
    let lora_dropout = r.get("lora_dropout", float).unwrap_or(0.0);
    let lora_targets = r
        .get("lora_targets", lora_targets)
        .unwrap_or(LoraTargets::Transformer);
    let train_text_encoder = r.get("train_text_encoder", flag).unwrap_or(false);
    let batch_size = r.get("batch_size", count).unwrap_or(1);
    let gradient_accumulation_steps = r.get("gradient_accumulation_steps", count).unwrap_or(1);
    let epochs = r.get("epochs", count).unwrap_or(10);
    let max_train_steps = r.get("max_train_steps", count);
    let learning_rate = r.get("learning_rate", float).unwrap_or(1e-4);
    let unet_lr = r.get("unet_lr", float);
    let text_encoder_lr = r.get("text_encoder_lr", float);
    let lr_scheduler = r
        .get("lr_scheduler", choice)
        .unwrap_or(super::LrScheduler::Cosine);
    let lr_scheduler_num_cycles = r.get("lr_scheduler_num_cycles", count).unwrap_or(1);
    let num_warmup_steps = r
        .get("num_warmup_steps", warmup)
        .unwrap_or(Warmup::Steps(0));
    let weight_decay = r.get("weight_decay", float).unwrap_or(0.01);
    let adam_beta1 = r.get("adam_beta1", float).unwrap_or(0.9);
    let adam_beta2 = r.get("adam_beta2", float).unwrap_or(0.999);
    let adam_epsilon = r.get("adam_epsilon", float).unwrap_or(1e-8);
    let max_grad_norm = r.get("max_grad_norm", float).unwrap_or(1.0);
    let noise_offset = r.get("noise_offset", float).unwrap_or(0.0);
    let min_snr_gamma = r.get("min_snr_gamma", float);
    let mixed_precision = r
        .get("mixed_precision", mixed_precision)
        .unwrap_or(MixedPrecision::Fp16);
    let device = r.get("device", device).unwrap_or(Device::Auto);
    let seed = r.get("seed", whole).unwrap_or(42);
    let resolution = r
        .get("resolution", resolution)
        .unwrap_or(Resolution::square(512));
    let caption_extension = r
        .get("caption_extension", text)
        .unwrap_or_else(|| ".txt".into());
    let enable_bucket = r.get("enable_bucket", flag).unwrap_or(false);
    let min_bucket_reso = r.get("min_bucket_reso", pixels).unwrap_or(256);
    let max_bucket_reso = r.get("max_bucket_reso", pixels).unwrap_or(1024);
    let bucket_reso_steps = r.get("bucket_reso_steps", pixels).unwrap_or(64);
    let bucket_no_upscale = r.get("bucket_no_upscale", flag).unwrap_or(false);
    let flip_aug = r.get("flip_aug", flag).unwrap_or(false);
    let random_crop = r.get("random_crop", flag).unwrap_or(false);
    let shuffle_caption = r.get("shuffle_caption", flag).unwrap_or(false);
    let keep_tokens = r.get("keep_tokens", count).unwrap_or(0);
    let caption_dropout_rate = r.get("caption_dropout_rate", float).unwrap_or(0.0);
    let cache_latents_to_disk = r.get("cache_latents_to_disk", flag).unwrap_or(false);
    let clip_skip = r.get("clip_skip", count).unwrap_or(1);
    let max_token_length = r.get("max_token_length", count).unwrap_or(75);
    let validation_split = r.get("validation_split", float).unwrap_or(0.0);
    let validate_every_n_steps = r.get("validate_every_n_steps", count);
    let early_stopping_patience = r.get("early_stopping_patience", count);
    let early_stopping_min_delta = r.get("early_stopping_min_delta", float).unwrap_or(0.0);
    let sample_every_n_steps = r.get("sample_every_n_steps", count).unwrap_or(0);
    let sample_prompts = r.get("sample_prompts", sample_prompts).unwrap_or_default();

    let (train_data_dir, base_model, output_dir) = (train_data_dir?, base_model?, output_dir?);
    let output_name = match output_name {
        Some(n) => n,
        None => match output_dir.file_name() {
            Some(n) => n.to_string_lossy().into_owned(),
            None => {
                r.errors.push(ConfigError::BadValue {
                    origin: r
                        .entries
                        .get("output_dir")
                        .map_or_else(|| origin.clone(), |e| e.origin.clone()),
                    key: "output_dir".into(),
                    value: format!("{:?}", output_dir.to_string_lossy()),
                    problem: "has no last folder name to name the LoRA file after: set output_name"
                        .into(),
                });
                return None;
            }
        },
    };
    let logging_dir = logging_dir.unwrap_or_else(|| output_dir.join("logs"));
    Some(TrainConfig {
        train_data_dir,
        base_model,
        output_name,
        save_precision,
        save_every_n_epochs,
        save_every_n_steps,
        logging_dir,
        output_dir,
        lora_rank,
        lora_alpha: lora_alpha.unwrap_or(lora_rank as f64),
        lora_dropout,
        lora_targets,
        train_text_encoder,
        batch_size,
        gradient_accumulation_steps,
        epochs,
        max_train_steps,
        learning_rate,
        unet_lr: unet_lr.unwrap_or(learning_rate),
        text_encoder_lr: text_encoder_lr.unwrap_or(learning_rate),
        lr_scheduler,
        lr_scheduler_num_cycles,
        num_warmup_steps,
        weight_decay,
        adam_beta1,
        adam_beta2,
        adam_epsilon,
        max_grad_norm,
        noise_offset,
        min_snr_gamma,
        mixed_precision,
        device,
        seed,
        resolution,
        caption_extension,
        enable_bucket,
        min_bucket_reso,
        max_bucket_reso,
        bucket_reso_steps,
        bucket_no_upscale,
        flip_aug,
        random_crop,
        shuffle_caption,
        keep_tokens,
        caption_dropout_rate,
        cache_latents_to_disk,
        clip_skip,
        max_token_length,
        validation_split,
        validate_every_n_steps,
        early_stopping_patience,
        early_stopping_min_delta,
        sample_every_n_steps,
        sample_prompts,
        provenance: Provenance::default(),
    })
}

// --- readers: one per kind of value. Numbers written as quoted text ("1e-4", as GUIs
// export them) are read as numbers.

/// A number from a YAML number or numeric text.
fn number(v: &Value) -> Result<f64, Bad> {
    match v {
        Value::Number(n) => n.as_f64().ok_or(Bad::Type),
        Value::String(s) => {
            let s = s.trim();
            // Rust parses "inf" and "NaN"; a config means neither.
            if s.is_empty()
                || s.bytes()
                    .any(|b| b.is_ascii_alphabetic() && b != b'e' && b != b'E')
            {
                return Err(Bad::Type);
            }
            s.parse().map_err(|_| Bad::Type)
        }
        _ => Err(Bad::Type),
    }
}

/// A whole number ≥ 0 (`16`, `"16"`, `16.0`); negative ones are out of range.
fn whole(v: &Value) -> Result<u64, Bad> {
    if let Value::Number(n) = v {
        if let Some(u) = n.as_u64() {
            return Ok(u);
        }
        if n.as_i64().is_some() {
            return Err(Bad::Range);
        }
    }
    if let Value::String(s) = v {
        if let Ok(u) = s.trim().parse::<u64>() {
            return Ok(u);
        }
    }
    let x = number(v)?;
    if x.fract() != 0.0 || !x.is_finite() {
        return Err(Bad::Type);
    }
    if x < 0.0 || x > u64::MAX as f64 {
        return Err(Bad::Range);
    }
    Ok(x as u64)
}

fn count(v: &Value) -> Result<usize, Bad> {
    usize::try_from(whole(v)?).map_err(|_| Bad::Range)
}

fn pixels(v: &Value) -> Result<u32, Bad> {
    u32::try_from(whole(v)?).map_err(|_| Bad::Range)
}

fn float(v: &Value) -> Result<f64, Bad> {
    let x = number(v)?;
    if x.is_finite() {
        Ok(x)
    } else {
        Err(Bad::Range)
    }
}

fn flag(v: &Value) -> Result<bool, Bad> {
    match v {
        Value::Bool(b) => Ok(*b),
        // YAML 1.1 spellings, which the YAML 1.2 reader leaves as text.
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" => Ok(true),
            "false" | "no" | "off" => Ok(false),
            _ => Err(Bad::Type),
        },
        _ => Err(Bad::Type),
    }
}

fn text(v: &Value) -> Result<String, Bad> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        _ => Err(Bad::Type),
    }
}

fn path(v: &Value) -> Result<PathBuf, Bad> {
    let s = text(v)?;
    if s.trim().is_empty() {
        return Err(Bad::Other("is empty: give a path".into()));
    }
    Ok(PathBuf::from(s))
}

fn unknown_word(word: &str, key: &str, choices: &[&'static str]) -> Bad {
    let suggestion = keys::nearest_choice(word, choices)
        .map(|c| format!(" (did you mean `{c}`?)"))
        .unwrap_or_default();
    Bad::Other(format!("is not valid: {}{suggestion}", keys::rule(key)))
}

fn word(v: &Value) -> Result<String, Bad> {
    match v {
        Value::String(s) => Ok(s.trim().to_ascii_lowercase()),
        _ => Err(Bad::Type),
    }
}

fn choice<C: Choice + KeyName>(v: &Value) -> Result<C, Bad> {
    let w = word(v)?;
    C::parse(&w).ok_or_else(|| unknown_word(&w, C::KEY, C::CHOICES))
}

/// The key a choice type belongs to, for its error message.
trait KeyName {
    const KEY: &'static str;
}
impl KeyName for super::SavePrecision {
    const KEY: &'static str = "save_precision";
}
impl KeyName for super::LrScheduler {
    const KEY: &'static str = "lr_scheduler";
}
impl KeyName for MixedPrecision {
    const KEY: &'static str = "mixed_precision";
}

fn mixed_precision(v: &Value) -> Result<MixedPrecision, Bad> {
    match v {
        Value::Bool(false) => Ok(MixedPrecision::No),
        _ => choice(v),
    }
}

fn device(v: &Value) -> Result<Device, Bad> {
    let w = word(v)?;
    if w == "gpu" || w.starts_with("gpu:") {
        // One edit from `cpu`, but meant the opposite.
        return Err(unknown_word("cuda", "device", &["cuda"]));
    }
    Device::parse(&w).ok_or_else(|| unknown_word(&w, "device", &["auto", "cpu", "cuda"]))
}

fn lora_targets(v: &Value) -> Result<LoraTargets, Bad> {
    let w = word(v)?;
    parse_lora_targets(&w).ok_or_else(|| unknown_word(&w, "lora_targets", LORA_TARGET_CHOICES))
}

fn resolution(v: &Value) -> Result<Resolution, Bad> {
    match v {
        Value::Number(_) => pixels(v).map(Resolution::square),
        Value::String(s) => Resolution::parse(s).ok_or(Bad::Type),
        Value::Sequence(items) => match items.as_slice() {
            [side] => pixels(side).map(Resolution::square),
            [w, h] => Ok(Resolution {
                width: pixels(w)?,
                height: pixels(h)?,
            }),
            _ => Err(Bad::Type),
        },
        _ => Err(Bad::Type),
    }
}

fn warmup(v: &Value) -> Result<Warmup, Bad> {
    if let Ok(n) = whole(v) {
        return usize::try_from(n)
            .map(Warmup::Steps)
            .map_err(|_| Bad::Range);
    }
    let x = number(v)?;
    if x > 0.0 && x < 1.0 {
        Ok(Warmup::Fraction(x))
    } else {
        Err(Bad::Range)
    }
}

fn sample_prompts(v: &Value) -> Result<SamplePrompts, Bad> {
    match v {
        Value::Sequence(items) => items
            .iter()
            .map(text)
            .collect::<Result<Vec<_>, _>>()
            .map(SamplePrompts::List),
        Value::String(s) => {
            let lower = s.trim().to_ascii_lowercase();
            if lower.ends_with(".txt") {
                Ok(SamplePrompts::File(PathBuf::from(s.trim())))
            } else if lower.ends_with(".toml") || lower.ends_with(".json") {
                Err(Bad::Other(
                    "is not valid: only .txt prompt files (one kohya prompt line per line) are supported"
                        .into(),
                ))
            } else {
                Err(Bad::Other(
                    "is not valid: a single text must be the path of a .txt file with one prompt per line; to write the prompts here, make a list: [\"a photo of ...\", ...]"
                        .into(),
                ))
            }
        }
        _ => Err(Bad::Type),
    }
}

/// A value as the user wrote it, for messages: strings quoted, long values cut.
pub(crate) fn render(v: &Value) -> String {
    let mut s = String::new();
    render_into(v, &mut s, 0);
    if s.chars().count() > 120 {
        s = s.chars().take(117).collect::<String>() + "...";
    }
    s
}

/// Small and large numbers in exponent form, as configs write them (`1e-8`, not
/// `0.00000001`).
pub(crate) fn float_text(x: f64) -> String {
    let a = x.abs();
    if a != 0.0 && !(1e-3..1e6).contains(&a) {
        format!("{x:e}")
    } else {
        format!("{x:?}")
    }
}

fn render_into(v: &Value, out: &mut String, depth: usize) {
    if depth > 8 || out.len() > 200 {
        out.push_str("...");
        return;
    }
    match v {
        Value::Null => out.push_str("(empty)"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => match n.as_f64() {
            Some(x) if n.is_f64() && x.is_finite() => out.push_str(&float_text(x)),
            _ => out.push_str(&n.to_string()),
        },
        Value::String(s) => out.push_str(&format!("{s:?}")),
        Value::Sequence(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                render_into(item, out, depth + 1);
            }
            out.push(']');
        }
        Value::Mapping(m) => {
            out.push('{');
            for (i, (k, val)) in m.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                render_into(k, out, depth + 1);
                out.push_str(": ");
                render_into(val, out, depth + 1);
            }
            out.push('}');
        }
        Value::Tagged(t) => {
            out.push_str(&format!("{} ", t.tag));
            render_into(&t.value, out, depth + 1);
        }
    }
}
