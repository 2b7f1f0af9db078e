//! What stops `caption` before it captions anything: the tagger's files (a missing folder of
//! pictures is `prepare`'s error, as the two list folders alike). A picture that cannot be
//! read does not stop it; it is reported and skipped.

use std::path::PathBuf;

use crate::error::{Error, ErrorKind, LayerError};

#[derive(Debug, thiserror::Error)]
pub enum CaptionError {
    #[error(
        "{}: {problem}; --tagger expects the folder of a WD14 v3 ViT tagger as its hub page \
         has it (model.safetensors, config.json, selected_tags.csv), e.g. \
         SmilingWolf/wd-vit-tagger-v3",
        path.display()
    )]
    Tagger { path: PathBuf, problem: String },
}

/// The user's to fix: a file or an option.
impl From<CaptionError> for Error {
    fn from(e: CaptionError) -> Error {
        Error::Layer(LayerError::new(ErrorKind::BadInput, e))
    }
}
