//! Crash safety: a training run killed with SIGKILL (no chance to save anything) resumes from
//! its last save point and ends with the same losses and the same LoRA, bit for bit, as a run
//! that was never interrupted; save points keep the configured number of checkpoints.

use crate::common;
use common::tools::TempDir;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lorafuse::train::state;

/// A fresh folder, removed when dropped.
fn scratch(name: &str) -> TempDir {
    TempDir::new(&format!("crash-{name}"))
}

/// `lorafuse train` on a demo folder with save points every 4 steps.
fn train_cmd(dir: &Path, resume: bool) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lorafuse"));
    c.arg("train").arg(dir.join("demo.yaml"));
    for set in [
        "save_every_n_steps=4",
        "save_last_n_steps=8",
        "sample_every_n_steps=0",
        "validate_every_n_steps=6",
        "lora_dropout=0.1",
        "shuffle_caption=true",
        "flip_aug=true",
    ] {
        c.args(["--set", set]);
    }
    if resume {
        c.arg("--resume");
    }
    c.stdout(Stdio::null()).stderr(Stdio::piped());
    c
}

/// The final LoRA's tensors by name, as bytes.
fn lora_tensors(path: &Path) -> Vec<(String, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<(String, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, t)| (n, t.data().to_vec()))
        .collect();
    out.sort();
    out
}

#[test]
fn a_run_killed_with_sigkill_resumes_to_the_same_lora() {
    const STEPS: usize = 40;
    let straight = scratch("straight");
    lorafuse::demo::prepare(&straight, STEPS).unwrap();
    let o = train_cmd(&straight, false).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let killed = scratch("killed");
    lorafuse::demo::prepare(&killed, STEPS).unwrap();
    let out = killed.join("output");
    let state_file = out.join("state.safetensors");
    let mut child = train_cmd(&killed, false).spawn().unwrap();
    // Kill it as soon as its first save point is on disk.
    let t0 = Instant::now();
    while !state_file.exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no state was saved"
        );
        assert!(child.try_wait().unwrap().is_none(), "the run ended first");
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert!(!status.success(), "killed, not finished: {status:?}");
    let (progress, _) = state::load(&state_file).expect("the state on disk is whole");
    assert!(
        progress.step > 0 && (progress.step as usize) < STEPS,
        "killed mid-run, at step {}",
        progress.step
    );
    assert!(!out.join("demo-shapes.safetensors").exists());

    let o = train_cmd(&killed, true).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (a, _) = state::load(&straight.join("output/state.safetensors")).unwrap();
    let (b, _) = state::load(&state_file).unwrap();
    assert_eq!(a.step, STEPS as u64);
    assert_eq!(
        a.train_losses, b.train_losses,
        "the resumed run's losses equal the uninterrupted run's"
    );
    assert_eq!(a.validation_losses, b.validation_losses);
    assert_eq!(
        lora_tensors(&straight.join("output/demo-shapes.safetensors")),
        lora_tensors(&out.join("demo-shapes.safetensors")),
        "the same LoRA, bit for bit"
    );
    // save_last_n_steps=8 with a save every 4 steps: the step checkpoints of the last 8 steps
    // (32 and 36) and their states are kept, older ones deleted.
    let mut names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("-step"))
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "demo-shapes-step00000028-state.safetensors",
            "demo-shapes-step00000028.safetensors",
            "demo-shapes-step00000032-state.safetensors",
            "demo-shapes-step00000032.safetensors",
            "demo-shapes-step00000036-state.safetensors",
            "demo-shapes-step00000036.safetensors",
        ]
    );
    let _ = std::fs::remove_dir_all(&straight);
    let _ = std::fs::remove_dir_all(&killed);
}
