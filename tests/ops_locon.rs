//! LoCon (a LoRA on a convolution) and the conv weight gradient on the CPU: the forward
//! against its definition by plain convs, f64 gradient checks of dX, d(down), d(up) (3x3 with
//! padding, stride 2 with odd sizes, with and without a dropout mask) and of
//! `conv2d_weight_grad`, accumulation, and errors for adapters of the wrong shape. LoHa
//! (lora/loha.rs) on a linear layer and a conv, through the model's layers: the forward
//! against the merged weight, f64 gradient checks of dX and the four factors, accumulation.

use crate::common;

use common::*;
use lorafuse::backend::prelude::*;
use lorafuse::backend::{Accum, Adapter, AdapterBackward, Conv2d, Lora, LoraBackward};
use lorafuse::lora::{Algo, LayerKind, LoraModule, LoraSet};
use lorafuse::model::layers::{Conv, Ctx, Linear};
use lorafuse::rng::Rng;
use lorafuse::{CpuBackend, Error, Tensor};

fn conv(stride: usize, padding: usize) -> Conv2d {
    Conv2d { stride, padding }
}

fn poison(shape: &[usize]) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_f64(shape, vec![f64::NAN; n]).unwrap()
}

/// A keep mask with p = 0.25: each element 0 or 1/(1 - p), some of each.
fn mask(rng: &mut Rng, shape: &[usize]) -> Tensor {
    let n = shape.iter().product();
    let v = (0..n)
        .map(|i| {
            if i % 5 == 1 || rng.uniform_in(0.0, 1.0) < 0.25 {
                0.0
            } else {
                1.0 / 0.75
            }
        })
        .collect();
    Tensor::from_f64(shape, v).unwrap()
}

/// y = conv(x, w) + b + s·conv1x1(conv(x, down) ⊙ mask, up), from plain convs.
#[test]
fn forward_is_the_composition() {
    let be = CpuBackend::f64();
    let mut rng = Rng::new(3);
    let p = conv(2, 1);
    let x = randn(&mut rng, &[2, 3, 7, 6]);
    let w = randn(&mut rng, &[5, 3, 3, 3]);
    let b = randn(&mut rng, &[5]);
    let down = randn(&mut rng, &[2, 3, 3, 3]);
    let up = randn(&mut rng, &[5, 2, 1, 1]);
    let m = mask(&mut rng, &[2, 2, 4, 3]);
    let l = Lora {
        down: &down,
        up: &up,
        scale: 0.5,
        dropout: Some(&m),
    };
    let out = be
        .conv2d_out(&x, &w, Some(&b), p, Some(Adapter::Lora(l)))
        .unwrap();
    let u = be.conv2d(&x, &down, None, p, None).unwrap().to_f64_vec();
    let ut: Vec<f64> = u.iter().zip(m.to_f64_vec()).map(|(a, k)| a * k).collect();
    let ut = Tensor::from_f64([2, 2, 4, 3], ut).unwrap();
    let z = be.conv2d(&ut, &up, None, conv(1, 0), None).unwrap();
    let base = be.conv2d(&x, &w, Some(&b), p, None).unwrap();
    let want: Vec<f64> = base
        .to_f64_vec()
        .iter()
        .zip(z.to_f64_vec())
        .map(|(y, z)| y + 0.5 * z)
        .collect();
    assert_close("y", &out.y.to_f64_vec(), &want, 1e-13, 1e-13);
    let hidden = out.lora_hidden.unwrap();
    assert_close("hidden", &hidden.to_f64_vec(), &ut.to_f64_vec(), 0.0, 0.0);
    // Without an adapter nothing is hidden, and conv2d is conv2d_out's y.
    assert!(be
        .conv2d_out(&x, &w, None, p, None)
        .unwrap()
        .lora_hidden
        .is_none());
}

/// Forward and backward of one LoCon conv: (dX, d(down), d(up)) from dY.
fn locon_grads(
    be: &CpuBackend,
    xs: &[Tensor],
    w: &Tensor,
    p: Conv2d,
    scale: f64,
    m: Option<&Tensor>,
    dy: &Tensor,
) -> Vec<Tensor> {
    let l = Lora {
        down: &xs[1],
        up: &xs[2],
        scale,
        dropout: m,
    };
    let hidden = be
        .conv2d_out(&xs[0], w, None, p, Some(Adapter::Lora(l)))
        .unwrap()
        .lora_hidden
        .unwrap();
    let (mut gd, mut gu) = (poison(xs[1].dims()), poison(xs[2].dims()));
    let hw = (xs[0].dims()[2], xs[0].dims()[3]);
    let dx = be
        .conv2d_backward(
            dy,
            w,
            hw,
            p,
            Some(AdapterBackward::Lora(LoraBackward {
                lora: l,
                x: &xs[0],
                hidden: &hidden,
                grad_down: &mut gd,
                grad_up: &mut gu,
                accum: Accum::Assign,
            })),
        )
        .unwrap();
    vec![dx, gd, gu]
}

fn check_locon(
    name: &str,
    (n, c, o, r): (usize, usize, usize, usize),
    hw: (usize, usize),
    p: Conv2d,
    masked: bool,
) {
    let be = CpuBackend::f64();
    let mut rng = Rng::new(name.len() as u64 + 7);
    let inputs = vec![
        randn(&mut rng, &[n, c, hw.0, hw.1]),
        randn(&mut rng, &[r, c, 3, 3]),
        randn(&mut rng, &[o, r, 1, 1]),
    ];
    let w = randn(&mut rng, &[o, c, 3, 3]);
    let b = randn(&mut rng, &[o]);
    let ho = p.out_size(hw.0, 3).unwrap();
    let wo = p.out_size(hw.1, 3).unwrap();
    let m = masked.then(|| mask(&mut rng, &[n, r, ho, wo]));
    let scale = 0.75;
    let fwd = |xs: &[Tensor]| {
        let l = Lora {
            down: &xs[1],
            up: &xs[2],
            scale,
            dropout: m.as_ref(),
        };
        be.conv2d(&xs[0], &w, Some(&b), p, Some(Adapter::Lora(l)))
            .unwrap()
    };
    gradcheck(name, &inputs, &[0, 1, 2], 300, fwd, |xs, dy| {
        locon_grads(&be, xs, &w, p, scale, m.as_ref(), dy)
    });
}

#[test]
fn gradcheck_locon_3x3_pad1() {
    check_locon("locon 3x3", (2, 3, 4, 2), (5, 6), conv(1, 1), false);
}

#[test]
fn gradcheck_locon_stride2_odd_masked() {
    check_locon(
        "locon stride 2 masked",
        (2, 4, 3, 3),
        (7, 5),
        conv(2, 1),
        true,
    );
}

#[test]
fn gradcheck_locon_no_padding_masked() {
    check_locon("locon no padding", (1, 2, 5, 2), (6, 6), conv(1, 0), true);
}

/// conv2d_weight_grad as the gradient of conv2d with respect to w, for 3x3 (strides 1 and
/// 2) and 1x1 kernels, with a scale.
#[test]
fn gradcheck_weight_grad() {
    let be = CpuBackend::f64();
    for (name, k, p, hw) in [
        ("wgrad 3x3", 3, conv(1, 1), (5, 4)),
        ("wgrad 3x3 stride 2", 3, conv(2, 1), (7, 6)),
        ("wgrad 1x1", 1, conv(1, 0), (3, 5)),
        ("wgrad 2x2 stride 2 pad 0", 2, conv(2, 0), (5, 5)),
    ] {
        let mut rng = Rng::new(k as u64 + 40);
        let x = randn(&mut rng, &[2, 3, hw.0, hw.1]);
        let w = randn(&mut rng, &[4, 3, k, k]);
        gradcheck(
            name,
            &[w],
            &[0],
            200,
            |ws| {
                be.scale(&be.conv2d(&x, &ws[0], None, p, None).unwrap(), 0.5)
                    .unwrap()
            },
            |ws, dy| {
                let mut dw = poison(ws[0].dims());
                be.conv2d_weight_grad(&x, dy, p, 0.5, &mut dw, Accum::Assign)
                    .unwrap();
                vec![dw]
            },
        );
    }
}

/// Assign then Add over two halves of a batch equals Assign over the whole batch.
#[test]
fn weight_grad_accumulates() {
    let be = CpuBackend::f64();
    let mut rng = Rng::new(5);
    let p = conv(1, 1);
    let x = randn(&mut rng, &[2, 3, 4, 5]);
    let dy = randn(&mut rng, &[2, 4, 4, 5]);
    let mut whole = poison(&[4, 3, 3, 3]);
    be.conv2d_weight_grad(&x, &dy, p, 1.5, &mut whole, Accum::Assign)
        .unwrap();
    let half = |t: &Tensor, i: usize| {
        let v = t.to_f64_vec();
        let n = v.len() / 2;
        let mut d = t.dims().to_vec();
        d[0] = 1;
        Tensor::from_f64(d, v[i * n..(i + 1) * n].to_vec()).unwrap()
    };
    let mut parts = poison(&[4, 3, 3, 3]);
    be.conv2d_weight_grad(
        &half(&x, 0),
        &half(&dy, 0),
        p,
        1.5,
        &mut parts,
        Accum::Assign,
    )
    .unwrap();
    be.conv2d_weight_grad(&half(&x, 1), &half(&dy, 1), p, 1.5, &mut parts, Accum::Add)
        .unwrap();
    assert_close(
        "accumulated",
        &parts.to_f64_vec(),
        &whole.to_f64_vec(),
        1e-13,
        1e-13,
    );
}

/// A LoRA of the wrong shape on a conv is refused naming the shapes: a linear LoRA's 2-D
/// down, a down with another kernel, an up that is not [O, r, 1, 1], a mask of the wrong size.
#[test]
fn wrong_adapter_shapes_are_errors() {
    let be = CpuBackend::f64();
    let mut rng = Rng::new(6);
    let x = randn(&mut rng, &[1, 2, 4, 4]);
    let w = randn(&mut rng, &[3, 2, 3, 3]);
    // (down, up, mask shapes, the argument the error names)
    type Case = (Vec<usize>, Vec<usize>, Option<Vec<usize>>, &'static str);
    let cases: Vec<Case> = vec![
        (vec![2, 2], vec![3, 2], None, "lora down"),
        (vec![2, 2, 1, 1], vec![3, 2, 1, 1], None, "lora down"),
        (vec![2, 2, 3, 3], vec![3, 2], None, "lora up"),
        (
            vec![2, 2, 3, 3],
            vec![3, 2, 1, 1],
            Some(vec![1, 2, 3, 4]),
            "lora dropout mask",
        ),
    ];
    for (d, u, m, name) in cases {
        let (down, up) = (randn(&mut rng, &d), randn(&mut rng, &u));
        let m = m.map(|s| randn(&mut rng, &s));
        let l = Lora {
            down: &down,
            up: &up,
            scale: 1.0,
            dropout: m.as_ref(),
        };
        let e = be
            .conv2d(&x, &w, None, conv(1, 1), Some(Adapter::Lora(l)))
            .unwrap_err();
        match &e {
            Error::ShapeMismatch { lhs_name, .. } => assert_eq!(*lhs_name, name, "{e}"),
            _ => panic!("{name}: {e:?}"),
        }
    }
    // The weight gradient: dy must be x's conv output under dw's kernel.
    let dy = randn(&mut rng, &[1, 3, 3, 3]);
    let mut dw = poison(&[3, 2, 3, 3]);
    let e = be
        .conv2d_weight_grad(&x, &dy, conv(1, 1), 1.0, &mut dw, Accum::Assign)
        .unwrap_err();
    assert!(
        matches!(e, Error::ShapeMismatch { lhs_name: "dy", .. }),
        "{e:?}"
    );
}

// --- LoHa (lora/loha.rs), through the model's Linear and Conv layers

/// A LoHa module on `name` from (w1_b, w1_a, w2_a, w2_b) as given.
fn loha_set(name: &str, t: &[Tensor], alpha: f64, kind: LayerKind) -> LoraSet {
    LoraSet::new(vec![LoraModule {
        name: name.into(),
        down: t[0].clone(),
        up: t[1].clone(),
        alpha,
        kind,
        algo: Algo::Loha {
            w2_a: t[2].clone(),
            w2_b: t[3].clone(),
        },
    }])
}

/// ΔW = s·(w1_a·w1_b) ⊙ (w2_a·w2_b) [out, n], by hand.
fn hada_delta(t: &[Tensor], s: f64) -> Vec<f64> {
    let (w1b, w1a, w2a, w2b) = (
        t[0].to_f64_vec(),
        t[1].to_f64_vec(),
        t[2].to_f64_vec(),
        t[3].to_f64_vec(),
    );
    let (r, n) = (t[0].dims()[0], t[0].dims()[1]);
    let o = t[1].dims()[0];
    let mut d = vec![0.0; o * n];
    for i in 0..o {
        for j in 0..n {
            let p1: f64 = (0..r).map(|k| w1a[i * r + k] * w1b[k * n + j]).sum();
            let p2: f64 = (0..r).map(|k| w2a[i * r + k] * w2b[k * n + j]).sum();
            d[i * n + j] = s * p1 * p2;
        }
    }
    d
}

fn loha_inputs(rng: &mut Rng, x: &[usize], o: usize, r: usize, n: usize) -> Vec<Tensor> {
    vec![
        randn(rng, x),
        randn(rng, &[r, n]),
        randn(rng, &[o, r]),
        randn(rng, &[o, r]),
        randn(rng, &[r, n]),
    ]
}

#[test]
fn loha_linear_forward_and_gradcheck() {
    let be = CpuBackend::f64();
    let mut rng = Rng::new(21);
    let (i, o, r) = (5, 4, 2);
    for x_shape in [&[2, 3, 5][..], &[3, 5][..]] {
        let inputs = loha_inputs(&mut rng, x_shape, o, r, i);
        let layer = Linear {
            name: "lora_unet_x".into(),
            weight: randn(&mut rng, &[o, i]),
            bias: Some(randn(&mut rng, &[o])),
        };
        let alpha = 3.0;
        let fwd = |xs: &[Tensor]| {
            let set = loha_set(&layer.name, &xs[1..], alpha, LayerKind::Linear);
            layer.forward(&Ctx::new(&be, Some(&set)), &xs[0]).unwrap().y
        };
        // y = x·(W + ΔW)ᵀ + b.
        let dw = hada_delta(&inputs[1..], alpha / r as f64);
        let w: Vec<f64> = layer
            .weight
            .to_f64_vec()
            .iter()
            .zip(&dw)
            .map(|(a, b)| a + b)
            .collect();
        let merged = Tensor::from_f64([o, i], w).unwrap();
        let want = be
            .linear(&inputs[0], &merged, layer.bias.as_ref(), None)
            .unwrap()
            .y;
        assert!(rel_err(&fwd(&inputs).to_f64_vec(), &want.to_f64_vec()) < 1e-13);
        gradcheck(
            "loha linear",
            &inputs,
            &[0, 1, 2, 3, 4],
            300,
            fwd,
            |xs, dy| {
                let set = loha_set(&layer.name, &xs[1..], alpha, LayerKind::Linear);
                let cx = Ctx::new(&be, Some(&set));
                let mut grads = set.zero_grads(&be).unwrap();
                let dx = layer
                    .backward_dx(&cx, dy, &xs[0], None, &mut grads)
                    .unwrap();
                let mut out = vec![dx];
                out.extend(grads.of(0).into_iter().cloned());
                out
            },
        );
    }
}

#[test]
fn loha_conv_forward_and_gradcheck() {
    let be = CpuBackend::f64();
    let mut rng = Rng::new(22);
    let (c, o, r, k) = (3, 4, 2, 3);
    let p = conv(2, 1);
    let inputs = loha_inputs(&mut rng, &[2, c, 5, 6], o, r, c * k * k);
    let layer = Conv {
        name: "lora_unet_c".into(),
        weight: randn(&mut rng, &[o, c, k, k]),
        bias: Some(randn(&mut rng, &[o])),
        params: p,
    };
    let alpha = 1.5;
    let kind = LayerKind::Conv { kernel: k };
    let fwd = |xs: &[Tensor]| {
        let set = loha_set(&layer.name, &xs[1..], alpha, kind);
        layer.forward(&Ctx::new(&be, Some(&set)), &xs[0]).unwrap()
    };
    // y = conv(x, W + ΔW reshaped to [out, in, k, k]) + b.
    let dw = hada_delta(&inputs[1..], alpha / r as f64);
    let w: Vec<f64> = layer
        .weight
        .to_f64_vec()
        .iter()
        .zip(&dw)
        .map(|(a, b)| a + b)
        .collect();
    let merged = Tensor::from_f64([o, c, k, k], w).unwrap();
    let want = be
        .conv2d(&inputs[0], &merged, layer.bias.as_ref(), p, None)
        .unwrap();
    assert!(rel_err(&fwd(&inputs).to_f64_vec(), &want.to_f64_vec()) < 1e-13);
    gradcheck(
        "loha conv",
        &inputs,
        &[0, 1, 2, 3, 4],
        300,
        fwd,
        |xs, dy| {
            let set = loha_set(&layer.name, &xs[1..], alpha, kind);
            let cx = Ctx::new(&be, Some(&set));
            let mut grads = set.zero_grads(&be).unwrap();
            let (_, saved) = layer.forward_saving(&cx, xs[0].clone(), true).unwrap();
            let dx = layer
                .backward_saved(&cx, dy, (5, 6), saved, &mut grads)
                .unwrap();
            let mut out = vec![dx];
            out.extend(grads.of(0).into_iter().cloned());
            out
        },
    );
    // A second backward with Accum::Add doubles the gradients.
    let set = loha_set(&layer.name, &inputs[1..], alpha, kind);
    let cx = Ctx::new(&be, Some(&set));
    let mut grads = set.zero_grads(&be).unwrap();
    let dy = randn(&mut rng, &[2, o, 3, 3]);
    for accum in [Accum::Assign, Accum::Add] {
        grads.accum = accum;
        let (_, saved) = layer.forward_saving(&cx, inputs[0].clone(), true).unwrap();
        layer
            .backward_saved(&cx, &dy, (5, 6), saved, &mut grads)
            .unwrap();
    }
    let mut once = set.zero_grads(&be).unwrap();
    let (_, saved) = layer.forward_saving(&cx, inputs[0].clone(), true).unwrap();
    layer
        .backward_saved(&cx, &dy, (5, 6), saved, &mut once)
        .unwrap();
    for (twice, once) in grads.of(0).into_iter().zip(once.of(0)) {
        let double: Vec<f64> = once.to_f64_vec().iter().map(|v| 2.0 * v).collect();
        assert!(rel_err(&twice.to_f64_vec(), &double) < 1e-14);
    }
}

/// LyCORIS's own LoHa modules (tests/fixtures/make_lycoris_fixture.py, lycoris-lora 3.2.0.post2)
/// on a linear layer and a stride-2 3x3 conv: the file loads by LyCORIS's key names, and
/// lorafuse's layers give LyCORIS's outputs for the same weights and inputs.
#[test]
fn loha_matches_lycoris() {
    use lorafuse::lora::kohya;
    use lorafuse::model::checkpoint::Weights;
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/lycoris/loha.safetensors");
    let be = CpuBackend::new();
    let set = kohya::load(&path, &be, lorafuse::DType::F32).unwrap();
    assert_eq!(set.len(), 2);
    assert!(set.modules().iter().all(|m| m.algo.name() == "loha"));
    let w = Weights::open(&path).unwrap();
    let get = |k: &str, s: &[usize]| w.get(k, s.to_vec()).unwrap();
    let lin = Linear {
        name: "lora_unet_lin".into(),
        weight: get("base.lora_unet_lin.weight", &[5, 6]),
        bias: Some(get("base.lora_unet_lin.bias", &[5])),
    };
    let cx = Ctx::new(&be, Some(&set));
    let x = get("base.lora_unet_lin.x", &[2, 3, 6]);
    let want = get("base.lora_unet_lin.y", &[2, 3, 5]).to_f64_vec();
    let got = lin.forward(&cx, &x).unwrap().y.to_f64_vec();
    assert!(
        rel_err(&got, &want) < 1e-6,
        "linear: {}",
        rel_err(&got, &want)
    );
    let base = lin
        .forward(&Ctx::new(&be, None), &x)
        .unwrap()
        .y
        .to_f64_vec();
    assert!(rel_err(&base, &want) > 1e-2, "the LoHa changes the output");

    let conv_layer = Conv {
        name: "lora_unet_conv".into(),
        weight: get("base.lora_unet_conv.weight", &[4, 3, 3, 3]),
        bias: Some(get("base.lora_unet_conv.bias", &[4])),
        params: conv(2, 1),
    };
    let x = get("base.lora_unet_conv.x", &[2, 3, 7, 6]);
    let want = get("base.lora_unet_conv.y", &[2, 4, 4, 3]).to_f64_vec();
    let got = conv_layer.forward(&cx, &x).unwrap().to_f64_vec();
    assert!(
        rel_err(&got, &want) < 1e-6,
        "conv: {}",
        rel_err(&got, &want)
    );
    let base = conv_layer
        .forward(&Ctx::new(&be, None), &x)
        .unwrap()
        .to_f64_vec();
    assert!(rel_err(&base, &want) > 1e-2, "the LoHa changes the output");
}
