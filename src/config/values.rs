//! The typed values of keys that are more than a number, a flag or a path: the choices
//! (`lr_scheduler`, `mixed_precision`, ...), `resolution`, `num_warmup_steps` and
//! `sample_prompts`; and [`YamlValue`], how every field type is written in
//! `config.effective.yaml` (parse.rs reads them back).

use std::fmt;
use std::path::PathBuf;

use yaml_serde::Value;

use crate::backend::cpu::CpuPrecision;
use crate::lora::blocks::SideWeights;
use crate::lora::export::SavePrecision;
use crate::lora::{AlgoKind, LoraTargets};
use crate::prepare::CropMode;
use crate::sample::SamplerKind;
use crate::train::lr::Schedule;
use crate::train::optim::OptimizerType;

/// A key whose value is one of a fixed set of words. The domain enums (the LR schedule,
/// the save precision, the adapter targets) are used as they are; their names are theirs.
pub trait Choice: Sized + Copy + 'static {
    /// Every value, in the order error messages and README.md list them.
    const ALL: &'static [Self];
    /// How the value is written in a config.
    fn name(self) -> String;
    /// The value for one spelling (trimmed, lower case): its name, or another accepted
    /// spelling.
    fn parse(word: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|c| c.name() == word)
    }
}

/// The names of every value of a choice, in order.
pub(crate) fn choice_names<C: Choice>() -> Vec<String> {
    C::ALL.iter().map(|c| c.name()).collect()
}

impl Choice for Schedule {
    const ALL: &'static [Schedule] = &Schedule::ALL;
    fn name(self) -> String {
        Schedule::name(self).to_string()
    }
}

impl Choice for OptimizerType {
    const ALL: &'static [OptimizerType] = &OptimizerType::ALL;
    fn name(self) -> String {
        OptimizerType::name(self).to_string()
    }
    /// kohya's names in any case.
    fn parse(word: &str) -> Option<OptimizerType> {
        OptimizerType::parse(word)
    }
}

impl Choice for SavePrecision {
    const ALL: &'static [SavePrecision] = &SavePrecision::ALL;
    fn name(self) -> String {
        self.to_string()
    }
    /// kohya's `float` and the other spellings export.rs accepts.
    fn parse(word: &str) -> Option<SavePrecision> {
        word.parse().ok()
    }
}

impl Choice for CpuPrecision {
    const ALL: &'static [CpuPrecision] = &CpuPrecision::ALL;
    fn name(self) -> String {
        CpuPrecision::name(self).to_string()
    }
}

impl Choice for SamplerKind {
    const ALL: &'static [SamplerKind] = &SamplerKind::ALL;
    fn name(self) -> String {
        SamplerKind::name(self).to_string()
    }
    /// kohya's `k_` names and the other aliases too.
    fn parse(word: &str) -> Option<SamplerKind> {
        SamplerKind::parse(word)
    }
}

impl Choice for LoraTargets {
    const ALL: &'static [LoraTargets] = &[LoraTargets::Transformer, LoraTargets::Attention];
    fn name(self) -> String {
        match self {
            LoraTargets::Transformer => "transformer",
            LoraTargets::Attention => "attention",
        }
        .to_string()
    }
}

impl Choice for AlgoKind {
    const ALL: &'static [AlgoKind] = &[AlgoKind::Lora, AlgoKind::Loha];
    fn name(self) -> String {
        match self {
            AlgoKind::Lora => "lora",
            AlgoKind::Loha => "loha",
        }
        .to_string()
    }
}

/// The precision of the frozen model's activations on the GPU (the CPU's is
/// `cpu_precision`); LoRA weights, their gradients and AdamW's moments are always f32.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MixedPrecision {
    No,
    Fp16,
    Bf16,
}

impl Choice for MixedPrecision {
    const ALL: &'static [MixedPrecision] = &[
        MixedPrecision::No,
        MixedPrecision::Fp16,
        MixedPrecision::Bf16,
    ];
    fn name(self) -> String {
        match self {
            MixedPrecision::No => "no",
            MixedPrecision::Fp16 => "fp16",
            MixedPrecision::Bf16 => "bf16",
        }
        .to_string()
    }
    /// "fp32" reads as "no mixed precision"; YAML's `false` is handled where values are read.
    fn parse(word: &str) -> Option<MixedPrecision> {
        match word {
            "fp32" => Some(MixedPrecision::No),
            _ => MixedPrecision::ALL
                .iter()
                .copied()
                .find(|c| c.name() == word),
        }
    }
}

impl fmt::Display for MixedPrecision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
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

impl YamlValue for Device {
    fn to_yaml(&self) -> Value {
        Value::String(self.to_string())
    }
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

impl YamlValue for Resolution {
    fn to_yaml(&self) -> Value {
        if self.width == self.height {
            self.width.to_yaml()
        } else {
            Value::String(self.to_string())
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

impl YamlValue for Warmup {
    fn to_yaml(&self) -> Value {
        match self {
            Warmup::Steps(n) => n.to_yaml(),
            Warmup::Fraction(x) => x.to_yaml(),
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

impl YamlValue for SamplePrompts {
    fn to_yaml(&self) -> Value {
        match self {
            SamplePrompts::List(v) => Value::Sequence(v.iter().map(|p| p.to_yaml()).collect()),
            SamplePrompts::File(p) => p.to_yaml(),
        }
    }
}

/// How a field's value is written in `config.effective.yaml` (and shown in README.md's
/// defaults): the form parse.rs reads back to the same value.
pub trait YamlValue {
    fn to_yaml(&self) -> Value;
}

macro_rules! yaml_number {
    ($($t:ty),*) => {$(
        impl YamlValue for $t {
            fn to_yaml(&self) -> Value {
                Value::Number((*self).into())
            }
        }
    )*};
}
yaml_number!(u32, u64, f64);

impl YamlValue for usize {
    fn to_yaml(&self) -> Value {
        Value::Number((*self as u64).into())
    }
}

impl YamlValue for bool {
    fn to_yaml(&self) -> Value {
        Value::Bool(*self)
    }
}

impl YamlValue for String {
    fn to_yaml(&self) -> Value {
        Value::String(self.clone())
    }
}

/// A path that is not UTF-8 is written with U+FFFD in place of the bad bytes rather than
/// failing the whole file.
impl YamlValue for PathBuf {
    fn to_yaml(&self) -> Value {
        Value::String(self.to_string_lossy().into_owned())
    }
}

impl<T: YamlValue> YamlValue for Option<T> {
    fn to_yaml(&self) -> Value {
        self.as_ref().map_or(Value::Null, YamlValue::to_yaml)
    }
}

macro_rules! yaml_choice {
    ($($t:ty),*) => {$(
        impl YamlValue for $t {
            fn to_yaml(&self) -> Value {
                Value::String(Choice::name(*self))
            }
        }
    )*};
}
yaml_choice!(
    Schedule,
    SavePrecision,
    LoraTargets,
    MixedPrecision,
    CpuPrecision,
    OptimizerType,
    SamplerKind,
    CropMode,
    AlgoKind
);

impl<T: YamlValue> YamlValue for Vec<T> {
    fn to_yaml(&self) -> Value {
        Value::Sequence(self.iter().map(YamlValue::to_yaml).collect())
    }
}

/// A list as a YAML list, a curve as its text.
impl YamlValue for SideWeights {
    fn to_yaml(&self) -> Value {
        match self {
            SideWeights::List(w) => w.to_yaml(),
            SideWeights::Curve { .. } => Value::String(self.to_string()),
        }
    }
}
