//! What can go wrong when reading sample prompts, sampling, or writing images.

use std::path::PathBuf;

/// An error of the sample module: each names the option, setting or file at fault.
#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    /// `--x` that neither kohya nor lorafuse knows (or a bare `--`).
    #[error("prompt line: unknown option --{option}; the options are {known}")]
    UnknownOption { option: String, known: String },
    /// A kohya option that lorafuse does not implement.
    #[error("prompt line: --{option} ({what}) is a kohya option that lorafuse does not support")]
    UnsupportedOption { option: String, what: String },
    /// An option without its value (`--w` at the end of the line).
    #[error("prompt line: --{option} needs a value")]
    MissingValue { option: String },
    /// An option whose value cannot be used.
    #[error("prompt line: --{option} {value:?} is invalid: expected {expected}")]
    BadValue {
        option: String,
        value: String,
        expected: String,
    },
    /// An error in a prompt file, with its 1-based line number.
    #[error("line {line}: {source}")]
    AtLine {
        line: usize,
        source: Box<SampleError>,
    },
    /// A sampling setting (size, steps, schedule, token ids) that the model or the sampler
    /// cannot take.
    #[error("sampling: {name} = {value} is invalid: expected {expected}")]
    BadSetting {
        name: &'static str,
        value: String,
        expected: String,
    },
    /// A model or backend error during sampling (boxed: the crate's error is large).
    #[error(transparent)]
    Model(Box<crate::Error>),
    /// Reading or writing an image file failed.
    #[error("cannot {action} {path}: {source}")]
    Io {
        path: PathBuf,
        action: &'static str,
        source: std::io::Error,
    },
    /// The PNG encoder or decoder refused the image.
    #[error("cannot {action} PNG {path}: {message}")]
    Png {
        path: PathBuf,
        action: &'static str,
        message: String,
    },
}

impl From<crate::Error> for SampleError {
    fn from(e: crate::Error) -> Self {
        SampleError::Model(Box::new(e))
    }
}
