//! SiLU, exact GELU, QuickGELU and GEGLU: known values, f64 gradient checks, f32 against f64,
//! and errors for bad shapes and dtypes.

use crate::common;

use common::*;
use lorafuse::backend::prelude::*;
use lorafuse::backend::Activation;
use lorafuse::rng::Rng;
use lorafuse::{CpuBackend, DType, Error, Tensor};

fn t(shape: &[usize], v: &[f64]) -> Tensor {
    Tensor::from_f64(shape, v.to_vec()).unwrap()
}

/// erf(1/√2) = 0.6826894921370859 (the probability mass within one standard deviation).
const ERF_1_SQRT2: f64 = 0.6826894921370859;
/// Φ(1) = (1 + erf(1/√2))/2 = 0.8413447460685429.
const PHI_1: f64 = 0.5 * (1.0 + ERF_1_SQRT2);
/// φ(1) = exp(-1/2)/√(2π) = 0.24197072451914337.
const PDF_1: f64 = 0.24197072451914337;

const ACTS: [Activation; 4] = [
    Activation::Silu,
    Activation::Gelu,
    Activation::QuickGelu,
    Activation::GeluTanh,
];

#[test]
fn known_values() {
    let be = CpuBackend::new();
    let x = t(&[3], &[0., 1., -1.]);
    // silu(0) = 0, silu(1) = 1/(1 + e^-1) = 0.7310585786300049, silu(-1) = -1/(1 + e).
    let silu1 = 1.0 / (1.0 + (-1f64).exp());
    let silu_m1 = -1.0 / (1.0 + 1f64.exp());
    assert!((silu1 - 0.7310585786300049).abs() < 1e-16);
    // gelu(x) = x·Φ(x): gelu(1) = Φ(1), gelu(-1) = -(1 - Φ(1)) = -0.15865525393145707.
    // quick_gelu(x) = x·σ(1.702x): σ(1.702) = 0.8457957659328212, -σ(-1.702) = -0.1542042340671787.
    let cases = [
        (Activation::Silu, [0., silu1, silu_m1]),
        (Activation::Gelu, [0., PHI_1, -(1.0 - PHI_1)]),
        (
            Activation::QuickGelu,
            [0., 0.8457957659328212, -0.1542042340671787],
        ),
        // gelu_tanh(±1) = ±½(1 + tanh(±√(2/π)·1.044715)) (Python's math.tanh).
        (
            Activation::GeluTanh,
            [0., 0.8411919906082768, -0.15880800939172324],
        ),
    ];
    for (act, want) in cases {
        let y = be.activation(&x, act).unwrap();
        assert_tensor(&format!("{act:?}"), &y, &[3], &want, 1e-15);
        let y32 = be.activation(&to_f32(&x), act).unwrap();
        assert_eq!(y32.dtype(), DType::F32);
        assert_tensor(&format!("{act:?} f32"), &y32, &[3], &want, 1e-6);
    }

    // Derivatives, dy = 1: every one is 1/2 at 0.
    // silu'(1) = σ(1)·(1 + 1·(1 - σ(1))); gelu'(1) = Φ(1) + φ(1) = 1.0833154705876863;
    // quick_gelu'(1) = s + 1.702·s·(1 - s), s = σ(1.702).
    let s = silu1;
    let q = 0.8457957659328212;
    let grads = [
        (Activation::Silu, [0.5, s * (2.0 - s)]),
        (Activation::Gelu, [0.5, PHI_1 + PDF_1]),
        (Activation::QuickGelu, [0.5, q + 1.702 * q * (1.0 - q)]),
        // ½(1 + t) + ½(1 - t²)·√(2/π)·(1 + 3·0.044715), t = tanh(√(2/π)·1.044715).
        (Activation::GeluTanh, [0.5, 1.0829640838457826]),
    ];
    let x = t(&[2], &[0., 1.]);
    let dy = t(&[2], &[1., 1.]);
    for (act, want) in grads {
        let dx = be.activation_backward(&dy, &x, act).unwrap();
        assert_tensor(&format!("{act:?}'"), &dx, &[2], &want, 1e-15);
    }
    assert!((PHI_1 + PDF_1 - 1.0833154705876863).abs() < 1e-15);
}

/// Large inputs: no NaN from exp overflow, and the asymptotes (x for large x, 0 for very
/// negative x) hold.
#[test]
fn tails_are_finite() {
    let be = CpuBackend::new();
    let x = t(&[4], &[-1000., -50., 50., 1000.]);
    for act in ACTS {
        for x in [x.clone(), to_f32(&x)] {
            let y = be.activation(&x, act).unwrap().to_f64_vec();
            assert!(y.iter().all(|v| v.is_finite()), "{act:?}: {y:?}");
            assert_close(&format!("{act:?}"), &y, &[0., 0., 50., 1000.], 0.0, 1e-9);
            let dx = be.activation_backward(&x, &x, act).unwrap().to_f64_vec();
            assert!(dx.iter().all(|v| v.is_finite()), "{act:?}': {dx:?}");
        }
    }
}

#[test]
fn geglu_by_hand() {
    let be = CpuBackend::new();
    // x [1, 4] = [hidden | gate] = [2, -3 | 1, -1]:
    //   y = [2·gelu(1), -3·gelu(-1)] = [2·Φ(1), 3·(1 - Φ(1))] = [1.6826894921370859, 0.4759657617943712]
    let x = t(&[1, 4], &[2., -3., 1., -1.]);
    let y = be.geglu(&x).unwrap();
    assert_tensor(
        "y",
        &y,
        &[1, 2],
        &[1.6826894921370859, 0.4759657617943712],
        1e-15,
    );
    // dy = [1, 0]: dh = [gelu(1), 0], dgate = [1·2·gelu'(1), 0] = [2·(Φ(1) + φ(1)), 0].
    let dx = be.geglu_backward(&t(&[1, 2], &[1., 0.]), &x).unwrap();
    assert_tensor(
        "dx",
        &dx,
        &[1, 4],
        &[PHI_1, 0., 2.0 * (PHI_1 + PDF_1), 0.],
        1e-15,
    );
    // Leading dims are kept: [2, 1, 4] -> [2, 1, 2].
    let x2 = t(&[2, 1, 4], &[2., -3., 1., -1., 0., 5., 7., 0.]);
    let y2 = be.geglu(&x2).unwrap();
    // Row 1: [0·gelu(7), 5·gelu(0)] = [0, 0].
    assert_tensor(
        "y 3-D",
        &y2,
        &[2, 1, 2],
        &[1.6826894921370859, 0.4759657617943712, 0., 0.],
        1e-15,
    );
}

#[test]
fn gradcheck_activations() {
    let be = CpuBackend::new();
    let mut rng = Rng::new(7);
    // Uniform in [-6, 6): the curved parts and the tails of every activation.
    let x = uniform(&mut rng, &[3, 5, 7], -6.0, 6.0);
    for act in ACTS {
        gradcheck(
            &format!("activation {act:?}"),
            std::slice::from_ref(&x),
            &[0],
            300,
            |xs| be.activation(&xs[0], act).unwrap(),
            |xs, dy| vec![be.activation_backward(dy, &xs[0], act).unwrap()],
        );
    }
}

#[test]
fn gradcheck_geglu() {
    let be = CpuBackend::new();
    let mut rng = Rng::new(8);
    // F = 13 (odd), 3-D input [2, 3, 26].
    let x = randn(&mut rng, &[2, 3, 26]);
    let x = Tensor::from_f64([2, 3, 26], x.to_f64_vec().iter().map(|v| 2.0 * v).collect()).unwrap();
    gradcheck(
        "geglu F=13",
        &[x],
        &[0],
        300,
        |xs| be.geglu(&xs[0]).unwrap(),
        |xs, dy| vec![be.geglu_backward(dy, &xs[0]).unwrap()],
    );
}

#[test]
fn f32_matches_f64() {
    let be = CpuBackend::new();
    let mut rng = Rng::new(9);
    let x = uniform(&mut rng, &[300, 320], -8.0, 8.0);
    let dy = randn(&mut rng, &[300, 320]);
    for act in ACTS {
        let y64 = be.activation(&x, act).unwrap();
        let y32 = be.activation(&to_f32(&x), act).unwrap();
        assert_close("y", &y32.to_f64_vec(), &y64.to_f64_vec(), 1e-5, 1e-5);
        let d64 = be.activation_backward(&dy, &x, act).unwrap();
        let d32 = be
            .activation_backward(&to_f32(&dy), &to_f32(&x), act)
            .unwrap();
        assert_close("dx", &d32.to_f64_vec(), &d64.to_f64_vec(), 1e-5, 1e-5);
    }
    let dyg = randn(&mut rng, &[300, 160]);
    let y64 = be.geglu(&x).unwrap();
    let y32 = be.geglu(&to_f32(&x)).unwrap();
    assert_close("geglu", &y32.to_f64_vec(), &y64.to_f64_vec(), 1e-5, 1e-5);
    let d64 = be.geglu_backward(&dyg, &x).unwrap();
    let d32 = be.geglu_backward(&to_f32(&dyg), &to_f32(&x)).unwrap();
    assert_close("geglu dx", &d32.to_f64_vec(), &d64.to_f64_vec(), 1e-4, 1e-4);
}

/// GEGLU equals hidden · activation(Gelu)(gate) composed from the pointwise op.
#[test]
fn geglu_equals_composed() {
    let be = CpuBackend::new();
    let mut rng = Rng::new(11);
    let (rows, f) = (6, 9);
    let x = randn(&mut rng, &[rows, 2 * f]).to_f64_vec();
    let gate: Vec<f64> = x.chunks(2 * f).flat_map(|r| r[f..].to_vec()).collect();
    let hidden: Vec<f64> = x.chunks(2 * f).flat_map(|r| r[..f].to_vec()).collect();
    let g = be
        .activation(&t(&[rows, f], &gate), Activation::Gelu)
        .unwrap()
        .to_f64_vec();
    let want: Vec<f64> = hidden.iter().zip(&g).map(|(h, g)| h * g).collect();
    let y = be.geglu(&t(&[rows, 2 * f], &x)).unwrap();
    assert_tensor("geglu", &y, &[rows, f], &want, 1e-15);
}

fn err_msg<T>(r: lorafuse::Result<T>) -> (Error, String) {
    let e = r.err().expect("must fail");
    let m = e.to_string();
    (e, m)
}

#[test]
fn bad_arguments() {
    let be = CpuBackend::new();
    let x = Tensor::zeros([4, 6], DType::F32);
    let dy = Tensor::zeros([4, 5], DType::F32);
    let (e, m) = err_msg(be.activation_backward(&dy, &x, Activation::Gelu));
    assert!(matches!(e, Error::ShapeMismatch { .. }), "{m}");
    assert!(m.contains("[4, 5]") && m.contains("[4, 6]"), "{m}");

    // GEGLU needs an even last dimension.
    let odd = Tensor::zeros([4, 7], DType::F32);
    let (e, m) = err_msg(be.geglu(&odd));
    assert!(matches!(e, Error::BadShape { .. }), "{m}");
    assert!(m.contains("[4, 7]") && m.contains("even"), "{m}");
    let (e, m) = err_msg(be.geglu_backward(&odd, &odd));
    assert!(matches!(e, Error::BadShape { .. }), "{m}");
    assert!(m.contains("[4, 7]"), "{m}");
    // dy must be [.., F] = [4, 3] for x [4, 6].
    let (e, m) = err_msg(be.geglu_backward(&x, &x));
    assert!(matches!(e, Error::ShapeMismatch { .. }), "{m}");
    assert!(m.contains("[4, 6]") && m.contains("[4, 3]"), "{m}");

    let x16 = Tensor::zeros([4, 6], DType::F16);
    for r in [be.activation(&x16, Activation::Silu), be.geglu(&x16)] {
        let (e, m) = err_msg(r);
        assert!(matches!(e, Error::DType { .. }), "{m}");
        assert!(m.contains("f16") && m.contains("cast"), "{m}");
    }
    let dy64 = Tensor::zeros([4, 6], DType::F64);
    let (e, m) = err_msg(be.activation_backward(&dy64, &x, Activation::Silu));
    assert!(matches!(e, Error::DType { .. }), "{m}");
    assert!(m.contains("dy") && m.contains("f64"), "{m}");
}

/// Empty tensors are fine: zero rows, or F = 0.
#[test]
fn empty_inputs() {
    let be = CpuBackend::new();
    let x = Tensor::zeros([0, 6], DType::F32);
    assert_eq!(be.geglu(&x).unwrap().dims(), &[0, 3]);
    let x = Tensor::zeros([3, 0], DType::F32);
    assert_eq!(be.geglu(&x).unwrap().dims(), &[3, 0]);
    let dy = Tensor::zeros([3, 0], DType::F32);
    assert_eq!(be.geglu_backward(&dy, &x).unwrap().dims(), &[3, 0]);
    assert_eq!(be.activation(&x, Activation::Gelu).unwrap().dims(), &[3, 0]);
}
