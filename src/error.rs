//! The library's error type. Every variant carries what a person needs to fix the call:
//! the op, the argument names and, for shape errors, both shapes.
//!
//! This is the root of the crate (tensor.rs and every op use it), so it names nothing above
//! it. The modules above keep their own error types (`model::checkpoint::CheckpointError`,
//! `data::DataError`, `sample::SampleError`) and convert them into [`Error::Layer`] in their
//! own error.rs, each saying its [`ErrorKind`]; `?` converts as before, and
//! [`Error::downcast_ref`] gets the typed error back. [`Error::kind`] tells bad input (the
//! user's to fix: exit code 2) from a failure (exit code 1).

use std::path::PathBuf;

use crate::tensor::{DType, Shape};

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Two arguments whose shapes must agree do not.
    #[error("{op}: {lhs_name} has shape {lhs} but {rhs_name} has shape {rhs}: {rule}")]
    ShapeMismatch {
        op: &'static str,
        lhs_name: &'static str,
        lhs: Shape,
        rhs_name: &'static str,
        rhs: Shape,
        /// The rule that was broken, in words ("x's last dimension must equal w's second").
        rule: String,
    },
    /// One argument has the wrong number of dimensions or an impossible size.
    #[error("{op}: {name} has shape {shape}, expected {expected}")]
    BadShape {
        op: &'static str,
        name: &'static str,
        shape: Shape,
        expected: String,
    },
    /// An argument has a dtype this op or backend cannot take.
    #[error("{op}: {name} has dtype {got}, expected {expected}")]
    DType {
        op: &'static str,
        name: &'static str,
        got: DType,
        expected: String,
    },
    /// A scalar argument is out of its range.
    #[error("{op}: {name} = {value} is invalid: {expected}")]
    BadValue {
        op: &'static str,
        name: &'static str,
        value: String,
        expected: String,
    },
    /// A buffer's length does not match the shape it was given.
    #[error("tensor data has {len} elements but shape {shape} holds {expected}")]
    DataLength {
        len: usize,
        shape: Shape,
        expected: usize,
    },
    /// The tensor lives on another device than this backend's.
    #[error("{op}: {name} lives on {got}, but this backend is {backend}")]
    Device {
        op: &'static str,
        name: &'static str,
        got: String,
        backend: &'static str,
    },
    /// A tokenizer vocabulary is malformed (the compiled-in one is checked by the tests).
    #[error("tokenizer vocabulary {file}, line {line}: {problem}")]
    Vocabulary {
        file: String,
        line: usize,
        problem: String,
    },
    /// The GPU path is unavailable (no driver, no device, kernels not built, driver too old).
    #[error("CUDA is unavailable: {0}")]
    CudaUnavailable(String),
    /// A CUDA driver call or kernel launch failed.
    #[error("CUDA error in {what}: {detail}")]
    Cuda { what: String, detail: String },
    /// The device ran out of memory: what was asked, what was free, what to lower.
    #[error("{0}")]
    OutOfMemory(String),
    /// Writing an output (a LoRA, a merged checkpoint, an event file, a plot) failed at one
    /// step; the file is named, and an existing file of that name is left as it was.
    #[error("{}: cannot {action}: {source}", .path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        source: std::io::Error,
    },
    /// A LoRA file, or a LoRA and the checkpoint it is merged into, that do not fit: `detail`
    /// says what is wrong and what to do.
    #[error("{}: {detail}", .path.display())]
    Lora { path: PathBuf, detail: String },
    /// An error of a module above this one (a model file that cannot be loaded, an unusable
    /// training image, a sampling setting), as that module's own type.
    #[error(transparent)]
    Layer(LayerError),
}

/// Who has to act on an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The input is wrong (a file, a folder, a setting, a value, more memory than the device
    /// has): the message says what to change. The CLI exits with 2.
    BadInput,
    /// The input was fine but something failed (a CUDA call, a disk that is full, a contract
    /// between lorafuse's own modules). The CLI exits with 1.
    Failure,
}

impl ErrorKind {
    /// The kind of an I/O error: a path that does not exist, is not allowed, is of the wrong
    /// type or holds bad data is bad input; anything else (a full disk, a device error) is a
    /// failure.
    pub fn of_io(e: &std::io::Error) -> ErrorKind {
        use std::io::ErrorKind as K;
        match e.kind() {
            K::NotFound
            | K::PermissionDenied
            | K::AlreadyExists
            | K::NotADirectory
            | K::IsADirectory
            | K::ReadOnlyFilesystem
            | K::InvalidInput
            | K::InvalidData
            | K::UnexpectedEof => ErrorKind::BadInput,
            _ => ErrorKind::Failure,
        }
    }
}

/// The error of an upper module carried by [`Error::Layer`]: the error itself (its message
/// is shown as is) and its kind, which the module states when it converts the error.
#[derive(Debug)]
pub struct LayerError {
    kind: ErrorKind,
    error: Box<dyn std::error::Error + Send + Sync>,
}

impl LayerError {
    /// Wraps `error` of kind `kind`; used by the `From` conversions of the upper modules.
    pub fn new(kind: ErrorKind, error: impl std::error::Error + Send + Sync + 'static) -> Self {
        LayerError {
            kind,
            error: Box::new(error),
        }
    }
}

impl std::fmt::Display for LayerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl std::error::Error for LayerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.error.source()
    }
}

impl Error {
    /// Bad input or a failure (see [`ErrorKind`]).
    pub fn kind(&self) -> ErrorKind {
        match self {
            // Shapes, dtypes and values of op arguments come from the user's files and
            // settings (an image size, a LoRA made for another model, a token id past the
            // vocabulary): the message names the argument and the rule.
            Error::ShapeMismatch { .. }
            | Error::BadShape { .. }
            | Error::DType { .. }
            | Error::BadValue { .. }
            | Error::Vocabulary { .. }
            | Error::CudaUnavailable(_)
            | Error::OutOfMemory(_)
            | Error::Lora { .. } => ErrorKind::BadInput,
            Error::Io { source, .. } => ErrorKind::of_io(source),
            Error::Layer(l) => l.kind,
            // A buffer that does not fill its shape, or a tensor on another device than its
            // backend, is lorafuse's own mistake; a CUDA call that fails, the driver's.
            Error::DataLength { .. } | Error::Device { .. } | Error::Cuda { .. } => {
                ErrorKind::Failure
            }
        }
    }

    /// The upper module's error of type `T` this error carries, if it is one (e.g.
    /// `e.downcast_ref::<CheckpointError>()`).
    pub fn downcast_ref<T: std::error::Error + 'static>(&self) -> Option<&T> {
        match self {
            Error::Layer(l) => l.error.downcast_ref::<T>(),
            _ => None,
        }
    }

    /// An [`Error::Io`] for `path`.
    pub(crate) fn io(
        path: &std::path::Path,
        action: &'static str,
        source: std::io::Error,
    ) -> Error {
        Error::Io {
            path: path.to_path_buf(),
            action,
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_are_bad_input_when_the_path_is_at_fault() {
        use std::io::ErrorKind as K;
        for k in [
            K::NotFound,
            K::PermissionDenied,
            K::IsADirectory,
            K::InvalidData,
        ] {
            assert_eq!(ErrorKind::of_io(&k.into()), ErrorKind::BadInput, "{k:?}");
        }
        for k in [K::StorageFull, K::Other, K::Interrupted] {
            assert_eq!(ErrorKind::of_io(&k.into()), ErrorKind::Failure, "{k:?}");
        }
    }

    #[test]
    fn a_layer_error_shows_as_itself_and_downcasts_to_its_type() {
        let inner = std::io::Error::other("the upper module's message");
        let e = Error::Layer(LayerError::new(ErrorKind::Failure, inner));
        assert_eq!(e.to_string(), "the upper module's message");
        assert_eq!(e.kind(), ErrorKind::Failure);
        assert!(e.downcast_ref::<std::io::Error>().is_some());
        assert!(e.downcast_ref::<std::fmt::Error>().is_none());
        let op = Error::BadValue {
            op: "op",
            name: "x",
            value: "0".into(),
            expected: "positive".into(),
        };
        assert!(op.downcast_ref::<std::io::Error>().is_none());
        assert_eq!(op.kind(), ErrorKind::BadInput);
    }
}
