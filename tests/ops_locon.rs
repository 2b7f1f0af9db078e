//! LoCon (a LoRA on a convolution) and the conv weight gradient on the CPU: the forward
//! against its definition by plain convs, f64 gradient checks of dX, d(down), d(up) (3x3 with
//! padding, stride 2 with odd sizes, with and without a dropout mask) and of
//! `conv2d_weight_grad`, accumulation, and errors for adapters of the wrong shape.

mod common;

use common::*;
use lorafuse::backend::prelude::*;
use lorafuse::backend::{Accum, Adapter, AdapterBackward, Conv2d, Lora, LoraBackward};
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
