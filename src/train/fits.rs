//! What a run's settings mean for the model family it loaded, checked before any work: the
//! settings sd-scripts does not apply to a family are refused (naming the key, why, and what to
//! do) or noted.

use crate::config::TrainConfig;
use crate::error::{Error, Result};
use crate::model::checkpoint::Generation;
use crate::model::family::ModelFamily;

/// Refuses what `family` cannot take from `cfg`; returns the notes to show.
pub fn check_family(cfg: &TrainConfig, family: &dyn ModelFamily) -> Result<Vec<String>> {
    let mut notes = Vec::new();
    if family.generation() != Generation::Sdxl {
        return Ok(notes);
    }
    // lora/blocks.rs numbers SD1.x/SD2.x's 25 blocks (kohya's lora.py); sd-scripts numbers
    // SDXL's otherwise (23 blocks), which lorafuse does not map yet.
    let block_wise = [
        ("block_dims", cfg.block_dims.is_some()),
        ("block_alphas", cfg.block_alphas.is_some()),
        ("conv_block_dims", cfg.conv_block_dims.is_some()),
        ("conv_block_alphas", cfg.conv_block_alphas.is_some()),
        ("down_lr_weight", cfg.down_lr_weight.is_some()),
        ("mid_lr_weight", cfg.mid_lr_weight.is_some()),
        ("up_lr_weight", cfg.up_lr_weight.is_some()),
    ];
    if let Some((key, _)) = block_wise.iter().find(|(_, set)| *set) {
        return Err(Error::BadValue {
            op: "config",
            name: key,
            value: format!("set, with the SDXL model {}", cfg.base_model.display()),
            expected: "no block-wise settings on SDXL: lorafuse maps them onto SD1.x/SD2.x's 25 \
                       blocks only (sd-scripts numbers SDXL's differently); remove the key and \
                       use network_dim/conv_dim (and unet_lr/text_encoder_lr) for the whole model"
                .into(),
        });
    }
    if cfg.clip_skip != 1 {
        notes.push(format!(
            "clip_skip = {} has no effect on SDXL, which reads both text encoders' penultimate \
             layers (sd-scripts ignores it too)",
            cfg.clip_skip
        ));
    }
    if cfg.resolution.width.max(cfg.resolution.height) < 1024 {
        notes.push(format!(
            "resolution {}x{}: SDXL was trained at 1024x1024; LoRAs trained much smaller tend to \
             blur at SDXL's usual sizes",
            cfg.resolution.width, cfg.resolution.height
        ));
    }
    Ok(notes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::family::{sd1::Sd1, sdxl::Sdxl};

    fn config(extra: &str) -> TrainConfig {
        let yaml = format!("train_data_dir: d\nbase_model: m\noutput_dir: o\n{extra}");
        TrainConfig::from_yaml(&yaml, "t.yaml", &[] as &[&str]).unwrap()
    }

    #[test]
    fn block_wise_settings_are_refused_on_sdxl_only() {
        let cfg = config("block_dims: [4,4,4,4,4,4,4,4,4,4,4,4,4,4,4,4,4,4,4,4,4,4,4,4,4]\n");
        assert!(check_family(&cfg, &Sd1).unwrap().is_empty());
        let e = check_family(&cfg, &Sdxl).unwrap_err().to_string();
        assert!(e.contains("block_dims") && e.contains("SDXL"), "{e}");
        let cfg = config("up_lr_weight: cosine\n");
        let e = check_family(&cfg, &Sdxl).unwrap_err().to_string();
        assert!(e.contains("up_lr_weight"), "{e}");
    }

    #[test]
    fn clip_skip_and_a_small_resolution_are_noted_on_sdxl() {
        let cfg = config("clip_skip: 2\nresolution: 512\n");
        let notes = check_family(&cfg, &Sdxl).unwrap();
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(notes[0].contains("clip_skip = 2"));
        assert!(notes[1].contains("1024x1024"));
        let cfg = config("resolution: 1024\n");
        assert!(check_family(&cfg, &Sdxl).unwrap().is_empty());
    }
}
