//! Layout ops: hand-computed upsampling, concat/split and NCHW <-> NLC, their f64 gradient
//! checks (each backward is checked as the gradient of its forward), sizes beyond the
//! transpose tile, and errors for bad shapes.

use crate::common;

use common::*;
use lorafuse::backend::prelude::*;
use lorafuse::backend::Pad2d;
use lorafuse::rng::Rng;
use lorafuse::{CpuBackend, DType, Error, Tensor};

fn t(shape: &[usize], v: &[f64]) -> Tensor {
    Tensor::from_f64(shape, v.to_vec()).unwrap()
}

fn iota(n: usize) -> Vec<f64> {
    (0..n).map(|i| i as f64).collect()
}

#[test]
fn upsample_by_hand() {
    let be = CpuBackend::new();
    // [[1, 2], [3, 4]] -> each value fills a 2x2 block.
    let x = t(&[1, 1, 2, 2], &[1., 2., 3., 4.]);
    #[rustfmt::skip]
    let want = [
        1., 1., 2., 2.,
        1., 1., 2., 2.,
        3., 3., 4., 4.,
        3., 3., 4., 4.,
    ];
    let y = be.upsample_nearest2x(&x).unwrap();
    assert_tensor("y", &y, &[1, 1, 4, 4], &want, 0.0);
    // Non-square planes, two images of two channels: plane q = [10q, 10q + 1, 10q + 2] (1x3)
    // becomes two identical rows [10q, 10q, 10q+1, 10q+1, 10q+2, 10q+2].
    let xv: Vec<f64> = (0..4)
        .flat_map(|q| (0..3).map(move |j| (10 * q + j) as f64))
        .collect();
    let x = t(&[2, 2, 1, 3], &xv);
    let want: Vec<f64> = (0..4)
        .flat_map(|q| {
            let row: Vec<f64> = (0..6).map(|j| (10 * q + j / 2) as f64).collect();
            [row.clone(), row].concat()
        })
        .collect();
    let y = be.upsample_nearest2x(&to_f32(&x)).unwrap();
    assert_eq!(y.dtype(), DType::F32);
    assert_tensor("y 1x3", &y, &[2, 2, 2, 6], &want, 0.0);
}

#[test]
fn upsample_backward_by_hand() {
    let be = CpuBackend::new();
    // dy[i, j] = 4i + j on 4x4; each dx is the sum of its 2x2 block:
    //   0+1+4+5 = 10   2+3+6+7 = 18   8+9+12+13 = 42   10+11+14+15 = 50
    let dy = t(&[1, 1, 4, 4], &iota(16));
    let dx = be.upsample_nearest2x_backward(&dy).unwrap();
    assert_tensor("dx", &dx, &[1, 1, 2, 2], &[10., 18., 42., 50.], 0.0);
    // Two 2x4 planes give two 1x2 planes.
    let dy = t(&[1, 2, 2, 4], &iota(16));
    // plane 0 = [[0..4], [4..8]]: blocks 0+1+4+5 = 10, 2+3+6+7 = 18;
    // plane 1 = [[8..12], [12..16]]: 8+9+12+13 = 42, 10+11+14+15 = 50.
    let dx = be.upsample_nearest2x_backward(&dy).unwrap();
    assert_tensor("dx 2x4", &dx, &[1, 2, 1, 2], &[10., 18., 42., 50.], 0.0);
}

#[test]
fn concat_and_split_by_hand() {
    let be = CpuBackend::new();
    // a [2, 1, 2], b [2, 2, 2]: per image, a's channel then b's two.
    let a = t(&[2, 1, 2], &[1., 2., 3., 4.]);
    let b = t(&[2, 2, 2], &[5., 6., 7., 8., 9., 10., 11., 12.]);
    let y = be.concat_channels(&a, &b).unwrap();
    let want = [1., 2., 5., 6., 7., 8., 3., 4., 9., 10., 11., 12.];
    assert_tensor("y", &y, &[2, 3, 2], &want, 0.0);
    let (da, db) = be.split_channels(&y, 1).unwrap();
    assert_tensor("da", &da, &[2, 1, 2], &a.to_f64_vec(), 0.0);
    assert_tensor("db", &db, &[2, 2, 2], &b.to_f64_vec(), 0.0);
    // Rank 2 (a [N, C] time embedding) and rank 4 feature maps.
    let y = be
        .concat_channels(&t(&[2, 1], &[1., 2.]), &t(&[2, 2], &[3., 4., 5., 6.]))
        .unwrap();
    assert_tensor("rank 2", &y, &[2, 3], &[1., 3., 4., 2., 5., 6.], 0.0);
    let a = t(&[1, 2, 1, 2], &[1., 2., 3., 4.]);
    let b = t(&[1, 1, 1, 2], &[5., 6.]);
    let y = be.concat_channels(&to_f32(&a), &to_f32(&b)).unwrap();
    assert_eq!(y.dtype(), DType::F32);
    assert_tensor("rank 4", &y, &[1, 3, 1, 2], &[1., 2., 3., 4., 5., 6.], 0.0);
    // Splitting off no channels or all of them.
    let (da, db) = be.split_channels(&y, 0).unwrap();
    assert_eq!(
        (da.dims(), db.dims()),
        (&[1, 0, 1, 2][..], &[1, 3, 1, 2][..])
    );
    assert_eq!(db.to_f64_vec(), y.to_f64_vec());
    let (da, db) = be.split_channels(&y, 3).unwrap();
    assert_eq!(
        (da.dims(), db.dims()),
        (&[1, 3, 1, 2][..], &[1, 0, 1, 2][..])
    );
    assert_eq!(da.to_f64_vec(), y.to_f64_vec());
}

#[test]
fn nchw_nlc_by_hand() {
    let be = CpuBackend::new();
    // Channel 0 = [1, 2, 3, 4], channel 1 = [5, 6, 7, 8] on 2x2: token p holds (c0[p], c1[p]).
    let x = t(&[1, 2, 2, 2], &[1., 2., 3., 4., 5., 6., 7., 8.]);
    let y = be.nchw_to_nlc(&x).unwrap();
    assert_tensor(
        "nlc",
        &y,
        &[1, 4, 2],
        &[1., 5., 2., 6., 3., 7., 4., 8.],
        0.0,
    );
    let back = be.nlc_to_nchw(&y, 2, 2).unwrap();
    assert_tensor("nchw", &back, &[1, 2, 2, 2], &x.to_f64_vec(), 0.0);
    // Non-square: 1x4 and 4x1 are different maps from the same tokens.
    let m = be.nlc_to_nchw(&y, 1, 4).unwrap();
    assert_tensor("1x4", &m, &[1, 2, 1, 4], &x.to_f64_vec(), 0.0);
    let m = be.nlc_to_nchw(&y, 4, 1).unwrap();
    assert_eq!(m.dims(), [1, 2, 4, 1]);
}

/// Sizes larger than the transpose tile in both directions, against the index formula.
#[test]
fn nchw_nlc_large_against_formula() {
    let be = CpuBackend::new();
    let (n, c, h, w) = (2, 70, 5, 9);
    let x = t(&[n, c, h, w], &iota(n * c * h * w));
    let y = be.nchw_to_nlc(&to_f32(&x)).unwrap();
    let yv = y.to_f64_vec();
    for ni in 0..n {
        for ci in 0..c {
            for p in 0..h * w {
                let want = ((ni * c + ci) * h * w + p) as f64;
                assert_eq!(yv[(ni * h * w + p) * c + ci], want, "n{ni} c{ci} p{p}");
            }
        }
    }
    let back = be.nlc_to_nchw(&y, h, w).unwrap();
    assert_eq!(back.dtype(), DType::F32);
    assert_eq!(back.to_f64_vec(), x.to_f64_vec());
    // And the other way round from tokens with many positions, few channels.
    let tok = t(&[1, 100, 3], &iota(300));
    let m = be.nlc_to_nchw(&tok, 10, 10).unwrap().to_f64_vec();
    for ci in 0..3 {
        for p in 0..100 {
            assert_eq!(m[ci * 100 + p], (p * 3 + ci) as f64);
        }
    }
}

#[test]
fn gradcheck_upsample() {
    let be = CpuBackend::new();
    let mut rng = Rng::new(1);
    let x = randn(&mut rng, &[2, 3, 3, 5]);
    gradcheck(
        "upsample_nearest2x",
        &[x],
        &[0],
        200,
        |xs| be.upsample_nearest2x(&xs[0]).unwrap(),
        |_, dy| vec![be.upsample_nearest2x_backward(dy).unwrap()],
    );
}

#[test]
fn gradcheck_concat() {
    let be = CpuBackend::new();
    let mut rng = Rng::new(2);
    let a = randn(&mut rng, &[2, 3, 2, 3]);
    let b = randn(&mut rng, &[2, 5, 2, 3]);
    gradcheck(
        "concat_channels",
        &[a, b],
        &[0, 1],
        200,
        |xs| be.concat_channels(&xs[0], &xs[1]).unwrap(),
        |_, dy| {
            let (da, db) = be.split_channels(dy, 3).unwrap();
            vec![da, db]
        },
    );
}

#[test]
fn gradcheck_nchw_nlc() {
    let be = CpuBackend::new();
    let mut rng = Rng::new(3);
    let x = randn(&mut rng, &[2, 5, 3, 4]);
    gradcheck(
        "nchw_to_nlc",
        &[x],
        &[0],
        200,
        |xs| be.nchw_to_nlc(&xs[0]).unwrap(),
        |_, dy| vec![be.nlc_to_nchw(dy, 3, 4).unwrap()],
    );
    let tok = randn(&mut rng, &[2, 12, 5]);
    gradcheck(
        "nlc_to_nchw",
        &[tok],
        &[0],
        200,
        |xs| be.nlc_to_nchw(&xs[0], 4, 3).unwrap(),
        |_, dy| vec![be.nchw_to_nlc(dy).unwrap()],
    );
}

/// A shape error whose message names both shapes.
fn shape_error(e: Error, a: &str, b: &str) {
    let msg = e.to_string();
    assert!(matches!(e, Error::ShapeMismatch { .. }), "{msg}");
    assert!(msg.contains(a) && msg.contains(b), "{msg}");
}

#[test]
fn bad_shapes_are_errors() {
    let be = CpuBackend::new();
    let z = |s: &[usize]| Tensor::zeros(s, DType::F32);
    // nlc_to_nchw: L = 12 is not 3·5; the message names x and the requested map.
    let e = be.nlc_to_nchw(&z(&[2, 12, 8]), 3, 5).err().unwrap();
    shape_error(e, "[2, 12, 8]", "[2, 8, 3, 5]");
    // concat: different N, different H, different rank, rank 1.
    let e = be.concat_channels(&z(&[1, 3, 4, 4]), &z(&[2, 3, 4, 4]));
    shape_error(e.err().unwrap(), "[1, 3, 4, 4]", "[2, 3, 4, 4]");
    let e = be.concat_channels(&z(&[2, 3, 4, 4]), &z(&[2, 5, 8, 4]));
    shape_error(e.err().unwrap(), "[2, 3, 4, 4]", "[2, 5, 8, 4]");
    let e = be.concat_channels(&z(&[2, 3, 4, 4]), &z(&[2, 5, 16]));
    shape_error(e.err().unwrap(), "[2, 3, 4, 4]", "[2, 5, 16]");
    let e = be.concat_channels(&z(&[6]), &z(&[6]));
    shape_error(e.err().unwrap(), "[6]", "[6]");
    // Mixed dtypes.
    let msg = be
        .concat_channels(&z(&[1, 2, 3]), &Tensor::zeros([1, 2, 3], DType::F64))
        .err()
        .unwrap()
        .to_string();
    assert!(msg.contains("b") && msg.contains("f64"), "{msg}");
    // split: more channels than there are.
    let e = be.split_channels(&z(&[2, 3, 4]), 4).err().unwrap();
    let msg = e.to_string();
    assert!(matches!(e, Error::BadValue { .. }), "{msg}");
    assert!(msg.contains("[2, 3, 4]") && msg.contains("ca"), "{msg}");
    assert!(be.split_channels(&z(&[6]), 0).is_err());
    // Ranks: upsample and nchw_to_nlc need [N, C, H, W], nlc_to_nchw [N, L, C].
    for e in [
        be.upsample_nearest2x(&z(&[3, 4, 4])).err(),
        be.upsample_nearest2x_backward(&z(&[1, 3, 4, 4, 1])).err(),
        be.nchw_to_nlc(&z(&[3, 4, 4])).err(),
        be.nlc_to_nchw(&z(&[16, 8]), 4, 4).err(),
    ] {
        let msg = e.expect("wrong rank must fail").to_string();
        assert!(msg.contains("dimensions"), "{msg}");
    }
    // The upsampling gradient needs even sizes.
    let msg = be
        .upsample_nearest2x_backward(&z(&[1, 1, 4, 3]))
        .err()
        .unwrap()
        .to_string();
    assert!(
        msg.contains("[1, 1, 4, 3]") && msg.contains("even"),
        "{msg}"
    );
    // f16 is refused with a hint.
    let msg = be
        .nchw_to_nlc(&Tensor::zeros([1, 2, 2, 2], DType::F16))
        .err()
        .unwrap()
        .to_string();
    assert!(msg.contains("cast"), "{msg}");
}

/// Empty sizes give empty results, no panic.
#[test]
fn empty_sizes() {
    let be = CpuBackend::new();
    let z = |s: &[usize]| Tensor::zeros(s, DType::F64);
    assert_eq!(
        be.upsample_nearest2x(&z(&[1, 0, 3, 3])).unwrap().dims(),
        [1, 0, 6, 6]
    );
    assert_eq!(
        be.upsample_nearest2x_backward(&z(&[2, 3, 0, 4]))
            .unwrap()
            .dims(),
        [2, 3, 0, 2]
    );
    assert_eq!(be.nchw_to_nlc(&z(&[2, 0, 3, 3])).unwrap().dims(), [2, 9, 0]);
    assert_eq!(
        be.nlc_to_nchw(&z(&[2, 0, 4]), 0, 7).unwrap().dims(),
        [2, 4, 0, 7]
    );
    let y = be
        .concat_channels(&z(&[2, 0, 3]), &t(&[2, 1, 3], &iota(6)))
        .unwrap();
    assert_tensor("concat empty a", &y, &[2, 1, 3], &iota(6), 0.0);
}

#[test]
fn pad2d_by_hand() {
    let be = CpuBackend::new();
    // The VAE encoder's (left 0, right 1, top 0, bottom 1) pad of a 2x2 plane, two channels.
    let x = Tensor::from_f64([1, 2, 2, 2], vec![1., 2., 3., 4., 5., 6., 7., 8.]).unwrap();
    let p = Pad2d {
        top: 0,
        bottom: 1,
        left: 0,
        right: 1,
    };
    let y = be.pad2d(&x, p).unwrap();
    #[rustfmt::skip]
    let want = [
        1., 2., 0., 3., 4., 0., 0., 0., 0.,
        5., 6., 0., 7., 8., 0., 0., 0., 0.,
    ];
    assert_tensor("pad (0,1,0,1)", &y, &[1, 2, 3, 3], &want, 0.0);
    // All four sides on a 1x2 plane.
    let x = Tensor::from_f32([1, 1, 1, 2], vec![1., 2.]).unwrap();
    let y = be
        .pad2d(
            &x,
            Pad2d {
                top: 1,
                bottom: 2,
                left: 2,
                right: 1,
            },
        )
        .unwrap();
    assert_eq!(y.dims(), &[1, 1, 4, 5]);
    let v = y.to_f32_vec();
    assert_eq!((v[7], v[8]), (1.0, 2.0));
    assert_eq!(v.iter().sum::<f32>(), 3.0);
    let msg = be
        .pad2d(&Tensor::zeros([2, 3], DType::F32), p)
        .err()
        .unwrap()
        .to_string();
    assert!(
        msg.contains("[2, 3]") && msg.contains("[N, C, H, W]"),
        "{msg}"
    );
}
