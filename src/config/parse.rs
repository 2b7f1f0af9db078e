//! From text to a typed [`TrainConfig`]: the YAML document and the `--set` arguments become
//! one map of key -> (value, origin); unknown keys are answered with a hint (kohya flags that
//! ask for what lorafuse does anyway are accepted with a notice); each known key is read into
//! its type by the reader its declaration names (keys.rs), which are here; missing required
//! keys are named. Ranges and cross-key rules are validate.rs's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use yaml_serde::Value;

use super::error::{ConfigError, Origin};
use super::foreign::{self, Verdict};
use super::keys;
use super::values::{
    choice_names, Choice, Device, MixedPrecision, Resolution, SamplePrompts, Warmup,
};
use super::{dataset, kohya};
use super::{DataSubset, Provenance, TrainConfig, Written};
use crate::lora::blocks::SideWeights;
use crate::sample::SamplerKind;

/// A config file is a few kilobytes; anything much larger is the wrong file (a model passed
/// where the config goes), refused before it is read.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// The text of a config file (lorafuse's YAML, a kohya TOML, or a dataset_config).
pub(crate) fn read_config_file(path: &Path) -> Result<String, ConfigError> {
    let read_err = |source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read_err)?;
    if meta.is_dir() {
        return Err(read_err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "it is a folder; give the path of a .yaml or .toml file",
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
            "it is not UTF-8 text (a config is a YAML or TOML text file)",
        ))
    })
}

/// The format of a config file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// lorafuse's YAML: `key: value` lines.
    Yaml,
    /// The TOML of sd-scripts' `--config_file` and lora-scripts: sections flattened, kohya's
    /// meanings (kohya.rs).
    Kohya,
}

impl Format {
    /// `.toml` is kohya's, `.yaml` and `.yml` are lorafuse's; any other name is read by its
    /// content (TOML when its first line is a `[section]` or a `key = value`).
    pub fn of(path: &Path, text: &str) -> Format {
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase());
        match ext.as_deref() {
            Some("toml") => Format::Kohya,
            Some("yaml" | "yml") => Format::Yaml,
            _ if kohya::looks_like_toml(text) => Format::Kohya,
            _ => Format::Yaml,
        }
    }
}

/// One key's value and where it came from.
pub(crate) struct Entry {
    pub value: Value,
    pub origin: Origin,
    /// The name it was written under: the key, or another trainer's name for it.
    pub written_as: String,
    /// Set by a kohya default (kohya.rs), not written.
    pub defaulted: bool,
}

/// A config document: its text, its file, its format.
pub(crate) struct Document<'a> {
    pub text: &'a str,
    pub path: &'a Path,
    pub format: Format,
}

/// Problems and notices found while reading one configuration.
#[derive(Default)]
struct Found {
    errors: Vec<ConfigError>,
    notices: Vec<String>,
}

/// A configuration's values, sorted by the kind of name they were given under.
#[derive(Default)]
struct Sorted {
    /// lorafuse keys (also those written under another trainer's name).
    entries: BTreeMap<String, Entry>,
    /// kohya options lorafuse has no key for, judged by their value (foreign.rs).
    foreign: BTreeMap<String, Entry>,
    /// kohya names mapped with their value changed (kohya.rs).
    switches: BTreeMap<String, Entry>,
}

/// (name as written, value, origin).
type Pair = (String, Value, Origin);

/// Reads the document, its `dataset_config` and the overrides into a [`TrainConfig`] (types
/// only; no ranges).
pub(crate) fn build(doc: Option<Document>, overrides: &[&str]) -> Result<TrainConfig, ConfigError> {
    let mut found = Found::default();
    let file = doc.as_ref().map(|d| d.path.to_path_buf());
    let format = doc.as_ref().map_or(Format::Yaml, |d| d.format);

    // In the order they apply: the file, its dataset_config (whose values win, as in
    // sd-scripts), the --set arguments.
    let doc_pairs = match &doc {
        Some(d) => document_pairs(d, &mut found)?,
        None => Vec::new(),
    };
    let sets = override_pairs(overrides, &mut found);
    let mut dataset = read_dataset(&doc_pairs, &sets, &mut found);
    let reading = Reading {
        file: file.clone(),
        format,
        dataset_file: dataset.origin.clone(),
        failed: dataset.failed,
    };
    let main = dataset.subsets.first().map(|s| s.pairs.clone());
    let raw: Vec<Pair> = doc_pairs
        .iter()
        .cloned()
        .chain(main.unwrap_or_default())
        .chain(sets.iter().cloned())
        .collect();
    let (mut cfg, errors) = reading.typed(raw, found);
    if let Some(e) = ConfigError::from_list(errors) {
        return Err(e);
    }
    // Each subset as a whole configuration; an error in a value the subsets share is
    // named once.
    let mut errors: Vec<ConfigError> = Vec::new();
    for s in std::mem::take(&mut dataset.subsets) {
        let raw: Vec<Pair> = doc_pairs
            .iter()
            .cloned()
            .chain(s.pairs)
            .chain(sets.iter().cloned())
            .collect();
        let (sub, errs) = reading.typed(raw, Found::default());
        for e in errs {
            if !errors.iter().any(|old| old.to_string() == e.to_string()) {
                errors.push(e);
            }
        }
        cfg.subsets.push(DataSubset {
            dataset: s.dataset,
            is_reg: s.is_reg,
            config: sub,
        });
    }
    if let Some(e) = ConfigError::from_list(errors) {
        return Err(e);
    }
    Ok(cfg)
}

/// How one configuration's values are read: its file and the dataset file.
struct Reading {
    file: Option<PathBuf>,
    format: Format,
    dataset_file: Option<Origin>,
    /// The dataset file was named but could not be read (its problems are in the errors).
    failed: bool,
}

impl Reading {
    /// The values `raw` (in the order they apply) typed into a configuration, with the
    /// problems found (those of `found` first).
    fn typed(&self, raw: Vec<Pair>, mut found: Found) -> (TrainConfig, Vec<ConfigError>) {
        let kohya_format = self.format == Format::Kohya;
        let mut sorted = sort(raw, kohya_format, self.dataset_file.as_ref(), &mut found);
        judge_foreign(&sorted, kohya_format, &mut found);
        let named_family = foreign::named_family(|k| sorted.foreign.get(k).map(|e| &e.value));
        let default_origin = match &self.file {
            Some(f) => Origin::File(f.clone()),
            None => Origin::Defaults,
        };
        let mut meanings = kohya::Meanings {
            entries: &mut sorted.entries,
            notices: &mut found.notices,
            errors: &mut found.errors,
        };
        if kohya_format {
            meanings.kohya_defaults(&default_origin);
        }
        meanings.map_switches(&sorted.switches, kohya_format);
        meanings.map_network_args(
            sorted.switches.get(kohya::NETWORK_ARGS),
            sorted.foreign.get("network_module"),
        );

        let entries = sorted.entries;
        let mut r = Reader {
            entries: &entries,
            errors: found.errors,
        };
        let mut cfg = TrainConfig::read(&mut r, &default_origin);
        if self.failed {
            // The dataset file's problems are named; its missing image folder is one of them.
            r.errors.retain(|e| {
                !matches!(
                    e,
                    ConfigError::Missing {
                        key: "train_data_dir",
                        ..
                    }
                )
            });
        }
        let written = entries
            .iter()
            .filter(|(_, e)| !e.value.is_null() && !e.defaulted)
            .map(|(k, e)| {
                let written = Written {
                    origin: e.origin.clone(),
                    raw: render(&e.value),
                    name: e.written_as.clone(),
                };
                (k.clone(), written)
            })
            .collect();
        let loaded = cfg.effective();
        cfg.provenance = Provenance {
            file: self.file.clone(),
            format: self.format,
            written,
            loaded,
            notices: found.notices,
            named_family,
        };
        (cfg, r.errors)
    }
}

/// The document's keys, in file order.
fn document_pairs(d: &Document, found: &mut Found) -> Result<Vec<Pair>, ConfigError> {
    let origin = Origin::File(d.path.to_path_buf());
    let pairs = match d.format {
        Format::Yaml => document_entries(d.text, &origin)?,
        Format::Kohya => {
            let flat = kohya::toml_entries(d.text, &origin)?;
            found.notices.extend(flat.notices);
            flat.pairs
        }
    };
    Ok(pairs
        .into_iter()
        .map(|(k, v)| (k, v, origin.clone()))
        .collect())
}

fn override_pairs(overrides: &[&str], found: &mut Found) -> Vec<Pair> {
    let mut sets = Vec::new();
    for arg in overrides {
        match parse_override(arg) {
            Ok((key, value)) => sets.push((key, value, Origin::Override(arg.to_string()))),
            Err(e) => found.errors.push(e),
        }
    }
    sets
}

/// What the `dataset_config` file gave.
#[derive(Default)]
struct DatasetRead {
    /// Its subsets, the first training subset first.
    subsets: Vec<dataset::SubsetEntries>,
    /// The dataset file, as the origin of its values.
    origin: Option<Origin>,
    /// It was named but could not be read or used (its problems are in the errors).
    failed: bool,
}

/// The values of the `dataset_config` the file or the overrides name (the last one given).
fn read_dataset(file: &[Pair], sets: &[Pair], found: &mut Found) -> DatasetRead {
    let named = file
        .iter()
        .chain(sets)
        .rev()
        .find(|(k, _, _)| k == "dataset_config")
        .and_then(|(_, v, origin)| path(v).ok().map(|p| (p, origin.clone())));
    let Some((path, origin)) = named else {
        return DatasetRead::default();
    };
    match dataset::entries(&path, &origin) {
        Ok(subsets) => {
            if let Some(main) = subsets.first() {
                note_ignored_folder(file, &main.pairs, &mut found.notices);
            }
            note_ignored_reg(file, &mut found.notices);
            DatasetRead {
                subsets,
                origin: Some(Origin::File(path)),
                failed: false,
            }
        }
        Err(e) => {
            found.errors.push(e);
            DatasetRead {
                failed: true,
                ..DatasetRead::default()
            }
        }
    }
}

/// Sorts each value by its name: a lorafuse key (under its name or another trainer's), a
/// kohya switch, a kohya option judged by its value, or an unknown key (an error).
fn sort(raw: Vec<Pair>, kohya_format: bool, dataset: Option<&Origin>, found: &mut Found) -> Sorted {
    let mut sorted = Sorted::default();
    for (name, value, origin) in raw {
        let entry = Entry {
            value,
            origin,
            written_as: name.clone(),
            defaulted: false,
        };
        if keys::find(&name).is_some() {
            put(&mut sorted.entries, name, entry, &mut found.errors);
        } else if let Some((ours, note)) = foreign::alias(&name) {
            // A kohya file, and the dataset file beside any config, use kohya's names.
            if !kohya_format && dataset != Some(&entry.origin) {
                let notice = format!("{name}: lorafuse calls this `{ours}`{note}");
                if !found.notices.contains(&notice) {
                    found.notices.push(notice);
                }
            }
            put(
                &mut sorted.entries,
                ours.to_string(),
                entry,
                &mut found.errors,
            );
        } else if kohya::SWITCHES.iter().any(|(s, _)| *s == name) || name == kohya::NETWORK_ARGS {
            sorted.switches.insert(name, entry);
        } else if foreign::is_foreign(&name) {
            sorted.foreign.insert(name, entry);
        } else {
            found.errors.push(unknown(&name, entry.origin));
        }
    }
    sorted
}

/// Each kohya option lorafuse has no key for: accepted (with a notice in a YAML file) or
/// refused, by its value.
fn judge_foreign(sorted: &Sorted, kohya_format: bool, found: &mut Found) {
    let ctx = foreign::Context { kohya_format };
    for (name, e) in &sorted.foreign {
        match foreign::judge(name, &e.value, &ctx) {
            Verdict::Accepted(notice) => found.notices.extend(notice),
            Verdict::NotHere(hint) => found.errors.push(ConfigError::UnknownKey {
                origin: e.origin.clone(),
                key: name.clone(),
                hint,
            }),
            Verdict::BadValue(problem) => found.errors.push(ConfigError::BadValue {
                origin: e.origin.clone(),
                key: name.clone(),
                value: render(&e.value),
                problem,
            }),
        }
    }
}

/// sd-scripts ignores `train_data_dir` when a dataset config gives the folders: say so when
/// the config names another folder than the dataset file's `image_dir`.
fn note_ignored_folder(config: &[Pair], dataset: &[Pair], notices: &mut Vec<String>) {
    let folder = |pairs: &[Pair], names: &[&str]| {
        pairs
            .iter()
            .rev()
            .find(|(k, _, _)| names.contains(&k.as_str()))
            .map(|(k, v, _)| (k.clone(), v.clone()))
    };
    let ours = folder(config, &["train_data_dir", "instance_data_dir"]);
    let theirs = folder(dataset, &["image_dir"]);
    if let (Some((key, mine)), Some((_, image_dir))) = (ours, theirs) {
        if mine != image_dir {
            notices.push(format!(
                "{key} = {} is not used: dataset_config's image_dir = {} is the image folder, as in sd-scripts",
                render(&mine),
                render(&image_dir)
            ));
        }
    }
}

/// sd-scripts reads no `reg_data_dir` beside a dataset config: say so.
fn note_ignored_reg(config: &[Pair], notices: &mut Vec<String>) {
    if let Some((_, v, _)) = config.iter().rev().find(|(k, _, _)| k == "reg_data_dir") {
        if v.as_str().is_none_or(|s| !s.trim().is_empty()) {
            notices.push(format!(
                "reg_data_dir = {} is not used: with a dataset_config, regularisation images are its is_reg subsets, as in sd-scripts",
                render(v)
            ));
        }
    }
}

/// Records `entry` as the value of `key`; a key that one file gives twice under two names
/// (`network_dim` and `lora_rank`) is an error.
fn put(
    entries: &mut BTreeMap<String, Entry>,
    key: String,
    entry: Entry,
    errors: &mut Vec<ConfigError>,
) {
    if let Some(old) = entries.get(&key) {
        if old.origin == entry.origin && old.written_as != entry.written_as {
            errors.push(ConfigError::BadValue {
                origin: entry.origin.clone(),
                key: entry.written_as.clone(),
                value: render(&entry.value),
                problem: format!(
                    "gives `{key}` a second value (it is also given as {} = {}): keep one of them",
                    old.written_as,
                    render(&old.value)
                ),
            });
            return;
        }
    }
    entries.insert(key, entry);
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
        " (it looks like TOML: name the file .toml to read it as a kohya / lora-scripts config, or write `key: value` lines)"
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
        hint: foreign::hint(key),
    }
}

/// `key=value`: the key must be a lorafuse key (or another trainer's name for one, or a
/// kohya option judged by its value); the value is read as YAML (`2e-4`, `true`,
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
    let decl =
        keys::find(key).or_else(|| foreign::alias(key).and_then(|(ours, _)| keys::find(ours)));
    let verbatim = match decl {
        Some(decl) => decl.verbatim,
        None if foreign::is_foreign(key)
            || kohya::SWITCHES.iter().any(|(s, _)| *s == key)
            || key == kohya::NETWORK_ARGS =>
        {
            false
        }
        None if key.is_empty() => {
            return Err(ConfigError::BadOverride {
                arg: arg.to_string(),
                problem: "the key before `=` is empty".into(),
            })
        }
        None => return Err(unknown(key, origin)),
    };
    let value = if text.trim().is_empty() {
        Value::Null
    } else if verbatim {
        Value::String(text.to_string())
    } else {
        yaml_serde::from_str(text).map_err(|e| syntax_error(&e, text, &origin))?
    };
    Ok((key.to_string(), value))
}

/// Why a value cannot be read: the key's rule says what is allowed.
pub(crate) enum Bad {
    /// Wrong kind of value ("is not valid: <rule>").
    Type,
    /// A word that is none of the choices ("is not valid: <rule> (did you mean `x`?)").
    Word(Option<String>),
    /// The right kind, outside the range the type can hold ("is out of range: <rule>").
    Range,
    /// Anything else, the full text after the value.
    Other(String),
}

/// The entries of one configuration, read key by key; the problems found on the way.
pub(crate) struct Reader<'a> {
    entries: &'a BTreeMap<String, Entry>,
    errors: Vec<ConfigError>,
}

impl Reader<'_> {
    /// The typed value of `key`; None when absent or empty (the default applies) or bad
    /// (an error is recorded).
    pub(super) fn get<T>(
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
                    Bad::Word(nearest) => {
                        let suggestion = nearest
                            .map(|c| format!(" (did you mean `{c}`?)"))
                            .unwrap_or_default();
                        format!("is not valid: {}{suggestion}", keys::rule(key))
                    }
                    Bad::Range => format!("is out of range: {}", keys::rule(key)),
                    Bad::Other(text) => text,
                };
                self.errors.push(ConfigError::BadValue {
                    origin: e.origin.clone(),
                    key: e.written_as.clone(),
                    value: render(&e.value),
                    problem,
                });
                None
            }
        }
    }

    pub(super) fn required<T>(
        &mut self,
        key: &'static str,
        origin: &Origin,
        read: impl FnOnce(&Value) -> Result<T, Bad>,
    ) -> Option<T> {
        let present = self.entries.get(key).is_some_and(|e| !e.value.is_null());
        if !present {
            let meaning = keys::find(key).and_then(|k| k.required).unwrap_or("");
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

// --- readers: one per kind of value, named by the key declarations. Numbers written as
// quoted text ("1e-4", as GUIs export them) are read as numbers.

/// `output_name`'s default: the last folder name of `output_dir` ("" when it has none, which
/// validation reports on output_dir).
pub(super) fn last_folder_name(output_dir: &std::path::Path) -> String {
    output_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

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
pub(super) fn whole(v: &Value) -> Result<u64, Bad> {
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

pub(super) fn count(v: &Value) -> Result<usize, Bad> {
    usize::try_from(whole(v)?).map_err(|_| Bad::Range)
}

/// A count for an `Option` field whose default follows another key.
pub(super) fn some_count(v: &Value) -> Result<Option<usize>, Bad> {
    count(v).map(Some)
}

pub(super) fn pixels(v: &Value) -> Result<u32, Bad> {
    u32::try_from(whole(v)?).map_err(|_| Bad::Range)
}

pub(super) fn float(v: &Value) -> Result<f64, Bad> {
    let x = number(v)?;
    if x.is_finite() {
        Ok(x)
    } else {
        Err(Bad::Range)
    }
}

/// Numbers written as a YAML list or as kohya's comma-separated text (`"2,4,4"`; an empty
/// item is 0, as sd-scripts reads its network_args).
fn numbers(v: &Value) -> Result<Vec<f64>, Bad> {
    match v {
        Value::Sequence(items) => items.iter().map(float).collect(),
        Value::String(s) => crate::lora::blocks::parse_weights(s).map_err(Bad::Other),
        Value::Number(_) => Ok(vec![float(v)?]),
        _ => Err(Bad::Type),
    }
}

/// Per-block weights or alphas: [`numbers`].
pub(super) fn float_list(v: &Value) -> Result<Vec<f64>, Bad> {
    numbers(v)
}

/// Per-block ranks: whole numbers ≥ 0, as a list or comma-separated text.
pub(super) fn count_list(v: &Value) -> Result<Vec<usize>, Bad> {
    numbers(v)?
        .into_iter()
        .map(|x| {
            if x.fract() != 0.0 || !(0.0..=1e9).contains(&x) {
                Err(Bad::Type)
            } else {
                Ok(x as usize)
            }
        })
        .collect()
}

/// `down_lr_weight` / `up_lr_weight`: a list of weights, comma-separated weights, or a
/// curve name with an optional `+base` (lora/blocks.rs).
pub(super) fn side_weights(v: &Value) -> Result<SideWeights, Bad> {
    match v {
        Value::Sequence(_) => numbers(v).map(SideWeights::List),
        Value::String(s) => SideWeights::parse(s).map_err(Bad::Other),
        Value::Number(_) => Err(Bad::Other(
            "is one number, which kohya reads as an unknown curve name and ignores: give the \
             12 weights of the blocks (a list, or \"1,1,0.5,...\"), or a curve such as \
             cosine"
                .into(),
        )),
        _ => Err(Bad::Type),
    }
}

pub(super) fn flag(v: &Value) -> Result<bool, Bad> {
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

pub(super) fn text(v: &Value) -> Result<String, Bad> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        _ => Err(Bad::Type),
    }
}

pub(super) fn path(v: &Value) -> Result<PathBuf, Bad> {
    let s = text(v)?;
    if s.trim().is_empty() {
        return Err(Bad::Other("is empty: give a path".into()));
    }
    Ok(PathBuf::from(s))
}

fn word(v: &Value) -> Result<String, Bad> {
    match v {
        Value::String(s) => Ok(s.trim().to_ascii_lowercase()),
        _ => Err(Bad::Type),
    }
}

/// One of a choice's words, or the nearest word in the error.
pub(super) fn choice<C: Choice>(v: &Value) -> Result<C, Bad> {
    let w = word(v)?;
    C::parse(&w).ok_or_else(|| Bad::Word(foreign::nearest_choice(&w, &choice_names::<C>())))
}

/// A sampler name; a kohya sampler lorafuse lacks is refused with the reason and which to use.
pub(super) fn sampler(v: &Value) -> Result<SamplerKind, Bad> {
    let w = word(v)?;
    match SamplerKind::not_implemented(&w) {
        Some(why) => Err(Bad::Other(format!("is not supported: {why}"))),
        None => choice(v),
    }
}

pub(super) fn mixed_precision(v: &Value) -> Result<MixedPrecision, Bad> {
    match v {
        Value::Bool(false) => Ok(MixedPrecision::No),
        _ => choice(v),
    }
}

pub(super) fn device(v: &Value) -> Result<Device, Bad> {
    let w = word(v)?;
    if w == "gpu" || w.starts_with("gpu:") {
        // One edit from `cpu`, but meant the opposite.
        return Err(Bad::Word(Some("cuda".into())));
    }
    Device::parse(&w)
        .ok_or_else(|| Bad::Word(foreign::nearest_choice(&w, &["auto", "cpu", "cuda"])))
}

pub(super) fn resolution(v: &Value) -> Result<Resolution, Bad> {
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

pub(super) fn warmup(v: &Value) -> Result<Warmup, Bad> {
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

pub(super) fn sample_prompts(v: &Value) -> Result<SamplePrompts, Bad> {
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
