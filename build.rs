// With the `cuda` feature, compiles every kernels/*.cu to PTX in OUT_DIR with nvcc (found via
// $NVCC, $CUDA_HOME/bin/nvcc or PATH) for sm_80 and sm_90, then assembles each with ptxas as a
// check (set KERNELS_PTXAS_V=1 to see registers and spills). Without the feature it does
// nothing: the default build needs no CUDA at all.
use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const ARCHS: [&str; 2] = ["sm_80", "sm_90"];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    for v in ["NVCC", "CUDA_HOME", "KERNELS_PTXAS_V"] {
        println!("cargo:rerun-if-env-changed={v}");
    }
    println!("cargo:rerun-if-changed=kernels");
    let mut files: Vec<PathBuf> = std::fs::read_dir("kernels")
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.sort();
    for p in &files {
        println!("cargo:rerun-if-changed={}", p.display()); // .cuh headers too
    }
    let sources: Vec<&PathBuf> = files
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "cu"))
        .collect();
    if sources.is_empty() {
        return;
    }
    let nvcc = find_nvcc().unwrap_or_else(|| {
        panic!(
            "\n\nlorafuse: the `cuda` feature needs nvcc to compile kernels/*.cu to PTX, and none \
             was found (looked at $NVCC, $CUDA_HOME/bin/nvcc and PATH).\nNo GPU is needed to \
             build: run `scripts/install-nvcc.sh` (pinned CUDA 13.0 compiler wheels from PyPI) \
             and export the NVCC it prints.\n\n"
        )
    });
    let ptxas = nvcc.with_file_name("ptxas");
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    for cu in sources {
        let stem = cu
            .file_stem()
            .expect("a .cu file has a stem")
            .to_string_lossy();
        for arch in ARCHS {
            let ptx = out.join(format!("{stem}.{arch}.ptx"));
            run(
                Command::new(&nvcc)
                    .args([
                        "-ptx",
                        &format!("-arch={arch}"),
                        "-O3",
                        "-lineinfo",
                        "-std=c++17",
                    ])
                    .arg("-Ikernels")
                    .arg(cu)
                    .arg("-o")
                    .arg(&ptx),
                &format!("nvcc on {}", cu.display()),
            );
            let log = run(
                Command::new(&ptxas)
                    .arg(format!("-arch={arch}"))
                    .arg("-v")
                    .arg(&ptx)
                    .arg("-o")
                    .arg(out.join(format!("{stem}.{arch}.cubin"))),
                &format!("ptxas on {}", ptx.display()),
            );
            if env::var_os("KERNELS_PTXAS_V").is_some() {
                for l in log.lines().filter(|l| {
                    l.contains("registers") || l.contains("spill") || l.contains("Compiling entry")
                }) {
                    println!("cargo:warning={stem} {arch}: {}", l.trim());
                }
            }
        }
    }
}

fn find_nvcc() -> Option<PathBuf> {
    if let Some(p) = env::var_os("NVCC") {
        return Some(PathBuf::from(p));
    }
    if let Some(h) = env::var_os("CUDA_HOME") {
        let p = Path::new(&h).join("bin/nvcc");
        if p.is_file() {
            return Some(p);
        }
    }
    let local = Path::new(".toolchain/nvidia/cu13/bin/nvcc");
    if local.is_file() {
        return Some(local.to_path_buf());
    }
    env::split_paths(&env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join("nvcc"))
        .find(|p| p.is_file())
}

fn run(cmd: &mut Command, what: &str) -> String {
    let o = cmd
        .output()
        .unwrap_or_else(|e| panic!("lorafuse: cannot run {what}: {e}"));
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    if !o.status.success() {
        panic!("lorafuse: {what} failed:\n{err}");
    }
    err
}
