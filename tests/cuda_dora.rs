//! DoRA on the CUDA backend (in the emulator, and on a GPU when present) against the CPU:
//! the weight-decomposition kernels (kernels/decompose.cu) with rows longer and shorter than a
//! block and a zero row, and DoRA on a linear layer (3-D and 2-D input) and a stride-2 conv
//! through the model's layers: y, dX and the gradients of down, up and dora_scale, with f32
//! and f16 frozen weights.
#![cfg(any(feature = "cuda", feature = "cuda-emu"))]

use crate::common;

use common::cuda::*;
use common::cuda_layers::*;
use lorafuse::lora::dora::EPS;
use lorafuse::lora::Algo;
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
    let (i, o, r, c, k) = (IN, OUT, RANK, CHANNELS, KERNEL);
    let case = AdapterCase {
        linear: vec![
            host(&mut rng, &[r, i], 0.3),
            host(&mut rng, &[o, r], 0.3),
            host(&mut rng, &[o, 1], 1.0),
        ],
        conv: vec![
            host(&mut rng, &[r, c, k, k], 0.3),
            host(&mut rng, &[o, r, 1, 1], 0.3),
            host(&mut rng, &[o, 1, 1, 1], 1.0),
        ],
        algo: |rest| Algo::Dora {
            magnitude: rest.next().unwrap(),
        },
    };
    let outputs = adapter_layers_match_cpu(&mut rng, &case);
    assert_eq!(outputs, 6 + 6, "y, dX x3 and 3 gradients per module");
}
