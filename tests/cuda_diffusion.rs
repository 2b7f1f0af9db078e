//! Timestep embedding, DDPM noising, the VAE posterior sample, MSE loss, the gradient norm and
//! AdamW on the CUDA backend against the CPU backend (emulator, and GPU when present).
#![cfg(any(feature = "cuda", feature = "cuda-emu"))]

use crate::common;

use common::cuda::*;
use lorafuse::backend::prelude::*;
use lorafuse::backend::{AdamW, TimestepEmbedding};
use lorafuse::rng::Rng;
use lorafuse::{DType, Error};

#[test]
fn timestep_embedding_matches_the_cpu() {
    timestep_embedding_matches_the_cpu_in(&[DType::F32, DType::F16]);
}

/// The same in bf16 (compute capability 8.0 and later; the simple kernels), against the CPU
/// in f32 on the same bf16-rounded inputs with `tol(DType::BF16)`.
#[test]
fn timestep_embedding_matches_the_cpu_bf16() {
    timestep_embedding_matches_the_cpu_in(&[DType::BF16]);
}

fn timestep_embedding_matches_the_cpu_in(dtypes: &[DType]) {
    let cpu = cpu();
    for &dtype in dtypes {
        for e in engines(dtype) {
            for (dim, flip, shift) in [(320, true, 0.0), (7, false, 1.0), (1280, true, 0.0)] {
                let ts = [0.0f32, 1.0, 17.0, 999.0, 500.0];
                let p = TimestepEmbedding {
                    dim,
                    flip_sin_to_cos: flip,
                    freq_shift: shift,
                    max_period: 10000.0,
                };
                let (ct, dt) = pair(&e.be, &[ts.len()], &ts, dtype);
                let want = cpu.timestep_embedding(&ct, p).unwrap();
                let got = e.be.timestep_embedding(&dt, p).unwrap();
                // sin/cos of arguments up to 999: an f32 ulp of the argument is 6e-5.
                let t = if dtype == DType::F32 {
                    (1e-4, 1e-4)
                } else {
                    tol(dtype)
                };
                assert_matches(&format!("timestep_embedding dim {dim}"), &got, &want, t);
            }
        }
    }
}

#[test]
fn noising_and_posterior_sampling_match_the_cpu() {
    noising_and_posterior_sampling_match_the_cpu_in(&[DType::F32, DType::F16]);
}

/// The same in bf16 (compute capability 8.0 and later; the simple kernels), against the CPU
/// in f32 on the same bf16-rounded inputs with `tol(DType::BF16)`.
#[test]
fn noising_and_posterior_sampling_match_the_cpu_bf16() {
    noising_and_posterior_sampling_match_the_cpu_in(&[DType::BF16]);
}

fn noising_and_posterior_sampling_match_the_cpu_in(dtypes: &[DType]) {
    let mut rng = Rng::new(20);
    let cpu = cpu();
    for &dtype in dtypes {
        for e in engines(dtype) {
            for shape in [&[3usize, 4, 5, 7][..], &[2, 4, 64, 64]] {
                let (cx, dx) = random_pair(&e.be, &mut rng, shape, dtype);
                let (cz, dz) = random_pair(&e.be, &mut rng, shape, dtype);
                let n = shape[0];
                let a: Vec<f64> = (0..n).map(|i| 0.9 - 0.2 * i as f64).collect();
                let b: Vec<f64> = (0..n).map(|i| 0.1 + 0.3 * i as f64).collect();
                let t = tol(dtype);
                assert_matches(
                    "add_noise",
                    &e.be.add_noise(&dx, &dz, &a, &b).unwrap(),
                    &cpu.add_noise(&cx, &cz, &a, &b).unwrap(),
                    t,
                );
                // logvar spans the clamp on both sides.
                let lv: Vec<f32> = nonzero(&mut rng, cx.numel())
                    .iter()
                    .map(|v| v * 40.0)
                    .collect();
                let (cl, dl) = pair(&e.be, shape, &lv, dtype);
                for noise in [true, false] {
                    let got =
                        e.be.gaussian_sample(&dx, &dl, noise.then_some(&dz), 0.18215)
                            .unwrap();
                    let want = cpu
                        .gaussian_sample(&cx, &cl, noise.then_some(&cz), 0.18215)
                        .unwrap();
                    assert_matches("gaussian_sample", &got, &want, (t.0, t.1 * 1e3));
                }
            }
        }
    }
}

#[test]
fn mse_loss_value_and_gradient_match_the_cpu() {
    mse_loss_value_and_gradient_match_the_cpu_in(&[DType::F32, DType::F16]);
}

/// The same in bf16 (compute capability 8.0 and later; the simple kernels), against the CPU
/// in f32 on the same bf16-rounded inputs with `tol(DType::BF16)`.
#[test]
fn mse_loss_value_and_gradient_match_the_cpu_bf16() {
    mse_loss_value_and_gradient_match_the_cpu_in(&[DType::BF16]);
}

fn mse_loss_value_and_gradient_match_the_cpu_in(dtypes: &[DType]) {
    let mut rng = Rng::new(21);
    let cpu = cpu();
    for &dtype in dtypes {
        for e in engines(dtype) {
            // 4·64·64 = 16384 per sample spans several 4096-element chunks; 3·5·7 leaves a tail.
            for shape in [&[2usize, 3, 5, 7][..], &[3, 4, 64, 64]] {
                let (cp, dp) = random_pair(&e.be, &mut rng, shape, dtype);
                let (ct, dt) = random_pair(&e.be, &mut rng, shape, dtype);
                let w: Vec<f64> = (0..shape[0]).map(|i| 0.5 + i as f64).collect();
                for weights in [None, Some(&w[..])] {
                    let (lg, gg) = e.be.mse_loss(&dp, &dt, weights, 1024.0).unwrap();
                    let (lw, gw) = cpu.mse_loss(&cp, &ct, weights, 1024.0).unwrap();
                    assert!(
                        (lg - lw).abs() <= 1e-5 * lw.abs(),
                        "{dtype}: loss {lg} vs {lw}"
                    );
                    assert_matches("mse grad", &gg, &gw, tol(dtype));
                }
            }
            let p = e.be.zeros(&[2, 3], dtype).unwrap();
            assert!(matches!(
                e.be.mse_loss(&p, &p, Some(&[1.0]), 1.0),
                Err(Error::BadValue { .. })
            ));
        }
    }
}

#[test]
fn gradient_norm_and_adamw_match_the_cpu() {
    let mut rng = Rng::new(22);
    let cpu = cpu();
    for e in engines(DType::F32) {
        // Tails of AdamW's float4 loop: n % 4 = 1, 0, 3, 1.
        for n in [1usize, 1000, 1003, 8192 * 3 + 17] {
            let (cg, dg) = random_pair(&e.be, &mut rng, &[n], DType::F32);
            let (s_gpu, s_cpu) = (
                e.be.sum_squares(&dg).unwrap(),
                cpu.sum_squares(&cg).unwrap(),
            );
            assert!(
                (s_gpu - s_cpu).abs() <= 1e-12 * s_cpu,
                "sum_squares {s_gpu} vs {s_cpu}"
            );
            let h16 = e.be.cast(&dg, DType::F16).unwrap();
            let want16: f64 = round_f16(&cg.to_f32_vec())
                .iter()
                .map(|&x| (x as f64).powi(2))
                .sum();
            assert!((e.be.sum_squares(&h16).unwrap() - want16).abs() <= 1e-12 * want16);

            let (mut cp, mut dp) = random_pair(&e.be, &mut rng, &[n], DType::F32);
            let (mut cm, mut dm) = random_pair(&e.be, &mut rng, &[n], DType::F32);
            let v0: Vec<f32> = nonzero(&mut rng, n).iter().map(|x| x.abs()).collect();
            let (mut cv, mut dv) = pair(&e.be, &[n], &v0, DType::F32);
            for step in 1..=3 {
                let h = AdamW {
                    lr: 1e-3,
                    beta1: 0.9,
                    beta2: 0.999,
                    eps: 1e-8,
                    weight_decay: 0.01,
                    step,
                    grad_scale: 0.5,
                };
                e.be.adamw_step(&mut dp, &dg, &mut dm, &mut dv, &h).unwrap();
                cpu.adamw_step(&mut cp, &cg, &mut cm, &mut cv, &h).unwrap();
            }
            assert_matches("adamw params", &dp, &cp, (1e-5, 1e-7));
            assert_matches("adamw m", &dm, &cm, (1e-5, 1e-7));
            assert_matches("adamw v", &dv, &cv, (1e-5, 1e-7));
        }
        // An f16 overflow shows as a non-finite norm: the trainer skips the step.
        let big =
            e.be.tensor_from_f32(&[3], &[1.0, 70000.0, 2.0], DType::F16)
                .unwrap();
        assert!(!e.be.sum_squares(&big).unwrap().is_finite());
    }
}
