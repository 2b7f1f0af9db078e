//! kohya-format configs: the TOML that sd-scripts' `--config_file` reads and lora-scripts
//! (SD-Trainer) writes, and what a kohya option means where it differs from lorafuse's key.
//!
//! Reading, as sd-scripts' `read_config_from_file` does: every table of the document
//! (`[model_arguments]`, `[training_arguments]`, ...; the section names are free) is
//! flattened into one set of keys, a value outside any table is a key itself, and a key
//! given in two sections takes the later value (a notice says so when the values differ).
//! Keys are sd-scripts' command-line flag names, or lorafuse's.
//!
//! Meanings (see README.md, "Coming from kohya / lora-scripts"):
//! - kohya's defaults where they differ from lorafuse's (declared with each key, keys.rs:
//!   `network_alpha` 1, `network_dim` 4, `caption_extension` `.caption`, ...) hold for a key a
//!   kohya-format file leaves out;
//! - `max_train_epochs` decides the length of the run over `max_train_steps`, and without
//!   either the run is kohya's 1600 steps;
//! - the text encoder trains unless `network_train_unet_only` (kohya's default);
//! - in any file: `network_train_unet_only` is `train_text_encoder` inverted,
//!   `network_train_text_encoder_only` is `train_unet` inverted, and a learning rate of 0
//!   freezes that part (`text_encoder_lr = 0` is `train_text_encoder: false`, `unet_lr = 0`
//!   is `train_unet: false`).
//! - `mixed_precision = "bf16"`, which sd-scripts (through accelerate) runs on a CPU under
//!   torch's CPU autocast in bf16, is `cpu_precision: bf16` where this CPU has AVX512_BF16;
//!   elsewhere the CPU computes in f32 and a notice says so.

use std::collections::BTreeMap;

use yaml_serde::Value;

use super::error::{ConfigError, Origin};
use super::keys::KEYS;
use super::parse::{flag, float, render, Entry};
use crate::backend::cpu::CpuPrecision;

/// A TOML document's keys, flattened.
pub(crate) struct Flat {
    /// (key, value), in file order.
    pub pairs: Vec<(String, Value)>,
    /// One for each key two sections give different values.
    pub notices: Vec<String>,
}

/// The keys of a TOML document, flattened as sd-scripts does.
pub(crate) fn toml_entries(text: &str, origin: &Origin) -> Result<Flat, ConfigError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let doc: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| syntax_error(&e, text, origin))?;
    let mut flat: Vec<(String, Value, String)> = Vec::new();
    let mut notices = Vec::new();
    let mut put = |key: String, value: toml::Value, section: &str| {
        let value = to_yaml(value);
        match flat.iter_mut().find(|(k, _, _)| *k == key) {
            Some((_, old, old_section)) => {
                if *old != value {
                    notices.push(format!(
                        "{key} is given in {} ({}) and in {} ({}); the later value is used, as sd-scripts does",
                        where_(old_section),
                        render(old),
                        where_(section),
                        render(&value)
                    ));
                }
                *old = value;
                *old_section = section.to_string();
            }
            None => flat.push((key, value, section.to_string())),
        }
    };
    for (name, value) in doc {
        match value {
            toml::Value::Table(section) => {
                for (key, v) in section {
                    put(key, v, &name);
                }
            }
            other => put(name, other, ""),
        }
    }
    Ok(Flat {
        pairs: flat.into_iter().map(|(k, v, _)| (k, v)).collect(),
        notices,
    })
}

fn where_(section: &str) -> String {
    if section.is_empty() {
        "the top level".into()
    } else {
        format!("[{section}]")
    }
}

/// A TOML value as the YAML value the key readers take.
pub(crate) fn to_yaml(v: toml::Value) -> Value {
    match v {
        toml::Value::String(s) => Value::String(s),
        toml::Value::Integer(i) => Value::Number(i.into()),
        toml::Value::Float(x) => Value::Number(x.into()),
        toml::Value::Boolean(b) => Value::Bool(b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(items) => Value::Sequence(items.into_iter().map(to_yaml).collect()),
        toml::Value::Table(t) => Value::Mapping(
            t.into_iter()
                .map(|(k, v)| (Value::String(k), to_yaml(v)))
                .collect(),
        ),
    }
}

/// A TOML syntax error with the line and column it was found at.
pub(crate) fn syntax_error(e: &toml::de::Error, text: &str, origin: &Origin) -> ConfigError {
    let (line, column) = match e.span() {
        Some(span) => {
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            (Some(line), Some(column))
        }
        None => (None, None),
    };
    let message = e.message().trim().replace('\n', " ");
    ConfigError::Syntax {
        origin: origin.clone(),
        line,
        column,
        message: format!("TOML syntax error: {message}"),
    }
}

/// Whether a config file whose name ends neither in .toml nor in .yaml/.yml is TOML: its
/// first line that is not blank or a comment is a `[section]` or a `key = value`.
pub(crate) fn looks_like_toml(text: &str) -> bool {
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .is_some_and(|line| {
            let section = line.starts_with('[') && line.ends_with(']') && !line.contains(',');
            let assignment = line.split_once('=').is_some_and(|(k, _)| {
                let k = k.trim().trim_matches('"');
                !k.is_empty()
                    && k.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
            });
            section || assignment
        })
}

/// kohya's default for a key left out of a kohya-format file, where it differs from
/// lorafuse's (declared with the key, keys.rs).
pub(crate) fn kohya_default(key: &str) -> Option<Value> {
    let decl = KEYS.iter().find(|k| k.name == key)?;
    let text = decl.kohya_default?;
    yaml_serde::from_str(text).ok()
}

/// The values being read, to which kohya's meanings are applied, and where their notices
/// and errors go.
pub(crate) struct Meanings<'a> {
    pub entries: &'a mut BTreeMap<String, Entry>,
    pub notices: &'a mut Vec<String>,
    pub errors: &'a mut Vec<ConfigError>,
}

impl Meanings<'_> {
    pub(crate) fn written(&self, key: &str) -> bool {
        self.entries
            .get(key)
            .is_some_and(|e| !e.value.is_null() && !e.defaulted)
    }

    pub(crate) fn set(&mut self, key: &str, value: Value, origin: &Origin, defaulted: bool) {
        self.entries.insert(
            key.to_string(),
            Entry {
                value,
                origin: origin.clone(),
                written_as: key.to_string(),
                defaulted,
            },
        );
    }

    /// kohya's defaults for the keys a kohya-format file leaves out, and which of
    /// max_train_epochs and max_train_steps decides the run's length.
    pub(crate) fn kohya_defaults(&mut self, file: &Origin) {
        for decl in KEYS.iter() {
            if decl.kohya_default.is_some() && !self.written(decl.name) {
                if let Some(v) = kohya_default(decl.name) {
                    self.set(decl.name, v, file, true);
                }
            }
        }
        // lora-scripts writes `reg_data_dir = ""` (and `network_weights = ""`) for none.
        for key in ["reg_data_dir", "network_weights"] {
            if self
                .entries
                .get(key)
                .is_some_and(|e| e.value.as_str().is_some_and(|s| s.trim().is_empty()))
            {
                self.entries.remove(key);
            }
        }
        self.cpu_bf16();
        if self.written("epochs") {
            if let Some(steps) = self.entries.remove("max_train_steps") {
                if !steps.value.is_null() {
                    let epochs = &self.entries["epochs"];
                    self.notices.push(format!(
                        "{} = {} decides the length of the run, as in kohya; max_train_steps = {} is ignored",
                        epochs.written_as,
                        render(&epochs.value),
                        render(&steps.value)
                    ));
                }
            }
        } else if !self.written("max_train_steps") {
            self.set(
                "max_train_steps",
                Value::Number(KOHYA_STEPS.into()),
                file,
                true,
            );
        }
    }

    /// `mixed_precision = "bf16"` without `cpu_precision`: bf16 products on a CPU that has
    /// them (torch's CPU autocast, as accelerate runs sd-scripts on a CPU), else a notice.
    fn cpu_bf16(&mut self) {
        let Some(mp) = self.entries.get("mixed_precision") else {
            return;
        };
        if mp.defaulted || mp.value.as_str() != Some("bf16") || self.written("cpu_precision") {
            return;
        }
        let origin = mp.origin.clone();
        match CpuPrecision::Bf16.unsupported() {
            None => self.set("cpu_precision", Value::from("bf16"), &origin, false),
            Some(why) => self.notices.push(format!(
                "mixed_precision = \"bf16\": a run on the CPU computes in f32 ({why})"
            )),
        }
    }

    /// `network_train_unet_only` / `network_train_text_encoder_only` (`train_text_encoder` /
    /// `train_unet` inverted) and learning rates of 0 (that part frozen), in any file;
    /// `kohya_format` silences the notices.
    pub(crate) fn map_switches(&mut self, switches: &BTreeMap<String, Entry>, kohya_format: bool) {
        for (switch, target) in SWITCHES {
            if let Some(e) = switches.get(*switch) {
                self.map_switch(e, switch, target, kohya_format);
            }
        }
        for (lr, target, part) in [
            ("text_encoder_lr", "train_text_encoder", "text encoder"),
            ("unet_lr", "train_unet", "UNet"),
        ] {
            if !self.written(lr) {
                continue;
            }
            let e = &self.entries[lr];
            if float(&e.value).is_ok_and(|x| x == 0.0) {
                let origin = e.origin.clone();
                if !kohya_format {
                    self.notices.push(format!(
                        "{lr} = 0 freezes the {part}, as in kohya: lorafuse calls this `{target}: false`"
                    ));
                }
                self.entries.remove(lr);
                self.set(target, Value::Bool(false), &origin, false);
            }
        }
    }

    /// One switch `name` = x: `target` = !x, unless `target` is given and contradicts it.
    fn map_switch(&mut self, e: &Entry, name: &str, target: &str, kohya_format: bool) {
        match flag(&e.value) {
            Ok(only) => {
                if self.written(target) {
                    let given = &self.entries[target];
                    if flag(&given.value).ok() == Some(only) {
                        self.errors.push(ConfigError::BadValue {
                            origin: e.origin.clone(),
                            key: name.into(),
                            value: render(&e.value),
                            problem: format!(
                                "contradicts {target} = {}: give one of them",
                                render(&given.value)
                            ),
                        });
                    }
                } else {
                    if !kohya_format {
                        self.notices.push(format!(
                            "{name} = {only}: lorafuse calls this `{target}: {}`",
                            !only
                        ));
                    }
                    self.set(target, Value::Bool(!only), &e.origin, false);
                }
            }
            Err(_) if e.value.is_null() => {}
            Err(_) => self.errors.push(ConfigError::BadValue {
                origin: e.origin.clone(),
                key: name.into(),
                value: render(&e.value),
                problem: "is not valid: must be true or false".into(),
            }),
        }
    }
}

/// kohya's `--max_train_steps` default, the length of a run that sets neither it nor
/// `max_train_epochs`.
pub(crate) const KOHYA_STEPS: u64 = 1600;

/// kohya names lorafuse maps itself (not renames: the value changes too): each switch and
/// the lorafuse key it inverts.
pub(crate) const SWITCHES: &[(&str, &str)] = &[
    ("network_train_unet_only", "train_text_encoder"),
    ("network_train_text_encoder_only", "train_unet"),
];

/// `network_args`: read by [`Meanings::map_network_args`] (network_args.rs).
pub(crate) const NETWORK_ARGS: &str = "network_args";
