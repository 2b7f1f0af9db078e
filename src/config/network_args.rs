//! kohya's `network_args` (sd-scripts' `--network_args`: a list of `"name=value"` texts the
//! network module reads): each name sd-scripts' `networks.lora` reads becomes lorafuse's key
//! of the same meaning, with kohya's defaults; a name it reads for something lorafuse does not
//! do is refused with the reason; a name it does not read is ignored with a notice, as
//! sd-scripts ignores it.
//!
//! - `conv_dim`, `conv_alpha`: LoCon's rank and alpha (keys `conv_dim`, `conv_alpha`); with
//!   `conv_dim` and no `conv_alpha`, conv_alpha is 1 as in sd-scripts (lorafuse's own
//!   `conv_alpha` key defaults to `conv_dim`, a scale of 1);
//! - `rank_dropout`, `module_dropout`: the keys of those names (lora/dropout.rs);
//! - block-wise ranks and learning rates (`block_dims`, `block_alphas`, `conv_block_dims`,
//!   `conv_block_alphas`, `down_lr_weight`, `mid_lr_weight`, `up_lr_weight`,
//!   `block_lr_zero_threshold`): the keys of those names (lora/blocks.rs), their texts read
//!   as sd-scripts reads them;
//! - `verbose`: only sd-scripts' printing;
//! - refused: LoRA+ (`loraplus_*lr_ratio`).
//!
//! With `network_module = "lycoris.kohya"` the names are LyCORIS's (lycoris/kohya.py's
//! `create_network`): `algo` (`lora`/`locon` -> the key `algo: lora`, `loha` -> `algo: loha`;
//! its other algorithms are refused naming them), `dora_wd` (the key `dora_wd`: DoRA),
//! `conv_dim`/`conv_alpha` defaulting to network_dim/network_alpha (LyCORIS adapts the convs
//! unless told otherwise), the dropouts as above; its switches are accepted at their
//! defaults (`wd_on_output=True`, `use_tucker=False`, ...) and refused otherwise; `preset` only as `full`, with a notice of what lorafuse adapts.

use yaml_serde::Value;

use super::error::ConfigError;
use super::kohya::Meanings;
use super::parse::{render, Entry};

/// The names read into a lorafuse key of the same name.
const KEYS: [&str; 12] = [
    "conv_dim",
    "conv_alpha",
    "rank_dropout",
    "module_dropout",
    "block_dims",
    "block_alphas",
    "conv_block_dims",
    "conv_block_alphas",
    "down_lr_weight",
    "mid_lr_weight",
    "up_lr_weight",
    "block_lr_zero_threshold",
];

/// Names sd-scripts reads for what lorafuse does not do, with the reason.
const REFUSED: &[(&str, &str)] = &[
    ("loraplus_lr_ratio", LORAPLUS),
    ("loraplus_unet_lr_ratio", LORAPLUS),
    ("loraplus_text_encoder_lr_ratio", LORAPLUS),
];
const LORAPLUS: &str = "LoRA+ (a larger learning rate for the up matrices) is not supported; \
    remove it";

/// Names sd-scripts' networks.lora does not read (so ignores), with what to use instead.
const IGNORED: &[(&str, &str)] = &[
    ("verbose", "it only makes sd-scripts print the network"),
    (
        "dropout",
        "sd-scripts' networks.lora does not read it (LyCORIS does); network_dropout is \
         kohya's dropout of the adapters",
    ),
];

/// LyCORIS's switches accepted at their default (`false`, or `true` where given), refused
/// otherwise with the reason.
const LYCORIS_SWITCHES: &[(&str, bool, &str)] = &[
    (
        "wd_on_output",
        true,
        "DoRA on the input axis is not supported (lorafuse decomposes by output row, \
         LyCORIS's default); remove it",
    ),
    ("use_tucker", false, TUCKER),
    ("use_cp", false, TUCKER),
    ("use_conv_cp", false, TUCKER),
    ("disable_conv_cp", true, TUCKER),
    ("use_scalar", false, LYCORIS_ONLY),
    ("train_norm", false, LYCORIS_ONLY),
    ("rescaled", false, LYCORIS_ONLY),
    ("bypass_mode", false, LYCORIS_ONLY),
    ("rs_lora", false, LYCORIS_ONLY),
    ("full_matrix", false, LYCORIS_ONLY),
    ("unbalanced_factorization", false, LYCORIS_ONLY),
];
const TUCKER: &str = "the Tucker (CP) decomposition of conv adapters is not supported; \
    lorafuse's LoCon and LoHa use LyCORIS's plain layout; remove it";
const LYCORIS_ONLY: &str = "this LyCORIS option is not supported by lorafuse; remove it";

/// LyCORIS's `algo` -> the `algo` key's value, or why it is refused.
fn lycoris_algo(algo: &str) -> Result<&'static str, String> {
    match algo.to_ascii_lowercase().as_str() {
        "lora" | "locon" => Ok("lora"),
        "loha" => Ok("loha"),
        other => Err(format!(
            "algo={other}: LyCORIS's {other} is not supported; lorafuse trains algo=lora \
             (locon) and algo=loha"
        )),
    }
}

/// Whether a network_args value reads as true (LyCORIS's `str_bool`: "true", any case).
fn truthy(v: &str) -> bool {
    v.eq_ignore_ascii_case("true") || v == "1"
}

/// The items of `network_args`: a list of texts (or one text), each `name=value`.
fn items(value: &Value) -> Result<Vec<String>, String> {
    let texts = match value {
        Value::Null => return Ok(vec![]),
        Value::String(s) => vec![s.clone()],
        Value::Sequence(list) => list
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.clone()),
                other => Err(format!("{} is not a \"name=value\" text", render(other))),
            })
            .collect::<Result<_, _>>()?,
        _ => return Err("must be a list of \"name=value\" texts".into()),
    };
    Ok(texts.into_iter().filter(|t| !t.trim().is_empty()).collect())
}

/// A value as written after `=`, without quotes.
fn unquote(v: &str) -> &str {
    let v = v.trim();
    v.strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
        .unwrap_or(v)
}

impl Meanings<'_> {
    /// Reads `network_args` (see the module text) into the entries.
    pub(crate) fn map_network_args(&mut self, args: Option<&Entry>, module: Option<&Entry>) {
        let lycoris = module
            .and_then(|m| m.value.as_str())
            .is_some_and(|m| m.trim() == "lycoris.kohya");
        if lycoris {
            self.lycoris_defaults(args, module);
        }
        let Some(e) = args else { return };
        let bad = |problem: String| ConfigError::BadValue {
            origin: e.origin.clone(),
            key: "network_args".into(),
            value: render(&e.value),
            problem,
        };
        let list = match items(&e.value) {
            Ok(l) => l,
            Err(problem) => return self.errors.push(bad(problem)),
        };
        let mut given: Vec<&str> = Vec::new();
        for item in list {
            let Some((name, value)) = item.split_once('=') else {
                self.errors.push(bad(format!(
                    "\"{item}\" is not name=value (e.g. \"conv_dim=8\")"
                )));
                continue;
            };
            let (name, value) = (name.trim(), unquote(value));
            if lycoris {
                match self.lycoris_arg(name, value, e) {
                    Ok(true) => continue,
                    Ok(false) => {}
                    Err(problem) => {
                        self.errors.push(bad(problem));
                        continue;
                    }
                }
            } else if name == "algo" || name == "dora_wd" {
                self.errors.push(bad(format!(
                    "{name} is LyCORIS's: write network_module = \"lycoris.kohya\" (or the key \
                     {name}: {value})"
                )));
                continue;
            }
            if KEYS.contains(&name) {
                if self.written(name) {
                    self.errors.push(bad(format!(
                        "{name} is given twice, in network_args and as the key {name}; keep one"
                    )));
                    continue;
                }
                // The key's own reader types and checks the text, naming the key.
                let v = yaml_serde::from_str(value).unwrap_or(Value::String(value.into()));
                self.set(name, v, &e.origin, false);
                given.extend(KEYS.iter().find(|k| **k == name));
            } else if let Some((_, why)) = REFUSED.iter().find(|(n, _)| *n == name) {
                self.errors.push(bad(format!("{name}: {why}")));
            } else if let Some((_, why)) = IGNORED.iter().find(|(n, _)| *n == name) {
                self.notices
                    .push(format!("network_args {name}={value} is ignored: {why}"));
            } else {
                let known: Vec<&str> = KEYS
                    .iter()
                    .chain(REFUSED.iter().map(|(n, _)| n))
                    .chain(IGNORED.iter().map(|(n, _)| n))
                    .copied()
                    .collect();
                self.errors.push(bad(format!(
                    "{name} is not an argument of kohya's networks.lora (those are: {})",
                    known.join(", ")
                )));
            }
        }
        if !lycoris
            && given.contains(&"conv_dim")
            && !given.contains(&"conv_alpha")
            && !self.written("conv_alpha")
        {
            // sd-scripts' default conv_alpha under network_args.
            self.set("conv_alpha", Value::Number(1u64.into()), &e.origin, true);
        }
    }
}

impl Meanings<'_> {
    /// One LyCORIS-only name of network_args: Ok(true) when handled, Ok(false) for the names
    /// networks.lora shares (handled as there), Err with the reason when refused.
    fn lycoris_arg(&mut self, name: &str, value: &str, e: &Entry) -> Result<bool, String> {
        if name == "algo" {
            let algo = lycoris_algo(value)?;
            self.set("algo", Value::String(algo.into()), &e.origin, false);
            return Ok(true);
        }
        if name == "dora_wd" {
            self.set("dora_wd", Value::Bool(truthy(value)), &e.origin, false);
            return Ok(true);
        }
        if let Some((_, default, why)) = LYCORIS_SWITCHES.iter().find(|(n, _, _)| *n == name) {
            return if truthy(value) == *default {
                Ok(true)
            } else {
                Err(format!("{name}={value}: {why}"))
            };
        }
        match name {
            "preset" if value == "full" => Ok(true),
            "preset" => Err(format!(
                "preset={value}: lorafuse adapts sd-scripts' layers (lora_targets; the ResNet \
                 convs with conv_dim); remove it"
            )),
            "dropout" => Err(format!(
                "dropout={value}: LyCORIS's dropout is not supported (it ignores it for LoHa); \
                 network_dropout is kohya's dropout of a LoRA's hidden"
            )),
            _ => Ok(false),
        }
    }

    /// LyCORIS's defaults that differ from networks.lora's: convs adapted at network_dim /
    /// network_alpha unless conv_dim / conv_alpha are given, and its default preset `full`,
    /// which adapts more layers than lorafuse (a notice).
    fn lycoris_defaults(&mut self, args: Option<&Entry>, module: Option<&Entry>) {
        let given = |n: &str| {
            args.and_then(|a| items(&a.value).ok()).is_some_and(|l| {
                l.iter()
                    .any(|t| t.split('=').next().map(str::trim) == Some(n))
            })
        };
        let Some(origin) = module.map(|m| m.origin.clone()) else {
            return;
        };
        for (conv, linear) in [("conv_dim", "lora_rank"), ("conv_alpha", "lora_alpha")] {
            if given(conv) || self.written(conv) {
                continue;
            }
            match self.entries.get(linear).map(|e| e.value.clone()) {
                Some(v) => self.set(conv, v, &origin, true),
                None => self.notices.push(format!(
                    "lycoris.kohya adapts the 3x3 convs at network_dim by default: set \
                     {conv} (now unset: no conv adapters)"
                )),
            }
        }
        self.notices.push(
            "lycoris.kohya's preset `full` also adapts conv_in, conv_out and the time \
             embedding; lorafuse adapts sd-scripts' layers (lora_targets, and the ResNets' and \
             samplers' convs with conv_dim)"
                .into(),
        );
    }
}
