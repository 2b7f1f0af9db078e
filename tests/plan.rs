//! The VRAM planner on the real SD1.5 configuration (metered, no GPU): its breakdown adds up
//! and scales as the shapes say, the fit search agrees with the plans around it, `train`
//! refuses a run the device cannot hold (on a meter pretending to be a small GPU), and the
//! `lorafuse plan` command prints the breakdown and refuses bad sizes with exit code 2.

use std::process::Command;
use std::sync::atomic::AtomicBool;

use lorafuse::backend::cuda::{CudaBackend, Device};
use lorafuse::config::TrainConfig;
use lorafuse::plan::fit::{fit, largest_batch};
use lorafuse::plan::{plan, PlanData, PlanInput};
use lorafuse::train::trainer::{train, Event, Observer};
use lorafuse::{DType, Error};

/// A plain step on ten images of `side`x`side`.
fn input(batch: usize, side: usize, rank: usize, dtype: DType) -> PlanInput {
    PlanInput {
        data: PlanData::Images {
            train: 10,
            validation: 0,
        },
        ..PlanInput::step(batch, side, side, rank, dtype)
    }
}

const MIB: f64 = (1 << 20) as f64;

#[test]
fn the_breakdown_adds_up_and_scales_with_the_shapes() {
    let p1 = plan(&input(1, 512, 8, DType::F16)).unwrap();
    let p2 = plan(&input(2, 512, 8, DType::F16)).unwrap();
    let p32 = plan(&input(1, 512, 8, DType::F32)).unwrap();
    let r32 = plan(&input(1, 512, 32, DType::F16)).unwrap();
    let unet = |p: &lorafuse::plan::MemoryPlan| p.weights[0].1 as f64;
    // SD1.5's UNet has 859.5 M parameters: 2 bytes each in f16, 4 in f32.
    assert!((unet(&p1) / 859.52e6 - 2.0).abs() < 0.01, "{}", unet(&p1));
    assert!((unet(&p32) / unet(&p1) - 2.0).abs() < 1e-3);
    // kohya's 192 targets at rank 8: 3 391 488 f32 parameters; the optimizer holds 4 copies.
    assert!(
        (p1.lora as f64 / (3_391_488.0 * 4.0) - 1.0).abs() < 0.01,
        "{}",
        p1.lora
    );
    assert!((p1.optimizer as f64 / p1.lora as f64 - 4.0).abs() < 0.01);
    // AdamW8bit: params and grads (4 + 4 bytes) and two moments of one byte per parameter
    // plus an f32 absmax per 256: 10.03 bytes per parameter against AdamW's 16.
    let mut eight = input(1, 512, 8, DType::F16);
    eight.cfg.optimizer_type = lorafuse::train::optim::OptimizerType::AdamW8bit;
    let p8 = plan(&eight).unwrap();
    let per_param = p8.optimizer as f64 / (p8.lora as f64 / 4.0);
    assert!(
        (per_param - (10.0 + 8.0 / 256.0)).abs() < 0.01,
        "{per_param}"
    );
    assert!((r32.lora as f64 / p1.lora as f64 - 4.0).abs() < 0.01);
    // The device's caches: 10 embeddings [1, 77, 768] in f16 (the 10 latents stay in host
    // memory, as sd-scripts keeps them), and nothing when captions are not cached.
    let emb = 77 * 768 * 2;
    assert_eq!(p1.cached, (10, 10));
    assert_eq!(p1.caches, 10 * emb);
    // Shuffled captions change every step: they are encoded then, not cached.
    let mut shuffled = input(1, 512, 8, DType::F16);
    shuffled.cfg.shuffle_caption = true;
    let no_captions = plan(&shuffled).unwrap();
    assert_eq!(no_captions.caches, 0);
    // The tape scales with the batch and the dtype; its blocks are the UNet's ten.
    assert_eq!(p1.tape.len(), 10);
    let t1 = p1.tape_bytes() as f64;
    assert!((p2.tape_bytes() as f64 / t1 - 2.0).abs() < 0.01);
    // f32 activations double everything but the f32 norm statistics and LoRA hiddens.
    let r = p32.tape_bytes() as f64 / t1;
    assert!(r > 1.9 && r < 2.0, "f32/f16 tape {r}");
    // The CPU tape bench measured 0.960 GiB in f32 at this size (benches/results).
    assert!((p32.tape_bytes() as f64 / (1u64 << 30) as f64 - 0.960).abs() < 0.005);
    // The peak is the parts plus a workspace, which is small beside them.
    assert_eq!(
        p1.training_peak,
        p1.resident() + p1.tape_bytes() + p1.workspace()
    );
    assert!(p1.workspace() as f64 > 0.0 && (p1.workspace() as f64) < 0.25 * t1);
    assert!(p2.peak() > p1.peak() && p1.peak() > p1.pool_peak());
    println!(
        "batch 1: peak {:.1} MiB (tape {:.1}, workspace {:.1}); batch 2: {:.1} MiB",
        p1.peak() as f64 / MIB,
        t1 / MIB,
        p1.workspace() as f64 / MIB,
        p2.peak() as f64 / MIB
    );
}

#[test]
fn the_fit_is_the_largest_size_that_fits() {
    let base = input(1, 512, 16, DType::F16);
    let budget = 6usize << 30;
    let f = fit(&base, budget).unwrap();
    let b = f.batch.expect("batch 1 fits 6 GiB");
    let peak = |i: PlanInput| plan(&i).unwrap().peak();
    assert!(peak(base.with_batch(b)) <= budget);
    assert!(peak(base.with_batch(b + 1)) > budget);
    let side = f.side.expect("some resolution fits");
    assert_eq!(side % 64, 0);
    let sq = |s: usize| base.with_side(s);
    assert!(peak(sq(side)) <= budget);
    if side < lorafuse::plan::fit::MAX_SIDE {
        assert!(peak(sq(side + 64)) > budget);
    }
    // Nothing fits in less than the weights.
    let none = fit(&base, 1 << 30).unwrap();
    assert_eq!((none.batch, none.side), (None, None));
}

/// Gradient checkpointing on SD1.5 at 512x512, rank 8, fp16: the tape (and so the peak)
/// shrinks at batch 1 and 4, and the fit search says what checkpointing would fit.
#[test]
fn checkpointing_shrinks_the_tape_and_the_fit_search_offers_it() {
    for batch in [1, 4] {
        let plain = plan(&input(batch, 512, 8, DType::F16)).unwrap();
        let ckpt = plan(&input(batch, 512, 8, DType::F16).with_checkpointing(true)).unwrap();
        println!(
            "SD1.5 512x512 rank 8 fp16 batch {batch}: tape {:.0} MiB, peak {:.0} MiB ({}); \
             with gradient checkpointing tape {:.0} MiB, peak {:.0} MiB ({})",
            plain.tape_bytes() as f64 / MIB,
            plain.peak() as f64 / MIB,
            plain.peak_phase(),
            ckpt.tape_bytes() as f64 / MIB,
            ckpt.peak() as f64 / MIB,
            ckpt.peak_phase()
        );
        assert!(ckpt.tape_bytes() * 3 < plain.tape_bytes(), "batch {batch}");
        // At batch 1 the peak may lie outside the training step (the caching phase).
        assert!(ckpt.peak() <= plain.peak(), "batch {batch}");
        if batch == 4 {
            assert!(ckpt.peak() < plain.peak(), "batch {batch}");
        }
        assert_eq!(
            plain.resident(),
            ckpt.resident(),
            "the weights do not change"
        );
    }
    // A budget between the two peaks at batch 4: the configuration does not fit as it is,
    // does with checkpointing, and checkpointing fits a larger batch.
    let base = input(4, 512, 8, DType::F16);
    let (plain, ckpt) = (
        plan(&base).unwrap().peak(),
        plan(&base.with_checkpointing(true)).unwrap().peak(),
    );
    let budget = (plain + ckpt) / 2;
    let f = fit(&base, budget).unwrap();
    let c = f
        .checkpointed
        .as_ref()
        .expect("the configuration does not checkpoint");
    assert!(c.fits);
    assert!(c.batch.unwrap() >= 4 && f.batch.unwrap() < 4, "{f:?}");
    let on = fit(&base.with_checkpointing(true), budget).unwrap();
    assert_eq!(on.checkpointed, None, "nothing to offer when it is on");
}

#[test]
fn plans_refuse_sizes_the_model_cannot_take() {
    for (b, s) in [(0, 512), (1, 500), (1, 0)] {
        let e = plan(&input(b, s, 8, DType::F16)).unwrap_err().to_string();
        assert!(e.contains("batch_size") || e.contains("resolution"), "{e}");
    }
}

struct Infos(Vec<String>);
impl Observer for Infos {
    fn on(&mut self, e: Event) {
        if let Event::Info(s) = e {
            self.0.push(s);
        }
    }
}

#[test]
fn train_refuses_a_run_the_device_cannot_hold() {
    let dir = std::env::temp_dir().join(format!("lorafuse-plan-oom-{}", std::process::id()));
    lorafuse::demo::prepare(&dir, 2).unwrap();
    let cfg = TrainConfig::load(dir.join("demo.yaml"), &["batch_size=4"]).unwrap();
    // A 16 MiB device: the tiny model's weights fit, the caching phase with all three
    // models does not.
    let be = CudaBackend::new(Device::meter_with_memory(16 << 20), DType::F16).unwrap();
    let mut obs = Infos(Vec::new());
    let err = train(&cfg, &be, false, &AtomicBool::new(false), &mut obs).unwrap_err();
    assert!(matches!(err, Error::OutOfMemory(_)), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("predicted peak VRAM") && msg.contains("0.02 GiB"),
        "{msg}"
    );
    assert!(
        obs.0.iter().any(|s| s.contains("predicted peak VRAM")),
        "{:?}",
        obs.0
    );
    assert!(
        !dir.join("out").join("demo.safetensors").exists(),
        "nothing is trained"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn lorafuse(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_lorafuse"))
        .args(args)
        .output()
        .unwrap()
}

/// `plan --family sdxl` of a config without `resolution` plans SDXL's 1024x1024 (the
/// default follows the model, SD1.x's stays 512).
#[test]
fn an_unset_resolution_is_planned_at_the_familys_size() {
    let dir = std::env::temp_dir().join(format!("lorafuse-plan-res-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("c.yaml");
    std::fs::write(
        &cfg,
        "train_data_dir: no-such-folder\nbase_model: no-such-model\noutput_dir: out\n",
    )
    .unwrap();
    for (family, side) in [("sdxl", 1024), ("sd1", 512)] {
        let o = lorafuse(&["plan", cfg.to_str().unwrap(), "--family", family]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{err}");
        let want = format!("planning one batch of {side}x{side} images");
        assert!(err.contains(&want), "{family}: {err}");
    }
    // Without --family, the family a kohya config names: sd-scripts' `sdxl = true` and
    // lora-scripts' model_train_type plan SDXL, `v2 = true` SD2.x; --family still decides.
    let head = "[model_arguments]\npretrained_model_name_or_path = 'no-such-model'\n";
    let rest = "[dataset_arguments]\ntrain_data_dir = 'no-such-folder'\n\
                [training_arguments]\noutput_dir = 'out'\n";
    let cases = [
        ("sdxl = true\n", &[][..], "SDXL", 1024),
        ("v2 = true\n", &[][..], "Diffusion 2.x", 512),
        ("model_train_type = 'sdxl-lora'\n", &[][..], "SDXL", 1024),
        (
            "sdxl = true\n",
            &["--family", "sd1"][..],
            "Diffusion 1.x",
            512,
        ),
    ];
    for (flag, args, named, side) in cases {
        let toml = dir.join("c.toml");
        std::fs::write(&toml, format!("{head}{flag}{rest}")).unwrap();
        let o = lorafuse(&[&["plan", toml.to_str().unwrap()][..], args].concat());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{flag}: {err}");
        let planned = err
            .lines()
            .find(|l| l.contains("reference shapes"))
            .unwrap_or_default();
        assert!(planned.contains(named), "{flag} {args:?}: {err}");
        let want = format!("planning one batch of {side}x{side} images");
        assert!(err.contains(&want), "{flag} {args:?}: {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_plan_command_prints_the_breakdown_and_the_fit() {
    let dir = std::env::temp_dir().join(format!("lorafuse-plan-cli-{}", std::process::id()));
    lorafuse::demo::prepare(&dir, 2).unwrap();
    let cfg = dir.join("demo.yaml");
    let cfg = cfg.to_str().unwrap();
    let o = lorafuse(&[
        "plan",
        cfg,
        "--set",
        "base_model=v1-5-pruned-emaonly.safetensors",
        "--set",
        "resolution=512",
        "--gpu-memory",
        "8GiB",
    ]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    for want in [
        "weights: unet",
        "optimizer",
        "up_blocks.3",
        "workspace",
        "CUDA context",
        "predicted peak VRAM",
        "largest batch_size at 512x512",
        "12 latents stay in host memory",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    let o = lorafuse(&["plan", cfg]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success() && out.contains("fits: 4 GiB"), "{out}");
    let o = lorafuse(&["plan", cfg, "--gpu-memory", "lots"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--gpu-memory") && err.contains("8GiB"),
        "{err}"
    );
    // A card: its memory is the budget, its limits the launches'.
    let o = lorafuse(&["plan", cfg, "--gpu", "RTX 3060", "--set", "resolution=512"]);
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(o.status.success(), "{out}{err}");
    assert!(err.contains("GPU: RTX 3060 (sm_86"), "{err}");
    assert!(out.contains("within 12.00 GiB"), "{out}");
    // Turing (sm_75) plans too: its 15 GiB and 64 KiB limits.
    let o = lorafuse(&["plan", cfg, "--gpu", "T4", "--set", "resolution=512"]);
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(o.status.success(), "{out}{err}");
    assert!(err.contains("GPU: T4 (sm_75"), "{err}");
    assert!(out.contains("within 15.00 GiB"), "{out}");
    // bf16 is refused there (no bf16 tensor cores), with the alternative.
    let o = lorafuse(&["plan", cfg, "--gpu", "T4", "--set", "mixed_precision=bf16"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    for part in [
        "mixed_precision = bf16",
        "T4",
        "8.0",
        "mixed_precision: fp16",
    ] {
        assert!(err.contains(part), "{part} missing from: {err}");
    }
    let o = lorafuse(&["plan", cfg, "--gpu", "RTX 9999"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("T4, RTX 2070"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// bf16 plans as fp16 does: 2-byte activations and frozen weights, so the same weights,
/// tape, adapters, optimizer and (at this size) peak, though bf16 runs the simple convolutions;
/// on a Turing card it is refused, naming the card and the alternative.
#[test]
fn bf16_plans_like_fp16_and_is_refused_on_turing() {
    use lorafuse::backend::cuda::DeviceLimits;
    let h = plan(&input(1, 512, 8, DType::F16)).unwrap();
    let b = plan(&input(1, 512, 8, DType::BF16)).unwrap();
    assert_eq!(b.input.dtype(), DType::BF16);
    assert_eq!(b.weights, h.weights);
    assert_eq!(b.tape, h.tape);
    assert_eq!(
        (b.lora, b.optimizer, b.grads, b.caches),
        (h.lora, h.optimizer, h.grads, h.caches)
    );
    println!(
        "pool peak: bf16 {:.0} MiB, fp16 {:.0} MiB",
        b.pool_peak() as f64 / MIB,
        h.pool_peak() as f64 / MIB
    );
    assert_eq!(b.pool_peak(), h.pool_peak());
    let t4 = DeviceLimits::profile("T4").unwrap();
    let e = plan(&input(1, 512, 8, DType::BF16).on(t4)).unwrap_err();
    let m = e.to_string();
    for part in ["bf16", "T4 (sm_75", "8.0", "mixed_precision: fp16"] {
        assert!(m.contains(part), "{part} missing from: {m}");
    }
}

/// The VAE attention takes its keys in chunks of what a card's shared memory holds, so no
/// card's limits bound the resolution: a T4 (64 KiB a block: two chunks at 1024x1024, three
/// at the largest side searched) and an RTX 3060 plan it.
#[test]
fn a_cards_shared_memory_does_not_bound_the_resolution() {
    use lorafuse::backend::cuda::DeviceLimits;
    use lorafuse::plan::fit::MAX_SIDE;
    for card in ["T4", "RTX 3060"] {
        let limits = DeviceLimits::profile(card).unwrap();
        let big = input(1, MAX_SIDE, 8, DType::F16).on(limits);
        plan(&big).unwrap_or_else(|e| panic!("{card} plans {MAX_SIDE}x{MAX_SIDE}: {e}"));
    }
}

#[test]
fn the_readme_plan_example_is_what_plan_prints() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let dir = std::env::temp_dir().join(format!("lorafuse-plan-readme-{}", std::process::id()));
    lorafuse::demo::prepare(&dir, 2).unwrap();
    let cfg = dir.join("demo.yaml");
    let o = lorafuse(&[
        "plan",
        cfg.to_str().unwrap(),
        "--set",
        "base_model=v1-5-pruned-emaonly.safetensors",
        "--set",
        "resolution=512",
        "--set",
        "mixed_precision=fp16",
        "--set",
        "batch_size=1",
        "--set",
        "sample_every_n_steps=0",
        "--gpu-memory",
        "8GiB",
    ]);
    let out = String::from_utf8_lossy(&o.stdout);
    for line in ["predicted peak VRAM: ", "  largest batch_size at 512x512: "] {
        let printed = out.lines().find(|l| l.starts_with(line)).expect(line);
        assert!(
            readme.lines().any(|l| l == printed),
            "README.md lacks the line plan prints: {printed:?}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// README's table of what fits on the cards users own: SD1.5 at 512x512, fp16, the demo's
/// other settings (kohya's default targets, no text-encoder training, no samples), the
/// largest batch_size at ranks 8 and 16 without and with gradient checkpointing. Each row
/// README shows is computed here.
#[test]
fn the_readme_card_table_is_what_plan_computes() {
    use lorafuse::backend::cuda::DeviceLimits;
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let mut rows = Vec::new();
    for card in ["RTX 2070", "T4", "RTX 3070 Laptop", "RTX 3060", "RTX 4090"] {
        let limits = DeviceLimits::profile(card).unwrap();
        let mut cells = vec![format!("{card} ({} GiB)", limits.memory >> 30)];
        for rank in [8, 16] {
            for ckpt in [false, true] {
                let i = input(1, 512, rank, DType::F16)
                    .on(limits.clone())
                    .with_checkpointing(ckpt);
                let b = largest_batch(&i, limits.memory).unwrap();
                cells.push(b.map_or("none".into(), |b| b.to_string()));
            }
        }
        rows.push(format!("| {} |", cells.join(" | ")));
    }
    let missing: Vec<&String> = rows
        .iter()
        .filter(|r| !readme.lines().any(|l| l == r.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "README.md's card table lacks these rows (as plan computes them):\n{}",
        rows.join("\n")
    );
}

/// README's optimizer table: what each optimizer's state costs for the UNet's adapters on
/// SD1.5 (kohya's 192 modules) at ranks 8 and 32, as `plan` counts it (its optimizer row,
/// less the flat parameters and gradients: 8 bytes per parameter). Each figure README shows
/// is computed here.
#[test]
fn the_readme_optimizer_table_is_what_plan_computes() {
    use lorafuse::train::optim::OptimizerType;
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let mut wrong = Vec::new();
    for ty in OptimizerType::ALL {
        let mut cells = Vec::new();
        for rank in [8, 32] {
            let mut i = input(1, 512, rank, DType::F16);
            i.cfg.optimizer_type = ty;
            let p = plan(&i).unwrap();
            let params = p.lora / 4;
            cells.push(format!(
                "{:.1} MiB",
                (p.optimizer - 8 * params) as f64 / MIB
            ));
        }
        let start = format!("| `{}` |", ty.name());
        let end = format!("| {} | {} |", cells[0], cells[1]);
        let row = readme.lines().find(|l| l.starts_with(&start));
        if !row.is_some_and(|r| r.ends_with(&end)) {
            wrong.push(format!("{start} ... {end} (README: {row:?})"));
        }
    }
    assert!(
        wrong.is_empty(),
        "README.md's optimizer table differs from plan:\n{}",
        wrong.join("\n")
    );
}

/// With two datasets, the second's batch_size larger (kohya's per-dataset batch_size), the
/// plan measures the step of the largest batch: its tape is that of a one-dataset run at that
/// batch size.
#[test]
fn the_plan_steps_the_largest_batch_of_several_datasets() {
    use lorafuse::data::{DataOptions, Dataset, Item, Source};
    let side = 256;
    let data = |batches: &[usize]| -> Dataset {
        let sources: Vec<Source> = batches
            .iter()
            .enumerate()
            .map(|(d, &batch_size)| Source {
                opts: DataOptions {
                    batch_size,
                    ..DataOptions::default()
                },
                is_reg: false,
                dataset: d,
            })
            .collect();
        let items: Vec<Item> = (0..8 * batches.len())
            .map(|i| {
                let mut it = Item::synthetic(i, (side, side));
                it.source = i / 8;
                it.dataset = i / 8;
                it
            })
            .collect();
        Dataset {
            train_data_dir: "plan-images".into(),
            sources,
            items,
            validation: Vec::new(),
            buckets: vec![(side, side)],
            warnings: Vec::new(),
            num_reg_images: 0,
            folders: Vec::new(),
        }
    };
    let tape = |batch: usize, batches: &[usize]| {
        let input = PlanInput {
            data: PlanData::Scanned(data(batches)),
            ..PlanInput::step(batch, side, side, 4, DType::F16)
        };
        plan(&input).unwrap().tape_bytes()
    };
    let one = tape(4, &[4]);
    assert!(one > tape(1, &[1]));
    // The run's batch_size is 1; the second dataset's is 4; the first dataset's 1.
    assert_eq!(tape(1, &[1, 4]), one);
    assert_eq!(tape(1, &[4, 1]), one);
}

/// SD2.1 768-v's reference shapes (`--family sd2`): its UNet (865.9 M parameters) and the
/// 23-layer OpenCLIP text encoder (340.4 M, against SD1.5's 123.1 M), 1024-wide cached
/// embeddings, 96x96 latents at 768.
#[test]
fn sd2_reference_shapes_at_768() {
    let mut i = input(1, 768, 8, DType::F16);
    i.family = "sd2";
    let p = plan(&i).unwrap();
    assert!(p.family.contains("2.x"), "{}", p.family);
    let bytes = |n: &str| p.weights.iter().find(|w| w.0 == n).unwrap().1 as f64;
    assert!(
        (bytes("unet") / 865.910724e6 - 2.0).abs() < 0.01,
        "{}",
        bytes("unet")
    );
    assert!(
        (bytes("text_encoder") / 340.38784e6 - 2.0).abs() < 0.01,
        "{}",
        bytes("text_encoder")
    );
    assert_eq!(p.caches, 10 * (77 * 1024 * 2));
    // The same 192 targets as SD1.5's, wider where the context is 1024.
    let sd1 = plan(&input(1, 768, 8, DType::F16)).unwrap();
    assert!(p.lora > sd1.lora, "{} vs {}", p.lora, sd1.lora);
    println!(
        "SD2.x 768 fp16 rank 8 batch 1: peak {:.1} MiB (SD1.5 at 768: {:.1} MiB)",
        p.peak() as f64 / MIB,
        sd1.peak() as f64 / MIB
    );
}

/// SDXL 1.0 base's reference shapes at 1024x1024, fp16: the 2.567 B-parameter UNet, both
/// text encoders (released after caching), 2048-wide cached contexts plus the 1280-wide pooled
/// text, 128x128 latents, the VAE in f32; the README's table for rank 8 and 32, batch 1 and 4, with and
/// without gradient checkpointing (`-- --nocapture` prints it).
#[test]
fn sdxl_reference_shapes_at_1024() {
    let at = |batch: usize, rank: usize, checkpointing: bool| {
        let mut i = input(batch, 1024, rank, DType::F16);
        i.family = "sdxl";
        i.cfg.gradient_checkpointing = checkpointing;
        plan(&i).unwrap()
    };
    let p = at(1, 8, false);
    assert!(p.family.contains("SDXL"), "{}", p.family);
    let bytes = |n: &str| p.weights.iter().find(|w| w.0 == n).unwrap().1 as f64;
    assert!(
        (bytes("unet") / 2567.463684e6 - 2.0).abs() < 0.01,
        "{}",
        bytes("unet")
    );
    assert_eq!(p.caches, 10 * (77 * 2048 * 2 + 1280 * 2));
    // The VAE computes in f32 (SDXL's overflows in f16): 83.65 M parameters, 4 bytes each.
    assert!(
        (bytes("vae") / 83.653863e6 - 4.0).abs() < 0.01,
        "{}",
        bytes("vae")
    );
    println!("| batch | rank 8 | rank 8, checkpointing | rank 32 | rank 32, checkpointing |");
    println!("| --- | --- | --- | --- | --- |");
    let mut last = 0;
    for batch in [1, 4] {
        let cells: Vec<String> = [(8, false), (8, true), (32, false), (32, true)]
            .iter()
            .map(|&(rank, ck)| {
                let q = at(batch, rank, ck);
                if !ck {
                    assert!(q.peak() > last, "peaks grow with batch and rank");
                    last = q.peak();
                }
                format!("{:.2} GiB", q.peak() as f64 / (1024.0 * MIB))
            })
            .collect();
        println!("| {batch} | {} |", cells.join(" | "));
    }
    // no_half_vae: false (a checkpoint with the fp16-fix VAE): the VAE in f16, half its bytes,
    // and a lower caching peak.
    let mut i = input(1, 1024, 8, DType::F16);
    i.family = "sdxl";
    i.cfg.gradient_checkpointing = true;
    i.cfg.no_half_vae = Some(false);
    let half = plan(&i).unwrap();
    let f32_vae = at(1, 8, true);
    let vae = |p: &lorafuse::plan::MemoryPlan| p.weights.iter().find(|w| w.0 == "vae").unwrap().1;
    // (The pool rounds small buffers up, so not exactly half.)
    assert!((vae(&f32_vae) as f64 / vae(&half) as f64 - 2.0).abs() < 1e-3);
    assert!(half.caching_peak < f32_vae.caching_peak);
    println!(
        "rank 8, checkpointing, batch 1, no_half_vae: false: {:.2} GiB",
        half.peak() as f64 / (1024.0 * MIB)
    );
}

/// LoHa (`algo: loha`) holds two (up, down) pairs per module, twice LoRA's parameters and
/// optimizer state at the same rank, and builds each layer's full ΔW [out, in] in its forward
/// and backward: the step's transient workspace grows, the tape does not (LoHa saves no
/// hidden).
#[test]
fn loha_counts_its_parameters_and_its_transient_delta() {
    let lora = plan(&input(1, 512, 8, DType::F16)).unwrap();
    let mut cfg = input(1, 512, 8, DType::F16);
    cfg.cfg.algo = lorafuse::lora::AlgoKind::Loha;
    let loha = plan(&cfg).unwrap();
    assert!((loha.lora as f64 / lora.lora as f64 - 2.0).abs() < 1e-3);
    assert!((loha.optimizer as f64 / lora.optimizer as f64 - 2.0).abs() < 1e-3);
    assert!(loha.tape_bytes() < lora.tape_bytes());
    // The largest ΔW of the 192 targets: ff.net.0.proj at 1280 channels, [10240, 1280] f32.
    let largest = 10240 * 1280 * 4;
    assert!(
        loha.workspace() > lora.workspace() + largest,
        "{} vs {}",
        loha.workspace(),
        lora.workspace()
    );
    println!(
        "LoHa rank 8: peak {:.1} MiB (workspace {:.1}) against LoRA's {:.1} MiB ({:.1})",
        loha.peak() as f64 / MIB,
        loha.workspace() as f64 / MIB,
        lora.peak() as f64 / MIB,
        lora.workspace() as f64 / MIB
    );
}

/// DoRA (`dora_wd: true`) adds one magnitude per output row to each module (a few percent of
/// rank-8 LoRA's parameters and optimizer state), saves no hidden on the tape, and builds
/// W', V and their gradients transiently in the step's workspace.
#[test]
fn dora_counts_its_magnitudes_and_its_transient_weights() {
    let lora = plan(&input(1, 512, 8, DType::F16)).unwrap();
    let mut cfg = input(1, 512, 8, DType::F16);
    cfg.cfg.dora_wd = true;
    let dora = plan(&cfg).unwrap();
    let more = dora.lora as f64 / lora.lora as f64;
    assert!(more > 1.01 && more < 1.1, "{more}");
    assert!((dora.optimizer as f64 / lora.optimizer as f64 - more).abs() < 1e-3);
    assert!(dora.tape_bytes() < lora.tape_bytes());
    // At least one W' of the up path's ff.net.0.proj ([2560, 320] f32), where the backward
    // starts with the whole tape held.
    assert!(
        dora.workspace() > lora.workspace() + 2560 * 320 * 4,
        "{} vs {}",
        dora.workspace(),
        lora.workspace()
    );
    println!(
        "DoRA rank 8: peak {:.1} MiB (workspace {:.1}) against LoRA's {:.1} MiB ({:.1})",
        dora.peak() as f64 / MIB,
        dora.workspace() as f64 / MIB,
        lora.peak() as f64 / MIB,
        lora.workspace() as f64 / MIB
    );
}
