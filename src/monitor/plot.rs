//! A loss curve as a PNG, with no plotting library: axes, grid, tick labels in a built-in
//! 3×5 bitmap font (drawn at 2×), the raw training loss faint, its smoothed version strong,
//! and validation losses as dots joined by a thin line.
//!
//! Smoothing is TensorBoard's debiased exponential moving average, with a weight that grows
//! with the number of points (1 − 20/n, within [0, 0.98]: about n/20 points of memory), since
//! a diffusion loss is dominated by the random timestep and is very noisy step to step.
//! The y range covers the validation points, the smoothed curve and the raw losses up to
//! their 99th percentile, so that one early spike does not flatten the rest; higher raw
//! points are clipped at the top edge. Non-finite values are skipped (they break the line).
//!
//! Lines are drawn as coverage masks (distance to the segment, antialiased), one mask per
//! series combined with max(), then blended once, so overlapping segments of the faint curve
//! do not darken where they meet.

use std::path::Path;

use image::codecs::png::PngEncoder;
use image::{ExtendedColorType, ImageEncoder};

use crate::error::{Error, Result};

/// The size [`loss_curve_png`] draws.
pub const WIDTH: u32 = 800;
pub const HEIGHT: u32 = 480;

const MIN_SIZE: (u32, u32) = (160, 120);
const MAX_SIDE: u32 = 8192;

const BACKGROUND: [u8; 3] = [255, 255, 255];
const GRID: [u8; 3] = [228, 228, 228];
const AXIS: [u8; 3] = [60, 60, 60];
const TEXT: [u8; 3] = [40, 40, 40];
const TRAIN: [u8; 3] = [31, 119, 180];
const VALIDATION: [u8; 3] = [230, 110, 10];

/// Writes the loss curve of `train` and `validation` ((step, loss) pairs, in any order) as a
/// [`WIDTH`]×[`HEIGHT`] PNG at `path`, atomically.
pub fn loss_curve_png(
    path: impl AsRef<Path>,
    train: &[(u64, f64)],
    validation: &[(u64, f64)],
) -> Result<()> {
    loss_curve_png_sized(path, WIDTH, HEIGHT, train, validation)
}

/// [`loss_curve_png`] at another size (160×120 to 8192×8192).
pub fn loss_curve_png_sized(
    path: impl AsRef<Path>,
    width: u32,
    height: u32,
    train: &[(u64, f64)],
    validation: &[(u64, f64)],
) -> Result<()> {
    let path = path.as_ref();
    if width < MIN_SIZE.0 || height < MIN_SIZE.1 || width > MAX_SIDE || height > MAX_SIDE {
        return Err(Error::BadValue {
            op: "loss plot",
            name: "size",
            value: format!("{width}x{height}"),
            expected: format!(
                "between {}x{} and {MAX_SIDE}x{MAX_SIDE} pixels",
                MIN_SIZE.0, MIN_SIZE.1
            ),
        });
    }
    let rgb = render_loss_curve(width, height, train, validation);
    let png = encode_png(path, width, height, &rgb)?;
    crate::atomic::write_file(path, &png)
}

/// RGB8 pixels as PNG bytes; `path` names the file in errors.
fn encode_png(path: &Path, width: u32, height: u32, rgb: &[u8]) -> Result<Vec<u8>> {
    let mut png = Vec::new();
    PngEncoder::new(&mut png)
        .write_image(rgb, width, height, ExtendedColorType::Rgb8)
        .map_err(|e| Error::io(path, "encode the plot as PNG", std::io::Error::other(e)))?;
    Ok(png)
}

// ---------------------------------------------------------------------------------------------
// Canvas

struct Canvas {
    w: usize,
    h: usize,
    rgb: Vec<u8>,
}

impl Canvas {
    fn new(w: usize, h: usize) -> Canvas {
        let mut rgb = Vec::with_capacity(w * h * 3);
        for _ in 0..w * h {
            rgb.extend_from_slice(&BACKGROUND);
        }
        Canvas { w, h, rgb }
    }

    fn blend(&mut self, x: i64, y: i64, color: [u8; 3], alpha: f64) {
        if x < 0 || y < 0 || x >= self.w as i64 || y >= self.h as i64 || alpha <= 0.0 {
            return;
        }
        let a = alpha.min(1.0);
        let i = (y as usize * self.w + x as usize) * 3;
        for (dst, &src) in self.rgb[i..i + 3].iter_mut().zip(&color) {
            let old = *dst as f64;
            *dst = (old + (src as f64 - old) * a).round() as u8;
        }
    }

    fn fill(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, color: [u8; 3]) {
        for y in y0..y1 {
            for x in x0..x1 {
                self.blend(x, y, color, 1.0);
            }
        }
    }

    /// Text in the 3×5 font at `scale`, top-left at (x, y).
    fn text(&mut self, x: i64, y: i64, s: &str, scale: i64, color: [u8; 3]) {
        for (i, ch) in s.chars().enumerate() {
            let rows = glyph(ch);
            let gx = x + i as i64 * 4 * scale;
            for (r, bits) in rows.iter().enumerate() {
                for c in 0..3 {
                    if bits & (0b100 >> c) != 0 {
                        let (px, py) = (gx + c * scale, y + r as i64 * scale);
                        self.fill(px, py, px + scale, py + scale, color);
                    }
                }
            }
        }
    }

    fn composite(&mut self, mask: &Mask, color: [u8; 3], alpha: f64) {
        for y in 0..self.h {
            for x in 0..self.w {
                let c = mask.cov[y * self.w + x];
                if c > 0.0 {
                    self.blend(x as i64, y as i64, color, alpha * c as f64);
                }
            }
        }
    }
}

fn text_width(s: &str, scale: i64) -> i64 {
    (s.chars().count() as i64 * 4 - 1).max(0) * scale
}

/// Antialiased coverage, clipped to a rectangle.
struct Mask {
    w: usize,
    cov: Vec<f32>,
    clip: (f64, f64, f64, f64),
}

impl Mask {
    fn new(w: usize, h: usize, clip: (f64, f64, f64, f64)) -> Mask {
        Mask {
            w,
            cov: vec![0.0; w * h],
            clip,
        }
    }

    fn clear(&mut self) {
        self.cov.fill(0.0);
    }

    fn put(&mut self, x: i64, y: i64, c: f64) {
        let (x0, y0, x1, y1) = self.clip;
        let (fx, fy) = (x as f64, y as f64);
        if fx < x0 || fy < y0 || fx > x1 || fy > y1 || c <= 0.0 {
            return;
        }
        let i = y as usize * self.w + x as usize;
        self.cov[i] = self.cov[i].max(c.min(1.0) as f32);
    }

    /// A segment of the given width: coverage from the distance of each pixel centre.
    fn segment(&mut self, (ax, ay): (f64, f64), (bx, by): (f64, f64), width: f64) {
        let r = width / 2.0 + 1.0;
        let (x0, y0, x1, y1) = self.clip;
        let lo_x = (ax.min(bx) - r).max(x0).floor() as i64;
        let hi_x = (ax.max(bx) + r).min(x1).ceil() as i64;
        let lo_y = (ay.min(by) - r).max(y0).floor() as i64;
        let hi_y = (ay.max(by) + r).min(y1).ceil() as i64;
        let (dx, dy) = (bx - ax, by - ay);
        let len2 = dx * dx + dy * dy;
        for y in lo_y..=hi_y {
            for x in lo_x..=hi_x {
                let (px, py) = (x as f64, y as f64);
                let t = if len2 > 0.0 {
                    (((px - ax) * dx + (py - ay) * dy) / len2).clamp(0.0, 1.0)
                } else {
                    0.0
                };
                let (qx, qy) = (ax + t * dx - px, ay + t * dy - py);
                let d = (qx * qx + qy * qy).sqrt();
                self.put(x, y, width / 2.0 + 0.5 - d);
            }
        }
    }

    fn disk(&mut self, (cx, cy): (f64, f64), radius: f64) {
        self.segment((cx, cy), (cx, cy), 2.0 * radius);
    }
}

// ---------------------------------------------------------------------------------------------
// Font: 5 rows of 3 bits, most significant bit on the left.

fn glyph(c: char) -> [u8; 5] {
    match c {
        '0' => [0b111, 0b101, 0b101, 0b101, 0b111],
        '1' => [0b010, 0b110, 0b010, 0b010, 0b111],
        '2' => [0b111, 0b001, 0b111, 0b100, 0b111],
        '3' => [0b111, 0b001, 0b111, 0b001, 0b111],
        '4' => [0b101, 0b101, 0b111, 0b001, 0b001],
        '5' => [0b111, 0b100, 0b111, 0b001, 0b111],
        '6' => [0b111, 0b100, 0b111, 0b101, 0b111],
        '7' => [0b111, 0b001, 0b001, 0b001, 0b001],
        '8' => [0b111, 0b101, 0b111, 0b101, 0b111],
        '9' => [0b111, 0b101, 0b111, 0b001, 0b111],
        '.' => [0b000, 0b000, 0b000, 0b000, 0b010],
        '-' => [0b000, 0b000, 0b111, 0b000, 0b000],
        '+' => [0b000, 0b010, 0b111, 0b010, 0b000],
        'A' => [0b010, 0b101, 0b111, 0b101, 0b101],
        'D' => [0b110, 0b101, 0b101, 0b101, 0b110],
        'E' => [0b111, 0b100, 0b110, 0b100, 0b111],
        'H' => [0b101, 0b101, 0b111, 0b101, 0b101],
        'I' => [0b111, 0b010, 0b010, 0b010, 0b111],
        'L' => [0b100, 0b100, 0b100, 0b100, 0b111],
        'M' => [0b101, 0b111, 0b111, 0b101, 0b101],
        'N' => [0b110, 0b101, 0b101, 0b101, 0b101],
        'O' => [0b010, 0b101, 0b101, 0b101, 0b010],
        'P' => [0b110, 0b101, 0b110, 0b100, 0b100],
        'R' => [0b110, 0b101, 0b110, 0b101, 0b101],
        'S' => [0b011, 0b100, 0b010, 0b001, 0b110],
        'T' => [0b111, 0b010, 0b010, 0b010, 0b010],
        'V' => [0b101, 0b101, 0b101, 0b101, 0b010],
        _ => [0; 5],
    }
}

// ---------------------------------------------------------------------------------------------
// Scales and ticks

/// 1, 2 or 5 × a power of ten, near range / target.
fn nice_step(range: f64, target: f64) -> f64 {
    let raw = (range / target).max(f64::MIN_POSITIVE);
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let nice = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

fn ticks(lo: f64, hi: f64, step: f64) -> Vec<f64> {
    let mut out = Vec::new();
    let mut k = (lo / step).ceil();
    while k * step <= hi + step * 1e-9 && out.len() < 50 {
        out.push(k * step);
        k += 1.0;
    }
    out
}

/// A tick label with as many decimals as the tick step needs; scientific for the extremes.
fn tick_label(v: f64, step: f64) -> String {
    let v = if v.abs() < step * 1e-9 { 0.0 } else { v };
    if v != 0.0 && (v.abs() >= 1e7 || step < 1e-5) {
        return format!("{v:.1E}");
    }
    let decimals = if step >= 1.0 {
        0
    } else {
        (-step.log10()).ceil().clamp(0.0, 6.0) as usize
    };
    let s = format!("{v:.decimals$}");
    // "-0.0" for a value that rounds to zero.
    match s.strip_prefix('-') {
        Some(rest) if rest.chars().all(|c| c == '0' || c == '.') => rest.to_string(),
        _ => s,
    }
}

/// TensorBoard's debiased EMA; non-finite values are carried over as NaN (a gap).
fn smooth(values: &[f64]) -> Vec<f64> {
    let n = values.iter().filter(|v| v.is_finite()).count();
    let w = (1.0 - 20.0 / n.max(1) as f64).clamp(0.0, 0.98);
    let mut last = 0.0;
    let mut count = 0;
    values
        .iter()
        .map(|&v| {
            if !v.is_finite() {
                return f64::NAN;
            }
            last = last * w + (1.0 - w) * v;
            count += 1;
            let debias = 1.0 - w.powi(count);
            if debias > 0.0 {
                last / debias
            } else {
                v
            }
        })
        .collect()
}

fn sorted(points: &[(u64, f64)]) -> Vec<(u64, f64)> {
    let mut p = points.to_vec();
    p.sort_by_key(|&(s, _)| s);
    p
}

fn percentile(values: &mut [f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let i = ((values.len() - 1) as f64 * q).round() as usize;
    values.get(i).copied()
}

/// The loss curve as RGB8 pixels, `width` × `height` (row-major).
pub(crate) fn render_loss_curve(
    width: u32,
    height: u32,
    train: &[(u64, f64)],
    validation: &[(u64, f64)],
) -> Vec<u8> {
    let (w, h) = (width as usize, height as usize);
    let mut canvas = Canvas::new(w, h);
    let train = sorted(train);
    let validation = sorted(validation);
    let train_values: Vec<f64> = train.iter().map(|p| p.1).collect();
    let smoothed = smooth(&train_values);

    // Ranges.
    let steps = train.iter().chain(&validation).map(|p| p.0 as f64);
    let (mut x_lo, mut x_hi) = steps.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), s| {
        (a.min(s), b.max(s))
    });
    if x_lo > x_hi {
        (x_lo, x_hi) = (0.0, 1.0);
    }
    if x_hi - x_lo < 1.0 {
        x_lo -= 1.0;
        x_hi += 1.0;
    }
    let mut raw: Vec<f64> = train_values
        .iter()
        .copied()
        .filter(|v| v.is_finite())
        .collect();
    let raw_hi = percentile(&mut raw, 0.99);
    let others = smoothed
        .iter()
        .chain(validation.iter().map(|p| &p.1))
        .copied()
        .filter(|v| v.is_finite());
    let (mut y_lo, mut y_hi) = raw
        .iter()
        .copied()
        .chain(others)
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
    if let Some(p) = raw_hi {
        let top_others = smoothed
            .iter()
            .chain(validation.iter().map(|p| &p.1))
            .copied()
            .filter(|v| v.is_finite())
            .fold(f64::NEG_INFINITY, f64::max);
        y_hi = y_hi.min(p.max(top_others));
    }
    if y_lo > y_hi {
        (y_lo, y_hi) = (0.0, 1.0);
    }
    let span = y_hi - y_lo;
    if span <= y_hi.abs().max(1e-12) * 1e-9 {
        let pad = (y_hi.abs() * 0.1).max(1e-3);
        y_lo -= pad;
        y_hi += pad;
    } else {
        y_lo -= span * 0.05;
        y_hi += span * 0.05;
    }

    // Plot area.
    let scale = 2i64;
    let y_step = nice_step(y_hi - y_lo, 6.0);
    let y_ticks = ticks(y_lo, y_hi, y_step);
    let y_labels: Vec<String> = y_ticks.iter().map(|&v| tick_label(v, y_step)).collect();
    let label_w = y_labels
        .iter()
        .map(|l| text_width(l, scale))
        .max()
        .unwrap_or(0);
    let left = (label_w + 16).max(40) as f64;
    let (right, top, bottom) = (20.0, 34.0, 46.0);
    let (px0, py0) = (left, top);
    let (px1, py1) = (w as f64 - right, h as f64 - bottom);
    if px1 - px0 < 20.0 || py1 - py0 < 20.0 {
        return canvas.rgb;
    }
    let sx = |s: f64| px0 + (s - x_lo) / (x_hi - x_lo) * (px1 - px0);
    let sy = |v: f64| py1 - (v - y_lo) / (y_hi - y_lo) * (py1 - py0);

    // Grid, ticks and labels.
    let x_step = nice_step(x_hi - x_lo, ((px1 - px0) / 110.0).max(2.0)).max(1.0);
    for &v in &ticks(x_lo, x_hi, x_step) {
        let x = sx(v).round() as i64;
        canvas.fill(x, py0 as i64, x + 1, py1 as i64, GRID);
        canvas.fill(x, py1 as i64, x + 1, py1 as i64 + 5, AXIS);
        let label = tick_label(v, x_step);
        let tw = text_width(&label, scale);
        canvas.text(x - tw / 2, py1 as i64 + 9, &label, scale, TEXT);
    }
    for (&v, label) in y_ticks.iter().zip(&y_labels) {
        let y = sy(v).round() as i64;
        canvas.fill(px0 as i64, y, px1 as i64, y + 1, GRID);
        canvas.fill(px0 as i64 - 5, y, px0 as i64, y + 1, AXIS);
        let tw = text_width(label, scale);
        canvas.text(px0 as i64 - 9 - tw, y - 5, label, scale, TEXT);
    }
    canvas.fill(px0 as i64, py0 as i64, px0 as i64 + 1, py1 as i64 + 1, AXIS);
    canvas.fill(px0 as i64, py1 as i64, px1 as i64 + 1, py1 as i64 + 1, AXIS);
    let x_title = "STEP";
    canvas.text(
        ((px0 + px1) / 2.0) as i64 - text_width(x_title, scale) / 2,
        h as i64 - 14,
        x_title,
        scale,
        TEXT,
    );
    canvas.text(8, 10, "LOSS", scale, TEXT);

    // Series.
    let clip = (px0, py0, px1, py1);
    let polyline = |mask: &mut Mask, pts: &[(u64, f64)], width: f64| {
        let mut prev: Option<(f64, f64)> = None;
        for &(s, v) in pts {
            if !v.is_finite() {
                prev = None;
                continue;
            }
            let p = (sx(s as f64), sy(v).clamp(py0 - 2.0, py1 + 2.0));
            match prev {
                Some(q) => mask.segment(q, p, width),
                None => mask.disk(p, width / 2.0),
            }
            prev = Some(p);
        }
    };
    let mut mask = Mask::new(w, h, clip);
    polyline(&mut mask, &train, 1.0);
    canvas.composite(&mask, TRAIN, 0.28);
    mask.clear();
    let smooth_pts: Vec<(u64, f64)> = train.iter().map(|p| p.0).zip(smoothed).collect();
    polyline(&mut mask, &smooth_pts, 2.2);
    canvas.composite(&mask, TRAIN, 1.0);
    mask.clear();
    polyline(&mut mask, &validation, 1.0);
    for &(s, v) in &validation {
        if v.is_finite() {
            mask.disk((sx(s as f64), sy(v)), 3.5);
        }
    }
    canvas.composite(&mask, VALIDATION, 1.0);

    // Legend, top right.
    let entries: [(&str, [u8; 3], f64, bool); 3] = [
        ("TRAIN", TRAIN, 0.35, !train.is_empty()),
        ("SMOOTHED", TRAIN, 1.0, !train.is_empty()),
        ("VALIDATION", VALIDATION, 1.0, !validation.is_empty()),
    ];
    let mut x = w as i64 - right as i64;
    for (label, color, alpha, shown) in entries.iter().rev() {
        if !shown {
            continue;
        }
        x -= text_width(label, scale);
        canvas.text(x, 10, label, scale, TEXT);
        x -= 24;
        for dx in 0..18 {
            for dy in 0..3 {
                canvas.blend(x + dx, 14 + dy, *color, *alpha);
            }
        }
        x -= 18;
    }
    canvas.rgb
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_steps_and_labels() {
        assert_eq!(nice_step(10.0, 5.0), 2.0);
        assert_eq!(nice_step(0.9, 6.0), 0.2);
        assert_eq!(nice_step(1000.0, 6.0), 200.0);
        assert_eq!(tick_label(0.15, 0.05), "0.15");
        assert_eq!(tick_label(400.0, 200.0), "400");
        assert_eq!(tick_label(-0.0000001, 0.1), "0.0");
        assert_eq!(ticks(0.05, 0.5, 0.1).len(), 5);
    }

    #[test]
    fn smoothing_is_debiased() {
        let s = smooth(&[1.0; 100]);
        assert!(s.iter().all(|v| (v - 1.0).abs() < 1e-12));
        let s = smooth(&[1.0, f64::NAN, 1.0]);
        assert!(s[1].is_nan() && s[2] == 1.0);
    }

    #[test]
    fn degenerate_inputs_render() {
        for (t, v) in [
            (vec![], vec![]),
            (vec![(5, 0.1)], vec![]),
            (vec![(0, f64::NAN), (1, f64::INFINITY)], vec![(1, -1.0)]),
            (vec![(u64::MAX, 1e300), (0, -1e300)], vec![]),
            (
                vec![(0, f64::MAX), (1, -f64::MAX)],
                vec![(2, f64::MIN_POSITIVE)],
            ),
        ] {
            let rgb = render_loss_curve(200, 150, &t, &v);
            assert_eq!(rgb.len(), 200 * 150 * 3);
        }
    }
}
