//! Caption augmentation per sample, in the order of sd-scripts' `process_caption`: prefix and
//! suffix, caption dropout (by chance and by epoch), wildcards or the first line, then (with
//! shuffling or tag dropout) tags split into the kept ones and the rest, the rest shuffled and
//! dropped by chance, and last the secondary separator turned into a comma.

use super::DataOptions;
use crate::rng::Rng;

/// Tags are separated by this (kohya's `caption_separator` default) and joined with ", ".
const SEPARATOR: &str = ",";

/// The caption one sample trains with in (1-based) `epoch`, as sd-scripts makes it:
///
/// 1. `caption_prefix` + " " + caption + " " + `caption_suffix` (each when set, non-empty).
/// 2. Empty with probability `caption_dropout_rate` (one uniform draw, only when the rate is
///    > 0), or in every `caption_dropout_every_n_epochs`-th epoch.
/// 3. With `enable_wildcard`, a caption of several lines gives one line at random and each
///    `{a|b|c}` one of its choices at random (`{{` and `}}` are literal braces); otherwise the
///    first line.
/// 4. With `shuffle_caption` or a `caption_tag_dropout_rate` > 0: the text is split on "," and
///    each tag trimmed; the kept tags are those before `keep_tokens_separator` (and after a
///    second one, kept at the end) when the caption has it, else the first `keep_tokens`; the
///    others are shuffled (Fisher–Yates) with `shuffle_caption`, then each dropped with
///    probability `caption_tag_dropout_rate`; all are joined with ", ". Empty tags are
///    dropped (kohya keeps them where there is no separator: "a, b," gives "a, , b" after a
///    shuffle there).
/// 5. `secondary_separator` becomes ",".
///
/// Randomness comes only from `rng`, so a run is reproducible from its seed.
pub fn process_caption(text: &str, opts: &DataOptions, epoch: u64, rng: &mut Rng) -> String {
    let caption = with_prefix_suffix(text, opts);
    let every = opts.caption_dropout_every_n_epochs as u64;
    let dropped = (opts.caption_dropout_rate > 0.0 && rng.uniform() < opts.caption_dropout_rate)
        || (every > 0 && epoch.is_multiple_of(every));
    if dropped {
        return String::new();
    }
    let caption = if opts.enable_wildcard {
        wildcards(&caption, Some(rng))
    } else {
        first_line(&caption).to_string()
    };
    let caption = if opts.shuffle_caption || opts.caption_tag_dropout_rate > 0.0 {
        shuffle_tags(&caption, opts, rng)
    } else {
        caption
    };
    secondary(caption, opts)
}

/// The caption without random choices (fixed-noise evaluation, and the cached embedding when
/// captions never change): prefix and suffix, the first line (with `enable_wildcard`, each
/// wildcard's first choice), the secondary separator as a comma.
pub fn plain_caption(text: &str, opts: &DataOptions) -> String {
    let caption = with_prefix_suffix(text, opts);
    let caption = if opts.enable_wildcard {
        wildcards(first_line(&caption), None)
    } else {
        first_line(&caption).to_string()
    };
    secondary(caption, opts)
}

/// Whether [`process_caption`] can give other text than [`plain_caption`].
pub fn captions_vary(opts: &DataOptions) -> bool {
    opts.shuffle_caption
        || opts.caption_dropout_rate > 0.0
        || opts.caption_tag_dropout_rate > 0.0
        || opts.caption_dropout_every_n_epochs > 0
        || opts.enable_wildcard
}

fn set(s: &Option<String>) -> Option<&str> {
    s.as_deref().filter(|s| !s.is_empty())
}

fn with_prefix_suffix(text: &str, opts: &DataOptions) -> String {
    let mut caption = text.to_string();
    if let Some(p) = set(&opts.caption_prefix) {
        caption = format!("{p} {caption}");
    }
    if let Some(s) = set(&opts.caption_suffix) {
        caption = format!("{caption} {s}");
    }
    caption
}

fn first_line(text: &str) -> &str {
    text.split('\n').next().unwrap_or("")
}

fn secondary(caption: String, opts: &DataOptions) -> String {
    match set(&opts.secondary_separator) {
        Some(sep) => caption.replace(sep, SEPARATOR),
        None => caption,
    }
}

/// One line at random (several lines), then each `{a|b}` (a `{`, text up to the next `}`, as
/// sd-scripts' `\{([^}]+)\}`) one choice: at random with `rng`, else the first. `{{` and `}}`
/// are literal braces.
fn wildcards(text: &str, mut rng: Option<&mut Rng>) -> String {
    let lines: Vec<&str> = text.split('\n').collect();
    let line = match rng.as_deref_mut() {
        Some(r) if lines.len() > 1 => lines[r.below(lines.len() as u64) as usize],
        _ => lines[0],
    };
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(at) = rest.find(['{', '}']) {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        if tail.starts_with("{{") || tail.starts_with("}}") {
            out.push_str(&tail[..1]);
            rest = &tail[2..];
        } else if let Some(end) = tail[1..].find('}').filter(|_| tail.starts_with('{')) {
            let body = &tail[1..1 + end];
            if body.is_empty() {
                // `{}` is not a wildcard.
                out.push_str(&tail[..1]);
                rest = &tail[1..];
                continue;
            }
            let choices: Vec<&str> = body.split('|').collect();
            let k = match rng.as_deref_mut() {
                Some(r) => r.below(choices.len() as u64) as usize,
                None => 0,
            };
            out.push_str(choices[k]);
            rest = &tail[2 + end..];
        } else {
            out.push_str(&tail[..1]);
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

fn tags(text: &str) -> Vec<&str> {
    text.split(SEPARATOR)
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect()
}

fn shuffle_tags(caption: &str, opts: &DataOptions, rng: &mut Rng) -> String {
    let (fixed, mut flex, fixed_end) = match set(&opts.keep_tokens_separator)
        .and_then(|sep| caption.split_once(sep).map(|(a, b)| (sep, a, b)))
    {
        Some((sep, front, rest)) => {
            let (flex, end) = rest.split_once(sep).unwrap_or((rest, ""));
            (tags(front), tags(flex), tags(end))
        }
        None => {
            let mut all = tags(caption);
            let flex = all.split_off(opts.keep_tokens.min(all.len()));
            (all, flex, Vec::new())
        }
    };
    if opts.shuffle_caption {
        shuffle(&mut flex, rng);
    }
    if opts.caption_tag_dropout_rate > 0.0 {
        flex.retain(|_| rng.uniform() >= opts.caption_tag_dropout_rate);
    }
    let mut all = fixed;
    all.extend(flex);
    all.extend(fixed_end);
    all.join(", ")
}

/// Fisher–Yates with the crate's RNG.
pub(crate) fn shuffle<T>(xs: &mut [T], rng: &mut Rng) {
    for i in (1..xs.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        xs.swap(i, j);
    }
}
