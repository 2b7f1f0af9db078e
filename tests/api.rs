//! The embedding API (src/api.rs): a run driven through events only, cancellation from the
//! event callback then a resume that ends where an uninterrupted run ends, two trainers at
//! once in one process, and the caps refusing a run before it starts.

use crate::common;
use common::tools::TempDir;
use std::path::Path;

use lorafuse::api::{ApiError, Caps, Trainer};
use lorafuse::train::events::Event;

/// A fresh folder, removed when dropped.
fn scratch(name: &str) -> TempDir {
    TempDir::new(&format!("api-{name}"))
}

const STEPS: usize = 6;

/// The demo's model and data, and a trainer writing into `out` on one thread.
fn trainer(demo: &Path, out: &str) -> Trainer {
    let sets = [
        format!("output_dir={}", demo.join(out).display()),
        "sample_every_n_steps=0".to_string(),
        "save_precision=fp32".to_string(),
    ];
    Trainer::from_file(demo.join("demo.yaml"), &sets)
        .unwrap()
        .with_caps(Caps {
            threads: Some(1),
            ..Caps::default()
        })
}

fn steps(events: &[Event]) -> Vec<u64> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Step { step, .. } => Some(*step),
            _ => None,
        })
        .collect()
}

#[test]
fn a_run_driven_by_events_then_cancelled_and_resumed() {
    let dir = scratch("events");
    lorafuse::demo::prepare(&dir, STEPS).unwrap();

    let whole = trainer(&dir, "whole");
    assert!(whole.validate().is_empty());
    let mut events = Vec::new();
    let full = whole.run(|e| events.push(e)).unwrap();
    assert!(matches!(events[0], Event::Info(_)), "{:?}", events[0]);
    assert!(events.iter().any(|e| matches!(e, Event::Started { .. })));
    assert_eq!(steps(&events), (1..=STEPS as u64).collect::<Vec<_>>());
    assert!(events
        .iter()
        .any(|e| matches!(e, Event::Saved { path, .. } if *path == full.lora_path)));
    assert!(!full.interrupted && full.lora_path.exists());

    // Cancelled from the callback after step 3: the step finishes, the state is saved.
    let cut = trainer(&dir, "cut");
    let cancel = cut.canceller();
    let mut seen = Vec::new();
    let first = cut
        .run(|e| {
            if matches!(e, Event::Step { step: 3, .. }) {
                cancel.cancel();
            }
            seen.push(e);
        })
        .unwrap();
    assert!(first.interrupted, "{first:?}");
    assert_eq!(first.steps, 3);
    assert!(first.state_path.exists());
    // A fresh trainer for the same config resumes and ends where the whole run ended.
    let mut rest = Vec::new();
    let second = trainer(&dir, "cut").resume(|e| rest.push(e)).unwrap();
    assert_eq!(steps(&rest), (4..=STEPS as u64).collect::<Vec<_>>());
    assert_eq!(second.steps, STEPS as u64);
    assert_eq!(second.train_loss_after, full.train_loss_after);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn two_trainers_run_at_once_without_interfering() {
    let dir = scratch("two");
    lorafuse::demo::prepare(&dir, STEPS).unwrap();
    let (a, b) = (trainer(&dir, "a"), trainer(&dir, "b"));
    let (ra, rb) = std::thread::scope(|s| {
        let ta = s.spawn(|| {
            let mut ev = Vec::new();
            let r = a.run(|e| ev.push(e)).unwrap();
            (r, steps(&ev))
        });
        let tb = s.spawn(|| {
            let mut ev = Vec::new();
            let r = b.run(|e| ev.push(e)).unwrap();
            (r, steps(&ev))
        });
        (ta.join().unwrap(), tb.join().unwrap())
    });
    // Each saw its own six steps, and the same config gave the same result in both.
    assert_eq!(ra.1, (1..=STEPS as u64).collect::<Vec<_>>());
    assert_eq!(rb.1, ra.1);
    assert_eq!(ra.0.train_loss_after, rb.0.train_loss_after);
    assert_ne!(ra.0.lora_path, rb.0.lora_path);
    let be = lorafuse::CpuBackend::new();
    let load = |p: &Path| lorafuse::lora::kohya::load(p, &be, lorafuse::DType::F32).unwrap();
    let (la, lb) = (load(&ra.0.lora_path), load(&rb.0.lora_path));
    assert_eq!(la.len(), lb.len());
    for (x, y) in la.modules().iter().zip(lb.modules()) {
        assert_eq!(x.name, y.name);
        assert_eq!(x.up.to_f32_vec(), y.up.to_f32_vec(), "{}", x.name);
        assert_eq!(x.down.to_f32_vec(), y.down.to_f32_vec(), "{}", x.name);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn caps_and_problems_refuse_a_run_before_it_starts() {
    let dir = scratch("caps");
    lorafuse::demo::prepare(&dir, STEPS).unwrap();
    let capped = trainer(&dir, "capped").with_caps(Caps {
        max_memory_bytes: Some(64 * 1024),
        ..Caps::default()
    });
    match capped.run(|_| {}) {
        Err(ApiError::Refused(why)) => assert!(why.contains("cap"), "{why}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(
        !dir.join("capped/state.safetensors").exists(),
        "nothing was trained"
    );

    let outside = trainer(&dir, "anywhere").with_caps(Caps {
        output_root: Some(dir.join("allowed")),
        ..Caps::default()
    });
    let problems = outside.validate();
    assert!(
        problems
            .iter()
            .any(|p| p.key.as_deref() == Some("output_dir") && p.message.contains("outside")),
        "{problems:?}"
    );
    assert!(matches!(outside.run(|_| {}), Err(ApiError::Invalid(_))));

    // Every problem of a config at once, each with its key.
    let text =
        "train_data_dir: /nowhere\nbase_model: m\noutput_dir: o\nlora_rank: 0\nbatch_size: 0\n";
    match Trainer::from_yaml(text, "host.yaml", &[] as &[&str]) {
        Err(ApiError::Invalid(p)) => {
            let keys: Vec<_> = p.iter().filter_map(|p| p.key.as_deref()).collect();
            assert!(
                keys.contains(&"lora_rank") && keys.contains(&"batch_size"),
                "{p:?}"
            );
        }
        other => panic!("expected problems, got {:?}", other.err()),
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Told it may, a run over its memory cap turns on gradient checkpointing (and would split its
/// batch into accumulated micro-batches, the same 4 images per optimizer step) until the plan
/// fits, says so in a warning, and trains.
#[test]
fn caps_adapt_the_batch_when_allowed() {
    let dir = scratch("adapt");
    lorafuse::demo::prepare(&dir, 2).unwrap();
    let sets = |extra: &[&str]| {
        let mut v = vec![
            format!("output_dir={}", dir.join("out").display()),
            "sample_every_n_steps=0".to_string(),
            "device=cpu".to_string(),
            // At 128 the batch of 4's training step outgrows the caching phase's peak (the VAE
            // encoding with every network loaded), which bounds the checkpointed runs.
            "resolution=128".to_string(),
        ];
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let load = |extra: &[&str]| Trainer::from_file(dir.join("demo.yaml"), &sets(extra)).unwrap();
    let small = load(&[
        "batch_size=1",
        "gradient_accumulation_steps=4",
        "gradient_checkpointing=true",
    ]);
    let cap = small.plan().unwrap().pool_peak() as u64;
    let full = load(&[]);
    assert_eq!(full.config().batch_size, 4);
    assert!(full.plan().unwrap().pool_peak() as u64 > cap);
    let adapting = load(&[]).with_caps(Caps {
        max_memory_bytes: Some(cap),
        adapt_to_memory: true,
        threads: Some(1),
        ..Caps::default()
    });
    let mut warnings = Vec::new();
    let report = adapting
        .run(|e| {
            if let Event::Warning(w) = e {
                warnings.push(w)
            }
        })
        .unwrap();
    // On the demo model the caching phase bounds every checkpointed batch (the latents are
    // kept in host memory), so checkpointing alone brings the batch of 4 within the cap.
    let w = warnings.join("\n");
    assert!(
        w.contains("gradient_checkpointing: true, batch_size 4 -> 4")
            && w.contains("gradient_accumulation_steps 1 -> 1"),
        "{w}"
    );
    assert_eq!(report.steps, 2);
    // Without leave to adapt, the same cap refuses.
    let refusing = load(&[]).with_caps(Caps {
        max_memory_bytes: Some(cap),
        ..Caps::default()
    });
    assert!(matches!(refusing.run(|_| {}), Err(ApiError::Refused(_))));
    let _ = std::fs::remove_dir_all(&dir);
}
