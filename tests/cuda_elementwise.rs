//! The CUDA backend's transfers, casts and elementwise ops against the CPU backend, in the
//! emulator (and on a GPU when present), f32, f16 and bf16, with tails in every launch.
#![cfg(any(feature = "cuda", feature = "cuda-emu"))]

use crate::common;

use common::cuda::*;
use lorafuse::backend::prelude::*;
use lorafuse::rng::Rng;
use lorafuse::{DType, Error, Tensor};

const SHAPES: &[&[usize]] = &[&[1], &[37], &[2, 3, 5, 7], &[2, 320, 9, 7]];

#[test]
fn upload_download_and_casts_round_trip() {
    let mut rng = Rng::new(10);
    for e in engines(DType::F32) {
        for shape in SHAPES {
            let v = nonzero(&mut rng, shape.iter().product());
            let d32 = e.be.tensor_from_f32(shape, &v, DType::F32).unwrap();
            assert_eq!(e.be.to_f32_vec(&d32).unwrap(), v);
            let d16 = e.be.cast(&d32, DType::F16).unwrap();
            assert_eq!(d16.dtype(), DType::F16);
            assert_eq!(
                e.be.to_f32_vec(&d16).unwrap(),
                round_f16(&v),
                "cast to f16 rounds to nearest even"
            );
            let back = e.be.cast(&d16, DType::F32).unwrap();
            assert_eq!(back.to_f32_vec(), round_f16(&v));
            let same = e.be.cast(&d32, DType::F32).unwrap();
            assert_eq!(same.to_f32_vec(), v);
            let z = e.be.zeros(shape, DType::F16).unwrap();
            assert!(z.to_f32_vec().iter().all(|&x| x == 0.0));
        }
    }
}

#[test]
fn f16_rounding_matches_the_half_crate_on_edge_values() {
    // Subnormals, ties, the largest finite value and overflow: the kernels' conversion and the
    // host's must agree bit for bit.
    let v: Vec<f32> = vec![
        0.0,
        -0.0,
        1.0,
        65504.0,
        65519.0,
        65520.0,
        1e6,
        -1e6,
        6.0e-8,
        2.9e-8,
        3.0e-8,
        5.96e-8,
        1.0e-5,
        6.1e-5,
        0.1,
        1.0 + 1.0 / 2048.0,
        1.0 + 3.0 / 2048.0,
        f32::INFINITY,
    ];
    for e in engines(DType::F32) {
        let d = e.be.tensor_from_f32(&[v.len()], &v, DType::F32).unwrap();
        let h = e.be.cast(&d, DType::F16).unwrap();
        let got = e.be.to_f32_vec(&h).unwrap();
        for (i, (&g, &x)) in got.iter().zip(&v).enumerate() {
            let want = half::f16::from_f32(x).to_f32();
            assert_eq!(
                g.to_bits(),
                want.to_bits(),
                "element {i}: {x} -> {g}, want {want}"
            );
        }
    }
}

/// bf16 casts on the device (f32 -> bf16 -> f32, f16 <-> bf16 through f32) and the host's
/// upload agree bit for bit with the half crate (round to nearest even): ties both ways,
/// the largest finite bf16 and overflow to infinity, f32 subnormals, zeros of both signs.
#[test]
fn bf16_rounding_matches_the_half_crate_on_edge_values() {
    let v: Vec<f32> = vec![
        0.0,
        -0.0,
        1.0,
        1.0 + 1.0 / 256.0,        // a tie: to even (1.0)
        1.0 + 3.0 / 256.0,        // a tie: to even (1 + 4/256)
        1.0 + 1.0 / 256.0 + 1e-7, // just above a tie: up
        -(1.0 + 1.0 / 128.0),
        3.389_531_4e38, // the largest finite bf16
        3.4e38,         // rounds past it: infinity
        f32::MAX,
        1e-40, // f32 subnormal
        -1.5e-39,
        0.1,
        65504.0,
        1e6,
        f32::NEG_INFINITY,
    ];
    for e in engines(DType::F32) {
        let d = e.be.tensor_from_f32(&[v.len()], &v, DType::F32).unwrap();
        let b = e.be.cast(&d, DType::BF16).unwrap();
        assert_eq!(b.dtype(), DType::BF16);
        let up = e.be.tensor_from_f32(&[v.len()], &v, DType::BF16).unwrap();
        let h =
            e.be.cast(&e.be.cast(&b, DType::F16).unwrap(), DType::BF16)
                .unwrap();
        let want: Vec<f32> = round_bf16(&v);
        for (what, t, want) in [
            ("cast", &b, want.clone()),
            ("upload", &up, want.clone()),
            ("through f16", &h, round_bf16(&round_f16(&want))),
        ] {
            let got = e.be.to_f32_vec(t).unwrap();
            for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(
                    g.to_bits(),
                    w.to_bits(),
                    "{what}: element {i}: {} -> {g}, want {w}",
                    v[i]
                );
            }
        }
        let back = e.be.cast(&b, DType::F32).unwrap();
        assert_eq!(e.be.to_f32_vec(&back).unwrap(), want);
        let z = e.be.zeros(&[5], DType::BF16).unwrap();
        assert!(e
            .be
            .to_f32_vec(&z)
            .unwrap()
            .iter()
            .all(|&x| x.to_bits() == 0));
    }
}

#[test]
fn elementwise_ops_match_the_cpu() {
    elementwise_ops_match_the_cpu_in(&[DType::F32, DType::F16]);
}

/// The same in bf16 (compute capability 8.0 and later; the simple kernels), against the CPU
/// in f32 on the same bf16-rounded inputs with `tol(DType::BF16)`.
#[test]
fn elementwise_ops_match_the_cpu_bf16() {
    elementwise_ops_match_the_cpu_in(&[DType::BF16]);
}

fn elementwise_ops_match_the_cpu_in(dtypes: &[DType]) {
    let mut rng = Rng::new(11);
    let cpu = cpu();
    for &dtype in dtypes {
        for e in engines(dtype) {
            for shape in SHAPES {
                let (ca, da) = random_pair(&e.be, &mut rng, shape, dtype);
                let (cb, db) = random_pair(&e.be, &mut rng, shape, dtype);
                let t = tol(dtype);
                assert_matches(
                    "add",
                    &e.be.add(&da, &db).unwrap(),
                    &cpu.add(&ca, &cb).unwrap(),
                    t,
                );
                assert_matches(
                    "mul",
                    &e.be.mul(&da, &db).unwrap(),
                    &cpu.mul(&ca, &cb).unwrap(),
                    t,
                );
                assert_matches(
                    "scale",
                    &e.be.scale(&da, -0.37).unwrap(),
                    &cpu.scale(&ca, -0.37).unwrap(),
                    t,
                );
                let (mut ma, mut mc) = (da.clone(), ca.clone());
                e.be.add_assign(&mut ma, &db).unwrap();
                cpu.add_assign(&mut mc, &cb).unwrap();
                assert_matches("add_assign", &ma, &mc, t);
                if shape.len() >= 2 {
                    let (cbias, dbias) = random_pair(&e.be, &mut rng, &shape[..2], dtype);
                    assert_matches(
                        "add_channel_bias",
                        &e.be.add_channel_bias(&da, &dbias).unwrap(),
                        &cpu.add_channel_bias(&ca, &cbias).unwrap(),
                        t,
                    );
                }
            }
        }
    }
}

#[test]
fn bad_inputs_give_the_cpu_backends_errors() {
    for e in engines(DType::F32) {
        let a = e.be.zeros(&[2, 3], DType::F32).unwrap();
        let b = e.be.zeros(&[3, 2], DType::F32).unwrap();
        assert!(matches!(e.be.add(&a, &b), Err(Error::ShapeMismatch { .. })));
        assert!(matches!(
            cpu().add(
                &Tensor::zeros([2, 3], DType::F32),
                &Tensor::zeros([3, 2], DType::F32)
            ),
            Err(Error::ShapeMismatch { .. })
        ));
        let host = Tensor::zeros([2, 3], DType::F32);
        let err = e.be.add(&a, &host).unwrap_err();
        assert!(matches!(err, Error::Device { .. }), "{err}");
        assert!(err.to_string().contains("cpu"), "{err}");
        let h = e.be.zeros(&[2, 3], DType::F16).unwrap();
        assert!(matches!(e.be.add(&a, &h), Err(Error::DType { .. })));
        assert!(matches!(
            e.be.zeros(&[2], DType::F64),
            Err(Error::DType { .. })
        ));
    }
}

#[test]
fn the_pool_reuses_buffers_and_reports_its_peak() {
    for e in engines(DType::F32) {
        let dev = e.be.device().clone();
        let run = || {
            let a = e.be.zeros(&[1000], DType::F32).unwrap();
            let b = e.be.scale(&a, 2.0).unwrap();
            e.be.add(&a, &b).unwrap()
        };
        drop(run());
        let before = dev.pool_stats();
        dev.reset_peak();
        drop(run());
        let after = dev.pool_stats();
        assert_eq!(
            after.driver_allocs, before.driver_allocs,
            "the second run is served from the cache"
        );
        assert_eq!(
            after.peak_in_use - after.in_use,
            3 * 4096,
            "three 4000-byte buffers (rounded to 512) live at the peak"
        );
        assert_eq!(after.in_use, before.in_use);
    }
}

#[test]
fn running_out_of_memory_says_what_was_asked_and_what_to_lower() {
    for e in engines(DType::F32) {
        // 2^42 f32 elements: 16 TiB, more than any device or host has.
        let err = e.be.zeros(&[1 << 21, 1 << 21], DType::F32).unwrap_err();
        let m = err.to_string();
        assert!(matches!(err, Error::OutOfMemory(_)), "{m}");
        assert!(
            m.contains("16777216.0 MiB") && m.contains("batch_size") && m.contains("resolution"),
            "{m}"
        );
        // The device is still usable afterwards.
        assert_eq!(
            e.be.zeros(&[3], DType::F32).unwrap().to_f32_vec(),
            vec![0.0; 3]
        );
    }
}
