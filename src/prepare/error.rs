//! What stops `prepare` before it touches an image: the folders and the options. Problems with
//! single files (an unreadable image, a duplicate) do not stop it; they are listed in the
//! report.

use std::path::PathBuf;

use crate::error::{Error, ErrorKind, LayerError};

#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error("input folder {} does not exist; give the folder that holds your pictures", path.display())]
    InputMissing { path: PathBuf },

    #[error("input {} is a file, not a folder; give the folder that holds your pictures", path.display())]
    InputNotAFolder { path: PathBuf },

    #[error(
        "output folder {} is {} input folder {}: choose an output folder outside the input, \
         so prepared images are not read back as input",
        output.display(),
        if *output_inside { "inside the" } else { "the same as, or holds, the" },
        input.display()
    )]
    Nested {
        input: PathBuf,
        output: PathBuf,
        output_inside: bool,
    },

    #[error("{}: cannot {action}: {reason}", path.display())]
    Folder {
        path: PathBuf,
        action: &'static str,
        reason: String,
    },

    #[error("--{name} {value}: {expected}")]
    Option {
        name: &'static str,
        value: String,
        expected: String,
    },

    #[error("{}: no images found (looked for .png, .jpg, .jpeg, .webp and .bmp files in it and its subfolders)", path.display())]
    NoImages { path: PathBuf },
}

/// Every problem here is the user's to fix (a folder, an option), a listing failure included.
impl From<PrepareError> for Error {
    fn from(e: PrepareError) -> Error {
        Error::Layer(LayerError::new(ErrorKind::BadInput, e))
    }
}
