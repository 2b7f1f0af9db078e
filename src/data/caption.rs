//! Caption augmentation per sample, as kohya's `process_caption`: caption dropout, then tag
//! shuffling that keeps the first `keep_tokens` tags in place.

use super::DataOptions;
use crate::rng::Rng;

/// The caption one sample trains with.
///
/// - With probability `caption_dropout_rate` the caption is empty (one uniform draw, only when
///   the rate is > 0).
/// - With `shuffle_caption`, the text is split on ",", each tag trimmed, empty tags dropped
///   (kohya keeps them, which turns "a, b," into "a, , b" after a shuffle); the first
///   `keep_tokens` tags stay in front in their order, the rest are shuffled (Fisher–Yates), and
///   all are joined with ", ".
/// - Otherwise the text is returned unchanged.
///
/// Randomness comes only from `rng`, so a run is reproducible from its seed.
pub fn process_caption(text: &str, opts: &DataOptions, rng: &mut Rng) -> String {
    if opts.caption_dropout_rate > 0.0 && rng.uniform() < opts.caption_dropout_rate {
        return String::new();
    }
    if !opts.shuffle_caption {
        return text.to_string();
    }
    let mut tags: Vec<&str> = text
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect();
    let keep = opts.keep_tokens.min(tags.len());
    shuffle(&mut tags[keep..], rng);
    tags.join(", ")
}

/// Fisher–Yates with the crate's RNG.
pub(crate) fn shuffle<T>(xs: &mut [T], rng: &mut Rng) {
    for i in (1..xs.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        xs.swap(i, j);
    }
}
