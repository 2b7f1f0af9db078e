//! `lorafuse prepare`: a folder of pictures → a folder of training images at the training
//! resolution, cropped once, with their captions.
//!
//! Per image (after [`walk`] lists the input):
//! 1. Duplicates: the file's bytes are hashed (XXH64); a file whose bytes equal an earlier
//!    one's (in path order) is dropped and named in the report. Two images of one folder with
//!    the same name up to the extension are also reported (captions pair by name).
//! 2. Decoded as training decodes ([`decode_image`]: format by content, EXIF orientation),
//!    alpha composited on `background` (white unless chosen).
//! 3. The target: the training resolution's square, or with `buckets` the bucket that training
//!    would assign to this image (the same bucket set and rule: [`crate::data::Bucketing`]), so
//!    the written image is exactly a bucket's size and training crops nothing more. The image is
//!    resized to cover the target (Lanczos3, as training resizes) and cropped ([`crop`]:
//!    centre or the most detailed window). With [`CropMode::None`] it is only shrunk to the
//!    training area, keeping its aspect, and training buckets it.
//! 4. An image that would be enlarged by more than `max_upscale` is dropped as too small.
//! 5. Written as PNG (or JPEG) under the same relative path and name, and its caption
//!    sidecars copied beside it; a `metadata.jsonl`/`.csv` caption becomes a `.txt` sidecar.
//!    Every file is written to a temporary name and renamed; an output that already exists is
//!    kept unless `overwrite`, so a run that was stopped continues where it was.
//!
//! Images are processed in parallel (rayon). Nothing is printed: the caller gets a
//! [`PrepareReport`] and a progress callback.

pub mod auto;
pub mod crop;
mod error;
pub mod lock;
pub mod report;
pub mod tags;
pub(crate) mod walk;

pub use crop::CropMode;
pub use error::PrepareError;
pub use report::{DropReason, PrepareReport, Prepared};

use std::collections::HashMap;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use image::imageops::FilterType;
use image::RgbImage;
use rayon::prelude::*;

use crate::atomic::write_file;
use crate::data::error::MAX_COVER_RATIO;
use crate::data::hash::xxh64;
use crate::data::pixels::{decode_image, to_rgb_on, TRAINING_BACKGROUND};
use crate::data::scan::{bucketing, check_options};
use crate::data::{Bucketing, DataOptions, Reso};
use crate::error::Error;
use walk::Job;

/// The format of the written images.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputFormat {
    /// Lossless (the default).
    Png,
    /// JPEG at this quality (1-100).
    Jpeg(u8),
}

impl OutputFormat {
    fn extension(self) -> &'static str {
        match self {
            OutputFormat::Png => "png",
            OutputFormat::Jpeg(_) => "jpg",
        }
    }
}

/// What `prepare` does.
#[derive(Clone, Debug)]
pub struct PrepareOptions {
    pub input: PathBuf,
    pub output: PathBuf,
    /// Training resolution (width, height); with `buckets`, the bucket area limit.
    pub resolution: Reso,
    /// Crop to the nearest training bucket instead of the resolution's rectangle.
    pub buckets: bool,
    pub min_bucket_reso: usize,
    pub max_bucket_reso: usize,
    pub bucket_reso_steps: usize,
    pub crop: CropMode,
    /// The colour transparent pixels are composited on.
    pub background: [u8; 3],
    /// Largest enlargement kept; smaller images are dropped as too small.
    pub max_upscale: f64,
    pub format: OutputFormat,
    /// Redo images whose output exists.
    pub overwrite: bool,
    /// Caption sidecar extensions that travel with an image, with their dots; the first one
    /// names the sidecar written for a metadata file's caption.
    pub caption_extensions: Vec<String>,
}

/// The default largest enlargement: beyond 2x an upscaled picture is visibly soft, and the
/// LoRA learns the softness.
pub const DEFAULT_MAX_UPSCALE: f64 = 2.0;

impl PrepareOptions {
    /// Defaults as training's (bucket limits, a 512x512 resolution), centre crop, white
    /// background, PNG, `.txt` and `.caption` sidecars.
    pub fn new(input: impl Into<PathBuf>, output: impl Into<PathBuf>) -> Self {
        let d = DataOptions::default();
        PrepareOptions {
            input: input.into(),
            output: output.into(),
            resolution: d.resolution,
            buckets: false,
            min_bucket_reso: d.min_bucket_reso,
            max_bucket_reso: d.max_bucket_reso,
            bucket_reso_steps: d.bucket_reso_steps,
            crop: CropMode::Center,
            background: TRAINING_BACKGROUND,
            max_upscale: DEFAULT_MAX_UPSCALE,
            format: OutputFormat::Png,
            overwrite: false,
            caption_extensions: vec![".txt".into(), ".caption".into()],
        }
    }

    /// The data options whose bucketing training would use for these settings.
    fn data_options(&self) -> DataOptions {
        DataOptions {
            resolution: self.resolution,
            enable_bucket: self.buckets,
            min_bucket_reso: self.min_bucket_reso,
            max_bucket_reso: self.max_bucket_reso,
            bucket_reso_steps: self.bucket_reso_steps,
            bucket_no_upscale: false,
            ..DataOptions::default()
        }
    }

    fn check(&self) -> Result<(), Error> {
        let problems = check_options(&self.data_options());
        if let Some(first) = problems.into_iter().next() {
            return Err(first.into());
        }
        if !(self.max_upscale.is_finite() && self.max_upscale >= 1.0) {
            return Err(PrepareError::Option {
                name: "max-upscale",
                value: self.max_upscale.to_string(),
                expected: "must be a number ≥ 1 (1 = never enlarge; 2 = at most twice)".into(),
            }
            .into());
        }
        if let OutputFormat::Jpeg(q) = self.format {
            if !(1..=100).contains(&q) {
                return Err(PrepareError::Option {
                    name: "quality",
                    value: q.to_string(),
                    expected: "must be from 1 to 100".into(),
                }
                .into());
            }
        }
        Ok(())
    }
}

/// `path` made absolute with its existing part's links resolved (the rest need not exist yet).
fn resolve(path: &Path) -> Result<PathBuf, PrepareError> {
    let mut existing = path.to_path_buf();
    let mut rest = Vec::new();
    while !existing.exists() {
        match (existing.file_name(), existing.parent()) {
            (Some(name), Some(parent)) => {
                rest.push(name.to_os_string());
                existing = if parent.as_os_str().is_empty() {
                    PathBuf::from(".")
                } else {
                    parent.to_path_buf()
                };
            }
            _ => break,
        }
    }
    let mut full = existing.canonicalize().map_err(|e| PrepareError::Folder {
        path: path.to_path_buf(),
        action: "resolve it",
        reason: e.to_string(),
    })?;
    full.extend(rest.iter().rev());
    Ok(full)
}

/// Checks the folders: the input exists and is a folder, neither it nor the output holds the
/// other; then creates the output.
fn check_folders(o: &PrepareOptions) -> Result<(), Error> {
    if !o.input.exists() {
        return Err(PrepareError::InputMissing {
            path: o.input.clone(),
        }
        .into());
    }
    if !o.input.is_dir() {
        return Err(PrepareError::InputNotAFolder {
            path: o.input.clone(),
        }
        .into());
    }
    let (input, output) = (resolve(&o.input)?, resolve(&o.output)?);
    if output.starts_with(&input) || input.starts_with(&output) {
        return Err(PrepareError::Nested {
            input: o.input.clone(),
            output: o.output.clone(),
            output_inside: output != input && output.starts_with(&input),
        }
        .into());
    }
    std::fs::create_dir_all(&o.output).map_err(|e| PrepareError::Folder {
        path: o.output.clone(),
        action: "create it",
        reason: e.to_string(),
    })?;
    Ok(())
}

/// Prepares every image of `o.input` into `o.output`; `progress(done, total)` is called as
/// images finish (from worker threads).
pub fn prepare(
    o: &PrepareOptions,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<PrepareReport, Error> {
    o.check()?;
    check_folders(o)?;
    let listing = walk::list(&o.input, &o.caption_extensions)?;
    let mut report = PrepareReport {
        ignored: listing.ignored,
        notes: listing.notes,
        ..PrepareReport::default()
    };

    // Name clashes, then duplicates by content, in path order.
    let mut kept: Vec<&Job> = Vec::new();
    let mut by_out: HashMap<PathBuf, PathBuf> = HashMap::new();
    for job in &listing.jobs {
        let out = job.rel.with_extension(o.format.extension());
        match by_out.get(&out) {
            Some(first) => report.dropped.push((
                job.rel.clone(),
                DropReason::NameClash {
                    with: first.clone(),
                },
            )),
            None => {
                by_out.insert(out, job.rel.clone());
                kept.push(job);
            }
        }
    }
    let hashes: Vec<Result<u64, String>> = kept
        .par_iter()
        .map(|job| {
            std::fs::read(o.input.join(&job.rel))
                .map(|bytes| xxh64(&bytes, 0))
                .map_err(|e| e.to_string())
        })
        .collect();
    let mut first_of: HashMap<u64, PathBuf> = HashMap::new();
    let mut todo = Vec::new();
    for (job, hash) in kept.into_iter().zip(hashes) {
        match hash {
            Err(why) => report
                .dropped
                .push((job.rel.clone(), DropReason::Unreadable(why))),
            Ok(h) => match first_of.get(&h) {
                Some(first) => report
                    .dropped
                    .push((job.rel.clone(), DropReason::Duplicate { of: first.clone() })),
                None => {
                    first_of.insert(h, job.rel.clone());
                    todo.push(job);
                }
            },
        }
    }

    let bucketing = bucketing(&o.data_options());
    let done = AtomicUsize::new(0);
    let total = todo.len();
    let results: Vec<Result<Outcome, Error>> = todo
        .par_iter()
        .map(|job| {
            let r = prepare_one(o, &bucketing, job);
            progress(done.fetch_add(1, Ordering::Relaxed) + 1, total);
            r
        })
        .collect();
    for (job, r) in todo.iter().zip(results) {
        match r? {
            Outcome::Written(p) => report.prepared.push(p),
            Outcome::Exists => report.existing.push(job.rel.clone()),
            Outcome::Dropped(why) => report.dropped.push((job.rel.clone(), why)),
        }
    }
    report.dropped.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(report)
}

enum Outcome {
    Written(Prepared),
    Exists,
    Dropped(DropReason),
}

/// The size written and the image resized to cover it, for an image of `size`; or why not.
struct Target {
    /// The size written.
    size: Reso,
    /// The size the image is resized to (covers `size`; equal to it with `CropMode::None`).
    resized: Reso,
    scale: f64,
}

fn target_of(o: &PrepareOptions, bucketing: &Bucketing, size: Reso) -> Result<Target, DropReason> {
    let choice = bucketing.select(size);
    // The enlargement training would apply; `None` writes no larger than that.
    let cover_scale = choice.resized.0 as f64 / size.0 as f64;
    if cover_scale > o.max_upscale {
        return Err(DropReason::TooSmall {
            size,
            scale: cover_scale,
        });
    }
    if o.crop == CropMode::None {
        let area = (o.resolution.0 * o.resolution.1) as f64;
        let s = (area / (size.0 * size.1) as f64).sqrt().min(1.0);
        let side = |v: usize| ((v as f64 * s).round() as usize).max(1);
        let resized = (side(size.0), side(size.1));
        return Ok(Target {
            size: resized,
            resized,
            scale: s,
        });
    }
    if choice.resized.0 * choice.resized.1 > MAX_COVER_RATIO * choice.bucket.0 * choice.bucket.1 {
        // Cropping would keep under 1/MAX_COVER_RATIO of the picture (a long strip); training
        // refuses such images too.
        return Err(DropReason::Elongated {
            size,
            target: choice.bucket,
        });
    }
    Ok(Target {
        size: choice.bucket,
        resized: choice.resized,
        scale: cover_scale,
    })
}

fn prepare_one(o: &PrepareOptions, bucketing: &Bucketing, job: &Job) -> Result<Outcome, Error> {
    let out_rel = job.rel.with_extension(o.format.extension());
    let out_path = o.output.join(&out_rel);
    if out_path.exists() && !o.overwrite {
        return Ok(Outcome::Exists);
    }
    let src = o.input.join(&job.rel);
    let bytes = match std::fs::read(&src) {
        Ok(b) => b,
        Err(e) => return Ok(Outcome::Dropped(DropReason::Unreadable(e.to_string()))),
    };
    let img = match decode_image(&src, &bytes) {
        Ok(img) => img,
        Err(e) => return Ok(Outcome::Dropped(DropReason::Unreadable(decode_reason(e)))),
    };
    let original = (img.width() as usize, img.height() as usize);
    let target = match target_of(o, bucketing, original) {
        Ok(t) => t,
        Err(why) => return Ok(Outcome::Dropped(why)),
    };
    let rgb = to_rgb_on(img, o.background);
    let resized = if target.resized == original {
        rgb
    } else {
        image::imageops::resize(
            &rgb,
            target.resized.0 as u32,
            target.resized.1 as u32,
            FilterType::Lanczos3,
        )
    };
    let cropped = if target.size == target.resized {
        resized
    } else {
        let (left, top) = crop::crop_offset(&resized, target.size, o.crop);
        image::imageops::crop_imm(
            &resized,
            left as u32,
            top as u32,
            target.size.0 as u32,
            target.size.1 as u32,
        )
        .to_image()
    };

    if let Some(dir) = out_path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, "create the folder", e))?;
    }
    let mut captions = 0;
    let stem = out_path.with_extension("");
    let sidecar = |ext: &str| {
        let mut p = stem.clone().into_os_string();
        p.push(ext);
        PathBuf::from(p)
    };
    for (ext, path) in &job.sidecars {
        let text = std::fs::read(path).map_err(|e| Error::io(path, "read the caption", e))?;
        write_file(&sidecar(ext), &text)?;
        captions += 1;
    }
    if let (Some(text), Some(ext)) = (&job.metadata_caption, o.caption_extensions.first()) {
        write_file(&sidecar(ext), text.as_bytes())?;
        captions += 1;
    }
    // The image last: its presence marks the job done for a later run.
    write_file(&out_path, &encode(&cropped, o.format, &out_path)?)?;
    Ok(Outcome::Written(Prepared {
        rel: job.rel.clone(),
        out: out_rel,
        original,
        size: target.size,
        scale: target.scale,
        captions,
    }))
}

/// The decoder's reason without the path (the report names the file).
fn decode_reason(e: crate::data::DataError) -> String {
    match e {
        crate::data::DataError::Decode { reason, .. } => reason,
        other => other.to_string(),
    }
}

fn encode(img: &RgbImage, format: OutputFormat, path: &Path) -> Result<Vec<u8>, Error> {
    let mut buf = Cursor::new(Vec::new());
    let r = match format {
        OutputFormat::Png => img.write_to(&mut buf, image::ImageFormat::Png),
        OutputFormat::Jpeg(q) => {
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut buf, q).encode_image(img)
        }
    };
    r.map_err(|e| {
        Error::io(
            path,
            "encode the image",
            std::io::Error::other(e.to_string()),
        )
    })?;
    Ok(buf.into_inner())
}
