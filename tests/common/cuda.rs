//! Helpers for the CUDA backend's tests: the engines to run on (the kernel emulator with
//! `cuda-emu`, the GPU with `cuda` when one is present: otherwise `SKIPPED: no CUDA device` is
//! printed, and a GPU that is present but cannot be used fails the test), random inputs that
//! are never zero, and comparisons against the CPU backend.
#![allow(dead_code)]

use lorafuse::backend::cuda::{CudaBackend, Device};
use lorafuse::backend::prelude::*;
use lorafuse::rng::Rng;
use lorafuse::{CpuBackend, DType, Tensor};

/// A CUDA backend to test, and whether it is a real GPU (then tests use full SD1.5 shapes).
pub struct Engine {
    pub be: CudaBackend,
    pub gpu: bool,
}

/// Every engine this build has: the emulator, and the GPU when one can be opened.
#[allow(clippy::vec_init_then_push)] // each push is behind its own feature
pub fn engines(dtype: DType) -> Vec<Engine> {
    let mut out = Vec::new();
    #[cfg(feature = "cuda-emu")]
    out.push(Engine {
        be: CudaBackend::new(Device::emulator(), dtype).unwrap(),
        gpu: false,
    });
    #[cfg(feature = "cuda")]
    match Device::gpu(0) {
        // bf16 needs compute capability 8.0: a Turing GPU refuses it (as `train` does).
        Ok(dev) if dtype == DType::BF16 && dev.limits().bf16_refused().is_some() => {
            let why = dev.limits().bf16_refused().unwrap_or_default();
            println!("SKIPPED on the GPU: {why}");
        }
        Ok(dev) => out.push(Engine {
            be: CudaBackend::new(dev, dtype).unwrap(),
            gpu: true,
        }),
        Err(e) => skip_or_fail(&e.to_string()),
    }
    out
}

/// The kernel emulator as the card `profile` (a name of `DeviceLimits::profile`): its launch
/// limits, and for "T4"/"RTX 20xx" sm_75's paths through kernels/common.cuh.
#[cfg(feature = "cuda-emu")]
pub fn emulating(profile: &str, dtype: DType) -> CudaBackend {
    use lorafuse::backend::cuda::DeviceLimits;
    let limits = DeviceLimits::profile(profile).unwrap_or_else(|| panic!("no profile {profile}"));
    CudaBackend::new(Device::emulating(limits), dtype).unwrap()
}

/// Asserts that the emulated launches on `be`'s device since the last call took sm_75's path
/// through kernels/common.cuh (mma.sync m16n8k8, never m16n8k16, no cp.async), with some
/// tensor-core work when `tensor_cores`; prints the launches per kernel (the launch choice).
#[cfg(feature = "cuda-emu")]
pub fn assert_turing_path(what: &str, be: &CudaBackend, tensor_cores: bool) {
    let ops = be.device().take_emulated_ops();
    let launches = be.device().take_launch_counts();
    println!(
        "{what} on {}: {ops:?}; launches {launches:?}",
        be.device().limits()
    );
    assert!(
        be.device().limits().compute_capability < (8, 0),
        "{what}: not a Turing profile"
    );
    assert_eq!(
        (ops.mma_m16n8k16, ops.cp_async),
        (0, 0),
        "{what}: sm_80 instructions on sm_75"
    );
    assert_eq!(
        ops.mma_m16n8k8 > 0,
        tensor_cores,
        "{what}: m16n8k8 count {}",
        ops.mma_m16n8k8
    );
}

/// Asserts that the launches on `be`'s device since the last call include fast kernels named
/// with one of `prefixes`, every one of them a bf16 entry point (`bf16` in its name), and, in
/// the emulator, that tensor-core instructions ran (the bf16 mma counts as m16n8k16) exactly
/// when `tensor_cores`, never sm_75's m16n8k8; prints and returns the launches per kernel.
pub fn assert_bf16_fast_path(
    what: &str,
    be: &CudaBackend,
    prefixes: &[&str],
    tensor_cores: bool,
) -> std::collections::BTreeMap<&'static str, u64> {
    let launches = be.device().take_launch_counts();
    println!(
        "{what} on {} (tensor cores: {tensor_cores}): launches {launches:?}",
        be.device().limits()
    );
    let fast: Vec<&str> = launches
        .keys()
        .copied()
        .filter(|k| prefixes.iter().any(|p| k.starts_with(p)))
        .collect();
    assert!(!fast.is_empty(), "{what}: no fast kernel ran: {launches:?}");
    assert!(
        fast.iter().all(|k| k.contains("bf16")),
        "{what}: an f16 fast kernel ran on bf16 data: {fast:?}"
    );
    #[cfg(feature = "cuda-emu")]
    if be.device().is_emulator() {
        let ops = be.device().take_emulated_ops();
        println!("{what}: {ops:?}");
        assert_eq!(ops.mma_m16n8k8, 0, "{what}: sm_75's mma on a bf16 backend");
        assert_eq!(
            ops.mma_m16n8k16 > 0,
            tensor_cores,
            "{what}: m16n8k16 count {}",
            ops.mma_m16n8k16
        );
    }
    launches
}

/// Whether this machine has an NVIDIA GPU, asked without CUDA: the driver's device node, or
/// `nvidia-smi -L` listing one.
pub fn gpu_present() -> bool {
    std::path::Path::new("/dev/nvidia0").exists()
        || std::process::Command::new("nvidia-smi")
            .arg("-L")
            .output()
            .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains("GPU"))
}

/// A GPU that could not be opened: `SKIPPED` when the machine truly has none, a failure when
/// it has one (a driver that cannot open it or cannot load our PTX must not pass as "no GPU").
pub fn skip_or_fail(why: &str) {
    assert!(
        !gpu_present(),
        "this machine has an NVIDIA GPU, but the CUDA backend could not use it: {why}"
    );
    println!("SKIPPED: no CUDA device ({why})");
}

/// n values uniform in ±[0.05, 1): random signs, never zero.
pub fn nonzero(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let m = rng.uniform_vec(1, 0.05, 1.0)[0];
            let s = if rng.uniform_vec(1, 0.0, 1.0)[0] < 0.5 {
                -1.0
            } else {
                1.0
            };
            (s * m) as f32
        })
        .collect()
}

/// The values rounded through f16 (what an f16 tensor of them holds).
pub fn round_f16(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect()
}

/// The values rounded through bf16 (what a bf16 tensor of them holds).
pub fn round_bf16(v: &[f32]) -> Vec<f32> {
    v.iter()
        .map(|&x| half::bf16::from_f32(x).to_f32())
        .collect()
}

/// The values as a tensor of `dtype` holds them (f16 and bf16 rounded, f32 as they are).
pub fn rounded(dtype: DType, v: &[f32]) -> Vec<f32> {
    match dtype {
        DType::F16 => round_f16(v),
        DType::BF16 => round_bf16(v),
        _ => v.to_vec(),
    }
}

/// A CPU f32 tensor and the same values on `be` in `dtype` (for f16 and bf16, the CPU copy
/// holds the rounded values, so both sides start from the same numbers).
pub fn pair(be: &CudaBackend, shape: &[usize], v: &[f32], dtype: DType) -> (Tensor, Tensor) {
    let host = rounded(dtype, v);
    (
        Tensor::from_f32(shape, host).unwrap(),
        be.tensor_from_f32(shape, v, dtype).unwrap(),
    )
}

/// Random CPU/device pair of `shape`.
pub fn random_pair(
    be: &CudaBackend,
    rng: &mut Rng,
    shape: &[usize],
    dtype: DType,
) -> (Tensor, Tensor) {
    let v = nonzero(rng, shape.iter().product());
    pair(be, shape, &v, dtype)
}

/// The CPU reference backend.
pub fn cpu() -> CpuBackend {
    CpuBackend::new()
}

/// Tolerances for comparing the CUDA backend with the CPU one: f32 kernels differ only by
/// summation order; f16 kernels also round their outputs (and intermediates) to f16; bf16
/// kernels likewise to bf16, whose unit roundoff (2^-8: 8 significant bits) is 8 times f16's
/// (2^-11), so its bounds are f16's times 8.
pub fn tol(dtype: DType) -> (f64, f64) {
    match dtype {
        DType::F16 => (1e-2, 2e-3),
        DType::BF16 => (8e-2, 1.6e-2),
        _ => (2e-5, 1e-5),
    }
}

/// Asserts that a device tensor matches a CPU tensor in shape and values (rtol, atol), and
/// that it holds no NaN (outputs are NaN-poisoned before kernels run: an unwritten element
/// shows up here).
pub fn assert_matches(what: &str, got: &Tensor, want: &Tensor, (rtol, atol): (f64, f64)) {
    assert_eq!(got.shape(), want.shape(), "{what}: shape");
    let g = got.to_f32_vec();
    let w = want.to_f32_vec();
    let mut worst = (0.0f64, 0usize);
    for (i, (&a, &b)) in g.iter().zip(&w).enumerate() {
        assert!(a.is_finite(), "{what}: element {i} is {a} (never written?)");
        let err = (a as f64 - b as f64).abs();
        let bound = atol + rtol * (b as f64).abs();
        if err / bound > worst.0 {
            worst = (err / bound, i);
        }
    }
    let i = worst.1;
    assert!(
        worst.0 <= 1.0,
        "{what}: element {i} of {}: got {}, want {} (rtol {rtol}, atol {atol})",
        g.len(),
        g[i],
        w[i]
    );
}

/// The largest |a - b| over two equally long slices.
pub fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// The criterion for f16 kernels (flash-attention's): against an f64 reference, the kernel's
/// largest error is at most twice the largest error of the CPU backend computing in f32 from
/// the same f16-rounded inputs with its output rounded to f16 (`baseline`), plus a floor of
/// 1e-6 x the reference's largest magnitude (for outputs the baseline gets exactly).
/// `reference` is the CPU backend's f64 result on those inputs. Returns (kernel error,
/// baseline error) so a test can print them.
pub fn assert_f16_criterion(
    what: &str,
    got: &Tensor,
    baseline: &Tensor,
    reference: &Tensor,
) -> (f64, f64) {
    assert_criterion(DType::F16, what, got, baseline, reference)
}

/// [`assert_f16_criterion`] for kernels storing `dtype` (f16 or bf16): the baseline's output
/// is rounded to `dtype`, so for bf16 the bound follows bf16's unit roundoff (2^-8, 8 times
/// f16's), as the kernel's own output rounding does.
pub fn assert_criterion(
    dtype: DType,
    what: &str,
    got: &Tensor,
    baseline: &Tensor,
    reference: &Tensor,
) -> (f64, f64) {
    assert_eq!(got.shape(), reference.shape(), "{what}: shape");
    let g: Vec<f64> = got.to_f32_vec().iter().map(|&x| x as f64).collect();
    if let Some(i) = g.iter().position(|x| !x.is_finite()) {
        panic!("{what}: element {i} is {} (never written?)", g[i]);
    }
    let r: Vec<f64> = match reference.dtype() {
        DType::F64 => reference.to_f64_vec(),
        _ => reference.to_f32_vec().iter().map(|&x| x as f64).collect(),
    };
    let b: Vec<f64> = rounded(dtype, &baseline.to_f32_vec())
        .iter()
        .map(|&x| x as f64)
        .collect();
    let got_err = max_abs_diff(&g, &r);
    let base_err = max_abs_diff(&b, &r);
    let scale = r.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    let bound = 2.0 * base_err + 1e-6 * scale;
    assert!(
        got_err <= bound,
        "{what}: max error {got_err:.3e} against f64 > 2 x the {dtype:?}-rounded CPU's {base_err:.3e}"
    );
    (got_err, base_err)
}
