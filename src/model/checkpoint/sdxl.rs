//! A whole SDXL (base) model from either layout, each part under diffusers' names with its
//! configuration:
//! - an SGM single file (`sd_xl_base_1.0.safetensors` and the fine-tunes civitai ships):
//!   the UNet `model.diffusion_model.*` (`sdxl_unet.rs`), the VAE `first_stage_model.*` (SD1.x's
//!   LDM names, `ldm.rs`), the two text encoders `conditioner.embedders.{0,1}.*`
//!   (`sdxl_text.rs`);
//! - a diffusers folder (`model_index.json` naming `text_encoder_2`): `unet/`, `vae/`,
//!   `text_encoder/`, `text_encoder_2/`, and the scheduler's `prediction_type` where it says.
//!
//! A single file does not store the VAE's latent scale: SDXL's is 0.13025 (SD1.x's 0.18215 would
//! train on latents of the wrong variance), so it is set here; a folder's vae/config.json says it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::detect::{self, Family, VAE_PREFIX};
use super::diffusers::{component_dir, component_weights, legacy_vae_name, read_json};
use super::error::{CheckpointError, TRAINS};
use super::infer::{self, ConfigHints};
use super::ldm::{self, LdmLayout};
use super::safetensors::SafetensorsFile;
use super::weights::Weights;
use super::{sdxl_text, sdxl_unet};
use crate::model::config::{ClipTextConfig, UnetConfig, VaeConfig};
use crate::model::family::Prediction;

/// The four parts of an SDXL model, each with its configuration and weights.
#[derive(Clone, Debug)]
pub struct SdxlCheckpoint {
    pub unet: (UnetConfig, Weights),
    pub vae: (VaeConfig, Weights),
    /// CLIP ViT-L/14 (`text_encoder`, kohya's `te1`).
    pub text_encoder: (ClipTextConfig, Weights),
    /// OpenCLIP ViT-bigG/14 with its projection (`text_encoder_2`, kohya's `te2`).
    pub text_encoder_2: (ClipTextConfig, Weights),
    /// The file or folder it was loaded from.
    pub source: PathBuf,
    /// Stored names that were not mapped, sorted.
    pub ignored: Vec<String>,
    /// What the denoiser predicts, where a diffusers folder's scheduler config says it.
    pub prediction: Option<Prediction>,
}

/// Loads an SDXL base model from a single `.safetensors` file or a diffusers folder.
pub fn load_sdxl(path: impl AsRef<Path>) -> crate::Result<SdxlCheckpoint> {
    load_sdxl_with(path, &ConfigHints::default())
}

/// [`load_sdxl`] with hints for what a single file's shapes cannot tell (SDXL's own values when
/// None; a diffusers folder's configs say everything).
pub fn load_sdxl_with(
    path: impl AsRef<Path>,
    hints: &ConfigHints,
) -> crate::Result<SdxlCheckpoint> {
    let path = path.as_ref();
    if path.is_dir() {
        return Ok(from_folder(path)?);
    }
    if !path.exists() {
        return Err(CheckpointError::NotFound {
            path: path.to_path_buf(),
        }
        .into());
    }
    Ok(from_single_file(path, hints)?)
}

fn from_single_file(path: &Path, hints: &ConfigHints) -> Result<SdxlCheckpoint, CheckpointError> {
    let file = Arc::new(SafetensorsFile::open(path)?);
    match detect::family(&file) {
        Family::Sdxl { .. } => {}
        Family::Unsupported { family, evidence } => {
            return Err(CheckpointError::UnsupportedModel {
                path: path.to_path_buf(),
                family,
                evidence,
                takes: TRAINS,
            })
        }
        Family::Sd1 | Family::Sd2 { .. } => {
            return Err(CheckpointError::NotAModel {
                path: path.to_path_buf(),
                detail: "it is an SD1.x/SD2.x checkpoint, not SDXL".into(),
            })
        }
        Family::Other { detail } => {
            return Err(CheckpointError::NotAModel {
                path: path.to_path_buf(),
                detail,
            })
        }
    }
    let (unet_config, unet, mut ignored) = sdxl_unet::from_single_file(path, &file, hints)?;
    let (te1, te2, text_ignored) = sdxl_text::from_single_file(path, &file)?;
    ignored.extend(text_ignored);

    let layout = LdmLayout::infer(file.names());
    let mut vae = Weights::new();
    let mut names: Vec<&str> = file.names().filter(|n| n.starts_with(VAE_PREFIX)).collect();
    names.sort_unstable();
    for stored in names {
        match (
            ldm::ldm_to_diffusers(stored, &layout),
            file.tensor_info(stored),
        ) {
            (Some(name), Some(info)) => {
                let shape = ldm::logical_shape(&name, &info.shape);
                vae.insert(name, &file, stored, shape);
            }
            _ => ignored.push(stored.to_string()),
        }
    }
    if vae.is_empty() {
        return Err(CheckpointError::MissingComponent {
            path: path.to_path_buf(),
            component: "VAE",
            expected: format!(
                "`{VAE_PREFIX}*` tensors: lorafuse needs the UNet, the VAE and both text \
                 encoders in one file (or a diffusers folder with all four)"
            ),
        });
    }
    let vae_config = VaeConfig {
        scaling_factor: VaeConfig::sdxl().scaling_factor,
        ..infer::vae(path, &vae, hints)?
    };
    ignored.sort();
    Ok(SdxlCheckpoint {
        unet: (unet_config, unet),
        vae: (vae_config, vae),
        text_encoder: te1,
        text_encoder_2: te2,
        source: path.to_path_buf(),
        ignored,
        prediction: None,
    })
}

fn from_folder(dir: &Path) -> Result<SdxlCheckpoint, CheckpointError> {
    let unet_dir = component_dir(dir, "unet", "unet/ with config.json and weights")?;
    let vae_dir = component_dir(dir, "vae", "vae/ with config.json and weights")?;
    let (unet_config, unet) = sdxl_unet::from_diffusers(&unet_dir)?;
    let (te1, te2, mut ignored) = sdxl_text::from_diffusers(dir)?;
    let vae_config: VaeConfig = read_json(&vae_dir.join("config.json"))?;
    vae_config
        .validate()
        .map_err(|detail| CheckpointError::Config {
            path: vae_dir.join("config.json"),
            detail,
        })?;
    let vae = component_weights(&vae_dir, &mut ignored, |n| {
        Some(format!("vae.{}", legacy_vae_name(n)))
    })?;
    ignored.sort();
    Ok(SdxlCheckpoint {
        unet: (unet_config, unet),
        vae: (vae_config, vae),
        text_encoder: te1,
        text_encoder_2: te2,
        source: dir.to_path_buf(),
        ignored,
        prediction: super::diffusers::scheduler_prediction(dir)?,
    })
}

/// Whether the diffusers folder at `dir` holds SDXL (its model_index.json names a second text
/// encoder or an XL pipeline), refusing the refiner (an XL pipeline with only the second
/// encoder).
pub fn folder_is_sdxl(dir: &Path) -> Result<bool, CheckpointError> {
    let index_path = dir.join("model_index.json");
    if !index_path.is_file() {
        return Ok(false);
    }
    let index: serde_json::Value = read_json(&index_path)?;
    let class = index
        .get("_class_name")
        .and_then(|c| c.as_str())
        .unwrap_or("");
    let listed = |name: &str| {
        index
            .get(name)
            .and_then(|v| v.as_array())
            .is_some_and(|v| v.iter().any(|x| !x.is_null()))
    };
    let (te1, te2) = (listed("text_encoder"), listed("text_encoder_2"));
    if te2 && !te1 {
        return Err(CheckpointError::UnsupportedModel {
            path: dir.to_path_buf(),
            family: "SDXL refiner",
            evidence: format!(
                "model_index.json ({class}) lists text_encoder_2 without text_encoder, as the \
                 refiner has only OpenCLIP ViT-bigG"
            ),
            takes: TRAINS,
        });
    }
    Ok(te2 || class.contains("XL"))
}
