//! DoRA (lora/dora.rs) on the CPU, through the model's Linear and Conv layers: the forward
//! against the decomposed weight computed by hand, f64 gradient checks of dX, d(down), d(up)
//! and d(dora_scale) (the norm's gradient included) on a linear layer (2-D and 3-D input) and
//! a stride-2 3x3 conv, accumulation, the initial magnitude (the frozen weight's row norms, so
//! a fresh adapter is the base layer), the decomposition ops' errors, and LyCORIS
//! 3.2.0.post2's own DoRA modules (tests/fixtures/make_lycoris_fixture.py) giving the same
//! layer outputs for the same weights.

use crate::common;

use common::*;
use lorafuse::backend::prelude::*;
use lorafuse::backend::{Accum, Conv2d};
use lorafuse::lora::dora::{self, EPS};
use lorafuse::lora::{Algo, LayerKind, LoraModule, LoraSet};
use lorafuse::model::layers::{Conv, Ctx, Linear};
use lorafuse::rng::Rng;
use lorafuse::{CpuBackend, Error, Tensor};

/// A DoRA module on `name` from (down, up, dora_scale) as given.
fn dora_set(name: &str, t: &[Tensor], alpha: f64, kind: LayerKind) -> LoraSet {
    LoraSet::new(vec![LoraModule {
        name: name.into(),
        down: t[0].clone(),
        up: t[1].clone(),
        alpha,
        kind,
        algo: Algo::Dora {
            magnitude: t[2].clone(),
        },
    }])
}

/// V = (W + s·up·down) ⊙ m / (‖W + s·up·down‖ + eps) row by row, [out, n], by hand.
fn decomposed(w: &Tensor, t: &[Tensor], s: f64) -> Vec<f64> {
    let (wv, down, up, m) = (
        w.to_f64_vec(),
        t[0].to_f64_vec(),
        t[1].to_f64_vec(),
        t[2].to_f64_vec(),
    );
    let r = t[0].dims()[0];
    let (o, n) = (w.dims()[0], w.numel() / w.dims()[0]);
    let mut v = vec![0.0; o * n];
    for i in 0..o {
        let row: Vec<f64> = (0..n)
            .map(|j| {
                wv[i * n + j] + s * (0..r).map(|k| up[i * r + k] * down[k * n + j]).sum::<f64>()
            })
            .collect();
        let norm = row.iter().map(|x| x * x).sum::<f64>().sqrt();
        for j in 0..n {
            v[i * n + j] = row[j] * m[i] / (norm + EPS);
        }
    }
    v
}

/// x, down, up, and a magnitude near the frozen weight's row norms (perturbed, so that the
/// trained state differs from the initial one).
fn dora_inputs(
    rng: &mut Rng,
    x: &[usize],
    down: &[usize],
    up: &[usize],
    m: &[usize],
) -> Vec<Tensor> {
    let mv: Vec<f64> = (0..m.iter().product())
        .map(|_| 1.0 + 0.5 * rng.uniform_in(-1.0, 1.0))
        .collect();
    vec![
        randn(rng, x),
        randn(rng, down),
        randn(rng, up),
        Tensor::from_f64(m.to_vec(), mv).unwrap(),
    ]
}

#[test]
fn dora_linear_forward_and_gradcheck() {
    let be = CpuBackend::f64();
    let mut rng = Rng::new(31);
    let (i, o, r) = (5, 4, 2);
    for x_shape in [&[2, 3, 5][..], &[3, 5][..]] {
        let inputs = dora_inputs(&mut rng, x_shape, &[r, i], &[o, r], &[o, 1]);
        let layer = Linear {
            name: "lora_unet_x".into(),
            weight: randn(&mut rng, &[o, i]),
            bias: Some(randn(&mut rng, &[o])),
        };
        let alpha = 3.0;
        let fwd = |xs: &[Tensor]| {
            let set = dora_set(&layer.name, &xs[1..], alpha, LayerKind::Linear);
            layer.forward(&Ctx::new(&be, Some(&set)), &xs[0]).unwrap().y
        };
        let v = decomposed(&layer.weight, &inputs[1..], alpha / r as f64);
        let v = Tensor::from_f64([o, i], v).unwrap();
        let want = be
            .linear(&inputs[0], &v, layer.bias.as_ref(), None)
            .unwrap()
            .y;
        assert!(rel_err(&fwd(&inputs).to_f64_vec(), &want.to_f64_vec()) < 1e-13);
        gradcheck("dora linear", &inputs, &[0, 1, 2, 3], 300, fwd, |xs, dy| {
            let set = dora_set(&layer.name, &xs[1..], alpha, LayerKind::Linear);
            let cx = Ctx::new(&be, Some(&set));
            let mut grads = set.zero_grads(&be).unwrap();
            let dx = layer
                .backward_dx(&cx, dy, &xs[0], None, &mut grads)
                .unwrap();
            let mut out = vec![dx];
            out.extend(grads.of(0).into_iter().cloned());
            out
        });
    }
}

#[test]
fn dora_conv_forward_gradcheck_and_accumulation() {
    let be = CpuBackend::f64();
    let mut rng = Rng::new(32);
    let (c, o, r, k) = (3, 4, 2, 3);
    let p = Conv2d {
        stride: 2,
        padding: 1,
    };
    let inputs = dora_inputs(
        &mut rng,
        &[2, c, 5, 6],
        &[r, c, k, k],
        &[o, r, 1, 1],
        &[o, 1, 1, 1],
    );
    let layer = Conv {
        name: "lora_unet_c".into(),
        weight: randn(&mut rng, &[o, c, k, k]),
        bias: Some(randn(&mut rng, &[o])),
        params: p,
    };
    let alpha = 1.5;
    let kind = LayerKind::Conv { kernel: k };
    let fwd = |xs: &[Tensor]| {
        let set = dora_set(&layer.name, &xs[1..], alpha, kind);
        layer.forward(&Ctx::new(&be, Some(&set)), &xs[0]).unwrap()
    };
    let v = decomposed(&layer.weight, &inputs[1..], alpha / r as f64);
    let v = Tensor::from_f64([o, c, k, k], v).unwrap();
    let want = be
        .conv2d(&inputs[0], &v, layer.bias.as_ref(), p, None)
        .unwrap();
    assert!(rel_err(&fwd(&inputs).to_f64_vec(), &want.to_f64_vec()) < 1e-13);
    let backward =
        |xs: &[Tensor], dy: &Tensor, grads: &mut lorafuse::lora::LoraGrads, set: &LoraSet| {
            let cx = Ctx::new(&be, Some(set));
            let (_, saved) = layer.forward_saving(&cx, xs[0].clone(), true).unwrap();
            layer.backward_saved(&cx, dy, (5, 6), saved, grads).unwrap()
        };
    gradcheck("dora conv", &inputs, &[0, 1, 2, 3], 300, fwd, |xs, dy| {
        let set = dora_set(&layer.name, &xs[1..], alpha, kind);
        let mut grads = set.zero_grads(&be).unwrap();
        let mut out = vec![backward(xs, dy, &mut grads, &set)];
        out.extend(grads.of(0).into_iter().cloned());
        out
    });
    // A second backward with Accum::Add doubles the three gradients.
    let set = dora_set(&layer.name, &inputs[1..], alpha, kind);
    let dy = randn(&mut rng, &[2, o, 3, 3]);
    let mut grads = set.zero_grads(&be).unwrap();
    for accum in [Accum::Assign, Accum::Add] {
        grads.accum = accum;
        backward(&inputs, &dy, &mut grads, &set);
    }
    let mut once = set.zero_grads(&be).unwrap();
    backward(&inputs, &dy, &mut once, &set);
    assert_eq!(grads.of(0).len(), 3);
    for (twice, once) in grads.of(0).into_iter().zip(once.of(0)) {
        let double: Vec<f64> = once.to_f64_vec().iter().map(|v| 2.0 * v).collect();
        assert!(rel_err(&twice.to_f64_vec(), &double) < 1e-14);
    }
}

/// A fresh DoRA set: LoRA's init (up = 0) with m = ‖W‖ per output row in LyCORIS's shapes,
/// so the layer gives the base output (up to eps = 1.2e-7 relative).
#[test]
fn fresh_dora_starts_from_the_row_norms_and_the_base_model() {
    let be = CpuBackend::new();
    let mut rng = Rng::new(33);
    let lin = Linear {
        name: "lora_unet_l".into(),
        weight: to_f32(&randn(&mut rng, &[4, 6])),
        bias: None,
    };
    let cv = Conv {
        name: "lora_unet_c".into(),
        weight: to_f32(&randn(&mut rng, &[5, 3, 3, 3])),
        bias: None,
        params: Conv2d {
            stride: 1,
            padding: 1,
        },
    };
    let layers = [
        lorafuse::lora::TargetLayer {
            name: lin.name.clone(),
            in_features: 6,
            out_features: 4,
            kind: LayerKind::Linear,
            role: lorafuse::lora::LayerRole::Attention,
        },
        lorafuse::lora::TargetLayer {
            name: cv.name.clone(),
            in_features: 3,
            out_features: 5,
            kind: LayerKind::Conv { kernel: 3 },
            role: lorafuse::lora::LayerRole::ResnetConv,
        },
    ];
    let set = LoraSet::init(&be, &layers, 2, 1.0, &mut rng).unwrap();
    let weights = [
        (lin.name.as_str(), &lin.weight),
        (cv.name.as_str(), &cv.weight),
    ];
    let look = |n: &str| weights.iter().find(|(m, _)| *m == n).map(|(_, w)| *w);
    let set = set.with_dora(&be, look).unwrap();
    for (m, w) in set.modules().iter().zip([&lin.weight, &cv.weight]) {
        let d = m.dora().expect("a DoRA module");
        let o = w.dims()[0];
        assert_eq!(d.magnitude.dims(), &dora::magnitude_shape(m.kind, o)[..]);
        let n = w.numel() / o;
        let wv = w.to_f64_vec();
        let norms: Vec<f64> = (0..o)
            .map(|i| {
                wv[i * n..(i + 1) * n]
                    .iter()
                    .map(|x| x * x)
                    .sum::<f64>()
                    .sqrt()
            })
            .collect();
        assert!(rel_err(&d.magnitude.to_f64_vec(), &norms) < 1e-6);
        assert_eq!(m.tensors().len(), 3, "down, up, dora_scale are trained");
    }
    let x = to_f32(&randn(&mut rng, &[2, 6]));
    let cx = Ctx::new(&be, Some(&set));
    let base = lin
        .forward(&Ctx::new(&be, None), &x)
        .unwrap()
        .y
        .to_f64_vec();
    let got = lin.forward(&cx, &x).unwrap().y.to_f64_vec();
    assert!(rel_err(&got, &base) < 1e-6);
    let x = to_f32(&randn(&mut rng, &[1, 3, 4, 4]));
    let base = cv.forward(&Ctx::new(&be, None), &x).unwrap().to_f64_vec();
    assert!(rel_err(&cv.forward(&cx, &x).unwrap().to_f64_vec(), &base) < 1e-6);
    // A layer the model lacks is an error naming the module.
    let e = LoraSet::init(&be, &layers, 2, 1.0, &mut rng)
        .unwrap()
        .with_dora(&be, |_| None)
        .unwrap_err();
    assert!(e.to_string().contains("lora_unet_l"), "{e}");
}

#[test]
fn decomposition_ops_refuse_mismatched_shapes() {
    let be = CpuBackend::new();
    let w = Tensor::zeros([3, 4], lorafuse::DType::F32);
    let e = be
        .weight_decompose(&w, &Tensor::zeros([4, 1], lorafuse::DType::F32), EPS)
        .unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { .. }), "{e:?}");
    let m = Tensor::zeros([3, 1], lorafuse::DType::F32);
    let (_, norm) = be.weight_decompose(&w, &m, EPS).unwrap();
    let e = be
        .weight_decompose_backward(
            &Tensor::zeros([3, 5], lorafuse::DType::F32),
            &w,
            &m,
            &norm,
            EPS,
        )
        .unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { .. }), "{e:?}");
    // A zero row: V = 0, and finite gradients (the norm's term is 0 there).
    let g = Tensor::from_f32([3, 4], vec![1.0; 12]).unwrap();
    let (dw, dm) = be
        .weight_decompose_backward(&g, &w, &m, &norm, EPS)
        .unwrap();
    assert!(dw
        .to_f64_vec()
        .iter()
        .chain(&dm.to_f64_vec())
        .all(|v| v.is_finite()));
}

/// LyCORIS's own DoRA modules (tests/fixtures/make_lycoris_fixture.py, lycoris-lora
/// 3.2.0.post2, `LoConModule(weight_decompose=True)`) on a linear layer and a stride-2 3x3
/// conv: the file loads by LyCORIS's key names (`dora_scale` [out, 1] and [out, 1, 1, 1]),
/// lorafuse's layers give LyCORIS's outputs for the same weights and inputs, and its backward
/// gives the gradients torch's autograd gives through LyCORIS's forward (x, lora_down,
/// lora_up, dora_scale; the weight norm is not detached there).
#[test]
fn dora_matches_lycoris() {
    use lorafuse::lora::kohya;
    use lorafuse::model::checkpoint::Weights;
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/lycoris/dora.safetensors");
    let be = CpuBackend::new();
    let set = kohya::load(&path, &be, lorafuse::DType::F32).unwrap();
    assert_eq!(set.len(), 2);
    assert!(set.modules().iter().all(|m| m.algo.name() == "dora"));
    let w = Weights::open(&path).unwrap();
    let get = |k: &str, s: &[usize]| w.get(k, s.to_vec()).unwrap();
    let cx = Ctx::new(&be, Some(&set));
    let check = |what: &str, got: &Tensor, key: &str, s: &[usize]| {
        let want = get(key, s).to_f64_vec();
        let e = rel_err(&got.to_f64_vec(), &want);
        assert!(e < 1e-5, "{what}: relative error {e:e}");
    };
    let grads_of = |name: &str, grads: &lorafuse::lora::LoraGrads, dx: &Tensor, x: &[usize]| {
        let i = set.find(name).unwrap();
        let m = &set.modules()[i];
        let g = grads.of(i);
        check("dx", dx, &format!("grad.{name}.x"), x);
        check(
            "d down",
            g[0],
            &format!("grad.{name}.lora_down"),
            m.down.dims(),
        );
        check("d up", g[1], &format!("grad.{name}.lora_up"), m.up.dims());
        check(
            "d dora_scale",
            g[2],
            &format!("grad.{name}.dora_scale"),
            g[2].dims(),
        );
    };

    let lin = Linear {
        name: "lora_unet_lin".into(),
        weight: get("base.lora_unet_lin.weight", &[5, 6]),
        bias: Some(get("base.lora_unet_lin.bias", &[5])),
    };
    let x = get("base.lora_unet_lin.x", &[2, 3, 6]);
    let y = lin.forward(&cx, &x).unwrap().y;
    check("linear y", &y, "base.lora_unet_lin.y", &[2, 3, 5]);
    let base = lin.forward(&Ctx::new(&be, None), &x).unwrap().y;
    let want = get("base.lora_unet_lin.y", &[2, 3, 5]).to_f64_vec();
    assert!(
        rel_err(&base.to_f64_vec(), &want) > 1e-2,
        "the DoRA changes the output"
    );
    let r = get("base.lora_unet_lin.r", &[2, 3, 5]);
    let mut grads = set.zero_grads(&be).unwrap();
    let dx = lin.backward_dx(&cx, &r, &x, None, &mut grads).unwrap();
    grads_of("lora_unet_lin", &grads, &dx, &[2, 3, 6]);

    let cv = Conv {
        name: "lora_unet_conv".into(),
        weight: get("base.lora_unet_conv.weight", &[4, 3, 3, 3]),
        bias: Some(get("base.lora_unet_conv.bias", &[4])),
        params: Conv2d {
            stride: 2,
            padding: 1,
        },
    };
    let x = get("base.lora_unet_conv.x", &[2, 3, 7, 6]);
    let (y, saved) = cv.forward_saving(&cx, x, true).unwrap();
    check("conv y", &y, "base.lora_unet_conv.y", &[2, 4, 4, 3]);
    let r = get("base.lora_unet_conv.r", &[2, 4, 4, 3]);
    let mut grads = set.zero_grads(&be).unwrap();
    let dx = cv
        .backward_saved(&cx, &r, (7, 6), saved, &mut grads)
        .unwrap();
    grads_of("lora_unet_conv", &grads, &dx, &[2, 3, 7, 6]);
}
