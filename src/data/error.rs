//! What can be wrong with a training folder, and what is only worth a warning.
//!
//! Every message names the file (as a path under `train_data_dir`) and says what to do. `scan`
//! checks everything before returning and reports all problems at once in [`DataError::Many`],
//! so a user fixes a folder in one pass instead of one error per run.

use std::fmt;
use std::path::PathBuf;

use crate::error::{Error, ErrorKind, LayerError};

/// At most this many problems are listed in [`DataError::Many`]'s message; the rest are counted.
pub const MAX_LISTED_PROBLEMS: usize = 20;

/// An image may be resized to at most this many times its bucket's area before the crop (an
/// aspect ratio about this many times the bucket's); beyond it the crop would keep under 1/8
/// of the image, and a 1x10000 strip would be resized to gigabytes.
pub const MAX_COVER_RATIO: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error(
        "train_data_dir {} does not exist. Set train_data_dir to the folder that holds your \
         images or their N_name repeat folders (e.g. train/10_mychar/).",
        path.display()
    )]
    FolderMissing { path: PathBuf },

    #[error(
        "train_data_dir {} is a file, not a folder. Set train_data_dir to the folder that holds \
         your images or their N_name repeat folders.",
        path.display()
    )]
    NotAFolder { path: PathBuf },

    #[error("{}: cannot list folder: {reason}", path.display())]
    ReadFolder { path: PathBuf, reason: String },

    #[error(
        "{}: no training images found. Looked for .png, .jpg, .jpeg, .webp and .bmp files (any \
         letter case) directly in this folder and in its repeat folders named N_name \
         (e.g. 10_mychar/: each image counts 10 times per epoch).{hint}",
        path.display()
    )]
    Empty {
        path: PathBuf,
        /// Extra help, e.g. the subfolders that were skipped; empty or starting with a space.
        hint: String,
    },

    #[error("{}: cannot read file: {reason}", path.display())]
    Read { path: PathBuf, reason: String },

    #[error("{}: cannot decode image: {reason}. Remove or re-export the file.", path.display())]
    Decode { path: PathBuf, reason: String },

    #[error(
        "{}: image is {width}x{height}, too large to load (limit {limit}). Downscale it first.",
        path.display()
    )]
    TooLarge {
        path: PathBuf,
        width: u32,
        height: u32,
        limit: String,
    },

    #[error(
        "{}: no caption: expected {} beside it (caption_extension \"{caption_extension}\"). \
         Write the caption there (an empty file trains the image without a caption).",
        image.display(),
        expected.display()
    )]
    MissingCaption {
        image: PathBuf,
        expected: PathBuf,
        caption_extension: String,
    },

    #[error(
        "{}: no caption: {} has no row with file_name \"{key}\", and there is no {} beside it. \
         Add a row for it to the metadata file.",
        image.display(),
        metadata.display(),
        sidecar.display()
    )]
    NoMetadataRow {
        image: PathBuf,
        metadata: PathBuf,
        key: String,
        sidecar: PathBuf,
    },

    #[error("{}: caption is not valid UTF-8 text. Save it as UTF-8.", path.display())]
    CaptionNotUtf8 { path: PathBuf },

    #[error("{}, line {line}: {problem}", path.display())]
    Metadata {
        path: PathBuf,
        line: usize,
        problem: String,
    },

    #[error(
        "{}: has both metadata.jsonl and metadata.csv; keep one of them.",
        folder.display()
    )]
    TwoMetadataFiles { folder: PathBuf },

    #[error(
        "{}: image is {width}x{height}; with bucket_no_upscale it gives a {bucket_width}x\
         {bucket_height} bucket (sides are rounded down to multiples of bucket_reso_steps = \
         {steps}). Remove the image, upscale it, or turn bucket_no_upscale off.",
        path.display()
    )]
    TooSmallForBucket {
        path: PathBuf,
        width: usize,
        height: usize,
        bucket_width: usize,
        bucket_height: usize,
        steps: usize,
    },

    #[error(
        "{}: image is {width}x{height}; covering its {bucket_width}x{bucket_height} bucket would \
         crop away more than {pct}% of it. Crop the image to a less extreme aspect ratio.",
        path.display(),
        pct = 100 - 100 / MAX_COVER_RATIO
    )]
    ExtremeAspect {
        path: PathBuf,
        width: usize,
        height: usize,
        bucket_width: usize,
        bucket_height: usize,
    },

    #[error("{}: image changed since the data set was scanned ({was} then, {now} now). Scan again.",
        path.display())]
    ChangedSinceScan {
        path: PathBuf,
        was: String,
        now: String,
    },

    #[error("{name} = {value} is invalid: {expected}")]
    Option {
        name: &'static str,
        value: String,
        expected: String,
    },

    #[error("{}", ManyDisplay(.0))]
    Many(Vec<DataError>),
}

impl DataError {
    /// One error as is, several as [`DataError::Many`], none as `None`.
    pub fn collect(mut problems: Vec<DataError>) -> Option<DataError> {
        match problems.len() {
            0 => None,
            1 => problems.pop(),
            _ => Some(DataError::Many(problems)),
        }
    }

    /// The individual problems (one for a single error).
    pub fn problems(&self) -> Vec<&DataError> {
        match self {
            DataError::Many(list) => list.iter().flat_map(|e| e.problems()).collect(),
            other => vec![other],
        }
    }
}

/// Every problem of a training folder is the user's to fix (the folder, a file in it, a data
/// option), read errors included: they are reported per file, after the whole folder was
/// checked.
impl From<DataError> for Error {
    fn from(e: DataError) -> Error {
        Error::Layer(LayerError::new(ErrorKind::BadInput, e))
    }
}

struct ManyDisplay<'a>(&'a [DataError]);

impl fmt::Display for ManyDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        write!(f, "{n} problems in the training data:")?;
        for e in self.0.iter().take(MAX_LISTED_PROBLEMS) {
            write!(f, "\n  - {e}")?;
        }
        if n > MAX_LISTED_PROBLEMS {
            write!(f, "\n  and {} more", n - MAX_LISTED_PROBLEMS)?;
        }
        Ok(())
    }
}

/// Something odd in the folder that does not stop training. `scan` collects these in
/// `Dataset::warnings`; the caller decides how to show them (the library never prints).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum DataWarning {
    #[error(
        "{}: folder ignored: repeat folders are named N_name with N the repeat count \
         (e.g. 10_{name})",
        path.display()
    )]
    IgnoredFolder { path: PathBuf, name: String },

    #[error("{}: folder ignored: a repeat count of 0 means its images are never used", path.display())]
    ZeroRepeats { path: PathBuf },

    #[error(
        "{}: folder not scanned: only train_data_dir and its N_name folders are searched, \
         not folders inside them",
        path.display()
    )]
    NestedFolder { path: PathBuf },

    #[error("{}: caption file without an image (no {stem}.png/.jpg/.jpeg/.webp/.bmp beside it)",
        path.display())]
    OrphanCaption { path: PathBuf, stem: String },

    #[error("{}: empty caption ({origin}); the image trains without a caption", image.display())]
    EmptyCaption { image: PathBuf, origin: String },

    #[error("{}: caption has {lines} non-empty lines; only the first is used", path.display())]
    MultiLineCaption { path: PathBuf, lines: usize },

    #[error("{}, line {line}: no image \"{file_name}\" among the scanned images; row ignored",
        metadata.display())]
    OrphanMetadataRow {
        metadata: PathBuf,
        line: usize,
        file_name: String,
    },

    #[error(
        "{}: has both {} and a row in {} (line {line}) with a different text; the caption file \
         is used",
        image.display(),
        sidecar.display(),
        metadata.display()
    )]
    CaptionConflict {
        image: PathBuf,
        sidecar: PathBuf,
        metadata: PathBuf,
        line: usize,
    },

    #[error(
        "validation_split = {split} asks for a validation set, but there is only {images} \
         image; nothing is held out"
    )]
    NoValidation { split: f64, images: usize },

    #[error(
        "dataset {dataset}: {reg} regularisation samples per epoch (with repeats) for {train} \
         training samples: {unused} regularisation image(s) are not used (as in sd-scripts, \
         regularisation images are taken in order until they match the training samples)"
    )]
    RegImagesUnused {
        dataset: usize,
        train: usize,
        reg: usize,
        unused: usize,
    },
}
