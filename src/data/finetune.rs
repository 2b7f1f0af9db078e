//! kohya's fine-tuning metadata as a subset's image list (`metadata_file`, sd-scripts'
//! `FineTuningDataset`): the JSON that `finetune/merge_captions_to_metadata.py` writes,
//! `{"<image key>": {"caption": "...", "tags": "..."}}`, or its JSONL form, one
//! `{"image_path": ..., "caption": ..., "tags": ...}` per line. An image key is a path,
//! absolute or relative to the subset's folder, with or without its extension (the script
//! writes the file name without it). The caption is the caption, then "," and the tags (with
//! `enable_wildcard`, the tags after each line of the caption), as sd-scripts joins them.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::scan::{finish, Candidate, IMAGE_EXTENSIONS};
use super::{CaptionSource, DataError, DataOptions, Dataset};

/// The images `file` lists, captioned, checked as a folder scan checks them.
pub(super) fn scan(opts: &DataOptions, file: &Path) -> Result<Dataset, DataError> {
    let bad = |line: usize, problem: String| DataError::Metadata {
        path: file.to_path_buf(),
        line,
        problem,
    };
    let text = std::fs::read_to_string(file).map_err(|e| DataError::Read {
        path: file.to_path_buf(),
        reason: e.to_string(),
    })?;
    let jsonl = file
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("jsonl"));
    // (key, entry, line)
    let mut entries: Vec<(String, Value, usize)> = Vec::new();
    if jsonl {
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let v: Value =
                serde_json::from_str(line).map_err(|e| bad(n + 1, format!("is not JSON: {e}")))?;
            let key = v
                .get("image_path")
                .and_then(Value::as_str)
                .ok_or_else(|| bad(n + 1, "has no \"image_path\" text".into()))?;
            entries.push((key.to_string(), v.clone(), n + 1));
        }
    } else {
        let v: Value =
            serde_json::from_str(&text).map_err(|e| bad(e.line(), format!("is not JSON: {e}")))?;
        let Value::Object(map) = v else {
            return Err(bad(
                1,
                "must be a JSON object of image keys: {\"image\": {\"caption\": \"...\", \"tags\": \"...\"}}".into(),
            ));
        };
        for (key, entry) in map {
            let quoted = serde_json::to_string(&key).unwrap_or_default();
            let line = text
                .find(&quoted)
                .map_or(1, |at| 1 + text[..at].matches('\n').count());
            entries.push((key, entry, line));
        }
    }
    if entries.is_empty() {
        return Err(bad(1, "lists no images".into()));
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));

    let root = opts.train_data_dir.clone();
    let mut problems = Vec::new();
    let mut candidates = Vec::new();
    for (key, entry, line) in entries {
        let text_of = |field: &str| match entry.get(field) {
            None | Some(Value::Null) => Ok(String::new()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(other) => Err(bad(
                line,
                format!("image \"{key}\": \"{field}\" must be text, not {other}"),
            )),
        };
        let (caption, tags) = match (text_of("caption"), text_of("tags")) {
            (Ok(c), Ok(t)) => (c, t),
            (Err(e), _) | (_, Err(e)) => {
                problems.push(e);
                continue;
            }
        };
        let Some(path) = find_image(&root, &key) else {
            problems.push(bad(
                line,
                format!(
                    "image \"{key}\": no such image (looked for {} with and without .png/.jpg/.jpeg/.webp/.bmp)",
                    root.join(&key).display()
                ),
            ));
            continue;
        };
        candidates.push(Candidate {
            path,
            repeats: opts.num_repeats.max(1),
            caption: join_tags(&caption, &tags, opts.enable_wildcard),
            source: CaptionSource::Metadata {
                path: file.to_path_buf(),
                line,
            },
        });
    }
    let all_images = candidates.iter().map(|c| c.path.clone()).collect();
    finish(opts, root, candidates, all_images, problems, Vec::new())
}

/// The image a key names: the path itself (relative to `root` unless absolute), else with
/// one of the image extensions added.
fn find_image(root: &Path, key: &str) -> Option<PathBuf> {
    let base = root.join(key);
    if base.is_file() {
        return Some(base);
    }
    IMAGE_EXTENSIONS.iter().find_map(|ext| {
        let p = PathBuf::from(format!("{}.{ext}", base.display()));
        p.is_file().then_some(p)
    })
}

/// sd-scripts' caption of a fine-tuning image: caption + "," + tags (either alone when the
/// other is empty); with wildcards, the tags (one line) after each non-empty caption line.
fn join_tags(caption: &str, tags: &str, wildcard: bool) -> String {
    if tags.is_empty() {
        return caption.to_string();
    }
    if wildcard {
        let tags = tags.replace('\n', ",");
        let lines: Vec<String> = caption
            .split('\n')
            .filter(|l| !l.trim().is_empty())
            .map(|l| format!("{l},{tags}"))
            .collect();
        return lines.join("\n");
    }
    if caption.is_empty() {
        tags.to_string()
    } else {
        format!("{caption},{tags}")
    }
}
