//! What can go wrong when loading a model, each case naming the file (and the tensor key, and
//! both shapes, where there is one) and what to do about it. Converted into the crate's
//! [`crate::Error`] here (as `Error::Layer`, bad input unless reading the file failed); get it
//! back with `e.downcast_ref::<CheckpointError>()`.

use std::path::PathBuf;

use crate::error::{Error, ErrorKind, LayerError};
use crate::tensor::Shape;

/// How to turn a single-file pickle checkpoint into safetensors, outside lorafuse.
pub(crate) const CONVERT_SINGLE_FILE: &str = "python -c \"import torch; \
from safetensors.torch import save_file; \
sd = torch.load('IN.ckpt', map_location='cpu', weights_only=True); sd = sd.get('state_dict', sd); \
save_file({k: v.contiguous().clone() for k, v in sd.items() if isinstance(v, torch.Tensor)}, \
'OUT.safetensors')\"\n(or AUTOMATIC1111's Checkpoint Merger with checkpoint format 'safetensors', \
or diffusers' scripts/convert_original_stable_diffusion_to_diffusers.py --to_safetensors), \
then pass the .safetensors file";

/// How to turn a diffusers folder with pickle (.bin) weights into safetensors.
pub(crate) const CONVERT_DIFFUSERS: &str = "python -c \"from diffusers import \
StableDiffusionPipeline as P; P.from_pretrained('IN_DIR', use_safetensors=False)\
.save_pretrained('OUT_DIR', safe_serialization=True)\"\nthen pass OUT_DIR";

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error(
        "{}: no such file or folder; expected an SD1.x or SD2.x checkpoint: a single .safetensors file, \
         or a diffusers folder holding model_index.json, unet/, vae/ and text_encoder/",
        .path.display()
    )]
    NotFound { path: PathBuf },

    #[error("{}: cannot {action}: {source}", .path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        source: std::io::Error,
    },

    #[error(
        "{} is a folder without model_index.json; expected a diffusers Stable Diffusion 1.x \
         folder (model_index.json, unet/, vae/, text_encoder/, each with config.json and \
         .safetensors weights), or pass a single-file .safetensors checkpoint instead",
        .path.display()
    )]
    NotDiffusersFolder { path: PathBuf },

    #[error("{}: no {component} found; expected {expected}", .path.display())]
    MissingComponent {
        path: PathBuf,
        component: &'static str,
        expected: String,
    },

    #[error(
        "{}: this is a PyTorch pickle file ({evidence}). lorafuse refuses pickle files: \
         loading a pickle can run arbitrary code hidden in the file, so lorafuse never \
         unpickles. Convert it to .safetensors once, on a machine with Python, from a source \
         you trust:\n  {how}",
        .path.display()
    )]
    Pickle {
        path: PathBuf,
        evidence: String,
        how: &'static str,
    },

    #[error(
        "{} is truncated: {detail}. The file is incomplete, most likely an interrupted download \
         or copy: download it again and compare its size (or sha256) with the source's",
        .path.display()
    )]
    Truncated { path: PathBuf, detail: String },

    #[error("{} is not a valid safetensors file: {detail}", .path.display())]
    NotSafetensors { path: PathBuf, detail: String },

    #[error("{}: this is an {family} checkpoint ({evidence}); {takes}", .path.display())]
    UnsupportedModel {
        path: PathBuf,
        family: &'static str,
        evidence: String,
        /// What the refusing reader takes instead (one of the constants below).
        takes: &'static str,
    },

    #[error("{} is not an SD1.x, SD2.x or SDXL checkpoint: {detail}", .path.display())]
    NotAModel { path: PathBuf, detail: String },

    #[error(
        "tensor `{key}`{} is missing from {file}: the checkpoint is incomplete or is not the \
         model it claims to be",
        stored_note(.stored)
    )]
    MissingTensor {
        key: String,
        /// The name in the file when it differs from `key` (LDM names), if known.
        stored: Option<String>,
        file: String,
    },

    #[error(
        "tensor `{key}`{} in {file} has shape {got}, expected {expected}: the checkpoint does \
         not match the model configuration",
        stored_note(.stored)
    )]
    WrongShape {
        key: String,
        stored: Option<String>,
        file: String,
        got: Shape,
        expected: Shape,
    },

    #[error(
        "tensor `{key}`{} in {file} has dtype {dtype}; lorafuse reads F32, F16, BF16 and F64 \
         weights",
        stored_note(.stored)
    )]
    UnsupportedDtype {
        key: String,
        stored: Option<String>,
        file: String,
        dtype: String,
    },

    #[error("{}: {detail}", .path.display())]
    Config { path: PathBuf, detail: String },

    #[error(
        "cannot infer the {component} configuration from the tensor shapes in {}: {detail}; \
         a diffusers folder, whose config.json states it, loads instead",
        .path.display()
    )]
    Infer {
        path: PathBuf,
        component: &'static str,
        detail: String,
    },
}

fn stored_note(stored: &Option<String>) -> String {
    match stored {
        Some(s) => format!(" (stored as `{s}`)"),
        None => String::new(),
    }
}

impl CheckpointError {
    /// A file that could not be read is bad input or a failure as its I/O error says; every
    /// other case is a file or folder that is not what lorafuse loads: bad input.
    pub fn kind(&self) -> ErrorKind {
        match self {
            CheckpointError::Io { source, .. } => ErrorKind::of_io(source),
            _ => ErrorKind::BadInput,
        }
    }
}

impl From<CheckpointError> for Error {
    fn from(e: CheckpointError) -> Error {
        Error::Layer(LayerError::new(e.kind(), e))
    }
}

/// What lorafuse trains, for a model of another kind.
pub const TRAINS: &str = "lorafuse trains SD1.x, SD2.x and SDXL base models (Stable Diffusion \
    1.4/1.5, 2.0/2.1, SDXL 1.0 and their fine-tunes)";
/// What the SD1.x/SD2.x reader (`load_sd15`, and the tools built on it) takes.
pub const SD12_ONLY: &str = "this reads SD1.x and SD2.x checkpoints only (training, `sample` and \
    `plan` read SDXL too)";
