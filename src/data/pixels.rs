//! From an image file to the VAE's input: decode, EXIF orientation, RGB on white, resize to
//! cover the bucket, crop, optional flip, [3, H, W] f32 in [-1, 1].
//!
//! - Format by content (the extension is only a first guess), so a JPEG saved as `.png`
//!   loads. Decoding allocates at most [`MAX_DECODED_BYTES`]; larger images are an error, not
//!   an out-of-memory abort.
//! - EXIF orientation (JPEG, WebP) is applied, so an image trains the way viewers show it; the
//!   size used for bucketing is the oriented one.
//! - Alpha is composited on white: c' = c·a + 255·(1 − a). Transparent regions are usually
//!   black or garbage under alpha 0, and a white background is what a person sees in a viewer.
//!   (kohya's PIL `convert("RGB")` drops alpha instead.) Grayscale is replicated to RGB; 16-bit
//!   channels are rounded to 8 bits, as the VAE trained on 8-bit images.
//! - Resampling is Lanczos3 (image's separable resampler; when shrinking, the kernel is widened
//!   by the scale factor, so it averages like an area filter rather than aliasing). kohya uses
//!   OpenCV's INTER_AREA to shrink and Lanczos4 to enlarge; Lanczos3 is sharper than area
//!   averaging with mild ringing at hard edges, which is clamped to [0, 255].
//! - Crop: centred, or uniform over all offsets with `random_crop` (kohya's
//!   `trim_and_resize_if_required`); then a horizontal flip with probability 1/2 under
//!   `flip_aug`.

use std::io::Cursor;
use std::path::Path;

use image::imageops::FilterType;
use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits, RgbImage};

use super::bucket::{cover_size, Reso};
use super::error::DataError;
use super::{DataOptions, Item};
use crate::rng::Rng;
use crate::tensor::Tensor;

/// The largest decoded image accepted (RGBA 16-bit 8192x8192 is exactly this).
pub const MAX_DECODED_BYTES: u64 = 512 << 20;

fn decode_error(path: &Path, e: impl std::fmt::Display) -> DataError {
    DataError::Decode {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// Decode `bytes` (the contents of `path`) fully and apply EXIF orientation.
pub fn decode_image(path: &Path, bytes: &[u8]) -> Result<DynamicImage, DataError> {
    let mut reader = ImageReader::new(Cursor::new(bytes));
    if let Some(format) = path.extension().and_then(ImageFormat::from_extension) {
        reader.set_format(format);
    }
    let mut reader = reader
        .with_guessed_format()
        .map_err(|e| decode_error(path, e))?;
    if reader.format() == Some(ImageFormat::Jpeg) {
        jpeg_is_complete(bytes).map_err(|e| decode_error(path, e))?;
    }
    let mut limits = Limits::default();
    // Headroom over the output for decoders' own buffers; the output is checked below.
    limits.max_alloc = Some(2 * MAX_DECODED_BYTES);
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(|e| decode_error(path, e))?;
    let (w, h) = decoder.dimensions();
    if w == 0 || h == 0 {
        return Err(decode_error(path, format!("image is {w}x{h}")));
    }
    if decoder.total_bytes() > MAX_DECODED_BYTES {
        return Err(DataError::TooLarge {
            path: path.to_path_buf(),
            width: w,
            height: h,
            limit: format!("{} MiB decoded", MAX_DECODED_BYTES >> 20),
        });
    }
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder).map_err(|e| decode_error(path, e))?;
    img.apply_orientation(orientation);
    Ok(img)
}

/// Walk a JPEG's markers from SOI to EOI: segments by their lengths, entropy-coded data up to
/// the next marker that is not a stuffed 0xFF00 or a restart marker. The JPEG decoder fills a
/// cut-off scan with grey and reports success, so a truncated download would train as a
/// half-grey image; PIL refuses such files ("image file is truncated"), and so do we. Bytes
/// after EOI (camera trailers, motion-photo video) are allowed.
pub fn jpeg_is_complete(b: &[u8]) -> Result<(), String> {
    const TRUNCATED: &str = "JPEG data ends before its end-of-image marker (truncated file?)";
    if !b.starts_with(&[0xFF, 0xD8]) {
        return Err("not a JPEG (no start-of-image marker)".into());
    }
    let mut i = 2;
    loop {
        // A marker: 0xFF, optional 0xFF fill bytes, then the code.
        if b.get(i) != Some(&0xFF) {
            return Err(if i >= b.len() {
                TRUNCATED.into()
            } else {
                format!("expected a JPEG marker at byte {i}")
            });
        }
        while b.get(i) == Some(&0xFF) {
            i += 1;
        }
        let Some(&code) = b.get(i) else {
            return Err(TRUNCATED.into());
        };
        i += 1;
        match code {
            0xD9 => return Ok(()),
            0x01 | 0xD0..=0xD7 => continue, // no length field
            _ => {}
        }
        let (Some(&hi), Some(&lo)) = (b.get(i), b.get(i + 1)) else {
            return Err(TRUNCATED.into());
        };
        let len = u16::from_be_bytes([hi, lo]) as usize;
        if len < 2 {
            return Err(format!("bad JPEG segment length at byte {i}"));
        }
        i += len;
        if i > b.len() {
            return Err(TRUNCATED.into());
        }
        if code == 0xDA {
            // Entropy-coded data: skip to the next real marker.
            loop {
                match (b.get(i), b.get(i + 1)) {
                    (Some(0xFF), Some(0x00 | 0xD0..=0xD7)) => i += 2,
                    (Some(0xFF), Some(_)) => break,
                    (Some(_), _) => i += 1,
                    (None, _) => return Err(TRUNCATED.into()),
                }
            }
        }
    }
}

/// What training composites transparent pixels on: white (see the module text).
pub const TRAINING_BACKGROUND: [u8; 3] = [255, 255, 255];

/// RGB 8-bit, alpha composited on `background`: c' = (c·a + b·(255 − a))/255, rounded.
pub fn to_rgb_on(img: DynamicImage, background: [u8; 3]) -> RgbImage {
    if !img.color().has_alpha() {
        return img.into_rgb8();
    }
    let rgba = img.into_rgba8();
    RgbImage::from_fn(rgba.width(), rgba.height(), |x, y| {
        let p = rgba.get_pixel(x, y).0;
        let a = p[3] as u32;
        let over = |c: u8, b: u8| ((c as u32 * a + b as u32 * (255 - a) + 127) / 255) as u8;
        image::Rgb([
            over(p[0], background[0]),
            over(p[1], background[1]),
            over(p[2], background[2]),
        ])
    })
}

/// The pixels of `item` for `bucket` (width, height): a [3, height, width] f32 tensor with
/// x/127.5 − 1 per channel, RGB order, row-major from the top-left corner.
///
/// The file is read and decoded again (nothing is kept from `scan`); its size must still be
/// the scanned one. Random draws (only under `random_crop` and `flip_aug`) come from `rng`.
pub fn load_pixels(
    item: &Item,
    bucket: Reso,
    rng: &mut Rng,
    opts: &DataOptions,
) -> crate::Result<Tensor> {
    let (bw, bh) = bucket;
    if bw == 0 || bh == 0 {
        return Err(DataError::Option {
            name: "bucket",
            value: format!("{bw}x{bh}"),
            expected: "both sides must be positive".into(),
        }
        .into());
    }
    let path = item.path.as_path();
    let bytes = std::fs::read(path).map_err(|e| DataError::Read {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let img = decode_image(path, &bytes)?;
    let size = (img.width() as usize, img.height() as usize);
    if size != item.size {
        return Err(DataError::ChangedSinceScan {
            path: path.to_path_buf(),
            was: format!("{}x{}", item.size.0, item.size.1),
            now: format!("{}x{}", size.0, size.1),
        }
        .into());
    }
    let resized_size = if bucket == item.bucket {
        item.resized
    } else {
        cover_size(size, bucket)
    };
    let rgb = to_rgb_on(img, TRAINING_BACKGROUND);
    let rgb = if resized_size == size {
        rgb
    } else {
        image::imageops::resize(
            &rgb,
            resized_size.0 as u32,
            resized_size.1 as u32,
            FilterType::Lanczos3,
        )
    };
    let (rw, rh) = (rgb.width() as usize, rgb.height() as usize);
    if rw < bw || rh < bh {
        // Only reachable with a bucket passed by the caller that the resize does not cover.
        return Err(DataError::Option {
            name: "bucket",
            value: format!("{bw}x{bh}"),
            expected: format!(
                "must fit in the resized image {rw}x{rh} of {}",
                path.display()
            ),
        }
        .into());
    }
    let offset = |trim: usize, rng: &mut Rng| {
        if opts.random_crop && trim > 0 {
            rng.below(trim as u64 + 1) as usize
        } else {
            trim / 2
        }
    };
    let left = offset(rw - bw, rng);
    let top = offset(rh - bh, rng);
    let flip = opts.flip_aug && rng.uniform() < 0.5;

    let src = rgb.as_raw();
    let plane = bw * bh;
    let mut data = vec![0f32; 3 * plane];
    for y in 0..bh {
        let row = (top + y) * rw;
        for x in 0..bw {
            let sx = left + if flip { bw - 1 - x } else { x };
            let s = (row + sx) * 3;
            let d = y * bw + x;
            for c in 0..3 {
                data[c * plane + d] = src[s + c] as f32 / 127.5 - 1.0;
            }
        }
    }
    Tensor::from_f32([3, bh, bw], data)
}
