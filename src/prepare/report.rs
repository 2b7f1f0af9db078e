//! What `prepare` did, image by image, and its summary: counts, the sizes written, and every
//! file that was not written with the reason.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use crate::data::Reso;

/// At most this many dropped or ignored files are listed by name; the rest are counted.
pub const MAX_LISTED: usize = 20;

/// An image written to the output folder.
#[derive(Clone, Debug, PartialEq)]
pub struct Prepared {
    /// Input path relative to the input folder.
    pub rel: PathBuf,
    /// Output path relative to the output folder.
    pub out: PathBuf,
    /// The size as viewed (EXIF orientation applied).
    pub original: Reso,
    /// The size written.
    pub size: Reso,
    /// The resize factor (> 1: enlarged).
    pub scale: f64,
    /// Caption files written beside it.
    pub captions: usize,
}

/// Why an image was not written.
#[derive(Clone, Debug, PartialEq)]
pub enum DropReason {
    /// It would have been enlarged by more than `--max-upscale`.
    TooSmall { size: Reso, scale: f64 },
    /// So elongated that a crop to `target` would keep under 1/MAX_COVER_RATIO of it.
    Elongated { size: Reso, target: Reso },
    /// The same bytes as an image listed before it.
    Duplicate { of: PathBuf },
    /// The file could not be read or decoded.
    Unreadable(String),
    /// Another image in the same folder has the same name up to the extension (captions pair
    /// by name, so only the first is kept).
    NameClash { with: PathBuf },
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DropReason::TooSmall { size, scale } => write!(
                f,
                "too small: {}x{} would be enlarged {scale:.2}x (raise --max-upscale to keep it)",
                size.0, size.1
            ),
            DropReason::Elongated { size, target } => write!(
                f,
                "too elongated: {}x{} cropped to {}x{} would keep under 1/{} of it; crop it by hand",
                size.0, size.1, target.0, target.1, crate::data::error::MAX_COVER_RATIO
            ),
            DropReason::Duplicate { of } => write!(f, "duplicate of {}", of.display()),
            DropReason::Unreadable(why) => write!(f, "unreadable: {why}"),
            DropReason::NameClash { with } => write!(
                f,
                "same name as {} in its folder (captions pair by name); rename one",
                with.display()
            ),
        }
    }
}

/// The whole run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PrepareReport {
    pub prepared: Vec<Prepared>,
    pub dropped: Vec<(PathBuf, DropReason)>,
    /// Images whose output already existed (kept as they were; `--overwrite` redoes them).
    pub existing: Vec<PathBuf>,
    /// Files that are not images or their captions.
    pub ignored: Vec<PathBuf>,
    /// Notes about the input (a metadata file that could not be read).
    pub notes: Vec<String>,
}

impl PrepareReport {
    /// Images written, by size.
    pub fn sizes(&self) -> BTreeMap<Reso, usize> {
        let mut by = BTreeMap::new();
        for p in &self.prepared {
            *by.entry(p.size).or_insert(0) += 1;
        }
        by
    }

    fn count(&self, pick: fn(&DropReason) -> bool) -> usize {
        self.dropped.iter().filter(|(_, r)| pick(r)).count()
    }
}

fn list(f: &mut fmt::Formatter<'_>, lines: &[String]) -> fmt::Result {
    for l in lines.iter().take(MAX_LISTED) {
        writeln!(f, "  {l}")?;
    }
    if lines.len() > MAX_LISTED {
        writeln!(f, "  and {} more", lines.len() - MAX_LISTED)?;
    }
    Ok(())
}

impl fmt::Display for PrepareReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let captions: usize = self.prepared.iter().map(|p| p.captions).sum();
        let enlarged = self.prepared.iter().filter(|p| p.scale > 1.0).count();
        writeln!(
            f,
            "prepared {} images ({captions} caption files carried, {enlarged} enlarged)",
            self.prepared.len()
        )?;
        let sizes: Vec<String> = self
            .sizes()
            .iter()
            .map(|((w, h), n)| format!("{w}x{h}: {n}"))
            .collect();
        if !sizes.is_empty() {
            writeln!(f, "sizes written: {}", sizes.join(", "))?;
        }
        if !self.existing.is_empty() {
            writeln!(
                f,
                "already prepared, kept as they were: {} (--overwrite redoes them)",
                self.existing.len()
            )?;
        }
        if !self.dropped.is_empty() {
            writeln!(
                f,
                "dropped {}: {} too small, {} too elongated, {} duplicates, {} unreadable, {} name clashes",
                self.dropped.len(),
                self.count(|r| matches!(r, DropReason::TooSmall { .. })),
                self.count(|r| matches!(r, DropReason::Elongated { .. })),
                self.count(|r| matches!(r, DropReason::Duplicate { .. })),
                self.count(|r| matches!(r, DropReason::Unreadable(_))),
                self.count(|r| matches!(r, DropReason::NameClash { .. })),
            )?;
            let lines: Vec<String> = self
                .dropped
                .iter()
                .map(|(p, r)| format!("{}: {r}", p.display()))
                .collect();
            list(f, &lines)?;
        }
        if !self.ignored.is_empty() {
            writeln!(
                f,
                "not images or their captions, not copied: {}",
                self.ignored.len()
            )?;
            let lines: Vec<String> = self
                .ignored
                .iter()
                .map(|p| p.display().to_string())
                .collect();
            list(f, &lines)?;
        }
        for n in &self.notes {
            writeln!(f, "note: {n}")?;
        }
        Ok(())
    }
}
