// With the `cuda` feature, compiles every kernels/*.cu to PTX in OUT_DIR with nvcc (found via
// $NVCC, $CUDA_HOME/bin/nvcc or PATH) for sm_75, sm_80 and sm_90, then assembles each with
// ptxas as a check (set KERNELS_PTXAS_V=1 to see registers and spills), on cargo's job count of
// threads and through a cache shared by the target dir's profiles (`PtxCache`). With the
// `cuda-emu` feature, the same sources are compiled for the host with the C++ compiler (the
// kernel emulator, kernels/emu/; its files too compile on cargo's job count of threads). Without either it only translates kernels/tiles.h (the tile sizes the
// launchers share with the kernels) into Rust: the default build needs no CUDA at all.
use std::collections::hash_map::DefaultHasher;
use std::env;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// The PTX targets: Turing (sm_75: the kernels' m16n8k8 and synchronous-copy paths, see
/// kernels/common.cuh), Ampere and Ada (sm_80), Hopper and later (sm_90).
const ARCHS: [&str; 3] = ["sm_75", "sm_80", "sm_90"];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    write_tiles(&PathBuf::from(
        env::var("OUT_DIR").expect("cargo sets OUT_DIR"),
    ));
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
    // One job per (kernel file, architecture): nvcc to PTX, then ptxas as a check. The jobs run
    // on cargo's job count of threads, and what they produce is kept in a cache that every
    // profile of this target dir shares (`PtxCache`): CI's `clippy --features cuda` (dev) and
    // its release test build with `cuda,cuda-emu` compile the same sources with the same flags,
    // once.
    let cache = PtxCache::new(&out, &nvcc, &files);
    let jobs: Vec<(&PathBuf, &str)> = sources
        .iter()
        .flat_map(|cu| ARCHS.iter().map(move |a| (*cu, *a)))
        .collect();
    let logs = in_parallel(&jobs, |&(cu, arch)| {
        cache.compile(cu, arch, &nvcc, &ptxas, &out)
    });
    if env::var_os("KERNELS_PTXAS_V").is_some() {
        for ((cu, arch), log) in jobs.iter().zip(&logs) {
            let stem = cu.file_stem().expect("a .cu file").to_string_lossy();
            for l in log.lines().filter(|l| {
                l.contains("registers") || l.contains("spill") || l.contains("Compiling entry")
            }) {
                println!("cargo:warning={stem} {arch}: {}", l.trim());
            }
        }
    }
}

/// `f` of every item, on cargo's job count of threads (NUM_JOBS), in the items' order. A job
/// that panics (a compiler error) fails the build with its message.
fn in_parallel<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = env::var("NUM_JOBS")
        .ok()
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(1)
        .clamp(1, items.len().max(1));
    let next = AtomicUsize::new(0);
    let results: Vec<Mutex<Option<R>>> = items.iter().map(|_| Mutex::new(None)).collect();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(item) = items.get(i) else {
                    break;
                };
                let r = f(item);
                *results[i].lock().expect("a job's result") = Some(r);
            });
        }
    });
    results
        .into_iter()
        .map(|r| {
            r.into_inner()
                .expect("a job's result")
                .expect("every job ran")
        })
        .collect()
}

/// The flags every kernel is compiled with (besides `-arch`).
const NVCC_FLAGS: [&str; 4] = ["-ptx", "-O3", "-lineinfo", "-std=c++17"];

/// PTX and ptxas logs by the hash of what produced them: the .cu file, every header in
/// kernels/ (common.cuh, tiles.h, ...), the architecture, the flags and nvcc's `--version`.
/// It lives in `<target dir>/kernel-ptx/`, beside the profiles' folders, so a second profile
/// (or a rebuild after an unrelated change) finds the PTX instead of running nvcc again. An
/// entry is written to a temporary name and renamed, so a build killed midway leaves no
/// half-written PTX. With an OUT_DIR of unexpected shape there is no cache: every job compiles.
struct PtxCache {
    dir: Option<PathBuf>,
    /// The hash of the compiler's version, the flags and the headers, shared by every job.
    base: u64,
}

impl PtxCache {
    fn new(out: &Path, nvcc: &Path, files: &[PathBuf]) -> PtxCache {
        // OUT_DIR is <target>/<profile>/build/<package>-<hash>/out.
        let dir = out
            .ancestors()
            .nth(4)
            .filter(|_| out.ancestors().nth(2).is_some_and(|b| b.ends_with("build")))
            .map(|t| t.join("kernel-ptx"))
            .filter(|d| std::fs::create_dir_all(d).is_ok());
        let version = Command::new(nvcc)
            .arg("--version")
            .output()
            .map(|o| o.stdout)
            .unwrap_or_default();
        let mut h = DefaultHasher::new();
        version.hash(&mut h);
        NVCC_FLAGS.hash(&mut h);
        for f in files
            .iter()
            .filter(|f| f.extension().is_none_or(|e| e != "cu"))
        {
            f.hash(&mut h);
            std::fs::read(f).unwrap_or_default().hash(&mut h);
        }
        PtxCache {
            dir,
            base: h.finish(),
        }
    }

    /// Puts `<stem>.<arch>.ptx` into `out` (from the cache, or compiled and checked with
    /// ptxas and then cached) and returns ptxas's log.
    fn compile(&self, cu: &Path, arch: &str, nvcc: &Path, ptxas: &Path, out: &Path) -> String {
        let stem = cu.file_stem().expect("a .cu file").to_string_lossy();
        let target = out.join(format!("{stem}.{arch}.ptx"));
        let mut h = DefaultHasher::new();
        self.base.hash(&mut h);
        arch.hash(&mut h);
        std::fs::read(cu)
            .unwrap_or_else(|e| panic!("lorafuse: cannot read {}: {e}", cu.display()))
            .hash(&mut h);
        let key = format!("{stem}.{arch}.{:016x}", h.finish());
        let cached = self
            .dir
            .as_ref()
            .map(|d| (d.join(format!("{key}.ptx")), d.join(format!("{key}.log"))));
        if let Some((ptx, log)) = &cached {
            if let (Ok(text), true) = (std::fs::read_to_string(log), ptx.is_file()) {
                if std::fs::copy(ptx, &target).is_ok() {
                    return text;
                }
            }
        }
        run(
            Command::new(nvcc)
                .args(NVCC_FLAGS)
                .arg(format!("-arch={arch}"))
                .arg("-Ikernels")
                .arg(cu)
                .arg("-o")
                .arg(&target),
            &format!("nvcc on {}", cu.display()),
        );
        let cubin = out.join(format!("{stem}.{arch}.cubin"));
        let text = run(
            Command::new(ptxas)
                .arg(format!("-arch={arch}"))
                .arg("-v")
                .arg(&target)
                .arg("-o")
                .arg(&cubin),
            &format!("ptxas on {}", target.display()),
        );
        let _ = std::fs::remove_file(&cubin);
        if let Some((ptx, log)) = &cached {
            // Best effort: a cache that cannot be written only costs the next build time.
            let put = |from: &Path, to: &Path| {
                let tmp = to.with_extension(format!("tmp{}", std::process::id()));
                if std::fs::copy(from, &tmp).is_ok() {
                    let _ = std::fs::rename(&tmp, to);
                }
            };
            let log_tmp = out.join(format!("{stem}.{arch}.log"));
            if std::fs::write(&log_tmp, &text).is_ok() {
                put(&target, ptx);
                put(&log_tmp, log);
            }
        }
        text
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
        .flag_if_supported("-Wno-unused-parameter");
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
    // One file per job (the kernels are independent translation units), then one archive.
    let objects = in_parallel(&files, |f| b.clone().file(f).compile_intermediates());
    b.objects(objects.concat()).compile("lorafuse_emu");
}

/// OUT_DIR/kernels_ptx.rs: `KERNEL_PTX`, (stem, [PTX per `ARCHS`]) per kernels/*.cu,
/// included by src/backend/cuda/gpu.rs.
fn write_ptx_table(out: &Path, sources: &[&PathBuf]) {
    let mut t = format!(
        "pub(crate) const KERNEL_ARCHS: [&str; {n}] = {ARCHS:?};\n\
         pub(crate) const KERNEL_PTX: &[(&str, [&str; {n}])] = &[\n",
        n = ARCHS.len()
    );
    for cu in sources {
        let stem = cu
            .file_stem()
            .expect("a .cu file has a stem")
            .to_string_lossy();
        let ptx: Vec<String> = ARCHS
            .iter()
            .map(|a| format!("include_str!(concat!(env!(\"OUT_DIR\"), \"/{stem}.{a}.ptx\"))"))
            .collect();
        t.push_str(&format!("    (\"{stem}\", [{}]),\n", ptx.join(", ")));
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

/// OUT_DIR/tiles.rs: kernels/tiles.h in Rust, included by src/backend/cuda/tiles.rs. Each
/// `#define NAME expr` becomes `pub(crate) const NAME: usize = expr;`, each
/// `#define NAME(a, b) expr` a `pub(crate) const fn name(a: usize, b: usize) -> usize`; the
/// expressions are copied as written (tiles.h keeps to the part of C that reads the same in
/// Rust), with the formulas' names in lower case. Anything else in a definition is refused,
/// so that the two languages never read one line differently.
fn write_tiles(out: &Path) {
    const HEADER: &str = "kernels/tiles.h";
    const HELPERS: [&str; 3] = ["TILE_MAX", "TILE_IF", "TILE_ROUND_UP"];
    println!("cargo:rerun-if-changed={HEADER}");
    let text = std::fs::read_to_string(HEADER).expect("kernels/tiles.h exists");
    // Definitions, with backslash continuations joined and comments dropped.
    let mut defines: Vec<(usize, String)> = Vec::new();
    let mut pending: Option<(usize, String)> = None;
    for (i, line) in text.lines().enumerate() {
        let line = line.split("//").next().unwrap_or("").trim_end();
        let (body, more) = match line.strip_suffix('\\') {
            Some(b) => (b, true),
            None => (line, false),
        };
        let cur = match pending.take() {
            Some((at, mut d)) => {
                d.push(' ');
                d.push_str(body.trim());
                (at, d)
            }
            None if body.trim_start().starts_with("#define ") => (i + 1, body.trim().to_string()),
            None => continue,
        };
        if more {
            pending = Some(cur);
        } else {
            defines.push(cur);
        }
    }
    let bad = |at: usize, why: &str| -> ! {
        panic!("\n\n{HEADER}:{at}: {why} (see the rules at the top of the file)\n\n")
    };
    let mut formulas: Vec<String> = HELPERS.iter().map(|h| h.to_string()).collect();
    let mut rust = String::from(
        "// Generated by build.rs from kernels/tiles.h: edit that file.\n\
         const fn tile_max(a: usize, b: usize) -> usize {\n    if a > b { a } else { b }\n}\n\
         const fn tile_if(c: bool, a: usize, b: usize) -> usize {\n    if c { a } else { b }\n}\n\
         const fn tile_round_up(x: usize, m: usize) -> usize {\n    x.div_ceil(m) * m\n}\n",
    );
    for (at, d) in defines {
        let d = d["#define ".len()..].trim();
        let name_end = d
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(d.len());
        let name = &d[..name_end];
        if HELPERS.contains(&name) {
            continue;
        }
        let (params, expr) = match d[name_end..].strip_prefix('(') {
            Some(rest) => {
                let close = rest
                    .find(')')
                    .unwrap_or_else(|| bad(at, "unclosed parameter list"));
                let params: Vec<String> = rest[..close]
                    .split(',')
                    .map(|p| p.trim().to_string())
                    .collect();
                (Some(params), rest[close + 1..].trim())
            }
            None => (None, d[name_end..].trim()),
        };
        if expr.is_empty() {
            bad(at, &format!("{name} has no value"));
        }
        if let Some(c) = expr
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || " _+-*/%()<>=!|,".contains(*c)))
        {
            bad(
                at,
                &format!("`{c}` in {name} is not read the same in C and Rust"),
            );
        }
        // The formulas' names in lower case (Rust functions), everything else as written.
        let mut body = String::new();
        let mut word = String::new();
        for c in expr.chars().chain(std::iter::once(' ')) {
            if c.is_ascii_alphanumeric() || c == '_' {
                word.push(c);
                continue;
            }
            if formulas.contains(&word) {
                body.push_str(&word.to_lowercase());
            } else {
                body.push_str(&word);
            }
            word.clear();
            body.push(c);
        }
        let body = body.trim_end();
        match params {
            None => rust.push_str(&format!("pub(crate) const {name}: usize = {body};\n")),
            Some(ps) => {
                let args: Vec<String> = ps.iter().map(|p| format!("{p}: usize")).collect();
                rust.push_str(&format!(
                    "pub(crate) const fn {}({}) -> usize {{\n    {body}\n}}\n",
                    name.to_lowercase(),
                    args.join(", ")
                ));
                formulas.push(name.to_string());
            }
        }
    }
    std::fs::write(out.join("tiles.rs"), rust).expect("OUT_DIR is writable");
}
