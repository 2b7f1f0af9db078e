//! sd-scripts' dataset config (`--dataset_config`, TOML or JSON), read into the keys of the
//! main configuration.
//!
//! ```text
//! [general]                  options for every dataset and subset
//! [[datasets]]               one dataset: resolution, batch_size, buckets, + subset options
//!   [[datasets.subsets]]     one image folder: image_dir, num_repeats, class_tokens, is_reg,
//!                            caption options, augmentations
//! ```
//!
//! A subset's option is its own, else its dataset's, else `[general]`'s (sd-scripts'
//! precedence); the values found take precedence over the main config's, as sd-scripts gives
//! the dataset file priority over the command line, and `image_dir` becomes `train_data_dir`.
//! Each subset is read as a whole configuration (`TrainConfig::subsets`); the first training
//! subset's values are the main configuration's.

use std::path::Path;

use yaml_serde::{Mapping, Value};

use super::error::{ConfigError, Origin};
use super::kohya;
use super::parse::{flag, read_config_file, render};

/// Options of a dataset, set in `[general]` or `[[datasets]]`, not in a subset.
const DATASET_OPTIONS: &[&str] = &[
    "batch_size",
    "bucket_no_upscale",
    "bucket_reso_steps",
    "enable_bucket",
    "max_bucket_reso",
    "min_bucket_reso",
    "resolution",
    "validation_seed",
    "validation_split",
];

/// Options of a subset, set anywhere.
const SUBSET_OPTIONS: &[&str] = &[
    "alpha_mask",
    "cache_info",
    "caption_dropout_every_n_epochs",
    "caption_dropout_rate",
    "caption_extension",
    "caption_prefix",
    "caption_separator",
    "caption_suffix",
    "caption_tag_dropout_rate",
    "color_aug",
    "custom_attributes",
    "enable_wildcard",
    "face_crop_aug_range",
    "flip_aug",
    "keep_tokens",
    "keep_tokens_separator",
    "num_repeats",
    "random_crop",
    "resize_interpolation",
    "secondary_separator",
    "shuffle_caption",
    "token_warmup_min",
    "token_warmup_step",
];

/// Options only a `[[datasets.subsets]]` can set.
const SUBSET_ONLY: &[&str] = &["image_dir", "class_tokens", "is_reg", "metadata_file"];

/// One `[[datasets.subsets]]`: its options with their precedence resolved.
pub(crate) struct SubsetEntries {
    /// Its `[[datasets]]`, in file order.
    pub dataset: usize,
    pub is_reg: bool,
    /// (key, value, origin) for the main configuration: `[general]`'s, then the dataset's,
    /// then the subset's, each later one replacing the earlier (`is_reg` left out).
    pub pairs: Vec<(String, Value, Origin)>,
}

/// Every subset of the dataset file, in file order, the first training subset (not
/// `is_reg`) first: the main configuration is read with its values.
pub(crate) fn entries(path: &Path, from: &Origin) -> Result<Vec<SubsetEntries>, ConfigError> {
    let bad = |problem: String| ConfigError::BadValue {
        origin: from.clone(),
        key: "dataset_config".into(),
        value: format!("{:?}", path.display().to_string()),
        problem,
    };
    let text = read_config_file(path).map_err(|e| match e {
        ConfigError::Read { source, .. } => bad(format!("cannot be read: {source}")),
        other => other,
    })?;
    let origin = Origin::File(path.to_path_buf());
    let doc = parse(&text, path, &origin)?;
    let mut d = Reading {
        origin: origin.clone(),
        errors: Vec::new(),
    };
    let top = d.mapping(&doc, "the file");
    let mut general = Mapping::new();
    let mut datasets = Vec::new();
    for (k, v) in top {
        match key_text(&k).as_str() {
            "general" => general = d.mapping(&v, "[general]"),
            "datasets" => match v {
                Value::Sequence(items) => datasets = items,
                other => d.fail(
                    "datasets",
                    &other,
                    "is not valid: it must be a list of [[datasets]] tables",
                ),
            },
            other => d.fail(
                other,
                &v,
                "is not a section of a dataset config: the file has [general] and [[datasets]] (with [[datasets.subsets]])",
            ),
        }
    }
    d.check_level(&general, "general", &[DATASET_OPTIONS, SUBSET_OPTIONS]);

    if datasets.is_empty() {
        d.fail_key(
            "datasets",
            "is missing: give one [[datasets]] with a [[datasets.subsets]] whose image_dir is the image folder",
        );
    }
    let mut out = Vec::new();
    for (n, dataset) in datasets.iter().enumerate() {
        let here = format!("datasets[{n}]");
        let mut options = Mapping::new();
        let mut subsets = Vec::new();
        for (k, v) in d.mapping(dataset, "[[datasets]]") {
            if key_text(&k) == "subsets" {
                match v {
                    Value::Sequence(items) => subsets = items,
                    other => d.fail(
                        &format!("{here}.subsets"),
                        &other,
                        "is not valid: it must be a list of [[datasets.subsets]] tables",
                    ),
                }
            } else {
                options.insert(k, v);
            }
        }
        d.check_level(&options, "datasets", &[DATASET_OPTIONS, SUBSET_OPTIONS]);
        if subsets.is_empty() {
            d.fail_key(
                &format!("{here}.subsets"),
                "is missing: give the dataset one [[datasets.subsets]] with image_dir, the image folder",
            );
        }
        for (m, subset) in subsets.iter().enumerate() {
            let here = format!("{here}.subsets[{m}]");
            let subset = d.mapping(subset, "[[datasets.subsets]]");
            d.check_level(&subset, "datasets.subsets", &[SUBSET_OPTIONS, SUBSET_ONLY]);
            let mut reg = false;
            if let Some(v) = subset.get("is_reg") {
                match flag(v) {
                    Ok(b) => reg = b,
                    Err(_) => d.fail(
                        &format!("{here}.is_reg"),
                        v,
                        "is not valid: must be true or false",
                    ),
                }
            }
            if !subset.contains_key("image_dir") && !subset.contains_key("metadata_file") {
                d.fail_key(
                    &format!("{here}.image_dir"),
                    "is missing: give the folder of the images (the images directly in it), or a metadata_file",
                );
            }
            let mut pairs: Vec<(String, Value, Origin)> = Vec::new();
            // A metadata_file without image_dir (its keys absolute paths): its folder.
            if let (None, Some(Value::String(md))) =
                (subset.get("image_dir"), subset.get("metadata_file"))
            {
                let folder = Path::new(md).parent().unwrap_or(Path::new("."));
                let folder = if folder.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    folder
                };
                pairs.push((
                    "image_dir".into(),
                    Value::String(folder.display().to_string()),
                    origin.clone(),
                ));
            }
            for level in [&general, &options, &subset] {
                for (k, v) in level {
                    let key = key_text(k);
                    if key == "is_reg" {
                        continue;
                    }
                    pairs.retain(|(old, _, _)| *old != key);
                    pairs.push((key, v.clone(), origin.clone()));
                }
            }
            out.push(SubsetEntries {
                dataset: n,
                is_reg: reg,
                pairs,
            });
        }
    }
    if !out.is_empty() && out.iter().all(|s| s.is_reg) {
        d.fail_key(
            "datasets",
            "has only regularisation subsets (is_reg = true): give at least one subset of training images",
        );
    }
    if let Some(e) = ConfigError::from_list(d.errors) {
        return Err(e);
    }
    if let Some(first) = out.iter().position(|s| !s.is_reg) {
        let main = out.remove(first);
        out.insert(0, main);
    }
    Ok(out)
}

/// The document as a YAML value: JSON for a `.json` file (or one that starts with `{`), TOML
/// otherwise, as sd-scripts reads it.
fn parse(text: &str, path: &Path, origin: &Origin) -> Result<Value, ConfigError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let json = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"))
        || text.trim_start().starts_with('{');
    if json {
        serde_json::from_str::<Value>(text).map_err(|e| ConfigError::Syntax {
            origin: origin.clone(),
            line: Some(e.line()),
            column: Some(e.column()),
            message: format!("JSON syntax error: {e}"),
        })
    } else {
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| kohya::syntax_error(&e, text, origin))?;
        Ok(kohya::to_yaml(toml::Value::Table(table)))
    }
}

fn key_text(k: &Value) -> String {
    match k {
        Value::String(s) => s.clone(),
        other => render(other),
    }
}

/// The problems found reading one dataset file.
struct Reading {
    origin: Origin,
    errors: Vec<ConfigError>,
}

impl Reading {
    fn fail(&mut self, key: &str, value: &Value, problem: &str) {
        self.errors.push(ConfigError::BadValue {
            origin: self.origin.clone(),
            key: key.to_string(),
            value: render(value),
            problem: problem.to_string(),
        });
    }

    /// A problem with a key, not with a value.
    fn fail_key(&mut self, key: &str, problem: &str) {
        self.errors.push(ConfigError::Syntax {
            origin: self.origin.clone(),
            line: None,
            column: None,
            message: format!("{key} {problem}"),
        });
    }

    fn mapping(&mut self, v: &Value, what: &str) -> Mapping {
        match v {
            Value::Mapping(m) => m.clone(),
            other => {
                self.errors.push(ConfigError::Syntax {
                    origin: self.origin.clone(),
                    line: None,
                    column: None,
                    message: format!(
                        "{what} must be a table of `key = value` options, but it is {}",
                        render(other)
                    ),
                });
                Mapping::new()
            }
        }
    }

    /// Every key of a level is an option that level may set.
    fn check_level(&mut self, level: &Mapping, name: &str, allowed: &[&[&str]]) {
        for (k, v) in level {
            let key = key_text(k);
            if allowed.iter().any(|list| list.contains(&key.as_str())) {
                continue;
            }
            let problem = if SUBSET_ONLY.contains(&key.as_str()) {
                format!("is an option of [[datasets.subsets]], not of [{name}]: move it there")
            } else if DATASET_OPTIONS.contains(&key.as_str()) {
                format!("is an option of a dataset ([[datasets]] or [general]), not of [[{name}]]: move it there")
            } else {
                "is not a dataset config option (sd-scripts refuses it too): put it in the main config, or remove it".to_string()
            };
            self.fail(&key, v, &problem);
        }
    }
}
