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
//! The trainer has one image folder for now: one dataset with one subset and no
//! regularisation subset. Several subsets or datasets, `is_reg = true` and `metadata_file`
//! are refused as planned (issue 13), naming the key.

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

/// The dataset file's options as (key, value, origin) for the main configuration, the
/// subset's own first in precedence: `[general]`, then `[[datasets]]`, then the subset,
/// each later one replacing the earlier.
pub(crate) fn entries(
    path: &Path,
    from: &Origin,
) -> Result<Vec<(String, Value, Origin)>, ConfigError> {
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
    } else if datasets.len() > 1 {
        d.fail_key(
            "datasets",
            &format!(
                "has {} datasets: several datasets are planned (issue 13) but not supported yet; keep one [[datasets]]",
                datasets.len()
            ),
        );
    }
    // Every dataset and subset is checked, so one run names every problem; the first
    // dataset's first subset is the one read.
    let mut chosen: Option<(Mapping, Mapping)> = None;
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
        } else if subsets.len() > 1 && subsets.iter().filter(|s| !is_reg(s)).count() > 1 {
            d.fail_key(
                &format!("{here}.subsets"),
                &format!("has {} subsets: several image folders are planned (issue 13) but not supported yet; keep one [[datasets.subsets]], or put the folders as kohya's N_name subfolders of one train_data_dir", subsets.len()),
            );
        }
        for (m, subset) in subsets.iter().enumerate() {
            let here = format!("{here}.subsets[{m}]");
            let subset = d.mapping(subset, "[[datasets.subsets]]");
            d.check_level(&subset, "datasets.subsets", &[SUBSET_OPTIONS, SUBSET_ONLY]);
            if let Some(v) = subset.get("is_reg") {
                match flag(v) {
                    Ok(false) => {}
                    Ok(true) => d.fail(
                        &format!("{here}.is_reg"),
                        v,
                        "is not supported: regularisation subsets are planned (issue 13) but not supported yet; remove this subset",
                    ),
                    Err(_) => d.fail(&format!("{here}.is_reg"), v, "is not valid: must be true or false"),
                }
            }
            if !subset.contains_key("image_dir") {
                d.fail_key(
                    &format!("{here}.image_dir"),
                    "is missing: give the folder of the images (the images directly in it)",
                );
            }
            if let Some(v) = subset.get("metadata_file") {
                d.fail(
                    &format!("{here}.metadata_file"),
                    v,
                    "is not supported: kohya's fine-tuning metadata JSON is planned (issue 13) but not supported yet; use caption files beside the images (or a metadata.jsonl in image_dir)",
                );
            }
            if chosen.is_none() {
                chosen = Some((options.clone(), subset));
            }
        }
    }
    if let Some(e) = ConfigError::from_list(d.errors) {
        return Err(e);
    }

    let (dataset_options, subset) = chosen.unwrap_or_default();
    let mut out: Vec<(String, Value, Origin)> = Vec::new();
    for level in [general, dataset_options, subset] {
        for (k, v) in level {
            let key = key_text(&k);
            if key == "is_reg" {
                continue;
            }
            out.retain(|(old, _, _)| *old != key);
            out.push((key, v, origin.clone()));
        }
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

fn is_reg(subset: &Value) -> bool {
    subset
        .get("is_reg")
        .is_some_and(|v| matches!(flag(v), Ok(true)))
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
