//! `scan`: find the images of a training folder, pair them with captions, decode every one,
//! assign buckets and hold out the validation split. Every problem is collected and returned
//! together; nothing is printed.
//!
//! Every image is fully decoded here, not only its header: a truncated or corrupt file would
//! otherwise surface hours into a run (or in the middle of latent caching). Decoding runs in
//! parallel (rayon) and costs about what the first epoch's (or the latent cache's) decode
//! costs; DEVELOPERS.md has the measurement.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::bucket::{make_bucket_resolutions, Bucketing};
use super::error::{DataError, DataWarning, MAX_COVER_RATIO};
use super::metadata::{normalize_key, read_metadata, Metadata};
use super::pixels::decode_image;
use super::{caption, hash, CaptionSource, DataOptions, Dataset, Item};
use crate::rng::Rng;

/// Image extensions, compared without regard to letter case (kohya's list without the
/// optional avif/jxl plugins).
pub const IMAGE_EXTENSIONS: [&str; 5] = ["png", "jpg", "jpeg", "webp", "bmp"];

pub(crate) const METADATA_NAMES: [&str; 2] = ["metadata.jsonl", "metadata.csv"];

/// Mixed into the seed for the validation split, so it does not share a stream with the
/// training RNG seeded by the same number.
const SPLIT_SALT: u64 = 0x7661_6c69_6461_7465; // "validate"

pub(crate) fn is_image(name: &str) -> bool {
    Path::new(name)
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

fn stem(name: &str) -> &str {
    Path::new(name)
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or(name)
}

/// The caption extension with its leading dot.
fn caption_ext(opts: &DataOptions) -> String {
    let e = opts.caption_extension.trim();
    if e.starts_with('.') {
        e.to_string()
    } else {
        format!(".{e}")
    }
}

/// Option checks, all at once.
pub(crate) fn check_options(o: &DataOptions) -> Vec<DataError> {
    let mut p = Vec::new();
    let mut bad = |name: &'static str, value: String, expected: &str| {
        p.push(DataError::Option {
            name,
            value,
            expected: expected.to_string(),
        })
    };
    let (w, h) = o.resolution;
    if w == 0 || h == 0 || w % 8 != 0 || h % 8 != 0 {
        bad(
            "resolution",
            format!("{w},{h}"),
            "width and height must be positive multiples of 8 (the VAE downsamples by 8), \
             e.g. 512,512",
        );
    }
    if o.caption_extension
        .trim()
        .trim_start_matches('.')
        .is_empty()
    {
        bad(
            "caption_extension",
            format!("\"{}\"", o.caption_extension),
            "must name an extension, e.g. \".txt\"",
        );
    }
    if !(0.0..=1.0).contains(&o.caption_dropout_rate) {
        bad(
            "caption_dropout_rate",
            o.caption_dropout_rate.to_string(),
            "must be between 0 and 1",
        );
    }
    if !(0.0..1.0).contains(&o.validation_split) {
        bad(
            "validation_split",
            o.validation_split.to_string(),
            "must be at least 0 and below 1 (a fraction of the images)",
        );
    }
    if o.enable_bucket {
        let s = o.bucket_reso_steps;
        if s == 0 || !s.is_multiple_of(8) {
            bad(
                "bucket_reso_steps",
                s.to_string(),
                "must be a positive multiple of 8 (64 is kohya's default)",
            );
        } else if !o.bucket_no_upscale {
            let (min, max) = (o.min_bucket_reso, o.max_bucket_reso);
            if min == 0 || min % s != 0 || max % s != 0 {
                bad(
                    "min_bucket_reso/max_bucket_reso",
                    format!("{min}/{max}"),
                    &format!("must be positive multiples of bucket_reso_steps = {s}"),
                );
            }
            if min > w.min(h) {
                bad(
                    "min_bucket_reso",
                    min.to_string(),
                    &format!("must not exceed the smaller side of resolution {w},{h}"),
                );
            }
            if max < w.max(h) {
                bad(
                    "max_bucket_reso",
                    max.to_string(),
                    &format!("must be at least the larger side of resolution {w},{h}"),
                );
            }
        }
    }
    p
}

/// The bucket rule the options ask for.
pub(crate) fn bucketing(o: &DataOptions) -> Bucketing {
    if !o.enable_bucket {
        Bucketing::Predefined(vec![o.resolution])
    } else if o.bucket_no_upscale {
        Bucketing::NoUpscale {
            max_area: o.resolution.0 * o.resolution.1,
            steps: o.bucket_reso_steps,
        }
    } else {
        Bucketing::Predefined(make_bucket_resolutions(
            o.resolution,
            o.min_bucket_reso,
            o.max_bucket_reso,
            o.bucket_reso_steps,
        ))
    }
}

/// One folder's files, by name, sorted.
struct Folder {
    dir: PathBuf,
    /// Name of the folder under train_data_dir; empty for train_data_dir itself.
    rel: String,
    repeats: usize,
    images: Vec<String>,
    captions: Vec<String>,
    metadata: Option<PathBuf>,
}

/// Sorted (name, is_dir) entries of `dir`; names that are not UTF-8 are kept lossily.
fn list_dir(dir: &Path) -> Result<Vec<(String, bool)>, DataError> {
    let read_err = |e: std::io::Error| DataError::ReadFolder {
        path: dir.to_path_buf(),
        reason: e.to_string(),
    };
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(read_err)? {
        let entry = entry.map_err(read_err)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        // Follow symlinks; an entry that vanished or is a dangling link counts as a file.
        let is_dir = fs::metadata(entry.path()).is_ok_and(|m| m.is_dir());
        out.push((name, is_dir));
    }
    out.sort();
    Ok(out)
}

/// Parse "N_name" (or "N") into N, as kohya's `int(name.split("_")[0])`.
/// The class tokens that caption an image without a caption file in folder `rel`: the
/// name after `N_` of an `N_<class tokens>` subfolder, or the `class_tokens` option for
/// train_data_dir itself.
fn class_tokens(rel: &str, opts: &DataOptions) -> Option<String> {
    if rel.is_empty() {
        return opts.class_tokens.clone().filter(|t| !t.trim().is_empty());
    }
    let (_, name) = rel.split_once('_')?;
    let name = name.trim();
    (!name.is_empty()).then(|| name.to_string())
}

fn parse_repeats(name: &str) -> Option<usize> {
    let head = name.split('_').next().unwrap_or("");
    if head.is_empty() || !head.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    head.parse().ok()
}

fn read_folder(
    dir: PathBuf,
    rel: String,
    repeats: usize,
    ext: &str,
    problems: &mut Vec<DataError>,
    warnings: &mut Vec<DataWarning>,
    subdirs: Option<&mut Vec<(String, PathBuf)>>,
) -> Folder {
    let mut folder = Folder {
        dir,
        rel,
        repeats,
        images: Vec::new(),
        captions: Vec::new(),
        metadata: None,
    };
    let entries = match list_dir(&folder.dir) {
        Ok(e) => e,
        Err(e) => {
            problems.push(e);
            return folder;
        }
    };
    let mut subdirs = subdirs;
    let mut metadata_files = Vec::new();
    for (name, is_dir) in entries {
        if name.starts_with('.') {
            continue; // hidden files and folders (.DS_Store, .ipynb_checkpoints)
        }
        let path = folder.dir.join(&name);
        if is_dir {
            match subdirs.as_deref_mut() {
                Some(list) => list.push((name, path)),
                None => warnings.push(DataWarning::NestedFolder { path }),
            }
        } else if METADATA_NAMES.iter().any(|m| name.eq_ignore_ascii_case(m)) {
            metadata_files.push(path);
        } else if is_image(&name) {
            folder.images.push(name);
        } else if name.len() > ext.len() && name.ends_with(ext) {
            folder.captions.push(name);
        }
    }
    match metadata_files.len() {
        0 => {}
        1 => folder.metadata = metadata_files.pop(),
        _ => problems.push(DataError::TwoMetadataFiles {
            folder: folder.dir.clone(),
        }),
    }
    folder
}

/// First line of a caption file, trimmed (a warning for extra lines); with `all_lines`
/// (kohya's enable_wildcard), every non-empty line, trimmed, joined with "\n".
fn read_caption(
    path: &Path,
    all_lines: bool,
    warnings: &mut Vec<DataWarning>,
) -> Result<String, DataError> {
    let bytes = fs::read(path).map_err(|e| DataError::Read {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes);
    let text = std::str::from_utf8(bytes).map_err(|_| DataError::CaptionNotUtf8 {
        path: path.to_path_buf(),
    })?;
    if all_lines {
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        return Ok(lines.join("\n"));
    }
    let lines = text.lines().filter(|l| !l.trim().is_empty()).count();
    if lines > 1 {
        warnings.push(DataWarning::MultiLineCaption {
            path: path.to_path_buf(),
            lines,
        });
    }
    Ok(text.lines().next().unwrap_or("").trim().to_string())
}

/// An image's oriented size and the XXH64 of its bytes.
type Decoded = ((usize, usize), u64);

/// An image found and captioned, before decoding.
pub(super) struct Candidate {
    pub path: PathBuf,
    pub repeats: usize,
    pub caption: String,
    pub source: CaptionSource,
}

/// Scan `opts.train_data_dir`: see the module and [`super`] docs. Returns every problem at
/// once ([`DataError::Many`] when there are several).
pub fn scan(opts: &DataOptions) -> Result<Dataset, DataError> {
    super::scan_sources(&[super::Source {
        opts: opts.clone(),
        is_reg: false,
        dataset: 0,
    }])
}

/// One folder (with its N_name subfolders), as [`scan`]; its items have source 0.
pub(crate) fn scan_folder(opts: &DataOptions) -> Result<Dataset, DataError> {
    if let Some(file) = &opts.metadata_file {
        return super::finetune::scan(opts, file);
    }
    if let Some(e) = DataError::collect(check_options(opts)) {
        return Err(e);
    }
    let root = opts.train_data_dir.clone();
    match fs::metadata(&root) {
        Err(_) => return Err(DataError::FolderMissing { path: root }),
        Ok(m) if !m.is_dir() => return Err(DataError::NotAFolder { path: root }),
        Ok(_) => {}
    }
    let ext = caption_ext(opts);
    let mut problems = Vec::new();
    let mut warnings = Vec::new();

    // Folders: train_data_dir itself (num_repeats), then its N_name subfolders.
    let mut subdirs = Vec::new();
    let mut folders = vec![read_folder(
        root.clone(),
        String::new(),
        opts.num_repeats.max(1),
        &ext,
        &mut problems,
        &mut warnings,
        Some(&mut subdirs),
    )];
    if let Some(pos) = problems
        .iter()
        .position(|p| matches!(p, DataError::ReadFolder { .. }))
    {
        return Err(problems.swap_remove(pos));
    }
    let mut ignored = Vec::new();
    for (name, path) in subdirs {
        match parse_repeats(&name) {
            Some(0) => warnings.push(DataWarning::ZeroRepeats { path }),
            Some(n) => folders.push(read_folder(
                path,
                name,
                n,
                &ext,
                &mut problems,
                &mut warnings,
                None,
            )),
            None => {
                warnings.push(DataWarning::IgnoredFolder {
                    path,
                    name: name.clone(),
                });
                ignored.push(name);
            }
        }
    }

    // Metadata files, each parsed once.
    let mut metadata: HashMap<PathBuf, Metadata> = HashMap::new();
    for f in &folders {
        if let Some(m) = &f.metadata {
            match read_metadata(m) {
                Ok(md) => {
                    metadata.insert(m.clone(), md);
                }
                Err(errs) => problems.extend(errs),
            }
        }
    }
    let root_metadata = folders[0].metadata.clone();
    // (metadata path, key) pairs that matched an image.
    let mut used_rows: HashSet<(PathBuf, String)> = HashSet::new();

    // Pair captions.
    let mut candidates = Vec::new();
    for f in &folders {
        let image_stems: HashSet<&str> = f.images.iter().map(|n| stem(n)).collect();
        let caption_names: HashSet<&str> = f.captions.iter().map(String::as_str).collect();
        for name in &f.images {
            let path = f.dir.join(name);
            let sidecar_name = format!("{}{ext}", stem(name));
            let sidecar = f.dir.join(&sidecar_name);
            // Metadata lookups: this folder's file by name, then train_data_dir's by
            // "folder/name".
            let mut lookups = Vec::new();
            if let Some(m) = &f.metadata {
                lookups.push((m.clone(), normalize_key(name)));
            }
            if !f.rel.is_empty() {
                if let Some(m) = &root_metadata {
                    lookups.push((m.clone(), normalize_key(&format!("{}/{name}", f.rel))));
                }
            }
            let row = lookups.iter().find_map(|(m, key)| {
                metadata
                    .get(m)
                    .and_then(|md| md.get(key))
                    .map(|row| (m.clone(), key.clone(), row.clone()))
            });
            if let Some((m, key, _)) = &row {
                used_rows.insert((m.clone(), key.clone()));
            }
            let (caption, source) = if caption_names.contains(sidecar_name.as_str()) {
                match read_caption(&sidecar, opts.enable_wildcard, &mut warnings) {
                    Ok(text) => {
                        if let Some((m, _, r)) = &row {
                            if r.text.trim() != text {
                                warnings.push(DataWarning::CaptionConflict {
                                    image: path.clone(),
                                    sidecar: sidecar.clone(),
                                    metadata: m.clone(),
                                    line: r.line,
                                });
                            }
                        }
                        (text, CaptionSource::Sidecar(sidecar))
                    }
                    Err(e) => {
                        problems.push(e);
                        continue;
                    }
                }
            } else if let Some((m, _, r)) = row {
                (
                    r.text.trim().to_string(),
                    CaptionSource::Metadata {
                        path: m,
                        line: r.line,
                    },
                )
            } else {
                // The metadata file nearest the image, if any, is the one to name.
                match lookups.first() {
                    Some((m, key)) if metadata.contains_key(m) => {
                        problems.push(DataError::NoMetadataRow {
                            image: path,
                            metadata: m.clone(),
                            key: key.clone(),
                            sidecar,
                        })
                    }
                    Some(_) => {} // the metadata file itself is broken: reported above
                    None => match class_tokens(&f.rel, opts) {
                        Some(tokens) => candidates.push(Candidate {
                            path,
                            repeats: f.repeats,
                            caption: tokens,
                            source: CaptionSource::ClassTokens,
                        }),
                        None => problems.push(DataError::MissingCaption {
                            image: path,
                            expected: sidecar,
                            caption_extension: ext.clone(),
                        }),
                    },
                }
                continue;
            };
            if caption.is_empty() {
                let origin = match &source {
                    CaptionSource::Sidecar(p) => format!("{} is empty", p.display()),
                    CaptionSource::Metadata { path, line } => {
                        format!("{}, line {line} has an empty text", path.display())
                    }
                    CaptionSource::ClassTokens => "its class tokens are empty".to_string(),
                };
                warnings.push(DataWarning::EmptyCaption {
                    image: path.clone(),
                    origin,
                });
            }
            candidates.push(Candidate {
                path,
                repeats: f.repeats,
                caption,
                source,
            });
        }
        for c in &f.captions {
            let s = &c[..c.len() - ext.len()];
            if !image_stems.contains(s) {
                warnings.push(DataWarning::OrphanCaption {
                    path: f.dir.join(c),
                    stem: s.to_string(),
                });
            }
        }
    }
    // Metadata rows that matched nothing, in file then line order.
    let mut md_paths: Vec<&PathBuf> = metadata.keys().collect();
    md_paths.sort();
    for m in md_paths {
        for row in &metadata[m].rows {
            if !used_rows.contains(&(m.clone(), normalize_key(&row.file_name))) {
                warnings.push(DataWarning::OrphanMetadataRow {
                    metadata: m.clone(),
                    line: row.line,
                    file_name: row.file_name.clone(),
                });
            }
        }
    }

    let n_images: usize = folders.iter().map(|f| f.images.len()).sum();
    if n_images == 0 {
        let hint = if ignored.is_empty() {
            String::new()
        } else {
            format!(
                " Ignored subfolders without a repeat count: {}; rename them like 10_{}.",
                ignored.join(", "),
                ignored[0]
            )
        };
        let empty = DataError::Empty { path: root, hint };
        if problems.is_empty() {
            return Err(empty);
        }
        problems.insert(0, empty);
        return Err(DataError::Many(problems));
    }

    // Decode everything (also the images whose caption is missing: all problems at once).
    let mut all_images: Vec<PathBuf> = folders
        .iter()
        .flat_map(|f| f.images.iter().map(|n| f.dir.join(n)))
        .collect();
    all_images.sort();
    finish(opts, root, candidates, all_images, problems, warnings)
}

/// Decodes `all_images` (also those whose caption is missing: all problems at once), assigns
/// buckets to the captioned `candidates`, and holds out the validation split.
pub(super) fn finish(
    opts: &DataOptions,
    root: PathBuf,
    candidates: Vec<Candidate>,
    mut all_images: Vec<PathBuf>,
    mut problems: Vec<DataError>,
    mut warnings: Vec<DataWarning>,
) -> Result<Dataset, DataError> {
    all_images.sort();
    all_images.dedup();
    let decoded: Vec<(PathBuf, Result<Decoded, DataError>)> = all_images
        .into_par_iter()
        .map(|path| {
            let r = fs::read(&path)
                .map_err(|e| DataError::Read {
                    path: path.clone(),
                    reason: e.to_string(),
                })
                .and_then(|bytes| {
                    let img = decode_image(&path, &bytes)?;
                    Ok((
                        (img.width() as usize, img.height() as usize),
                        hash::xxh64(&bytes, 0),
                    ))
                });
            (path, r)
        })
        .collect();

    let bucketing = bucketing(opts);
    let mut decode_problems = Vec::new();
    let mut ok = HashMap::new();
    for (path, r) in decoded {
        match r {
            Ok(v) => {
                ok.insert(path, v);
            }
            Err(e) => decode_problems.push(e),
        }
    }
    let mut items = Vec::new();
    for c in candidates {
        let Some((size, file_hash)) = ok.get(&c.path) else {
            continue;
        };
        let choice = bucketing.select(*size);
        if choice.bucket.0 == 0 || choice.bucket.1 == 0 {
            problems.push(DataError::TooSmallForBucket {
                path: c.path,
                width: size.0,
                height: size.1,
                bucket_width: choice.bucket.0,
                bucket_height: choice.bucket.1,
                steps: opts.bucket_reso_steps,
            });
            continue;
        }
        if choice.resized.0 * choice.resized.1 > MAX_COVER_RATIO * choice.bucket.0 * choice.bucket.1
        {
            problems.push(DataError::ExtremeAspect {
                path: c.path,
                width: size.0,
                height: size.1,
                bucket_width: choice.bucket.0,
                bucket_height: choice.bucket.1,
            });
            continue;
        }
        let mut item = Item {
            path: c.path,
            caption: c.caption,
            caption_source: c.source,
            repeats: c.repeats,
            source: 0,
            dataset: 0,
            is_reg: false,
            size: *size,
            bucket: choice.bucket,
            resized: choice.resized,
            file_hash: *file_hash,
            content_hash: 0,
        };
        item.compute_content_hash(opts.random_crop);
        items.push(item);
    }
    problems.extend(decode_problems);
    if let Some(e) = DataError::collect(problems) {
        return Err(e);
    }
    items.sort_by(|a, b| a.path.cmp(&b.path));

    // Validation split over distinct images.
    let mut validation = Vec::new();
    if opts.validation_split > 0.0 {
        let n = items.len();
        if n < 2 {
            warnings.push(DataWarning::NoValidation {
                split: opts.validation_split,
                images: n,
            });
        } else {
            let n_val = ((opts.validation_split * n as f64).round() as usize).clamp(1, n - 1);
            let mut order: Vec<usize> = (0..n).collect();
            caption::shuffle(&mut order, &mut Rng::new(opts.seed ^ SPLIT_SALT));
            let held: HashSet<usize> = order[..n_val].iter().copied().collect();
            let mut train = Vec::with_capacity(n - n_val);
            for (i, it) in items.into_iter().enumerate() {
                if held.contains(&i) {
                    validation.push(it);
                } else {
                    train.push(it);
                }
            }
            items = train;
        }
    }

    let mut buckets: Vec<_> = items.iter().chain(&validation).map(|i| i.bucket).collect();
    buckets.sort_unstable();
    buckets.dedup();
    Ok(Dataset {
        train_data_dir: root,
        sources: Vec::new(),
        items,
        validation,
        buckets,
        warnings,
        num_reg_images: 0,
        folders: Vec::new(),
    })
}
