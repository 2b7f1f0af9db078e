//! The whole tiny UNet (SD1.5's topology, and SD2.x's) through the CUDA backend (the kernel emulator in CI, the GPU when one is
//! present) against the CPU backend: forward output, loss and every LoRA gradient; then short
//! training runs whose per-step losses match the CPU's, and whose later steps allocate nothing
//! from the driver (the pool serves them).
#![cfg(any(feature = "cuda", feature = "cuda-emu"))]

use crate::common;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use common::cuda::*;
use common::rel_err;
use lorafuse::backend::prelude::*;
use lorafuse::backend::Accum;
use lorafuse::config::TrainConfig;
use lorafuse::lora::{kohya, LoraSet};
use lorafuse::model::checkpoint::load_sd15;
use lorafuse::model::layers::Ctx;
use lorafuse::model::unet::Unet;
use lorafuse::rng::Rng;
use lorafuse::train::trainer::{train, Event, Observer};
use lorafuse::{Backend, CpuBackend, DType};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// A fixture model folder and its LoRA, under tests/fixtures.
type Fixture = (&'static str, &'static str);
const SD15: Fixture = ("tiny-sd15-diffusers", "tiny-lora.safetensors");
/// The tiny SD2.x: Linear proj_in/proj_out, heads of 4 (make_sd2_fixtures.py).
const SD2: Fixture = ("sd2/tiny-sd2-diffusers", "sd2/tiny-sd2-lora.safetensors");

/// Output, loss and all LoRA gradients (down then up, module by module) of one forward and
/// backward of the fixture UNet with its LoRA, on `be`.
fn step(
    be: &dyn Backend,
    (model, lora): Fixture,
    inputs: &[(Vec<usize>, Vec<f32>)],
) -> (Vec<f32>, f64, Vec<Vec<f32>>) {
    let ck = load_sd15(fixtures().join(model)).unwrap();
    let unet = Unet::load(&ck.unet.0, &ck.unet.1, be, "unet").unwrap();
    let lora: LoraSet = kohya::load(fixtures().join(lora), be, DType::F32).unwrap();
    let dt = be.compute_dtype();
    let up = |i: usize| be.tensor_from_f32(&inputs[i].0, &inputs[i].1, dt).unwrap();
    let (x, target, ctx, t) = (up(0), up(1), up(2), up(3));
    let cx = Ctx::new(be, Some(&lora));
    let (out, tape) = unet.forward(&cx, &x, &t, &ctx, true, None).unwrap();
    // In f16 the output gradient (about 1e-3 per element here) would lose its low bits to
    // subnormals deeper in the backward: scale the loss as the trainer's loss scaler does
    // (bf16 and f32 are not scaled, as the trainer does not scale them).
    let scale = if dt == DType::F16 { 1024.0 } else { 1.0 };
    let (loss, d_out) = be.mse_loss(&out, &target, None, scale).unwrap();
    let mut grads = lora.zero_grads(be).unwrap();
    grads.accum = Accum::Assign;
    unet.backward(&cx, &d_out, &ctx, tape.unwrap(), &mut grads)
        .unwrap();
    let g = grads
        .down
        .iter()
        .chain(&grads.up)
        .map(|t| {
            be.to_f32_vec(t)
                .unwrap()
                .iter()
                .map(|g| g / scale as f32)
                .collect()
        })
        .collect();
    (be.to_f32_vec(&out).unwrap(), loss, g)
}

#[test]
fn tiny_unet_forward_and_lora_gradients_match_the_cpu() {
    unet_matches_the_cpu(SD15, &[DType::F32, DType::F16], 2);
}

/// bf16 (compute capability 8.0 and later: the emulator's default A100 profile) through the
/// whole tiny UNet, with no loss scaling (bf16 has f32's exponent range, so the ~1e-3 output
/// gradients keep their bits where f16's would flush; the trainer's scaler is off for bf16).
#[test]
fn tiny_unet_bf16_forward_and_lora_gradients_match_the_cpu_without_loss_scaling() {
    unet_matches_the_cpu(SD15, &[DType::BF16], 1);
}

/// SD2.x's Linear proj_in/proj_out and 4-wide heads through the f16 fast kernels (f32 runs
/// the simple kernels the SD1.5 case covers; one dtype and one sample keep the emulated suite
/// short).
#[test]
fn tiny_sd2_unet_forward_and_lora_gradients_match_the_cpu() {
    unet_matches_the_cpu(SD2, &[DType::F16], 1);
}

/// `fixture`'s UNet with its LoRA on every engine in `dtypes` against the CPU, on `b` samples
/// (at most 2).
fn unet_matches_the_cpu(fixture: Fixture, dtypes: &[DType], b: usize) {
    let ck = load_sd15(fixtures().join(fixture.0)).unwrap();
    let d_ctx = ck.unet.0.cross_attention_dim;
    let mut rng = Rng::new(5);
    // 16x16 latents with odd timesteps; 77 context tokens.
    let mut inputs = vec![];
    for shape in [vec![b, 4, 16, 16], vec![b, 4, 16, 16], vec![b, 77, d_ctx]] {
        let n = shape.iter().product();
        inputs.push((shape, nonzero(&mut rng, n)));
    }
    inputs.push((vec![b], [37.0, 911.0][..b].to_vec()));
    let (out_c, loss_c, g_c) = step(&CpuBackend::new(), fixture, &inputs);
    for &dtype in dtypes {
        // f16 rounds every activation: the comparison is norm-wise, with the bound the
        // f16 path is held to. bf16 keeps 3 fewer significant bits (unit roundoff 2^-8
        // against 2^-11): the f16 path's measured output error, 1.6e-3, times 8 is 1.3e-2
        // (measured with the fast bf16 linear, attention and norm kernels: 1.43e-2 on the
        // output, 1.81e-1 on the worst LoRA gradient); 6e-2 leaves a margin of 4 on the output
        // and 3.3 on the gradients.
        let bound = match dtype {
            DType::F32 => 1e-4,
            DType::F16 => 3e-2,
            _ => 6e-2,
        };
        for e in engines(dtype) {
            let (out_g, loss_g, g_g) = step(&e.be, fixture, &inputs);
            let f = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
            let r = rel_err(&f(&out_g), &f(&out_c));
            assert!(r < bound, "{dtype}: output rel. error {r}");
            assert!(
                (loss_g - loss_c).abs() < bound * loss_c,
                "{dtype}: loss {loss_g} vs {loss_c}"
            );
            let mut worst = 0.0f64;
            for (i, (a, b)) in g_g.iter().zip(&g_c).enumerate() {
                assert!(
                    a.iter().all(|x| x.is_finite()),
                    "{dtype}: gradient {i} not finite"
                );
                worst = worst.max(rel_err(&f(a), &f(b)));
            }
            println!("{dtype} on {}: output {r:.2e}, loss {loss_g} vs {loss_c}, worst LoRA gradient {worst:.2e}", e.be.name());
            assert!(
                worst < 10.0 * bound,
                "{dtype}: worst LoRA gradient rel. error {worst}"
            );
        }
    }
}

/// Per-step losses, and the pool's driver allocations seen at each step.
#[derive(Default)]
struct Watch {
    losses: Vec<f64>,
    allocs: Vec<u64>,
    dev: Option<std::sync::Arc<lorafuse::backend::cuda::Device>>,
}

impl Observer for Watch {
    fn on(&mut self, event: Event) {
        if let Event::Step { loss, .. } = event {
            self.losses.push(loss);
            if let Some(d) = &self.dev {
                self.allocs.push(d.pool_stats().driver_allocs);
            }
        }
    }
}

fn run(be: &dyn Backend, dir: &Path, watch: &mut Watch) {
    run_with(be, dir, watch, &[]);
}

fn run_with(be: &dyn Backend, dir: &Path, watch: &mut Watch, extra: &[&str]) {
    let mut sets = vec!["sample_every_n_steps=0", "save_precision=fp32"];
    sets.extend_from_slice(extra);
    let cfg = TrainConfig::load(dir.join("demo.yaml"), &sets).unwrap();
    train(&cfg, be, false, &AtomicBool::new(false), watch).unwrap();
}

#[test]
fn short_training_run_matches_the_cpu_and_allocates_only_in_the_first_step() {
    let steps = 4;
    let base = std::env::temp_dir().join(format!("lorafuse-cuda-train-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let cpu_dir = base.join("cpu");
    lorafuse::demo::prepare(&cpu_dir, steps).unwrap();
    let mut cpu = Watch::default();
    run(&CpuBackend::new(), &cpu_dir, &mut cpu);
    assert_eq!(cpu.losses.len(), steps);
    for e in engines(DType::F32) {
        let dir = base.join(e.be.name());
        lorafuse::demo::prepare(&dir, steps).unwrap();
        let mut w = Watch {
            dev: Some(e.be.device().clone()),
            ..Default::default()
        };
        run(&e.be, &dir, &mut w);
        for (i, (g, c)) in w.losses.iter().zip(&cpu.losses).enumerate() {
            assert!(
                (g - c).abs() <= 1e-4 * c.abs(),
                "step {}: loss {g} vs cpu {c}",
                i + 1
            );
        }
        assert_eq!(w.losses.len(), steps);
        assert!(
            w.allocs.iter().all(|&a| a == w.allocs[0]),
            "driver allocations after the first step: {:?}",
            w.allocs
        );
        println!(
            "{}: losses {:?} (cpu {:?}); pool {:?}",
            e.be.name(),
            w.losses,
            cpu.losses,
            e.be.device().pool_stats()
        );
    }
    let _ = std::fs::remove_dir_all(&base);
}

/// kohya's 225-token captions with the text encoder trained: the windowed encoding, its join
/// (a row gather) and the gradient's split back give the CPU's losses.
#[test]
fn long_caption_windows_with_the_text_encoder_trained_match_the_cpu() {
    let steps = 2;
    let extra = ["max_token_length=225", "train_text_encoder=true"];
    let base = std::env::temp_dir().join(format!("lorafuse-cuda-225-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let cpu_dir = base.join("cpu");
    lorafuse::demo::prepare(&cpu_dir, steps).unwrap();
    let mut cpu = Watch::default();
    run_with(&CpuBackend::new(), &cpu_dir, &mut cpu, &extra);
    assert_eq!(cpu.losses.len(), steps);
    for e in engines(DType::F32) {
        let dir = base.join(e.be.name());
        lorafuse::demo::prepare(&dir, steps).unwrap();
        let mut w = Watch::default();
        run_with(&e.be, &dir, &mut w, &extra);
        assert_eq!(w.losses.len(), steps);
        for (i, (g, c)) in w.losses.iter().zip(&cpu.losses).enumerate() {
            assert!(
                (g - c).abs() <= 1e-4 * c.abs(),
                "step {}: loss {g} vs cpu {c}",
                i + 1
            );
        }
    }
    let _ = std::fs::remove_dir_all(&base);
}
