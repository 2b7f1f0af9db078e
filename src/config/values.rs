//! The typed values of keys that are more than a number, a flag or a path: the choices
//! (`lr_scheduler`, `mixed_precision`, ...), `resolution`, `num_warmup_steps` and
//! `sample_prompts`. Each says how it is written in the YAML file, in both directions.

use std::fmt;
use std::path::PathBuf;

use serde::{Serialize, Serializer};

use crate::lora::LoraTargets;

/// A key whose value is one of a fixed set of words.
pub trait Choice: Sized + Copy {
    /// Every accepted spelling, the canonical ones first (shown in error messages).
    const CHOICES: &'static [&'static str];
    /// The value for one spelling (exact, lower case), if it is one.
    fn parse(word: &str) -> Option<Self>;
    /// How the value is written in an effective config.
    fn name(self) -> &'static str;
}

macro_rules! choice {
    ($(#[$meta:meta])* $ty:ident { $($(#[$vmeta:meta])* $variant:ident = $word:literal),+ $(,)? }
     $(aliases { $($alias:literal => $avariant:ident),+ $(,)? })?) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum $ty {
            $($(#[$vmeta])* $variant),+
        }
        impl Choice for $ty {
            const CHOICES: &'static [&'static str] = &[$($word),+];
            fn parse(word: &str) -> Option<Self> {
                match word {
                    $($word => Some($ty::$variant),)+
                    $($($alias => Some($ty::$avariant),)+)?
                    _ => None,
                }
            }
            fn name(self) -> &'static str {
                match self {
                    $($ty::$variant => $word),+
                }
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.name())
            }
        }
    };
}

choice! {
    /// How the learning rate moves over the run (after the warmup, when there is one).
    LrScheduler {
        /// The same rate throughout; `num_warmup_steps` must be 0.
        Constant = "constant",
        /// A linear warmup from 0, then constant.
        ConstantWithWarmup = "constant_with_warmup",
        /// Warmup, then a straight line down to 0 at the last step.
        Linear = "linear",
        /// Warmup, then half a cosine down to 0 at the last step.
        Cosine = "cosine",
        /// Warmup, then `lr_scheduler_num_cycles` cosines, each restarting at the full rate.
        CosineWithRestarts = "cosine_with_restarts",
    }
}

choice! {
    /// The precision of the frozen model's activations on the GPU. The CPU backend always
    /// computes in f32; LoRA weights, their gradients and AdamW's moments are always f32.
    MixedPrecision {
        No = "no",
        Fp16 = "fp16",
        Bf16 = "bf16",
    }
    // "fp32" reads as "no mixed precision"; YAML's `false` is handled where values are read.
    aliases { "fp32" => No }
}

choice! {
    /// The dtype of the tensors in the saved LoRA file.
    SavePrecision {
        Fp16 = "fp16",
        Fp32 = "fp32",
        Bf16 = "bf16",
    }
    // kohya spells f32 `float`.
    aliases { "float" => Fp32 }
}

/// Which compute device trains: `auto` takes the first CUDA GPU when the build and the
/// machine have one, else the CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    Auto,
    Cpu,
    /// `cuda` is `cuda:0`.
    Cuda(usize),
}

impl Device {
    pub const CHOICES: &'static [&'static str] = &["auto", "cpu", "cuda", "cuda:N"];

    pub fn parse(word: &str) -> Option<Device> {
        match word {
            "auto" => Some(Device::Auto),
            "cpu" => Some(Device::Cpu),
            "cuda" => Some(Device::Cuda(0)),
            _ => {
                let n = word.strip_prefix("cuda:")?;
                if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                n.parse().ok().map(Device::Cuda)
            }
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Auto => f.write_str("auto"),
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl Serialize for Device {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// `lora_targets` spellings, for [`LoraTargets`] (which lives with the adapters).
pub const LORA_TARGET_CHOICES: &[&str] = &["transformer", "attention"];

pub fn parse_lora_targets(word: &str) -> Option<LoraTargets> {
    match word {
        "transformer" => Some(LoraTargets::Transformer),
        "attention" => Some(LoraTargets::Attention),
        _ => None,
    }
}

pub fn lora_targets_name(t: LoraTargets) -> &'static str {
    match t {
        LoraTargets::Transformer => "transformer",
        LoraTargets::Attention => "attention",
    }
}

pub(crate) fn serialize_lora_targets<S: Serializer>(
    t: &LoraTargets,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.serialize_str(lora_targets_name(*t))
}

/// Training image size in pixels, width by height. Written `512`, `"512"`, `"512,768"` or
/// `[512, 768]` (width first, as kohya writes it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resolution {
    pub width: u32,
    pub height: u32,
}

impl Resolution {
    pub fn square(side: u32) -> Resolution {
        Resolution {
            width: side,
            height: side,
        }
    }

    /// Parses the text forms: `"512"`, `"512,768"` (spaces allowed around the numbers).
    pub fn parse(text: &str) -> Option<Resolution> {
        let parts: Vec<&str> = text.split(',').map(str::trim).collect();
        let side = |s: &str| -> Option<u32> {
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            s.parse().ok()
        };
        match parts.as_slice() {
            [s] => side(s).map(Resolution::square),
            [w, h] => Some(Resolution {
                width: side(w)?,
                height: side(h)?,
            }),
            _ => None,
        }
    }
}

impl fmt::Display for Resolution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.width == self.height {
            write!(f, "{}", self.width)
        } else {
            write!(f, "{},{}", self.width, self.height)
        }
    }
}

impl Serialize for Resolution {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.width == self.height {
            s.serialize_u32(self.width)
        } else {
            s.collect_str(self)
        }
    }
}

/// `num_warmup_steps`: a whole number of optimizer steps, or (as kohya's `lr_warmup_steps`
/// accepts) a fraction in (0, 1) of the run's total optimizer steps.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Warmup {
    Steps(usize),
    Fraction(f64),
}

impl Warmup {
    /// Warmup length in optimizer steps for a run of `total_steps`: a fraction is rounded
    /// down (kohya: `int(ratio * max_train_steps)`); the result never exceeds the run.
    pub fn steps(self, total_steps: usize) -> usize {
        let n = match self {
            Warmup::Steps(n) => n,
            Warmup::Fraction(f) => {
                let n = (f * total_steps as f64).floor();
                if n.is_finite() && n >= 0.0 {
                    n as usize
                } else {
                    0
                }
            }
        };
        n.min(total_steps)
    }

    pub fn is_zero(self) -> bool {
        matches!(self, Warmup::Steps(0))
    }
}

impl fmt::Display for Warmup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Warmup::Steps(n) => write!(f, "{n}"),
            Warmup::Fraction(x) => write!(f, "{x}"),
        }
    }
}

impl Serialize for Warmup {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Warmup::Steps(n) => s.serialize_u64(*n as u64),
            Warmup::Fraction(x) => s.serialize_f64(*x),
        }
    }
}

/// `sample_prompts`: the prompts written in the file, or a `.txt` file with one per line
/// (blank lines and lines starting with `#` skipped). Each prompt is a kohya prompt line:
/// `a photo of sks dog --n blurry --w 512 --h 768 --d 42 --s 28 --l 7.5`.
#[derive(Clone, Debug, PartialEq)]
pub enum SamplePrompts {
    List(Vec<String>),
    File(PathBuf),
}

impl SamplePrompts {
    pub fn is_empty_list(&self) -> bool {
        matches!(self, SamplePrompts::List(v) if v.is_empty())
    }
}

impl Default for SamplePrompts {
    fn default() -> Self {
        SamplePrompts::List(Vec::new())
    }
}

impl Serialize for SamplePrompts {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            SamplePrompts::List(v) => v.serialize(s),
            SamplePrompts::File(p) => s.serialize_str(&p.to_string_lossy()),
        }
    }
}

/// Paths are written as text; a name that is not UTF-8 is written with U+FFFD in place of the
/// bad bytes rather than failing the whole file.
pub(crate) fn serialize_path<S: Serializer>(p: &std::path::Path, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&p.to_string_lossy())
}
