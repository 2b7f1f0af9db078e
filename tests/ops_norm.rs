//! GroupNorm (with fused SiLU) and LayerNorm: hand-computed forwards and statistics, f64
//! gradient checks of dX, f32 against f64, the fused SiLU against the composed ops, and
//! errors for bad shapes, values and dtypes.

use crate::common;

use common::*;
use lorafuse::backend::prelude::*;
use lorafuse::backend::{Activation, NormStats};
use lorafuse::rng::Rng;
use lorafuse::{CpuBackend, DType, Error, Tensor};

fn t(shape: &[usize], v: &[f64]) -> Tensor {
    Tensor::from_f64(shape, v.to_vec()).unwrap()
}

fn silu(v: f64) -> f64 {
    v / (1.0 + (-v).exp())
}

/// randn scaled and shifted: inputs with a non-zero mean and non-unit spread.
fn randn_affine(rng: &mut Rng, shape: &[usize], scale: f64, shift: f64) -> Tensor {
    let v = randn(rng, shape).to_f64_vec();
    Tensor::from_f64(shape, v.iter().map(|x| x * scale + shift).collect()).unwrap()
}

/// A non-trivial affine parameter [c]: random around `center`, some of either sign.
fn param(rng: &mut Rng, c: usize, center: f64) -> Tensor {
    randn_affine(rng, &[c], 0.7, center)
}

#[test]
fn group_norm_one_group_by_hand() {
    let be = CpuBackend::new();
    // x [1, 2, 2]: one group [1, 2, 3, 4]; mean 2.5, var (2.25 + 0.25 + 0.25 + 2.25)/4 = 1.25.
    // eps 2.75 makes var + eps = 4, rstd = 0.5, x̂ = [-0.75, -0.25, 0.25, 0.75].
    // gamma [2, -1], beta [0.5, 1]:
    //   channel 0: 2·[-0.75, -0.25] + 0.5 = [-1, 0]; channel 1: -[0.25, 0.75] + 1 = [0.75, 0.25].
    let x = t(&[1, 2, 2], &[1., 2., 3., 4.]);
    let gamma = t(&[2], &[2., -1.]);
    let beta = t(&[2], &[0.5, 1.]);
    let (y, stats) = be.group_norm(&x, &gamma, &beta, 1, 2.75, false).unwrap();
    assert_tensor("y", &y, &[1, 2, 2], &[-1., 0., 0.75, 0.25], 1e-15);
    assert_tensor("mean", &stats.mean, &[1, 1], &[2.5], 1e-15);
    assert_tensor("rstd", &stats.rstd, &[1, 1], &[0.5], 1e-15);

    // Fused SiLU: silu of the same values, silu(v) = v/(1 + e^-v); silu(0) = 0.
    let (ys, _) = be.group_norm(&x, &gamma, &beta, 1, 2.75, true).unwrap();
    let want: Vec<f64> = [-1., 0., 0.75, 0.25].iter().map(|&v| silu(v)).collect();
    assert_tensor("silu(y)", &ys, &[1, 2, 2], &want, 1e-15);

    // A realistic eps: rstd = 1/sqrt(1.25 + 1e-5), x̂ = (x - 2.5)·rstd; gamma 1, beta 0.
    let ones = t(&[2], &[1., 1.]);
    let zeros = t(&[2], &[0., 0.]);
    let (y, stats) = be.group_norm(&x, &ones, &zeros, 1, 1e-5, false).unwrap();
    let r = 1.0 / (1.25f64 + 1e-5).sqrt(); // 0.894423613...
    assert_tensor(
        "y eps 1e-5",
        &y,
        &[1, 2, 2],
        &[-1.5 * r, -0.5 * r, 0.5 * r, 1.5 * r],
        1e-15,
    );
    assert_tensor("rstd eps 1e-5", &stats.rstd, &[1, 1], &[r], 1e-15);

    // f32 input: f32 output and f32 statistics, same numbers.
    let (y32, s32) = be
        .group_norm(&to_f32(&x), &to_f32(&gamma), &to_f32(&beta), 1, 2.75, false)
        .unwrap();
    assert_eq!(y32.dtype(), DType::F32);
    assert_eq!(s32.mean.dtype(), DType::F32);
    assert_eq!(s32.rstd.dtype(), DType::F32);
    assert_tensor("y f32", &y32, &[1, 2, 2], &[-1., 0., 0.75, 0.25], 1e-6);
}

#[test]
fn group_norm_two_groups_by_hand() {
    let be = CpuBackend::new();
    // x [2, 4, 2], groups 2 (two channels, four elements each), eps 2.75.
    // Sample 0: group 0 = channels 0, 1 = [1, 2 | 3, 4]: mean 2.5, var 1.25, rstd 1/2,
    //             x̂ = [-0.75, -0.25 | 0.25, 0.75];
    //           group 1 = channels 2, 3 = [0, 5 | 5, 0]: mean 2.5, var 6.25, rstd 1/3,
    //             x̂ = [-5/6, 5/6 | 5/6, -5/6].
    // Sample 1 = sample 0 + 10: means 12.5, same variances, same x̂ and y.
    // gamma [2, -1, 3, 0.5], beta [0.5, 1, -1, 2]:
    //   ch 0: 2·x̂ + 0.5 = [-1, 0]        ch 1: -x̂ + 1 = [0.75, 0.25]
    //   ch 2: 3·x̂ - 1 = [-3.5, 1.5]      ch 3: 0.5·x̂ + 2 = [29/12, 19/12]
    let s0 = [1., 2., 3., 4., 0., 5., 5., 0.];
    let xv: Vec<f64> = s0.iter().chain(s0.iter()).copied().collect();
    let xv: Vec<f64> = xv
        .iter()
        .enumerate()
        .map(|(i, v)| if i < 8 { *v } else { v + 10. })
        .collect();
    let x = t(&[2, 4, 2], &xv);
    let gamma = t(&[4], &[2., -1., 3., 0.5]);
    let beta = t(&[4], &[0.5, 1., -1., 2.]);
    let (y, stats) = be.group_norm(&x, &gamma, &beta, 2, 2.75, false).unwrap();
    let y0 = [-1., 0., 0.75, 0.25, -3.5, 1.5, 29. / 12., 19. / 12.];
    let want: Vec<f64> = y0.iter().chain(y0.iter()).copied().collect();
    assert_tensor("y", &y, &[2, 4, 2], &want, 1e-14);
    assert_tensor("mean", &stats.mean, &[2, 2], &[2.5, 2.5, 12.5, 12.5], 1e-14);
    assert_tensor(
        "rstd",
        &stats.rstd,
        &[2, 2],
        &[0.5, 1. / 3., 0.5, 1. / 3.],
        1e-15,
    );
}

#[test]
fn layer_norm_by_hand() {
    let be = CpuBackend::new();
    // Row 0 [2, 4, 4, 4, 5, 5, 7, 9]: mean 5, var (9+1+1+1+0+0+4+16)/8 = 4; eps 5 -> rstd 1/3,
    //   x̂ = [-1, -1/3, -1/3, -1/3, 0, 0, 2/3, 4/3].
    // Row 1 constant 3: mean 3, var 0, rstd 1/sqrt(5), x̂ = 0, so y = beta.
    // gamma [1, -1, 2, 0.5, 1, 3, 1.5, -2], beta [0, 1, 0, -1, 0.5, 0, 0, 1]:
    //   row 0: [-1, 1/3 + 1, -2/3, -1/6 - 1, 0.5, 0, 1, -8/3 + 1]
    let x = t(
        &[2, 8],
        &[
            2., 4., 4., 4., 5., 5., 7., 9., 3., 3., 3., 3., 3., 3., 3., 3.,
        ],
    );
    let gamma = t(&[8], &[1., -1., 2., 0.5, 1., 3., 1.5, -2.]);
    let beta = t(&[8], &[0., 1., 0., -1., 0.5, 0., 0., 1.]);
    let (y, stats) = be.layer_norm(&x, &gamma, &beta, 5.0).unwrap();
    let mut want = vec![-1., 4. / 3., -2. / 3., -7. / 6., 0.5, 0., 1., -5. / 3.];
    want.extend(beta.to_f64_vec());
    assert_tensor("y", &y, &[2, 8], &want, 1e-15);
    assert_tensor("mean", &stats.mean, &[2], &[5., 3.], 1e-15);
    assert_tensor(
        "rstd",
        &stats.rstd,
        &[2],
        &[1. / 3., 1. / 5f64.sqrt()],
        1e-15,
    );

    // 3-D input [2, 1, 8]: statistics per row, [rows] = [2].
    let (y3, s3) = be
        .layer_norm(&x.clone().reshape([2, 1, 8]).unwrap(), &gamma, &beta, 5.0)
        .unwrap();
    assert_tensor("y 3-D", &y3, &[2, 1, 8], &want, 1e-15);
    assert_eq!(s3.mean.dims(), &[2]);
}

/// Backward by hand. x = [1, 2, 3, 4], eps 2.75: x̂ = [-0.75, -0.25, 0.25, 0.75], rstd 0.5.
/// gamma 2, dy = [1, 0, 0, 0]: dx̂ = [2, 0, 0, 0], mean(dx̂) = 0.5, mean(dx̂·x̂) = -0.375;
/// dx = 0.5·(dx̂ - 0.5 + 0.375·x̂) = 0.5·[2 - 0.5 - 0.28125, -0.5 - 0.09375, -0.5 + 0.09375,
/// -0.5 + 0.28125] = [0.609375, -0.296875, -0.203125, -0.109375] (sums to 0, as it must).
#[test]
fn backward_by_hand() {
    let be = CpuBackend::new();
    let want = [0.609375, -0.296875, -0.203125, -0.109375];
    let x = t(&[1, 4], &[1., 2., 3., 4.]);
    let dy = t(&[1, 4], &[1., 0., 0., 0.]);
    let gamma = t(&[4], &[2.; 4]);
    let beta = t(&[4], &[0.3, -0.1, 0.0, 7.0]); // beta does not enter dx
    let (_, stats) = be.layer_norm(&x, &gamma, &beta, 2.75).unwrap();
    let dx = be.layer_norm_backward(&dy, &x, &gamma, &stats).unwrap();
    assert_tensor("layer_norm dx", &dx, &[1, 4], &want, 1e-15);

    // The same numbers from GroupNorm: x [1, 2, 2] as one group, gamma [2, 2].
    let x = t(&[1, 2, 2], &[1., 2., 3., 4.]);
    let dy = t(&[1, 2, 2], &[1., 0., 0., 0.]);
    let gamma = t(&[2], &[2., 2.]);
    let beta = t(&[2], &[0.3, -0.1]);
    let (_, stats) = be.group_norm(&x, &gamma, &beta, 1, 2.75, false).unwrap();
    let dx = be
        .group_norm_backward(&dy, &x, &gamma, &beta, &stats, 1, false)
        .unwrap();
    assert_tensor("group_norm dx", &dx, &[1, 2, 2], &want, 1e-15);
}

/// y does not change when a group is shifted, so a dy that only probes the shift direction
/// gets dx = 0: with dy[c] = 1/gamma[c], dx̂ = 1, mean(dx̂) = 1, mean(dx̂·x̂) = mean(x̂) = 0,
/// and dx = rstd·(1 - 1 - 0) = 0 in every group.
#[test]
fn group_norm_backward_ignores_shift() {
    let be = CpuBackend::new();
    let mut rng = Rng::new(10);
    let x = randn_affine(&mut rng, &[2, 6, 3], 2.0, 1.0);
    let gamma = param(&mut rng, 6, 1.0);
    let beta = param(&mut rng, 6, 0.0);
    let (y, stats) = be.group_norm(&x, &gamma, &beta, 3, 1e-5, false).unwrap();
    let g = gamma.to_f64_vec();
    let dy: Vec<f64> = (0..y.numel()).map(|i| 1.0 / g[(i / 3) % 6]).collect();
    let dx = be
        .group_norm_backward(&t(&[2, 6, 3], &dy), &x, &gamma, &beta, &stats, 3, false)
        .unwrap();
    assert!(dx.to_f64_vec().iter().all(|v| v.abs() < 1e-12), "{dx:?}");
}

fn group_norm_gradcheck(name: &str, dims: &[usize], groups: usize, fuse_silu: bool) {
    let be = CpuBackend::new();
    let mut rng = Rng::new(dims.iter().product::<usize>() as u64 + groups as u64);
    let c = dims[1];
    let x = randn_affine(&mut rng, dims, 1.5, 0.5);
    let gamma = param(&mut rng, c, 1.0);
    let beta = param(&mut rng, c, 0.2);
    let eps = 1e-5;
    gradcheck(
        name,
        &[x],
        &[0],
        300,
        |xs| {
            be.group_norm(&xs[0], &gamma, &beta, groups, eps, fuse_silu)
                .unwrap()
                .0
        },
        |xs, dy| {
            let (_, stats) = be
                .group_norm(&xs[0], &gamma, &beta, groups, eps, fuse_silu)
                .unwrap();
            vec![be
                .group_norm_backward(dy, &xs[0], &gamma, &beta, &stats, groups, fuse_silu)
                .unwrap()]
        },
    );
}

#[test]
fn gradcheck_group_norm() {
    group_norm_gradcheck("group_norm C64 5x3", &[2, 64, 5, 3], 32, false);
    group_norm_gradcheck("group_norm C96 5x3", &[2, 96, 5, 3], 32, false);
    group_norm_gradcheck("group_norm 3-D [2, 64, 7]", &[2, 64, 7], 32, false);
    group_norm_gradcheck("group_norm [3, 6] (no spatial)", &[3, 6], 3, false);
}

#[test]
fn gradcheck_group_norm_silu() {
    group_norm_gradcheck("group_norm+silu C64 5x3", &[2, 64, 5, 3], 32, true);
    group_norm_gradcheck("group_norm+silu C96 5x3", &[2, 96, 5, 3], 32, true);
    group_norm_gradcheck("group_norm+silu 3-D [2, 64, 7]", &[2, 64, 7], 32, true);
}

fn layer_norm_gradcheck(name: &str, dims: &[usize]) {
    let be = CpuBackend::new();
    let mut rng = Rng::new(dims.iter().product::<usize>() as u64);
    let c = *dims.last().unwrap();
    let x = randn_affine(&mut rng, dims, 1.5, -0.7);
    let gamma = param(&mut rng, c, 1.0);
    let beta = param(&mut rng, c, -0.3);
    gradcheck(
        name,
        &[x],
        &[0],
        300,
        |xs| be.layer_norm(&xs[0], &gamma, &beta, 1e-5).unwrap().0,
        |xs, dy| {
            let (_, stats) = be.layer_norm(&xs[0], &gamma, &beta, 1e-5).unwrap();
            vec![be.layer_norm_backward(dy, &xs[0], &gamma, &stats).unwrap()]
        },
    );
}

#[test]
fn gradcheck_layer_norm() {
    layer_norm_gradcheck("layer_norm [3, 4, 77]", &[3, 4, 77]);
    layer_norm_gradcheck("layer_norm [5, 13]", &[5, 13]);
    layer_norm_gradcheck("layer_norm [7] (one row)", &[7]);
}

/// GroupNorm with fused SiLU is group_norm followed by the SiLU activation, forward and
/// backward (the composed ops are the slow reference for the fused pass).
#[test]
fn fused_silu_equals_composed() {
    let be = CpuBackend::new();
    let mut rng = Rng::new(4);
    let dims = [2, 64, 6, 5];
    let x = randn_affine(&mut rng, &dims, 2.0, 0.3);
    let gamma = param(&mut rng, 64, 1.0);
    let beta = param(&mut rng, 64, 0.0);
    let dy = randn(&mut rng, &dims);
    let (fused, fstats) = be.group_norm(&x, &gamma, &beta, 32, 1e-6, true).unwrap();
    let (pre, stats) = be.group_norm(&x, &gamma, &beta, 32, 1e-6, false).unwrap();
    let composed = be.activation(&pre, Activation::Silu).unwrap();
    assert_close(
        "forward",
        &fused.to_f64_vec(),
        &composed.to_f64_vec(),
        1e-14,
        1e-14,
    );
    assert_eq!(fstats.mean.to_f64_vec(), stats.mean.to_f64_vec());
    assert_eq!(fstats.rstd.to_f64_vec(), stats.rstd.to_f64_vec());

    let dx_fused = be
        .group_norm_backward(&dy, &x, &gamma, &beta, &fstats, 32, true)
        .unwrap();
    let dpre = be.activation_backward(&dy, &pre, Activation::Silu).unwrap();
    let dx_composed = be
        .group_norm_backward(&dpre, &x, &gamma, &beta, &stats, 32, false)
        .unwrap();
    assert!(
        rel_err(&dx_fused.to_f64_vec(), &dx_composed.to_f64_vec()) < 1e-13,
        "backward"
    );

    // The same in f32.
    let (x32, g32, b32) = (to_f32(&x), to_f32(&gamma), to_f32(&beta));
    let (fused32, _) = be.group_norm(&x32, &g32, &b32, 32, 1e-6, true).unwrap();
    let (pre32, _) = be.group_norm(&x32, &g32, &b32, 32, 1e-6, false).unwrap();
    let composed32 = be.activation(&pre32, Activation::Silu).unwrap();
    assert_close(
        "forward f32",
        &fused32.to_f64_vec(),
        &composed32.to_f64_vec(),
        1e-6,
        1e-6,
    );
}

/// The f32 path agrees with the f64 path (the one the gradient checks trust), forward,
/// statistics and backward, at SD1.x-like sizes with a non-zero mean.
#[test]
fn f32_matches_f64() {
    let be = CpuBackend::new();
    let mut rng = Rng::new(5);
    let to32 = |s: &NormStats| (to_f32(&s.mean), to_f32(&s.rstd));

    for silu_on in [false, true] {
        let dims = [2, 320, 16, 16];
        let x = randn_affine(&mut rng, &dims, 3.0, 2.0);
        let gamma = param(&mut rng, 320, 1.0);
        let beta = param(&mut rng, 320, 0.0);
        let dy = randn(&mut rng, &dims);
        let (y64, s64) = be.group_norm(&x, &gamma, &beta, 32, 1e-5, silu_on).unwrap();
        let (y32, s32) = be
            .group_norm(
                &to_f32(&x),
                &to_f32(&gamma),
                &to_f32(&beta),
                32,
                1e-5,
                silu_on,
            )
            .unwrap();
        assert_eq!(y32.dtype(), DType::F32);
        assert_close("gn y", &y32.to_f64_vec(), &y64.to_f64_vec(), 1e-4, 1e-4);
        assert_close(
            "gn mean",
            &s32.mean.to_f64_vec(),
            &s64.mean.to_f64_vec(),
            1e-6,
            1e-6,
        );
        assert_close(
            "gn rstd",
            &s32.rstd.to_f64_vec(),
            &s64.rstd.to_f64_vec(),
            1e-6,
            1e-6,
        );
        let dx64 = be
            .group_norm_backward(&dy, &x, &gamma, &beta, &s64, 32, silu_on)
            .unwrap();
        let (m32, r32) = to32(&s64);
        let dx32 = be
            .group_norm_backward(
                &to_f32(&dy),
                &to_f32(&x),
                &to_f32(&gamma),
                &to_f32(&beta),
                &NormStats {
                    mean: m32,
                    rstd: r32,
                },
                32,
                silu_on,
            )
            .unwrap();
        assert_close("gn dx", &dx32.to_f64_vec(), &dx64.to_f64_vec(), 1e-4, 1e-4);
    }

    let x = randn_affine(&mut rng, &[300, 320], 2.0, -1.5);
    let gamma = param(&mut rng, 320, 1.0);
    let beta = param(&mut rng, 320, 0.0);
    let dy = randn(&mut rng, &[300, 320]);
    let (y64, s64) = be.layer_norm(&x, &gamma, &beta, 1e-5).unwrap();
    let (y32, s32) = be
        .layer_norm(&to_f32(&x), &to_f32(&gamma), &to_f32(&beta), 1e-5)
        .unwrap();
    assert_close("ln y", &y32.to_f64_vec(), &y64.to_f64_vec(), 1e-4, 1e-4);
    assert_close(
        "ln rstd",
        &s32.rstd.to_f64_vec(),
        &s64.rstd.to_f64_vec(),
        1e-6,
        1e-6,
    );
    let dx64 = be.layer_norm_backward(&dy, &x, &gamma, &s64).unwrap();
    let dx32 = be
        .layer_norm_backward(&to_f32(&dy), &to_f32(&x), &to_f32(&gamma), &s32)
        .unwrap();
    assert_close("ln dx", &dx32.to_f64_vec(), &dx64.to_f64_vec(), 1e-4, 1e-4);
}

/// An empty batch is not an error: empty output, empty statistics.
#[test]
fn empty_batch() {
    let be = CpuBackend::new();
    let x = Tensor::zeros([0, 4, 3], DType::F32);
    let g = Tensor::zeros([4], DType::F32);
    let (y, s) = be.group_norm(&x, &g, &g, 2, 1e-5, true).unwrap();
    assert_eq!(y.dims(), &[0, 4, 3]);
    assert_eq!(s.mean.dims(), &[0, 2]);
    let dx = be.group_norm_backward(&y, &x, &g, &g, &s, 2, true).unwrap();
    assert_eq!(dx.dims(), &[0, 4, 3]);
    let x = Tensor::zeros([0, 4], DType::F32);
    let (y, s) = be.layer_norm(&x, &g, &g, 1e-5).unwrap();
    assert_eq!(y.dims(), &[0, 4]);
    assert_eq!(s.rstd.dims(), &[0]);
}

fn err_msg<T>(r: lorafuse::Result<T>) -> (Error, String) {
    let e = r.err().expect("must fail");
    let m = e.to_string();
    (e, m)
}

#[test]
fn bad_group_norm_arguments() {
    let be = CpuBackend::new();
    let x = Tensor::zeros([2, 10, 3, 3], DType::F32);
    let g10 = Tensor::zeros([10], DType::F32);
    let g8 = Tensor::zeros([8], DType::F32);

    let (e, m) = err_msg(be.group_norm(&x, &g8, &g10, 5, 1e-5, false));
    assert!(matches!(e, Error::ShapeMismatch { .. }), "{m}");
    assert!(
        m.contains("gamma") && m.contains("[8]") && m.contains("[2, 10, 3, 3]"),
        "{m}"
    );
    let (e, m) = err_msg(be.group_norm(&x, &g10, &g8, 5, 1e-5, false));
    assert!(matches!(e, Error::ShapeMismatch { .. }), "{m}");
    assert!(m.contains("beta") && m.contains("[8]"), "{m}");

    // C = 10 is not divisible by 4 groups: the message names both numbers.
    let (e, m) = err_msg(be.group_norm(&x, &g10, &g10, 4, 1e-5, false));
    assert!(matches!(e, Error::BadValue { .. }), "{m}");
    assert!(m.contains("groups = 4") && m.contains("C = 10"), "{m}");
    let (e, m) = err_msg(be.group_norm(&x, &g10, &g10, 0, 1e-5, false));
    assert!(matches!(e, Error::BadValue { .. }), "{m}");

    for eps in [0.0, -1e-5, f64::NAN, f64::INFINITY] {
        let (e, m) = err_msg(be.group_norm(&x, &g10, &g10, 5, eps, false));
        assert!(matches!(e, Error::BadValue { .. }), "{m}");
        assert!(m.contains("eps"), "{m}");
    }

    let (e, m) = err_msg(be.group_norm(&g10, &g10, &g10, 5, 1e-5, false));
    assert!(matches!(e, Error::BadShape { .. }), "{m}");

    // Backward: dy of another shape, statistics of another shape.
    let (_, stats) = be.group_norm(&x, &g10, &g10, 5, 1e-5, false).unwrap();
    let dy = Tensor::zeros([2, 10, 3, 4], DType::F32);
    let (e, m) = err_msg(be.group_norm_backward(&dy, &x, &g10, &g10, &stats, 5, false));
    assert!(matches!(e, Error::ShapeMismatch { .. }), "{m}");
    assert!(
        m.contains("[2, 10, 3, 4]") && m.contains("[2, 10, 3, 3]"),
        "{m}"
    );
    let (e, m) = err_msg(be.group_norm_backward(&x, &x, &g10, &g10, &stats, 2, false));
    assert!(matches!(e, Error::ShapeMismatch { .. }), "{m}");
    assert!(
        m.contains("stats") && m.contains("[2, 5]") && m.contains("[2, 2]"),
        "{m}"
    );

    // f16 is refused with a hint to cast; mixed dtypes are refused too.
    let x16 = Tensor::zeros([2, 10, 3, 3], DType::F16);
    let (e, m) = err_msg(be.group_norm(&x16, &g10, &g10, 5, 1e-5, false));
    assert!(matches!(e, Error::DType { .. }), "{m}");
    assert!(m.contains("f16") && m.contains("cast"), "{m}");
    let g64 = Tensor::zeros([10], DType::F64);
    let (e, m) = err_msg(be.group_norm(&x, &g64, &g10, 5, 1e-5, false));
    assert!(matches!(e, Error::DType { .. }), "{m}");
    assert!(m.contains("gamma") && m.contains("f64"), "{m}");
}

#[test]
fn bad_layer_norm_arguments() {
    let be = CpuBackend::new();
    let x = Tensor::zeros([4, 7], DType::F32);
    let g7 = Tensor::zeros([7], DType::F32);
    let g4 = Tensor::zeros([4], DType::F32);
    let (e, m) = err_msg(be.layer_norm(&x, &g4, &g7, 1e-5));
    assert!(matches!(e, Error::ShapeMismatch { .. }), "{m}");
    assert!(m.contains("[4]") && m.contains("[4, 7]"), "{m}");
    let (e, _) = err_msg(be.layer_norm(&x, &g7, &g7, 0.0));
    assert!(matches!(e, Error::BadValue { .. }));

    let (_, stats) = be.layer_norm(&x, &g7, &g7, 1e-5).unwrap();
    let dy = Tensor::zeros([4, 8], DType::F32);
    let (e, m) = err_msg(be.layer_norm_backward(&dy, &x, &g7, &stats));
    assert!(matches!(e, Error::ShapeMismatch { .. }), "{m}");
    assert!(m.contains("[4, 8]") && m.contains("[4, 7]"), "{m}");
    let x2 = Tensor::zeros([5, 7], DType::F32);
    let (e, m) = err_msg(be.layer_norm_backward(&x2, &x2, &g7, &stats));
    assert!(matches!(e, Error::ShapeMismatch { .. }), "{m}");
    assert!(
        m.contains("[4]") && m.contains("[5, 7]") && m.contains("[5]"),
        "{m}"
    );

    let x16 = Tensor::zeros([4, 7], DType::F16);
    let (e, m) = err_msg(be.layer_norm(&x16, &g7, &g7, 1e-5));
    assert!(matches!(e, Error::DType { .. }), "{m}");
    assert!(m.contains("f16"), "{m}");
}
