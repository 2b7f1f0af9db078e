//! `train`'s own data preparation, when the config asks for it: `auto_crop` runs `prepare`
//! on `train_data_dir` into `<output_dir>/auto/prepared` (the resolution and bucketing of the
//! config), `auto_caption` runs `caption` (a WD14 tagger folder or a CLIP model) on the folder
//! trained on, keeping existing captions.
//!
//! Each step writes a key file beside its result (`<output_dir>/auto/crop.key`,
//! `caption.key`): XXH64 over the step's settings and its inputs' bytes (for the crop: every
//! picture and its caption files; for captioning: every picture). A second run with the same
//! key does not redo the step; any change of the pictures or the settings does. One process
//! at a time works in `<output_dir>/auto` (prepare/lock.rs): the ranks of a torchrun or srun
//! launch prepare once, not all at once.

use std::fs;
use std::path::{Path, PathBuf};

use crate::backend::Backend;
use crate::caption::{
    caption, CaptionOptions, ClipModel, Existing, Interrogator, Labeler, Tagger, Thresholds,
    Vocabulary, DEFAULT_THRESHOLDS,
};
use crate::config::TrainConfig;
use crate::data::hash::xxh64;
use crate::error::{Error, Result};

use super::lock::FolderLock;
use super::walk::{self, Listing};

/// How long a run waits for another process (another rank) preparing the same output folder.
const LOCK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(12 * 3600);
use super::{prepare, PrepareOptions};

/// Where `train` reads its pictures after the automatic steps.
#[derive(Debug)]
pub struct AutoData {
    /// The folder to train on: `train_data_dir` or the prepared copy.
    pub data_dir: PathBuf,
    /// What was done or reused, one line each.
    pub notes: Vec<String>,
}

/// XXH64 chained over each picture's path and bytes (and with `with_captions` its captions').
fn listing_key(root: &Path, listing: &Listing, with_captions: bool, seed: u64) -> Result<u64> {
    let add = |key: u64, path: &Path, name: &str| -> Result<u64> {
        let bytes = fs::read(path).map_err(|e| Error::io(path, "read", e))?;
        Ok(xxh64(&bytes, xxh64(name.as_bytes(), key)))
    };
    let mut key = seed;
    for job in &listing.jobs {
        key = add(key, &root.join(&job.rel), &job.rel.to_string_lossy())?;
        if with_captions {
            for (ext, p) in &job.sidecars {
                key = add(key, p, ext)?;
            }
            if let Some(c) = &job.metadata_caption {
                key = xxh64(c.as_bytes(), key);
            }
        }
    }
    Ok(key)
}

/// Whether the key file holds `key`.
fn done(key_file: &Path, key: u64) -> bool {
    fs::read_to_string(key_file).is_ok_and(|t| t.trim() == format!("{key:016x}"))
}

fn write_key(key_file: &Path, key: u64) -> Result<()> {
    crate::atomic::write_file(key_file, format!("{key:016x}\n").as_bytes())
}

/// The tagger or CLIP model at `path`: a folder with selected_tags.csv (or one of its files)
/// is a tagger.
fn labeler(cfg: &TrainConfig, path: &Path, be: &dyn Backend) -> Result<Box<dyn Labeler>> {
    let dir = if path.is_file() {
        path.parent().unwrap_or(Path::new("."))
    } else {
        path
    };
    if dir.join(crate::caption::wd14::TAGGER_FILES[2]).is_file() {
        return Ok(Box::new(Tagger::load(path, be)?));
    }
    let model = ClipModel::load(path, be)?;
    let cache = cfg.output_dir.join("auto");
    Ok(Box::new(Interrogator::new(
        model,
        Vocabulary::defaults(),
        cfg.auto_caption_top,
        be,
        Some(&cache),
        &mut |_, _| {},
    )?))
}

/// Runs `auto_crop` and `auto_caption` as `cfg` asks; `be` computes the captions (f32 is
/// best: the taggers' thresholds were set in f32). `progress(step, done, total)`.
pub fn auto_prepare(
    cfg: &TrainConfig,
    be: &dyn Backend,
    progress: &(dyn Fn(&str, usize, usize) + Sync),
) -> Result<AutoData> {
    let mut out = AutoData {
        data_dir: cfg.train_data_dir.clone(),
        notes: Vec::new(),
    };
    if cfg.auto_crop.is_none() && cfg.auto_caption.is_none() {
        return Ok(out);
    }
    let work = cfg.output_dir.join("auto");
    // The ranks of a torchrun/srun launch all get here at once: one prepares, the others wait
    // and then find its key files.
    let mut waited = None;
    let _lock = FolderLock::acquire(&work, LOCK_TIMEOUT, &mut |owner| {
        waited = Some(owner.to_string())
    })?;
    if let Some(owner) = waited {
        out.notes.push(format!(
            "auto: waited for the process preparing {} ({owner})",
            work.display()
        ));
    }
    let mut exts = vec![cfg.caption_extension.clone()];
    for e in [".txt", ".caption"] {
        if !exts.iter().any(|x| x == e) {
            exts.push(e.to_string());
        }
    }
    // A new prepared copy has lost the captions written into the old one.
    let mut recropped = false;

    if let Some(mode) = cfg.auto_crop {
        let mut o = PrepareOptions::new(&cfg.train_data_dir, work.join("prepared"));
        o.resolution = (
            cfg.resolution.width as usize,
            cfg.resolution.height as usize,
        );
        o.buckets = cfg.enable_bucket;
        o.min_bucket_reso = cfg.min_bucket_reso as usize;
        o.max_bucket_reso = cfg.max_bucket_reso as usize;
        o.bucket_reso_steps = cfg.bucket_reso_steps as usize;
        o.crop = mode;
        o.caption_extensions = exts.clone();
        let listing = walk::list(&cfg.train_data_dir, &exts)?;
        let settings = format!(
            "crop v1 {:?} {} {} {} {} {:?} {:?}",
            o.resolution,
            o.buckets,
            o.min_bucket_reso,
            o.max_bucket_reso,
            o.bucket_reso_steps,
            mode,
            exts
        );
        let key = listing_key(
            &cfg.train_data_dir,
            &listing,
            true,
            xxh64(settings.as_bytes(), 0),
        )?;
        let key_file = work.join("crop.key");
        if done(&key_file, key) && o.output.is_dir() {
            out.notes
                .push(format!("auto_crop: {} is up to date", o.output.display()));
        } else {
            // A stale copy goes: pictures removed from the input must not stay.
            if o.output.exists() {
                fs::remove_dir_all(&o.output)
                    .map_err(|e| Error::io(&o.output, "remove the old prepared copy", e))?;
            }
            let report = prepare(&o, &|d, t| progress("auto_crop", d, t))?;
            out.notes.push(format!(
                "auto_crop: prepared into {}\n{report}",
                o.output.display()
            ));
            write_key(&key_file, key)?;
            recropped = true;
        }
        out.data_dir = o.output;
    }

    if let Some(model) = &cfg.auto_caption {
        let listing = walk::list(&out.data_dir, &exts)?;
        let settings = format!(
            "caption v1 {} {} {} {}",
            model.display(),
            cfg.auto_caption_threshold,
            cfg.auto_caption_top,
            cfg.caption_extension
        );
        let key = listing_key(
            &out.data_dir,
            &listing,
            false,
            xxh64(settings.as_bytes(), 0),
        )?;
        let key_file = work.join("caption.key");
        if done(&key_file, key) && !recropped {
            out.notes.push(format!(
                "auto_caption: the captions of {} are up to date",
                out.data_dir.display()
            ));
        } else {
            let o = CaptionOptions {
                dir: out.data_dir.clone(),
                thresholds: Thresholds {
                    general: cfg.auto_caption_threshold as f32,
                    character: DEFAULT_THRESHOLDS.character,
                },
                undesired: Vec::new(),
                trigger: Vec::new(),
                existing: Existing::Keep,
                keep_underscores: false,
                extension: cfg.caption_extension.clone(),
                metadata_csv: None,
            };
            let labeler = labeler(cfg, model, be)?;
            let report = caption(&o, labeler.as_ref(), be, &mut |d, t| {
                progress("auto_caption", d, t)
            })?;
            out.notes.push(format!("auto_caption: {report}"));
            write_key(&key_file, key)?;
        }
    }
    Ok(out)
}
