//! The binary: help, version, `devices`, and a usage error's exit code.

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
        text.contains("LoRA trainer for Stable Diffusion 1.x") && text.contains("devices"),
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
}

#[test]
fn sample_writes_a_png_and_refuses_bad_prompt_options() {
    let dir = std::env::temp_dir().join(format!("lorafuse-cli-sample-{}", std::process::id()));
    let model = lorafuse::demo::model::write_tiny_model(&dir.join("model"), 3).unwrap();
    let png = dir.join("s.png");
    let o = Command::new(env!("CARGO_BIN_EXE_lorafuse"))
        .args(["sample", "--model"])
        .arg(&model)
        .arg("--out")
        .arg(&png)
        .arg("a red circle --w 64 --h 64 --s 3 --d 5")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("seed 5"));
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
    let _ = std::fs::remove_dir_all(&dir);
}
