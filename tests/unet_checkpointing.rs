//! Gradient checkpointing (`gradient_checkpointing: true`): the UNet's tape keeps only each
//! layer's input and the backward computes the layer again. The gradients must be those of a
//! run without it, bit for bit (same ops, same inputs, same order, the same dropout masks),
//! on the CPU in f64 and f32 (and on the CUDA backend in f16: tests/cuda_checkpointing.rs), while
//! the tape holds less. Then a short training run from a config: the same losses and LoRA.

use std::sync::atomic::AtomicBool;

use crate::common::checkpointing::{assert_same, pass};
use lorafuse::config::TrainConfig;
use lorafuse::train::trainer::{train, Event, Recorder};
use lorafuse::CpuBackend;

#[test]
fn checkpointed_gradients_are_bit_identical_on_the_cpu() {
    for (what, be) in [
        ("cpu f64", CpuBackend::f64()),
        ("cpu f32", CpuBackend::new()),
    ] {
        assert_same(what, &pass(&be, false, false), &pass(&be, true, false));
    }
}

/// DoRA's forward is recomputed too (its V built again from the same tensors): the same
/// gradients of down, up and the magnitudes.
#[test]
fn checkpointed_dora_gradients_are_bit_identical_on_the_cpu() {
    let be = CpuBackend::new();
    assert_same(
        "cpu f32 DoRA",
        &pass(&be, false, true),
        &pass(&be, true, true),
    );
}

/// A short run of the demo model from its config, with and without the key: the same
/// per-step losses and the same LoRA file.
#[test]
fn a_checkpointed_training_run_gives_the_same_losses_and_lora() {
    let dir = std::env::temp_dir().join(format!("lorafuse-ckpt-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    lorafuse::demo::prepare(&dir, 8).unwrap();
    let run = |name: &str, on: bool| {
        let sets = [
            format!("output_name={name}"),
            format!("gradient_checkpointing={on}"),
            "max_train_steps=3".into(),
            "lora_dropout=0.2".into(),
            "sample_every_n_steps=0".into(),
            "save_precision=fp32".into(),
        ];
        let cfg = TrainConfig::load(dir.join("demo.yaml"), &sets).unwrap();
        assert_eq!(cfg.gradient_checkpointing, on);
        let mut rec = Recorder::default();
        train(
            &cfg,
            &CpuBackend::new(),
            false,
            &AtomicBool::new(false),
            &mut rec,
        )
        .unwrap();
        let losses: Vec<u64> = rec
            .0
            .iter()
            .filter_map(|e| match e {
                Event::Step { loss, .. } => Some(loss.to_bits()),
                _ => None,
            })
            .collect();
        let lora = std::fs::read(cfg.output_dir.join(format!("{name}.safetensors"))).unwrap();
        (losses, lora)
    };
    let (plain_losses, plain_lora) = run("plain", false);
    let (ckpt_losses, ckpt_lora) = run("ckpt", true);
    assert_eq!(plain_losses.len(), 3);
    assert_eq!(plain_losses, ckpt_losses);
    // The files differ only in their metadata (name, ss_gradient_checkpointing): compare the
    // tensors.
    let tensors = |bytes: &[u8]| {
        let st = safetensors::SafeTensors::deserialize(bytes).unwrap();
        let mut v: Vec<(String, Vec<u8>)> = st
            .tensors()
            .into_iter()
            .map(|(n, t)| (n, t.data().to_vec()))
            .collect();
        v.sort();
        v
    };
    assert_eq!(tensors(&plain_lora), tensors(&ckpt_lora));
    let _ = std::fs::remove_dir_all(&dir);
}
