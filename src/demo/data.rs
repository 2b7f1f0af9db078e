//! The demo's synthetic training set: small pictures of coloured shapes on plain backgrounds,
//! each with a caption that says what it shows, in kohya's `N_name` folder layout.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::rng::Rng;

const COLOURS: [(&str, [u8; 3]); 4] = [
    ("red", [220, 40, 40]),
    ("green", [40, 180, 60]),
    ("blue", [40, 70, 220]),
    ("yellow", [235, 210, 40]),
];
const SHAPES: [&str; 3] = ["circle", "square", "triangle"];

fn inside(shape: &str, x: f64, y: f64) -> bool {
    match shape {
        "circle" => x * x + y * y <= 1.0,
        "square" => x.abs() <= 0.8 && y.abs() <= 0.8,
        _ => y <= 0.8 && y >= -0.9 + 1.7 * x.abs(),
    }
}

/// Writes `count` images of `size`x`size` pixels with captions to `dir/10_shapes/`; returns the
/// data folder (`dir`).
pub fn write_dataset(dir: &Path, count: usize, size: u32, seed: u64) -> Result<PathBuf> {
    let sub = dir.join("10_shapes");
    std::fs::create_dir_all(&sub).map_err(|e| Error::io(&sub, "create the demo data folder", e))?;
    let mut rng = Rng::new(seed);
    for i in 0..count {
        let (cname, fg) = COLOURS[i % COLOURS.len()];
        let shape = SHAPES[(i / COLOURS.len()) % SHAPES.len()];
        let bg = [(rng.uniform() * 60.0 + 180.0) as u8; 3];
        let (cx, cy) = (rng.uniform_in(0.4, 0.6), rng.uniform_in(0.4, 0.6));
        let r = rng.uniform_in(0.22, 0.32);
        let mut img = image::RgbImage::new(size, size);
        for (px, py, p) in img.enumerate_pixels_mut() {
            let x = (px as f64 / size as f64 - cx) / r;
            let y = (py as f64 / size as f64 - cy) / r;
            *p = image::Rgb(if inside(shape, x, y) { fg } else { bg });
        }
        let stem = format!("shape_{i:02}");
        let png = sub.join(format!("{stem}.png"));
        img.save(&png).map_err(|e| {
            Error::io(
                &png,
                "write a demo image",
                std::io::Error::other(e.to_string()),
            )
        })?;
        let caption = format!("a {cname} {shape} on a grey background, simple flat illustration");
        let txt = sub.join(format!("{stem}.txt"));
        std::fs::write(&txt, caption).map_err(|e| Error::io(&txt, "write a demo caption", e))?;
    }
    Ok(dir.to_path_buf())
}
