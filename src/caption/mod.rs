//! `lorafuse caption`: captions for a folder of pictures from a WD14 tagger (wd14.rs, with the
//! ViT of src/model/vit.rs on the chosen backend) or by CLIP interrogation (clip.rs), written
//! as `.txt` sidecars. Both are a [`Labeler`]: a picture to tags, best first.
//!
//! - The folder is listed as `prepare` lists it (src/prepare/walk.rs: subfolders, sidecars).
//! - A picture that already has a caption is left alone unless `--overwrite` (replace it) or
//!   `--append` (add the tags it lacks to the end of each of its lines; tags compare as in
//!   `lorafuse tags`: case and `_` vs space ignored); neither runs the model on it.
//! - A caption: the tagger's tags above the thresholds, highest probability first, without
//!   the undesired tags (names or `*` patterns), with the trigger tags put first, underscores
//!   turned into spaces unless asked to keep them (kaomoji such as `^_^` keep theirs).
//! - Written atomically (src/atomic.rs), as sidecars or, with `--metadata-csv`, into one CSV
//!   (csv.rs; its rows are then the existing captions, sidecars are not read); a picture that
//!   cannot be decoded is reported and skipped, the rest are captioned.

pub mod clip;
pub mod csv;
pub mod error;
pub mod pil;
pub mod wd14;

use std::path::{Path, PathBuf};

use crate::atomic::write_file;
use image::DynamicImage;

use crate::backend::Backend;
use crate::data::pixels::decode_image;
use crate::error::{Error, Result};
use crate::prepare::tags::{split, Pattern, TagEdit};
use crate::prepare::{walk, PrepareError};
use csv::CaptionCsv;

pub use clip::{ClipModel, Interrogator, Vocabulary};
pub use error::CaptionError;
pub use wd14::{Tagger, Thresholds};

/// What captions a picture: its tags (or phrases) with their scores, best first.
pub trait Labeler {
    fn tags(
        &self,
        be: &dyn Backend,
        img: &DynamicImage,
        o: &CaptionOptions,
    ) -> Result<Vec<(String, f32)>>;
}

impl Labeler for Tagger {
    fn tags(
        &self,
        be: &dyn Backend,
        img: &DynamicImage,
        o: &CaptionOptions,
    ) -> Result<Vec<(String, f32)>> {
        Ok(self.select(&self.probabilities(be, img)?, o.thresholds))
    }
}

/// What happens to a picture that already has a caption.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Existing {
    /// Leave it as it is (the model does not run).
    #[default]
    Keep,
    /// Add the tags it lacks.
    Append,
    /// Replace it.
    Overwrite,
}

/// Everything `caption` needs besides the model.
#[derive(Clone, Debug)]
pub struct CaptionOptions {
    pub dir: PathBuf,
    /// The tagger's (CLIP interrogation ignores them).
    pub thresholds: Thresholds,
    pub undesired: Vec<Pattern>,
    pub trigger: Vec<String>,
    pub existing: Existing,
    pub keep_underscores: bool,
    /// The caption files' extension, with its dot.
    pub extension: String,
    /// Captions into this CSV (csv.rs) instead of sidecars.
    pub metadata_csv: Option<PathBuf>,
}

/// The default thresholds: general tags as SmilingWolf's tagger space has them, characters as
/// kohya's `tag_images_by_wd14_tagger.py` suggests for character captions.
pub const DEFAULT_THRESHOLDS: Thresholds = Thresholds {
    general: 0.35,
    character: 0.85,
};

/// What one run did.
#[derive(Debug, Default)]
pub struct CaptionReport {
    /// Captions written (new, appended to or replaced), relative paths of the pictures.
    pub written: Vec<PathBuf>,
    /// Pictures whose caption was kept (already captioned, no --append/--overwrite).
    pub kept: Vec<PathBuf>,
    /// Appended captions that already had every tag (not rewritten).
    pub unchanged: Vec<PathBuf>,
    /// Pictures that could not be read, and why.
    pub unreadable: Vec<(PathBuf, String)>,
    /// Files that are neither pictures nor captions.
    pub ignored: Vec<PathBuf>,
    /// (relative path, caption) of each written caption, in path order.
    pub captions: Vec<(PathBuf, String)>,
    /// The CSV the captions went into (--metadata-csv), when it was written.
    pub csv: Option<PathBuf>,
}

impl std::fmt::Display for CaptionReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "captioned {} pictures; kept {} existing captions; {} already had every tag; {} unreadable",
            self.written.len(),
            self.kept.len(),
            self.unchanged.len(),
            self.unreadable.len()
        )?;
        if let Some(csv) = &self.csv {
            writeln!(f, "captions written to {}", csv.display())?;
        }
        for (p, why) in &self.unreadable {
            writeln!(f, "  skipped {}: {why}", p.display())?;
        }
        if !self.ignored.is_empty() {
            writeln!(
                f,
                "{} files are neither pictures nor captions (e.g. {})",
                self.ignored.len(),
                self.ignored[0].display()
            )?;
        }
        Ok(())
    }
}

/// A tag as written: underscores to spaces, except in kaomoji (every `_`-separated part has at
/// most one letter or digit, as `^_^`, `o_o`, `(o)_(o)`).
pub fn tag_text(tag: &str, keep_underscores: bool) -> String {
    let kaomoji = tag
        .split('_')
        .all(|part| part.chars().filter(|c| c.is_alphanumeric()).count() <= 1);
    if keep_underscores || kaomoji {
        tag.to_string()
    } else {
        tag.replace('_', " ")
    }
}

impl CaptionOptions {
    /// The caption line of the selected tags.
    pub fn caption(&self, tags: &[(String, f32)]) -> String {
        let line = tags
            .iter()
            .map(|(t, _)| tag_text(t, self.keep_underscores))
            .collect::<Vec<_>>()
            .join(", ");
        self.edit().line(&line)
    }

    fn edit(&self) -> TagEdit {
        TagEdit {
            remove: self.undesired.clone(),
            replace: Vec::new(),
            dedupe: true,
            trigger: self.trigger.clone(),
        }
    }

    /// An existing caption with the new line's tags it lacks added to each of its lines (the
    /// trigger kept first).
    pub fn appended(&self, existing: &str, line: &str) -> String {
        let new = split(line);
        let edit = self.edit();
        let mut out: Vec<String> = Vec::new();
        for old in existing.trim_end().lines() {
            let have: Vec<Pattern> = split(old).iter().map(|t| Pattern::new(t)).collect();
            let mut tags = split(old);
            tags.extend(
                new.iter()
                    .filter(|t| !have.iter().any(|p| p.matches(t)))
                    .cloned(),
            );
            out.push(edit.line(&tags.join(", ")));
        }
        if out.is_empty() {
            out.push(line.to_string());
        }
        out.join("\n") + "\n"
    }
}

/// Captions every picture of `o.dir` with `labeler`; `progress(done, total)` after each one.
pub fn caption(
    o: &CaptionOptions,
    labeler: &dyn Labeler,
    be: &dyn Backend,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<CaptionReport> {
    if !o.dir.is_dir() {
        let path = o.dir.clone();
        return Err(if path.exists() {
            PrepareError::InputNotAFolder { path }
        } else {
            PrepareError::InputMissing { path }
        }
        .into());
    }
    let listing = walk::list(&o.dir, std::slice::from_ref(&o.extension))?;
    let mut report = CaptionReport {
        ignored: listing.ignored,
        ..CaptionReport::default()
    };
    let mut csv = match &o.metadata_csv {
        Some(path) => Some(CaptionCsv::open(path, &o.dir)?),
        None => None,
    };
    let total = listing.jobs.len();
    for (i, job) in listing.jobs.iter().enumerate() {
        let target = o
            .dir
            .join(&job.rel)
            .with_extension(o.extension.trim_start_matches('.'));
        // The existing caption: the CSV's row, or the sidecar (read when needed).
        let key = csv.as_ref().map(|c| c.key(&job.rel));
        let sidecar = job.sidecars.first().map(|(_, p)| p.clone());
        let has_existing = match (&csv, &key) {
            (Some(c), Some(k)) => c.get(k).is_some(),
            _ => sidecar.is_some(),
        };
        if has_existing && o.existing == Existing::Keep {
            report.kept.push(job.rel.clone());
            progress(i + 1, total);
            continue;
        }
        match caption_one(o, labeler, be, &o.dir.join(&job.rel))? {
            Err(why) => report.unreadable.push((job.rel.clone(), why)),
            Ok(line) => {
                let text = if has_existing && o.existing == Existing::Append {
                    let old = match (&csv, &key, &sidecar) {
                        (Some(c), Some(k), _) => c.get(k).unwrap_or_default().to_string(),
                        (_, _, Some(path)) => std::fs::read_to_string(path)
                            .map_err(|e| Error::io(path, "read the caption", e))?,
                        _ => String::new(),
                    };
                    let new = o.appended(&old, &line);
                    if new.trim_end() == old.trim_end() {
                        report.unchanged.push(job.rel.clone());
                        progress(i + 1, total);
                        continue;
                    }
                    new
                } else {
                    format!("{line}\n")
                };
                match (&mut csv, &key) {
                    (Some(c), Some(k)) => c.set(k, text.trim_end()),
                    _ => write_file(&target, text.as_bytes())?,
                }
                report.written.push(job.rel.clone());
                report
                    .captions
                    .push((job.rel.clone(), text.trim_end().to_string()));
            }
        }
        progress(i + 1, total);
    }
    if let Some(c) = csv {
        if !report.written.is_empty() || !c.path.exists() {
            c.write()?;
            report.csv = Some(c.path);
        }
    }
    Ok(report)
}

/// The caption line of one picture, or why it could not be read (a decoding problem is the
/// picture's, not the run's).
fn caption_one(
    o: &CaptionOptions,
    labeler: &dyn Labeler,
    be: &dyn Backend,
    path: &Path,
) -> Result<std::result::Result<String, String>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => return Ok(Err(e.to_string())),
    };
    let img = match decode_image(path, &bytes) {
        Ok(img) => img,
        Err(e) => return Ok(Err(e.to_string())),
    };
    Ok(Ok(o.caption(&labeler.tags(be, &img, o)?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> CaptionOptions {
        CaptionOptions {
            dir: PathBuf::from("."),
            thresholds: DEFAULT_THRESHOLDS,
            undesired: vec![Pattern::new("*background")],
            trigger: vec!["sks style".into()],
            existing: Existing::Keep,
            keep_underscores: false,
            extension: ".txt".into(),
            metadata_csv: None,
        }
    }

    #[test]
    fn underscores_spaces_and_kaomoji() {
        assert_eq!(tag_text("long_hair", false), "long hair");
        assert_eq!(tag_text("long_hair", true), "long_hair");
        for k in ["^_^", "o_o", "(o)_(o)", "3_3", ">_<"] {
            assert_eq!(tag_text(k, false), k);
        }
    }

    #[test]
    fn caption_puts_the_trigger_first_and_drops_undesired() {
        let tags = vec![
            ("1girl".to_string(), 0.9),
            ("simple_background".to_string(), 0.8),
            ("long_hair".to_string(), 0.5),
        ];
        assert_eq!(opts().caption(&tags), "sks style, 1girl, long hair");
    }

    #[test]
    fn append_adds_missing_tags_only() {
        let o = opts();
        assert_eq!(
            o.appended(
                "sks style, Long_Hair, smile\n",
                "sks style, 1girl, long hair"
            ),
            "sks style, Long_Hair, smile, 1girl\n"
        );
        // Each line of a multi-line caption gets them.
        assert_eq!(
            o.appended("a\nb, 1girl\n", "sks style, 1girl"),
            "sks style, a, 1girl\nsks style, b, 1girl\n"
        );
    }
}
