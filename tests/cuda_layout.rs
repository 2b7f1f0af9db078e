//! The CUDA layout kernels against the CPU backend: nearest 2x upsampling and its gradient,
//! channel concat and split, zero padding, NCHW <-> NLC, and the embedding lookup, f32 and
//! f16, on odd sizes (tails in every launch dimension, batch > 1), SD1.5-like shapes (full
//! size on a GPU), empty sizes, and the errors.
#![cfg(any(feature = "cuda", feature = "cuda-emu"))]

use crate::common;

use common::cuda::*;
use lorafuse::backend::prelude::*;
use lorafuse::backend::Pad2d;
use lorafuse::rng::Rng;
use lorafuse::{DType, Error};

const DTYPES: [DType; 2] = [DType::F32, DType::F16];

/// Feature maps [N, C, H, W]: odd sizes, batch 2, and one SD1.5-like shape per engine.
fn maps(gpu: bool) -> Vec<[usize; 4]> {
    let mut v = vec![
        [2, 3, 7, 9],
        [2, 5, 13, 11],
        [1, 37, 3, 5],
        [3, 1, 1, 1],
        [1, 2, 33, 40], // transpose: several 32-tiles with tails
    ];
    v.push(if gpu {
        [2, 320, 64, 64] // SD1.5 down block 0 at 512x512
    } else {
        [2, 320, 6, 5]
    });
    if gpu {
        v.push([2, 1280, 8, 8]);
    }
    v
}

#[test]
fn upsample_and_backward_match_cpu() {
    upsample_and_backward_match_cpu_in(&DTYPES);
}

/// The same in bf16 (compute capability 8.0 and later; the simple kernels), against the CPU
/// in f32 on the same bf16-rounded inputs with `tol(DType::BF16)`.
#[test]
fn upsample_and_backward_match_cpu_bf16() {
    upsample_and_backward_match_cpu_in(&[DType::BF16]);
}

fn upsample_and_backward_match_cpu_in(dtypes: &[DType]) {
    let mut rng = Rng::new(31);
    for &dtype in dtypes {
        for e in engines(dtype) {
            let mut shapes = maps(e.gpu);
            shapes.push(if e.gpu {
                [2, 1280, 16, 16]
            } else {
                [1, 1280, 2, 3]
            });
            for s in shapes {
                let (xc, xd) = random_pair(&e.be, &mut rng, &s, dtype);
                let want = cpu().upsample_nearest2x(&xc).unwrap();
                let got = e.be.upsample_nearest2x(&xd).unwrap();
                assert_matches(
                    &format!("upsample {s:?} {dtype:?}"),
                    &got,
                    &want,
                    tol(dtype),
                );

                let big = [s[0], s[1], 2 * s[2], 2 * s[3]];
                let (dyc, dyd) = random_pair(&e.be, &mut rng, &big, dtype);
                let want = cpu().upsample_nearest2x_backward(&dyc).unwrap();
                let got = e.be.upsample_nearest2x_backward(&dyd).unwrap();
                assert_eq!(got.dtype(), dtype);
                let what = format!("upsample backward {big:?} {dtype:?}");
                assert_matches(&what, &got, &want, tol(dtype));
            }
        }
    }
}

#[test]
fn concat_and_split_match_cpu() {
    concat_and_split_match_cpu_in(&DTYPES);
}

/// The same in bf16 (compute capability 8.0 and later; the simple kernels), against the CPU
/// in f32 on the same bf16-rounded inputs with `tol(DType::BF16)`.
#[test]
fn concat_and_split_match_cpu_bf16() {
    concat_and_split_match_cpu_in(&[DType::BF16]);
}

fn concat_and_split_match_cpu_in(dtypes: &[DType]) {
    let mut rng = Rng::new(32);
    for &dtype in dtypes {
        for e in engines(dtype) {
            // (a's shape, b's channels): rank 4, 3 and 2, empty sides, the SD1.5 skip
            // concat (1280 ++ 1280 at 16x16 on a GPU).
            let mut cases: Vec<(Vec<usize>, usize)> = vec![
                (vec![2, 3, 7, 9], 5),
                (vec![2, 37, 13, 11], 3),
                (vec![3, 5, 77], 2),
                (vec![2, 7], 4),
                (vec![2, 0, 3, 5], 3),
                (vec![2, 3, 3, 5], 0),
            ];
            cases.push(if e.gpu {
                (vec![2, 1280, 16, 16], 1280)
            } else {
                (vec![2, 640, 3, 3], 320)
            });
            for (sa, cb) in cases {
                let mut sb = sa.clone();
                sb[1] = cb;
                let (ac, ad) = random_pair(&e.be, &mut rng, &sa, dtype);
                let (bc, bd) = random_pair(&e.be, &mut rng, &sb, dtype);
                let want = cpu().concat_channels(&ac, &bc).unwrap();
                let got = e.be.concat_channels(&ad, &bd).unwrap();
                assert_matches(
                    &format!("concat {sa:?} ++ {cb} {dtype:?}"),
                    &got,
                    &want,
                    tol(dtype),
                );

                let (dyc, dyd) = random_pair(&e.be, &mut rng, want.dims(), dtype);
                let (wa, wb) = cpu().split_channels(&dyc, sa[1]).unwrap();
                let (ga, gb) = e.be.split_channels(&dyd, sa[1]).unwrap();
                let what = format!("split {:?} at {} {dtype:?}", want.dims(), sa[1]);
                assert_matches(&format!("{what}: a"), &ga, &wa, tol(dtype));
                assert_matches(&format!("{what}: b"), &gb, &wb, tol(dtype));
            }
        }
    }
}

#[test]
fn pad2d_matches_cpu() {
    pad2d_matches_cpu_in(&DTYPES);
}

/// The same in bf16 (compute capability 8.0 and later; the simple kernels), against the CPU
/// in f32 on the same bf16-rounded inputs with `tol(DType::BF16)`.
#[test]
fn pad2d_matches_cpu_bf16() {
    pad2d_matches_cpu_in(&[DType::BF16]);
}

fn pad2d_matches_cpu_in(dtypes: &[DType]) {
    let mut rng = Rng::new(33);
    let pads = [
        Pad2d {
            top: 0,
            bottom: 1,
            left: 0,
            right: 1,
        }, // the VAE encoder's
        Pad2d {
            top: 2,
            bottom: 0,
            left: 3,
            right: 1,
        },
        Pad2d::default(),
    ];
    for &dtype in dtypes {
        for e in engines(dtype) {
            let mut shapes = maps(e.gpu);
            // The VAE's first downsampler input: 128 channels at 512x512 (GPU).
            shapes.push(if e.gpu {
                [1, 128, 512, 512]
            } else {
                [1, 128, 5, 4]
            });
            for s in shapes {
                for p in pads {
                    let (xc, xd) = random_pair(&e.be, &mut rng, &s, dtype);
                    let want = cpu().pad2d(&xc, p).unwrap();
                    let got = e.be.pad2d(&xd, p).unwrap();
                    assert_matches(
                        &format!("pad2d {s:?} {p:?} {dtype:?}"),
                        &got,
                        &want,
                        tol(dtype),
                    );
                }
            }
        }
    }
}

#[test]
fn nchw_nlc_match_cpu() {
    nchw_nlc_match_cpu_in(&DTYPES);
}

/// The same in bf16 (compute capability 8.0 and later; the simple kernels), against the CPU
/// in f32 on the same bf16-rounded inputs with `tol(DType::BF16)`.
#[test]
fn nchw_nlc_match_cpu_bf16() {
    nchw_nlc_match_cpu_in(&[DType::BF16]);
}

fn nchw_nlc_match_cpu_in(dtypes: &[DType]) {
    let mut rng = Rng::new(34);
    for &dtype in dtypes {
        for e in engines(dtype) {
            for s in maps(e.gpu) {
                let [n, c, h, w] = s;
                let (xc, xd) = random_pair(&e.be, &mut rng, &s, dtype);
                let want = cpu().nchw_to_nlc(&xc).unwrap();
                let got = e.be.nchw_to_nlc(&xd).unwrap();
                assert_matches(
                    &format!("nchw_to_nlc {s:?} {dtype:?}"),
                    &got,
                    &want,
                    tol(dtype),
                );

                let (tc, td) = random_pair(&e.be, &mut rng, &[n, h * w, c], dtype);
                let want = cpu().nlc_to_nchw(&tc, h, w).unwrap();
                let got = e.be.nlc_to_nchw(&td, h, w).unwrap();
                assert_matches(
                    &format!("nlc_to_nchw {s:?} {dtype:?}"),
                    &got,
                    &want,
                    tol(dtype),
                );
            }
        }
    }
}

#[test]
fn embedding_matches_cpu() {
    embedding_matches_cpu_in(&DTYPES);
}

/// The same in bf16 (compute capability 8.0 and later; the simple kernels), against the CPU
/// in f32 on the same bf16-rounded inputs with `tol(DType::BF16)`.
#[test]
fn embedding_matches_cpu_bf16() {
    embedding_matches_cpu_in(&[DType::BF16]);
}

fn embedding_matches_cpu_in(dtypes: &[DType]) {
    let mut rng = Rng::new(35);
    for &dtype in dtypes {
        for e in engines(dtype) {
            // (vocab, channels, ids): odd sizes, repeated ids, the first and last rows, and
            // CLIP ViT-L's token table (49408 x 768) with 2 x 77 ids on a GPU.
            let (vocab, c) = if e.gpu { (49408, 768) } else { (1000, 77) };
            for (v, c, n) in [(5, 3, 7), (37, 13, 1), (vocab, c, 154)] {
                let ids: Vec<u32> = (0..n)
                    .map(|i| match i {
                        0 => 0,
                        1 => (v - 1) as u32,
                        _ => (rng.uniform_vec(1, 0.0, v as f64)[0] as usize).min(v - 1) as u32,
                    })
                    .collect();
                let (tc, td) = random_pair(&e.be, &mut rng, &[v, c], dtype);
                let want = cpu().embedding(&tc, &ids).unwrap();
                let got = e.be.embedding(&td, &ids).unwrap();
                assert_matches(
                    &format!("embedding {v}x{c} [{n}] {dtype:?}"),
                    &got,
                    &want,
                    tol(dtype),
                );
            }
        }
    }
}

#[test]
fn empty_sizes() {
    let mut rng = Rng::new(36);
    for e in engines(DType::F32) {
        for s in [[0, 3, 4, 5], [2, 0, 4, 5], [2, 3, 0, 5]] {
            let (xc, xd) = random_pair(&e.be, &mut rng, &s, DType::F32);
            let want = cpu().upsample_nearest2x(&xc).unwrap();
            assert_matches(
                "upsample empty",
                &e.be.upsample_nearest2x(&xd).unwrap(),
                &want,
                tol(DType::F32),
            );
            let want = cpu().nchw_to_nlc(&xc).unwrap();
            assert_matches(
                "nchw_to_nlc empty",
                &e.be.nchw_to_nlc(&xd).unwrap(),
                &want,
                tol(DType::F32),
            );
            // Padding an empty plane gives zeros (or nothing when N or C is 0).
            let p = Pad2d {
                top: 1,
                bottom: 0,
                left: 2,
                right: 1,
            };
            let want = cpu().pad2d(&xc, p).unwrap();
            assert_matches(
                "pad2d empty",
                &e.be.pad2d(&xd, p).unwrap(),
                &want,
                tol(DType::F32),
            );
        }
        let (tc, td) = random_pair(&e.be, &mut rng, &[4, 3], DType::F32);
        let want = cpu().embedding(&tc, &[]).unwrap();
        assert_matches(
            "embedding no ids",
            &e.be.embedding(&td, &[]).unwrap(),
            &want,
            tol(DType::F32),
        );
    }
}

fn same_error<T: std::fmt::Debug, U: std::fmt::Debug>(
    what: &str,
    cpu: lorafuse::Result<T>,
    dev: lorafuse::Result<U>,
) -> Error {
    let (c, d) = (cpu.unwrap_err(), dev.unwrap_err());
    assert_eq!(
        std::mem::discriminant(&c),
        std::mem::discriminant(&d),
        "{what}: CPU {c} vs CUDA {d}"
    );
    d
}

#[test]
fn errors() {
    let mut rng = Rng::new(37);
    let cpu = cpu();
    for e in engines(DType::F32) {
        let be = &e.be;
        let f = DType::F32;
        let (oddc, oddd) = random_pair(be, &mut rng, &[1, 2, 3, 4], f);
        let err = same_error(
            "upsample backward odd",
            cpu.upsample_nearest2x_backward(&oddc),
            be.upsample_nearest2x_backward(&oddd),
        );
        assert!(matches!(err, Error::BadShape { .. }), "{err}");
        let (r3c, r3d) = random_pair(be, &mut rng, &[2, 3, 4], f);
        let err = same_error(
            "upsample rank 3",
            cpu.upsample_nearest2x(&r3c),
            be.upsample_nearest2x(&r3d),
        );
        assert!(matches!(err, Error::BadShape { .. }), "{err}");
        let err = same_error(
            "pad2d rank 3",
            cpu.pad2d(&r3c, Pad2d::default()),
            be.pad2d(&r3d, Pad2d::default()),
        );
        assert!(matches!(err, Error::BadShape { .. }), "{err}");
        let err = same_error(
            "nchw_to_nlc rank 3",
            cpu.nchw_to_nlc(&r3c),
            be.nchw_to_nlc(&r3d),
        );
        assert!(matches!(err, Error::BadShape { .. }), "{err}");
        let err = same_error(
            "nlc_to_nchw h·w",
            cpu.nlc_to_nchw(&r3c, 2, 3),
            be.nlc_to_nchw(&r3d, 2, 3),
        );
        assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
        let (bc, bd) = random_pair(be, &mut rng, &[1, 2, 3, 5], f);
        let err = same_error(
            "concat spatial",
            cpu.concat_channels(&oddc, &bc),
            be.concat_channels(&oddd, &bd),
        );
        assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
        let err = same_error(
            "split ca > C",
            cpu.split_channels(&oddc, 3),
            be.split_channels(&oddd, 3),
        );
        assert!(matches!(err, Error::BadValue { .. }), "{err}");
        let (tc, td) = random_pair(be, &mut rng, &[4, 3], f);
        let err = same_error(
            "embedding id",
            cpu.embedding(&tc, &[1, 4]),
            be.embedding(&td, &[1, 4]),
        );
        assert!(matches!(err, Error::BadValue { .. }), "{err}");
        assert_eq!(
            cpu.embedding(&tc, &[1, 4]).unwrap_err().to_string(),
            be.embedding(&td, &[1, 4]).unwrap_err().to_string()
        );
        let err = same_error(
            "embedding rank",
            cpu.embedding(&r3c, &[0]),
            be.embedding(&r3d, &[0]),
        );
        assert!(matches!(err, Error::BadShape { .. }), "{err}");

        // CPU tensors given to the CUDA backend.
        let device = |what: &str, r: lorafuse::Result<lorafuse::Tensor>| {
            let err = r.unwrap_err();
            assert!(matches!(err, Error::Device { .. }), "{what}: {err}");
        };
        let (xc, xd) = random_pair(be, &mut rng, &[1, 2, 4, 4], f);
        device("upsample", be.upsample_nearest2x(&xc));
        device("upsample backward", be.upsample_nearest2x_backward(&xc));
        device("concat a", be.concat_channels(&xc, &xd));
        device("concat b", be.concat_channels(&xd, &xc));
        device("split", be.split_channels(&xc, 1).map(|(a, _)| a));
        device("pad2d", be.pad2d(&xc, Pad2d::default()));
        device("nchw_to_nlc", be.nchw_to_nlc(&xc));
        device("nlc_to_nchw", be.nlc_to_nchw(&r3c, 1, 3));
        device("embedding", be.embedding(&tc, &[0]));
    }
}
