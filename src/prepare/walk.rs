//! The input folder as `prepare` sees it: every image (in this folder and its subfolders, so
//! kohya's `10_name/` repeat folders keep their names), the caption sidecars beside each, the
//! captions of a `metadata.jsonl`/`metadata.csv` for images without a sidecar, and the files
//! that are neither. Names starting with a dot (`.DS_Store`, our own temporary files) are
//! skipped. Everything is sorted by path, so the first of two duplicates is always the same.

use std::fs;
use std::path::{Path, PathBuf};

use super::error::PrepareError;
use crate::data::metadata::{normalize_key, read_metadata};
use crate::data::scan::{is_image, METADATA_NAMES};

/// One input image and what travels with it.
#[derive(Clone, Debug)]
pub struct Job {
    /// Path relative to the input folder.
    pub rel: PathBuf,
    /// Sidecar captions: (extension with its dot, file path).
    pub sidecars: Vec<(String, PathBuf)>,
    /// The caption of a metadata file, when no sidecar exists.
    pub metadata_caption: Option<String>,
}

/// The input folder's contents.
#[derive(Debug, Default)]
pub struct Listing {
    pub jobs: Vec<Job>,
    /// Files that are neither images, captions of an image, nor metadata (relative paths).
    pub ignored: Vec<PathBuf>,
    /// Problems reading a metadata file (its captions are then not carried).
    pub notes: Vec<String>,
}

fn split_name(name: &str) -> (&str, String) {
    match name.rfind('.') {
        Some(i) if i > 0 => (&name[..i], name[i..].to_ascii_lowercase()),
        _ => (name, String::new()),
    }
}

/// Lists `input` recursively; `caption_exts` are sidecar extensions with their dots.
pub fn list(input: &Path, caption_exts: &[String]) -> Result<Listing, PrepareError> {
    let mut out = Listing::default();
    walk(input, Path::new(""), caption_exts, &mut out)?;
    if out.jobs.is_empty() {
        return Err(PrepareError::NoImages {
            path: input.to_path_buf(),
        });
    }
    Ok(out)
}

fn walk(
    root: &Path,
    rel: &Path,
    caption_exts: &[String],
    out: &mut Listing,
) -> Result<(), PrepareError> {
    let dir = root.join(rel);
    let listing_error = |e: std::io::Error| PrepareError::Folder {
        path: dir.clone(),
        action: "list it",
        reason: e.to_string(),
    };
    let mut files = Vec::new();
    let mut subdirs = Vec::new();
    for entry in fs::read_dir(&dir).map_err(listing_error)? {
        let entry = entry.map_err(listing_error)?;
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            out.ignored.push(rel.join(entry.file_name()));
            continue;
        };
        if name.starts_with('.') {
            continue;
        }
        // Follows symlinks, as a user's folder of links to pictures expects.
        if entry.path().is_dir() {
            subdirs.push(name);
        } else {
            files.push(name);
        }
    }
    files.sort();
    subdirs.sort();

    let images: Vec<&String> = files.iter().filter(|n| is_image(n)).collect();
    let metadata = METADATA_NAMES
        .iter()
        .find(|m| files.iter().any(|f| f == *m))
        .and_then(|m| match read_metadata(&dir.join(m)) {
            Ok(meta) => Some(meta),
            Err(problems) => {
                let first = problems.first().map(|p| p.to_string()).unwrap_or_default();
                out.notes.push(format!(
                    "{}: not read, its captions are not carried: {first}",
                    rel.join(m).display()
                ));
                None
            }
        });
    let mut used = vec![false; files.len()];
    for (i, name) in files.iter().enumerate() {
        if METADATA_NAMES.contains(&name.as_str()) || is_image(name) {
            used[i] = true;
        }
    }
    for image in images {
        let (stem, _) = split_name(image);
        let mut sidecars = Vec::new();
        for (i, name) in files.iter().enumerate() {
            let (s, ext) = split_name(name);
            if s == stem && caption_exts.contains(&ext) {
                sidecars.push((ext, dir.join(name)));
                used[i] = true;
            }
        }
        let metadata_caption = if sidecars.is_empty() {
            metadata
                .as_ref()
                .and_then(|m| m.get(&normalize_key(image)))
                .map(|row| row.text.clone())
        } else {
            None
        };
        out.jobs.push(Job {
            rel: rel.join(image),
            sidecars,
            metadata_caption,
        });
    }
    for (i, name) in files.iter().enumerate() {
        if !used[i] {
            out.ignored.push(rel.join(name));
        }
    }
    for sub in subdirs {
        walk(root, &rel.join(sub), caption_exts, out)?;
    }
    Ok(())
}
