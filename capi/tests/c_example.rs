//! examples/train.c, then the program in README.md's "Embedding from C", compiled with the
//! system C compiler (`CC`, else gcc; warnings are errors) against include/lorafuse.h and the
//! cdylib cargo built for this test, and run: train.c trains the demo model, cancels and
//! resumes a run and checks the error codes (it exits 1 naming a failed check); the README's
//! program trains two steps on the demo folder train.c wrote.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The folder of the cdylib cargo built for this test: beside it, target/<profile>/deps.
fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().to_path_buf()
}

/// `src` compiled to `bin` and linked with the cdylib beside this test.
fn compile(src: &Path, bin: &Path) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let lib_dir = &lib_dir();
    assert!(
        lib_dir.join("liblorafuse_capi.so").exists(),
        "no liblorafuse_capi.so in {}",
        lib_dir.display()
    );
    let cc = std::env::var("CC").unwrap_or_else(|_| "gcc".into());
    let built = Command::new(&cc)
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic", "-I"])
        .arg(root.join("include"))
        .arg(src)
        .arg("-L")
        .arg(lib_dir)
        .arg("-llorafuse_capi")
        .arg(format!("-Wl,-rpath,{}", lib_dir.display()))
        .arg("-o")
        .arg(bin)
        .output()
        .unwrap_or_else(|e| panic!("cannot run the C compiler `{cc}`: {e}"));
    assert!(
        built.status.success(),
        "{cc} failed on {}:\n{}",
        src.display(),
        String::from_utf8_lossy(&built.stderr)
    );
}

/// Runs `bin DIR` and returns its standard output, failing with both outputs unless it
/// exits 0.
fn run(bin: &Path, dir: &Path) -> String {
    // Cargo's LD_LIBRARY_PATH, which outranks the rpath, also names target/<profile>, where
    // `cargo build` leaves a liblorafuse_capi.so that may be older than this test's.
    let ran = Command::new(bin)
        .arg(dir)
        .env("LD_LIBRARY_PATH", lib_dir())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&ran.stdout).to_string();
    assert!(
        ran.status.success(),
        "{} exited with {}:\n{out}\n{}",
        bin.display(),
        ran.status,
        String::from_utf8_lossy(&ran.stderr)
    );
    out
}

/// The ```c block of README.md's "Embedding from C".
fn readme_program() -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("../README.md")).unwrap();
    let section = readme
        .split("\n## Embedding from C\n")
        .nth(1)
        .expect("README.md has a section \"Embedding from C\"");
    let block = section.split("```c\n").nth(1).expect("with a ```c block");
    block.split("\n```").next().unwrap().to_string()
}

#[test]
fn the_c_example_and_the_readme_program_train() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let work = std::env::temp_dir().join(format!("lorafuse-capi-c-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    let demo = work.join("demo");

    let train = work.join("train");
    compile(&root.join("examples/train.c"), &train);
    let out = run(&train, &demo);
    assert!(out.ends_with("train.c: ok\n"), "{out}");
    // Four step events in the first run, one before the cancel, three resumed.
    assert_eq!(out.matches(r#""event":"step""#).count(), 4 + 1 + 3, "{out}");
    assert!(out.contains("cancelled after step 1"), "{out}");

    let readme = work.join("readme.c");
    std::fs::write(&readme, readme_program()).unwrap();
    compile(&readme, &work.join("readme"));
    let out = run(&work.join("readme"), &demo);
    assert_eq!(out.matches(r#""event":"step""#).count(), 2, "{out}");
    let last: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(last["event"], "finished", "{out}");
    let lora = Path::new(last["report"]["lora_path"].as_str().unwrap());
    assert!(
        lora.starts_with(demo.join("lora")) && lora.exists(),
        "{out}"
    );
    let _ = std::fs::remove_dir_all(&work);
}
