//! SDXL end to end on a tiny random-weight model of SDXL's topology (`demo::model::
//! write_tiny_sdxl`: the real vocabulary, so the real tokenizer applies) and the demo's
//! shapes data set: the family is read from the folder, training lowers the fixed-noise loss
//! with LoRA on the UNet and both text encoders, the file carries kohya's SDXL names
//! (`lora_unet_input_blocks_…`, `lora_te1_…`, `lora_te2_…`) and metadata, it loads back into
//! the same adapters, `sample` draws with it, and the SD1.x demo model refuses it.

use crate::common;
use common::tools::TempDir;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use lorafuse::config::TrainConfig;
use lorafuse::lora::kohya;
use lorafuse::model::checkpoint::safetensors::SafetensorsFile;
use lorafuse::model::family::{family_of, WeightsFrom};
use lorafuse::train::trainer::{train, Recorder};
use lorafuse::{CpuBackend, DType};

fn demo_on_sdxl(dir: &Path, steps: usize) -> PathBuf {
    let files = lorafuse::demo::prepare(dir, steps).unwrap();
    let model = lorafuse::demo::model::write_tiny_sdxl(&dir.join("sdxl"), 7).unwrap();
    assert_eq!(family_of(&model).unwrap().id(), "sdxl");
    assert_eq!(family_of(&files.model).unwrap().id(), "sd1");
    model
}

#[test]
fn sdxl_trains_exports_kohya_names_and_samples() {
    let s = TempDir::new("sdxl-train");
    let model = demo_on_sdxl(&s, 60);
    let sets: Vec<String> = [
        format!("base_model={}", model.display()),
        "save_precision=fp32".into(),
        "sample_every_n_steps=0".into(),
        "train_text_encoder=true".into(),
        "text_encoder_lr=0.001".into(),
    ]
    .into();
    let cfg = TrainConfig::load(s.join("demo.yaml"), &sets).unwrap();
    let be = CpuBackend::new();
    let mut rec = Recorder::default();
    let report = train(&cfg, &be, false, &AtomicBool::new(false), &mut rec).unwrap();
    assert_eq!(report.steps, 60);
    common::assert_loss_fell("tiny SDXL, 60 steps", &report, 0.9);

    // kohya's SDXL names: the UNet in SGM's layout, te1 and te2 (2 layers x 6 each); and the
    // SDXL metadata.
    let file = SafetensorsFile::open(&report.lora_path).unwrap();
    let modules: Vec<&str> = file
        .names()
        .filter_map(kohya::module_of)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let count = |p: &str| modules.iter().filter(|m| m.starts_with(p)).count();
    assert_eq!(
        count("lora_te1_text_model_encoder_layers_"),
        12,
        "{modules:?}"
    );
    assert_eq!(
        count("lora_te2_text_model_encoder_layers_"),
        12,
        "{modules:?}"
    );
    assert!(count("lora_unet_input_blocks_4_1_transformer_blocks_0_") > 0);
    assert!(count("lora_unet_middle_block_1_") > 0);
    assert!(count("lora_unet_output_blocks_") > 0);
    assert_eq!(count("lora_unet_down_blocks_"), 0);
    // inspect's block table in SGM's numbers (the tiny model's 3 levels: IN04, IN05, MID,
    // OUT00-OUT05), and both encoders.
    let shown = lorafuse::lora::inspect::inspect(&report.lora_path)
        .unwrap()
        .to_string();
    for block in ["IN04", "IN05", "MID", "OUT00", "OUT05", "TE1", "TE2"] {
        assert!(shown.contains(&format!(" {block} ")), "{block}: {shown}");
    }
    assert!(!shown.contains(" other "), "{shown}");
    let meta = file.metadata();
    assert_eq!(meta["ss_base_model_version"], "sdxl_base_v1-0");
    assert_eq!(
        meta["modelspec.architecture"],
        "stable-diffusion-xl-v1-base/lora"
    );

    // Loads back onto the model's layers: every module names a layer of the SDXL model.
    let family = family_of(&model).unwrap();
    let m = family
        .load(WeightsFrom::Checkpoint(&model), &be, &mut |_| {})
        .unwrap();
    let set = kohya::load(&report.lora_path, &be, DType::F32).unwrap();
    let (targets, _) = m.adapter_targets(cfg.lora_targets, true);
    let names: std::collections::HashSet<&str> = targets.iter().map(|t| t.name.as_str()).collect();
    for module in set.modules() {
        assert!(names.contains(module.name.as_str()), "{}", module.name);
    }
    assert_eq!(set.modules().len(), targets.len());

    // `sample` draws with it on the SDXL model; the SD1.x demo model refuses it.
    common::tools::sample_with_lora(&model, &report.lora_path, &s.join("xl.png"));
    let bin = env!("CARGO_BIN_EXE_lorafuse");
    let lora = report.lora_path.display().to_string();
    let out = std::process::Command::new(bin)
        .args(["sample", "--device", "cpu", "--model"])
        .arg(s.join("model"))
        .args(["--lora", &lora, "--out"])
        .arg(s.join("sd1.png"))
        .arg("a red circle")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("LoRA for SDXL") && err.contains("Stable Diffusion 1.x model"),
        "{err}"
    );
}

/// sd-scripts' block-wise ranks and learning rates on SDXL (networks/lora.py with
/// `is_sdxl`): 23 per-block ranks and alphas (0 the embeddings, 1-9 input_blocks 0-8, 10-12
/// middle_block 0-2, 13-21 output_blocks 0-8, 22 out), lr weights 9 a side and 3 in the
/// middle, a curve over the side's 9 blocks. Each UNet adapter takes its block's rank and
/// alpha (the 3x3 conv adapters their conv block's), a block of weight 0 gets none, and
/// one AdamW step moves each block's up matrices by lr × its weight (Adam's first step is
/// ±lr per element wherever the gradient is not tiny). SD1.x's 25 ranks are refused on SDXL.
#[test]
fn sdxl_block_ranks_and_lr_weights_as_sd_scripts() {
    use lorafuse::lora::blocks::{BlockLayout, SDXL_BLOCKS};
    let s = TempDir::new("sdxl-blocks");
    let model = demo_on_sdxl(&s, 1);
    let dims: Vec<usize> = (0..SDXL_BLOCKS).map(|b| 1 + b % 4).collect();
    let conv_dims: Vec<usize> = (0..SDXL_BLOCKS).map(|b| 2 + b % 3).collect();
    let mut alphas = [0.0; SDXL_BLOCKS];
    alphas[11] = 0.5;
    let text = |v: &[usize]| {
        v.iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    let lr = 0.001;
    // input_blocks 4 (block 5) has weight 0; the middle weighs 0.5, 1, 0.75; the output
    // blocks follow `linear+0.25`: 0.25 + i/8 for output_blocks i.
    let sets: Vec<String> = [
        format!("base_model={}", model.display()),
        "save_precision=fp32".into(),
        "sample_every_n_steps=0".into(),
        "max_train_steps=1".into(),
        "lr_scheduler=constant".into(),
        "num_warmup_steps=0".into(),
        format!("learning_rate={lr}"),
        "conv_dim=2".into(),
        format!("block_dims=\"{}\"", text(&dims)),
        format!(
            "block_alphas=\"{}\"",
            alphas.map(|a| a.to_string()).join(",")
        ),
        format!("conv_block_dims=\"{}\"", text(&conv_dims)),
        "down_lr_weight=\"1,1,1,1,0,1,1,1,1\"".into(),
        "mid_lr_weight=\"0.5,1,0.75\"".into(),
        "up_lr_weight=linear+0.25".into(),
    ]
    .into();
    let cfg = TrainConfig::load(s.join("demo.yaml"), &sets).unwrap();
    let be = CpuBackend::new();
    let report = common::train_quietly(&cfg, &be).unwrap();
    let weight = |b: usize| match b {
        5 => 0.0,
        10 => 0.5,
        11 => 1.0,
        12 => 0.75,
        13..=21 => 0.25 + (b - 13) as f64 / 8.0,
        _ => 1.0,
    };
    let lora = kohya::load(&report.lora_path, &be, DType::F32).unwrap();
    let run = common::BlockWise {
        layout: BlockLayout::Sdxl,
        dims: &dims,
        conv_dims: &conv_dims,
        half_alpha: 11,
        lr,
        weight: &weight,
    };
    // input_blocks 0 is conv_in (no adapter); input_blocks 4 weighs 0.
    let want = (2..=21).filter(|&b| b != 5).collect();
    common::assert_block_wise(&lora, &run, &want);
    let meta = SafetensorsFile::open(&report.lora_path).unwrap();
    let args: serde_json::Value =
        serde_json::from_str(&meta.metadata()["ss_network_args"]).unwrap();
    assert_eq!(args["up_lr_weight"], "linear+0.25");
    assert_eq!(args["mid_lr_weight"], "0.5,1,0.75");

    // SD1.x's 25 ranks on the SDXL model: refused before any work, naming what SDXL takes.
    let sd1_dims = vec!["4"; 25].join(",");
    let sets = [
        format!("base_model={}", model.display()),
        format!("block_dims=\"{sd1_dims}\""),
    ];
    let cfg = TrainConfig::load(s.join("demo.yaml"), &sets).unwrap();
    let e = common::train_quietly(&cfg, &be).unwrap_err().to_string();
    assert!(
        e.contains("block_dims") && e.contains("23 values on SDXL"),
        "{e}"
    );
}
