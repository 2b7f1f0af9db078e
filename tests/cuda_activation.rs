//! SiLU, exact GELU, QuickGELU and GEGLU on the CUDA backend, forward and dX, against the CPU
//! backend in f32, f16 and bf16 modes: odd sizes (a ragged last block), inputs out to ±8 (the
//! sigmoid and erf tails), SD1.5 shapes (full size on a GPU), empty tensors, and the errors of
//! bad shapes and wrong devices.
#![cfg(any(feature = "cuda", feature = "cuda-emu"))]

use crate::common;

use common::cuda::*;
use lorafuse::backend::prelude::*;
use lorafuse::backend::Activation;
use lorafuse::rng::Rng;
use lorafuse::{DType, Error, Tensor};

const ACTS: [Activation; 4] = [
    Activation::Silu,
    Activation::Gelu,
    Activation::QuickGelu,
    Activation::GeluTanh,
];

/// A CPU/device pair of values `scale·u`, u from `nonzero`.
fn scaled_pair(
    e: &Engine,
    rng: &mut Rng,
    shape: &[usize],
    dtype: DType,
    scale: f32,
) -> (Tensor, Tensor) {
    let v: Vec<f32> = nonzero(rng, shape.iter().product())
        .iter()
        .map(|&u| u * scale)
        .collect();
    pair(&e.be, shape, &v, dtype)
}

fn activation_case(e: &Engine, rng: &mut Rng, dtype: DType, shape: &[usize], act: Activation) {
    let what = format!("{act:?} {shape:?} {dtype:?} gpu {}", e.gpu);
    let (xc, xd) = scaled_pair(e, rng, shape, dtype, 8.0);
    let (dyc, dyd) = random_pair(&e.be, rng, shape, dtype);
    let cpu = cpu();
    let yd = e.be.activation(&xd, act).unwrap();
    assert_eq!(yd.dtype(), dtype, "{what}: y dtype");
    assert_matches(
        &format!("{what}: y"),
        &yd,
        &cpu.activation(&xc, act).unwrap(),
        tol(dtype),
    );
    let dxd = e.be.activation_backward(&dyd, &xd, act).unwrap();
    let dxc = cpu.activation_backward(&dyc, &xc, act).unwrap();
    assert_matches(&format!("{what}: dx"), &dxd, &dxc, tol(dtype));
}

fn geglu_case(e: &Engine, rng: &mut Rng, dtype: DType, shape: &[usize]) {
    let what = format!("geglu {shape:?} {dtype:?} gpu {}", e.gpu);
    let (xc, xd) = scaled_pair(e, rng, shape, dtype, 4.0);
    let mut out = shape.to_vec();
    *out.last_mut().unwrap() /= 2;
    let (dyc, dyd) = random_pair(&e.be, rng, &out, dtype);
    let cpu = cpu();
    let yd = e.be.geglu(&xd).unwrap();
    assert_eq!(yd.dtype(), dtype, "{what}: y dtype");
    assert_matches(
        &format!("{what}: y"),
        &yd,
        &cpu.geglu(&xc).unwrap(),
        tol(dtype),
    );
    let dxd = e.be.geglu_backward(&dyd, &xd).unwrap();
    let dxc = cpu.geglu_backward(&dyc, &xc).unwrap();
    assert_matches(&format!("{what}: dx"), &dxd, &dxc, tol(dtype));
}

#[test]
fn activations_match_cpu() {
    activations_match_cpu_in(&[DType::F32, DType::F16]);
}

/// The same in bf16 (compute capability 8.0 and later; the simple kernels), against the CPU
/// in f32 on the same bf16-rounded inputs with `tol(DType::BF16)`.
#[test]
fn activations_match_cpu_bf16() {
    activations_match_cpu_in(&[DType::BF16]);
}

fn activations_match_cpu_in(dtypes: &[DType]) {
    let mut rng = Rng::new(21);
    for &dtype in dtypes {
        for e in engines(dtype) {
            for act in ACTS {
                // One element, a ragged block (111), 10010 elements (ragged over 40 blocks).
                for shape in [&[1][..], &[3, 37], &[2, 5, 1001]] {
                    activation_case(&e, &mut rng, dtype, shape, act);
                }
            }
            // SD1.5-like: SiLU on a 320-channel feature map and the 1280 time embedding,
            // QuickGELU on CLIP's 3072-wide MLP, GELU on a 1280-wide row.
            activation_case(&e, &mut rng, dtype, &[1, 320, 4, 4], Activation::Silu);
            activation_case(&e, &mut rng, dtype, &[2, 1280], Activation::Silu);
            activation_case(&e, &mut rng, dtype, &[3, 3072], Activation::QuickGelu);
            activation_case(&e, &mut rng, dtype, &[4, 1280], Activation::Gelu);
            if e.gpu {
                activation_case(&e, &mut rng, dtype, &[2, 320, 64, 64], Activation::Silu);
                activation_case(&e, &mut rng, dtype, &[2, 77, 3072], Activation::QuickGelu);
                activation_case(&e, &mut rng, dtype, &[2, 4096, 1280], Activation::Gelu);
            }
        }
    }
}

#[test]
fn geglu_matches_cpu() {
    geglu_matches_cpu_in(&[DType::F32, DType::F16]);
}

/// The same in bf16 (compute capability 8.0 and later; the simple kernels), against the CPU
/// in f32 on the same bf16-rounded inputs with `tol(DType::BF16)`.
#[test]
fn geglu_matches_cpu_bf16() {
    geglu_matches_cpu_in(&[DType::BF16]);
}

fn geglu_matches_cpu_in(dtypes: &[DType]) {
    let mut rng = Rng::new(22);
    for &dtype in dtypes {
        for e in engines(dtype) {
            // F = 1, 37 (over leading dims), 1001 (a ragged block per row), and SD1.5's
            // 320-channel transformer (2F = 2·4·320 = 2560) on 5 tokens.
            for shape in [&[3, 2][..], &[2, 3, 74], &[3, 2002], &[5, 2560]] {
                geglu_case(&e, &mut rng, dtype, shape);
            }
            if e.gpu {
                // 64x64 latents: 4096 tokens, batch 2; the 1280-channel level (2F = 10240).
                geglu_case(&e, &mut rng, dtype, &[2, 4096, 2560]);
                geglu_case(&e, &mut rng, dtype, &[2, 64, 10240]);
            }
        }
    }
}

#[test]
fn empty_inputs_give_empty_outputs() {
    for dtype in [DType::F32, DType::F16] {
        for e in engines(dtype) {
            let x = e.be.tensor_from_f32(&[0, 4], &[], dtype).unwrap();
            let y = e.be.activation(&x, Activation::Gelu).unwrap();
            assert_eq!(y.dims(), [0, 4]);
            let dx = e.be.activation_backward(&x, &x, Activation::Silu).unwrap();
            assert_eq!(dx.dims(), [0, 4]);
            let g = e.be.geglu(&x).unwrap();
            assert_eq!(g.dims(), [0, 2]);
            assert_eq!(e.be.geglu_backward(&g, &x).unwrap().dims(), [0, 4]);
        }
    }
}

/// Both backends' errors for the same call: same kind, same message.
fn same_error(what: &str, cpu: Error, dev: Error) {
    assert_eq!(
        std::mem::discriminant(&cpu),
        std::mem::discriminant(&dev),
        "{what}: CPU {cpu} vs CUDA {dev}"
    );
    assert_eq!(cpu.to_string(), dev.to_string(), "{what}");
}

#[test]
fn activation_errors_match_cpu() {
    let mut rng = Rng::new(23);
    let cpu = cpu();
    for e in engines(DType::F32) {
        let f = DType::F32;
        let (xc, xd) = random_pair(&e.be, &mut rng, &[3, 5], f);
        let (yc, yd) = random_pair(&e.be, &mut rng, &[3, 4], f);
        // activation_backward with dy of another shape.
        let ec = cpu
            .activation_backward(&yc, &xc, Activation::Gelu)
            .err()
            .unwrap();
        let ed =
            e.be.activation_backward(&yd, &xd, Activation::Gelu)
                .err()
                .unwrap();
        assert!(matches!(ed, Error::ShapeMismatch { .. }), "{ed}");
        same_error("activation_backward dy [3, 4] for x [3, 5]", ec, ed);
        // GEGLU of an odd last dimension.
        let ec = cpu.geglu(&xc).err().unwrap();
        let ed = e.be.geglu(&xd).err().unwrap();
        assert!(matches!(ed, Error::BadShape { .. }), "{ed}");
        same_error("geglu [3, 5]", ec, ed);
        // GEGLU backward with dy [3, 4] for x [3, 4] (it must be [3, 2]).
        let ec = cpu.geglu_backward(&yc, &yc).err().unwrap();
        let ed = e.be.geglu_backward(&yd, &yd).err().unwrap();
        assert!(matches!(ed, Error::ShapeMismatch { .. }), "{ed}");
        same_error("geglu_backward dy [3, 4]", ec, ed);

        // A CPU tensor given to the CUDA backend.
        let ed = e.be.activation(&xc, Activation::Silu).err().unwrap();
        assert!(matches!(ed, Error::Device { .. }), "{ed}");
        let dy = e.be.geglu(&yd).unwrap();
        let ed = e.be.geglu_backward(&dy, &yc).err().unwrap();
        assert!(matches!(ed, Error::Device { .. }), "{ed}");
        // Mixed dtypes.
        let (_, x16) = random_pair(&e.be, &mut rng, &[3, 5], DType::F16);
        let ed =
            e.be.activation_backward(&x16, &xd, Activation::Silu)
                .err()
                .unwrap();
        assert!(matches!(ed, Error::DType { .. }), "{ed}");
    }
}
