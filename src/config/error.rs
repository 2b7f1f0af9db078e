//! What can be wrong with a configuration. Every message starts with where the value came
//! from (the file, or the `--set` argument), then names the key and the value, then says what
//! is allowed or what to do. Several problems found in one pass come back together, so one
//! run shows all of them.

use std::fmt;
use std::path::PathBuf;

/// Where a key's value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The YAML file (also used for keys that file left at their default).
    File(PathBuf),
    /// A `--set key=value` argument, as the user wrote it.
    Override(String),
    /// No file: a configuration made from `--set` arguments or in code.
    Defaults,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File(p) => write!(f, "{}", p.display()),
            Origin::Override(arg) => write!(f, "--set {arg}"),
            Origin::Defaults => f.write_str("configuration"),
        }
    }
}

/// What an unknown key probably meant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyHint {
    /// A lorafuse key a few typing mistakes away.
    DidYouMean(&'static str),
    /// Another trainer's name for a lorafuse key (kohya's `network_dim` is `lora_rank`).
    Renamed {
        ours: &'static str,
        /// Anything that differs besides the name (a default, a unit), or "".
        note: &'static str,
    },
    /// A kohya (or diffusers) option lorafuse does not have, and why or what to do instead.
    NotInLorafuse(&'static str),
    /// Nothing close.
    None,
}

impl fmt::Display for KeyHint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyHint::DidYouMean(k) => write!(f, ": did you mean `{k}`?"),
            KeyHint::Renamed { ours, note } => write!(f, ": lorafuse calls this `{ours}`{note}"),
            KeyHint::NotInLorafuse(why) => write!(f, ": {why}"),
            KeyHint::None => f.write_str(" (README.md lists every key)"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file cannot be read.
    #[error("cannot read the config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The text is not YAML, or not a mapping of `key: value` lines.
    #[error("{origin}{}: {message}", position(*line, *column))]
    Syntax {
        origin: Origin,
        /// 1-based, where the parser stopped.
        line: Option<usize>,
        column: Option<usize>,
        message: String,
    },
    /// A key lorafuse does not have.
    #[error("{origin}: unknown key `{key}`{hint}")]
    UnknownKey {
        origin: Origin,
        key: String,
        hint: KeyHint,
    },
    /// A value of the wrong type, out of its range, in conflict with another key, or a path
    /// that is not what it must be. `problem` reads on from the value: "is out of range: ...".
    #[error("{origin}: {key} = {value} {problem}")]
    BadValue {
        origin: Origin,
        key: String,
        /// The value as written (strings quoted), with " (default)" when it was not written.
        value: String,
        problem: String,
    },
    /// A key without a default is absent (or empty).
    #[error("{origin}: missing required key `{key}`: {meaning}")]
    Missing {
        origin: Origin,
        key: &'static str,
        meaning: &'static str,
    },
    /// A `--set` argument that is not `key=value`.
    #[error("--set {arg}: {problem}")]
    BadOverride { arg: String, problem: String },
    /// The effective configuration cannot be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    /// More than one of the above, one per line.
    #[error("{}", join_lines(.0))]
    Several(Vec<ConfigError>),
}

impl ConfigError {
    /// One error for a non-empty list: the error itself when there is one.
    pub(crate) fn from_list(mut errors: Vec<ConfigError>) -> Option<ConfigError> {
        match errors.len() {
            0 => None,
            1 => errors.pop(),
            _ => Some(ConfigError::Several(errors)),
        }
    }

    /// Every single problem, owned, in the order found (`Several` flattened).
    pub(crate) fn into_problems(self) -> Vec<ConfigError> {
        match self {
            ConfigError::Several(list) => list
                .into_iter()
                .flat_map(ConfigError::into_problems)
                .collect(),
            e => vec![e],
        }
    }

    /// Every single problem, in the order found (`Several` flattened).
    pub fn problems(&self) -> Vec<&ConfigError> {
        match self {
            ConfigError::Several(list) => list.iter().flat_map(ConfigError::problems).collect(),
            e => vec![e],
        }
    }
}

fn position(line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!(":{l}:{c}"),
        (Some(l), None) => format!(":{l}"),
        _ => String::new(),
    }
}

fn join_lines(list: &[ConfigError]) -> String {
    list.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}
