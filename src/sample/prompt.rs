//! Sample prompts in kohya's syntax (`--sample_prompts` files, `line_to_prompt_dict` in
//! sd-scripts' `library/train_util.py`):
//!
//! ```text
//! a photo of a cat, best quality --n blurry, lowres --w 512 --h 768 --d 42 --s 28 --l 7.5 --ss euler
//! ```
//!
//! The line is split at every `" --"`; the first piece is the prompt, each other piece is an
//! option name (case-insensitive) and its value:
//!
//! | option | meaning | default (kohya's) |
//! |---|---|---|
//! | `--n TEXT` | negative prompt (the rest of the piece, commas and spaces included) | empty |
//! | `--w N`, `--h N` | image width, height in pixels | 512, 512 |
//! | `--d N` | seed (u64) | none: a random seed |
//! | `--s N` | sampling steps | 30 |
//! | `--l X` | classifier-free guidance scale | 7.5 |
//! | `--ss NAME` | sampler: `ddim`, `euler` (`k_euler`), `euler_a` (`k_euler_a`), `dpmsolver`, `dpmsolver++`, `dpmsolver++_karras` ([`SamplerKind`]) | ddim (a trainer's `sample_sampler`) |
//!
//! Where lorafuse differs from kohya, on purpose:
//! - kohya ignores what it cannot parse; here an unknown option (`--x`), a kohya option that
//!   lorafuse lacks (`--cn`, `--g`, …), a value that is not a number (`--w 512px`), a missing
//!   value (`--w`) or an unknown sampler is an error that names the option and the value (kohya
//!   falls back to DDIM for a `--ss` it does not know); a kohya sampler lorafuse lacks (`heun`,
//!   `pndm`, …) is an error that says which to use instead.
//! - width and height must be multiples of 64 for SD1.x (8 for the VAE × 8 for the UNet's three
//!   downsamplings; kohya rounds to 8 and lets diffusers' UNet pad). They are rounded down to a
//!   multiple of [`SIZE_MULTIPLE`] (at least 64), with a note in [`PromptSpec::notes`];
//!   above [`MAX_SIDE`] they are an error.
//! - steps are clamped to 1..=1000 as kohya does, with a note.
//! - a negative `--l` is an error (kohya's pattern cannot read one either).
//! - a line that starts with `--` has an empty prompt and options only (kohya would take the
//!   whole line as the prompt text).
//! - an option given twice: the last one wins, as in kohya, with a note.
//!
//! Not supported: prompt weighting (`(word:1.2)`, kohya's long-prompt-weighting pipeline) and
//! prompts over 75 tokens (they are cut; the pipeline reports it); `.toml`/`.json` prompt files.

use crate::sample::sampler::SamplerKind;
use crate::sample::SampleError;

/// Image sides are rounded down to a multiple of this (SD1.x: VAE ×8, UNet ×8).
pub const SIZE_MULTIPLE: usize = 64;
/// The largest width or height a prompt line may ask for.
pub const MAX_SIDE: usize = 4096;
/// The most sampling steps (kohya's clamp; the training schedule has 1000 timesteps).
pub const MAX_STEPS: usize = 1000;

/// One sample image to make.
#[derive(Clone, Debug, PartialEq)]
pub struct PromptSpec {
    pub prompt: String,
    /// Empty: the unconditional embedding of "" (diffusers and kohya alike).
    pub negative_prompt: String,
    /// Pixels; a multiple of 64 for SD1.x.
    pub width: usize,
    pub height: usize,
    /// None: [`crate::sample::generate`] draws one (and reports it).
    pub seed: Option<u64>,
    pub steps: usize,
    /// Guidance scale; at most 1 means no guidance (the conditional prediction alone, as
    /// diffusers and kohya do).
    pub cfg_scale: f64,
    pub sampler: SamplerKind,
    /// What parsing changed or let pass (a rounded size, a clamped step count), for the caller
    /// to show; the library never prints.
    pub notes: Vec<String>,
}

/// The values of options a prompt line leaves out (kohya's: 512×512, 30 steps, scale 7.5,
/// DDIM, random seed, no negative prompt). A trainer sets `sampler` from its
/// `--sample_sampler`.
#[derive(Clone, Debug, PartialEq)]
pub struct PromptDefaults {
    pub negative_prompt: String,
    pub width: usize,
    pub height: usize,
    pub seed: Option<u64>,
    pub steps: usize,
    pub cfg_scale: f64,
    pub sampler: SamplerKind,
}

impl Default for PromptDefaults {
    fn default() -> Self {
        PromptDefaults {
            negative_prompt: String::new(),
            width: 512,
            height: 512,
            seed: None,
            steps: 30,
            cfg_scale: 7.5,
            sampler: SamplerKind::Ddim,
        }
    }
}

impl PromptDefaults {
    /// A spec with these values and `prompt`.
    pub fn spec(&self, prompt: &str) -> PromptSpec {
        PromptSpec {
            prompt: prompt.to_string(),
            negative_prompt: self.negative_prompt.clone(),
            width: self.width,
            height: self.height,
            seed: self.seed,
            steps: self.steps,
            cfg_scale: self.cfg_scale,
            sampler: self.sampler,
            notes: Vec::new(),
        }
    }
}

/// kohya options that lorafuse does not implement (SD1.x ControlNet, SDXL/Flux/SD3 ones).
const UNSUPPORTED: &[(&str, &str)] = &[
    ("cn", "ControlNet image"),
    ("g", "distilled guidance scale (Flux)"),
    ("i", "init image"),
    ("ctr", "CFG truncation ratio"),
    ("rcfg", "renormalized CFG"),
    ("fs", "flow shift"),
    ("am", "attention mask"),
];

/// Parses one line of a kohya prompt file; see the module documentation.
pub fn parse_prompt_line(line: &str, defaults: &PromptDefaults) -> Result<PromptSpec, SampleError> {
    let line = line.trim();
    let (prompt, options) = match line.strip_prefix("--") {
        Some(rest) => ("", format!(" --{rest}")),
        None => match line.find(" --") {
            Some(at) => (&line[..at], line[at..].to_string()),
            None => (line, String::new()),
        },
    };
    let mut spec = defaults.spec(prompt.trim());
    let mut seen: Vec<String> = Vec::new();
    // `options` is empty or starts with " --": the first piece of the split is empty.
    for piece in options.split(" --").skip(1) {
        let piece = piece.trim();
        let (name, value) = match piece.split_once(char::is_whitespace) {
            Some((n, v)) => (n, v.trim()),
            None => (piece, ""),
        };
        let option = name.to_ascii_lowercase();
        if option.is_empty() {
            return Err(SampleError::UnknownOption {
                option: String::new(),
                known: known_options(),
            });
        }
        if let Some((_, what)) = UNSUPPORTED.iter().find(|(o, _)| *o == option) {
            return Err(SampleError::UnsupportedOption {
                option: name.to_string(),
                what: what.to_string(),
            });
        }
        if !matches!(option.as_str(), "n" | "w" | "h" | "d" | "s" | "l" | "ss") {
            return Err(SampleError::UnknownOption {
                option: name.to_string(),
                known: known_options(),
            });
        }
        if value.is_empty() {
            return Err(SampleError::MissingValue {
                option: name.to_string(),
            });
        }
        if seen.contains(&option) {
            spec.notes.push(format!(
                "--{name} is given more than once; the last value ({value}) is used"
            ));
        } else {
            seen.push(option.clone());
        }
        let bad = |expected: &str| SampleError::BadValue {
            option: name.to_string(),
            value: value.to_string(),
            expected: expected.to_string(),
        };
        match option.as_str() {
            "n" => spec.negative_prompt = value.to_string(),
            "w" | "h" => {
                let v = parse_uint(value).ok_or_else(|| bad("a whole number of pixels"))?;
                if v > MAX_SIDE {
                    return Err(bad(&format!("at most {MAX_SIDE} pixels")));
                }
                let rounded = (v - v % SIZE_MULTIPLE).max(SIZE_MULTIPLE);
                if rounded != v {
                    spec.notes.push(format!(
                        "--{name} {v} is not a multiple of {SIZE_MULTIPLE}; using {rounded}"
                    ));
                }
                if option == "w" {
                    spec.width = rounded;
                } else {
                    spec.height = rounded;
                }
            }
            "d" => {
                let v = Some(value)
                    .filter(|v| is_digits(v))
                    .and_then(|v| v.parse::<u64>().ok())
                    .ok_or_else(|| bad("a whole number from 0 to 18446744073709551615"))?;
                spec.seed = Some(v);
            }
            "s" => {
                // Digits that overflow usize are still a (huge) step count: clamp them too.
                if !is_digits(value) {
                    return Err(bad("a whole number of steps"));
                }
                let v = value.parse::<usize>().unwrap_or(usize::MAX);
                let clamped = v.clamp(1, MAX_STEPS);
                if clamped != v {
                    spec.notes.push(format!(
                        "--{name} {value} is outside 1..={MAX_STEPS}; using {clamped}"
                    ));
                }
                spec.steps = clamped;
            }
            "l" => {
                let v = value
                    .parse::<f64>()
                    .ok()
                    .filter(|v| v.is_finite() && *v >= 0.0)
                    .ok_or_else(|| bad("a number >= 0 (e.g. 7.5)"))?;
                spec.cfg_scale = v;
            }
            "ss" => spec.sampler = SamplerKind::from_name(value).map_err(|e| bad(&e))?,
            _ => {} // every other name was refused above
        }
    }
    Ok(spec)
}

/// Parses a kohya `.txt` prompt file: one prompt per line; empty lines and lines starting
/// with `#` are skipped. An error names the 1-based line.
pub fn parse_prompt_file(
    text: &str,
    defaults: &PromptDefaults,
) -> Result<Vec<PromptSpec>, SampleError> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|(i, l)| {
            parse_prompt_line(l, defaults).map_err(|e| SampleError::AtLine {
                line: i + 1,
                source: Box::new(e),
            })
        })
        .collect()
}

fn known_options() -> String {
    "--n (negative prompt), --w, --h (size), --d (seed), --s (steps), --l (guidance scale), \
     --ss (sampler)"
        .into()
}

fn is_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// Digits only (no sign, no spaces), as kohya's `\d+`; None when not, or when too large.
fn parse_uint(s: &str) -> Option<usize> {
    if is_digits(s) {
        s.parse().ok()
    } else {
        None
    }
}
