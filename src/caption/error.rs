//! What stops `caption` before it captions anything: the tagger's or CLIP model's files and
//! the vocabularies (a missing folder of pictures is `prepare`'s error, as the two list
//! folders alike). A picture that cannot be read does not stop it; it is reported and skipped.

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
    #[error(
        "{}: {problem}; --clip expects a transformers CLIPModel folder (config.json, \
         model.safetensors, preprocessor_config.json) or its model.safetensors, e.g. \
         openai/clip-vit-large-patch14",
        path.display()
    )]
    Clip { path: PathBuf, problem: String },
    #[error(
        "vocabulary {}: {problem}; --vocab expects a UTF-8 text file of phrases, one a line",
        path.display()
    )]
    Vocabulary { path: PathBuf, problem: String },
    #[error(
        "--metadata-csv {}: {problem}; it should be the data folder's metadata.csv \
         (file_name,text)",
        path.display()
    )]
    MetadataCsv { path: PathBuf, problem: String },
}

/// The user's to fix: a file or an option.
impl From<CaptionError> for Error {
    fn from(e: CaptionError) -> Error {
        Error::Layer(LayerError::new(ErrorKind::BadInput, e))
    }
}
