//! End to end on the demo's tiny model of SD1.5's topology (random weights, real vocabulary)
//! and its synthetic shapes data set: training lowers the fixed-noise loss, the exported file
//! is exactly kohya's layout and loads back to the trained adapters, and a run interrupted
//! and resumed gives the same losses as one that never stopped.

use crate::common;
use common::tools::TempDir;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use lorafuse::config::TrainConfig;
use lorafuse::lora::{kohya, LayerKind};
use lorafuse::model::checkpoint::{load_sd15, Weights};
use lorafuse::model::unet::Unet;
use lorafuse::train::state;
use lorafuse::train::trainer::{train, Event, Observer, Recorder};
use lorafuse::{CpuBackend, DType};

/// A fresh folder, removed when dropped.
fn scratch(name: &str) -> TempDir {
    TempDir::new(&format!("e2e-{name}"))
}

fn config(demo: &Path, sets: &[String]) -> TrainConfig {
    TrainConfig::load(demo.join("demo.yaml"), sets).unwrap()
}

fn losses(events: &[Event]) -> Vec<(u64, f64)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Step { step, loss, .. } => Some((*step, *loss)),
            _ => None,
        })
        .collect()
}

#[test]
fn training_lowers_the_loss_and_exports_a_kohya_lora() {
    let dir = scratch("export");
    lorafuse::demo::prepare(&dir, 60).unwrap();
    let sets = vec![
        "save_precision=fp32".to_string(),
        "sample_every_n_steps=0".to_string(),
    ];
    let cfg = config(&dir, &sets);
    let be = CpuBackend::new();
    let mut rec = Recorder::default();
    let report = train(&cfg, &be, false, &AtomicBool::new(false), &mut rec).unwrap();
    assert_eq!(report.steps, 60);
    assert!(report.stopped.is_none() && !report.interrupted);
    // The same fixed noise and timesteps before and after: only the adapters differ.
    assert!(
        report.train_loss_after < 0.8 * report.train_loss_before,
        "loss {} -> {}",
        report.train_loss_before,
        report.train_loss_after
    );
    assert_eq!(losses(&rec.0).len(), 60);

    // Exactly kohya's keys and shapes: one down, up and 0-d alpha per target; 4-D for the
    // 1x1 convs proj_in/proj_out.
    let ck = load_sd15(&cfg.base_model).unwrap();
    let unet = Unet::load(&ck.unet.0, &ck.unet.1, &be, "unet").unwrap();
    let targets = unet.lora_targets(cfg.lora_targets);
    assert_eq!(targets.len(), 192);
    let file = Weights::open(&report.lora_path).unwrap();
    assert_eq!(file.len(), 3 * 192);
    for t in &targets {
        let (r, i, o) = (cfg.lora_rank, t.in_features, t.out_features);
        let (down, up): (Vec<usize>, Vec<usize>) = if t.kind == LayerKind::Conv1x1 {
            (vec![r, i, 1, 1], vec![o, r, 1, 1])
        } else {
            (vec![r, i], vec![o, r])
        };
        assert_eq!(
            file.shape(&format!("{}.lora_down.weight", t.name)),
            Some(&down[..]),
            "{}",
            t.name
        );
        assert_eq!(
            file.shape(&format!("{}.lora_up.weight", t.name)),
            Some(&up[..]),
            "{}",
            t.name
        );
        assert_eq!(
            file.shape(&format!("{}.alpha", t.name)),
            Some(&[][..]),
            "{}",
            t.name
        );
    }
    // Loading it back gives the trained adapters: the flat parameters of the saved state.
    let loaded = kohya::load(&report.lora_path, &be, DType::F32).unwrap();
    let saved = state::load(&report.state_path).unwrap();
    // The state is in target order, the file by name: compare module by module.
    let mut at = 0;
    let state_params = saved.1["unet.params"].to_f32_vec();
    for t in &targets {
        let m = &loaded.modules()[loaded.find(&t.name).unwrap()];
        let n = m.down.numel() + m.up.numel();
        let mine: Vec<f32> = m
            .down
            .to_f32_vec()
            .into_iter()
            .chain(m.up.to_f32_vec())
            .collect();
        assert_eq!(mine, state_params[at..at + n], "{}", t.name);
        assert_eq!(m.alpha, cfg.lora_alpha);
        at += n;
    }
    assert_eq!(at, state_params.len());
    assert!(state_params.iter().any(|&v| v != 0.0));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Raises the stop flag after step `at`, as Ctrl-C would.
struct StopAt<'a> {
    flag: &'a AtomicBool,
    at: u64,
    rec: Recorder,
}

impl Observer for StopAt<'_> {
    fn on(&mut self, e: Event) {
        if let Event::Step { step, .. } = e {
            if step == self.at {
                self.flag.store(true, Ordering::SeqCst);
            }
        }
        self.rec.on(e);
    }
}

#[test]
fn resume_after_an_interruption_gives_the_same_losses() {
    let be = CpuBackend::new();
    let straight = scratch("straight");
    lorafuse::demo::prepare(&straight, 30).unwrap();
    // Accumulation, flips, caption shuffling, LoRA dropout and the text encoder's adapters (a
    // second optimizer), so every kind of draw and state is resumed.
    let sets: Vec<String> = [
        "sample_every_n_steps=0",
        "gradient_accumulation_steps=2",
        "flip_aug=true",
        "shuffle_caption=true",
        "batch_size=2",
        "lora_dropout=0.1",
        "train_text_encoder=true",
        "text_encoder_lr=0.0005",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let cfg = config(&straight, &sets);
    let mut all = Recorder::default();
    let full = train(&cfg, &be, false, &AtomicBool::new(false), &mut all).unwrap();
    assert_eq!(full.steps, 30);

    let broken = scratch("broken");
    lorafuse::demo::prepare(&broken, 30).unwrap();
    let cfg2 = config(&broken, &sets);
    let flag = AtomicBool::new(false);
    let mut first = StopAt {
        flag: &flag,
        at: 13,
        rec: Recorder::default(),
    };
    let part = train(&cfg2, &be, false, &flag, &mut first).unwrap();
    assert!(part.interrupted && part.steps == 13, "{part:?}");
    assert!(part.stopped.as_deref().unwrap_or("").contains("--resume"));
    let mut second = Recorder::default();
    let rest = train(&cfg2, &be, true, &AtomicBool::new(false), &mut second).unwrap();
    assert_eq!(rest.steps, 30);
    let mut joined = losses(&first.rec.0);
    joined.extend(losses(&second.0));
    assert_eq!(
        joined,
        losses(&all.0),
        "the resumed run's losses equal the uninterrupted run's"
    );
    // And the final adapters are the same bits.
    let (pa, a) = state::load(&full.state_path).unwrap();
    let (pb, b) = state::load(&rest.state_path).unwrap();
    // Both optimizer groups (the UNet's and the text encoder's adapters), AdamW's moments,
    // and the best adapters of the validations so far (early stopping).
    let names: Vec<&str> = a.keys().map(String::as_str).collect();
    let want = ["best", "m", "params", "v"];
    let want: Vec<String> = ["text_encoder", "unet"]
        .iter()
        .flat_map(|g| want.iter().map(move |t| format!("{g}.{t}")))
        .collect();
    assert_eq!(names, want);
    for (name, t) in &a {
        assert_eq!(t.to_f32_vec(), b[name].to_f32_vec(), "{name}");
    }
    assert_eq!(pa.train_losses, pb.train_losses);
    // Resuming under other settings is refused, naming the keys that differ.
    let other: Vec<String> = sets
        .iter()
        .map(|s| match s.as_str() {
            "flip_aug=true" => "flip_aug=false".to_string(),
            "lora_dropout=0.1" => "lora_dropout=0.2".to_string(),
            _ => s.clone(),
        })
        .collect();
    let e = train(
        &config(&broken, &other),
        &be,
        true,
        &AtomicBool::new(false),
        &mut Recorder::default(),
    )
    .expect_err("other settings must not resume")
    .to_string();
    assert!(e.contains("computes: flip_aug, lora_dropout;"), "{e}");
    let _ = std::fs::remove_dir_all(&straight);
    let _ = std::fs::remove_dir_all(&broken);
}

#[test]
fn early_stopping_keeps_the_best_adapters_and_says_why() {
    let dir = scratch("early");
    lorafuse::demo::prepare(&dir, 60).unwrap();
    // An improvement must beat the best by 10: after the first validation none can, so the
    // run stops at the second one and keeps the adapters of the first.
    let sets: Vec<String> = [
        "sample_every_n_steps=0",
        "validate_every_n_steps=5",
        "early_stopping_patience=1",
        "early_stopping_min_delta=10",
        "save_precision=fp32",
        "save_every_n_steps=1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let cfg = config(&dir, &sets);
    let be = CpuBackend::new();
    let mut rec = Recorder::default();
    let report = train(&cfg, &be, false, &AtomicBool::new(false), &mut rec).unwrap();
    assert_eq!(report.steps, 10, "stopped at the second validation");
    let why = report.stopped.clone().unwrap();
    assert!(
        why.contains("early stopping") && why.contains("step 5"),
        "{why}"
    );
    assert_eq!(report.best_validation.map(|(s, _)| s), Some(5));
    let vals: Vec<bool> = rec
        .0
        .iter()
        .filter_map(|e| {
            if let Event::Validation { best, .. } = e {
                Some(*best)
            } else {
                None
            }
        })
        .collect();
    assert_eq!(vals, vec![true, false]);
    // The exported LoRA is the step-5 checkpoint, not a later one.
    let values = |p: &Path| -> Vec<f32> {
        let set = kohya::load(p, &be, DType::F32).unwrap();
        set.modules()
            .iter()
            .flat_map(|m| m.down.to_f32_vec().into_iter().chain(m.up.to_f32_vec()))
            .collect()
    };
    let out = dir.join("output");
    let final_ = values(&report.lora_path);
    assert_eq!(
        final_,
        values(&out.join("demo-shapes-step00000005.safetensors"))
    );
    assert_ne!(
        final_,
        values(&out.join("demo-shapes-step00000009.safetensors"))
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn latents_cached_on_disk_are_reused() {
    let dir = scratch("diskcache");
    lorafuse::demo::prepare(&dir, 3).unwrap();
    let sets: Vec<String> = ["sample_every_n_steps=0", "cache_latents_to_disk=true"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let cfg = config(&dir, &sets);
    let be = CpuBackend::new();
    let first = common::train_quietly(&cfg, &be).unwrap();
    // One folder, of this model; one file per image in it.
    let models: Vec<_> = std::fs::read_dir(dir.join("output/cache/latents"))
        .unwrap()
        .collect();
    assert_eq!(models.len(), 1);
    let cache = models[0].as_ref().unwrap().path();
    let files: Vec<_> = std::fs::read_dir(&cache).unwrap().collect();
    assert_eq!(files.len(), 12, "one latent file per image");
    // A second run reads them (same losses), and a damaged file is simply encoded again.
    let victim = files[0].as_ref().unwrap().path();
    std::fs::write(&victim, b"garbage").unwrap();
    let second = common::train_quietly(&cfg, &be).unwrap();
    assert_eq!(first.train_loss_after, second.train_loss_after);
    assert!(
        std::fs::read(&victim).unwrap().starts_with(b"LFLT"),
        "re-encoded"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn text_encoder_adapters_train_and_export() {
    let dir = scratch("te");
    lorafuse::demo::prepare(&dir, 20).unwrap();
    let sets: Vec<String> = [
        "sample_every_n_steps=0",
        "train_text_encoder=true",
        "text_encoder_lr=0.001",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let cfg = config(&dir, &sets);
    let be = CpuBackend::new();
    let report = common::train_quietly(&cfg, &be).unwrap();
    assert!(report.train_loss_after < report.train_loss_before);
    let lora = kohya::load(&report.lora_path, &be, DType::F32).unwrap();
    let te: Vec<_> = lora
        .modules()
        .iter()
        .filter(|m| m.name.starts_with("lora_te_"))
        .collect();
    // The demo's text encoder has 2 layers: 6 adapters each (SD1.5's 12 layers give 72).
    assert_eq!((lora.len(), te.len()), (192 + 12, 12));
    assert!(te
        .iter()
        .any(|m| m.name == "lora_te_text_model_encoder_layers_0_self_attn_q_proj"));
    // B starts at zero: a trained text-encoder adapter has a non-zero B.
    assert!(
        te.iter()
            .all(|m| m.up.to_f32_vec().iter().any(|&v| v != 0.0)),
        "every text-encoder adapter was trained"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// kohya's max_token_length 225 with the text encoder trained: captions of up to 225 tokens
/// train through three 75-token windows (the UNet reads 227 states), samples are made, and
/// the long-caption warning counts the images whose caption is cut.
#[test]
fn training_with_max_token_length_225_runs_and_warns_about_cut_captions() {
    use lorafuse::model::tokenizer::Tokenizer;
    use lorafuse::train::inputs::long_captions;
    use lorafuse::train::loop_io::scan_data;
    let dir = scratch("tokens225");
    let demo = lorafuse::demo::prepare(&dir, 2).unwrap();
    let mut captions: Vec<PathBuf> = walk(&demo.data)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    captions.sort();
    // "cat" is one token: captions of 300 tokens and of 100.
    let t = Tokenizer::new().unwrap();
    let words = |n: usize| vec!["cat"; n].join(" ");
    assert_eq!(t.tokenize(&words(300)).len(), 300);
    std::fs::write(&captions[0], words(300)).unwrap();
    std::fs::write(&captions[1], words(100)).unwrap();
    std::fs::write(&captions[2], words(100)).unwrap();
    let sets: Vec<String> = [
        "max_token_length=225",
        "train_text_encoder=true",
        "shuffle_caption=true",
    ]
    .map(String::from)
    .to_vec();
    let cfg = config(&dir, &sets);
    let be = CpuBackend::new();
    let mut rec = Recorder::default();
    let report = train(&cfg, &be, false, &AtomicBool::new(false), &mut rec).unwrap();
    assert_eq!(report.steps, 2);
    assert!(losses(&rec.0).iter().all(|(_, l)| l.is_finite()));
    let warnings = texts(&rec.0, "max_token_length");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].starts_with("1 image(s) have a caption longer than max_token_length = 225"),
        "{}",
        warnings[0]
    );
    assert!(warnings[0].contains("300 tokens"), "{}", warnings[0]);
    // At 75 tokens, all three are cut; at 150, the one.
    let ds = scan_data(&cfg).unwrap();
    assert_eq!(long_captions(&ds, &t, 75).0, 3);
    assert_eq!(long_captions(&ds, &t, 150).0, 1);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The warnings and information lines that contain `part`.
fn texts<'e>(events: &'e [Event], part: &str) -> Vec<&'e String> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Warning(t) | Event::Info(t) if t.contains(part) => Some(t),
            _ => None,
        })
        .collect()
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// network_weights: a second run starts from the first run's LoRA, all its adapters loaded.
#[test]
fn a_run_starts_from_network_weights() {
    let dir = scratch("netweights");
    lorafuse::demo::prepare(&dir, 2).unwrap();
    let be = CpuBackend::new();
    let first = config(&dir, &["sample_every_n_steps=0".to_string()]);
    let report = common::train_quietly(&first, &be).unwrap();
    let sets = vec![
        "sample_every_n_steps=0".to_string(),
        format!("network_weights={}", report.lora_path.display()),
        format!("output_dir={}", dir.join("second").display()),
    ];
    let second = config(&dir, &sets);
    let mut rec = Recorder::default();
    let again = train(&second, &be, false, &AtomicBool::new(false), &mut rec).unwrap();
    assert_eq!(again.steps, 2);
    let info = texts(&rec.0, "network_weights ");
    assert_eq!(info.len(), 1, "{info:?}");
    assert!(
        info[0].contains(": 192 adapters loaded, 0 of the file not used, 0 not in the file"),
        "{}",
        info[0]
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A learning rate of 0 freezes that part, as in kohya: from a LoRA with UNet and
/// text-encoder adapters, `unet_lr=0` (kohya's `network_train_text_encoder_only` is the same
/// key, `train_unet: false`) keeps every UNet adapter exactly as loaded and trains the text
/// encoder's; `text_encoder_lr=0` trains the UNet's alone.
#[test]
fn a_learning_rate_of_zero_freezes_that_part() {
    let dir = scratch("freeze");
    lorafuse::demo::prepare(&dir, 2).unwrap();
    let be = CpuBackend::new();
    let base = |extra: &[&str]| -> Vec<String> {
        ["sample_every_n_steps=0", "save_precision=fp32"]
            .iter()
            .chain(extra)
            .map(|s| s.to_string())
            .collect()
    };
    let run = |sets: Vec<String>| {
        let cfg = config(&dir, &sets);
        common::train_quietly(&cfg, &be).unwrap()
    };
    let first = run(base(&["train_text_encoder=true"]));
    let start = kohya::load(&first.lora_path, &be, DType::F32).unwrap();
    let count = |prefix: &str| {
        start
            .modules()
            .iter()
            .filter(|m| m.name.starts_with(prefix))
            .count()
    };
    let (n_unet, n_te) = (count("lora_unet_"), count("lora_te_"));
    assert!(n_unet > 0 && n_te > 0, "{n_unet} {n_te}");
    let weights = format!("network_weights={}", first.lora_path.display());
    let changed = |path: &Path, prefix: &str| -> (usize, usize) {
        let after = kohya::load(path, &be, DType::F32).unwrap();
        let mut n = (0, 0);
        for m in after
            .modules()
            .iter()
            .filter(|m| m.name.starts_with(prefix))
        {
            let old = &start.modules()[start.find(&m.name).unwrap()];
            let same = m.up.to_f64_vec() == old.up.to_f64_vec()
                && m.down.to_f64_vec() == old.down.to_f64_vec();
            if same {
                n.0 += 1;
            } else {
                n.1 += 1;
            }
        }
        n
    };
    let out = format!("output_dir={}", dir.join("te_only").display());
    let te_only = run(base(&[
        "train_text_encoder=true",
        "unet_lr=0",
        &weights,
        &out,
    ]));
    let (same, moved) = changed(&te_only.lora_path, "lora_unet_");
    assert!(
        same == n_unet && moved == 0,
        "UNet: {same} kept, {moved} changed"
    );
    let (same, moved) = changed(&te_only.lora_path, "lora_te_");
    assert!(
        same == 0 && moved == n_te,
        "text encoder: {same} kept, {moved} changed"
    );

    let out = format!("output_dir={}", dir.join("unet_only").display());
    let unet_only = run(base(&[
        "train_text_encoder=true",
        "text_encoder_lr=0",
        &weights,
        &out,
    ]));
    let (same, moved) = changed(&unet_only.lora_path, "lora_unet_");
    assert!(
        same == 0 && moved == n_unet,
        "UNet: {same} kept, {moved} changed"
    );
    let after = kohya::load(&unet_only.lora_path, &be, DType::F32).unwrap();
    assert!(after
        .modules()
        .iter()
        .all(|m| m.name.starts_with("lora_unet_")));
    let _ = std::fs::remove_dir_all(&dir);
}

/// kohya's saving: `save_state` keeps each save point's state beside its LoRA, both named as
/// sd-scripts names them and pruned by `save_last_n_steps`; the `resume` key continues from a
/// save point's state file, and gives the same final LoRA, bit for bit, as the run that never
/// stopped. A kohya state folder as `resume` is refused naming the key.
#[test]
fn save_state_keeps_save_points_and_resume_continues_from_one() {
    let dir = scratch("save_state");
    lorafuse::demo::prepare(&dir, 3).unwrap();
    let be = CpuBackend::new();
    let sets = |extra: &[String]| -> Vec<String> {
        [
            "sample_every_n_steps=0",
            "save_precision=fp32",
            "save_every_n_steps=1",
            "save_state=true",
            "save_last_n_steps=1",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain(extra.iter().cloned())
        .collect()
    };
    let cfg = config(&dir, &sets(&[]));
    let full = common::train_quietly(&cfg, &be).unwrap();
    assert_eq!(full.steps, 3);
    let mut files: Vec<String> = std::fs::read_dir(&cfg.output_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".safetensors"))
        .collect();
    files.sort();
    // Saves at steps 1 and 2 (the end is the final LoRA); save_last_n_steps = 1 keeps the
    // saves of steps ≥ 2 − 1, as sd-scripts' get_remove_step_no.
    assert_eq!(
        files,
        [
            "demo-shapes-step00000001-state.safetensors",
            "demo-shapes-step00000001.safetensors",
            "demo-shapes-step00000002-state.safetensors",
            "demo-shapes-step00000002.safetensors",
            "demo-shapes.safetensors",
            "state.safetensors",
        ]
    );

    let state = cfg
        .output_dir
        .join("demo-shapes-step00000001-state.safetensors");
    let out = dir.join("resumed");
    let again = config(
        &dir,
        &sets(&[
            format!("resume={}", state.display()),
            format!("output_dir={}", out.display()),
        ]),
    );
    let mut rec = Recorder::default();
    let resumed = train(&again, &be, false, &AtomicBool::new(false), &mut rec).unwrap();
    assert_eq!(resumed.steps, 3);
    assert_eq!(losses(&rec.0).len(), 2, "steps 2 and 3 only");
    let a = kohya::load(&full.lora_path, &be, DType::F32).unwrap();
    let b = kohya::load(&resumed.lora_path, &be, DType::F32).unwrap();
    for (x, y) in a.modules().iter().zip(b.modules()) {
        assert_eq!(x.name, y.name);
        assert_eq!(x.up.to_f64_vec(), y.up.to_f64_vec(), "{}", x.name);
        assert_eq!(x.down.to_f64_vec(), y.down.to_f64_vec(), "{}", x.name);
    }

    // A kohya (accelerate) state folder.
    let kohya_state = dir.join("last-state");
    std::fs::create_dir_all(&kohya_state).unwrap();
    std::fs::write(kohya_state.join("train_state.json"), "{}").unwrap();
    let bad = config(&dir, &sets(&[format!("resume={}", kohya_state.display())]));
    let e = bad.check_paths().unwrap_err().to_string();
    assert!(
        e.contains("resume")
            && e.contains("kohya (accelerate) state folder")
            && e.contains("network_weights"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `random_crop` crops at random for every training sample: such images are encoded at every
/// step (their latents cannot be cached, and sd-scripts refuses random_crop with
/// cache_latents), the VAE stays loaded, and the metadata says what was done (ss_random_crop True, ss_cache_latents False).
#[test]
fn random_crop_draws_a_crop_for_every_training_sample() {
    use lorafuse::model::checkpoint::safetensors::SafetensorsFile;
    use lorafuse::model::family::WeightsFrom;
    use lorafuse::rng::Rng;
    use lorafuse::train::cache::Pixels;
    use lorafuse::train::inputs::Draw;
    use lorafuse::train::trainer::{PhaseHook, Run};
    struct Quiet;
    impl PhaseHook for Quiet {}
    let dir = scratch("random_crop");
    lorafuse::demo::prepare(&dir, 2).unwrap();
    // A 192x128 image in a 128x128 bucket: 64 pixels of room for the crop.
    let data = dir.join("wide").join("1_wide");
    std::fs::create_dir_all(&data).unwrap();
    let fixture = Path::new("tests/fixtures/kohya_meta/train/10_sks dog");
    for f in ["a.png", "a.txt"] {
        std::fs::copy(fixture.join(f), data.join(f)).unwrap();
    }
    let sets = |crop: bool| -> Vec<String> {
        vec![
            "sample_every_n_steps=0".into(),
            format!("train_data_dir={}", dir.join("wide").display()),
            "resolution=128".into(),
            "enable_bucket=false".into(),
            format!("random_crop={crop}"),
        ]
    };
    let be = CpuBackend::new();
    let latents = |crop: bool, seeds: &[u64]| -> Vec<Vec<f64>> {
        let cfg = config(&dir, &sets(crop));
        let ds = lorafuse::train::loop_io::scan_data(&cfg).unwrap();
        let from = WeightsFrom::Checkpoint(&cfg.base_model);
        let mut run = Run::prepare(&cfg, &be, ds, from, Pixels::Files, &mut Quiet).unwrap();
        seeds
            .iter()
            .map(|&s| {
                let draw = Draw::Train { epoch: 0 };
                let b = run
                    .inputs
                    .batch(&be, &run.models, draw, &[0], &mut Rng::new(s))
                    .unwrap();
                b.latents.to_f64_vec()
            })
            .collect()
    };
    let fixed = latents(false, &[1, 2]);
    assert_eq!(
        fixed[0], fixed[1],
        "without random_crop the latents are cached"
    );
    let cropped = latents(true, &[1, 2, 1]);
    assert_ne!(cropped[0], cropped[1], "two draws, two crops");
    assert_eq!(cropped[0], cropped[2], "the same draw, the same crop");
    assert_ne!(cropped[0], fixed[0]);

    let cfg = config(&dir, &sets(true));
    let report = common::train_quietly(&cfg, &be).unwrap();
    let file = SafetensorsFile::open(&report.lora_path).unwrap();
    assert_eq!(file.metadata()["ss_random_crop"], "True");
    assert_eq!(file.metadata()["ss_cache_latents"], "False");
    let _ = std::fs::remove_dir_all(&dir);
}

/// SD2.x end to end on a tiny 768-v model of its topology (demo::model::write_tiny_sd2: Linear
/// projections, GELU text encoder padding with `!`, v-prediction in the scheduler config):
/// the family is read from the folder, a config without `v_parameterization: true` is refused
/// naming the scheduler config, training lowers the fixed-noise loss with LoRA on the UNet and
/// the text encoder, and the file carries kohya's SD2 v metadata, loads back onto the model's
/// layers (the projections 2-D) and `sample` draws with it.
#[test]
fn an_sd2_v_model_trains_exports_and_samples() {
    use lorafuse::model::family::{family_of, WeightsFrom};
    let dir = scratch("sd2");
    lorafuse::demo::prepare(&dir, 40).unwrap();
    let model = lorafuse::demo::model::write_tiny_sd2(&dir.join("sd2"), 9).unwrap();
    assert_eq!(family_of(&model).unwrap().id(), "sd2");
    let mut sets: Vec<String> = vec![
        format!("base_model={}", model.display()),
        "save_precision=fp32".into(),
        "sample_every_n_steps=0".into(),
        "train_text_encoder=true".into(),
        "text_encoder_lr=0.001".into(),
    ];
    let be = CpuBackend::new();
    let stop = AtomicBool::new(false);
    let e = train(
        &config(&dir, &sets),
        &be,
        false,
        &stop,
        &mut Recorder::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("v_parameterization") && e.contains("v_prediction"),
        "{e}"
    );
    sets.push("v_parameterization=true".into());
    let cfg = config(&dir, &sets);
    let report = train(&cfg, &be, false, &stop, &mut Recorder::default()).unwrap();
    common::assert_loss_fell("tiny SD2 768-v, 40 steps", &report, 0.9);
    let file =
        lorafuse::model::checkpoint::safetensors::SafetensorsFile::open(&report.lora_path).unwrap();
    let meta = file.metadata();
    assert_eq!(meta["ss_v2"], "True");
    assert_eq!(meta["ss_base_model_version"], "sd_v2_v");
    assert_eq!(meta["modelspec.prediction_type"], "v");
    let proj = "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight";
    assert_eq!(file.tensor_info(proj).unwrap().shape.len(), 2, "{proj}");
    let m = family_of(&model)
        .unwrap()
        .load(WeightsFrom::Checkpoint(&model), &be, &mut |_| {})
        .unwrap();
    let set = kohya::load(&report.lora_path, &be, DType::F32).unwrap();
    let (targets, _) = m.adapter_targets(cfg.lora_targets, true);
    assert_eq!(set.modules().len(), targets.len());
    assert!(set.modules().iter().any(|m| m.name.starts_with("lora_te_")));
    common::tools::sample_with_lora(&model, &report.lora_path, &dir.join("sd2.png"));
}
