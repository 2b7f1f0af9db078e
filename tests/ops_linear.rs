//! Linear layer with LoRA: hand-computed forward, f64 gradient checks for dX, dA and dB,
//! gradient accumulation across micro-batches, and errors for bad shapes and dtypes.

mod common;

use common::*;
use lorafuse::backend::{Accum, Lora, LoraBackward};
use lorafuse::rng::Rng;
use lorafuse::{Backend, CpuBackend, DType, Error, Tensor};

fn t(shape: &[usize], v: &[f64]) -> Tensor {
    Tensor::from_f64(shape, v.to_vec()).unwrap()
}

#[test]
fn forward_by_hand() {
    let be = CpuBackend::new();
    // x [2, 3], W [2, 3], bias [2]; A [1, 3], B [2, 1], scale 0.5.
    let x = t(&[2, 3], &[1., 2., 3., -1., 0., 2.]);
    let w = t(&[2, 3], &[1., 0., -1., 2., 1., 0.]);
    let bias = t(&[2], &[0.5, -1.]);
    let a = t(&[1, 3], &[1., 1., 1.]);
    let b = t(&[2, 1], &[2., -4.]);
    // x·Wᵀ = [[1-3, 2+2], [-1-2, -2+0]] = [[-2, 4], [-3, -2]]; + bias = [[-1.5, 3], [-2.5, -3]]
    // u = x·Aᵀ = [[6], [1]]; 0.5·u·Bᵀ = [[6, -12], [1, -2]]
    let out = be
        .linear(
            &x,
            &w,
            Some(&bias),
            Some(Lora {
                down: &a,
                up: &b,
                scale: 0.5,
            }),
        )
        .unwrap();
    assert_tensor("y", &out.y, &[2, 2], &[4.5, -9., -1.5, -5.], 1e-15);
    assert_tensor(
        "u",
        out.lora_hidden.as_ref().unwrap(),
        &[2, 1],
        &[6., 1.],
        1e-15,
    );
    // No LoRA: no hidden, plain affine map; f32 gives the same numbers.
    let plain = be
        .linear(&to_f32(&x), &to_f32(&w), Some(&to_f32(&bias)), None)
        .unwrap();
    assert!(plain.lora_hidden.is_none());
    assert_eq!(plain.y.dtype(), DType::F32);
    assert_tensor("y f32", &plain.y, &[2, 2], &[-1.5, 3., -2.5, -3.], 1e-6);
}

#[test]
fn backward_by_hand() {
    let be = CpuBackend::new();
    let x = t(&[1, 2], &[1., 2.]);
    let w = t(&[1, 2], &[3., 4.]);
    let a = t(&[1, 2], &[1., -1.]);
    let b = t(&[1, 1], &[2.]);
    let u = be
        .linear(
            &x,
            &w,
            None,
            Some(Lora {
                down: &a,
                up: &b,
                scale: 1.0,
            }),
        )
        .unwrap()
        .lora_hidden
        .unwrap();
    let dy = t(&[1, 1], &[1.]);
    let (mut gd, mut gu) = (
        Tensor::zeros([1, 2], DType::F64),
        Tensor::zeros([1, 1], DType::F64),
    );
    let dx = be
        .linear_backward(
            &dy,
            &w,
            Some(LoraBackward {
                lora: Lora {
                    down: &a,
                    up: &b,
                    scale: 1.0,
                },
                x: &x,
                hidden: &u,
                grad_down: &mut gd,
                grad_up: &mut gu,
                accum: Accum::Assign,
            }),
            true,
        )
        .unwrap()
        .unwrap();
    // y = 3·1 + 4·2 + B·(x1 - x2) ; dX = W + B·A = [3+2, 4-2]; dA = B·x = [2, 4]; dB = u = -1
    assert_tensor("dx", &dx, &[1, 2], &[5., 2.], 1e-15);
    assert_tensor("dA", &gd, &[1, 2], &[2., 4.], 1e-15);
    assert_tensor("dB", &gu, &[1, 1], &[-1.], 1e-15);
}

/// dX, dA and dB against finite differences, with awkward sizes and 3-D input.
#[test]
fn gradcheck_lora_linear() {
    let be = CpuBackend::new();
    let mut rng = Rng::new(1);
    let (rows, inf, outf, r) = ([2, 5], 13, 11, 3);
    let inputs = vec![
        randn(&mut rng, &[rows[0], rows[1], inf]),
        randn(&mut rng, &[r, inf]),
        randn(&mut rng, &[outf, r]),
    ];
    let w = randn(&mut rng, &[outf, inf]);
    let bias = randn(&mut rng, &[outf]);
    let scale = 0.75;
    let fwd = |xs: &[Tensor]| {
        be.linear(
            &xs[0],
            &w,
            Some(&bias),
            Some(Lora {
                down: &xs[1],
                up: &xs[2],
                scale,
            }),
        )
        .unwrap()
        .y
    };
    gradcheck("lora linear", &inputs, &[0, 1, 2], 200, fwd, |xs, dy| {
        let u = be
            .linear(
                &xs[0],
                &w,
                Some(&bias),
                Some(Lora {
                    down: &xs[1],
                    up: &xs[2],
                    scale,
                }),
            )
            .unwrap()
            .lora_hidden
            .unwrap();
        let mut gd = Tensor::from_f64([r, inf], vec![f64::NAN; r * inf]).unwrap(); // Assign overwrites poison
        let mut gu = Tensor::from_f64([outf, r], vec![f64::NAN; outf * r]).unwrap();
        let dx = be
            .linear_backward(
                dy,
                &w,
                Some(LoraBackward {
                    lora: Lora {
                        down: &xs[1],
                        up: &xs[2],
                        scale,
                    },
                    x: &xs[0],
                    hidden: &u,
                    grad_down: &mut gd,
                    grad_up: &mut gu,
                    accum: Accum::Assign,
                }),
                true,
            )
            .unwrap()
            .unwrap();
        vec![dx, gd, gu]
    });
    // Without LoRA, dX = dY·W only.
    gradcheck(
        "linear",
        &inputs[..1],
        &[0],
        200,
        |xs| be.linear(&xs[0], &w, None, None).unwrap().y,
        |_, dy| vec![be.linear_backward(dy, &w, None, true).unwrap().unwrap()],
    );
}

/// Two micro-steps (Assign, then Add) give the LoRA gradient of the concatenated batch.
#[test]
fn accumulation_equals_concatenated_batch() {
    let be = CpuBackend::new();
    let mut rng = Rng::new(2);
    let (inf, outf, r) = (9, 7, 4);
    let w = randn(&mut rng, &[outf, inf]);
    let a = randn(&mut rng, &[r, inf]);
    let b = randn(&mut rng, &[outf, r]);
    let lora = Lora {
        down: &a,
        up: &b,
        scale: 0.25,
    };
    let x = randn(&mut rng, &[2, 5, inf]);
    let dy = randn(&mut rng, &[2, 5, outf]);
    let half = |t: &Tensor, i: usize| {
        let per = t.numel() / 2;
        let mut d = t.dims().to_vec();
        d[0] = 1;
        Tensor::from_f64(d, t.to_f64_vec()[i * per..(i + 1) * per].to_vec()).unwrap()
    };
    let grads_of = |x: &Tensor, dy: &Tensor, gd: &mut Tensor, gu: &mut Tensor, accum| {
        let u = be
            .linear(x, &w, None, Some(lora))
            .unwrap()
            .lora_hidden
            .unwrap();
        let lb = LoraBackward {
            lora,
            x,
            hidden: &u,
            grad_down: gd,
            grad_up: gu,
            accum,
        };
        assert!(be
            .linear_backward(dy, &w, Some(lb), false)
            .unwrap()
            .is_none());
    };
    let (mut gd_full, mut gu_full) = (
        Tensor::zeros([r, inf], DType::F64),
        Tensor::zeros([outf, r], DType::F64),
    );
    grads_of(&x, &dy, &mut gd_full, &mut gu_full, Accum::Assign);
    let mut gd = Tensor::from_f64([r, inf], vec![7.0; r * inf]).unwrap();
    let mut gu = Tensor::from_f64([outf, r], vec![7.0; outf * r]).unwrap();
    grads_of(&half(&x, 0), &half(&dy, 0), &mut gd, &mut gu, Accum::Assign);
    grads_of(&half(&x, 1), &half(&dy, 1), &mut gd, &mut gu, Accum::Add);
    assert!(
        rel_err(&gd.to_f64_vec(), &gd_full.to_f64_vec()) < 1e-14,
        "dA"
    );
    assert!(
        rel_err(&gu.to_f64_vec(), &gu_full.to_f64_vec()) < 1e-14,
        "dB"
    );
    // And Add really adds: a third micro-step on the first half changes the sum.
    grads_of(&half(&x, 0), &half(&dy, 0), &mut gd, &mut gu, Accum::Add);
    assert!(rel_err(&gd.to_f64_vec(), &gd_full.to_f64_vec()) > 1e-3);
}

/// f32 and f64 paths agree (the f64 path is what the gradchecks trust).
#[test]
fn f32_matches_f64() {
    let be = CpuBackend::new();
    let mut rng = Rng::new(3);
    let x = randn(&mut rng, &[300, 70]);
    let w = randn(&mut rng, &[130, 70]);
    let a = randn(&mut rng, &[8, 70]);
    let b = randn(&mut rng, &[130, 8]);
    let y64 = be
        .linear(
            &x,
            &w,
            None,
            Some(Lora {
                down: &a,
                up: &b,
                scale: 0.5,
            }),
        )
        .unwrap()
        .y;
    let (a32, b32) = (to_f32(&a), to_f32(&b));
    let y32 = be
        .linear(
            &to_f32(&x),
            &to_f32(&w),
            None,
            Some(Lora {
                down: &a32,
                up: &b32,
                scale: 0.5,
            }),
        )
        .unwrap()
        .y;
    assert_close("y", &y32.to_f64_vec(), &y64.to_f64_vec(), 1e-4, 1e-4);
}

#[test]
fn bad_shapes_name_both_shapes() {
    let be = CpuBackend::new();
    let x = Tensor::zeros([4, 10], DType::F32);
    let w = Tensor::zeros([6, 12], DType::F32);
    let e = be
        .linear(&x, &w, None, None)
        .err()
        .expect("mismatched in_features must fail");
    let msg = e.to_string();
    assert!(matches!(e, Error::ShapeMismatch { .. }), "{msg}");
    assert!(msg.contains("[4, 10]") && msg.contains("[6, 12]"), "{msg}");

    let w = Tensor::zeros([6, 10], DType::F32);
    let a = Tensor::zeros([4, 10], DType::F32);
    let b = Tensor::zeros([6, 3], DType::F32);
    let msg = be
        .linear(
            &x,
            &w,
            None,
            Some(Lora {
                down: &a,
                up: &b,
                scale: 1.0,
            }),
        )
        .err()
        .unwrap()
        .to_string();
    assert!(msg.contains("[6, 3]") && msg.contains("[4, 10]"), "{msg}");

    let bias = Tensor::zeros([5], DType::F32);
    let msg = be
        .linear(&x, &w, Some(&bias), None)
        .err()
        .unwrap()
        .to_string();
    assert!(msg.contains("[5]") && msg.contains("[6, 10]"), "{msg}");
}

#[test]
fn bad_dtypes_are_errors() {
    let be = CpuBackend::new();
    let x = Tensor::zeros([4, 10], DType::F32);
    let w64 = Tensor::zeros([6, 10], DType::F64);
    let msg = be.linear(&x, &w64, None, None).err().unwrap().to_string();
    assert!(
        msg.contains("w") && msg.contains("f64") && msg.contains("f32"),
        "{msg}"
    );
    let x16 = Tensor::zeros([4, 10], DType::F16);
    let msg = be.linear(&x16, &w64, None, None).err().unwrap().to_string();
    assert!(msg.contains("f16") && msg.contains("cast"), "{msg}");
}
