//! What each training folder holds, counted as sd-scripts counts it for a LoRA's metadata
//! (`ss_dataset_dirs`, `ss_reg_dataset_dirs`, `ss_tag_frequency`): per folder its name
//! (the folder's own name, e.g. `10_sks dog`; for a fine-tuning metadata file, the file's
//! name), its repeats as written (a regularisation folder's before the balancing), its images
//! found (kohya's `img_count`: after the validation split, before the balancing drops any
//! regularisation image), and how many of its captions hold each tag (kohya's
//! `set_tag_frequency`: the caption as read, or the class tokens, split at commas, each tag
//! trimmed and lowercased, empty ones skipped); and the buckets as kohya's `bucket_info`
//! reports them ([`bucket_counts`]).

use std::collections::BTreeMap;
use std::path::Path;

use super::{Dataset, Item, Reso, Source};

/// One folder of a data set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FolderSummary {
    pub name: String,
    pub n_repeats: usize,
    pub img_count: usize,
    pub is_reg: bool,
    /// kohya's `[[datasets]]` index.
    pub dataset: usize,
    /// Tag (lowercased) → captions that hold it.
    pub tags: BTreeMap<String, u64>,
}

/// Adds `caption`'s tags to `tags` as kohya's `set_tag_frequency` does.
pub fn count_tags(tags: &mut BTreeMap<String, u64>, caption: &str) {
    for tag in caption.split(',') {
        let tag = tag.trim();
        if !tag.is_empty() {
            *tags.entry(tag.to_lowercase()).or_insert(0) += 1;
        }
    }
}

fn base_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| p.display().to_string())
}

/// The folders of one scanned source, in the order their first image comes (`items` as the
/// scan returned them, each folder's images together).
pub fn summarize(source: &Source, items: &[Item]) -> Vec<FolderSummary> {
    let mut out: Vec<(std::path::PathBuf, FolderSummary)> = Vec::new();
    for it in items {
        let (key, name) = match &source.opts.metadata_file {
            Some(file) => (file.clone(), base_name(file)),
            None => {
                let dir = it.path.parent().unwrap_or(Path::new("")).to_path_buf();
                let name = base_name(&dir);
                (dir, name)
            }
        };
        let i = match out.iter().position(|(k, _)| *k == key) {
            Some(i) => i,
            None => {
                out.push((
                    key,
                    FolderSummary {
                        name,
                        n_repeats: it.repeats,
                        img_count: 0,
                        is_reg: source.is_reg,
                        dataset: source.dataset,
                        tags: BTreeMap::new(),
                    },
                ));
                out.len() - 1
            }
        };
        let f = &mut out[i].1;
        f.img_count += 1;
        count_tags(&mut f.tags, &it.caption);
    }
    out.into_iter().map(|(_, f)| f).collect()
}

/// kohya's `bucket_info` of the training images (regularisation images included, with their
/// balanced repeats; validation images are another data set there): each bucket in use with
/// its samples per epoch, in (width, height) order, and the mean |aspect-ratio error| of the
/// images, each counted once (0 without images).
pub fn bucket_counts(ds: &Dataset) -> (Vec<(Reso, u64)>, f64) {
    let mut counts: BTreeMap<Reso, u64> = BTreeMap::new();
    let mut err_sum = 0.0;
    for it in &ds.items {
        *counts.entry(it.bucket).or_insert(0) += it.repeats as u64;
        // (A data set without sources is `plan`'s, whose images are their buckets.)
        err_sum += ds.sources.get(it.source).map_or(0.0, |s| {
            super::scan::bucketing(&s.opts)
                .select(it.size)
                .ar_error
                .abs()
        });
    }
    let mean = if ds.items.is_empty() {
        0.0
    } else {
        err_sum / ds.items.len() as f64
    };
    (counts.into_iter().collect(), mean)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_split_trimmed_lowercased_and_empty_ones_skipped() {
        let mut t = BTreeMap::new();
        count_tags(&mut t, "sks dog, Grass,  sitting ,");
        count_tags(&mut t, "sks dog,,grass");
        let want: BTreeMap<String, u64> = [("grass", 2), ("sitting", 1), ("sks dog", 2)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        assert_eq!(t, want);
    }
}
