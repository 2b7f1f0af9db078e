//! A single-file SD1.x or SD2.x checkpoint (`v1-5-pruned-emaonly.safetensors`,
//! `v2-1_768-ema-pruned.safetensors` and the fine-tunes in the same layouts): LDM key names,
//! all three components in one file (SD2.x's text encoder in OpenCLIP's layout). The keys are renamed to
//! diffusers' (`ldm.rs`), split by component, and the configurations inferred from the shapes
//! (`infer.rs`).

use std::path::Path;
use std::sync::Arc;

use super::detect::{self, Family};
use super::error::CheckpointError;
use super::ldm::{self, LdmLayout};
use super::safetensors::SafetensorsFile;
use super::weights::Weights;
use super::{infer, Generation, Sd15Checkpoint};

pub fn load(path: &Path, hints: &infer::ConfigHints) -> Result<Sd15Checkpoint, CheckpointError> {
    let file = Arc::new(SafetensorsFile::open(path)?);
    let generation = match detect::family(&file) {
        Family::Sd1 => Generation::Sd1,
        Family::Sd2 { .. } => Generation::Sd2,
        Family::Sdxl { evidence } => {
            return Err(CheckpointError::UnsupportedModel {
                path: path.to_path_buf(),
                family: "SDXL",
                evidence,
                takes: super::error::SD12_ONLY,
            })
        }
        Family::Unsupported { family, evidence } => {
            return Err(CheckpointError::UnsupportedModel {
                path: path.to_path_buf(),
                family,
                evidence,
                takes: super::error::TRAINS,
            })
        }
        Family::Other { detail } => {
            return Err(CheckpointError::NotAModel {
                path: path.to_path_buf(),
                detail,
            })
        }
    };

    let layout = LdmLayout::infer(file.names());
    let open_clip_blocks = ldm::open_clip_blocks(file.names());
    let mut names: Vec<&str> = file.names().collect();
    names.sort_unstable();
    let (mut unet, mut vae, mut text_encoder) = (Weights::new(), Weights::new(), Weights::new());
    let mut ignored = Vec::new();
    for stored in names {
        if let Some(rest) = stored.strip_prefix(detect::OPEN_CLIP_PREFIX) {
            match ldm::open_clip(rest, open_clip_blocks) {
                Some(name) => name.insert_into(&mut text_encoder, &file, stored),
                None => ignored.push(stored.to_string()),
            }
            continue;
        }
        let (Some(name), Some(info)) = (
            ldm::ldm_to_diffusers(stored, &layout),
            file.tensor_info(stored),
        ) else {
            ignored.push(stored.to_string());
            continue;
        };
        let shape = ldm::logical_shape(&name, &info.shape);
        let target = if name.starts_with("unet.") {
            &mut unet
        } else if name.starts_with("vae.") {
            &mut vae
        } else {
            &mut text_encoder
        };
        target.insert(name, &file, stored, shape);
    }

    let missing = |component, prefix: &str| CheckpointError::MissingComponent {
        path: path.to_path_buf(),
        component,
        expected: format!(
            "`{prefix}*` tensors: lorafuse needs the UNet, the VAE and the text encoder in one \
             file (or a diffusers folder with all three)"
        ),
    };
    if vae.is_empty() {
        return Err(missing("VAE", detect::VAE_PREFIX));
    }
    if text_encoder.is_empty() {
        let prefix = match generation {
            Generation::Sd1 => detect::TEXT_ENCODER_PREFIX,
            Generation::Sd2 | Generation::Sdxl => detect::OPEN_CLIP_PREFIX,
        };
        return Err(missing("text encoder", prefix));
    }
    let unet_config = infer::unet(path, &unet, generation, hints)?;
    let vae_config = infer::vae(path, &vae, hints)?;
    let clip_config = infer::clip(path, &text_encoder, generation)?;
    if unet_config.cross_attention_dim != clip_config.hidden_size {
        return Err(CheckpointError::Infer {
            path: path.to_path_buf(),
            component: "UNet",
            detail: format!(
                "its cross-attention reads {}-wide text embeddings but the text encoder's \
                 hidden size is {}",
                unet_config.cross_attention_dim, clip_config.hidden_size
            ),
        });
    }
    Ok(Sd15Checkpoint {
        unet: (unet_config, unet),
        vae: (vae_config, vae),
        text_encoder: (clip_config, text_encoder),
        source: path.to_path_buf(),
        ignored,
        generation,
        prediction: None,
    })
}
