//! The library's error type. Every variant carries what a person needs to fix the call:
//! the op, the argument names and, for shape errors, both shapes.

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
    /// A model file or folder cannot be loaded (see `model::checkpoint::CheckpointError`).
    #[error(transparent)]
    Checkpoint(#[from] crate::model::checkpoint::CheckpointError),
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
    /// A training image, caption or data option is unusable (see `data::DataError`).
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
}

impl Error {
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
