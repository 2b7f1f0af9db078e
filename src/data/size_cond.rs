//! SDXL's size and crop conditioning of one training sample, as sd-scripts computes it
//! (library/train_util.py: `BaseDataset.__getitem__`, `trim_and_resize_if_required`,
//! `BucketManager.get_crop_ltrb`).
//!
//! The UNet reads six numbers per sample, in this order:
//!   original_h, original_w   the image's size before any resize (EXIF-oriented);
//!   crop_top, crop_left      where the image sits in its bucket when it is fitted INSIDE the
//!                            bucket (Stability AI's preprocessing), not where training cut it:
//!                            for bucket (W, H) and image aspect a = w/h,
//!                              a < W/H: the image is H tall, a·H wide, left = ⌊(W − a·H)/2⌋, top = 0
//!                              else:    the image is W wide, W/a tall,  top = ⌊(H − W/a)/2⌋, left = 0
//!                            and flipped, left = W − (left + fitted width);
//!   target_h, target_w       the bucket.
//! sd-scripts uses the same numbers whether the crop was centred or random (its source says it
//! has no better idea for random crops), and with buckets off the sample's own size as the
//! original and no crop.

use super::Reso;

/// The six size/crop ids of a sample (see the module comment), as the UNet's `time_ids` take
/// them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SizeCond {
    pub original_hw: (f64, f64),
    pub crop_top_left: (f64, f64),
    pub target_hw: (f64, f64),
}

impl SizeCond {
    /// The ids of an image of `size` (w, h) trained in `bucket` (w, h), `flipped` or not; with
    /// `bucketing` off, the bucket is also the original size and there is no crop.
    pub fn of(size: Reso, bucket: Reso, flipped: bool, bucketing: bool) -> SizeCond {
        let (bw, bh) = (bucket.0 as f64, bucket.1 as f64);
        let target_hw = (bh, bw);
        if !bucketing {
            return SizeCond {
                original_hw: target_hw,
                crop_top_left: (0.0, 0.0),
                target_hw,
            };
        }
        let (iw, ih) = (size.0 as f64, size.1 as f64);
        let image_ar = iw / ih;
        let (fitted_w, fitted_h) = if bw / bh > image_ar {
            (bh * image_ar, bh)
        } else {
            (bw, bw / image_ar)
        };
        let left = ((bw - fitted_w) / 2.0).floor();
        let top = ((bh - fitted_h) / 2.0).floor();
        let left = if flipped {
            bw - (left + fitted_w)
        } else {
            left
        };
        SizeCond {
            original_hw: (ih, iw),
            // sd-scripts stores them as integers (`int(...)`, which truncates).
            crop_top_left: (top.trunc(), left.trunc()),
            target_hw,
        }
    }

    /// [original_h, original_w, crop_top, crop_left, target_h, target_w].
    pub fn ids(&self) -> [f32; 6] {
        [
            self.original_hw.0,
            self.original_hw.1,
            self.crop_top_left.0,
            self.crop_top_left.1,
            self.target_hw.0,
            self.target_hw.1,
        ]
        .map(|v| v as f32)
    }

    /// A sample generated at `size` (w, h) with no crop: what sampling conditions on
    /// (diffusers' default add_time_ids, original = target = the image size).
    pub fn for_generation(size: Reso) -> SizeCond {
        let hw = (size.1 as f64, size.0 as f64);
        SizeCond {
            original_hw: hw,
            crop_top_left: (0.0, 0.0),
            target_hw: hw,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected values worked out by hand with sd-scripts' formulas (get_crop_ltrb, then the
    // flip rule and int()).
    #[test]
    fn wide_image_in_a_square_bucket_sits_centred_vertically() {
        // 1500x1000 in 1024x1024: fitted 1024 x 682.67, top ⌊341.33/2⌋ = 170.
        let c = SizeCond::of((1500, 1000), (1024, 1024), false, true);
        assert_eq!(c.ids(), [1000.0, 1500.0, 170.0, 0.0, 1024.0, 1024.0]);
        // Flipped: left = 1024 − (0 + 1024) = 0.
        let f = SizeCond::of((1500, 1000), (1024, 1024), true, true);
        assert_eq!(f.ids(), [1000.0, 1500.0, 170.0, 0.0, 1024.0, 1024.0]);
    }

    #[test]
    fn tall_image_in_a_wider_bucket_sits_centred_horizontally_and_flip_moves_it() {
        // 600x1000 (a = 0.6) in 832x1216 (0.684): fitted 729.6 x 1216, left ⌊102.4/2⌋ = 51.
        let c = SizeCond::of((600, 1000), (832, 1216), false, true);
        assert_eq!(c.ids(), [1000.0, 600.0, 0.0, 51.0, 1216.0, 832.0]);
        // Flipped: 832 − (51 + 729.6) = 51.4, truncated to 51.
        let f = SizeCond::of((600, 1000), (832, 1216), true, true);
        assert_eq!(f.ids(), [1000.0, 600.0, 0.0, 51.0, 1216.0, 832.0]);
        // An odd margin makes flipping visible: 700x1000 (0.7) in 640x1024 (0.625) is wider
        // than the bucket, so fitted 640 x 914.29, top ⌊109.71/2⌋ = 54; left stays 0.
        let g = SizeCond::of((700, 1000), (640, 1024), true, true);
        assert_eq!(g.ids(), [1000.0, 700.0, 54.0, 0.0, 1024.0, 640.0]);
        // 500x1000 (0.5) in 576x1024 (0.5625): fitted 512 x 1024, left 32; flipped
        // 576 − (32 + 512) = 32; and 510x1000 (0.51): fitted 522.24, left ⌊53.76/2⌋ = 26,
        // flipped 576 − 548.24 = 27.76 → 27.
        let h = SizeCond::of((510, 1000), (576, 1024), false, true);
        let hf = SizeCond::of((510, 1000), (576, 1024), true, true);
        assert_eq!(h.crop_top_left, (0.0, 26.0));
        assert_eq!(hf.crop_top_left, (0.0, 27.0));
    }

    #[test]
    fn same_aspect_and_no_buckets_have_no_crop() {
        let c = SizeCond::of((2048, 2048), (1024, 1024), false, true);
        assert_eq!(c.ids(), [2048.0, 2048.0, 0.0, 0.0, 1024.0, 1024.0]);
        let n = SizeCond::of((1500, 1000), (1024, 1024), true, false);
        assert_eq!(n.ids(), [1024.0, 1024.0, 0.0, 0.0, 1024.0, 1024.0]);
        let s = SizeCond::for_generation((1152, 896));
        assert_eq!(s.ids(), [896.0, 1152.0, 0.0, 0.0, 896.0, 1152.0]);
    }
}
