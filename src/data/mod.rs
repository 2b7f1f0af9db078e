//! The data pipeline: a training folder → checked items with captions and buckets → per-epoch
//! batches → pixels for the VAE and augmented captions for the text encoder.
//!
//! Folder layout (kohya-ss/sd-scripts' DreamBooth layout, plus Hugging Face `imagefolder`
//! metadata):
//! ```text
//! train_data_dir/
//!   a.png  a.txt            images directly here count once per epoch
//!   10_mychar/              N_name: each image inside counts N times per epoch
//!     b.jpg  b.txt          caption = sidecar file with caption_extension ...
//!     metadata.jsonl        ... or a row {"file_name": "b.jpg", "text": "..."} (or .csv)
//!   notes/                  not N_name: ignored, with a warning
//! ```
//! Several folders (kohya's `[[datasets.subsets]]`, `reg_data_dir`) are [`Source`]s scanned
//! together by [`scan_sources`], which balances regularisation images as sd-scripts does.
//! [`scan`] checks every file before any training work (each image fully decoded, every
//! caption read) and reports all problems at once. [`epoch_batches`] groups samples so a batch
//! never mixes buckets, as kohya does; [`load_pixels`] and [`process_caption`] produce one
//! sample's inputs. All randomness comes from the crate's seedable [`Rng`].

pub mod bucket;
pub mod caption;
pub mod error;
mod finetune;
pub mod hash;
pub mod metadata;
pub mod pixels;
pub(crate) mod scan;
pub mod size_cond;
mod sources;
pub mod summary;

use std::collections::BTreeMap;
use std::path::PathBuf;

pub use bucket::{make_bucket_resolutions, BucketChoice, Bucketing, Reso};
pub use caption::{captions_vary, plain_caption, process_caption};
pub use error::{DataError, DataWarning};
pub use pixels::load_pixels;
pub use scan::scan;
pub use size_cond::SizeCond;
pub use sources::{balance_reg, scan_sources, Source};

use crate::rng::Rng;

/// What the data pipeline needs from the configuration (kohya's option names).
#[derive(Clone, Debug, PartialEq)]
pub struct DataOptions {
    pub train_data_dir: PathBuf,
    /// Sidecar caption extension, e.g. ".txt" (a missing leading dot is added).
    pub caption_extension: String,
    /// (width, height); the bucket area limit when bucketing.
    pub resolution: (usize, usize),
    pub enable_bucket: bool,
    pub min_bucket_reso: usize,
    pub max_bucket_reso: usize,
    pub bucket_reso_steps: usize,
    pub bucket_no_upscale: bool,
    pub flip_aug: bool,
    pub random_crop: bool,
    pub shuffle_caption: bool,
    pub keep_tokens: usize,
    pub caption_dropout_rate: f64,
    /// kohya's caption options (see [`process_caption`]); an empty text is unset.
    pub caption_tag_dropout_rate: f64,
    pub caption_dropout_every_n_epochs: usize,
    pub caption_prefix: Option<String>,
    pub caption_suffix: Option<String>,
    pub keep_tokens_separator: Option<String>,
    pub secondary_separator: Option<String>,
    /// Wildcards; also keeps every line of a caption file (one is chosen per sample).
    pub enable_wildcard: bool,
    /// Fraction of the images held out for validation, in [0, 1).
    pub validation_split: f64,
    /// Times each image directly in train_data_dir counts per epoch (N_name subfolders: N).
    pub num_repeats: usize,
    /// The caption of an image directly in train_data_dir that has no caption (kohya's
    /// `class_tokens`; in an `N_<class tokens>` subfolder the folder name gives them).
    pub class_tokens: Option<String>,
    /// kohya's fine-tuning metadata JSON (or JSONL): the images it lists (relative to
    /// `train_data_dir`) and their captions, instead of the folder's files.
    pub metadata_file: Option<PathBuf>,
    /// Samples per batch of this folder's dataset (kohya's per-dataset `batch_size`).
    pub batch_size: usize,
    pub seed: u64,
}

impl Default for DataOptions {
    /// kohya's option defaults, except `caption_extension` ".txt" and bucketing on at
    /// 512x512 (what kohya's GUIs pass).
    fn default() -> Self {
        DataOptions {
            train_data_dir: PathBuf::new(),
            caption_extension: ".txt".into(),
            resolution: (512, 512),
            enable_bucket: true,
            min_bucket_reso: 256,
            max_bucket_reso: 1024,
            bucket_reso_steps: 64,
            bucket_no_upscale: false,
            flip_aug: false,
            random_crop: false,
            shuffle_caption: false,
            keep_tokens: 0,
            caption_dropout_rate: 0.0,
            caption_tag_dropout_rate: 0.0,
            caption_dropout_every_n_epochs: 0,
            caption_prefix: None,
            caption_suffix: None,
            keep_tokens_separator: None,
            secondary_separator: None,
            enable_wildcard: false,
            validation_split: 0.0,
            num_repeats: 1,
            class_tokens: None,
            metadata_file: None,
            batch_size: 1,
            seed: 0,
        }
    }
}

/// Where an item's caption came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CaptionSource {
    /// The sidecar caption file.
    Sidecar(PathBuf),
    /// A row of a metadata.jsonl / metadata.csv (1-based line).
    Metadata { path: PathBuf, line: usize },
    /// No caption file: the class tokens (of the `N_<class tokens>` folder, or the
    /// `class_tokens` key), as kohya's DreamBooth method captions such images.
    ClassTokens,
}

/// One training image, checked.
#[derive(Clone, Debug, PartialEq)]
pub struct Item {
    /// The image file (train_data_dir joined with its relative path).
    pub path: PathBuf,
    /// The caption as written (first line of the sidecar file, trimmed; or the metadata text).
    pub caption: String,
    pub caption_source: CaptionSource,
    /// Times per epoch (N of an N_name folder; 1 directly in train_data_dir; for a
    /// regularisation image, what the balancing against the training images gave).
    pub repeats: usize,
    /// The [`Source`] (index into [`Dataset::sources`]) the image was found in.
    pub source: usize,
    /// The dataset (kohya's `[[datasets]]`) of its source: batches never mix datasets.
    pub dataset: usize,
    /// A regularisation image (kohya's `is_reg`): its loss is weighted by `prior_loss_weight`.
    pub is_reg: bool,
    /// (width, height) after EXIF orientation.
    pub size: Reso,
    /// (width, height) of its bucket: every side a multiple of 8.
    pub bucket: Reso,
    /// The size it is resized to before cropping to `bucket`.
    pub resized: Reso,
    pub(crate) file_hash: u64,
    pub(crate) content_hash: u64,
}

/// Bump when the pixels produced for the same file and bucket change (resampling, alpha,
/// orientation), so latent caches keyed by [`Item::content_hash`] are invalidated.
pub const PIPELINE_VERSION: u64 = 1;

impl Item {
    /// A key for a latent cache: XXH64 over the file's bytes, the bucket, the resized size,
    /// `random_crop` and [`PIPELINE_VERSION`]. Equal keys mean equal pixels before the crop
    /// offset and flip; a cache of the centre crop stores the flipped latents too (or is not
    /// used with `random_crop`, as in kohya).
    pub fn content_hash(&self) -> u64 {
        self.content_hash
    }

    /// XXH64 of the file's bytes alone.
    pub fn file_hash(&self) -> u64 {
        self.file_hash
    }

    /// An image that exists only as its size (`plan`'s images, whose pixels are zeros):
    /// caption "image <i>", bucket and size `bucket`, seen once per epoch.
    pub fn synthetic(i: usize, bucket: Reso) -> Item {
        Item {
            path: PathBuf::from(format!("<synthetic image {i}>")),
            caption: format!("image {i}"),
            caption_source: CaptionSource::Sidecar(PathBuf::new()),
            repeats: 1,
            source: 0,
            dataset: 0,
            is_reg: false,
            size: bucket,
            bucket,
            resized: bucket,
            file_hash: i as u64,
            content_hash: i as u64,
        }
    }

    pub(crate) fn compute_content_hash(&mut self, random_crop: bool) {
        let mut key = Vec::with_capacity(8 * 7);
        for v in [
            self.file_hash,
            self.bucket.0 as u64,
            self.bucket.1 as u64,
            self.resized.0 as u64,
            self.resized.1 as u64,
            random_crop as u64,
            PIPELINE_VERSION,
        ] {
            key.extend_from_slice(&v.to_le_bytes());
        }
        self.content_hash = hash::xxh64(&key, 0);
    }
}

/// Scanned training folders (one, or kohya's datasets and subsets).
#[derive(Clone, Debug)]
pub struct Dataset {
    /// The first source's folder.
    pub train_data_dir: PathBuf,
    /// The folders scanned, in order; [`Item::source`] indexes them (empty: one folder with
    /// the `batch_size` the batching functions are given).
    pub sources: Vec<Source>,
    /// Training images (then regularisation images), source by source, each sorted by path.
    pub items: Vec<Item>,
    /// Held-out images (`validation_split`), sorted by path; disjoint from `items`.
    pub validation: Vec<Item>,
    /// Every bucket in use (training and validation), sorted.
    pub buckets: Vec<Reso>,
    /// Non-fatal findings, in folder order.
    pub warnings: Vec<DataWarning>,
    /// Regularisation samples per epoch before the balancing (kohya's `num_reg_images`:
    /// Σ repeats of the regularisation images found).
    pub num_reg_images: usize,
    /// Each folder found, in scan order, as kohya's metadata counts it ([`summary`]).
    pub folders: Vec<summary::FolderSummary>,
}

/// A batch's place: the dataset and the bucket (a batch never mixes either).
pub type BatchGroup = (usize, Reso);

impl Dataset {
    /// Samples per epoch: Σ repeats (training and balanced regularisation images).
    pub fn samples_per_epoch(&self) -> usize {
        self.items.iter().map(|i| i.repeats).sum()
    }

    /// Training samples per epoch, without the regularisation images (kohya's
    /// `num_train_images`).
    pub fn train_samples_per_epoch(&self) -> usize {
        self.items
            .iter()
            .filter(|i| !i.is_reg)
            .map(|i| i.repeats)
            .sum()
    }

    /// The loss weight of each training sample `idx` (indices into `items`):
    /// `prior_loss_weight` for a regularisation image, 1 otherwise (kohya's `loss_weights`);
    /// None when all are 1.
    pub fn loss_weights(&self, idx: &[usize], prior_loss_weight: f64) -> Option<Vec<f64>> {
        let w: Vec<f64> = idx
            .iter()
            .map(|&i| {
                if self.items[i].is_reg {
                    prior_loss_weight
                } else {
                    1.0
                }
            })
            .collect();
        w.iter().any(|&x| x != 1.0).then_some(w)
    }

    /// The batch size of `dataset`: its sources' `batch_size`, else `fallback` (0 is 1).
    pub fn batch_size(&self, dataset: usize, fallback: usize) -> usize {
        self.sources
            .iter()
            .find(|s| s.dataset == dataset)
            .map_or(fallback, |s| s.opts.batch_size)
            .max(1)
    }

    /// Batches per epoch (as many as [`epoch_batches`] returns); `batch_size` for a
    /// dataset without its own.
    pub fn batches_per_epoch(&self, batch_size: usize) -> usize {
        self.samples_by_bucket()
            .iter()
            .map(|(&(d, _), &n)| n.div_ceil(self.batch_size(d, batch_size)))
            .sum()
    }

    /// Samples per epoch in each dataset's buckets.
    pub fn samples_by_bucket(&self) -> BTreeMap<BatchGroup, usize> {
        let mut m = BTreeMap::new();
        for it in &self.items {
            *m.entry((it.dataset, it.bucket)).or_insert(0) += it.repeats;
        }
        m
    }
}

/// One epoch's batches of indices into `dataset.items`, as kohya does: each image appears
/// `repeats` times; within each dataset's bucket the samples are shuffled and cut into batches
/// of the dataset's batch size (`batch_size` for one without its own; the last batch of a
/// bucket may be smaller); the batches of all buckets and datasets are then shuffled together.
/// A batch never mixes buckets or datasets. A batch size of 0 is taken as 1.
pub fn epoch_batches(dataset: &Dataset, batch_size: usize, rng: &mut Rng) -> Vec<Vec<usize>> {
    let mut by_bucket: BTreeMap<BatchGroup, Vec<usize>> = BTreeMap::new();
    for (i, it) in dataset.items.iter().enumerate() {
        let samples = by_bucket.entry((it.dataset, it.bucket)).or_default();
        samples.extend(std::iter::repeat_n(i, it.repeats));
    }
    let mut batches = Vec::new();
    for (&(d, _), samples) in by_bucket.iter_mut() {
        caption::shuffle(samples, rng);
        let bs = dataset.batch_size(d, batch_size);
        batches.extend(samples.chunks(bs).map(<[usize]>::to_vec));
    }
    caption::shuffle(&mut batches, rng);
    batches
}

/// The validation set's batches of indices into `dataset.validation`: each image once, grouped
/// by dataset and bucket (in order, images in path order), no shuffling, so every evaluation
/// sees the same batches.
pub fn validation_batches(dataset: &Dataset, batch_size: usize) -> Vec<Vec<usize>> {
    let mut by_bucket: BTreeMap<BatchGroup, Vec<usize>> = BTreeMap::new();
    for (i, it) in dataset.validation.iter().enumerate() {
        by_bucket
            .entry((it.dataset, it.bucket))
            .or_default()
            .push(i);
    }
    by_bucket
        .iter()
        .flat_map(|(&(d, _), v)| {
            v.chunks(dataset.batch_size(d, batch_size))
                .map(<[usize]>::to_vec)
                .collect::<Vec<_>>()
        })
        .collect()
}
