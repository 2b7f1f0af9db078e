//! Which optimizer a configuration asks for: kohya's `optimizer_type` names and its
//! `optimizer_args` list ("name=value" strings), read into an [`OptimizerKind`] with each
//! argument checked against the optimizer it belongs to.
//!
//! Defaults are each optimizer's reference implementation's (torch.optim.AdamW,
//! lion-pytorch's Lion, torch.optim.SGD with nesterov=True and kohya's momentum 0.9,
//! prodigyopt's Prodigy, dadaptation's DAdaptAdam, transformers' Adafactor with kohya's
//! relative_step=True; bitsandbytes' AdamW8bit and Lion8bit have AdamW's and Lion's). The lorafuse keys `adam_beta1`, `adam_beta2` and `adam_epsilon` set
//! the Adam-family optimizers' betas and ε (AdamW, AdamW8bit, Prodigy, DAdaptAdam); `weight_decay` sets AdamW's and
//! AdamW8bit's decay, and the others' when it is written in the configuration (otherwise
//! their reference default, 0). An `optimizer_args` entry overrides the key.

use std::fmt;

use super::{
    AdafactorSettings, AdamWSettings, DAdaptSettings, LionSettings, OptimizerKind, ProdigySettings,
    SgdSettings,
};

/// kohya's `optimizer_type` values (its names, read case-insensitively).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptimizerType {
    AdamW,
    AdamW8bit,
    Lion,
    Lion8bit,
    Prodigy,
    Adafactor,
    DAdaptAdam,
    SGDNesterov,
}

impl OptimizerType {
    /// Every name of kohya's that lorafuse trains with, in the order messages list them.
    pub const ALL: [OptimizerType; 8] = [
        OptimizerType::AdamW,
        OptimizerType::AdamW8bit,
        OptimizerType::Lion,
        OptimizerType::Lion8bit,
        OptimizerType::Prodigy,
        OptimizerType::Adafactor,
        OptimizerType::DAdaptAdam,
        OptimizerType::SGDNesterov,
    ];

    /// kohya's spelling.
    pub fn name(self) -> &'static str {
        match self {
            OptimizerType::AdamW => "AdamW",
            OptimizerType::AdamW8bit => "AdamW8bit",
            OptimizerType::Lion => "Lion",
            OptimizerType::Lion8bit => "Lion8bit",
            OptimizerType::Prodigy => "Prodigy",
            OptimizerType::Adafactor => "Adafactor",
            OptimizerType::DAdaptAdam => "DAdaptAdam",
            OptimizerType::SGDNesterov => "SGDNesterov",
        }
    }

    /// The type of a name, in any case.
    pub fn parse(word: &str) -> Option<OptimizerType> {
        OptimizerType::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(word.trim()))
    }

    /// Whether the optimizer finds its own step size, so that `learning_rate` is a
    /// multiplier (kohya users set 1.0) rather than the rate.
    pub fn finds_lr(self) -> bool {
        matches!(self, OptimizerType::Prodigy | OptimizerType::DAdaptAdam)
    }
}

impl fmt::Display for OptimizerType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The lorafuse keys that seed an optimizer's settings (see the module comment).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KeyDefaults {
    pub adam_beta1: f64,
    pub adam_beta2: f64,
    pub adam_epsilon: f64,
    pub weight_decay: f64,
    /// Whether `weight_decay` was written (it then applies to every optimizer).
    pub weight_decay_written: bool,
}

/// One parsed `name=value` argument.
struct Arg<'a> {
    text: &'a str,
    name: String,
    value: &'a str,
}

impl Arg<'_> {
    fn bad(&self, rule: &str) -> String {
        format!(
            "argument `{}` is not valid: {} {rule}",
            self.text, self.name
        )
    }

    fn float(&self, ok: impl Fn(f64) -> bool, rule: &str) -> Result<f64, String> {
        let x = parse_float(self.value).ok_or_else(|| self.bad(rule))?;
        if ok(x) {
            Ok(x)
        } else {
            Err(self.bad(rule))
        }
    }

    fn flag(&self) -> Result<bool, String> {
        match self.value.trim().to_ascii_lowercase().as_str() {
            "true" | "1" => Ok(true),
            "false" | "0" => Ok(false),
            _ => Err(self.bad("must be True or False")),
        }
    }

    /// "b1,b2" (kohya writes `betas=0.9,0.99`; parentheses allowed), each in [0, 1).
    fn betas(&self) -> Result<(f64, f64), String> {
        self.pair(unit, "must be two numbers in [0, 1), written 0.9,0.999")
    }

    /// "a,b" or "(a,b)", each satisfying `ok`.
    fn pair(&self, ok: impl Fn(f64) -> bool, rule: &str) -> Result<(f64, f64), String> {
        let v = self
            .value
            .trim()
            .trim_start_matches('(')
            .trim_end_matches(')');
        let parts: Vec<&str> = v.split(',').collect();
        let [a, b] = parts.as_slice() else {
            return Err(self.bad(rule));
        };
        let (a, b) = (
            parse_float(a).ok_or_else(|| self.bad(rule))?,
            parse_float(b).ok_or_else(|| self.bad(rule))?,
        );
        if ok(a) && ok(b) {
            Ok((a, b))
        } else {
            Err(self.bad(rule))
        }
    }

    /// A number satisfying `ok`, or None (Python's `None`).
    fn float_or_none(&self, ok: impl Fn(f64) -> bool, rule: &str) -> Result<Option<f64>, String> {
        if self.value.trim() == "None" {
            return Ok(None);
        }
        self.float(ok, rule).map(Some)
    }
}

fn parse_float(s: &str) -> Option<f64> {
    let s = s.trim();
    match s.to_ascii_lowercase().as_str() {
        "inf" | "float('inf')" | "float(\"inf\")" => return Some(f64::INFINITY),
        _ => {}
    }
    if s.bytes()
        .any(|b| b.is_ascii_alphabetic() && b != b'e' && b != b'E')
    {
        return None;
    }
    s.parse().ok().filter(|x: &f64| !x.is_nan())
}

fn unit(x: f64) -> bool {
    x.is_finite() && (0.0..1.0).contains(&x)
}

const WD_RULE: &str = "must be a number ≥ 0 and < 1 (typical 0.01 to 0.1)";
const EPS_RULE: &str = "must be a number > 0 and < 1 (typical 1e-8)";
const D0_RULE: &str =
    "must be a number > 0 and < 1 (the first estimate of the step size; default 1e-6)";
const GROWTH_RULE: &str = "must be a number ≥ 1, or inf (no limit; the default)";

/// Splits "name=value" strings; an entry without `=` is an error naming it.
fn split_args(args: &[String]) -> Result<Vec<Arg<'_>>, String> {
    args.iter()
        .map(|text| {
            let (name, value) = text.split_once('=').ok_or_else(|| {
                format!("argument `{text}` is not valid: write name=value, for example weight_decay=0.01")
            })?;
            Ok(Arg {
                text,
                name: name.trim().to_ascii_lowercase(),
                value,
            })
        })
        .collect()
}

fn unknown(arg: &Arg, ty: OptimizerType, known: &[&str]) -> String {
    format!(
        "argument `{}` is not valid: {} has no argument `{}` in lorafuse (it takes {})",
        arg.text,
        ty.name(),
        arg.name,
        known.join(", ")
    )
}

impl OptimizerKind {
    /// The optimizer of `optimizer_type` = `ty` with `optimizer_args` = `args`; an error names
    /// the argument, what is wrong and what is allowed.
    pub fn from_config(
        ty: OptimizerType,
        args: &[String],
        keys: &KeyDefaults,
    ) -> Result<OptimizerKind, String> {
        let args = split_args(args)?;
        let wd_default = |reference: f64| {
            if keys.weight_decay_written {
                keys.weight_decay
            } else {
                reference
            }
        };
        match ty {
            OptimizerType::AdamW | OptimizerType::AdamW8bit => {
                let mut s = AdamWSettings {
                    beta1: keys.adam_beta1,
                    beta2: keys.adam_beta2,
                    eps: keys.adam_epsilon,
                    weight_decay: keys.weight_decay,
                };
                const KNOWN: &[&str] = &["betas", "eps", "weight_decay"];
                for a in &args {
                    match a.name.as_str() {
                        "betas" => (s.beta1, s.beta2) = a.betas()?,
                        "eps" => s.eps = a.float(|x| x > 0.0 && x < 1.0, EPS_RULE)?,
                        "weight_decay" => s.weight_decay = a.float(unit, WD_RULE)?,
                        _ => return Err(unknown(a, ty, KNOWN)),
                    }
                }
                Ok(if ty == OptimizerType::AdamW {
                    OptimizerKind::AdamW(s)
                } else {
                    OptimizerKind::AdamW8bit(s)
                })
            }
            OptimizerType::Lion | OptimizerType::Lion8bit => {
                let mut s = LionSettings {
                    weight_decay: wd_default(0.0),
                    ..LionSettings::default()
                };
                const KNOWN: &[&str] = &["betas", "weight_decay"];
                for a in &args {
                    match a.name.as_str() {
                        "betas" => (s.beta1, s.beta2) = a.betas()?,
                        "weight_decay" => s.weight_decay = a.float(unit, WD_RULE)?,
                        _ => return Err(unknown(a, ty, KNOWN)),
                    }
                }
                Ok(if ty == OptimizerType::Lion {
                    OptimizerKind::Lion(s)
                } else {
                    OptimizerKind::Lion8bit(s)
                })
            }
            OptimizerType::SGDNesterov => {
                let mut s = SgdSettings {
                    weight_decay: wd_default(0.0),
                    ..SgdSettings::default()
                };
                const KNOWN: &[&str] = &["momentum", "weight_decay"];
                for a in &args {
                    match a.name.as_str() {
                        "momentum" => s.momentum = a.float(
                            |x| x > 0.0 && x < 1.0,
                            "must be a number > 0 and < 1 (Nesterov needs momentum; typical 0.9)",
                        )?,
                        "weight_decay" => s.weight_decay = a.float(unit, WD_RULE)?,
                        _ => return Err(unknown(a, ty, KNOWN)),
                    }
                }
                Ok(OptimizerKind::SgdNesterov(s))
            }
            OptimizerType::Prodigy => {
                let mut s = ProdigySettings {
                    beta1: keys.adam_beta1,
                    beta2: keys.adam_beta2,
                    eps: keys.adam_epsilon,
                    weight_decay: wd_default(0.0),
                    ..ProdigySettings::default()
                };
                const KNOWN: &[&str] = &[
                    "betas",
                    "beta3",
                    "eps",
                    "weight_decay",
                    "decouple",
                    "use_bias_correction",
                    "safeguard_warmup",
                    "d0",
                    "d_coef",
                    "growth_rate",
                ];
                for a in &args {
                    match a.name.as_str() {
                        "betas" => (s.beta1, s.beta2) = a.betas()?,
                        "beta3" => {
                            s.beta3 = Some(a.float(
                                |x| x > 0.0 && x < 1.0,
                                "must be a number > 0 and < 1 (default: sqrt(beta2))",
                            )?)
                        }
                        "eps" => s.eps = a.float(|x| x > 0.0 && x < 1.0, EPS_RULE)?,
                        "weight_decay" => s.weight_decay = a.float(unit, WD_RULE)?,
                        "decouple" => s.decouple = a.flag()?,
                        "use_bias_correction" => s.use_bias_correction = a.flag()?,
                        "safeguard_warmup" => s.safeguard_warmup = a.flag()?,
                        "d0" => s.d0 = a.float(|x| x > 0.0 && x < 1.0, D0_RULE)?,
                        "d_coef" => {
                            s.d_coef = a.float(
                                |x| x.is_finite() && x > 0.0 && x <= 100.0,
                                "must be a number > 0 and ≤ 100 (typical 0.5 to 2)",
                            )?
                        }
                        "growth_rate" => s.growth_rate = a.float(|x| x >= 1.0, GROWTH_RULE)?,
                        _ => return Err(unknown(a, ty, KNOWN)),
                    }
                }
                Ok(OptimizerKind::Prodigy(s))
            }
            OptimizerType::DAdaptAdam => {
                let mut s = DAdaptSettings {
                    beta1: keys.adam_beta1,
                    beta2: keys.adam_beta2,
                    eps: keys.adam_epsilon,
                    weight_decay: wd_default(0.0),
                    ..DAdaptSettings::default()
                };
                const KNOWN: &[&str] = &[
                    "betas",
                    "eps",
                    "weight_decay",
                    "decouple",
                    "use_bias_correction",
                    "d0",
                    "growth_rate",
                    "log_every",
                ];
                for a in &args {
                    match a.name.as_str() {
                        "betas" => (s.beta1, s.beta2) = a.betas()?,
                        "eps" => s.eps = a.float(|x| x > 0.0 && x < 1.0, EPS_RULE)?,
                        "weight_decay" => s.weight_decay = a.float(unit, WD_RULE)?,
                        "decouple" => s.decouple = a.flag()?,
                        "use_bias_correction" => s.use_bias_correction = a.flag()?,
                        "d0" => s.d0 = a.float(|x| x > 0.0 && x < 1.0, D0_RULE)?,
                        "growth_rate" => s.growth_rate = a.float(|x| x >= 1.0, GROWTH_RULE)?,
                        // dadaptation's logging interval: checked, then ignored.
                        "log_every" => {
                            a.float(
                                |x| x >= 0.0 && x.fract() == 0.0 && x.is_finite(),
                                "must be a whole number ≥ 0 (dadaptation's logging; lorafuse ignores it)",
                            )?;
                        }
                        _ => return Err(unknown(a, ty, KNOWN)),
                    }
                }
                Ok(OptimizerKind::DAdaptAdam(s))
            }
            OptimizerType::Adafactor => {
                let mut s = AdafactorSettings {
                    weight_decay: wd_default(0.0),
                    ..AdafactorSettings::default()
                };
                const KNOWN: &[&str] = &[
                    "eps",
                    "clip_threshold",
                    "decay_rate",
                    "beta1",
                    "weight_decay",
                    "scale_parameter",
                    "relative_step",
                    "warmup_init",
                ];
                for a in &args {
                    match a.name.as_str() {
                        "eps" => {
                            (s.eps1, s.eps2) = a.pair(
                                |x| x > 0.0 && x < 1.0,
                                "must be two numbers > 0 and < 1, written (1e-30,1e-3): added to the squared gradient, and the smallest parameter scale",
                            )?
                        }
                        "clip_threshold" => {
                            s.clip_threshold = a.float(
                                |x| x.is_finite() && x > 0.0,
                                "must be a number > 0 (the update's largest RMS; default 1.0)",
                            )?
                        }
                        "decay_rate" => {
                            s.decay_rate = a.float(
                                |x| (-1.0..=0.0).contains(&x),
                                "must be a number in [-1, 0] (the second moment's decay exponent; default -0.8)",
                            )?
                        }
                        "beta1" => {
                            s.beta1 = a.float_or_none(
                                unit,
                                "must be a number in [0, 1), or None (no first moment; the default)",
                            )?
                        }
                        "weight_decay" => s.weight_decay = a.float(unit, WD_RULE)?,
                        "scale_parameter" => s.scale_parameter = a.flag()?,
                        "relative_step" => s.relative_step = a.flag()?,
                        "warmup_init" => s.warmup_init = a.flag()?,
                        _ => return Err(unknown(a, ty, KNOWN)),
                    }
                }
                // kohya: warmup_init needs relative_step, which it then turns on.
                s.relative_step |= s.warmup_init;
                Ok(OptimizerKind::Adafactor(s))
            }
        }
    }
}
