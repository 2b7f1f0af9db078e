//! SDXL's two text encoders from a checkpoint, each as its configuration and [`Weights`]
//! under diffusers-style names: te1 below `text_encoder.` (a CLIPTextModel), te2 below
//! `text_encoder_2.` (a CLIPTextModelWithProjection: `text_projection.weight` too), as
//! [`crate::model::sdxl_text::SdxlText::load`] reads them.
//!
//! - SGM single file (`sd_xl_base_1.0.safetensors`): te1 under
//!   `conditioner.embedders.0.transformer.` in transformers' layout (`text_model.…`); te2
//!   under `conditioner.embedders.1.model.` in OpenCLIP's layout, renamed by
//!   [`ldm::open_clip_as`] as for SD2.x (fused `attn.in_proj_*` cut into q/k/v) but with
//!   every residual block kept (the pooled output reads the last) and `text_projection`
//!   [width, projection] read transposed, as diffusers' `convert_open_clip_checkpoint` does
//!   (OpenCLIP computes `x @ P`, transformers' Linear `x @ Wᵀ`). `logit_scale` and
//!   `position_ids` are ignored. Configurations come from the shapes
//!   ([`infer::clip_text_at`]: heads of width 64, as both ViT-L and ViT-bigG have them);
//!   te1's MLP is quick_gelu, te2's gelu.
//! - diffusers folder: `text_encoder/` and `text_encoder_2/`, each with its config.json; te2's
//!   text_projection width is its weight's, checked against config.json's `projection_dim`.
//!
//! sd-scripts' own SGM conversion (`sdxl_model_util.convert_sdxl_text_encoder_2_checkpoint`)
//! copies `text_projection` without transposing it; for SDXL's square 1280x1280 projection
//! that loads, but computes a different pooled output than SGM and diffusers. lorafuse follows
//! SGM and diffusers.

use std::path::Path;
use std::sync::Arc;

use crate::model::config::{ClipTextConfig, HiddenAct};
use crate::model::sdxl_text::{TE1_PREFIX, TE2_PREFIX};

use super::diffusers::{component_dir, component_weights, read_json};
use super::error::CheckpointError;
use super::infer;
use super::ldm::{self, OpenClipTarget};
use super::safetensors::SafetensorsFile;
use super::weights::Weights;

/// Where an SGM file keeps te1 (transformers' layout) and te2 (OpenCLIP's).
pub const TE1_SGM_PREFIX: &str = "conditioner.embedders.0.transformer.";
pub const TE2_SGM_PREFIX: &str = "conditioner.embedders.1.model.";

/// One encoder: its configuration and weights.
pub type Encoder = (ClipTextConfig, Weights);

/// te1, te2, and the stored names under the two prefixes that were not mapped (sorted).
pub type SdxlTextParts = (Encoder, Encoder, Vec<String>);

/// Both encoders from an SGM single file (see the top of this file).
pub fn from_single_file(
    path: &Path,
    file: &Arc<SafetensorsFile>,
) -> Result<SdxlTextParts, CheckpointError> {
    let blocks = ldm::open_clip_blocks_at(file.names(), TE2_SGM_PREFIX);
    let target = OpenClipTarget {
        prefix: TE2_PREFIX,
        layers: blocks,
        projection: true,
    };
    let mut names: Vec<&str> = file.names().collect();
    names.sort_unstable();
    let (mut w1, mut w2) = (Weights::new(), Weights::new());
    let mut ignored = Vec::new();
    for stored in names {
        if let Some(rest) = stored.strip_prefix(TE1_SGM_PREFIX) {
            match (
                ldm::text_encoder_at(TE1_PREFIX, rest),
                file.tensor_info(stored),
            ) {
                (Some(name), Some(info)) => w1.insert(name, file, stored, info.shape.clone()),
                _ => ignored.push(stored.to_string()),
            }
        } else if let Some(rest) = stored.strip_prefix(TE2_SGM_PREFIX) {
            match ldm::open_clip_as(rest, &target) {
                Some(name) => name.insert_into(&mut w2, file, stored),
                None => ignored.push(stored.to_string()),
            }
        }
    }
    let missing = |component, prefix: &str| CheckpointError::MissingComponent {
        path: path.to_path_buf(),
        component,
        expected: format!("`{prefix}*` tensors: an SDXL file holds both text encoders"),
    };
    if w1.is_empty() {
        return Err(missing("first text encoder", TE1_SGM_PREFIX));
    }
    if w2.is_empty() {
        return Err(missing("second text encoder", TE2_SGM_PREFIX));
    }
    let c1 = infer::clip_text_at(path, &w1, &format!("{TE1_PREFIX}."), HiddenAct::QuickGelu)?;
    let mut c2 = infer::clip_text_at(path, &w2, &format!("{TE2_PREFIX}."), HiddenAct::Gelu)?;
    c2.text_projection = Some(projection_width(path, &w2)?);
    Ok(((c1, w1), (c2, w2), ignored))
}

/// Both encoders from a diffusers folder's `text_encoder/` and `text_encoder_2/`; the
/// ignored names are prefixed with their file, as `load_sd15` lists them.
pub fn from_diffusers(dir: &Path) -> Result<SdxlTextParts, CheckpointError> {
    let d1 = component_dir(
        dir,
        "text_encoder",
        "text_encoder/ with config.json and weights (a CLIPTextModel)",
    )?;
    let d2 = component_dir(
        dir,
        "text_encoder_2",
        "text_encoder_2/ with config.json and weights (a CLIPTextModelWithProjection)",
    )?;
    let mut ignored = Vec::new();
    let mut c1: ClipTextConfig = read_json(&d1.join("config.json"))?;
    c1.text_projection = None;
    let w1 = component_weights(&d1, &mut ignored, |n| ldm::text_encoder_at(TE1_PREFIX, n))?;
    let config2 = d2.join("config.json");
    let mut c2: ClipTextConfig = read_json(&config2)?;
    let w2 = component_weights(&d2, &mut ignored, |n| match n {
        "text_projection.weight" => Some(format!("{TE2_PREFIX}.{n}")),
        _ => ldm::text_encoder_at(TE2_PREFIX, n),
    })?;
    let width = projection_width(&d2, &w2)?;
    let json: serde_json::Value = read_json(&config2)?;
    if let Some(said) = json.get("projection_dim") {
        if said.as_u64() != Some(width as u64) {
            return Err(CheckpointError::Config {
                path: config2,
                detail: format!(
                    "projection_dim is {said} but text_projection.weight projects to {width}"
                ),
            });
        }
    }
    c2.text_projection = Some(width);
    for (d, c) in [(&d1, &c1), (&d2, &c2)] {
        c.validate().map_err(|detail| CheckpointError::Config {
            path: d.join("config.json"),
            detail: format!("not an SDXL text encoder: {detail}"),
        })?;
    }
    Ok(((c1, w1), (c2, w2), ignored))
}

/// The output width of te2's `text_projection.weight` [projection, hidden].
fn projection_width(path: &Path, w: &Weights) -> Result<usize, CheckpointError> {
    let name = format!("{TE2_PREFIX}.text_projection.weight");
    match w.require_shape(&name)? {
        &[p, _] => Ok(p),
        other => Err(CheckpointError::Infer {
            path: path.to_path_buf(),
            component: "second text encoder",
            detail: format!("`{name}` has shape {other:?}, expected 2 dimensions"),
        }),
    }
}
