//! Where `prepare` cuts a resized image down to its target size.
//!
//! The image has already been resized to cover the target (kohya's cover rule, the same one
//! training uses), so at most one side overhangs by more than a rounding pixel, and the crop
//! only chooses an offset along each side:
//! - `center`: the overhang split evenly (training's own crop without `random_crop`);
//! - `smart`: the window that holds the most detail, measured as edge energy: per pixel
//!   |L(x+1,y) − L(x,y)| + |L(x,y+1) − L(x,y)| on the luma L = (299·R + 587·G + 114·B)/1000.
//!   Along x the energy is summed over whole columns and the window of the target's width with
//!   the largest sum wins (prefix sums, O(width)); along y the same over rows. Of equal windows
//!   the one nearest the centre wins, so a flat image crops as `center` does.
//!
//! Edge energy favours texture and outlines (a face, an object against a plain background)
//! over sky, walls and studio backdrops; it is a saliency proxy, not a subject detector.

use image::RgbImage;

/// How `prepare` chooses what to keep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CropMode {
    /// Keep the middle.
    Center,
    /// Keep the most detailed region (edge energy).
    Smart,
    /// Do not crop: only shrink images larger than the target area, keeping their aspect;
    /// training then buckets them itself.
    None,
}

impl CropMode {
    pub const NAMES: [&'static str; 3] = ["center", "smart", "none"];

    pub fn parse(word: &str) -> Option<CropMode> {
        match word.to_ascii_lowercase().as_str() {
            "center" | "centre" => Some(CropMode::Center),
            "smart" => Some(CropMode::Smart),
            "none" => Some(CropMode::None),
            _ => None,
        }
    }
}

/// `auto_crop`'s values in a training config.
impl crate::config::Choice for CropMode {
    const ALL: &'static [CropMode] = &[CropMode::Center, CropMode::Smart, CropMode::None];
    fn name(self) -> String {
        CropMode::NAMES[self as usize].to_string()
    }
    fn parse(word: &str) -> Option<CropMode> {
        CropMode::parse(word)
    }
}

/// The top-left corner of the `target` (width, height) window in `img` for `mode`
/// (`Center` or `Smart`); `img` covers `target` on both sides.
pub fn crop_offset(img: &RgbImage, target: (usize, usize), mode: CropMode) -> (usize, usize) {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let (tw, th) = target;
    let slack = (w.saturating_sub(tw), h.saturating_sub(th));
    if mode != CropMode::Smart || slack == (0, 0) {
        return (slack.0 / 2, slack.1 / 2);
    }
    let (cols, rows) = edge_energy_profiles(img);
    (best_window(&cols, tw), best_window(&rows, th))
}

/// Edge energy summed per column and per row.
fn edge_energy_profiles(img: &RgbImage) -> (Vec<f64>, Vec<f64>) {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let luma: Vec<f64> = img
        .pixels()
        .map(|p| (299.0 * p[0] as f64 + 587.0 * p[1] as f64 + 114.0 * p[2] as f64) / 1000.0)
        .collect();
    let mut cols = vec![0.0; w];
    let mut rows = vec![0.0; h];
    for y in 0..h {
        for x in 0..w {
            let l = luma[y * w + x];
            let mut e = 0.0;
            if x + 1 < w {
                e += (luma[y * w + x + 1] - l).abs();
            }
            if y + 1 < h {
                e += (luma[(y + 1) * w + x] - l).abs();
            }
            cols[x] += e;
            rows[y] += e;
        }
    }
    (cols, rows)
}

/// The start of the `len`-long window of `profile` with the largest sum; of equal sums (within
/// a relative 1e-9) the one whose start is nearest the centred start.
fn best_window(profile: &[f64], len: usize) -> usize {
    let n = profile.len();
    if len >= n {
        return 0;
    }
    let mut prefix = Vec::with_capacity(n + 1);
    prefix.push(0.0);
    for v in profile {
        prefix.push(prefix.last().copied().unwrap_or(0.0) + v);
    }
    let centre = (n - len) / 2;
    let total = prefix[n].max(f64::MIN_POSITIVE);
    let mut best = centre;
    let mut best_sum = prefix[centre + len] - prefix[centre];
    for start in 0..=n - len {
        let sum = prefix[start + len] - prefix[start];
        let better = sum > best_sum + 1e-9 * total;
        let tie = (sum - best_sum).abs() <= 1e-9 * total;
        if better || (tie && start.abs_diff(centre) < best.abs_diff(centre)) {
            best = start;
            best_sum = sum;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_pick_the_largest_sum_and_the_centre_on_ties() {
        assert_eq!(best_window(&[0.0, 0.0, 5.0, 5.0, 0.0, 0.0, 0.0], 2), 2);
        assert_eq!(best_window(&[1.0; 9], 3), 3);
        assert_eq!(best_window(&[9.0, 0.0, 0.0, 0.0, 0.0, 0.0], 2), 0);
        assert_eq!(best_window(&[1.0, 2.0], 5), 0);
    }

    #[test]
    fn a_flat_image_crops_in_the_middle() {
        let img = RgbImage::from_pixel(30, 10, image::Rgb([90, 90, 90]));
        assert_eq!(crop_offset(&img, (10, 10), CropMode::Smart), (10, 0));
        assert_eq!(crop_offset(&img, (10, 10), CropMode::Center), (10, 0));
    }

    #[test]
    fn modes_parse_by_name() {
        for name in CropMode::NAMES {
            assert!(CropMode::parse(name).is_some(), "{name}");
        }
        assert_eq!(CropMode::parse("Smart"), Some(CropMode::Smart));
        assert_eq!(CropMode::parse("left"), None);
    }
}
