//! Several folders as one data set, as kohya's dataset groups: each [`Source`] (a
//! `[[datasets.subsets]]`, train_data_dir with its N_name folders, or `reg_data_dir`) is
//! scanned with its own options; the regularisation images of each dataset are then balanced
//! against its training images the way sd-scripts' `DreamBoothDataset` does.

use super::{scan::scan_folder, DataError, DataOptions, DataWarning, Dataset, Item};

/// One folder to scan, with the options of its subset and dataset.
#[derive(Clone, Debug, PartialEq)]
pub struct Source {
    pub opts: DataOptions,
    /// Regularisation images (kohya's `is_reg`): never held out for validation, balanced
    /// against the training images of their dataset, loss weighted by `prior_loss_weight`.
    pub is_reg: bool,
    /// The dataset (kohya's `[[datasets]]`, in file order) it belongs to.
    pub dataset: usize,
}

/// Scans every source (all problems of all of them at once), then balances each dataset's
/// regularisation images ([`balance_reg`]).
pub fn scan_sources(sources: &[Source]) -> Result<Dataset, DataError> {
    let mut problems = Vec::new();
    let mut parts = Vec::new();
    for (n, s) in sources.iter().enumerate() {
        let opts = if s.is_reg {
            DataOptions {
                validation_split: 0.0,
                ..s.opts.clone()
            }
        } else {
            s.opts.clone()
        };
        match scan_folder(&opts) {
            Ok(part) => parts.push((n, part)),
            Err(DataError::Many(list)) => problems.extend(list),
            Err(e) => problems.push(e),
        }
    }
    if let Some(e) = DataError::collect(problems) {
        return Err(e);
    }
    let mut ds = Dataset {
        train_data_dir: sources
            .first()
            .map(|s| s.opts.train_data_dir.clone())
            .unwrap_or_default(),
        sources: sources.to_vec(),
        items: Vec::new(),
        validation: Vec::new(),
        buckets: Vec::new(),
        warnings: Vec::new(),
        num_reg_images: 0,
        folders: Vec::new(),
    };
    let mut reg = Vec::new();
    for (n, part) in parts {
        let s = &sources[n];
        ds.folders.extend(super::summary::summarize(s, &part.items));
        let tag = |mut it: Item| {
            it.source = n;
            it.dataset = s.dataset;
            it.is_reg = s.is_reg;
            it
        };
        if s.is_reg {
            reg.extend(part.items.into_iter().map(tag));
        } else {
            ds.items.extend(part.items.into_iter().map(tag));
        }
        ds.validation.extend(part.validation.into_iter().map(tag));
        ds.buckets.extend(part.buckets);
        ds.warnings.extend(part.warnings);
    }
    ds.num_reg_images = reg.iter().map(|i| i.repeats).sum();
    let datasets = sources.iter().map(|s| s.dataset).max().map_or(0, |d| d + 1);
    for d in 0..datasets {
        let train: usize = ds
            .items
            .iter()
            .filter(|i| i.dataset == d)
            .map(|i| i.repeats)
            .sum();
        let mine: Vec<Item> = reg.iter().filter(|i| i.dataset == d).cloned().collect();
        let found = mine.len();
        let reg_samples: usize = mine.iter().map(|i| i.repeats).sum();
        let used = balance_reg(mine, train);
        if found > 0 && used.len() < found {
            ds.warnings.push(DataWarning::RegImagesUnused {
                dataset: d,
                train,
                reg: reg_samples,
                unused: found - used.len(),
            });
        }
        ds.items.extend(used);
    }
    ds.buckets.sort_unstable();
    ds.buckets.dedup();
    Ok(ds)
}

/// sd-scripts' balancing of one dataset's regularisation images (in order) against its
/// `train` training samples per epoch: images are taken in order, each with its repeats,
/// until they make at least `train` samples (the images after that are not used); when all
/// of them make fewer, one more repeat is given to each in turn until they make `train`.
/// Returns the images used, with their repeats. No training samples: no image is used.
pub fn balance_reg(mut reg: Vec<Item>, train: usize) -> Vec<Item> {
    let mut n = 0;
    let mut used = 0;
    while used < reg.len() && n < train {
        n += reg[used].repeats;
        used += 1;
    }
    reg.truncate(used);
    let mut i = 0;
    while n < train && !reg.is_empty() {
        reg[i].repeats += 1;
        n += 1;
        i = (i + 1) % reg.len();
    }
    reg
}
