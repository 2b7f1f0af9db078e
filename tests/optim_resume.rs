//! A run interrupted and resumed gives the same losses and the same state bits as one that
//! never stopped, with each optimizer (AdamW's own check is in train_e2e.rs): their state
//! (Lion's momentum, SGD's buffer, Prodigy's p0, moments, s and scalars d, d_max, numerator,
//! k, DAdaptAdam's moments, s, d, numerator and k, the 8-bit optimizers' codes (as u8) and
//! block absmax, Adafactor's row and column moments and first moment) round-trips through the
//! state file exactly. Also: the `lr` of each step is d·lr for Prodigy and DAdaptAdam, as
//! kohya logs it, and Adafactor's own rate with relative_step.

use crate::common;
use common::tools::TempDir;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use lorafuse::config::TrainConfig;
use lorafuse::train::state;
use lorafuse::train::trainer::{train, Event, Observer, Recorder};
use lorafuse::{CpuBackend, DType};

/// A fresh folder, removed when dropped.
fn scratch(name: &str) -> TempDir {
    TempDir::new(&format!("optim-{name}"))
}

/// (step, loss, lr) of every step.
fn steps(events: &[Event]) -> Vec<(u64, f64, f64)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Step { step, loss, lr, .. } => Some((*step, *loss, *lr)),
            _ => None,
        })
        .collect()
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

const TOTAL: usize = 8;

/// (step, loss, lr) of every step, the state file, and its folder (removed when dropped).
fn run(
    name: &str,
    sets: &[&str],
    stop_at: Option<u64>,
) -> (Vec<(u64, f64, f64)>, PathBuf, TempDir) {
    let be = CpuBackend::new();
    let dir = scratch(name);
    lorafuse::demo::prepare(&dir, TOTAL).unwrap();
    let mut sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    sets.push("sample_every_n_steps=0".into());
    let cfg = TrainConfig::load(dir.join("demo.yaml"), &sets).unwrap();
    let Some(at) = stop_at else {
        let mut rec = Recorder::default();
        let out = train(&cfg, &be, false, &AtomicBool::new(false), &mut rec).unwrap();
        return (steps(&rec.0), out.state_path, dir);
    };
    let flag = AtomicBool::new(false);
    let mut first = StopAt {
        flag: &flag,
        at,
        rec: Recorder::default(),
    };
    let part = train(&cfg, &be, false, &flag, &mut first).unwrap();
    assert!(part.interrupted && part.steps == at, "{part:?}");
    let mut second = Recorder::default();
    let rest = train(&cfg, &be, true, &AtomicBool::new(false), &mut second).unwrap();
    let mut joined = steps(&first.rec.0);
    joined.extend(steps(&second.0));
    (joined, rest.state_path, dir)
}

#[test]
fn resume_is_bit_exact_with_each_optimizer() {
    for (name, sets, state_names) in [
        (
            "lion",
            &[
                "optimizer_type=Lion",
                "learning_rate=1e-4",
                "optimizer_args=[\"weight_decay=0.1\"]",
            ][..],
            &["m"][..],
        ),
        (
            "adamw8bit",
            &["optimizer_type=AdamW8bit", "learning_rate=1e-3"][..],
            &["m_absmax", "m_codes", "v_absmax", "v_codes"][..],
        ),
        (
            "lion8bit",
            &[
                "optimizer_type=lion8bit",
                "learning_rate=1e-4",
                "optimizer_args=[\"weight_decay=0.1\"]",
            ][..],
            &["m_absmax", "m_codes"][..],
        ),
        (
            "sgd",
            &["optimizer_type=SGDNesterov", "learning_rate=0.01"][..],
            &["momentum_buffer"][..],
        ),
        (
            "prodigy",
            &[
                "optimizer_type=Prodigy",
                "learning_rate=1",
                "optimizer_args=[\"use_bias_correction=True\", \"weight_decay=0.01\"]",
            ][..],
            &["m", "p0", "s", "scalars", "v"][..],
        ),
        (
            "dadapt",
            &[
                "optimizer_type=DAdaptAdam",
                "learning_rate=1",
                "optimizer_args=[\"decouple=True\", \"weight_decay=0.01\", \"log_every=10\"]",
            ][..],
            &["m", "s", "scalars", "v"][..],
        ),
        (
            "adafactor",
            &["optimizer_type=Adafactor", "lr_scheduler=adafactor"][..],
            &["col", "row"][..],
        ),
        (
            "adafactor_beta1",
            &[
                "optimizer_type=Adafactor",
                "learning_rate=1e-3",
                "optimizer_args=[\"relative_step=False\", \"beta1=0.9\", \"weight_decay=0.01\"]",
            ][..],
            &["col", "m", "row"][..],
        ),
    ] {
        let (all, full_state, _straight) = run(&format!("{name}-straight"), sets, None);
        let (joined, resumed_state, _broken) = run(&format!("{name}-broken"), sets, Some(3));
        assert_eq!(all.len(), TOTAL, "{name}");
        assert_eq!(
            joined, all,
            "{name}: the resumed run's steps equal the uninterrupted run's"
        );
        let (_, a) = state::load(&full_state).unwrap();
        let (_, b) = state::load(&resumed_state).unwrap();
        for s in state_names {
            assert!(
                a.contains_key(&format!("unet.{s}")),
                "{name}: unet.{s} in {:?}",
                a.keys()
            );
        }
        for (key, t) in &a {
            assert_eq!(t.to_f32_vec(), b[key].to_f32_vec(), "{name}: {key}");
            let bytes = key.ends_with("_codes");
            assert_eq!(
                t.dtype() == DType::U8,
                bytes,
                "{name}: {key} is {}",
                t.dtype()
            );
        }
        if name == "prodigy" || name == "dadapt" {
            // The logged rate is d·lr: d starts at d0 = 1e-6 (learning_rate = 1).
            assert_eq!(all[0].2, 1e-6, "{all:?}");
        }
        if name == "adafactor" {
            // The logged rate is the one Adafactor applied to the first tensor:
            // min(1e-2, 1/sqrt(k))·max(1e-3, RMS(p)), not learning_rate (0.002).
            for (step, _, lr) in &all {
                assert!(
                    *lr > 0.0 && *lr <= 1e-2 && *lr != 0.002,
                    "step {step}: lr {lr}"
                );
            }
            // It follows RMS(p) of the first tensor (a down, still at step 2: its gradient is 0
            // while the up is 0).
            assert_ne!(all[0].2, all[TOTAL - 1].2, "{all:?}");
        }
        if name == "adafactor_beta1" {
            // The scheduled rate (the demo's cosine), as kohya logs it without relative_step.
            assert_eq!(all[0].2, 1e-3, "{all:?}");
            assert!(all[1].2 < 1e-3, "{all:?}");
        }
    }
}

/// On the demo's tiny model, each optimizer with its usual settings lowers the fixed-noise
/// training loss over the same 40 steps (the figures are printed, side by side). Usual
/// settings: the demo's AdamW rate (AdamW8bit too); Lion (and Lion8bit) at a third of it; SGD at a rate its plain gradient
/// steps need; Prodigy and DAdaptAdam at 1; Adafactor as kohya runs it by default
/// (relative_step: its own rate and the adafactor schedule, no warm-up), and with the
/// arguments kohya's documentation gives for a fixed rate (scale_parameter, relative_step and
/// warmup_init False) at the demo's rate.
#[test]
fn each_optimizer_lowers_the_fixed_noise_loss() {
    let be = CpuBackend::new();
    let mut figures = Vec::new();
    for (name, sets) in [
        (
            "AdamW",
            &["optimizer_type=AdamW", "learning_rate=0.002"][..],
        ),
        (
            "AdamW8bit",
            &["optimizer_type=AdamW8bit", "learning_rate=0.002"][..],
        ),
        ("Lion", &["optimizer_type=Lion", "learning_rate=0.0006"][..]),
        (
            "Lion8bit",
            &["optimizer_type=Lion8bit", "learning_rate=0.0006"][..],
        ),
        (
            "SGDNesterov",
            &["optimizer_type=SGDNesterov", "learning_rate=0.5"][..],
        ),
        (
            "Prodigy",
            &["optimizer_type=Prodigy", "learning_rate=1"][..],
        ),
        (
            "DAdaptAdam",
            &["optimizer_type=DAdaptAdam", "learning_rate=1"][..],
        ),
        (
            "Adafactor",
            &["optimizer_type=Adafactor", "num_warmup_steps=0"][..],
        ),
        (
            "Adafactor/lr",
            &[
                "optimizer_type=Adafactor",
                "learning_rate=0.002",
                "optimizer_args=[\"scale_parameter=False\", \"relative_step=False\", \"warmup_init=False\"]",
            ][..],
        ),
    ] {
        let dir = scratch(&format!("loss-{name}"));
        lorafuse::demo::prepare(&dir, 40).unwrap();
        let mut sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        sets.push("sample_every_n_steps=0".into());
        let cfg = TrainConfig::load(dir.join("demo.yaml"), &sets).unwrap();
        let out = common::train_quietly(&cfg, &be)
        .unwrap();
        figures.push((name, out.train_loss_before, out.train_loss_after));
        let _ = std::fs::remove_dir_all(&dir);
    }
    for (name, before, after) in &figures {
        eprintln!("{name:12} fixed-noise loss {before:.4} -> {after:.6}");
    }
    for (name, before, after) in &figures {
        assert!(after < before, "{name}: {before} -> {after}");
    }
}
