//! Linear layer with LoRA: hand-computed forward, f64 gradient checks for dX, dA and dB,
//! gradient accumulation across micro-batches, and errors for bad shapes and dtypes; the same
//! with a LoRA dropout mask (kohya's `network_dropout`), and the masks `LoraDropout` draws.

use crate::common;

use common::*;
use lorafuse::backend::prelude::*;
use lorafuse::backend::{Accum, Adapter, AdapterBackward, Lora, LoraBackward};
use lorafuse::lora::LoraDropout;
use lorafuse::rng::Rng;
use lorafuse::{CpuBackend, DType, Error, Tensor};

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
            Some(Adapter::Lora(Lora {
                down: &a,
                up: &b,
                scale: 0.5,
                dropout: None,
            })),
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
            Some(Adapter::Lora(Lora {
                down: &a,
                up: &b,
                scale: 1.0,
                dropout: None,
            })),
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
            Some(AdapterBackward::Lora(LoraBackward {
                lora: Lora {
                    down: &a,
                    up: &b,
                    scale: 1.0,
                    dropout: None,
                },
                x: &x,
                hidden: &u,
                grad_down: &mut gd,
                grad_up: &mut gu,
                accum: Accum::Assign,
            })),
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
            Some(Adapter::Lora(Lora {
                down: &xs[1],
                up: &xs[2],
                scale,
                dropout: None,
            })),
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
                Some(Adapter::Lora(Lora {
                    down: &xs[1],
                    up: &xs[2],
                    scale,
                    dropout: None,
                })),
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
                Some(AdapterBackward::Lora(LoraBackward {
                    lora: Lora {
                        down: &xs[1],
                        up: &xs[2],
                        scale,
                        dropout: None,
                    },
                    x: &xs[0],
                    hidden: &u,
                    grad_down: &mut gd,
                    grad_up: &mut gu,
                    accum: Accum::Assign,
                })),
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
        dropout: None,
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
            .linear(x, &w, None, Some(Adapter::Lora(lora)))
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
            .linear_backward(dy, &w, Some(AdapterBackward::Lora(lb)), false)
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
            Some(Adapter::Lora(Lora {
                down: &a,
                up: &b,
                scale: 0.5,
                dropout: None,
            })),
        )
        .unwrap()
        .y;
    let (a32, b32) = (to_f32(&a), to_f32(&b));
    let y32 = be
        .linear(
            &to_f32(&x),
            &to_f32(&w),
            None,
            Some(Adapter::Lora(Lora {
                down: &a32,
                up: &b32,
                scale: 0.5,
                dropout: None,
            })),
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
            Some(Adapter::Lora(Lora {
                down: &a,
                up: &b,
                scale: 1.0,
                dropout: None,
            })),
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

// ---- LoRA dropout ----

/// A pre-scaled keep mask with the given shape: each element 0 with probability p, else
/// 1/(1−p), from a fixed generator (the mask is a constant of the function being checked).
fn keep_mask(rng: &mut Rng, shape: &[usize], p: f64) -> Tensor {
    let n = shape.iter().product();
    let v = (0..n)
        .map(|_| {
            if rng.uniform() < p {
                0.0
            } else {
                1.0 / (1.0 - p)
            }
        })
        .collect();
    Tensor::from_f64(shape, v).unwrap()
}

/// The LoRA (A, B) = (xs[1], xs[2]) with a dropout mask.
fn masked_lora<'a>(xs: &'a [Tensor], mask: &'a Tensor, scale: f64) -> Lora<'a> {
    Lora {
        down: &xs[1],
        up: &xs[2],
        scale,
        dropout: Some(mask),
    }
}

/// Forward, then backward from `dy`, of one LoRA linear: (y, ũ, dX, dA, dB).
#[allow(clippy::too_many_arguments)]
fn lora_round_trip(
    be: &CpuBackend,
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    a: &Tensor,
    b: &Tensor,
    scale: f64,
    mask: Option<&Tensor>,
    dy: &Tensor,
) -> (Tensor, Tensor, Tensor, Tensor, Tensor) {
    let lora = Lora {
        down: a,
        up: b,
        scale,
        dropout: mask,
    };
    let out = be.linear(x, w, bias, Some(Adapter::Lora(lora))).unwrap();
    let hidden = out.lora_hidden.unwrap();
    let mut gd = Tensor::zeros(a.shape().clone(), a.dtype());
    let mut gu = Tensor::zeros(b.shape().clone(), b.dtype());
    let dx = be
        .linear_backward(
            dy,
            w,
            Some(AdapterBackward::Lora(LoraBackward {
                lora,
                x,
                hidden: &hidden,
                grad_down: &mut gd,
                grad_up: &mut gu,
                accum: Accum::Assign,
            })),
            true,
        )
        .unwrap()
        .unwrap();
    (out.y, hidden, dx, gd, gu)
}

#[test]
fn dropout_forward_and_backward_by_hand() {
    let be = CpuBackend::new();
    // x [2, 3], W [2, 3]; A [2, 3], B [2, 2], scale 0.5; p = 0.5, so kept elements are 2.
    let x = t(&[2, 3], &[1., 2., 3., -1., 0., 2.]);
    let w = t(&[2, 3], &[1., 0., -1., 2., 1., 0.]);
    let a = t(&[2, 3], &[1., 1., 1., 1., 0., -1.]);
    let b = t(&[2, 2], &[2., 1., -4., 3.]);
    let mask = t(&[2, 2], &[2., 0., 0., 2.]);
    let dy = t(&[2, 2], &[1., 0., 0., 1.]);
    let (y, hidden, dx, gd, gu) = lora_round_trip(&be, &x, &w, None, &a, &b, 0.5, Some(&mask), &dy);
    // u = x·Aᵀ = [[6, -2], [1, -3]]; ũ = u ⊙ mask = [[12, 0], [0, -6]]
    assert_tensor("ũ", &hidden, &[2, 2], &[12., 0., 0., -6.], 1e-15);
    // x·Wᵀ = [[-2, 4], [-3, -2]]; 0.5·ũ·Bᵀ = [[12, -24], [-3, -9]]
    assert_tensor("y", &y, &[2, 2], &[10., -20., -6., -11.], 1e-15);
    // dB = 0.5·dYᵀ·ũ = [[6, 0], [0, -3]]
    assert_tensor("dB", &gu, &[2, 2], &[6., 0., 0., -3.], 1e-15);
    // g = (dY·B) ⊙ mask = [[4, 0], [0, 6]]; dA = 0.5·gᵀ·X = [[2, 4, 6], [-3, 0, 6]]
    assert_tensor("dA", &gd, &[2, 3], &[2., 4., 6., -3., 0., 6.], 1e-15);
    // dX = dY·W + 0.5·g·A = W + [[2, 2, 2], [3, 0, -3]]
    assert_tensor("dX", &dx, &[2, 3], &[3., 2., 1., 5., 1., -3.], 1e-15);
}

/// dX, dA and dB against finite differences with a fixed random mask (p = 0.3), awkward
/// sizes and 3-D input.
#[test]
fn gradcheck_lora_linear_with_dropout() {
    let be = CpuBackend::new();
    let mut rng = Rng::new(11);
    let (rows, inf, outf, r) = ([2, 5], 13, 11, 3);
    let inputs = vec![
        randn(&mut rng, &[rows[0], rows[1], inf]),
        randn(&mut rng, &[r, inf]),
        randn(&mut rng, &[outf, r]),
    ];
    let w = randn(&mut rng, &[outf, inf]);
    let bias = randn(&mut rng, &[outf]);
    let mask = keep_mask(&mut rng, &[rows[0], rows[1], r], 0.3);
    let mv = mask.to_f64_vec();
    assert!(mv.contains(&0.0) && mv.iter().any(|&k| k > 1.0), "{mv:?}");
    let scale = 0.75;
    let fwd = |xs: &[Tensor]| {
        be.linear(
            &xs[0],
            &w,
            Some(&bias),
            Some(Adapter::Lora(masked_lora(xs, &mask, scale))),
        )
        .unwrap()
        .y
    };
    gradcheck(
        "lora linear with dropout",
        &inputs,
        &[0, 1, 2],
        200,
        fwd,
        |xs, dy| {
            let u = be
                .linear(
                    &xs[0],
                    &w,
                    Some(&bias),
                    Some(Adapter::Lora(masked_lora(xs, &mask, scale))),
                )
                .unwrap()
                .lora_hidden
                .unwrap();
            let mut gd = Tensor::from_f64([r, inf], vec![f64::NAN; r * inf]).unwrap();
            let mut gu = Tensor::from_f64([outf, r], vec![f64::NAN; outf * r]).unwrap();
            let dx = be
                .linear_backward(
                    dy,
                    &w,
                    Some(AdapterBackward::Lora(LoraBackward {
                        lora: masked_lora(xs, &mask, scale),
                        x: &xs[0],
                        hidden: &u,
                        grad_down: &mut gd,
                        grad_up: &mut gu,
                        accum: Accum::Assign,
                    })),
                    true,
                )
                .unwrap()
                .unwrap();
            vec![dx, gd, gu]
        },
    );
}

/// With masks, two micro-steps (Assign, then Add) still give the gradient of the
/// concatenated batch under the concatenated mask.
#[test]
fn dropout_accumulation_equals_concatenated_batch() {
    let be = CpuBackend::new();
    let mut rng = Rng::new(12);
    let (inf, outf, r) = (9, 7, 4);
    let w = randn(&mut rng, &[outf, inf]);
    let a = randn(&mut rng, &[r, inf]);
    let b = randn(&mut rng, &[outf, r]);
    let x = randn(&mut rng, &[2, 5, inf]);
    let dy = randn(&mut rng, &[2, 5, outf]);
    let mask = keep_mask(&mut rng, &[2, 5, r], 0.4);
    let half = |t: &Tensor, i: usize| {
        let per = t.numel() / 2;
        let mut d = t.dims().to_vec();
        d[0] = 1;
        Tensor::from_f64(d, t.to_f64_vec()[i * per..(i + 1) * per].to_vec()).unwrap()
    };
    let grads_of =
        |x: &Tensor, dy: &Tensor, mask: &Tensor, gd: &mut Tensor, gu: &mut Tensor, accum| {
            let lora = Lora {
                down: &a,
                up: &b,
                scale: 0.25,
                dropout: Some(mask),
            };
            let u = be
                .linear(x, &w, None, Some(Adapter::Lora(lora)))
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
                .linear_backward(dy, &w, Some(AdapterBackward::Lora(lb)), false)
                .unwrap()
                .is_none());
        };
    let (mut gd_full, mut gu_full) = (
        Tensor::zeros([r, inf], DType::F64),
        Tensor::zeros([outf, r], DType::F64),
    );
    grads_of(&x, &dy, &mask, &mut gd_full, &mut gu_full, Accum::Assign);
    let mut gd = Tensor::from_f64([r, inf], vec![7.0; r * inf]).unwrap();
    let mut gu = Tensor::from_f64([outf, r], vec![7.0; outf * r]).unwrap();
    for (i, accum) in [(0, Accum::Assign), (1, Accum::Add)] {
        let (xi, dyi, mi) = (half(&x, i), half(&dy, i), half(&mask, i));
        grads_of(&xi, &dyi, &mi, &mut gd, &mut gu, accum);
    }
    assert!(
        rel_err(&gd.to_f64_vec(), &gd_full.to_f64_vec()) < 1e-14,
        "dA"
    );
    assert!(
        rel_err(&gu.to_f64_vec(), &gu_full.to_f64_vec()) < 1e-14,
        "dB"
    );
    // The mask matters: without it the gradients differ.
    let (mut gd0, mut gu0) = (
        Tensor::zeros([r, inf], DType::F64),
        Tensor::zeros([outf, r], DType::F64),
    );
    let ones = Tensor::from_f64([2, 5, r], vec![1.0; 2 * 5 * r]).unwrap();
    grads_of(&x, &dy, &ones, &mut gd0, &mut gu0, Accum::Assign);
    assert!(rel_err(&gd0.to_f64_vec(), &gd_full.to_f64_vec()) > 1e-3);
    assert!(rel_err(&gu0.to_f64_vec(), &gu_full.to_f64_vec()) > 1e-3);
}

/// p = 0: the keep mask is all 1/(1−0) = 1, and every output is bit-identical to a LoRA
/// without dropout, in f64 and in f32.
#[test]
fn all_ones_mask_equals_no_dropout_exactly() {
    let be = CpuBackend::new();
    let mut rng = Rng::new(13);
    let (inf, outf, r) = (17, 10, 5);
    let cast = |t: Tensor, f32: bool| if f32 { to_f32(&t) } else { t };
    for f32 in [false, true] {
        let x = cast(randn(&mut rng, &[3, 4, inf]), f32);
        let w = cast(randn(&mut rng, &[outf, inf]), f32);
        let bias = cast(randn(&mut rng, &[outf]), f32);
        let a = cast(randn(&mut rng, &[r, inf]), f32);
        let b = cast(randn(&mut rng, &[outf, r]), f32);
        let dy = cast(randn(&mut rng, &[3, 4, outf]), f32);
        let ones = cast(keep_mask(&mut rng, &[3, 4, r], 0.0), f32);
        assert!(ones.to_f64_vec().iter().all(|&k| k == 1.0));
        let with = lora_round_trip(&be, &x, &w, Some(&bias), &a, &b, 0.6, Some(&ones), &dy);
        let without = lora_round_trip(&be, &x, &w, Some(&bias), &a, &b, 0.6, None, &dy);
        let pairs = [
            ("y", &with.0, &without.0),
            ("hidden", &with.1, &without.1),
            ("dX", &with.2, &without.2),
            ("dA", &with.3, &without.3),
            ("dB", &with.4, &without.4),
        ];
        for (what, p, q) in pairs {
            assert_eq!(p.shape(), q.shape(), "{what}");
            assert_eq!(p.dtype(), q.dtype(), "{what}");
            let (pv, qv) = (p.to_f64_vec(), q.to_f64_vec());
            assert!(
                pv.iter().zip(&qv).all(|(a, b)| a.to_bits() == b.to_bits()),
                "{what} (f32: {f32}) differs with an all-ones mask"
            );
        }
    }
}

#[test]
fn bad_dropout_masks_name_both_shapes() {
    let be = CpuBackend::new();
    let x = Tensor::zeros([4, 10], DType::F32);
    let w = Tensor::zeros([6, 10], DType::F32);
    let ab = [
        Tensor::zeros([0], DType::F32),
        Tensor::zeros([3, 10], DType::F32),
        Tensor::zeros([6, 3], DType::F32),
    ];
    // Forward: the mask must be [.., rank] with x's leading dims, [4, 3].
    for bad in [[4, 10], [3, 4], [4, 4]] {
        let mask = Tensor::zeros(bad, DType::F32);
        let e = be
            .linear(
                &x,
                &w,
                None,
                Some(Adapter::Lora(masked_lora(&ab, &mask, 1.0))),
            )
            .err()
            .expect("a mask of the wrong shape must fail");
        let msg = e.to_string();
        assert!(matches!(e, Error::ShapeMismatch { .. }), "{msg}");
        let bad = format!("[{}, {}]", bad[0], bad[1]);
        assert!(
            msg.contains("lora dropout mask") && msg.contains(&bad) && msg.contains("[4, 10]"),
            "{msg}"
        );
        assert!(msg.contains("[4, 3]"), "the expected shape is named: {msg}");
    }
    // A 3-D x wants a 3-D mask.
    let x3 = Tensor::zeros([2, 2, 10], DType::F32);
    let flat = Tensor::zeros([4, 3], DType::F32);
    let msg = be
        .linear(
            &x3,
            &w,
            None,
            Some(Adapter::Lora(masked_lora(&ab, &flat, 1.0))),
        )
        .err()
        .unwrap()
        .to_string();
    assert!(
        msg.contains("[4, 3]") && msg.contains("[2, 2, 10]") && msg.contains("[2, 2, 3]"),
        "{msg}"
    );
    // Backward: the mask must be shaped like the saved hidden.
    let hidden = Tensor::zeros([4, 3], DType::F32);
    let dy = Tensor::zeros([4, 6], DType::F32);
    let mask = Tensor::zeros([4, 2], DType::F32);
    let (mut gd, mut gu) = (
        Tensor::zeros([3, 10], DType::F32),
        Tensor::zeros([6, 3], DType::F32),
    );
    let e = be
        .linear_backward(
            &dy,
            &w,
            Some(AdapterBackward::Lora(LoraBackward {
                lora: masked_lora(&ab, &mask, 1.0),
                x: &x,
                hidden: &hidden,
                grad_down: &mut gd,
                grad_up: &mut gu,
                accum: Accum::Assign,
            })),
            true,
        )
        .expect_err("a mask unlike the hidden must fail");
    let msg = e.to_string();
    assert!(matches!(e, Error::ShapeMismatch { .. }), "{msg}");
    assert!(
        msg.contains("lora dropout mask") && msg.contains("[4, 2]") && msg.contains("[4, 3]"),
        "{msg}"
    );
    // And a mask in another dtype than x is a dtype error naming the mask.
    let mask64 = Tensor::zeros([4, 3], DType::F64);
    let msg = be
        .linear(
            &x,
            &w,
            None,
            Some(Adapter::Lora(masked_lora(&ab, &mask64, 1.0))),
        )
        .err()
        .unwrap()
        .to_string();
    assert!(
        msg.contains("lora dropout mask") && msg.contains("f64") && msg.contains("f32"),
        "{msg}"
    );
}

/// kohya's `rank_dropout`: one keep per (sample, rank), the same over the sample's tokens
/// (linear hidden [N, L, r], rank last) or pixels (conv hidden [N, r, H, W], rank on axis 1),
/// kept ranks 1/(1−p_rank) (times the elementwise 1/(1−p)); `module_dropout`: a whole mask of
/// zeros in about p_module of the draws; replays draw the same.
#[test]
fn rank_and_module_dropout_masks() {
    use lorafuse::tensor::Shape;
    let be = CpuBackend::f64();
    let ranks_only = LoraDropout::new(0.0, 3)
        .unwrap()
        .with_rank_and_module(0.5, 0.0)
        .unwrap();
    // Linear: [4 samples, 10 tokens, rank 8].
    let m = ranks_only
        .mask(&be, 1, &Shape::new([4, 10, 8]), 2, DType::F64)
        .unwrap()
        .unwrap()
        .to_f64_vec();
    let mut dropped = 0;
    for s in 0..4 {
        for r in 0..8 {
            let v = m[s * 80 + r];
            assert!(v == 0.0 || v == 2.0, "{v}");
            dropped += (v == 0.0) as usize;
            for l in 0..10 {
                assert_eq!(m[(s * 10 + l) * 8 + r], v, "sample {s} rank {r} token {l}");
            }
        }
    }
    assert!(
        (6..=26).contains(&dropped),
        "{dropped} of 32 ranks dropped at p 0.5"
    );
    // Conv: [3 samples, rank 6, 5x5 pixels], with elementwise dropout 0.2 on top.
    let both = LoraDropout::new(0.2, 4)
        .unwrap()
        .with_rank_and_module(0.5, 0.0)
        .unwrap();
    let m = both
        .mask(&be, 2, &Shape::new([3, 6, 5, 5]), 1, DType::F64)
        .unwrap()
        .unwrap()
        .to_f64_vec();
    let keep = 1.0 / (0.8 * 0.5);
    assert!(m.iter().all(|&v| v == 0.0 || (v - keep).abs() < 1e-12));
    let mut empty_ranks = 0;
    for sr in 0..18 {
        let px = &m[sr * 25..(sr + 1) * 25];
        let zeros = px.iter().filter(|&&v| v == 0.0).count();
        // A dropped rank is all zeros; a kept one has about 20% zeros from the elementwise draw.
        if zeros == 25 {
            empty_ranks += 1;
        } else {
            assert!(zeros <= 15, "a kept rank with {zeros} of 25 zeros");
        }
    }
    assert!((2..=16).contains(&empty_ranks), "{empty_ranks} of 18");
    // Modules: about half the draws are all zeros, the others all kept.
    let modules = LoraDropout::new(0.0, 5)
        .unwrap()
        .with_rank_and_module(0.0, 0.5)
        .unwrap();
    let shape = Shape::new([2, 3, 4]);
    let draw = |src: &LoraDropout| {
        (0..200)
            .map(|_| {
                let v = src
                    .mask(&be, 0, &shape, 2, DType::F64)
                    .unwrap()
                    .unwrap()
                    .to_f64_vec();
                assert!(v.iter().all(|&x| x == v[0]) && (v[0] == 0.0 || v[0] == 1.0));
                v[0] == 0.0
            })
            .collect::<Vec<bool>>()
    };
    let skipped = draw(&modules);
    let n = skipped.iter().filter(|&&s| s).count();
    assert!(
        (70..=130).contains(&n),
        "{n} of 200 forwards skipped at p 0.5"
    );
    assert_eq!(
        draw(&modules.replay()),
        skipped,
        "a replay skips the same modules"
    );
    // Probabilities outside [0, 1) are errors naming them.
    for (rank_p, module_p, name) in [(1.0, 0.0, "rank_p"), (0.0, -0.5, "module_p")] {
        let e = LoraDropout::new(0.1, 1)
            .unwrap()
            .with_rank_and_module(rank_p, module_p)
            .expect_err("bad probability");
        assert!(e.to_string().contains(name), "{e}");
    }
}

/// The masks `LoraDropout` draws: 0 or exactly 1/(1−p), about a fraction p of zeros, the same
/// again on replay or from the same (p, seed), new ones on every draw; p = 0 draws none.
#[test]
fn dropout_source_masks() {
    let be = CpuBackend::f64();
    let shape = lorafuse::tensor::Shape::new([8, 64, 16]);
    let p = 0.3;
    let src = LoraDropout::new(p, 42).unwrap();
    let m1 = src.mask(&be, 5, &shape, 2, DType::F64).unwrap().unwrap();
    let m2 = src.mask(&be, 5, &shape, 2, DType::F64).unwrap().unwrap();
    assert_eq!(src.draws(), 2);
    assert_eq!(m1.shape(), &shape);
    assert_eq!(m1.dtype(), DType::F64);
    let v1 = m1.to_f64_vec();
    let keep = 1.0 / (1.0 - p);
    assert!(
        v1.iter().all(|&k| k == 0.0 || k == keep),
        "values 0 or 1/(1−p)"
    );
    let dropped = v1.iter().filter(|&&k| k == 0.0).count() as f64 / v1.len() as f64;
    assert!((dropped - p).abs() < 0.02, "dropped fraction {dropped}");
    let mean = v1.iter().sum::<f64>() / v1.len() as f64;
    assert!(
        (mean - 1.0).abs() < 0.03,
        "inverted dropout keeps the mean: {mean}"
    );
    assert_ne!(v1, m2.to_f64_vec(), "each draw is a new mask");
    // Replays, and a source from the same (p, seed), draw the same sequence.
    for again in [src.replay(), LoraDropout::new(p, 42).unwrap()] {
        assert_eq!(again.draws(), 0);
        let r1 = again.mask(&be, 5, &shape, 2, DType::F64).unwrap().unwrap();
        let r2 = again.mask(&be, 5, &shape, 2, DType::F64).unwrap().unwrap();
        assert_eq!(r1.to_f64_vec(), v1);
        assert_eq!(r2.to_f64_vec(), m2.to_f64_vec());
    }
    // Another seed, site or adapter: another mask.
    let other = |s: &LoraDropout, adapter| {
        s.mask(&be, adapter, &shape, 2, DType::F64)
            .unwrap()
            .unwrap()
            .to_f64_vec()
    };
    assert_ne!(other(&LoraDropout::new(p, 43).unwrap(), 5), v1);
    assert_ne!(other(&LoraDropout::new(p, 42).unwrap(), 6), v1);
    let a = LoraDropout::for_site(p, 42, &[4, 0, 1]).unwrap();
    let b = LoraDropout::for_site(p, 42, &[4, 0, 2]).unwrap();
    assert_ne!(a.seed(), b.seed());
    assert_eq!(
        a.seed(),
        LoraDropout::for_site(p, 42, &[4, 0, 1]).unwrap().seed()
    );
    // f32 masks hold 1/(1−p) rounded to f32.
    let m32 = LoraDropout::new(p, 42)
        .unwrap()
        .mask(&be, 5, &shape, 2, DType::F32)
        .unwrap()
        .unwrap();
    assert_eq!(m32.dtype(), DType::F32);
    assert!(m32
        .to_f32_vec()
        .iter()
        .all(|&k| k == 0.0 || k == keep as f32));
    // p = 0: no mask, nothing drawn.
    let none = LoraDropout::new(0.0, 42).unwrap();
    assert!(none.mask(&be, 5, &shape, 2, DType::F64).unwrap().is_none());
    assert_eq!(none.draws(), 0);
    // p outside [0, 1) is an error naming p.
    for bad in [1.0, 1.5, -0.1, f64::NAN, f64::INFINITY] {
        let e = LoraDropout::new(bad, 1).expect_err("bad p must fail");
        assert!(matches!(e, Error::BadValue { .. }), "{e}");
        assert!(e.to_string().contains("p"), "{e}");
    }
}
