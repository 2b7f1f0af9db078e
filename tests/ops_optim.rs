//! AdamW and the gradient norm: hand-computed steps, a multi-step f64 reference, errors.

use crate::common;

use common::*;
use lorafuse::backend::prelude::*;
use lorafuse::backend::AdamW;
use lorafuse::rng::Rng;
use lorafuse::{CpuBackend, DType, Tensor};

fn f32t(v: &[f32]) -> Tensor {
    Tensor::from_f32([v.len()], v.to_vec()).unwrap()
}

const H: AdamW = AdamW {
    lr: 0.1,
    beta1: 0.9,
    beta2: 0.999,
    eps: 1e-8,
    weight_decay: 0.01,
    step: 1,
    grad_scale: 1.0,
};

#[test]
fn first_step_by_hand() {
    let be = CpuBackend::new();
    // p = 1, g = 2 (given as 4 with grad_scale 0.5, as an unscaled fp16 gradient would be).
    let mut p = f32t(&[1.0, -3.0]);
    let g = f32t(&[4.0, 0.0]);
    let (mut m, mut v) = (f32t(&[0.0; 2]), f32t(&[0.0; 2]));
    be.adamw_step(
        &mut p,
        &g,
        &mut m,
        &mut v,
        &AdamW {
            grad_scale: 0.5,
            ..H
        },
    )
    .unwrap();
    // decay: 1·(1 - 0.1·0.01) = 0.999; m = 0.2, v = 0.004; m̂ = 2, v̂ = 4;
    // p = 0.999 - 0.1·2/(2 + 1e-8) = 0.899 (to 1e-8).
    // The second parameter has g = 0: only the decay acts, -3·0.999 = -2.997.
    assert_close("p", &p.to_f64_vec(), &[0.899, -2.997], 1e-6, 1e-7);
    assert_close("m", &m.to_f64_vec(), &[0.2, 0.0], 1e-6, 0.0);
    assert_close("v", &v.to_f64_vec(), &[0.004, 0.0], 1e-6, 0.0);
}

/// Five steps against a plain f64 transcription of torch.optim.AdamW's update.
#[test]
fn matches_reference_over_steps() {
    let be = CpuBackend::new();
    let mut rng = Rng::new(5);
    let n = 50_000; // crosses the parallel chunk size
    let p0 = rng.normal_vec(n);
    let mut p = Tensor::from_f32([n], p0.iter().map(|&x| x as f32).collect()).unwrap();
    let (mut m, mut v) = (
        Tensor::zeros([n], DType::F32),
        Tensor::zeros([n], DType::F32),
    );
    let (mut rp, mut rm, mut rv) = (p.to_f64_vec(), vec![0.0; n], vec![0.0; n]);
    let h = AdamW {
        lr: 1e-3,
        weight_decay: 0.1,
        ..H
    };
    for step in 1..=5u64 {
        let g: Vec<f64> = rng.normal_vec(n);
        let gt = Tensor::from_f32([n], g.iter().map(|&x| (x * 1024.0) as f32).collect()).unwrap();
        be.adamw_step(
            &mut p,
            &gt,
            &mut m,
            &mut v,
            &AdamW {
                step,
                grad_scale: 1.0 / 1024.0,
                ..h
            },
        )
        .unwrap();
        let gf: Vec<f64> = gt.to_f64_vec().iter().map(|x| x / 1024.0).collect();
        let (bc1, bc2) = (
            1.0 - h.beta1.powi(step as i32),
            1.0 - h.beta2.powi(step as i32),
        );
        for i in 0..n {
            rp[i] *= 1.0 - h.lr * h.weight_decay;
            rm[i] = h.beta1 * rm[i] + (1.0 - h.beta1) * gf[i];
            rv[i] = h.beta2 * rv[i] + (1.0 - h.beta2) * gf[i] * gf[i];
            rp[i] -= h.lr / bc1 * rm[i] / ((rv[i] / bc2).sqrt() + h.eps);
        }
    }
    assert_close("params", &p.to_f64_vec(), &rp, 1e-5, 1e-6);
    assert_close("m", &m.to_f64_vec(), &rm, 1e-4, 1e-6);
    // The parameters moved by about lr per step, so this is not a no-op comparison.
    assert!(rel_err(&rp, &p0) > 1e-4);
}

#[test]
fn sum_squares_and_overflow() {
    let be = CpuBackend::new();
    assert_eq!(be.sum_squares(&f32t(&[3.0, 4.0])).unwrap(), 25.0);
    let big: Vec<f32> = vec![0.5; 100_000];
    assert_eq!(be.sum_squares(&f32t(&big)).unwrap(), 25_000.0);
    assert!(!be
        .sum_squares(&f32t(&[1.0, f32::INFINITY]))
        .unwrap()
        .is_finite());
    assert!(be.sum_squares(&f32t(&[f32::NAN])).unwrap().is_nan());
}

#[test]
fn bad_arguments_are_errors() {
    let be = CpuBackend::new();
    let (mut p, g) = (f32t(&[1.0; 3]), f32t(&[1.0; 4]));
    let (mut m, mut v) = (f32t(&[0.0; 3]), f32t(&[0.0; 3]));
    let msg = be
        .adamw_step(&mut p, &g, &mut m, &mut v, &H)
        .err()
        .unwrap()
        .to_string();
    assert!(msg.contains("[3]") && msg.contains("[4]"), "{msg}");
    let g = f32t(&[1.0; 3]);
    let msg = be
        .adamw_step(&mut p, &g, &mut m, &mut v, &AdamW { step: 0, ..H })
        .err()
        .unwrap()
        .to_string();
    assert!(msg.contains("step"), "{msg}");
    let msg = be
        .adamw_step(&mut p, &g, &mut m, &mut v, &AdamW { beta2: 1.0, ..H })
        .err()
        .unwrap()
        .to_string();
    assert!(msg.contains("beta2"), "{msg}");
    let mut p64 = Tensor::zeros([3], DType::F64);
    let msg = be
        .adamw_step(&mut p64, &g, &mut m, &mut v, &H)
        .err()
        .unwrap()
        .to_string();
    assert!(msg.contains("params") && msg.contains("f64"), "{msg}");
}
