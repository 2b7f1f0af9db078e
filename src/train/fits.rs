//! What a run's settings mean for the model family it loaded, checked before any work: the
//! settings sd-scripts does not apply to a family are refused (naming the key, why, and what to
//! do) or noted.

use crate::config::{Resolution, TrainConfig};
use crate::error::Result;
use crate::lora::blocks::{check_lengths, BlockLayout};
use crate::model::checkpoint::Generation;
use crate::model::family::{family_by_id, ModelFamily};

/// `cfg` with the defaults that follow the model: an unset `resolution` becomes `family`'s
/// square ([`ModelFamily::default_resolution`]: 1024 for SDXL, 512 otherwise), in the run's
/// configuration and in each dataset_config subset's.
pub fn with_model_defaults(cfg: &TrainConfig, family: &dyn ModelFamily) -> TrainConfig {
    let side = family.default_resolution() as u32;
    let fill = |c: &mut TrainConfig| {
        if !c.provenance.is_written("resolution") {
            c.resolution = Resolution::square(side);
        }
    };
    let mut out = cfg.clone();
    fill(&mut out);
    for s in &mut out.subsets {
        fill(&mut s.config);
    }
    out
}

/// [`with_model_defaults`] for the family of `cfg.base_model`; `cfg` as it is where the model
/// cannot be read (loading it reports why).
pub fn with_base_model_defaults(cfg: &TrainConfig) -> TrainConfig {
    match crate::model::family::family_of(&cfg.base_model) {
        Ok(family) => with_model_defaults(cfg, family),
        Err(_) => cfg.clone(),
    }
}

/// Refuses what `family` cannot take from `cfg`; returns the notes to show.
pub fn check_family(cfg: &TrainConfig, family: &dyn ModelFamily) -> Result<Vec<String>> {
    let mut notes = Vec::new();
    // The block-wise lists' lengths are the family's: 25 blocks, or SDXL's 23 (lora/blocks.rs).
    check_lengths(cfg, BlockLayout::of(family.generation()))?;
    if let Some(named) = cfg.provenance.named_family().filter(|&n| n != family.id()) {
        notes.push(format!(
            "the config names the {} family (kohya's sdxl/v2 options); {} is {}: lorafuse \
             trains for the checkpoint's family",
            family_by_id(named).map_or(named, |f| f.display_name()),
            cfg.base_model.display(),
            family.display_name()
        ));
    }
    if family.generation() != Generation::Sdxl {
        return Ok(notes);
    }
    if cfg.clip_skip != 1 {
        notes.push(format!(
            "clip_skip = {} has no effect on SDXL, which reads both text encoders' penultimate \
             layers (sd-scripts ignores it too)",
            cfg.clip_skip
        ));
    }
    // A resolution the configuration gives (unset, it is SDXL's 1024: with_model_defaults).
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
    use crate::config::Format;
    use crate::model::family::{sd1::Sd1, sd2::Sd2, sdxl::Sdxl};

    fn config(extra: &str) -> TrainConfig {
        let yaml = format!("train_data_dir: d\nbase_model: m\noutput_dir: o\n{extra}");
        TrainConfig::from_yaml(&yaml, "t.yaml", &[] as &[&str]).unwrap()
    }

    /// Each family takes its own block counts (sd-scripts: 25 blocks with 12/1/12 lr
    /// weights; SDXL 23 with 9/3/9); the other's are refused naming the key, the count and
    /// what the family takes.
    #[test]
    fn block_wise_lengths_are_the_familys() {
        let list = |n: usize| vec!["4"; n].join(",");
        let sd = config(&format!("block_dims: \"{}\"\n", list(25)));
        let xl = config(&format!("block_dims: \"{}\"\n", list(23)));
        assert!(check_family(&sd, &Sd1).unwrap().is_empty());
        assert!(check_family(&sd, &Sd2).unwrap().is_empty());
        let e = check_family(&sd, &Sdxl).unwrap_err().to_string();
        assert!(e.contains("block_dims") && e.contains("25 values"), "{e}");
        assert!(e.contains("23 values on SDXL"), "{e}");
        check_family(&xl, &Sdxl).unwrap();
        let e = check_family(&xl, &Sd1).unwrap_err().to_string();
        assert!(e.contains("25 values on SD1.x/SD2.x"), "{e}");
        // Curves fit every family; a list longer than SDXL's side does not.
        check_family(&config("up_lr_weight: cosine\n"), &Sdxl).unwrap();
        let long = config(&format!("down_lr_weight: \"{}\"\n", list(10)));
        check_family(&long, &Sd1).unwrap();
        let e = check_family(&long, &Sdxl).unwrap_err().to_string();
        assert!(
            e.contains("down_lr_weight") && e.contains("at most 9"),
            "{e}"
        );
        let mid = config("mid_lr_weight: \"1,0.5,1\"\n");
        check_family(&mid, &Sdxl).unwrap();
        let e = check_family(&mid, &Sd2).unwrap_err().to_string();
        assert!(
            e.contains("mid_lr_weight") && e.contains("at most 1"),
            "{e}"
        );
    }

    #[test]
    fn an_unset_resolution_is_the_models_own() {
        let unset = config("");
        assert_eq!(
            with_model_defaults(&unset, &Sdxl).resolution,
            Resolution::square(1024)
        );
        assert_eq!(
            with_model_defaults(&unset, &Sd1).resolution,
            Resolution::square(512)
        );
        assert_eq!(
            with_model_defaults(&unset, &Sd2).resolution,
            Resolution::square(512)
        );
        let given = config("resolution: 768,512\n");
        let r = with_model_defaults(&given, &Sdxl).resolution;
        assert_eq!((r.width, r.height), (768, 512), "a resolution given stays");
        // kohya's TOML: sd-scripts requires resolution; left out, the model's own.
        let toml = "[model_arguments]\npretrained_model_name_or_path = 'm'\n\
                    [dataset_arguments]\ntrain_data_dir = 'd'\n\
                    [training_arguments]\noutput_dir = 'o'\n";
        let kohya = TrainConfig::from_text(toml, "c.toml", Format::Kohya, &[] as &[&str]).unwrap();
        assert_eq!(
            with_model_defaults(&kohya, &Sdxl).resolution,
            Resolution::square(1024)
        );
        // The default is not noted; a smaller one given is.
        assert!(check_family(&with_model_defaults(&unset, &Sdxl), &Sdxl)
            .unwrap()
            .is_empty());
        let small = with_model_defaults(&config("resolution: 768\n"), &Sdxl);
        assert_eq!(check_family(&small, &Sdxl).unwrap().len(), 1);
    }

    /// SDXL's bucket set with the defaults is sd-scripts' (`make_bucket_resolutions` with
    /// min_bucket_reso 256, max_bucket_reso 1024, bucket_reso_steps 64, which sdxl_train_network
    /// keeps; it allows steps of 32 where lorafuse takes 64): at 1024x1024 every bucket has a
    /// side of 1024 (1024²/w ≥ 1024 for w ≤ 1024) and the other from 256 to 1024 by 64.
    #[test]
    fn sdxl_buckets_by_default_are_sd_scripts() {
        let cfg = with_model_defaults(&config("enable_bucket: true\n"), &Sdxl);
        assert_eq!(
            (
                cfg.min_bucket_reso,
                cfg.max_bucket_reso,
                cfg.bucket_reso_steps
            ),
            (256, 1024, 64)
        );
        let opts = crate::train::inputs::data_options(&cfg);
        let crate::data::Bucketing::Predefined(mut got) = crate::data::scan::bucketing(&opts)
        else {
            panic!("bucketing without upscaling")
        };
        got.sort_unstable();
        let mut want: Vec<(usize, usize)> = (256..=1024)
            .step_by(64)
            .flat_map(|w| [(w, 1024), (1024, w)])
            .collect();
        want.sort_unstable();
        want.dedup();
        assert_eq!(want.len(), 25);
        assert_eq!(got, want);
    }

    /// A kohya config naming another family than the checkpoint's (`sdxl = true` on an
    /// SD1.5 model) trains for the checkpoint's, with a note naming both.
    #[test]
    fn a_family_the_kohya_config_names_is_noted_when_the_model_differs() {
        let toml = |flag: &str| {
            let text = format!(
                "[model_arguments]\npretrained_model_name_or_path = 'm'\n{flag}\
                 [dataset_arguments]\ntrain_data_dir = 'd'\n\
                 [training_arguments]\noutput_dir = 'o'\nresolution = '1024'\n"
            );
            TrainConfig::from_text(&text, "c.toml", Format::Kohya, &[] as &[&str]).unwrap()
        };
        let xl = toml("sdxl = true\n");
        assert_eq!(xl.provenance.named_family(), Some("sdxl"));
        assert!(check_family(&xl, &Sdxl).unwrap().is_empty());
        let notes = check_family(&xl, &Sd1).unwrap();
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(
            notes[0].contains("SDXL") && notes[0].contains("1.x"),
            "{notes:?}"
        );
        assert_eq!(toml("v2 = true\n").provenance.named_family(), Some("sd2"));
        assert_eq!(toml("v2 = false\n").provenance.named_family(), None);
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
