//! `lorafuse prepare`: read the flags into [`PrepareOptions`], show progress, print the
//! report.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Instant;

use lorafuse::config::Resolution;
use lorafuse::prepare::{prepare, CropMode, OutputFormat, PrepareOptions};

use super::{CliError, Out, Outcome};

/// The flags of `lorafuse prepare` (clap's, see `Command::Prepare`).
#[derive(clap::Args)]
pub struct PrepareArgs {
    /// The folder of pictures (subfolders such as kohya's 10_name/ are kept).
    pub input: PathBuf,
    /// Where to write the prepared images and their captions (created; must not be inside
    /// the input).
    pub output: PathBuf,
    /// Training resolution: 512, or width,height such as 512,768.
    #[arg(long, default_value = "512")]
    pub resolution: String,
    /// Crop each image to the training bucket it would get (the same bucket set and choice
    /// as training with enable_bucket), instead of the resolution's rectangle.
    #[arg(long)]
    pub buckets: bool,
    /// With --buckets: the smallest bucket side (training's min_bucket_reso).
    #[arg(long)]
    pub min_bucket_reso: Option<usize>,
    /// With --buckets: the largest bucket side (training's max_bucket_reso).
    #[arg(long)]
    pub max_bucket_reso: Option<usize>,
    /// With --buckets: bucket sides are multiples of this (training's bucket_reso_steps).
    #[arg(long)]
    pub bucket_reso_steps: Option<usize>,
    /// center: keep the middle; smart: keep the most detailed region (edge energy); none:
    /// only shrink to the training area and let training bucket the image.
    #[arg(long, default_value = "center")]
    pub crop: String,
    /// The colour under transparent pixels: white, black, gray, #rrggbb or r,g,b.
    #[arg(long, default_value = "white")]
    pub background: String,
    /// Drop images that would be enlarged more than this many times (1 = never enlarge).
    #[arg(long, default_value_t = lorafuse::prepare::DEFAULT_MAX_UPSCALE)]
    pub max_upscale: f64,
    /// png (lossless) or jpg.
    #[arg(long, default_value = "png")]
    pub format: String,
    /// JPEG quality, 1-100 (with --format jpg).
    #[arg(long, default_value_t = 95)]
    pub quality: u8,
    /// Redo images whose output exists (by default they are kept, so a stopped run goes on
    /// where it was).
    #[arg(long)]
    pub overwrite: bool,
    /// Caption sidecar extensions copied with each image (repeatable); the first names the
    /// caption written for a metadata.jsonl/.csv row. Default: .txt and .caption.
    #[arg(long = "caption-extension", value_name = "EXT")]
    pub caption_extensions: Vec<String>,
}

fn usage(flag: &str, value: &str, expected: &str) -> CliError {
    CliError::Usage(format!("--{flag} {value}: {expected}"))
}

/// `white`, `black`, `gray`, `#rrggbb` or `r,g,b`.
fn parse_colour(text: &str) -> Option<[u8; 3]> {
    let t = text.trim().to_ascii_lowercase();
    match t.as_str() {
        "white" => return Some([255; 3]),
        "black" => return Some([0; 3]),
        "gray" | "grey" => return Some([128; 3]),
        _ => {}
    }
    if let Some(hex) = t.strip_prefix('#') {
        if hex.len() != 6 || !hex.is_ascii() {
            return None;
        }
        let byte = |i: usize| u8::from_str_radix(&hex[i..i + 2], 16).ok();
        return Some([byte(0)?, byte(2)?, byte(4)?]);
    }
    let parts: Vec<u8> = t
        .split(',')
        .map(|p| p.trim().parse::<u8>().ok())
        .collect::<Option<_>>()?;
    <[u8; 3]>::try_from(parts).ok()
}

impl PrepareArgs {
    fn options(&self) -> Result<PrepareOptions, CliError> {
        let mut o = PrepareOptions::new(&self.input, &self.output);
        let r = Resolution::parse(&self.resolution).ok_or_else(|| {
            usage(
                "resolution",
                &self.resolution,
                "expected a size like 512 or 512,768",
            )
        })?;
        o.resolution = (r.width as usize, r.height as usize);
        o.buckets = self.buckets;
        o.min_bucket_reso = self.min_bucket_reso.unwrap_or(o.min_bucket_reso);
        o.max_bucket_reso = self.max_bucket_reso.unwrap_or(o.max_bucket_reso);
        o.bucket_reso_steps = self.bucket_reso_steps.unwrap_or(o.bucket_reso_steps);
        o.crop = CropMode::parse(&self.crop).ok_or_else(|| {
            usage(
                "crop",
                &self.crop,
                &format!("expected one of {}", CropMode::NAMES.join(", ")),
            )
        })?;
        o.background = parse_colour(&self.background).ok_or_else(|| {
            usage(
                "background",
                &self.background,
                "expected white, black, gray, #rrggbb or r,g,b (0-255 each)",
            )
        })?;
        o.max_upscale = self.max_upscale;
        o.format = match self.format.to_ascii_lowercase().as_str() {
            "png" => OutputFormat::Png,
            "jpg" | "jpeg" => OutputFormat::Jpeg(self.quality),
            _ => return Err(usage("format", &self.format, "expected png or jpg")),
        };
        o.overwrite = self.overwrite;
        if !self.caption_extensions.is_empty() {
            o.caption_extensions = self
                .caption_extensions
                .iter()
                .map(|e| {
                    let e = e.trim().trim_start_matches('.').to_ascii_lowercase();
                    if e.is_empty() || e.contains(['/', '\\']) {
                        Err(usage(
                            "caption-extension",
                            &e,
                            "expected an extension like .txt",
                        ))
                    } else {
                        Ok(format!(".{e}"))
                    }
                })
                .collect::<Result<_, _>>()?;
        }
        Ok(o)
    }
}

/// Progress on stderr: redrawn in place on a terminal, every tenth of the work otherwise.
pub(super) struct Meter {
    /// The command's name, first on the line.
    label: &'static str,
    /// What is counted ("images").
    unit: &'static str,
    start: Instant,
    tty: bool,
    last_tenth: Mutex<usize>,
}

impl Meter {
    pub(super) fn new(label: &'static str) -> Meter {
        Meter::counting(label, "images")
    }

    /// A meter counting other things than images.
    pub(super) fn counting(label: &'static str, unit: &'static str) -> Meter {
        Meter {
            label,
            unit,
            start: Instant::now(),
            tty: std::io::stderr().is_terminal(),
            last_tenth: Mutex::new(0),
        }
    }

    pub(super) fn show(&self, done: usize, total: usize) {
        let elapsed = self.start.elapsed().as_secs_f64();
        let eta = elapsed / done.max(1) as f64 * (total - done.min(total)) as f64;
        let line = format!(
            "{}: {done}/{total} {unit}, {:.1} {unit}/s, ETA {:.0} s",
            self.label,
            done as f64 / elapsed.max(1e-9),
            eta,
            unit = self.unit,
        );
        if self.tty {
            eprint!("\r{line}   ");
            if done == total {
                eprintln!();
            }
        } else if let Ok(mut last) = self.last_tenth.lock() {
            let tenth = done * 10 / total.max(1);
            if tenth > *last || done == total {
                *last = tenth;
                eprintln!("{line}");
            }
        }
    }
}

pub fn prepare_cmd(args: &PrepareArgs) -> Outcome {
    let o = args.options()?;
    let meter = Meter::new("prepare");
    let report = prepare(&o, &|done, total| meter.show(done, total))?;
    Out::new().text(&report.to_string())
}

#[cfg(test)]
mod tests {
    use super::parse_colour;

    #[test]
    fn colours_parse_by_name_hex_and_triple() {
        assert_eq!(parse_colour("White"), Some([255, 255, 255]));
        assert_eq!(parse_colour("#FF8000"), Some([255, 128, 0]));
        assert_eq!(parse_colour("1, 2,3"), Some([1, 2, 3]));
        assert_eq!(parse_colour("#ff80"), None);
        assert_eq!(parse_colour("1,2"), None);
        assert_eq!(parse_colour("256,0,0"), None);
        assert_eq!(parse_colour("mauve"), None);
    }
}
