//! The whole tiny UNet (forward, loss and every LoRA gradient, f16 with f32 adapters) on the
//! kernel emulator under each card profile's launch limits, against the CPU backend; the
//! kernels each profile chose are printed and the choices that must differ between them are
//! asserted (a launch choice made from one card's limits would show here as an equal choice or
//! as a launch over the limit, which the emulator refuses).
//!
//! On the emulator the tile choice depends on the per-block shared memory only (a grid of 4
//! blocks counts as full, see ops/linear/fast.rs), so one card per shared-memory limit stands
//! for its class, one test each (64 KiB: Turing, T4 and RTX 20xx; 99 KiB: the RTX
//! 30/40-series; 163 KiB: A100; 227 KiB: H100), and each test prints which cards it covers.
//! With rank-100 LoRA on every transformer layer the 99 KiB and 64 KiB cards run the adapted
//! linear layers on the simple kernels, while sm_80 and sm_90 stay on the tensor-core GEMM
//! with its 128x128 tile (the tile boundaries at other ranks are tested per GEMM in
//! tests/cuda_linear.rs). The Turing class also runs sm_75's instructions (m16n8k8 pairs, no
//! cp.async: kernels/common.cuh), which the emulator's counts show.
#![cfg(feature = "cuda-emu")]

use crate::common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::rel_err;
use lorafuse::backend::cuda::{CudaBackend, Device, DeviceLimits, EmulatedOps};
use lorafuse::backend::Accum;
use lorafuse::lora::{LoraModule, LoraSet, LoraTargets};
use lorafuse::model::checkpoint::load_sd15;
use lorafuse::model::layers::Ctx;
use lorafuse::model::unet::Unet;
use lorafuse::rng::Rng;
use lorafuse::{Backend, CpuBackend, DType};

/// Above the largest rank the fast GEMM takes on 99 KiB of shared memory (98), below the
/// largest of sm_80's 128x128 tile (107): see ops/linear/fast.rs.
const RANK: usize = 100;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// What one training forward and backward gave.
struct Pass {
    loss: f64,
    /// Every adapter gradient (down then up, module by module).
    grads: Vec<Vec<f64>>,
    /// The number of adapted layers.
    adapted: usize,
}

/// One training forward and backward of the fixture UNet with rank-[`RANK`] adapters on
/// every transformer layer, batch 2 at 16x16 latents, on `be`.
fn pass(be: &dyn Backend) -> Pass {
    let rank = RANK;
    let ck = load_sd15(fixtures().join("tiny-sd15-diffusers")).unwrap();
    let unet = Unet::load(&ck.unet.0, &ck.unet.1, be, "unet").unwrap();
    let dt = be.compute_dtype();
    let mut rng = Rng::new(21);
    let mut randn = |shape: &[usize], scale: f64, dtype: DType| {
        let v: Vec<f32> = rng
            .normal_vec(shape.iter().product())
            .iter()
            .map(|x| (x * scale) as f32)
            .collect();
        be.tensor_from_f32(shape, &v, dtype).unwrap()
    };
    let targets = unet.lora_targets(LoraTargets::Transformer);
    let modules = targets
        .iter()
        .map(|l| {
            let (ds, us) = l.kind.shapes(rank, l.in_features, l.out_features);
            LoraModule {
                name: l.name.clone(),
                down: randn(&ds, 0.05, DType::F32),
                up: randn(&us, 0.05, DType::F32),
                alpha: rank as f64 / 2.0,
                kind: l.kind,
                algo: Default::default(),
            }
        })
        .collect();
    let lora = LoraSet::new(modules);
    let x = randn(&[2, 4, 16, 16], 1.0, dt);
    let target = randn(&[2, 4, 16, 16], 1.0, dt);
    let ctx = randn(&[2, 77, ck.unet.0.cross_attention_dim], 1.0, dt);
    let t = be.tensor_from_f32(&[2], &[37.0, 911.0], dt).unwrap();
    let cx = Ctx::new(be, Some(&lora));
    let (out, tape) = unet.forward(&cx, &x, &t, &ctx, true, None).unwrap();
    // As the trainer's loss scaler does in f16, so small gradients keep their low bits.
    let scale = if dt == DType::F16 { 1024.0 } else { 1.0 };
    let (loss, d_out) = be.mse_loss(&out, &target, None, scale).unwrap();
    let mut grads = lora.zero_grads(be).unwrap();
    grads.accum = Accum::Assign;
    unet.backward(&cx, &d_out, &ctx, tape.unwrap(), &mut grads)
        .unwrap();
    let grads = grads
        .down
        .iter()
        .chain(&grads.up)
        .map(|t| {
            be.to_f32_vec(t)
                .unwrap()
                .iter()
                .map(|&g| g as f64 / scale)
                .collect()
        })
        .collect();
    Pass {
        loss,
        grads,
        adapted: lora.len(),
    }
}

/// The cards lorafuse runs on whose per-block shared memory is `smem_kib`: the first stands
/// for all (on the emulator nothing else changes a launch), the names say which.
fn class(smem_kib: u32) -> (DeviceLimits, Vec<String>) {
    let cards: Vec<DeviceLimits> = DeviceLimits::profiles()
        .into_iter()
        .filter(|p| p.supported() && p.smem_per_block == smem_kib * 1024)
        .collect();
    assert!(!cards.is_empty(), "no card profile with {smem_kib} KiB");
    let names = cards.iter().map(|c| c.name.clone()).collect();
    (cards[0].clone(), names)
}

/// Launches whose kernel name contains `part`.
fn count(launches: &BTreeMap<&'static str, u64>, part: &str) -> u64 {
    launches
        .iter()
        .filter(|(k, _)| k.contains(part))
        .map(|(_, n)| n)
        .sum()
}

/// The CPU's loss and gradients, computed once for the three tests.
fn cpu_reference() -> &'static Pass {
    static CPU: OnceLock<Pass> = OnceLock::new();
    CPU.get_or_init(|| pass(&CpuBackend::new()))
}

/// Runs the pass under the class of `smem_kib`, checks it against the CPU and returns the
/// launches per kernel, the number of adapted layers and the emulator's instruction counts.
fn run_class(smem_kib: u32) -> (BTreeMap<&'static str, u64>, usize, EmulatedOps) {
    let (limits, cards) = class(smem_kib);
    let cpu = cpu_reference();
    let dev = Device::emulating(limits.clone());
    let be = CudaBackend::new(dev.clone(), DType::F16).unwrap();
    let t0 = std::time::Instant::now();
    let got = pass(&be);
    let seconds = t0.elapsed().as_secs_f64();
    let launches = dev.take_launch_counts();
    let ops = dev.take_emulated_ops();
    let mut worst = 0.0f64;
    for (i, (a, b)) in got.grads.iter().zip(&cpu.grads).enumerate() {
        assert!(a.iter().all(|x| x.is_finite()), "gradient {i} not finite");
        worst = worst.max(rel_err(a, b));
    }
    let linear: Vec<String> = launches
        .iter()
        .filter(|(k, _)| k.starts_with("linear_"))
        .map(|(k, n)| format!("{k} x{n}"))
        .collect();
    println!(
        "rank {RANK}, {limits} (stands for {}): loss {:.6} vs CPU {:.6}, worst LoRA gradient \
         {worst:.2e}, {seconds:.0} s; fast linear kernels: {}; {ops:?}",
        cards.join(", "),
        got.loss,
        cpu.loss,
        linear.join(", ")
    );
    // The f16 whole-model bounds of tests/cuda_model.rs.
    assert!(
        (got.loss - cpu.loss).abs() < 3e-2 * cpu.loss,
        "{} vs {}",
        got.loss,
        cpu.loss
    );
    assert!(worst < 0.3, "worst LoRA gradient rel. error {worst}");
    (launches, got.adapted, ops)
}

/// The class of `smem_kib` runs every adapted forward on the tensor-core GEMM, some on its
/// 128x128 tile.
fn assert_tensor_core_class(smem_kib: u32) {
    let (launches, adapted, ops) = run_class(smem_kib);
    assert!(ops.mma_m16n8k16 > 0 && ops.mma_m16n8k8 == 0, "{ops:?}");
    assert!(
        count(&launches, "linear_fast_128x128_nk") > 0,
        "{launches:?}"
    );
    assert!(
        count(&launches, "linear_fast_") as usize >= adapted,
        "{launches:?}"
    );
}

#[test]
fn sm80_a100_runs_every_lora_forward_on_the_tensor_core_gemm() {
    assert_tensor_core_class(163);
}

#[test]
fn sm90_h100_runs_every_lora_forward_on_the_tensor_core_gemm() {
    assert_tensor_core_class(227);
}

#[test]
fn sm86_sm89_rtx_30_40_take_no_large_tile_and_run_rank_100_forwards_on_the_simple_kernels() {
    let (launches, adapted, _) = run_class(99);
    assert_eq!(count(&launches, "linear_fast_128x"), 0, "{launches:?}");
    // The forwards of the adapted layers left the GEMM (rank 100 > 96, the largest whose
    // forward tile fits 96 KiB); the fast forwards that remain are the unadapted layers'.
    assert!(
        (count(&launches, "linear_fast_64x64_nk") as usize) < adapted,
        "{launches:?}"
    );
}

#[test]
fn sm75_turing_runs_m16n8k8_and_rank_100_forwards_on_the_simple_kernels() {
    let (launches, adapted, ops) = run_class(64);
    // sm_75's instructions only: every m16n8k16 as two m16n8k8, copies synchronous.
    assert!(
        ops.mma_m16n8k8 > 0 && ops.mma_m16n8k16 == 0 && ops.cp_async == 0,
        "{ops:?}"
    );
    // Rank 100 > 44, the largest whose forward tile fits 61 KiB: the adapted layers' forwards
    // run on the simple kernels, the unadapted ones on the tensor-core GEMM.
    assert!(
        (count(&launches, "linear_fast_") as usize) > 0
            && (count(&launches, "_nk") as usize) < adapted,
        "{launches:?}"
    );
    assert!(count(&launches, "attention_fast_") > 0, "{launches:?}");
    assert!(count(&launches, "conv_fast_") > 0, "{launches:?}");
}
