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
