//! LoCon end to end on the demo's tiny model: `conv_dim` / `conv_alpha` put adapters on the
//! UNet's 3x3 convs too (after the linear ones, at their own rank and alpha; the ResNets'
//! time_emb_proj and conv_shortcut at the linear rank, as sd-scripts), training with
//! them lowers the fixed-noise loss, and the exported file holds them in kohya's shapes with
//! `conv_dim` / `conv_alpha` in `ss_network_args`. Prints the fixed-noise loss after the same
//! steps with and without LoCon. LoHa and DoRA (LyCORIS's kinds) train and export the same way.

use crate::common;
use common::tools::TempDir;
use std::path::Path;

use lorafuse::config::TrainConfig;
use lorafuse::lora::{kohya, LayerKind};
use lorafuse::model::checkpoint::safetensors::SafetensorsFile;
use lorafuse::model::checkpoint::{load_sd15, Weights};
use lorafuse::model::unet::Unet;
use lorafuse::train::trainer::TrainReport;
use lorafuse::{CpuBackend, DType};

/// A fresh folder, removed when dropped.
fn scratch(name: &str) -> TempDir {
    TempDir::new(&format!("locon-{name}"))
}

fn run(demo: &Path, extra: &[&str]) -> (TrainConfig, TrainReport) {
    let mut sets = vec![
        "save_precision=fp32".to_string(),
        "sample_every_n_steps=0".to_string(),
    ];
    sets.extend(extra.iter().map(|s| s.to_string()));
    let cfg = TrainConfig::load(demo.join("demo.yaml"), &sets).unwrap();
    let be = CpuBackend::new();
    let report = common::train_quietly(&cfg, &be).unwrap();
    (cfg, report)
}

#[test]
fn locon_trains_and_exports_kohya_conv_adapters() {
    let dir = scratch("demo");
    lorafuse::demo::prepare(&dir, 40).unwrap();
    let (_, plain) = run(&dir, &["output_name=plain"]);
    let (cfg, locon) = run(&dir, &["output_name=locon", "conv_dim=8", "conv_alpha=4"]);
    println!(
        "fixed-noise training loss after {} steps: LoRA {:.6} -> {:.6}, LoCon (conv_dim 8, \
         conv_alpha 4) {:.6} -> {:.6}",
        locon.steps,
        plain.train_loss_before,
        plain.train_loss_after,
        locon.train_loss_before,
        locon.train_loss_after
    );
    assert_eq!(plain.steps, locon.steps);
    // Both start from the base model (B = 0).
    assert_eq!(plain.train_loss_before, locon.train_loss_before);
    assert!(locon.train_loss_after < 0.8 * locon.train_loss_before);

    let be = CpuBackend::new();
    let ck = load_sd15(&cfg.base_model).unwrap();
    let unet = Unet::load(&ck.unet.0, &ck.unet.1, &be, "unet").unwrap();
    let convs = unet.conv_targets();
    let extra = unet.resnet_linear_targets();
    let file = Weights::open(&locon.lora_path).unwrap();
    assert_eq!(file.len(), 3 * (192 + convs.len() + extra.len()));
    for t in &extra {
        let (down, up) = t
            .kind
            .kohya_shapes(cfg.lora_rank, t.in_features, t.out_features);
        let shape = |s: &str| file.shape(&format!("{}{s}", t.name)).map(<[usize]>::to_vec);
        assert_eq!(shape(".lora_down.weight"), Some(down), "{}", t.name);
        assert_eq!(shape(".lora_up.weight"), Some(up), "{}", t.name);
    }
    for t in &convs {
        let (i, o) = (t.in_features, t.out_features);
        let shape = |s: &str| file.shape(&format!("{}{s}", t.name)).map(<[usize]>::to_vec);
        assert_eq!(
            shape(".lora_down.weight"),
            Some(vec![8, i, 3, 3]),
            "{}",
            t.name
        );
        assert_eq!(
            shape(".lora_up.weight"),
            Some(vec![o, 8, 1, 1]),
            "{}",
            t.name
        );
    }
    let meta = SafetensorsFile::open(&locon.lora_path).unwrap();
    let args = &meta.metadata()["ss_network_args"];
    assert!(
        args.contains("\"conv_dim\": \"8\"") || args.contains("\"conv_dim\":\"8\""),
        "{args}"
    );
    // Loaded back: conv kinds with alpha 4, the linear ones untouched by conv_alpha.
    let lora = kohya::load(&locon.lora_path, &be, DType::F32).unwrap();
    for m in lora.modules() {
        if matches!(m.kind, LayerKind::Conv { kernel: 3 }) {
            assert_eq!((m.rank(), m.alpha), (8, 4.0), "{}", m.name);
            assert!(
                m.up.to_f32_vec().iter().any(|&v| v != 0.0),
                "{} trained",
                m.name
            );
        } else {
            assert_eq!(
                (m.rank(), m.alpha),
                (cfg.lora_rank, cfg.lora_alpha),
                "{}",
                m.name
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// LoCon with dropout on the adapters' hidden (the conv masks' path) still trains.
#[test]
fn locon_with_dropout_trains() {
    let dir = scratch("dropout");
    lorafuse::demo::prepare(&dir, 10).unwrap();
    let (_, r) = run(&dir, &["conv_dim=4", "lora_dropout=0.2"]);
    assert!(r.train_loss_after < r.train_loss_before, "{r:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// kohya's block-wise ranks and learning rates (lora/blocks.rs), given as sd-scripts'
/// network_args in a kohya-format config would be: each UNet adapter takes its block's rank
/// and alpha (conv adapters their conv block's), a block of lr weight 0 gets no adapters,
/// and one AdamW step moves each block's up matrices by lr × its weight (Adam's first step
/// is ±lr per element wherever the gradient is not tiny).
#[test]
fn block_ranks_and_lr_weights_as_kohya() {
    use lorafuse::lora::blocks::{BlockLayout, BLOCKS};
    let dir = scratch("blocks");
    lorafuse::demo::prepare(&dir, 1).unwrap();
    let dims: Vec<usize> = (0..BLOCKS).map(|b| 1 + b % 4).collect();
    let conv_dims: Vec<usize> = (0..BLOCKS).map(|b| 2 + b % 3).collect();
    let mut alphas = [0.0; BLOCKS];
    alphas[13] = 0.5;
    let list = |v: Vec<String>| format!("[{}]", v.join(", "));
    let text = |v: &[usize]| list(v.iter().map(|d| d.to_string()).collect());
    // IN05 has weight 0: no adapters there; the up blocks weigh 0.25 to 1.
    let down = "1,1,1,1,1,0,1,1,1,1,1,1";
    let up: Vec<String> = (0..12)
        .map(|i| format!("{}", 0.25 + i as f64 / 16.0))
        .collect();
    let lr = 0.001;
    let (cfg, report) = run(
        &dir,
        &[
            "output_name=blocks",
            "max_train_steps=1",
            "lr_scheduler=constant",
            "num_warmup_steps=0",
            &format!("learning_rate={lr}"),
            "conv_dim=2",
            &format!("block_dims={}", text(&dims)),
            &format!(
                "block_alphas={}",
                list(alphas.iter().map(|a| a.to_string()).collect())
            ),
            &format!("conv_block_dims={}", text(&conv_dims)),
            &format!("down_lr_weight=\"{down}\""),
            "mid_lr_weight=[0.5]",
            &format!("up_lr_weight={}", list(up.clone())),
        ],
    );
    let weight = |b: usize| match b {
        5 => 0.0,
        12 => 0.5,
        b if b > 12 => 0.25 + (b - 13) as f64 / 16.0,
        _ => 1.0,
    };
    let be = CpuBackend::new();
    let lora = kohya::load(&report.lora_path, &be, DType::F32).unwrap();
    let run = common::BlockWise {
        layout: BlockLayout::Sd,
        dims: &dims,
        conv_dims: &conv_dims,
        half_alpha: 13,
        lr,
        weight: &weight,
    };
    // Block 0 (conv_in) has no adapter; block 5 weighs 0.
    let want = (1..BLOCKS).filter(|&b| b != 5).collect();
    common::assert_block_wise(&lora, &run, &want);
    let meta = SafetensorsFile::open(&report.lora_path).unwrap();
    let args: serde_json::Value =
        serde_json::from_str(&meta.metadata()["ss_network_args"]).unwrap();
    assert_eq!(args["down_lr_weight"], down);
    assert_eq!(args["mid_lr_weight"], "0.5");
    assert_eq!(
        args["block_dims"].as_str().unwrap().split(',').count(),
        BLOCKS
    );
    assert_eq!(cfg.block_dims.as_deref(), Some(&dims[..]));
    let _ = std::fs::remove_dir_all(&dir);
}

/// LoHa (`algo: loha`, LyCORIS's) end to end: training from ΔW = 0 lowers the fixed-noise
/// loss, the file holds LyCORIS's keys and metadata and loads back to the trained values
/// (the state's flat parameters), and a run resumed from a save point ends with the same
/// adapters bit for bit. Prints the fixed-noise loss after training.
#[test]
fn loha_trains_exports_loads_and_resumes() {
    let dir = scratch("loha");
    lorafuse::demo::prepare(&dir, 20).unwrap();
    let loha = ["algo=loha", "conv_dim=8", "conv_alpha=4"];
    let (cfg, r) = run(&dir, &[&["output_name=loha"][..], &loha].concat());
    println!(
        "fixed-noise training loss after {} steps: LoHa (lora_rank {}, conv_dim 8, conv_alpha 4) {:.6} -> {:.6}",
        r.steps, cfg.lora_rank, r.train_loss_before, r.train_loss_after
    );
    assert!(r.train_loss_after < 0.9 * r.train_loss_before, "{r:?}");

    let be = CpuBackend::new();
    let ck = load_sd15(&cfg.base_model).unwrap();
    let unet = Unet::load(&ck.unet.0, &ck.unet.1, &be, "unet").unwrap();
    let n_modules = 192 + unet.conv_targets().len() + unet.resnet_linear_targets().len();
    let file = Weights::open(&r.lora_path).unwrap();
    assert_eq!(file.len(), 5 * n_modules, "hada_w1_a/b, hada_w2_a/b, alpha");
    for t in unet.conv_targets() {
        let shape = |s: &str| file.shape(&format!("{}{s}", t.name)).map(<[usize]>::to_vec);
        let (o, n) = (t.out_features, t.in_features * 9);
        assert_eq!(shape(".hada_w1_a"), Some(vec![o, 8]), "{}", t.name);
        assert_eq!(shape(".hada_w2_b"), Some(vec![8, n]), "{}", t.name);
    }
    let meta = SafetensorsFile::open(&r.lora_path).unwrap();
    assert_eq!(meta.metadata()["ss_network_module"], "lycoris.kohya");
    let args = &meta.metadata()["ss_network_args"];
    assert!(
        args.contains("\"algo\"") && args.contains("\"loha\""),
        "{args}"
    );
    // Loaded back: the state's flat parameters, every tensor trained (w2_a starts at 0).
    let lora = kohya::load(&r.lora_path, &be, DType::F32).unwrap();
    assert!(lora.modules().iter().all(|m| m.hada().is_some()));
    let still: Vec<&str> = lora
        .modules()
        .iter()
        .filter(|m| m.algo.extra()[0].to_f32_vec().iter().all(|&v| v == 0.0))
        .map(|m| m.name.as_str())
        .collect();
    assert!(still.is_empty(), "{still:?}");
    let (_, state) = lorafuse::train::state::load(&r.state_path).unwrap();
    let mut flat: Vec<f32> = state["unet.params"].to_f32_vec();
    let mut loaded: Vec<f32> = lora
        .modules()
        .iter()
        .flat_map(|m| m.tensors())
        .flat_map(|t| t.to_f32_vec())
        .collect();
    flat.sort_by(f32::total_cmp);
    loaded.sort_by(f32::total_cmp);
    assert_eq!(flat, loaded, "the file holds the trained values exactly");

    // Resume from the save point of step 1 of a 3-step run: the same adapters.
    let short = scratch("loha-resume");
    lorafuse::demo::prepare(&short, 3).unwrap();
    let saves = ["save_every_n_steps=1", "save_state=true"];
    let (cfg, full) = run(&short, &[&loha[..], &saves].concat());
    let state = cfg
        .output_dir
        .join("demo-shapes-step00000001-state.safetensors");
    let resume = format!("resume={}", state.display());
    let out = format!("output_dir={}", short.join("resumed").display());
    let (_, resumed) = run(&short, &[&loha[..], &saves, &[&resume, &out]].concat());
    assert_eq!(resumed.steps, 3);
    let a = kohya::load(&full.lora_path, &be, DType::F32).unwrap();
    let b = kohya::load(&resumed.lora_path, &be, DType::F32).unwrap();
    for (x, y) in a.modules().iter().zip(b.modules()) {
        for (s, t) in x.tensors().into_iter().zip(y.tensors()) {
            assert_eq!(s.to_f32_vec(), t.to_f32_vec(), "{}", x.name);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&short);
}

/// DoRA (`dora_wd: true`, LyCORIS's `dora_wd=True`) with LoCon on the tiny model: a few steps
/// lower the fixed-noise loss; the file holds LyCORIS's keys (lora_down/lora_up/alpha and
/// `dora_scale` [out, 1] on linear layers, [out, 1, 1, 1] on the 1x1 and 3x3 convs), its
/// metadata LyCORIS's network args, and loading it gives the state's trained values, every
/// magnitude moved from its start (the frozen weight's row norms).
#[test]
fn dora_trains_exports_and_loads() {
    let dir = scratch("dora");
    lorafuse::demo::prepare(&dir, 6).unwrap();
    let args = ["dora_wd=true", "conv_dim=4", "conv_alpha=2"];
    let (cfg, r) = run(&dir, &[&["output_name=dora"][..], &args].concat());
    println!(
        "fixed-noise training loss after {} steps: DoRA (lora_rank {}, conv_dim 4) {:.6} -> {:.6}",
        r.steps, cfg.lora_rank, r.train_loss_before, r.train_loss_after
    );
    assert!(r.train_loss_after < 0.98 * r.train_loss_before, "{r:?}");

    let be = CpuBackend::new();
    let ck = load_sd15(&cfg.base_model).unwrap();
    let unet = Unet::load(&ck.unet.0, &ck.unet.1, &be, "unet").unwrap();
    let n_modules = 192 + unet.conv_targets().len() + unet.resnet_linear_targets().len();
    let file = Weights::open(&r.lora_path).unwrap();
    assert_eq!(
        file.len(),
        4 * n_modules,
        "lora_down, lora_up, dora_scale, alpha"
    );
    let targets = unet
        .lora_targets(lorafuse::lora::LoraTargets::Transformer)
        .into_iter()
        .chain(unet.conv_targets())
        .chain(unet.resnet_linear_targets());
    for t in targets {
        let want = lorafuse::lora::dora::magnitude_shape(t.kind, t.out_features);
        let got = file
            .shape(&format!("{}.dora_scale", t.name))
            .map(<[usize]>::to_vec);
        assert_eq!(got, Some(want), "{}", t.name);
    }
    let meta = SafetensorsFile::open(&r.lora_path).unwrap();
    assert_eq!(meta.metadata()["ss_network_module"], "lycoris.kohya");
    let args = &meta.metadata()["ss_network_args"];
    assert!(
        args.contains("\"dora_wd\": \"True\"") || args.contains("\"dora_wd\":\"True\""),
        "{args}"
    );
    assert!(
        args.contains("\"algo\"") && args.contains("\"lora\""),
        "{args}"
    );

    let lora = kohya::load(&r.lora_path, &be, DType::F32).unwrap();
    let weights = unet.adaptable_weights();
    for m in lora.modules() {
        let d = m.dora().expect("every module is DoRA");
        let w = weights.iter().find(|(n, _)| *n == m.name).unwrap().1;
        let start = lorafuse::lora::dora::initial_magnitude(&be, w, m.kind).unwrap();
        assert_ne!(
            d.magnitude.to_f32_vec(),
            start.to_f32_vec(),
            "{} trained",
            m.name
        );
    }
    let (_, state) = lorafuse::train::state::load(&r.state_path).unwrap();
    let mut flat: Vec<f32> = state["unet.params"].to_f32_vec();
    let mut loaded: Vec<f32> = lora
        .modules()
        .iter()
        .flat_map(|m| m.tensors())
        .flat_map(|t| t.to_f32_vec())
        .collect();
    flat.sort_by(f32::total_cmp);
    loaded.sort_by(f32::total_cmp);
    assert_eq!(flat, loaded, "the file holds the trained values exactly");
    let _ = std::fs::remove_dir_all(&dir);
}

/// DoRA on the text encoder too (`train_text_encoder: true`): every text-encoder module is
/// written with its `dora_scale` [out, 1], and its magnitudes moved from the frozen rows' norms.
#[test]
fn dora_trains_the_text_encoder() {
    let dir = scratch("dora-te");
    lorafuse::demo::prepare(&dir, 4).unwrap();
    let (cfg, r) = run(
        &dir,
        &[
            "dora_wd=true",
            "train_text_encoder=true",
            "text_encoder_lr=0.001",
        ],
    );
    let be = CpuBackend::new();
    let models = lorafuse::model::family::family_of(&cfg.base_model)
        .unwrap()
        .load(
            lorafuse::model::family::WeightsFrom::Checkpoint(&cfg.base_model),
            &be,
            &mut |_| {},
        )
        .unwrap();
    let lora = kohya::load(&r.lora_path, &be, DType::F32).unwrap();
    let te: Vec<_> = lora
        .modules()
        .iter()
        .filter(|m| m.name.starts_with("lora_te_"))
        .collect();
    assert_eq!(te.len(), models.text.as_ref().unwrap().lora_targets().len());
    for m in te {
        let d = m.dora().expect("every module is DoRA");
        assert_eq!(d.magnitude.dims(), [m.up.dims()[0], 1], "{}", m.name);
        let w = models.adaptable_weight(&m.name).unwrap();
        let start = lorafuse::lora::dora::initial_magnitude(&be, w, m.kind).unwrap();
        assert_ne!(
            d.magnitude.to_f32_vec(),
            start.to_f32_vec(),
            "{} trained",
            m.name
        );
    }
}
