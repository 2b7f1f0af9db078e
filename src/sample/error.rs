//! What can go wrong when reading sample prompts, sampling, or writing images.
//!
//! The sample module sits above the model and the backend, so its error carries theirs
//! ([`SampleError::Model`]); converted into the crate's [`crate::Error`] (here, below), that
//! one comes out as it was, and the sample module's own cases as `Error::Layer`.

use std::path::PathBuf;

use crate::error::{Error, ErrorKind, LayerError};

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

impl SampleError {
    /// A prompt option or sampling setting is bad input; so is an image path that cannot be
    /// read or written for a reason the user controls (see [`ErrorKind::of_io`]).
    pub fn kind(&self) -> ErrorKind {
        match self {
            SampleError::Model(e) => e.kind(),
            SampleError::AtLine { source, .. } => source.kind(),
            SampleError::Io { source, .. } => ErrorKind::of_io(source),
            // A file that does not decode is the user's; an image that does not encode, ours.
            SampleError::Png { action, .. } if *action == "decode" => ErrorKind::BadInput,
            SampleError::Png { .. } => ErrorKind::Failure,
            SampleError::UnknownOption { .. }
            | SampleError::UnsupportedOption { .. }
            | SampleError::MissingValue { .. }
            | SampleError::BadValue { .. }
            | SampleError::BadSetting { .. } => ErrorKind::BadInput,
        }
    }
}

impl From<Error> for SampleError {
    fn from(e: Error) -> Self {
        SampleError::Model(Box::new(e))
    }
}

impl From<SampleError> for Error {
    fn from(e: SampleError) -> Error {
        match e {
            SampleError::Model(inner) => *inner,
            other => Error::Layer(LayerError::new(other.kind(), other)),
        }
    }
}
