//! Which model family a LoRA file was made for, so that a LoRA given to a model of another
//! family is refused naming both, instead of matching no layer (and changing nothing) or
//! failing on a shape.
//!
//! Evidence, strongest first:
//! - the metadata: kohya's `ss_base_model_version` (`sd_v1`, `sd_v2`, `sd_v2_v`,
//!   `sdxl_base_v1-0`), else the model spec's `modelspec.architecture`
//!   (`stable-diffusion-v1…`, `-v2-…`, `stable-diffusion-xl-v1-base…`);
//! - the module names: SDXL's are `lora_te1_…` / `lora_te2_…` and the UNet's in the SGM
//!   layout (`lora_unet_input_blocks_…`, `…_middle_block_…`, `…_output_blocks_…`); SD1.x's and
//!   SD2.x's are `lora_te_…` and diffusers paths (`lora_unet_down_blocks_…`), which do not tell
//!   SD1.x from SD2.x.
//!
//! A file with neither (another trainer's names) is not judged here.

use std::path::Path;

use crate::error::{Error, Result};
use crate::model::checkpoint::safetensors::SafetensorsFile;
use crate::model::family::ModelFamily;

/// The family a LoRA names, and what gave it away.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoraFamily {
    /// The [`ModelFamily::id`]s it fits ("sd1", "sd2", "sdxl").
    pub fits: &'static [&'static str],
    /// In words ("SDXL", "Stable Diffusion 1.x or 2.x").
    pub name: &'static str,
    pub evidence: String,
}

const SD1: &[&str] = &["sd1"];
const SD2: &[&str] = &["sd2"];
const SD1_OR_SD2: &[&str] = &["sd1", "sd2"];
const SDXL: &[&str] = &["sdxl"];

/// The family of the LoRA whose metadata is `meta` and whose module names are `names`, when
/// either tells.
pub fn lora_family<'a>(
    meta: &std::collections::HashMap<String, String>,
    names: impl IntoIterator<Item = &'a str>,
) -> Option<LoraFamily> {
    let found = |fits, name, evidence: String| {
        Some(LoraFamily {
            fits,
            name,
            evidence,
        })
    };
    if let Some(v) = meta.get("ss_base_model_version") {
        let said = format!("its metadata says ss_base_model_version = {v:?}");
        if v.starts_with("sdxl") {
            return found(SDXL, "SDXL", said);
        }
        if v.starts_with("sd_v2") {
            return found(SD2, "Stable Diffusion 2.x", said);
        }
        if v.starts_with("sd_v1") {
            return found(SD1, "Stable Diffusion 1.x", said);
        }
    }
    if let Some(a) = meta.get("modelspec.architecture") {
        let said = format!("its metadata says modelspec.architecture = {a:?}");
        if a.starts_with("stable-diffusion-xl-v1-base") {
            return found(SDXL, "SDXL", said);
        }
        if a.starts_with("stable-diffusion-v2") {
            return found(SD2, "Stable Diffusion 2.x", said);
        }
        if a.starts_with("stable-diffusion-v1") {
            return found(SD1, "Stable Diffusion 1.x", said);
        }
    }
    for n in names {
        let sdxl_te = n.starts_with("lora_te1_") || n.starts_with("lora_te2_");
        let sgm_unet = ["input_blocks_", "middle_block_", "output_blocks_"]
            .iter()
            .any(|p| n.starts_with(&format!("lora_unet_{p}")));
        if sdxl_te || sgm_unet {
            return found(
                SDXL,
                "SDXL",
                format!("its module `{n}` is named as kohya names SDXL's"),
            );
        }
        if n.starts_with("lora_te_") || n.starts_with("lora_unet_down_blocks_") {
            return found(
                SD1_OR_SD2,
                "Stable Diffusion 1.x or 2.x",
                format!("its module `{n}` is named as kohya names SD1.x/SD2.x's"),
            );
        }
    }
    None
}

/// Refuses the LoRA at `path` when it names another family than `model`'s (`model_path` is
/// named in the message).
pub fn check_lora_fits(path: &Path, model: &dyn ModelFamily, model_path: &Path) -> Result<()> {
    let file = SafetensorsFile::open(path)?;
    let Some(f) = lora_family(file.metadata(), file.names()) else {
        return Ok(());
    };
    if f.fits.contains(&model.id()) {
        return Ok(());
    }
    Err(Error::Lora {
        path: path.to_path_buf(),
        detail: format!(
            "this is a LoRA for {} ({}), but {} is a {} model; use a LoRA trained on a {} \
             model, or a {} base model for this LoRA",
            f.name,
            f.evidence,
            model_path.display(),
            model.display_name(),
            model.display_name(),
            f.name
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn meta(k: &str, v: &str) -> HashMap<String, String> {
        HashMap::from([(k.to_string(), v.to_string())])
    }

    #[test]
    fn metadata_names_the_family_before_the_names() {
        let none = HashMap::new();
        let names = ["lora_te_text_model_encoder_layers_0_mlp_fc1"];
        let by_names = lora_family(&none, names).unwrap();
        assert_eq!(by_names.fits, SD1_OR_SD2);
        let v2 = lora_family(&meta("ss_base_model_version", "sd_v2_v"), names).unwrap();
        assert_eq!(v2.fits, SD2);
        assert!(v2.evidence.contains("sd_v2_v"), "{}", v2.evidence);
        let xl = lora_family(
            &meta("modelspec.architecture", "stable-diffusion-xl-v1-base/lora"),
            names,
        )
        .unwrap();
        assert_eq!(xl.fits, SDXL);
    }

    #[test]
    fn sdxl_names_are_told_apart() {
        let none = HashMap::new();
        for n in [
            "lora_te1_text_model_encoder_layers_0_mlp_fc1",
            "lora_te2_text_model_encoder_layers_0_mlp_fc1",
            "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q",
            "lora_unet_output_blocks_0_1_proj_in",
        ] {
            assert_eq!(lora_family(&none, [n]).unwrap().fits, SDXL, "{n}");
        }
        assert_eq!(lora_family(&none, ["some_other_name"]), None);
        assert_eq!(
            lora_family(&none, ["lora_unet_down_blocks_0_attentions_0_proj_in"])
                .unwrap()
                .fits,
            SD1_OR_SD2
        );
    }
}
