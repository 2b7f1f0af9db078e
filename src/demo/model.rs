//! A tiny random-weight model of SD1.5's full topology, written as a diffusers folder, for
//! `lorafuse demo` and the end-to-end tests: same blocks, key names and file layout as the real
//! model, only narrower (UNet 32/64/96/96 channels, VAE 32/32/64/64, a 2-layer CLIP text
//! encoder 64 wide with the real 49408-token vocabulary, so the real tokenizer applies).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::atomic::write_file as write_atomic;
use crate::backend::cpu::CpuBackend;
use crate::error::{Error, Result};
use crate::model::clip::ClipTextModel;
use crate::model::config::{ClipTextConfig, PerLevel, UnetConfig, VaeConfig};
use crate::model::unet::Unet;
use crate::model::vae::Vae;
use crate::model::weights::{RandomWeights, WeightSource};
use crate::tensor::Tensor;

/// The demo UNet: SD1.5's configuration with narrow levels and 64-wide text.
pub fn unet_config() -> UnetConfig {
    UnetConfig {
        block_out_channels: vec![32, 64, 96, 96],
        cross_attention_dim: 64,
        attention_head_dim: PerLevel::All(8),
        sample_size: 8,
        ..UnetConfig::sd15()
    }
}

/// The demo VAE: SD1.5's with 32/32/64/64 channels (images 8x the latents).
pub fn vae_config() -> VaeConfig {
    VaeConfig {
        block_out_channels: vec![32, 32, 64, 64],
        sample_size: 64,
        ..VaeConfig::sd15()
    }
}

/// The demo text encoder: 2 layers, one 64-wide head, the real vocabulary and 77 positions.
pub fn clip_config() -> ClipTextConfig {
    ClipTextConfig {
        hidden_size: 64,
        intermediate_size: 256,
        num_hidden_layers: 2,
        num_attention_heads: 1,
        ..ClipTextConfig::sd15()
    }
}

/// A tiny SDXL UNet: SDXL's topology (no attention at the first level, Linear projections,
/// the text-time added embedding) at 32/64/64 channels, one transformer block per attention,
/// heads 16 wide, reading the two demo encoders' 32 + 32 wide states and a 32-wide pooled text.
pub fn sdxl_unet_config() -> UnetConfig {
    UnetConfig {
        block_out_channels: vec![32, 64, 64],
        cross_attention_dim: 64,
        attention_head_dim: PerLevel::Each(vec![2, 4, 4]),
        transformer_layers_per_block: PerLevel::All(1),
        addition_time_embed_dim: Some(8),
        projection_class_embeddings_input_dim: Some(32 + 6 * 8),
        sample_size: 8,
        ..UnetConfig::sdxl()
    }
}

/// The tiny SDXL's two text encoders: 2 layers each, 32 wide, the real vocabulary; the second
/// with GELU and a 32-wide text_projection, as OpenCLIP ViT-bigG's.
pub fn sdxl_clip_configs() -> (ClipTextConfig, ClipTextConfig) {
    let te1 = ClipTextConfig {
        hidden_size: 32,
        intermediate_size: 128,
        num_hidden_layers: 2,
        num_attention_heads: 1,
        ..ClipTextConfig::sdxl_te1()
    };
    let te2 = ClipTextConfig {
        hidden_size: 32,
        intermediate_size: 128,
        num_hidden_layers: 2,
        num_attention_heads: 1,
        text_projection: Some(32),
        ..ClipTextConfig::sdxl_te2()
    };
    (te1, te2)
}

/// Hands out random weights and remembers every (name, tensor) asked for, so the exact set a
/// model reads can be written to a file.
struct Recorder {
    src: RandomWeights,
    seen: RefCell<BTreeMap<String, Tensor>>,
}

impl WeightSource for Recorder {
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self.src.tensor(name, shape)?;
        self.seen.borrow_mut().insert(name.to_string(), t.clone());
        Ok(t)
    }
    fn contains(&self, _name: &str) -> bool {
        true
    }
}

fn write_error(what: &str, why: String) -> Error {
    Error::BadValue {
        op: "demo model",
        name: "tensor",
        value: what.to_string(),
        expected: format!("serialisable weights ({why})"),
    }
}

fn json(value: &impl serde::Serialize) -> Result<Vec<u8>> {
    serde_json::to_vec_pretty(value).map_err(|e| write_error("config.json", e.to_string()))
}

fn create_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::BadValue {
        op: "demo model",
        name: "folder",
        value: dir.display().to_string(),
        expected: format!("a folder that can be created ({e})"),
    })
}

/// Writes the tiny model to `dir` (a diffusers folder) with weights drawn from `seed`;
/// returns `dir`.
pub fn write_tiny_model(dir: &Path, seed: u64) -> Result<PathBuf> {
    let be = CpuBackend::new();
    let rec = Recorder {
        src: RandomWeights { seed },
        seen: RefCell::new(BTreeMap::new()),
    };
    let (uc, vc, cc) = (unet_config(), vae_config(), clip_config());
    Unet::load(&uc, &rec, &be, "unet")?;
    Vae::load(&vc, &rec, &be, "vae")?;
    ClipTextModel::load(&cc, &rec, &be, "text_encoder")?;
    let index = serde_json::json!({
        "_class_name": "StableDiffusionPipeline",
        "_note": "lorafuse demo: a tiny random-weight model of SD1.5's topology",
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"],
    });
    let parts = [
        ("unet", "diffusion_pytorch_model.safetensors", json(&uc)?),
        ("vae", "diffusion_pytorch_model.safetensors", json(&vc)?),
        ("text_encoder", "model.safetensors", json(&cc)?),
    ];
    write_folder(dir, rec, &index, &parts)
}

/// Writes a tiny random-weight model of SD2.x's topology (SD2.1 768-v's: Linear projections,
/// heads 8 wide, a GELU text encoder whose tokenizer pads with `!`, v-prediction in the
/// scheduler config) to `dir` as a diffusers folder, with the demo's widths; returns `dir`.
pub fn write_tiny_sd2(dir: &Path, seed: u64) -> Result<PathBuf> {
    let be = CpuBackend::new();
    let rec = Recorder {
        src: RandomWeights { seed },
        seen: RefCell::new(BTreeMap::new()),
    };
    let uc = UnetConfig {
        attention_head_dim: PerLevel::Each(vec![4, 8, 12, 12]),
        use_linear_projection: true,
        upcast_attention: true,
        ..unet_config()
    };
    let cc = ClipTextConfig {
        hidden_act: crate::model::config::HiddenAct::Gelu,
        ..clip_config()
    };
    let vc = vae_config();
    Unet::load(&uc, &rec, &be, "unet")?;
    Vae::load(&vc, &rec, &be, "vae")?;
    ClipTextModel::load(&cc, &rec, &be, "text_encoder")?;
    let index = serde_json::json!({
        "_class_name": "StableDiffusionPipeline",
        "_note": "lorafuse: a tiny random-weight model of SD2.x's topology (768-v)",
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "scheduler": ["diffusers", "DDPMScheduler"],
    });
    let scheduler = serde_json::json!({
        "_class_name": "DDPMScheduler",
        "prediction_type": "v_prediction",
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "num_train_timesteps": 1000,
    });
    let parts = [
        ("unet", "diffusion_pytorch_model.safetensors", json(&uc)?),
        ("vae", "diffusion_pytorch_model.safetensors", json(&vc)?),
        ("text_encoder", "model.safetensors", json(&cc)?),
    ];
    let dir = write_folder(dir, rec, &index, &parts)?;
    create_dir(&dir.join("scheduler"))?;
    write_atomic(
        &dir.join("scheduler").join("scheduler_config.json"),
        &json(&scheduler)?,
    )?;
    Ok(dir)
}

/// Writes a tiny random-weight SDXL model (the configs above, SDXL's VAE scale) to `dir` as a
/// diffusers folder; returns `dir`.
pub fn write_tiny_sdxl(dir: &Path, seed: u64) -> Result<PathBuf> {
    let be = CpuBackend::new();
    let rec = Recorder {
        src: RandomWeights { seed },
        seen: RefCell::new(BTreeMap::new()),
    };
    let uc = sdxl_unet_config();
    let vc = VaeConfig {
        scaling_factor: VaeConfig::sdxl().scaling_factor,
        ..vae_config()
    };
    let (c1, c2) = sdxl_clip_configs();
    Unet::load(&uc, &rec, &be, "unet")?;
    Vae::load(&vc, &rec, &be, "vae")?;
    crate::model::sdxl_text::SdxlText::load((&c1, &rec), (&c2, &rec), &be)?;
    let index = serde_json::json!({
        "_class_name": "StableDiffusionXLPipeline",
        "_note": "lorafuse: a tiny random-weight model of SDXL's topology",
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
    });
    let parts = [
        ("unet", "diffusion_pytorch_model.safetensors", json(&uc)?),
        ("vae", "diffusion_pytorch_model.safetensors", json(&vc)?),
        ("text_encoder", "model.safetensors", json(&c1)?),
        ("text_encoder_2", "model.safetensors", json(&c2)?),
    ];
    write_folder(dir, rec, &index, &parts)
}

/// A diffusers folder: model_index.json, and per part (folder, weight file, config.json) the
/// weights `rec` handed out under `<folder>.`.
fn write_folder(
    dir: &Path,
    rec: Recorder,
    index: &serde_json::Value,
    parts: &[(&str, &str, Vec<u8>)],
) -> Result<PathBuf> {
    let all = rec.seen.into_inner();
    let part = |prefix: &str| -> BTreeMap<String, Tensor> {
        all.iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, t)| (k.clone(), t.clone()))
            .collect()
    };
    create_dir(dir)?;
    write_atomic(&dir.join("model_index.json"), &json(index)?)?;
    for (name, file, config) in parts {
        let sub = dir.join(name);
        create_dir(&sub)?;
        write_atomic(&sub.join("config.json"), config)?;
        let prefix = format!("{name}.");
        let tensors = part(&prefix);
        let named: Vec<(String, &Tensor)> = tensors
            .iter()
            .map(|(k, t)| (k.strip_prefix(&prefix).unwrap_or(k).to_string(), t))
            .collect();
        crate::lora::write::write_f32_safetensors(&sub.join(file), &named, &BTreeMap::new())?;
    }
    Ok(dir.to_path_buf())
}
