// With the `cuda` feature, compiles every kernels/*.cu to PTX in OUT_DIR with nvcc (found via
// $NVCC, $CUDA_HOME/bin/nvcc or PATH) for sm_80 and sm_90, then assembles each with ptxas as a
// check (set KERNELS_PTXAS_V=1 to see registers and spills). With the `cuda-emu` feature, the
// same sources are compiled for the host with the C++ compiler (the kernel emulator,
// kernels/emu/). Without either it does nothing: the default build needs no CUDA at all.
use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const ARCHS: [&str; 2] = ["sm_80", "sm_90"];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "cuda-emu")]
    build_emulator();
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
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    write_ptx_table(&out, &sources);
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

/// kernels/*.cu and the emulator runtime, compiled as C++17 for the host into one static
/// library. LORAFUSE_EMU_TSAN=1 instruments them with ThreadSanitizer (a missing
/// `__syncthreads` is then reported as a data race).
#[cfg(feature = "cuda-emu")]
fn build_emulator() {
    println!("cargo:rerun-if-env-changed=LORAFUSE_EMU_TSAN");
    println!("cargo:rerun-if-changed=kernels");
    println!("cargo:rerun-if-changed=kernels/emu");
    let mut files: Vec<PathBuf> = Vec::new();
    for dir in ["kernels", "kernels/emu"] {
        for e in std::fs::read_dir(dir).expect("kernels/ exists").flatten() {
            let p = e.path();
            println!("cargo:rerun-if-changed={}", p.display());
            if p.extension().is_some_and(|x| x == "cu" || x == "cpp") {
                files.push(p);
            }
        }
    }
    files.sort();
    let mut b = cc::Build::new();
    b.cpp(true)
        .std("c++17")
        .include("kernels")
        .flag("-x")
        .flag("c++")
        .flag_if_supported("-Wno-unused-parameter")
        .files(&files);
    if env::var_os("LORAFUSE_EMU_TSAN").is_some() {
        b.flag("-fsanitize=thread").flag("-g");
        // rustc links with -nodefaultlibs, so the runtime is named explicitly (gcc's copy).
        let so = Command::new(b.get_compiler().path())
            .arg("-print-file-name=libtsan.so")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        if let Some(dir) = Path::new(&so).parent().filter(|d| d.is_dir()) {
            println!("cargo:rustc-link-search=native={}", dir.display());
        }
        println!("cargo:rustc-link-lib=dylib=tsan");
    }
    b.compile("lorafuse_emu");
}

/// OUT_DIR/kernels_ptx.rs: `KERNEL_PTX`, (stem, sm_80 PTX, sm_90 PTX) per kernels/*.cu,
/// included by src/backend/cuda/gpu.rs.
fn write_ptx_table(out: &Path, sources: &[&PathBuf]) {
    let mut t = String::from("pub(crate) const KERNEL_PTX: &[(&str, &str, &str)] = &[\n");
    for cu in sources {
        let stem = cu
            .file_stem()
            .expect("a .cu file has a stem")
            .to_string_lossy();
        t.push_str(&format!(
            "    (\"{stem}\", include_str!(concat!(env!(\"OUT_DIR\"), \"/{stem}.sm_80.ptx\")), \
             include_str!(concat!(env!(\"OUT_DIR\"), \"/{stem}.sm_90.ptx\"))),\n"
        ));
    }
    t.push_str("];\n");
    std::fs::write(out.join("kernels_ptx.rs"), t).expect("OUT_DIR is writable");
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
