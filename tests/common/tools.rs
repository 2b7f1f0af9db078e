//! Helpers of the LoRA-tool tests (tests/lora_tools.rs, tests/lora_extract.rs): a scratch
//! folder removed on drop, and running the binary on bad input.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A fresh folder under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        // One folder: a `/` in the tag would make a parent that the drop leaves behind.
        let tag = tag.replace(['/', '\\'], "_");
        let dir = std::env::temp_dir().join(format!(
            "lorafuse-test-tools-{}-{n}-{tag}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir.canonicalize().unwrap_or(dir))
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

/// A folder for the whole test process (a static's, never dropped): `lorafuse-<tag>-<pid>`
/// under the temp dir, fresh. Folders of this tag left by processes that have ended are
/// removed first (where /proc says which are running), so each run leaves at most one.
pub fn process_dir(tag: &str) -> PathBuf {
    let tmp = std::env::temp_dir();
    let prefix = format!("lorafuse-{tag}-");
    if std::path::Path::new("/proc/self").exists() {
        for e in std::fs::read_dir(&tmp).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(pid) = name.strip_prefix(&prefix) else {
                continue;
            };
            if pid.parse::<u32>().is_ok() && !std::path::Path::new("/proc").join(pid).exists() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let dir = tmp.join(format!("{prefix}{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The folder's path: a `TempDir` is used where a `PathBuf` or `&Path` is.
impl std::ops::Deref for TempDir {
    type Target = PathBuf;
    fn deref(&self) -> &PathBuf {
        &self.0
    }
}

impl AsRef<std::path::Path> for TempDir {
    fn as_ref(&self) -> &std::path::Path {
        &self.0
    }
}

impl AsRef<std::ffi::OsStr> for TempDir {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.0.as_os_str()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `lorafuse sample` on the CPU: `model` with `lora` applied, a 64x64 picture in 4 steps into
/// `png`; asserts that it succeeded and wrote the file.
pub fn sample_with_lora(model: &std::path::Path, lora: &std::path::Path, png: &std::path::Path) {
    let out = Command::new(env!("CARGO_BIN_EXE_lorafuse"))
        .args(["sample", "--device", "cpu", "--model"])
        .arg(model)
        .arg("--lora")
        .arg(lora)
        .arg("--out")
        .arg(png)
        .arg("a red circle --w 64 --h 64 --s 4 --d 1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(png.is_file(), "{}", png.display());
}

/// Runs the binary; (exit code, stderr).
pub fn lorafuse(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_lorafuse"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Each command line (arguments split at spaces) exits 2 with a message containing its text,
/// without a panic.
pub fn assert_bad_input(cases: &[(String, &str)]) {
    for (line, want) in cases {
        let argv: Vec<&str> = line.split_whitespace().collect();
        let (code, err) = lorafuse(&argv);
        assert_eq!(code, Some(2), "{argv:?}: {err}");
        assert!(err.contains(want), "{argv:?}: {err}");
        assert!(!err.contains("panicked"), "{argv:?}: {err}");
    }
}
