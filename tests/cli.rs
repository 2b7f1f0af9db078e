//! The binary: help, version, `devices`, exit codes (2 bad input, 1 failure), output to a
//! closed pipe or a full disk, `sample --device`, `merge` refusing a diffusers folder.

use std::process::Command;

fn lorafuse(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_lorafuse"))
        .args(args)
        .output()
        .expect("run lorafuse")
}

#[test]
fn help_and_version() {
    let out = lorafuse(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("LoRA trainer for Stable Diffusion 1.x, 2.x and SDXL")
            && text.contains("devices"),
        "{text}"
    );
    let out = lorafuse(&["--version"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn devices_lists_the_cpu() {
    let out = lorafuse(&["devices"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("cpu: available"), "{text}");
    assert!(text.contains("cuda"), "{text}");
    // Without the CUDA build, `auto` says why it took the CPU; it asked for no GPU.
    if !cfg!(feature = "cuda") {
        assert!(
            text.contains("device: auto -> cpu (this build of lorafuse has no CUDA backend"),
            "{text}"
        );
        assert!(!text.contains("was asked for"), "{text}");
    }
}

/// `lorafuse inspect x | head`: the reader is gone before lorafuse writes. It stops quietly
/// with exit code 0 (it panicked on the broken pipe).
#[cfg(unix)]
#[test]
fn output_into_a_closed_pipe_is_quiet() {
    for args in [
        vec![
            "inspect".to_string(),
            fixtures()
                .join("tiny-lora.safetensors")
                .display()
                .to_string(),
        ],
        vec!["devices".to_string()],
    ] {
        // `true` reads nothing and exits at once; lorafuse starts a second later, writing into
        // a pipe without a reader, and its exit code comes back on stderr.
        let o = Command::new("sh")
            .arg("-c")
            .arg("{ sleep 1; \"$0\" \"$@\"; echo \"exit=$?\" >&2; } | true")
            .arg(env!("CARGO_BIN_EXE_lorafuse"))
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(!err.contains("error:"), "{args:?}: {err}");
        assert!(err.contains("exit=0"), "{args:?}: {err}");
    }
}

/// Standard output on a full disk is a failure, not bad input: exit code 1, one message.
#[cfg(target_os = "linux")]
#[test]
fn output_to_a_full_disk_exits_1() {
    let Ok(full) = std::fs::OpenOptions::new().write(true).open("/dev/full") else {
        eprintln!("no /dev/full here; skipped");
        return;
    };
    let o = Command::new(env!("CARGO_BIN_EXE_lorafuse"))
        .arg("devices")
        .stdout(full)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("error: cannot write to standard output"),
        "{err}"
    );
    assert_eq!(err.matches("error:").count(), 1, "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn unknown_command_exits_2() {
    let out = lorafuse(&["trian"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("trian"));
}

fn fixtures() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

#[test]
fn merge_and_inspect_the_fixture_lora() {
    let out = std::env::temp_dir().join(format!(
        "lorafuse-cli-merge-{}.safetensors",
        std::process::id()
    ));
    let lora = format!("{}:0.7", fixtures().join("tiny-lora.safetensors").display());
    let o = Command::new(env!("CARGO_BIN_EXE_lorafuse"))
        .args(["merge", "--model"])
        .arg(fixtures().join("tiny-sd15.safetensors"))
        .args(["--lora", &lora, "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("192"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert!(out.is_file());
    let _ = std::fs::remove_file(&out);
    // A LoRA file that is not one: exit 2, the file named.
    let o = lorafuse(&[
        "inspect",
        &fixtures()
            .join("tiny-sd15.safetensors")
            .display()
            .to_string(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("tiny-sd15.safetensors"));
    // A diffusers folder as the base: exit 2, what to pass instead (was "os error 19").
    let o = Command::new(env!("CARGO_BIN_EXE_lorafuse"))
        .args(["merge", "--model"])
        .arg(fixtures().join("tiny-sd15-diffusers"))
        .args(["--lora", &lora, "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("single-file .safetensors") && !err.contains("os error"),
        "{err}"
    );
    assert!(!out.exists());
    // A folder where a LoRA file belongs: exit 2, said so (was "os error 19", exit 1).
    let o = lorafuse(&[
        "inspect",
        &fixtures().join("tiny-sd15-diffusers").display().to_string(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("it is a folder") && !err.contains("os error"),
        "{err}"
    );
}

#[test]
fn sample_writes_a_png_and_refuses_bad_prompt_options() {
    let dir = std::env::temp_dir().join(format!("lorafuse-cli-sample-{}", std::process::id()));
    let model = lorafuse::demo::model::write_tiny_model(&dir.join("model"), 3).unwrap();
    let png = dir.join("s.png");
    let o = Command::new(env!("CARGO_BIN_EXE_lorafuse"))
        .args(["sample", "--device", "cpu", "--model"])
        .arg(&model)
        .arg("--out")
        .arg(&png)
        .arg("a red circle --w 64 --h 64 --s 3 --d 5")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("seed 5"));
    assert!(String::from_utf8_lossy(&o.stderr).contains("device: cpu"));
    let bytes = std::fs::read(&png).unwrap();
    assert!(bytes.starts_with(b"\x89PNG"));
    let o = Command::new(env!("CARGO_BIN_EXE_lorafuse"))
        .args(["sample", "--model"])
        .arg(&model)
        .arg("a cat --zz 3")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--zz"));
    // --device takes the values of the config key.
    let o = lorafuse(&["sample", "--device", "gpu", "--model", "m", "a cat"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("cuda:N"));
    #[cfg(not(feature = "cuda"))]
    {
        let o = Command::new(env!("CARGO_BIN_EXE_lorafuse"))
            .args(["sample", "--device", "cuda", "--model"])
            .arg(&model)
            .arg("a cat --w 64 --h 64 --s 1")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(err.contains("cuda:0 was asked for"), "{err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
