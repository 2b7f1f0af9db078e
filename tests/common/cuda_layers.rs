//! One adapter kind through the model's layers on the CUDA backend against the CPU: a linear
//! layer (3-D and 2-D input, the gradients accumulated over both) and a stride-2 3x3 conv with
//! odd sizes, each carrying the adapter. y, dX and every adapter gradient are compared, in f32
//! and with f16 frozen weights (tests/cuda_locon.rs's LoHa, tests/cuda_dora.rs's DoRA).

use lorafuse::backend::{Accum, Backend, Conv2d};
use lorafuse::lora::{Algo, LayerKind, LoraModule, LoraSet};
use lorafuse::model::layers::{Conv, Ctx, Linear};
use lorafuse::rng::Rng;
use lorafuse::{DType, Tensor};

use super::cuda::{cpu, engines, nonzero};

/// The layers' sizes: in and out features, the adapter's rank, the conv's input channels and
/// kernel.
pub const IN: usize = 37;
pub const OUT: usize = 21;
pub const RANK: usize = 3;
pub const CHANNELS: usize = 5;
pub const KERNEL: usize = 3;

/// A host tensor: shape and values.
pub type Host = (Vec<usize>, Vec<f32>);

/// Random host values of `shape`, never zero, times `scale`.
pub fn host(rng: &mut Rng, shape: &[usize], scale: f32) -> Host {
    let v = nonzero(rng, shape.iter().product());
    (shape.to_vec(), v.iter().map(|x| x * scale).collect())
}

/// An adapter kind under test: its factors on the linear layer and on the conv (down, up, then
/// the kind's own tensors), and how its [`Algo`] is made from the tensors after down and up.
pub struct AdapterCase {
    pub linear: Vec<Host>,
    pub conv: Vec<Host>,
    pub algo: fn(&mut dyn Iterator<Item = Tensor>) -> Algo,
}

fn rel(a: &[f32], b: &[f32]) -> f64 {
    let d: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let n: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (d / n.max(1e-30)).sqrt()
}

/// Runs `case` on the CPU and every engine and asserts the outputs agree (relative error 1e-5
/// in f32, 3e-3 with f16 weights). Returns how many outputs were compared.
pub fn adapter_layers_match_cpu(rng: &mut Rng, case: &AdapterCase) -> usize {
    let (i, o, c, k) = (IN, OUT, CHANNELS, KERNEL);
    let (lw, lb, cw, cb) = (
        host(rng, &[o, i], 0.2),
        host(rng, &[o], 1.0),
        host(rng, &[o, c, k, k], 0.2),
        host(rng, &[o], 1.0),
    );
    let (x3, x2, xc) = (
        host(rng, &[2, 9, i], 1.0),
        host(rng, &[3, i], 1.0),
        host(rng, &[2, c, 9, 7], 1.0),
    );
    let (dy3, dy2, dyc) = (
        host(rng, &[2, 9, o], 1.0),
        host(rng, &[3, o], 1.0),
        host(rng, &[2, o, 5, 4], 1.0),
    );

    let run = |be: &dyn Backend| -> Vec<Vec<f32>> {
        let dt = be.compute_dtype();
        let t = |(s, v): &Host, d: DType| be.tensor_from_f32(s, v, d).unwrap();
        let module = |name: &str, f: &[Host], kind| {
            let mut rest = f[2..].iter().map(|h| t(h, DType::F32));
            LoraModule {
                name: name.into(),
                down: t(&f[0], DType::F32),
                up: t(&f[1], DType::F32),
                alpha: 2.0,
                kind,
                algo: (case.algo)(&mut rest),
            }
        };
        let set = LoraSet::new(vec![
            module("lin", &case.linear, LayerKind::Linear),
            module("conv", &case.conv, LayerKind::Conv { kernel: k }),
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
    want.len()
}
