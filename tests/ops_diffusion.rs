//! Timestep embedding and the MSE loss: hand-computed values, the loss gradient in f64.

use crate::common;

use common::*;
use lorafuse::backend::prelude::*;
use lorafuse::backend::TimestepEmbedding;
use lorafuse::rng::Rng;
use lorafuse::{CpuBackend, DType, Tensor};

const SD: TimestepEmbedding = TimestepEmbedding {
    dim: 4,
    flip_sin_to_cos: true,
    freq_shift: 0.0,
    max_period: 10000.0,
};

#[test]
fn timestep_embedding_by_hand() {
    let be = CpuBackend::new();
    let t = Tensor::from_f64([3], vec![0.0, 1.0, 10.0]).unwrap();
    // dim 4: half 2, frequencies exp(-ln(1e4)·i/2) = 1 and 0.01; cosines first (SD1.x).
    let e = be.timestep_embedding(&t, SD).unwrap();
    let mut want = vec![];
    for tv in [0.0f64, 1.0, 10.0] {
        want.extend([tv.cos(), (0.01 * tv).cos(), tv.sin(), (0.01 * tv).sin()]);
    }
    assert_tensor("flip", &e, &[3, 4], &want, 1e-15);
    // Not flipped, shift 1 (diffusers' default), odd dim 5: freqs exp(-ln(1e4)·i/(2-1)) =
    // 1 and 1e-4, sines first, one zero column at the end.
    let p = TimestepEmbedding {
        dim: 5,
        flip_sin_to_cos: false,
        freq_shift: 1.0,
        max_period: 10000.0,
    };
    let e = be.timestep_embedding(&t, p).unwrap();
    let mut want = vec![];
    for tv in [0.0f64, 1.0, 10.0] {
        want.extend([
            tv.sin(),
            (1e-4 * tv).sin(),
            tv.cos(),
            (1e-4 * tv).cos(),
            0.0,
        ]);
    }
    assert_tensor("shifted odd", &e, &[3, 5], &want, 1e-15);
    // SD1.5 size in f32 at t = 999 stays within f32 rounding of the f64 values.
    let sd = TimestepEmbedding { dim: 320, ..SD };
    let e32 = be
        .timestep_embedding(&Tensor::from_f32([1], vec![999.0]).unwrap(), sd)
        .unwrap();
    let e64 = be
        .timestep_embedding(&Tensor::from_f64([1], vec![999.0]).unwrap(), sd)
        .unwrap();
    assert_close("f32", &e32.to_f64_vec(), &e64.to_f64_vec(), 0.0, 2e-4);
    assert!(be
        .timestep_embedding(&t, TimestepEmbedding { dim: 1, ..SD })
        .is_err());
    let msg = be
        .timestep_embedding(&Tensor::zeros([2, 2], DType::F32), SD)
        .err()
        .unwrap()
        .to_string();
    assert!(msg.contains("[2, 2]") && msg.contains("[N]"), "{msg}");
}

#[test]
fn mse_loss_by_hand() {
    let be = CpuBackend::new();
    let pred = Tensor::from_f64([2, 2], vec![1., 2., 3., 4.]).unwrap();
    let target = Tensor::from_f64([2, 2], vec![0., 0., 3., 2.]).unwrap();
    // Sample 0: (1 + 4)/2 = 2.5; sample 1: (0 + 4)/2 = 2; mean 2.25.
    let (loss, grad) = be.mse_loss(&pred, &target, None, 1.0).unwrap();
    assert_eq!(loss, 2.25);
    // d/dp = 2(p - t)/4.
    assert_tensor("grad", &grad, &[2, 2], &[0.5, 1.0, 0.0, 1.0], 1e-15);
    // Weights 2 and 0.5 (min-SNR style) and a loss scale of 8 on the gradient only:
    // d/dp = 8·2·w_n·(p - t)/4.
    let (loss, grad) = be.mse_loss(&pred, &target, Some(&[2.0, 0.5]), 8.0).unwrap();
    assert_eq!(loss, (2.0 * 2.5 + 0.5 * 2.0) / 2.0);
    assert_tensor("scaled grad", &grad, &[2, 2], &[8.0, 16.0, 0.0, 4.0], 1e-15);
    let msg = be
        .mse_loss(&pred, &Tensor::zeros([2, 3], DType::F64), None, 1.0)
        .err()
        .unwrap()
        .to_string();
    assert!(msg.contains("[2, 2]") && msg.contains("[2, 3]"), "{msg}");
    assert!(be.mse_loss(&pred, &target, Some(&[1.0]), 1.0).is_err());
}

#[test]
fn mse_loss_gradcheck() {
    let be = CpuBackend::new();
    let mut rng = Rng::new(11);
    let inputs = vec![randn(&mut rng, &[3, 4, 5, 7])];
    let target = randn(&mut rng, &[3, 4, 5, 7]);
    let w = [0.3, 1.7, 1.0];
    gradcheck(
        "mse",
        &inputs,
        &[0],
        300,
        |xs| {
            let (l, _) = be.mse_loss(&xs[0], &target, Some(&w), 1.0).unwrap();
            Tensor::from_f64([1], vec![l]).unwrap()
        },
        |xs, r| {
            let (_, g) = be
                .mse_loss(&xs[0], &target, Some(&w), r.to_f64_vec()[0])
                .unwrap();
            vec![g]
        },
    );
}

#[test]
fn add_noise_per_sample() {
    let be = CpuBackend::new();
    let x = Tensor::from_f64([2, 2], vec![1., 2., 3., 4.]).unwrap();
    let z = Tensor::from_f64([2, 2], vec![10., 20., 30., 40.]).unwrap();
    // Sample 0: 0.5·x + 0.1·z; sample 1: 1·x + 0·z.
    let y = be.add_noise(&x, &z, &[0.5, 1.0], &[0.1, 0.0]).unwrap();
    assert_tensor("x_t", &y, &[2, 2], &[1.5, 3.0, 3.0, 4.0], 1e-15);
    assert!(be.add_noise(&x, &z, &[0.5], &[0.1, 0.0]).is_err());
    let msg = be
        .add_noise(&x, &Tensor::zeros([2, 3], DType::F64), &[1.0; 2], &[1.0; 2])
        .err()
        .unwrap()
        .to_string();
    assert!(msg.contains("[2, 2]") && msg.contains("[2, 3]"), "{msg}");
}

#[test]
fn gaussian_sample_by_hand() {
    let be = CpuBackend::new();
    let mean = Tensor::from_f64([3], vec![1.0, -1.0, 0.0]).unwrap();
    // logvar 2·ln 2 gives std 2; 100 is clamped to 20 (std e^10); -100 to -30 (std e^-15).
    let logvar = Tensor::from_f64([3], vec![2.0 * 2f64.ln(), 100.0, -100.0]).unwrap();
    let noise = Tensor::from_f64([3], vec![0.5, 1.0, 1.0]).unwrap();
    let s = 0.18215;
    let y = be.gaussian_sample(&mean, &logvar, Some(&noise), s).unwrap();
    let want = [
        s * (1.0 + 2.0 * 0.5),
        s * (-1.0 + 10f64.exp()),
        s * (-15f64).exp(),
    ];
    assert_tensor("sample", &y, &[3], &want, 1e-14);
    let m = be.gaussian_sample(&mean, &logvar, None, s).unwrap();
    assert_tensor("mean", &m, &[3], &[s, -s, 0.0], 1e-15);
}
