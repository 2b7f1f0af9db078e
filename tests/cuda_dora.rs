//! DoRA on the CUDA backend (in the emulator, and on a GPU when present) against the CPU:
//! the weight-decomposition kernels (kernels/decompose.cu) with rows longer and shorter than a
//! block and a zero row, and DoRA on a linear layer (3-D and 2-D input) and a stride-2 conv
//! through the model's layers: y, dX and the gradients of down, up and dora_scale, with f32
//! and f16 frozen weights.
#![cfg(any(feature = "cuda", feature = "cuda-emu"))]

mod common;

use common::cuda::*;
use lorafuse::backend::{Accum, Conv2d};
use lorafuse::lora::dora::EPS;
use lorafuse::lora::{Algo, LayerKind, LoraModule, LoraSet};
use lorafuse::model::layers::{Conv, Ctx, Linear};
use lorafuse::rng::Rng;
use lorafuse::DType;

fn rel(a: &[f32], b: &[f32]) -> f64 {
    let d: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let n: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (d / n.max(1e-30)).sqrt()
}

#[test]
fn weight_decompose_matches_cpu() {
    let mut rng = Rng::new(51);
    let cpu = cpu();
    for (rows, n) in [(7, 600), (3, 5), (1, 257), (4, 1)] {
        let mut w = nonzero(&mut rng, rows * n);
        // Row 0 all zero: its norm is 0, V = 0 and the gradient's norm term vanishes.
        w[..n].iter_mut().for_each(|v| *v = 0.0);
        let m: Vec<f32> = nonzero(&mut rng, rows)
            .iter()
            .map(|v| v.abs() + 0.5)
            .collect();
        let g = nonzero(&mut rng, rows * n);
        let run = |be: &dyn lorafuse::backend::Backend| -> Vec<Vec<f32>> {
            let t = |s: &[usize], v: &[f32]| be.tensor_from_f32(s, v, DType::F32).unwrap();
            let (wt, mt, gt) = (t(&[rows, n], &w), t(&[rows, 1], &m), t(&[rows, n], &g));
            let (v, norm) = be.weight_decompose(&wt, &mt, EPS).unwrap();
            let (dw, dm) = be
                .weight_decompose_backward(&gt, &wt, &mt, &norm, EPS)
                .unwrap();
            assert_eq!(dm.dims(), &[rows, 1]);
            [v, norm, dw, dm]
                .iter()
                .map(|t| be.to_f32_vec(t).unwrap())
                .collect()
        };
        let want = run(&cpu);
        for e in engines(DType::F32) {
            for (k, (got, want)) in run(&e.be).iter().zip(&want).enumerate() {
                let err = rel(got, want);
                assert!(err < 1e-6, "{rows}x{n} output {k}: relative error {err:e}");
                assert!(got.iter().all(|v| v.is_finite()), "{rows}x{n} output {k}");
            }
        }
    }
}

#[test]
fn dora_layers_match_cpu() {
    let mut rng = Rng::new(52);
    let mut host = |shape: &[usize], s: f32| -> (Vec<usize>, Vec<f32>) {
        let v = nonzero(&mut rng, shape.iter().product());
        (shape.to_vec(), v.iter().map(|x| x * s).collect())
    };
    let (i, o, r) = (37, 21, 3);
    let (c, k) = (5, 3);
    let lin = [host(&[r, i], 0.3), host(&[o, r], 0.3), host(&[o, 1], 1.0)];
    let cnv = [
        host(&[r, c, k, k], 0.3),
        host(&[o, r, 1, 1], 0.3),
        host(&[o, 1, 1, 1], 1.0),
    ];
    let (lw, lb, cw, cb) = (
        host(&[o, i], 0.2),
        host(&[o], 1.0),
        host(&[o, c, k, k], 0.2),
        host(&[o], 1.0),
    );
    let (x3, x2, xc) = (
        host(&[2, 9, i], 1.0),
        host(&[3, i], 1.0),
        host(&[2, c, 9, 7], 1.0),
    );
    let (dy3, dy2, dyc) = (
        host(&[2, 9, o], 1.0),
        host(&[3, o], 1.0),
        host(&[2, o, 5, 4], 1.0),
    );

    let run = |be: &dyn lorafuse::backend::Backend| -> Vec<Vec<f32>> {
        let dt = be.compute_dtype();
        let t = |(s, v): &(Vec<usize>, Vec<f32>), d: DType| be.tensor_from_f32(s, v, d).unwrap();
        let module = |name: &str, f: &[(Vec<usize>, Vec<f32>)], kind| LoraModule {
            name: name.into(),
            down: t(&f[0], DType::F32),
            up: t(&f[1], DType::F32),
            alpha: 2.0,
            kind,
            algo: Algo::Dora {
                magnitude: t(&f[2], DType::F32),
            },
        };
        let set = LoraSet::new(vec![
            module("lin", &lin, LayerKind::Linear),
            module("conv", &cnv, LayerKind::Conv { kernel: k }),
        ]);
        let cx = Ctx::new(be, Some(&set));
        let linear = Linear {
            name: "lin".into(),
            weight: t(&lw, dt),
            bias: Some(t(&lb, dt)),
        };
        let conv = Conv {
            name: "conv".into(),
            weight: t(&cw, dt),
            bias: Some(t(&cb, dt)),
            params: Conv2d {
                stride: 2,
                padding: 1,
            },
        };
        let mut grads = set.zero_grads(be).unwrap();
        let mut out = vec![];
        for (x, dy) in [(&x3, &dy3), (&x2, &dy2)] {
            let x = t(x, dt);
            out.push(be.to_f32_vec(&linear.forward(&cx, &x).unwrap().y).unwrap());
            let dx = linear
                .backward_dx(&cx, &t(dy, dt), &x, None, &mut grads)
                .unwrap();
            out.push(be.to_f32_vec(&dx).unwrap());
            grads.accum = Accum::Add;
        }
        grads.accum = Accum::Assign;
        let (y, saved) = conv.forward_saving(&cx, t(&xc, dt), true).unwrap();
        out.push(be.to_f32_vec(&y).unwrap());
        let dx = conv
            .backward_saved(&cx, &t(&dyc, dt), (9, 7), saved, &mut grads)
            .unwrap();
        out.push(be.to_f32_vec(&dx).unwrap());
        out.extend(grads.all().map(|g| be.to_f32_vec(g).unwrap()));
        out
    };
    let want = run(&cpu());
    assert_eq!(want.len(), 6 + 6, "y, dX x3 and 3 gradients per module");
    for dtype in [DType::F32, DType::F16] {
        let bound = if dtype == DType::F32 { 1e-5 } else { 3e-3 };
        for e in engines(dtype) {
            let got = run(&e.be);
            assert_eq!(got.len(), want.len());
            for (n, (g, w)) in got.iter().zip(&want).enumerate() {
                let err = rel(g, w);
                assert!(err < bound, "{dtype:?} output {n}: relative error {err:e}");
            }
        }
    }
}
