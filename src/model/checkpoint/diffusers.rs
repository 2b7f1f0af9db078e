//! A diffusers folder (SD1.x or SD2.x, told apart by the configs; the scheduler config's
//! `prediction_type` read): `model_index.json`, and `unet/`, `vae/`, `text_encoder/`, each with a
//! `config.json` and safetensors weights, under the first of these names that exists:
//! `diffusion_pytorch_model.safetensors`, `model.safetensors`, the sharded
//! `….safetensors.index.json` of either, then the `.fp16.` variants of all of these (full
//! precision first: `Weights::get_f16` rounds it on request, the reverse would lose bits).
//! Folders with only PyTorch `.bin` weights are refused as pickles.
//!
//! Names get the component as prefix (`unet.conv_in.weight`), the text encoder drops its
//! `position_ids` buffer, and VAE files written by diffusers < 0.17 have their old attention
//! names (`query`, `key`, `value`, `proj_attn`) renamed to today's (`to_q`, `to_k`, `to_v`,
//! `to_out.0`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::model::config::{ClipTextConfig, HiddenAct, UnetConfig, VaeConfig};
use crate::model::family::Prediction;

use super::error::{CheckpointError, CONVERT_DIFFUSERS};
use super::ldm;
use super::safetensors::SafetensorsFile;
use super::weights::Weights;
use super::{Generation, Sd15Checkpoint};

const WEIGHT_STEMS: [&str; 2] = ["diffusion_pytorch_model", "model"];
const VARIANTS: [&str; 2] = ["", ".fp16"];

pub fn load(dir: &Path) -> Result<Sd15Checkpoint, CheckpointError> {
    let index_path = dir.join("model_index.json");
    if !index_path.is_file() {
        return Err(CheckpointError::NotDiffusersFolder {
            path: dir.to_path_buf(),
        });
    }
    let index: serde_json::Value = read_json(&index_path)?;
    let class = index
        .get("_class_name")
        .and_then(|c| c.as_str())
        .unwrap_or("");
    let unsupported = |family, evidence: String| CheckpointError::UnsupportedModel {
        path: dir.to_path_buf(),
        family,
        evidence,
        takes: super::error::SD12_ONLY,
    };
    if class.contains("XL") {
        return Err(unsupported(
            "SDXL",
            format!("model_index.json names the pipeline {class}"),
        ));
    }
    if index.get("text_encoder_2").is_some() {
        return Err(unsupported(
            "SDXL",
            "model_index.json lists a second text encoder, text_encoder_2".into(),
        ));
    }

    let unet_dir = component_dir(dir, "unet", "unet/ with config.json and weights")?;
    let vae_dir = component_dir(dir, "vae", "vae/ with config.json and weights")?;
    let te_dir = component_dir(
        dir,
        "text_encoder",
        "text_encoder/ with config.json and weights (a CLIPTextModel)",
    )?;
    let unet_config: UnetConfig = read_json(&unet_dir.join("config.json"))?;
    let vae_config: VaeConfig = read_json(&vae_dir.join("config.json"))?;
    let clip_config: ClipTextConfig = read_json(&te_dir.join("config.json"))?;

    if unet_config.addition_embed_type.as_deref() == Some("text_time") {
        return Err(unsupported(
            "SDXL",
            "unet/config.json has addition_embed_type \"text_time\"".into(),
        ));
    }
    let generation = folder_generation(&unet_config, &clip_config);
    if unet_config.cross_attention_dim != clip_config.hidden_size {
        return Err(CheckpointError::Config {
            path: unet_dir.join("config.json"),
            detail: format!(
                "cross_attention_dim {} differs from text_encoder/config.json's hidden_size {}: \
                 the UNet and the text encoder are not of one model",
                unet_config.cross_attention_dim, clip_config.hidden_size
            ),
        });
    }
    let invalid = |dir: &Path, detail: String| CheckpointError::Config {
        path: dir.join("config.json"),
        detail: format!("not an SD1.x or SD2.x model: {detail}"),
    };
    unet_config.validate().map_err(|d| invalid(&unet_dir, d))?;
    vae_config.validate().map_err(|d| invalid(&vae_dir, d))?;
    clip_config.validate().map_err(|d| invalid(&te_dir, d))?;

    let mut ignored = Vec::new();
    let unet = component_weights(&unet_dir, &mut ignored, |n| Some(format!("unet.{n}")))?;
    let vae = component_weights(&vae_dir, &mut ignored, |n| {
        Some(format!("vae.{}", legacy_vae_name(n)))
    })?;
    let text_encoder = component_weights(&te_dir, &mut ignored, ldm::text_encoder)?;
    let prediction = scheduler_prediction(dir)?;
    Ok(Sd15Checkpoint {
        unet: (unet_config, unet),
        vae: (vae_config, vae),
        text_encoder: (clip_config, text_encoder),
        source: dir.to_path_buf(),
        ignored,
        generation,
        prediction,
    })
}

/// SD2.x when the configs say so: Linear proj_in/proj_out, 1024-wide cross-attention or
/// text encoder, GELU in the text encoder (each of these is SD2.x's; SD1.x has none).
fn folder_generation(unet: &UnetConfig, clip: &ClipTextConfig) -> Generation {
    let sd2 = unet.use_linear_projection
        || unet.cross_attention_dim == 1024
        || clip.hidden_size == 1024
        || clip.hidden_act == HiddenAct::Gelu;
    if sd2 {
        Generation::Sd2
    } else {
        Generation::Sd1
    }
}

/// `prediction_type` of `scheduler/scheduler_config.json` ("epsilon" or "v_prediction"),
/// None when the folder has no scheduler config or it does not say.
pub(super) fn scheduler_prediction(dir: &Path) -> Result<Option<Prediction>, CheckpointError> {
    let path = dir.join("scheduler").join("scheduler_config.json");
    if !path.is_file() {
        return Ok(None);
    }
    let config: serde_json::Value = read_json(&path)?;
    match config.get("prediction_type") {
        None => Ok(None),
        Some(v) => match v.as_str() {
            Some("epsilon") => Ok(Some(Prediction::Epsilon)),
            Some("v_prediction") => Ok(Some(Prediction::V)),
            _ => Err(CheckpointError::Config {
                path,
                detail: format!(
                    "prediction_type is {v}; lorafuse trains \"epsilon\" and \"v_prediction\" \
                     models"
                ),
            }),
        },
    }
}

pub(super) fn component_dir(
    dir: &Path,
    name: &'static str,
    expected: &str,
) -> Result<PathBuf, CheckpointError> {
    let sub = dir.join(name);
    if sub.is_dir() {
        Ok(sub)
    } else {
        Err(CheckpointError::MissingComponent {
            path: dir.to_path_buf(),
            component: name,
            expected: format!("{expected} in this diffusers folder"),
        })
    }
}

pub(super) fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T, CheckpointError> {
    let bytes = std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => CheckpointError::Config {
            path: path.to_path_buf(),
            detail: "missing; every diffusers component folder has a config.json".into(),
        },
        _ => CheckpointError::Io {
            path: path.to_path_buf(),
            action: "read the file",
            source: e,
        },
    })?;
    serde_json::from_slice(&bytes).map_err(|e| CheckpointError::Config {
        path: path.to_path_buf(),
        detail: format!("cannot parse it: {e}{}", near(&bytes, e.line(), e.column())),
    })
}

/// The text before a JSON error's position on its line, which usually holds the field's name
/// (serde's message names the expected type but not the field).
fn near(bytes: &[u8], line: usize, column: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let Some(l) = text.lines().nth(line.saturating_sub(1)) else {
        return String::new();
    };
    let upto: Vec<char> = l.chars().take(column).collect();
    let start = upto.len().saturating_sub(60);
    let snippet: String = upto[start..].iter().collect();
    let snippet = snippet.trim();
    if snippet.is_empty() {
        String::new()
    } else {
        format!(" (near `{snippet}`)")
    }
}

/// Opens a component's weight files and names their tensors with `rename` (None: ignored).
pub(super) fn component_weights(
    dir: &Path,
    ignored: &mut Vec<String>,
    rename: impl Fn(&str) -> Option<String>,
) -> Result<Weights, CheckpointError> {
    let mut weights = Weights::new();
    let files = weight_files(dir)?;
    for path in &files {
        let file = Arc::new(SafetensorsFile::open(path)?);
        let mut names: Vec<&str> = file.names().collect();
        names.sort_unstable();
        for stored in names {
            match (rename(stored), file.tensor_info(stored)) {
                (Some(name), Some(info)) => {
                    let shape = ldm::logical_shape(&name, &info.shape);
                    weights.insert(name, &file, stored, shape);
                }
                _ => ignored.push(format!("{}: {stored}", path.display())),
            }
        }
    }
    if weights.is_empty() {
        return Err(CheckpointError::MissingComponent {
            path: dir.to_path_buf(),
            component: "weights",
            expected: "the tensors of this component under diffusers names".into(),
        });
    }
    Ok(weights)
}

/// The weight files of one component folder, in the order of preference of the module doc.
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>, CheckpointError> {
    for variant in VARIANTS {
        for stem in WEIGHT_STEMS {
            let single = dir.join(format!("{stem}{variant}.safetensors"));
            if single.is_file() {
                return Ok(vec![single]);
            }
            let index = dir.join(format!("{stem}{variant}.safetensors.index.json"));
            if index.is_file() {
                return shards(dir, &index);
            }
        }
    }
    for variant in VARIANTS {
        for stem in WEIGHT_STEMS {
            for ext in ["bin", "bin.index.json"] {
                let pickle = dir.join(format!("{stem}{variant}.{ext}"));
                if pickle.is_file() {
                    return Err(CheckpointError::Pickle {
                        path: pickle,
                        evidence: "the folder's only weights are PyTorch .bin files".into(),
                        how: CONVERT_DIFFUSERS,
                    });
                }
            }
        }
    }
    Err(CheckpointError::MissingComponent {
        path: dir.to_path_buf(),
        component: "weights",
        expected: "diffusion_pytorch_model.safetensors or model.safetensors (or its .fp16 \
                   variant, or a sharded ….safetensors.index.json)"
            .into(),
    })
}

/// The shard files named by a `*.safetensors.index.json` (`{"weight_map": {tensor: file}}`),
/// each once, all inside `dir`.
fn shards(dir: &Path, index: &Path) -> Result<Vec<PathBuf>, CheckpointError> {
    #[derive(Deserialize)]
    struct Index {
        weight_map: BTreeMap<String, String>,
    }
    let parsed: Index = read_json(index)?;
    let mut files: Vec<PathBuf> = Vec::new();
    for shard in parsed.weight_map.values() {
        if Path::new(shard).file_name().and_then(|f| f.to_str()) != Some(shard.as_str()) {
            return Err(CheckpointError::Config {
                path: index.to_path_buf(),
                detail: format!("shard `{shard}` is not a plain file name in the same folder"),
            });
        }
        let path = dir.join(shard);
        if !files.contains(&path) {
            files.push(path);
        }
    }
    Ok(files)
}

/// diffusers < 0.17 saved the VAE mid-attention as `query`/`key`/`value`/`proj_attn`.
pub(super) fn legacy_vae_name(n: &str) -> String {
    const OLD: [(&str, &str); 4] = [
        (".attentions.0.query.", ".attentions.0.to_q."),
        (".attentions.0.key.", ".attentions.0.to_k."),
        (".attentions.0.value.", ".attentions.0.to_v."),
        (".attentions.0.proj_attn.", ".attentions.0.to_out.0."),
    ];
    OLD.iter()
        .find(|(old, _)| n.contains(old))
        .map(|(old, new)| n.replacen(old, new, 1))
        .unwrap_or_else(|| n.to_string())
}
