//! Loading Stable Diffusion 1.x and 2.x weights: [`load_sd15`] takes a single-file checkpoint
//! (LDM key names, `.safetensors`) or a diffusers folder, and returns each component's
//! configuration and its [`Weights`] under diffusers-style names (`unet.…`, `vae.…`,
//! `text_encoder.…`), so that the model code sees one layout whatever the file's.
//!
//! - `safetensors.rs`: one memory-mapped file; tensors are copied out (and converted from
//!   F32/F16/BF16) only when asked for.
//! - `weights.rs`: the [`Weights`] store and its errors (missing key, wrong shape).
//! - `detect.rs`: pickle files refused; SD1.x told apart from SD2.x, SDXL and LoRAs.
//! - `ldm.rs`: LDM → diffusers key names (sd15-formats.md §2.8), OpenCLIP → CLIPTextModel.
//! - `infer.rs`: configurations of a single-file checkpoint from its shapes.
//! - `single_file.rs`, `diffusers.rs`: the two layouts.
//! - `sdxl_unet.rs`: SDXL's UNet from an SGM single file or a diffusers `unet/` folder.
//! - `sdxl_text.rs`: SDXL's two text encoders from either layout.
//! - `sdxl.rs`: a whole SDXL model ([`sdxl::load_sdxl`]), the parts above and the VAE.
//! - `error.rs`: [`CheckpointError`], every case naming the file and what to do.
//!
//! lorafuse never unpickles: `.ckpt`/`.pt`/`.bin` files are refused with the command that
//! converts them.

mod detect;
mod diffusers;
pub mod error;
mod infer;
pub mod ldm;
pub mod safetensors;
pub mod sdxl;
pub mod sdxl_text;
pub mod sdxl_unet;
mod single_file;
mod weights;

use std::path::{Path, PathBuf};

use crate::model::config::{ClipTextConfig, UnetConfig, VaeConfig};

pub use detect::{refuse_pickle, Family, OPEN_CLIP_PREFIX, UNET_PREFIX};
pub use error::CheckpointError;
pub use infer::{clip_text_at, clip_vision, ConfigHints};
pub use ldm::{ldm_to_diffusers, LdmLayout};

use crate::model::family::Prediction;

/// Which Stable Diffusion generation a checkpoint holds (SDXL is refused before loading).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Generation {
    /// CLIP ViT-L/14 text encoder, 1x1-conv proj_in/proj_out, 768-wide cross-attention.
    Sd1,
    /// OpenCLIP ViT-H/14 text encoder (GELU, the penultimate layer), Linear
    /// proj_in/proj_out, heads of width 64, 1024-wide cross-attention.
    Sd2,
    /// Two text encoders (CLIP ViT-L/14 and OpenCLIP ViT-bigG/14), the text-time added
    /// embedding, 2048-wide cross-attention (`sdxl.rs`; not loaded by [`load_sd15`]).
    Sdxl,
}
pub use weights::Weights;

/// The three components of an SD1.x or SD2.x model, each with its configuration and weights.
#[derive(Clone, Debug)]
pub struct Sd15Checkpoint {
    pub unet: (UnetConfig, Weights),
    pub vae: (VaeConfig, Weights),
    pub text_encoder: (ClipTextConfig, Weights),
    /// The file or folder it was loaded from.
    pub source: PathBuf,
    /// Stored names that were not mapped (scheduler buffers, EMA copies, `position_ids`),
    /// sorted; for `inspect`-style reports. From a diffusers folder each is prefixed with its
    /// file ("…/text_encoder/model.safetensors: text_model.embeddings.position_ids").
    pub ignored: Vec<String>,
    pub generation: Generation,
    /// What the denoiser predicts, where the checkpoint says it (a diffusers folder's
    /// `scheduler/scheduler_config.json`, `prediction_type`); a single file does not.
    pub prediction: Option<Prediction>,
}

/// Loads an SD1.x or SD2.x model from a `.safetensors` file (LDM names, as A1111 and civitai
/// ship them) or a diffusers folder (with `model_index.json`).
pub fn load_sd15(path: impl AsRef<Path>) -> crate::Result<Sd15Checkpoint> {
    load_sd15_with(path, &ConfigHints::default())
}

/// [`load_sd15`] with hints for what a single file's shapes cannot tell (a diffusers folder's
/// config.json says everything, so there they are not used).
pub fn load_sd15_with(
    path: impl AsRef<Path>,
    hints: &ConfigHints,
) -> crate::Result<Sd15Checkpoint> {
    let path = path.as_ref();
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => CheckpointError::NotFound {
            path: path.to_path_buf(),
        },
        _ => CheckpointError::Io {
            path: path.to_path_buf(),
            action: "read its metadata",
            source: e,
        },
    })?;
    let checkpoint = if meta.is_dir() {
        diffusers::load(path)?
    } else {
        single_file::load(path, hints)?
    };
    Ok(checkpoint)
}

/// Classifies a single `.safetensors` file without loading it (for `inspect`).
pub fn detect_family(path: impl AsRef<Path>) -> crate::Result<Family> {
    let file = safetensors::SafetensorsFile::open(path.as_ref())?;
    Ok(detect::family(&file))
}
