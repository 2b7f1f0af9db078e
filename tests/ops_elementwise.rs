//! Elementwise ops and casts: hand-computed values and errors.

use crate::common;

use common::*;
use half::f16;
use lorafuse::backend::prelude::*;
use lorafuse::{CpuBackend, DType, Error, Tensor};

fn t(shape: &[usize], v: &[f64]) -> Tensor {
    Tensor::from_f64(shape, v.to_vec()).unwrap()
}

#[test]
fn add_scale_and_accumulate() {
    let be = CpuBackend::new();
    let a = t(&[2, 2], &[1., 2., 3., 4.]);
    let b = t(&[2, 2], &[0.5, -2., 10., 0.]);
    assert_tensor(
        "a+b",
        &be.add(&a, &b).unwrap(),
        &[2, 2],
        &[1.5, 0., 13., 4.],
        0.0,
    );
    assert_tensor(
        "3a",
        &be.scale(&a, 3.0).unwrap(),
        &[2, 2],
        &[3., 6., 9., 12.],
        0.0,
    );
    assert_tensor(
        "a⊙b",
        &be.mul(&a, &b).unwrap(),
        &[2, 2],
        &[0.5, -4., 30., 0.],
        0.0,
    );
    assert!(matches!(
        be.mul(&a, &t(&[4], &[1., 2., 3., 4.])),
        Err(Error::ShapeMismatch { .. })
    ));
    let mut acc = a.clone();
    be.add_assign(&mut acc, &b).unwrap();
    be.add_assign(&mut acc, &b).unwrap();
    assert_tensor("a+2b", &acc, &[2, 2], &[2., -2., 23., 4.], 0.0);
    // Large enough to cross the parallel chunk size, in f32.
    let n = 40_000;
    let x = be.tensor_from_f32(&[n], &vec![1.5; n], DType::F32).unwrap();
    let y = be.add(&x, &be.scale(&x, -2.0).unwrap()).unwrap();
    assert!(y.to_f32_vec().iter().all(|&v| v == -1.5));
}

#[test]
fn channel_bias_broadcasts_over_space() {
    let be = CpuBackend::new();
    // x [2, 2, 1, 2], bias [2, 2]: bias[n, c] is added to both pixels of plane (n, c).
    let x = t(&[2, 2, 1, 2], &[0., 1., 2., 3., 4., 5., 6., 7.]);
    let bias = t(&[2, 2], &[10., 20., 30., 40.]);
    let y = be.add_channel_bias(&x, &bias).unwrap();
    assert_tensor(
        "y",
        &y,
        &[2, 2, 1, 2],
        &[10., 11., 22., 23., 34., 35., 46., 47.],
        0.0,
    );
    let wrong = t(&[2, 3], &[0.; 6]);
    let msg = be.add_channel_bias(&x, &wrong).err().unwrap().to_string();
    assert!(
        msg.contains("[2, 2, 1, 2]") && msg.contains("[2, 3]"),
        "{msg}"
    );
}

#[test]
fn casts_round_and_widen() {
    let be = CpuBackend::new();
    let x = be
        .tensor_from_f32(&[4], &[0.1, 1.0 + 1.0 / 1024.0, 65504.0, -2.5], DType::F16)
        .unwrap();
    assert_eq!(x.dtype(), DType::F16);
    // 0.1 is not representable: the nearest f16 is 0.0999755859375 (1638/16384).
    assert_eq!(
        x.to_f32_vec(),
        vec![0.099_975_586, 1.000_976_6, 65504.0, -2.5]
    );
    let back = be.cast(&x, DType::F32).unwrap();
    assert_eq!(back.dtype(), DType::F32);
    assert_eq!(back.to_f32_vec()[0], f16::from_f32(0.1).to_f32());
    let wide = be.cast(&back, DType::F64).unwrap();
    assert_eq!(wide.to_f64_vec()[3], -2.5);
    // f16 is storage only on the CPU: compute ops refuse it and say what to do.
    let e = be.add(&x, &x).err().unwrap();
    assert!(
        matches!(e, Error::DType { .. }) && e.to_string().contains("cast"),
        "{e}"
    );
}

#[test]
fn shape_and_dtype_errors_name_both() {
    let be = CpuBackend::new();
    let a = Tensor::zeros([3, 4], DType::F32);
    let b = Tensor::zeros([4, 3], DType::F32);
    let msg = be.add(&a, &b).err().unwrap().to_string();
    assert!(msg.contains("[3, 4]") && msg.contains("[4, 3]"), "{msg}");
    let mut m = a.clone();
    let msg = be.add_assign(&mut m, &b).err().unwrap().to_string();
    assert!(msg.contains("[3, 4]") && msg.contains("[4, 3]"), "{msg}");
    let c = Tensor::zeros([3, 4], DType::F64);
    let msg = be.add(&a, &c).err().unwrap().to_string();
    assert!(msg.contains("f64") && msg.contains("f32"), "{msg}");
    let e = Tensor::from_f32([2, 3], vec![0.0; 5]).err().unwrap();
    assert!(
        e.to_string().contains("[2, 3]") && e.to_string().contains('5'),
        "{e}"
    );
    let msg = Tensor::zeros([6], DType::F32)
        .reshape([4, 2])
        .err()
        .unwrap()
        .to_string();
    assert!(msg.contains("[6]") && msg.contains("[4, 2]"), "{msg}");
}

#[test]
fn embedding_picks_rows() {
    let be = CpuBackend::new();
    let table = t(&[3, 2], &[0., 1., 10., 11., 20., 21.]);
    let e = be.embedding(&table, &[2, 0, 2]).unwrap();
    assert_tensor("rows", &e, &[3, 2], &[20., 21., 0., 1., 20., 21.], 0.0);
    let msg = be.embedding(&table, &[1, 3]).err().unwrap().to_string();
    assert!(msg.contains("id = 3") && msg.contains("[3, 2]"), "{msg}");
}
