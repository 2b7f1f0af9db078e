//! Aspect-ratio bucketing, with kohya-ss/sd-scripts' math (library/model_util.py
//! `make_bucket_resolutions`, library/train_util.py `BucketManager.select_bucket`), so a data
//! set lands in the same buckets as under kohya.
//!
//! Bucket resolutions, for `max_reso` = (W, H), max_area = W·H and step s:
//!   - the square ⌊√max_area / s⌋·s on both sides;
//!   - for width w = min, min+s, …, ≤ max: height h = min(max, ⌊⌊max_area / w⌋ / s⌋·s); when
//!     h ≥ min, both (w, h) and (h, w).
//!
//! Every bucket has area ≤ max_area and, with min a multiple of s, sides that are multiples of s.
//! The list is sorted (by width, then height), which fixes the tie-break of `select_bucket`.
//!
//! An image of aspect a = w/h goes, by default (resizing up or down), to the bucket of its exact
//! size if there is one, else to the first bucket whose aspect is closest to a; it is resized to
//! cover that bucket (the side that fits exactly is the one whose aspect is larger than the
//! bucket's, the other overhangs) and then cropped. With `no_upscale`, an image larger than
//! max_area is first scaled down to about max_area (kohya's step-rounding of either side, the
//! one closer in aspect wins), smaller ones keep their size, and the bucket is that size rounded
//! down to multiples of s: no image is ever enlarged, and the bucket list is not used.

/// A bucket or image size, (width, height) in pixels.
pub type Reso = (usize, usize);

/// kohya's bucket resolutions for `max_reso` (the training resolution), sorted.
///
/// `min_size` ≤ `max_size` and `divisible` > 0 are the caller's to check (`DataOptions` does).
pub fn make_bucket_resolutions(
    max_reso: Reso,
    min_size: usize,
    max_size: usize,
    divisible: usize,
) -> Vec<Reso> {
    let step = divisible.max(1);
    let max_area = max_reso.0 * max_reso.1;
    let mut resos = Vec::new();
    let square = (max_area as u64).isqrt() as usize / step * step;
    resos.push((square, square));
    let mut width = min_size;
    while width <= max_size && width > 0 {
        let height = max_size.min(max_area / width / step * step);
        if height >= min_size {
            resos.push((width, height));
            resos.push((height, width));
        }
        width += step;
    }
    resos.retain(|&(w, h)| w > 0 && h > 0);
    resos.sort_unstable();
    resos.dedup();
    resos
}

/// Where an image goes: its bucket and the size it is resized to before cropping to it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BucketChoice {
    pub bucket: Reso,
    /// Covers `bucket`: each side ≥ the bucket's.
    pub resized: Reso,
    /// bucket aspect − image aspect.
    pub ar_error: f64,
}

/// How images are assigned to buckets.
#[derive(Clone, Debug)]
pub enum Bucketing {
    /// Choose among predefined resolutions (bucketing on, or off with the single
    /// resolution `[resolution]`), resizing up or down.
    Predefined(Vec<Reso>),
    /// kohya's `bucket_no_upscale`: buckets follow the images, never enlarged.
    NoUpscale { max_area: usize, steps: usize },
}

impl Bucketing {
    pub fn select(&self, image: Reso) -> BucketChoice {
        match self {
            Bucketing::Predefined(resos) => select_predefined(resos, image),
            Bucketing::NoUpscale { max_area, steps } => select_no_upscale(*max_area, *steps, image),
        }
    }
}

/// Python's `int(x + 0.5)` for x ≥ 0.
fn round_half_up(x: f64) -> usize {
    if x.is_finite() && x > 0.0 {
        (x + 0.5) as usize
    } else {
        0
    }
}

/// The size that covers `bucket` keeping `image`'s aspect (kohya's scale rule).
pub fn cover_size(image: Reso, bucket: Reso) -> Reso {
    let (iw, ih) = (image.0.max(1) as f64, image.1.max(1) as f64);
    let aspect = iw / ih;
    let bucket_aspect = bucket.0 as f64 / bucket.1.max(1) as f64;
    let scale = if aspect > bucket_aspect {
        bucket.1 as f64 / ih
    } else {
        bucket.0 as f64 / iw
    };
    let w = round_half_up(iw * scale);
    let h = round_half_up(ih * scale);
    // Rounding cannot undershoot in exact arithmetic; guard the last ulp anyway.
    (w.max(bucket.0), h.max(bucket.1))
}

fn select_predefined(resos: &[Reso], image: Reso) -> BucketChoice {
    let (iw, ih) = image;
    let aspect = iw as f64 / ih.max(1) as f64;
    let bucket = if resos.contains(&image) {
        image
    } else {
        // First minimum, as numpy's argmin.
        let mut best = resos.first().copied().unwrap_or(image);
        let mut best_err = f64::INFINITY;
        for &(w, h) in resos {
            let err = (w as f64 / h as f64 - aspect).abs();
            if err < best_err {
                best_err = err;
                best = (w, h);
            }
        }
        best
    };
    BucketChoice {
        bucket,
        resized: cover_size(image, bucket),
        ar_error: bucket.0 as f64 / bucket.1.max(1) as f64 - aspect,
    }
}

fn select_no_upscale(max_area: usize, steps: usize, image: Reso) -> BucketChoice {
    let steps = steps.max(1);
    let (iw, ih) = image;
    let aspect = iw as f64 / ih.max(1) as f64;
    let round_to_steps = |x: f64| {
        let x = round_half_up(x);
        x - x % steps
    };
    let resized = if iw * ih > max_area {
        let resized_width = (max_area as f64 * aspect).sqrt();
        let resized_height = max_area as f64 / resized_width;

        // Round either side to steps and derive the other; keep the closer aspect. (kohya
        // divides by zero here for extreme aspects; a zero side loses instead.)
        let ar_of = |w: usize, h: usize| {
            if w == 0 || h == 0 {
                f64::INFINITY
            } else {
                w as f64 / h as f64
            }
        };
        let b_width_rounded = round_to_steps(resized_width);
        let b_height_in_wr = round_to_steps(b_width_rounded as f64 / aspect);
        let ar_width_rounded = ar_of(b_width_rounded, b_height_in_wr);

        let b_height_rounded = round_to_steps(resized_height);
        let b_width_in_hr = round_to_steps(b_height_rounded as f64 * aspect);
        let ar_height_rounded = ar_of(b_width_in_hr, b_height_rounded);

        if (ar_width_rounded - aspect).abs() < (ar_height_rounded - aspect).abs() {
            (
                b_width_rounded,
                round_half_up(b_width_rounded as f64 / aspect),
            )
        } else {
            (
                round_half_up(b_height_rounded as f64 * aspect),
                b_height_rounded,
            )
        }
    } else {
        image
    };
    let bucket = (resized.0 - resized.0 % steps, resized.1 - resized.1 % steps);
    BucketChoice {
        bucket,
        resized,
        ar_error: bucket.0 as f64 / bucket.1.max(1) as f64 - aspect,
    }
}
