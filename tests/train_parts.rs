//! The training loop's parts: schedules by hand, the noise schedule against diffusers', the
//! flat optimizer's layout, clipping and loss scaling, when sample images are due.

use crate::common;

use lorafuse::lora::{LayerKind, LoraGrads, LoraModule, LoraSet};
use lorafuse::model::cond::{Cond, TextCond};
use lorafuse::model::family::Prediction;
use lorafuse::rng::Rng;
use lorafuse::sample::schedule::NoiseSchedule;
use lorafuse::train::lr::{LrSchedule, Schedule};
use lorafuse::train::noise::{min_snr_weights, sample_timesteps};
use lorafuse::train::optim::{clip_coefficient, AdamWSettings, OptimizerKind, ParamGroup};
use lorafuse::train::samples::SampleAt;
use lorafuse::train::scaler::LossScaler;
use lorafuse::{Accum, CpuBackend, DType, Tensor};

fn sched(kind: Schedule) -> LrSchedule {
    LrSchedule {
        kind,
        base_lr: 1.0,
        warmup: 10,
        total: 110,
        num_cycles: 1.0,
        power: 1.0,
        min_lr_ratio: 0.0,
        decay: 0,
    }
}

#[test]
fn schedules_by_hand() {
    let close = |a: f64, b: f64| assert!((a - b).abs() < 1e-12, "{a} vs {b}");
    // constant ignores warm-up, as diffusers' "constant" does.
    close(sched(Schedule::Constant).lr(0), 1.0);
    let w = sched(Schedule::ConstantWithWarmup);
    close(w.lr(0), 0.0);
    close(w.lr(5), 0.5);
    close(w.lr(10), 1.0);
    close(w.lr(100), 1.0);
    let l = sched(Schedule::Linear);
    close(l.lr(5), 0.5);
    close(l.lr(10), 1.0);
    close(l.lr(60), 0.5); // (110 - 60)/(110 - 10)
    close(l.lr(110), 0.0);
    let c = sched(Schedule::Cosine);
    close(c.lr(10), 1.0);
    close(c.lr(60), 0.5); // half-way: ½(1 + cos(π/2))
    close(c.lr(110), 0.0);
    let mut r = sched(Schedule::CosineWithRestarts);
    r.num_cycles = 2.0;
    close(r.lr(35), 0.5); // p = 0.25, 2·p mod 1 = 0.5
    close(r.lr(60), 1.0); // restart at p = 0.5
    close(r.lr(110), 0.0);
    let scaled = LrSchedule { base_lr: 1e-4, ..c };
    close(scaled.lr(60) / 1e-4, 0.5);
    // polynomial: diffusers' lr_end = 1e-7 at the end, (1 − p)^power in between.
    let mut q = sched(Schedule::Polynomial);
    close(q.lr(5), 0.5);
    close(q.lr(10), 1.0);
    close(q.lr(60), (1.0 - 1e-7) * 0.5 + 1e-7);
    close(q.lr(110), 1e-7);
    close(q.lr(200), 1e-7);
    q.power = 2.0;
    close(q.lr(60), (1.0 - 1e-7) * 0.25 + 1e-7);
    // cosine_with_min_lr (kohya's num_cycles 1: half a wave) down to the ratio: 0.1 + 0.9·f.
    let mut m = sched(Schedule::CosineWithMinLr);
    m.min_lr_ratio = 0.1;
    close(m.lr(5), 0.5);
    close(m.lr(10), 1.0);
    close(m.lr(60), 0.1 + 0.9 * 0.5);
    close(m.lr(110), 0.1);
    m.num_cycles = 2.0; // a whole wave: back up at the end
    close(m.lr(60), 0.1);
    close(m.lr(110), 1.0);
}

/// transformers 4.54.1's `_get_wsd_scheduler_lambda` (linear warm-up, cosine decay: what
/// sd-scripts' get_scheduler_fix asks for), transcribed line by line, with sd-scripts'
/// arguments: num_stable_steps = total − warmup − decay, num_cycles = lr_scheduler_num_cycles/2.
fn wsd_reference(step: i64, warmup: i64, total: i64, decay: i64, cycles: f64, r: f64) -> f64 {
    let stable = total - warmup - decay;
    let num_cycles = cycles / 2.0;
    if step < warmup {
        let progress = step as f64 / 1.max(warmup) as f64;
        return 0f64.max(progress * (1.0 - r) + r);
    }
    if step < warmup + stable {
        return 1.0;
    }
    if step < warmup + stable + decay {
        let progress = (step - warmup - stable) as f64 / 1.max(decay) as f64;
        let factor = 0.5 * (1.0 + (std::f64::consts::PI * num_cycles * 2.0 * progress).cos());
        return 0f64.max(factor * (1.0 - r) + r);
    }
    r
}

#[test]
fn warmup_stable_decay_follows_the_reference_formula() {
    let close = |a: f64, b: f64, what: &str| assert!((a - b).abs() < 1e-12, "{what}: {a} vs {b}");
    // Hand values: 10 warm-up steps from r, 70 stable, 30 of half a cosine down to r.
    let mut s = sched(Schedule::WarmupStableDecay);
    s.decay = 30;
    s.min_lr_ratio = 0.1;
    close(s.lr(0), 0.1, "start of warm-up is r");
    close(s.lr(5), 0.1 + 0.9 * 0.5, "half-way warm-up");
    close(s.lr(10), 1.0, "stable");
    close(s.lr(79), 1.0, "last stable step");
    close(s.lr(80), 1.0, "decay starts at the top");
    close(s.lr(95), 0.1 + 0.9 * 0.5, "half-way down");
    close(s.lr(110), 0.1, "after the decay: r");
    close(s.lr(500), 0.1, "beyond the run: r");
    // Every step of several shapes (no warm-up, no decay, two cycles, no floor, warm-up and
    // decay longer than the run, as sd-scripts would compute them) against the reference.
    for (warmup, total, decay, cycles, r) in [
        (10u64, 110u64, 30u64, 1.0, 0.1),
        (0, 50, 20, 1.0, 0.0),
        (5, 50, 0, 1.0, 0.2),
        (5, 60, 40, 2.0, 0.05),
        (3, 20, 0, 3.0, 0.0),
        (30, 40, 30, 1.0, 0.1),
    ] {
        let s = LrSchedule {
            kind: Schedule::WarmupStableDecay,
            base_lr: 2e-4,
            warmup,
            total,
            num_cycles: cycles,
            power: 1.0,
            min_lr_ratio: r,
            decay,
        };
        for step in 0..total + 5 {
            let want = 2e-4
                * wsd_reference(
                    step as i64,
                    warmup as i64,
                    total as i64,
                    decay as i64,
                    cycles,
                    r,
                );
            let got = s.lr(step);
            assert!(
                (got - want).abs() <= 1e-15,
                "warmup {warmup} total {total} decay {decay} cycles {cycles} r {r}: step {step}: {got} vs {want}"
            );
        }
    }
    // adafactor: a constant 1 (Adafactor with relative_step ignores it), no warm-up.
    let a = sched(Schedule::Adafactor);
    close(a.lr(0), 1.0, "adafactor");
    close(a.lr(5), 1.0, "adafactor");
}

#[test]
fn min_snr_weights_and_timesteps() {
    // The schedule itself is checked against diffusers in tests/sample.rs.
    let sched = NoiseSchedule::sd15();
    let abar = sched.alphas_cumprod();
    // min-SNR-5: early timesteps (SNR > 5) are down-weighted to 5/SNR, late ones keep 1.
    let wts = min_snr_weights(&sched, &[0, 999], 5.0, Prediction::Epsilon);
    let snr0 = abar[0] / (1.0 - abar[0]);
    assert!((wts[0] - 5.0 / snr0).abs() < 1e-12 && wts[1] == 1.0);
    // v-prediction (kohya's apply_snr_weight): min(SNR, γ)/(SNR + 1).
    let v = min_snr_weights(&sched, &[0, 999], 5.0, Prediction::V);
    let snr999 = abar[999] / (1.0 - abar[999]);
    assert!((v[0] - 5.0 / (snr0 + 1.0)).abs() < 1e-12);
    assert!((v[1] - snr999 / (snr999 + 1.0)).abs() < 1e-12);
    // With zero terminal SNR the last timestep's v weight is 0, not undefined.
    let zt = sched.with_zero_terminal_snr();
    assert_eq!(min_snr_weights(&zt, &[999], 5.0, Prediction::V), [0.0]);
    let mut rng = Rng::new(1);
    let ts = sample_timesteps(&mut rng, &sched, 10_000);
    assert!(ts.iter().all(|&t| t < 1000));
    assert!(
        ts.contains(&0) && ts.contains(&999),
        "the whole range is drawn"
    );
    let mean = ts.iter().sum::<usize>() as f64 / ts.len() as f64;
    assert!((mean - 499.5).abs() < 10.0, "{mean}");
}

fn module(name: &str, down: Vec<f32>, up: Vec<f32>, r: usize) -> LoraModule {
    let (i, o) = (down.len() / r, up.len() / r);
    LoraModule {
        name: name.into(),
        down: Tensor::from_f32([r, i], down).unwrap(),
        up: Tensor::from_f32([o, r], up).unwrap(),
        alpha: r as f64,
        kind: LayerKind::Linear,
        algo: Default::default(),
    }
}

#[test]
fn param_group_round_trips_and_steps() {
    let be = CpuBackend::new();
    let mut set = LoraSet::new(vec![
        module("a", vec![1.0, 2.0, 3.0, 4.0], vec![5.0, 6.0], 2),
        module("b", vec![7.0, 8.0, 9.0], vec![10.0], 1),
    ]);
    let s = AdamWSettings {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
    };
    let mut opt = ParamGroup::new(&be, "unet", &set, 0..2, &OptimizerKind::AdamW(s)).unwrap();
    assert_eq!(
        opt.params.to_f32_vec(),
        vec![1., 2., 3., 4., 5., 6., 7., 8., 9., 10.]
    );
    let grads = LoraGrads {
        down: vec![
            Tensor::from_f32([2, 2], vec![1.0, -1.0, 0.0, 2.0]).unwrap(),
            Tensor::from_f32([1, 3], vec![0.5; 3]).unwrap(),
        ],
        up: vec![
            Tensor::from_f32([1, 2], vec![-3.0, 0.0]).unwrap(),
            Tensor::from_f32([1, 1], vec![4.0]).unwrap(),
        ],
        extra: vec![vec![], vec![]],
        accum: Accum::Assign,
    };
    opt.load_grads(&be, &grads).unwrap();
    // ‖g‖² = 1 + 1 + 0 + 4 + 9 + 0 + 3·0.25 + 16 = 31.75
    assert!((opt.grad_sum_squares(&be).unwrap() - 31.75).abs() < 1e-6);
    opt.update(&be, 0.1, 1.0, &mut set).unwrap();
    assert_eq!(opt.optimizer.steps(), 1);
    let state: Vec<&str> = opt.optimizer.state().iter().map(|(n, _)| *n).collect();
    assert_eq!(state, ["m", "v"], "AdamW saves both moments");
    // First Adam step moves each parameter by lr·sign(g) (0 where g = 0).
    let a = set.modules()[0].down.to_f32_vec();
    let want = [0.9, 2.1, 3.0, 3.9];
    for (x, w) in a.iter().zip(want) {
        assert!((x - w).abs() < 1e-6, "{a:?}");
    }
    assert_eq!(set.modules()[1].up.to_f32_vec().len(), 1);
    assert!((set.modules()[1].up.to_f32_vec()[0] - 9.9).abs() < 1e-6);
    assert_eq!(set.modules()[0].down.dtype(), DType::F32);
}

#[test]
fn clipping_and_loss_scaling() {
    assert_eq!(clip_coefficient(0.5, 1.0), 1.0);
    assert!((clip_coefficient(4.0, 1.0) - 1.0 / (4.0 + 1e-6)).abs() < 1e-15);
    assert_eq!(clip_coefficient(100.0, 0.0), 1.0);
    let mut s = LossScaler::new(true);
    assert_eq!(s.scale, 65536.0);
    assert!(!s.update(false), "an overflowing step is skipped");
    assert_eq!((s.scale, s.skipped), (32768.0, 1));
    for _ in 0..2000 {
        assert!(s.update(true));
    }
    assert_eq!(s.scale, 65536.0, "2000 good steps double the scale");
    let mut off = LossScaler::new(false);
    assert!(!off.update(false));
    assert_eq!(
        (off.scale, off.skipped),
        (1.0, 1),
        "non-finite steps are skipped even unscaled"
    );
}

/// Per-sample loss weights (kohya's prior_loss_weight for regularisation images) reach the
/// loss and its gradient, multiplied with the min-SNR weights: with the same draws, weights
/// (w, w) scale the loss and every LoRA gradient by w, and a zero weight removes the sample.
#[test]
fn per_sample_loss_weights_reach_the_loss_and_the_gradients() {
    use lorafuse::backend::Tensors;
    use lorafuse::lora::LoraTargets;
    use lorafuse::model::layers::Ctx;
    use lorafuse::train::step::{denoise_micro_batch, MicroBatch, Objective};
    let be = CpuBackend::new();
    let unet = fixture_unet(&be);
    let mut rng = Rng::new(8);
    let targets = unet.lora_targets(LoraTargets::Attention);
    let lora = LoraSet::init(&be, &targets, 2, 2.0, &mut rng).unwrap();
    // Non-zero up weights, so every gradient is non-zero.
    let lora = {
        let mut l = lora;
        for m in l.modules_mut() {
            let v: Vec<f32> = rng
                .normal_vec(m.up.numel())
                .iter()
                .map(|&x| 0.1 * x as f32)
                .collect();
            m.up = be.tensor_from_f32(m.up.dims(), &v, DType::F32).unwrap();
        }
        l
    };
    let lat = unet.config.sample_size;
    let randn = |rng: &mut Rng, shape: &[usize]| {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = rng.normal_vec(n).iter().map(|&x| x as f32).collect();
        be.tensor_from_f32(shape, &v, DType::F32).unwrap()
    };
    let latents = randn(&mut rng, &[2, 4, lat, lat]);
    let context = randn(&mut rng, &[2, 77, unet.config.cross_attention_dim]);
    let cond = Cond::text_only(TextCond {
        context,
        pooled: None,
    });
    let cx = Ctx::new(&be, Some(&lora));
    let run = |weights: Option<&[f64]>, gamma: Option<f64>| {
        let obj = Objective {
            min_snr_gamma: gamma,
            ..Objective::plain(NoiseSchedule::sd15())
        };
        let batch = MicroBatch {
            latents: &latents,
            cond: &cond,
            grad_scale: 1.0,
            want_text_grad: false,
            loss_weights: weights,
        };
        let mut grads = lora.zero_grads(&be).unwrap();
        let out =
            denoise_micro_batch(&cx, &unet, &obj, &batch, &mut grads, &mut Rng::new(3)).unwrap();
        let g: Vec<f32> = grads
            .down
            .iter()
            .chain(&grads.up)
            .flat_map(|t| t.to_f32_vec())
            .collect();
        (out.loss, g)
    };
    for gamma in [None, Some(5.0)] {
        let (l1, g1) = run(None, gamma);
        let (l2, g2) = run(Some(&[0.25, 0.25]), gamma);
        assert!(
            (l2 - 0.25 * l1).abs() <= 1e-6 * l1.abs(),
            "{gamma:?}: {l1} {l2}"
        );
        let norm = g1.iter().map(|x| x.abs()).fold(0.0f32, f32::max);
        assert!(norm > 0.0);
        for (a, b) in g1.iter().zip(&g2) {
            assert!((b - 0.25 * a).abs() <= 1e-5 * norm, "{gamma:?}: {a} {b}");
        }
        // (1, 0) keeps the first sample's half of the unweighted mean.
        let (l3, _) = run(Some(&[1.0, 0.0]), gamma);
        let (l4, _) = run(Some(&[0.0, 1.0]), gamma);
        assert!((l3 + l4 - l1).abs() <= 1e-6 * l1.abs(), "{gamma:?}");
        assert!(l3 > 0.0 && l4 > 0.0);
    }
}

/// kohya's network_weights: a saved LoRA's adapters replace the fresh ones of the same name
/// (alpha included); a rank that differs is an error naming the file and the module, unless
/// dim_from_weights takes each adapter's rank from the file; adapters the file lacks start
/// fresh (or, with dim_from_weights, are left out).
#[test]
fn network_weights_start_from_a_kohya_file() {
    use lorafuse::backend::Tensors;
    use lorafuse::lora::export::{save_kohya, SavePrecision};
    use lorafuse::lora::LoraTargets;
    use lorafuse::train::start::{start_from, Started};
    use std::collections::BTreeMap;
    let be = CpuBackend::new();
    let unet = fixture_unet(&be);
    let all = unet.lora_targets(LoraTargets::Transformer);
    let attn = unet.lora_targets(LoraTargets::Attention);
    assert!(attn.len() < all.len());
    // A file with the attention adapters at rank 2, alpha 1, non-zero B.
    let mut rng = Rng::new(21);
    let mut saved = LoraSet::init(&be, &attn, 2, 1.0, &mut rng).unwrap();
    for m in saved.modules_mut() {
        let v: Vec<f32> = rng
            .normal_vec(m.up.numel())
            .iter()
            .map(|&x| x as f32)
            .collect();
        m.up = be.tensor_from_f32(m.up.dims(), &v, DType::F32).unwrap();
    }
    let out = std::env::temp_dir().join(format!("lorafuse-netweights-{}", std::process::id()));
    std::fs::create_dir_all(&out).unwrap();
    let file = out.join("start.safetensors");
    save_kohya(&file, &saved, SavePrecision::Fp32, &BTreeMap::new()).unwrap();

    // Same rank: the file's adapters on its layers, fresh ones on the others.
    let fresh = LoraSet::init(&be, &all, 2, 2.0, &mut Rng::new(5)).unwrap();
    let (got, started) = start_from(&be, fresh.clone(), &file, false).unwrap();
    let n_attn = attn.len();
    assert_eq!(
        started,
        Started {
            loaded: n_attn,
            unused: 0,
            missing: all.len() - n_attn
        }
    );
    assert_eq!(got.len(), all.len());
    for m in got.modules() {
        match saved.find(&m.name) {
            Some(i) => {
                let s = &saved.modules()[i];
                assert_eq!(m.down.to_f32_vec(), s.down.to_f32_vec(), "{}", m.name);
                assert_eq!(m.up.to_f32_vec(), s.up.to_f32_vec(), "{}", m.name);
                assert_eq!(m.alpha, 1.0, "the file's alpha");
            }
            None => {
                let f = &fresh.modules()[fresh.find(&m.name).unwrap()];
                assert_eq!(m.down.to_f32_vec(), f.down.to_f32_vec());
                assert_eq!(m.alpha, 2.0);
            }
        }
    }
    // Another rank: an error naming the file and the module.
    let rank4 = LoraSet::init(&be, &all, 4, 4.0, &mut Rng::new(5)).unwrap();
    let e = start_from(&be, rank4.clone(), &file, false)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("start.safetensors") && e.contains("lora_unet_"),
        "{e}"
    );
    assert!(
        e.contains("rank 4") && e.contains("rank 2") && e.contains("dim_from_weights"),
        "{e}"
    );
    // dim_from_weights: exactly the file's adapters, at its rank.
    let (got, started) = start_from(&be, rank4, &file, true).unwrap();
    assert_eq!(got.len(), n_attn);
    assert_eq!(started.loaded, n_attn);
    assert!(got
        .modules()
        .iter()
        .all(|m| m.rank() == 2 && m.alpha == 1.0));
    // A file for none of the run's layers.
    let te_only = LoraSet::new(Vec::new());
    let e = start_from(&be, te_only, &file, false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("match none"), "{e}");
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn samples_are_due_as_kohya_decides() {
    let load = |extra: &str| {
        let text =
            format!("train_data_dir: d\nbase_model: m.safetensors\noutput_dir: o\n{extra}\n");
        lorafuse::config::TrainConfig::from_yaml(&text, "c.yaml", &[] as &[&str]).unwrap()
    };
    let due = |cfg: &lorafuse::config::TrainConfig| {
        [
            SampleAt::First,
            SampleAt::Step(2),
            SampleAt::Step(3),
            SampleAt::Step(4),
            SampleAt::Epoch(1),
            SampleAt::Epoch(2),
        ]
        .map(|at| at.due(cfg))
    };
    let prompts = "sample_prompts: [a cat]";
    // Every 2 steps.
    let c = load(&format!("{prompts}\nsample_every_n_steps: 2"));
    assert_eq!(due(&c), [false, true, false, true, false, false]);
    // Every 2 epochs: the steps setting is not used; before the first step too.
    let c = load(&format!(
        "{prompts}\nsample_every_n_steps: 2\nsample_every_n_epochs: 2\nsample_at_first: true"
    ));
    assert_eq!(due(&c), [true, false, false, false, false, true]);
    // Every epoch.
    let c = load(&format!("{prompts}\nsample_every_n_epochs: 1"));
    assert_eq!(due(&c), [false, false, false, false, true, true]);
    assert_eq!(
        [SampleAt::First, SampleAt::Step(500), SampleAt::Epoch(12)].map(SampleAt::label),
        ["e000000", "000500", "e000012"].map(String::from)
    );
}

/// A 1x1 conv's adapter and a Linear layer's are the same matrices: a file that stores SD1.x's
/// proj_in/proj_out adapters 2-D (as kohya stores SD2.x's and SDXL's Linear projections) starts
/// a run whose layers are 1x1 convs, and the reverse, each taking the model's kind.
#[test]
fn network_weights_take_a_pointwise_adapter_either_way() {
    use lorafuse::lora::export::{save_kohya, SavePrecision};
    use lorafuse::lora::LoraTargets;
    use lorafuse::train::start::start_from;
    let be = CpuBackend::new();
    let unet = fixture_unet(&be);
    let all = unet.lora_targets(LoraTargets::Transformer);
    let fresh = LoraSet::init(&be, &all, 2, 1.0, &mut Rng::new(8)).unwrap();
    let projections = |s: &LoraSet| {
        s.modules()
            .iter()
            .filter(|m| m.name.contains("proj_"))
            .map(|m| m.kind)
            .collect::<Vec<_>>()
    };
    assert!(projections(&fresh).iter().all(|k| *k == LayerKind::Conv1x1));
    let mut flat = fresh.clone();
    for m in flat.modules_mut() {
        if m.kind == LayerKind::Conv1x1 {
            m.kind = LayerKind::Linear;
        }
    }
    let out = common::tools::TempDir::new("pointwise");
    let file = out.join("flat.safetensors");
    save_kohya(&file, &flat, SavePrecision::Fp32, &Default::default()).unwrap();
    let (got, started) = start_from(&be, fresh.clone(), &file, false).unwrap();
    assert_eq!(started.loaded, all.len());
    assert_eq!(projections(&got), projections(&fresh), "the model's kind");
    // And a 1x1-conv file into Linear layers.
    let conv_file = out.join("conv.safetensors");
    save_kohya(&conv_file, &fresh, SavePrecision::Fp32, &Default::default()).unwrap();
    let (got, _) = start_from(&be, flat.clone(), &conv_file, false).unwrap();
    assert_eq!(projections(&got), projections(&flat));
}

/// The UNet of the tiny SD1.5 fixture (tests/fixtures/tiny-sd15-diffusers) on `be`.
fn fixture_unet(be: &CpuBackend) -> lorafuse::model::unet::Unet {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-sd15-diffusers");
    let ck = lorafuse::model::checkpoint::load_sd15(dir).unwrap();
    lorafuse::model::unet::Unet::load(&ck.unet.0, &ck.unet.1, be, "unet").unwrap()
}
