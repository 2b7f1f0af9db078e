//! What kind of file or model this is, decided before any weight is read, so that the wrong
//! kind gets its own message instead of a missing-tensor error further on:
//! - pickle files (PyTorch `.ckpt`, `.pt`, `.pth`, `.bin`), refused, never unpickled;
//! - the model family of a single-file checkpoint from its key names and a few shapes:
//!   SD1.x and SD2.x (loaded), SDXL (named and refused), a LoRA or a lone diffusers component
//!   (not a base model).

use std::path::Path;

use super::error::{CheckpointError, CONVERT_SINGLE_FILE};
use super::safetensors::SafetensorsFile;

/// Extensions PyTorch pickles are saved under.
const PICKLE_EXTENSIONS: &[&str] = &["ckpt", "pt", "pth", "bin", "pkl", "pickle"];

/// Refuses a pickle file, by its content or by its extension.
///
/// Content: `torch.save` writes a zip archive ("PK\x03\x04") since PyTorch 1.6 and a bare
/// pickle before (protocol 2+, first byte 0x80 then the protocol number). Content that looks
/// like safetensors wins over the name (a safetensors file renamed `.ckpt` loads); a
/// pickle-type extension on content that is neither is refused as a pickle too (protocols 0
/// and 1 have no magic bytes).
pub fn refuse_pickle(path: &Path, head: &[u8]) -> Result<(), CheckpointError> {
    if looks_like_safetensors(head) {
        return Ok(());
    }
    let evidence = if head.starts_with(b"PK\x03\x04") {
        Some("it is a zip archive, the format of torch.save: a pickle inside".to_string())
    } else if head.len() >= 2 && head[0] == 0x80 && (2..=5).contains(&head[1]) {
        Some(format!(
            "it starts with the bytes of a pickle, protocol {}",
            head[1]
        ))
    } else {
        path.extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .filter(|e| PICKLE_EXTENSIONS.contains(&e.as_str()))
            .map(|e| format!("its extension .{e} is PyTorch's pickle format"))
    };
    match evidence {
        Some(evidence) => Err(CheckpointError::Pickle {
            path: path.to_path_buf(),
            evidence,
            how: CONVERT_SINGLE_FILE,
        }),
        None => Ok(()),
    }
}

/// A plausible safetensors start: a header length under 100 MB followed by '{'.
fn looks_like_safetensors(head: &[u8]) -> bool {
    if head.len() < 9 {
        return false;
    }
    let n = u64::from_le_bytes(head[..8].try_into().unwrap_or([0xff; 8]));
    n <= 100_000_000 && head[8] == b'{'
}

/// What a single-file checkpoint holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Family {
    /// LDM keys of an SD1.x model.
    Sd1,
    /// An SD2.x model (OpenCLIP text encoder, Linear proj_in, 1024-wide cross-attention);
    /// `evidence` says what gave it away.
    Sd2 { evidence: String },
    /// SDXL (base): two text encoders and the size/crop conditioning; `evidence` says what gave
    /// it away.
    Sdxl { evidence: String },
    /// A model lorafuse does not train (an SDXL refiner, SD3, Flux, an inpainting or
    /// instruct-pix2pix UNet), named by `family`; `evidence` says what gave it away.
    Unsupported {
        family: &'static str,
        evidence: String,
    },
    /// Not a base model: a LoRA, a lone diffusers component, or unknown keys.
    Other { detail: String },
}

/// The LDM prefixes of SD1.x's three parts.
pub const UNET_PREFIX: &str = "model.diffusion_model.";
pub const VAE_PREFIX: &str = "first_stage_model.";
pub const TEXT_ENCODER_PREFIX: &str = "cond_stage_model.transformer.";
/// SD2.x's text encoder: OpenCLIP ViT-H/14's text tower (`ldm::open_clip` renames it).
pub const OPEN_CLIP_PREFIX: &str = "cond_stage_model.model.";

/// Classifies a single-file checkpoint from its key names and, for SD2.x, two shapes.
pub fn family(file: &SafetensorsFile) -> Family {
    let names: Vec<&str> = file.names().collect();
    let any = |p: &dyn Fn(&str) -> bool| names.iter().copied().find(|k| p(k));

    if let Some(unsupported) = unsupported(file, &names) {
        return unsupported;
    }
    // SDXL: two text encoders under `conditioner.embedders.` and size/crop conditioning.
    if let Some(k) = any(&|k| k.starts_with("conditioner.embedders.")) {
        return Family::Sdxl {
            evidence: format!("it has `{k}`: SDXL's two text encoders live there"),
        };
    }
    if let Some(k) = any(&|k| {
        k.starts_with("model.diffusion_model.label_emb.") || k.starts_with("add_embedding.")
    }) {
        return Family::Sdxl {
            evidence: format!("it has `{k}`: SDXL's size and crop conditioning"),
        };
    }
    // A LoRA: kohya (`.lora_down.weight`), diffusers (`.lora.down.weight`) or PEFT names.
    if let Some(k) =
        any(&|k| k.contains(".lora_down.") || k.contains(".lora.down.") || k.contains(".lora_A."))
    {
        return Family::Other {
            detail: format!(
                "it holds LoRA weights (`{k}`), not a base model; pass the SD1.5 model you \
                 want to train on (a LoRA is merged with `lorafuse merge`)"
            ),
        };
    }
    // SD2.x: an OpenCLIP text encoder, 1024-wide cross-attention, Linear proj_in.
    if let Some(k) = any(&|k| k.starts_with(OPEN_CLIP_PREFIX)) {
        return Family::Sd2 {
            evidence: format!("its text encoder is OpenCLIP ViT-H: `{k}`"),
        };
    }
    for k in &names {
        let Some(info) = file.tensor_info(k) else {
            continue;
        };
        let cross_1024 = info.shape.len() == 2 && info.shape[1] == 1024;
        if k.starts_with(UNET_PREFIX) && k.ends_with(".attn2.to_k.weight") && cross_1024 {
            return Family::Sd2 {
                evidence: format!("`{k}` reads 1024-wide text embeddings (SD1.x: 768, CLIP ViT-L)"),
            };
        }
        if k.starts_with(UNET_PREFIX) && k.ends_with(".proj_in.weight") && info.shape.len() == 2 {
            return Family::Sd2 {
                evidence: format!(
                    "`{k}` is a Linear layer of shape {:?} (SD1.x uses 1x1 convolutions)",
                    info.shape
                ),
            };
        }
    }
    if any(&|k| k.starts_with(UNET_PREFIX)).is_some() {
        return Family::Sd1;
    }
    let detail = if any(&|k| k.starts_with("down_blocks.") || k.starts_with("conv_in.")).is_some() {
        "it holds diffusers-style names without a prefix (one component of a diffusers \
         folder?); pass the folder that holds model_index.json"
            .to_string()
    } else if any(&|k| k.starts_with("text_model.")).is_some() {
        "it holds a lone CLIP text encoder; pass a whole SD1.x model".to_string()
    } else if any(&|k| k.starts_with("encoder.") || k.starts_with("decoder.")).is_some() {
        "it holds a lone VAE; pass a whole SD1.x model".to_string()
    } else {
        let mut sample: Vec<&str> = names.iter().copied().take(3).collect();
        sample.sort_unstable();
        format!(
            "it has no `{UNET_PREFIX}*` keys (its {} tensors include {:?})",
            names.len(),
            sample
        )
    };
    Family::Other { detail }
}

/// Models of other kinds whose keys would otherwise pass for SD1.x, SD2.x or SDXL, each named
/// with what gave it away.
fn unsupported(file: &SafetensorsFile, names: &[&str]) -> Option<Family> {
    let any = |p: &dyn Fn(&str) -> bool| names.iter().copied().find(|k| p(k));
    let found = |family, k: &str, what: &str| {
        Some(Family::Unsupported {
            family,
            evidence: format!("it has `{k}`: {what}"),
        })
    };
    if let Some(k) = any(&|k| k.contains("joint_blocks.")) {
        return found("SD3", k, "SD3's MMDiT blocks");
    }
    if let Some(k) = any(&|k| k.contains("double_blocks.") || k.contains("single_blocks.")) {
        return found("Flux", k, "Flux's transformer blocks");
    }
    // The refiner has only OpenCLIP ViT-bigG, as the first (and only) embedder.
    let refiner_te = any(&|k| k.starts_with("conditioner.embedders.0.model."));
    let second_te = any(&|k| k.starts_with("conditioner.embedders.1."));
    if let (Some(k), None) = (refiner_te, second_te) {
        return found(
            "SDXL refiner",
            k,
            "its only text encoder is OpenCLIP ViT-bigG (the base model has two)",
        );
    }
    let conv_in = format!("{UNET_PREFIX}input_blocks.0.0.weight");
    let in_channels = file
        .tensor_info(&conv_in)
        .and_then(|i| i.shape.get(1).copied());
    match in_channels {
        Some(9) => found(
            "inpainting",
            &conv_in,
            "its UNet reads 9 channels (latents, mask and masked image; a base model reads 4)",
        ),
        Some(8) => found(
            "instruct-pix2pix",
            &conv_in,
            "its UNet reads 8 channels (latents and the input image; a base model reads 4)",
        ),
        _ => None,
    }
}
