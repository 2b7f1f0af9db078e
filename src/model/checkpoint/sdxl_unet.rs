//! SDXL's UNet from its two layouts, under diffusers' names (`unet.…`) with its configuration:
//! - an SGM single file (stabilityai's `sd_xl_base_1.0.safetensors` and the fine-tunes in its
//!   layout): the UNet's tensors are `model.diffusion_model.*`, named as SD1.x's LDM UNet
//!   (`ldm.rs`: the same index arithmetic, with 3 levels; `label_emb.0.0` / `label_emb.0.2` are
//!   the added embedding, `transformer_blocks.N` keep their names), and the configuration is
//!   read off the shapes (`infer::sdxl_unet`);
//! - a diffusers `unet/` folder: `config.json` and `diffusion_pytorch_model.safetensors` (or
//!   the other weight files `diffusers.rs` accepts).
//!
//! Either way the configuration must be SDXL's (the text-time added embedding); the rest of
//! the file (text encoders, VAE) is the caller's.

use std::path::Path;
use std::sync::Arc;

use crate::model::config::UnetConfig;

use super::detect::UNET_PREFIX;
use super::diffusers::{component_weights, read_json};
use super::error::CheckpointError;
use super::infer::{self, ConfigHints};
use super::ldm::{self, LdmLayout};
use super::safetensors::SafetensorsFile;
use super::weights::Weights;

/// The UNet of an SGM single file: its configuration, its weights under `unet.…`, and the
/// UNet tensors that were not mapped (sorted). Tensors outside `model.diffusion_model.` are
/// not looked at. `hints`: what the shapes cannot tell (SDXL's 32 groups, heads of width 64
/// and 256-wide id sinusoids when None).
pub fn from_single_file(
    path: &Path,
    file: &Arc<SafetensorsFile>,
    hints: &ConfigHints,
) -> Result<(UnetConfig, Weights, Vec<String>), CheckpointError> {
    let layout = LdmLayout::infer(file.names());
    let mut names: Vec<&str> = file
        .names()
        .filter(|n| n.starts_with(UNET_PREFIX))
        .collect();
    names.sort_unstable();
    let mut unet = Weights::new();
    let mut ignored = Vec::new();
    for stored in names {
        match (
            ldm::ldm_to_diffusers(stored, &layout),
            file.tensor_info(stored),
        ) {
            (Some(name), Some(info)) => unet.insert(name, file, stored, info.shape.clone()),
            _ => ignored.push(stored.to_string()),
        }
    }
    if unet.is_empty() {
        return Err(CheckpointError::MissingComponent {
            path: path.to_path_buf(),
            component: "UNet",
            expected: format!("`{UNET_PREFIX}*` tensors (SGM's SDXL UNet)"),
        });
    }
    let config = infer::sdxl_unet(path, &unet, hints)?;
    Ok((config, unet, ignored))
}

/// A diffusers `unet/` folder of an SDXL model: its config.json (which must describe SDXL's
/// UNet) and its weights under `unet.…`.
pub fn from_diffusers(dir: &Path) -> Result<(UnetConfig, Weights), CheckpointError> {
    let config_path = dir.join("config.json");
    let config: UnetConfig = read_json(&config_path)?;
    let invalid = |detail: String| CheckpointError::Config {
        path: config_path.clone(),
        detail,
    };
    match config.added_embedding_widths() {
        Ok(Some(_)) => {}
        Ok(None) => {
            return Err(invalid(
                "not an SDXL UNet: it has no addition_embed_type \"text_time\" (an SD1.x or \
                 SD2.x UNet loads with its whole model folder)"
                    .into(),
            ))
        }
        Err(e) => return Err(invalid(format!("not an SDXL UNet lorafuse can build: {e}"))),
    }
    config
        .validate()
        .map_err(|e| invalid(format!("not an SDXL UNet lorafuse can build: {e}")))?;
    let mut ignored = Vec::new();
    let weights = component_weights(dir, &mut ignored, |n| Some(format!("unet.{n}")))?;
    Ok((config, weights))
}
