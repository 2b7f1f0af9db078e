//! 8-bit RGB images: made from the VAE's output, written as PNG.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::sample::SampleError;

/// An 8-bit RGB image, rows top to bottom, `width·height·3` bytes (R, G, B per pixel).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RgbImage {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

impl RgbImage {
    /// The pixel at (x, y), None outside the image.
    pub fn pixel(&self, x: usize, y: usize) -> Option<[u8; 3]> {
        if x >= self.width || y >= self.height {
            return None;
        }
        let i = (y * self.width + x) * 3;
        self.data.get(i..i + 3).map(|p| [p[0], p[1], p[2]])
    }

    /// An image from planar values [3, height, width] (the VAE's output for one sample,
    /// roughly in [-1, 1]): u8 = round(clamp((v + 1)/2, 0, 1)·255), as diffusers'
    /// `(image / 2 + 0.5).clamp(0, 1)` then numpy's `(x * 255).round()` (half to even). NaN
    /// becomes 0.
    pub fn from_planar(width: usize, height: usize, chw: &[f32]) -> Result<RgbImage, SampleError> {
        let plane = width.checked_mul(height);
        if plane.and_then(|p| p.checked_mul(3)) != Some(chw.len()) {
            return Err(SampleError::BadSetting {
                name: "image data",
                value: format!("{} values", chw.len()),
                expected: format!("3·{height}·{width} planar RGB values"),
            });
        }
        let plane = plane.unwrap_or(0);
        let mut data = Vec::with_capacity(chw.len());
        for p in 0..plane {
            for c in 0..3 {
                data.push(to_u8(chw[c * plane + p]));
            }
        }
        Ok(RgbImage {
            width,
            height,
            data,
        })
    }
}

fn to_u8(v: f32) -> u8 {
    let x = (v / 2.0 + 0.5).clamp(0.0, 1.0);
    if x.is_nan() {
        0
    } else {
        // numpy's round (diffusers' numpy_to_pil): half to even
        (x * 255.0).round_ties_even() as u8
    }
}

/// Writes `image` as an 8-bit RGB PNG, atomically: to a temporary file in the same folder,
/// then renamed over `path`, so a reader never sees half a file.
pub fn save_png(path: impl AsRef<Path>, image: &RgbImage) -> Result<(), SampleError> {
    let path = path.as_ref();
    let bytes = encode_png(path, image)?;
    write_atomically(path, &bytes)
}

/// `image` as the bytes of an 8-bit RGB PNG; `path` names it in errors.
pub fn encode_png(path: &Path, image: &RgbImage) -> Result<Vec<u8>, SampleError> {
    let png_err = |action, message: String| SampleError::Png {
        path: path.to_path_buf(),
        action,
        message,
    };
    let (w, h) = match (u32::try_from(image.width), u32::try_from(image.height)) {
        (Ok(w), Ok(h)) if w > 0 && h > 0 => (w, h),
        _ => {
            return Err(png_err(
                "encode",
                format!("{}x{} is not a valid image size", image.width, image.height),
            ))
        }
    };
    if image.data.len() as u64 != w as u64 * h as u64 * 3 {
        return Err(png_err(
            "encode",
            format!(
                "{} bytes for a {w}x{h} RGB image (expected {})",
                image.data.len(),
                w as u64 * h as u64 * 3
            ),
        ));
    }
    let mut bytes = Vec::new();
    image::ImageEncoder::write_image(
        image::codecs::png::PngEncoder::new(&mut bytes),
        &image.data,
        w,
        h,
        image::ExtendedColorType::Rgb8,
    )
    .map_err(|e| png_err("encode", e.to_string()))?;
    Ok(bytes)
}

/// Writes `bytes` to a temporary file beside `path`, then renames it over `path`.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), SampleError> {
    let tmp = temp_path(path);
    let io = |action, source| SampleError::Io {
        path: tmp.clone(),
        action,
        source,
    };
    let write = || -> Result<(), SampleError> {
        let mut f = std::fs::File::create(&tmp).map_err(|e| io("create", e))?;
        f.write_all(bytes).map_err(|e| io("write", e))?;
        f.sync_all().map_err(|e| io("sync", e))?;
        Ok(())
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path).map_err(|source| {
        let _ = std::fs::remove_file(&tmp);
        SampleError::Io {
            path: path.to_path_buf(),
            action: "move the finished image to",
            source,
        }
    })
}

/// Reads a PNG (any color type) as 8-bit RGB.
pub fn load_png(path: impl AsRef<Path>) -> Result<RgbImage, SampleError> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| SampleError::Io {
        path: path.to_path_buf(),
        action: "read",
        source,
    })?;
    let img = image::load_from_memory_with_format(&bytes, image::ImageFormat::Png)
        .map_err(|e| SampleError::Png {
            path: path.to_path_buf(),
            action: "decode",
            message: e.to_string(),
        })?
        .to_rgb8();
    Ok(RgbImage {
        width: img.width() as usize,
        height: img.height() as usize,
        data: img.into_raw(),
    })
}

/// `dir/.name.tmp-<pid>-<n>` beside the target (same file system, so the rename is atomic;
/// unique per call, so concurrent writers never share one).
fn temp_path(path: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image.png".into());
    path.with_file_name(format!(".{name}.tmp-{}-{n}", std::process::id()))
}
