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
    pub(crate) fn map_network_args(&mut self, args: Option<&Entry>) {
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
        if given.contains(&"conv_dim")
            && !given.contains(&"conv_alpha")
            && !self.written("conv_alpha")
        {
            // sd-scripts' default conv_alpha under network_args.
            self.set("conv_alpha", Value::Number(1u64.into()), &e.origin, true);
        }
    }
}
