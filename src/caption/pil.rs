//! The image steps of the WD14 taggers' reference preprocessing, restated from Pillow's C code
//! so that the tagger sees the same bytes as under Python (src/libImaging/AlphaComposite.c and
//! Resample.c, Pillow 11):
//!
//! - `on_white`: `Image.new("RGBA", size, white).alpha_composite(img)`: PIL's integer
//!   compositing with 7 fractional bits; over opaque white it is
//!   out = div255((c·a + 255·(255 − a))·128 + 128·128) >> 7, div255(v) = ((v >> 8) + v) >> 8,
//!   and a pixel with a = 0 is white.
//! - `pad_square`: a white square of the longer side, the picture pasted at
//!   ((side − w) / 2, (side − h) / 2) (floor).
//! - `resize_bicubic`: `Image.resize(size, BICUBIC)` on RGB: the separable two-pass resampler
//!   (horizontal pass first, the intermediate rounded to u8, a pass skipped when its size does
//!   not change). Per output pixel, centre = (i + ½)·scale, support = 2·max(scale, 1), taps
//!   from trunc(centre − support + ½) to trunc(centre + support + ½) clamped to the image,
//!   weights bicubic((j − centre + ½)/max(scale, 1)) with a = −0.5, normalised to sum 1, then
//!   fixed point with 22 fractional bits (rounded away from zero); the sum starts at 2²¹ and
//!   the result is clamp(sum >> 22, 0, 255).
//!
//! What the tests check: tests/caption.rs against Pillow's own output for a non-square RGBA
//! picture (shrunk) and a small RGB one (enlarged), byte for byte through the model's input.

use image::{Rgb, RgbImage, RgbaImage};

/// Over opaque white, as Pillow's `alpha_composite` computes it.
pub fn on_white(rgba: &RgbaImage) -> RgbImage {
    let (w, h) = rgba.dimensions();
    RgbImage::from_fn(w, h, |x, y| {
        let p = rgba.get_pixel(x, y).0;
        let a = u32::from(p[3]);
        if a == 0 {
            return Rgb([255, 255, 255]);
        }
        // coef1 = a·255·255·128 / (255·255) and coef2 = 255·128 − coef1 with a white, opaque
        // destination.
        let coef1 = a * 128;
        let coef2 = 255 * 128 - coef1;
        let blend = |c: u8| {
            let t = u32::from(c) * coef1 + 255 * coef2 + (0x80 << 7);
            ((((t >> 8) + t) >> 8) >> 7) as u8
        };
        Rgb([blend(p[0]), blend(p[1]), blend(p[2])])
    })
}

/// Centred on a white square of the longer side.
pub fn pad_square(img: &RgbImage) -> RgbImage {
    let (w, h) = img.dimensions();
    let side = w.max(h);
    if w == h {
        return img.clone();
    }
    let mut out = RgbImage::from_pixel(side, side, Rgb([255, 255, 255]));
    image::imageops::replace(
        &mut out,
        img,
        i64::from((side - w) / 2),
        i64::from((side - h) / 2),
    );
    out
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// One axis' taps: for each output index, the first input index and the fixed-point weights.
struct Taps {
    first: Vec<usize>,
    weights: Vec<Vec<i32>>,
}

fn taps(in_size: usize, out_size: usize) -> Taps {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = 2.0 * filterscale;
    let mut first = Vec::with_capacity(out_size);
    let mut weights = Vec::with_capacity(out_size);
    for i in 0..out_size {
        let centre = (i as f64 + 0.5) * scale;
        // C's (int) conversion truncates toward zero, as `as` does.
        let lo = ((centre - support + 0.5) as i64).max(0);
        let hi = ((centre + support + 0.5) as i64).min(in_size as i64);
        let k: Vec<f64> = (lo..hi)
            .map(|j| bicubic((j as f64 - centre + 0.5) / filterscale))
            .collect();
        let sum: f64 = k.iter().sum();
        let fixed = k
            .iter()
            .map(|&w| {
                let w = if sum != 0.0 { w / sum } else { w };
                let v = w * f64::from(1u32 << PRECISION_BITS);
                if w < 0.0 {
                    (v - 0.5) as i32
                } else {
                    (v + 0.5) as i32
                }
            })
            .collect();
        first.push(lo as usize);
        weights.push(fixed);
    }
    Taps { first, weights }
}

fn clip8(v: i64) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// One pass along x (`horizontal`) or y.
fn pass(img: &RgbImage, taps: &Taps, out_w: u32, out_h: u32, horizontal: bool) -> RgbImage {
    RgbImage::from_fn(out_w, out_h, |x, y| {
        let i = if horizontal { x } else { y } as usize;
        let mut acc = [1i64 << (PRECISION_BITS - 1); 3];
        for (t, &w) in taps.weights[i].iter().enumerate() {
            let j = (taps.first[i] + t) as u32;
            let p = if horizontal {
                img.get_pixel(j, y)
            } else {
                img.get_pixel(x, j)
            };
            for (a, &c) in acc.iter_mut().zip(&p.0) {
                *a += i64::from(c) * i64::from(w);
            }
        }
        Rgb(acc.map(clip8))
    })
}

/// Pillow's `resize((w, h), Image.BICUBIC)` of an RGB image.
pub fn resize_bicubic(img: &RgbImage, w: u32, h: u32) -> RgbImage {
    let (iw, ih) = img.dimensions();
    let mut out = img.clone();
    if w != iw {
        out = pass(&out, &taps(iw as usize, w as usize), w, ih, true);
    }
    if h != ih {
        out = pass(&out, &taps(ih as usize, h as usize), w, h, false);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_sum_to_one_in_fixed_point() {
        for (i, o) in [(37, 32), (13, 32), (1000, 448), (448, 448)] {
            let t = taps(i, o);
            for w in &t.weights {
                let s: i32 = w.iter().sum();
                // Rounding each weight moves the sum by at most half a unit per tap.
                assert!(
                    (s - (1 << PRECISION_BITS)).abs() <= w.len() as i32,
                    "{i}->{o}: {s}"
                );
            }
        }
    }

    #[test]
    fn a_flat_image_stays_flat_and_alpha_zero_is_white() {
        let img = RgbImage::from_pixel(17, 17, Rgb([10, 200, 77]));
        let out = resize_bicubic(&img, 5, 5);
        assert!(out.pixels().all(|p| p.0 == [10, 200, 77]));
        let rgba = RgbaImage::from_pixel(2, 1, image::Rgba([0, 0, 0, 0]));
        assert!(on_white(&rgba).pixels().all(|p| p.0 == [255; 3]));
        let half = RgbaImage::from_pixel(1, 1, image::Rgba([0, 0, 0, 128]));
        // 255·127/255 = 127: half black over white.
        assert_eq!(on_white(&half).get_pixel(0, 0).0, [127; 3]);
    }
}
