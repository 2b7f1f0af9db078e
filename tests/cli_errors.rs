//! `lorafuse train` on bad input: each case exits with code 2, prints one clear message that
//! names the culprit, and never panics.

use crate::common;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// A fresh folder for one case, inside the demo's (the cases hand out paths in it, so it
/// lives as long as the process; see `demo`).
fn scratch(name: &str) -> PathBuf {
    let d = demo().join("cases").join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// One demo model and data set for all cases (written once).
fn demo() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = common::tools::process_dir("cli-errors");
        lorafuse::demo::prepare(&d, 2).unwrap();
        d
    })
}

/// A copy of the demo data in its own folder, to damage.
fn data_copy(name: &str) -> PathBuf {
    let dst = scratch(name).join("10_shapes");
    std::fs::create_dir_all(&dst).unwrap();
    for e in std::fs::read_dir(demo().join("data/10_shapes")).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, dst.join(p.file_name().unwrap())).unwrap();
    }
    dst.parent().unwrap().to_path_buf()
}

/// Runs `lorafuse train` on a config whose body is `yaml`; returns (exit code, stderr).
fn train(yaml: &str) -> (Option<i32>, String) {
    let dir = scratch(&format!(
        "cfg-{:x}",
        yaml.len() ^ yaml.bytes().map(|b| b as usize).sum::<usize>()
    ));
    let cfg = dir.join("config.yaml");
    std::fs::write(&cfg, yaml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_lorafuse"))
        .arg("train")
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!err.contains("panicked"), "{err}");
    (out.status.code(), err)
}

fn base(data: &Path, model: &Path, output: &Path) -> String {
    format!(
        "train_data_dir: {}\nbase_model: {}\noutput_dir: {}\nresolution: 64\nmax_train_steps: 1\nmixed_precision: \"no\"\n",
        data.display(),
        model.display(),
        output.display()
    )
}

fn ok_paths(name: &str) -> (PathBuf, PathBuf, PathBuf) {
    (
        demo().join("data"),
        demo().join("model"),
        scratch(name).join("out"),
    )
}

fn assert_fails(yaml: &str, needles: &[&str]) {
    let (code, err) = train(yaml);
    assert_eq!(code, Some(2), "{err}");
    for n in needles {
        assert!(err.contains(n), "expected {n:?} in:\n{err}");
    }
    assert_eq!(err.matches("error:").count(), 1, "one message:\n{err}");
}

#[test]
fn unknown_key_suggests_the_nearest() {
    let (d, m, o) = ok_paths("unknown");
    assert_fails(
        &format!("{}learnig_rate: 0.001\n", base(&d, &m, &o)),
        &["learnig_rate", "learning_rate"],
    );
}

#[test]
fn out_of_range_value_names_key_value_and_range() {
    let (d, m, o) = ok_paths("range");
    assert_fails(
        &format!("{}lora_rank: 0\n", base(&d, &m, &o)),
        &["lora_rank", "0", "1 to 1024"],
    );
}

#[test]
fn bad_optimizer_arguments_name_the_argument() {
    let (d, m, o) = ok_paths("optargs");
    for (extra, needles) in [
        (
            "optimizer_type: Adafactor\noptimizer_args: [\"decay_rate=0.8\"]\n",
            &["optimizer_args", "decay_rate=0.8", "[-1, 0]"][..],
        ),
        (
            "optimizer_type: Adafactor\noptimizer_args: [\"betas=0.9,0.99\"]\n",
            &["optimizer_args", "Adafactor has no argument `betas`"][..],
        ),
        (
            "optimizer_type: Adafactor\noptimizer_args: [\"relative_step=maybe\"]\n",
            &["relative_step must be True or False"][..],
        ),
    ] {
        assert_fails(&format!("{}{extra}", base(&d, &m, &o)), needles);
    }
}

#[test]
fn missing_data_folder() {
    let (_, m, o) = ok_paths("nodata");
    let d = demo().join("no-such-folder");
    assert_fails(&base(&d, &m, &o), &["no-such-folder", "train_data_dir"]);
}

#[test]
fn corrupt_image_is_named() {
    let (_, m, o) = ok_paths("corrupt");
    let d = data_copy("corrupt-data");
    std::fs::write(d.join("10_shapes/shape_03.png"), b"this is not a png").unwrap();
    assert_fails(&base(&d, &m, &o), &["shape_03.png", "cannot decode"]);
}

#[test]
fn image_without_caption_is_named() {
    let (_, m, o) = ok_paths("nocaption");
    let d = data_copy("nocaption-data");
    // Directly in train_data_dir (an image in `10_shapes/` would be captioned "shapes", its
    // class tokens, as kohya does).
    std::fs::rename(d.join("10_shapes/shape_05.png"), d.join("shape_05.png")).unwrap();
    std::fs::remove_file(d.join("10_shapes/shape_05.txt")).unwrap();
    assert_fails(
        &base(&d, &m, &o),
        &["shape_05.png", "shape_05.txt", "no caption"],
    );
}

#[test]
fn empty_folder() {
    let (_, m, o) = ok_paths("empty");
    let d = scratch("empty-data");
    assert_fails(
        &base(&d, &m, &o),
        &["no training images found", "empty-data"],
    );
}

#[test]
fn base_model_not_found() {
    let (d, _, o) = ok_paths("nomodel");
    let m = demo().join("missing-model.safetensors");
    assert_fails(&base(&d, &m, &o), &["missing-model.safetensors"]);
}

#[test]
fn output_folder_not_writable() {
    let (d, m, _) = ok_paths("unwritable");
    let file = scratch("unwritable-out").join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let o = file.join("out");
    assert_fails(&base(&d, &m, &o), &["output_dir", "a-file"]);
}

#[test]
fn demo_runs_and_says_where_things_went() {
    let dir = scratch("demo-cmd");
    let out = Command::new(env!("CARGO_BIN_EXE_lorafuse"))
        .args(["demo", "--steps", "8", "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains("demo-shapes.safetensors") && stderr.contains("fixed-noise loss"),
        "{stdout}\n{stderr}"
    );
    assert!(dir.join("output/demo-shapes.safetensors").is_file());
    assert!(dir.join("output/demo-shapes-loss.png").is_file());
    assert!(dir
        .join("output/samples/demo-shapes_000008_00.png")
        .is_file());
    // inspect reads what demo wrote.
    let out = Command::new(env!("CARGO_BIN_EXE_lorafuse"))
        .arg("inspect")
        .arg(dir.join("output/demo-shapes.safetensors"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("192"), "{text}");
}

/// A real Ctrl-C (SIGINT) to `lorafuse train`: it finishes the step, saves the state, says how
/// to resume and where the state is, and exits 130 (no "error:" line); `--resume` then
/// completes the run.
#[cfg(unix)]
#[test]
fn ctrl_c_saves_and_resume_finishes() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let dir = scratch("sigint");
    lorafuse::demo::prepare(&dir, 60).unwrap();
    let cfg = dir.join("demo.yaml");
    let mut child = Command::new(env!("CARGO_BIN_EXE_lorafuse"))
        .arg("train")
        .arg(&cfg)
        .args(["--set", "sample_every_n_steps=0"])
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    let mut line = String::new();
    // Wait for training to be under way (the progress line of step 10), then interrupt.
    while err.read_line(&mut line).unwrap() > 0 {
        seen.push_str(&line);
        if line.contains("step     10/") {
            break;
        }
        line.clear();
    }
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut err, &mut rest).unwrap();
    let out = child.wait_with_output().unwrap();
    seen.push_str(&rest);
    assert_eq!(out.status.code(), Some(130), "{seen}");
    assert!(
        seen.contains("interrupted at step") && seen.contains("--resume"),
        "{seen}"
    );
    assert!(!seen.contains("error:"), "{seen}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("resumable state:") && stdout.contains("state.safetensors"),
        "{stdout}"
    );
    assert!(dir.join("output/state.safetensors").is_file());
    assert!(
        !dir.join("output/demo-shapes.safetensors").exists(),
        "no final LoRA from an interrupted run"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_lorafuse"))
        .arg("train")
        .arg(&cfg)
        .args(["--set", "sample_every_n_steps=0", "--resume"])
        .arg(dir.join("output"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && text.contains("resuming at step"),
        "{text}"
    );
    assert!(dir.join("output/demo-shapes.safetensors").is_file());
}

#[cfg(not(feature = "cuda"))]
#[test]
fn device_cuda_without_the_cuda_build_says_how_to_get_it() {
    let (d, m, o) = ok_paths("nocuda");
    assert_fails(
        &format!("{}device: cuda\n", base(&d, &m, &o)),
        &["cuda:0", "--features cuda", "device: cpu"],
    );
}
