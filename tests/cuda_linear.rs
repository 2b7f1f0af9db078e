//! The CUDA backend's linear layer with LoRA (kernels/linear.cu) against the CPU backend, in
//! the emulator and (when present) on the GPU: forward with and without bias, LoRA and dropout
//! mask; backward with each `Accum` (Add adds to nonzero gradients, Assign never reads its
//! NaN-filled ones), with and without dX; f32 and f16 activations (LoRA tensors f32 always);
//! odd sizes, batch dims, split-K reductions, SD1.5 layer shapes; and the errors.
#![cfg(any(feature = "cuda", feature = "cuda-emu"))]

mod common;

use common::cuda::*;
use lorafuse::backend::{Accum, Lora, LoraBackward};
use lorafuse::rng::Rng;
use lorafuse::{Backend, DType, Error, Tensor};

/// One linear layer's configuration.
#[derive(Clone, Copy, Debug)]
struct Layer<'a> {
    /// x's leading dims (rows = their product).
    lead: &'a [usize],
    inf: usize,
    outf: usize,
    /// LoRA rank (None: no LoRA).
    rank: Option<usize>,
    bias: bool,
    dropout: bool,
}

fn with_last(lead: &[usize], last: usize) -> Vec<usize> {
    let mut s = lead.to_vec();
    s.push(last);
    s
}

/// A dropout keep mask with p = 0.25: each element 0 or 1/(1-p), in `dtype` (1/(1-p) = 4/3
/// is not exact in f16: `pair` gives the CPU the rounded value the device holds).
fn mask_pair(e: &Engine, rng: &mut Rng, shape: &[usize], dtype: DType) -> (Tensor, Tensor) {
    let n = shape.iter().product();
    let v: Vec<f32> = rng
        .uniform_vec(n, 0.0, 1.0)
        .into_iter()
        .map(|u| if u < 0.25 { 0.0 } else { 1.0 / 0.75 })
        .collect();
    pair(&e.be, shape, &v, dtype)
}

/// The tolerance of `dtype`, with the absolute part at least 2e-5 × the rms of `want`: an
/// output element that is a sum of many terms carries the f32 rounding error of those terms
/// (on both sides, in different summation orders), which scales with the output's typical
/// size, not with the element itself (a near-cancelling sum is tiny but as inexact).
fn tol_for(dtype: DType, want: &Tensor) -> (f64, f64) {
    let (rtol, atol) = tol(dtype);
    let v = want.to_f32_vec();
    let rms = (v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / v.len().max(1) as f64).sqrt();
    (rtol, atol.max(2e-5 * rms))
}

const SCALE: f64 = 0.75;

fn check_forward(e: &Engine, rng: &mut Rng, dtype: DType, l: Layer) {
    let what = format!("{} {dtype:?} {l:?}", e.be.name());
    let (xc, xd) = random_pair(&e.be, rng, &with_last(l.lead, l.inf), dtype);
    let (wc, wd) = random_pair(&e.be, rng, &[l.outf, l.inf], dtype);
    let bias = l.bias.then(|| random_pair(&e.be, rng, &[l.outf], dtype));
    let lora = l.rank.map(|r| {
        let a = random_pair(&e.be, rng, &[r, l.inf], DType::F32);
        let b = random_pair(&e.be, rng, &[l.outf, r], DType::F32);
        let m = l
            .dropout
            .then(|| mask_pair(e, rng, &with_last(l.lead, r), dtype));
        (a, b, m)
    });
    let want = cpu()
        .linear(
            &xc,
            &wc,
            bias.as_ref().map(|b| &b.0),
            lora.as_ref().map(|(a, b, m)| Lora {
                down: &a.0,
                up: &b.0,
                scale: SCALE,
                dropout: m.as_ref().map(|m| &m.0),
            }),
        )
        .unwrap();
    let got =
        e.be.linear(
            &xd,
            &wd,
            bias.as_ref().map(|b| &b.1),
            lora.as_ref().map(|(a, b, m)| Lora {
                down: &a.1,
                up: &b.1,
                scale: SCALE,
                dropout: m.as_ref().map(|m| &m.1),
            }),
        )
        .unwrap();
    assert_eq!(got.y.dtype(), dtype, "{what}: y dtype");
    assert_matches(
        &format!("{what}: y"),
        &got.y,
        &want.y,
        tol_for(dtype, &want.y),
    );
    match (&got.lora_hidden, &want.lora_hidden) {
        (None, None) => assert!(l.rank.is_none(), "{what}: no hidden"),
        (Some(g), Some(w)) => {
            assert_eq!(g.dtype(), DType::F32, "{what}: hidden is f32");
            // f32 products of the same (f16-rounded) inputs on both sides.
            assert_matches(&format!("{what}: hidden"), g, w, tol_for(DType::F32, w));
        }
        _ => panic!("{what}: lora_hidden present on one side only"),
    }
}

fn check_backward(e: &Engine, rng: &mut Rng, dtype: DType, l: Layer, accum: Accum, dx: bool) {
    let what = format!("{} {dtype:?} {l:?} {accum:?} want_dx {dx}", e.be.name());
    let (dyc, dyd) = random_pair(&e.be, rng, &with_last(l.lead, l.outf), dtype);
    let (wc, wd) = random_pair(&e.be, rng, &[l.outf, l.inf], dtype);
    let (xc, xd) = random_pair(&e.be, rng, &with_last(l.lead, l.inf), dtype);
    let mut lora = l.rank.map(|r| {
        let a = random_pair(&e.be, rng, &[r, l.inf], DType::F32);
        let b = random_pair(&e.be, rng, &[l.outf, r], DType::F32);
        let u = random_pair(&e.be, rng, &with_last(l.lead, r), DType::F32);
        let m = l
            .dropout
            .then(|| mask_pair(e, rng, &with_last(l.lead, r), dtype));
        // The gradients start nonzero on the CPU (Add must add to them). On the device, Add
        // starts from the same values and Assign from NaN: it must overwrite without reading.
        let gd0 = nonzero(rng, r * l.inf);
        let gu0 = nonzero(rng, l.outf * r);
        let dev_start = |v: &[f32]| match accum {
            Accum::Add => v.to_vec(),
            Accum::Assign => vec![f32::NAN; v.len()],
        };
        let gd = (
            Tensor::from_f32([r, l.inf], gd0.clone()).unwrap(),
            e.be.tensor_from_f32(&[r, l.inf], &dev_start(&gd0), DType::F32)
                .unwrap(),
        );
        let gu = (
            Tensor::from_f32([l.outf, r], gu0.clone()).unwrap(),
            e.be.tensor_from_f32(&[l.outf, r], &dev_start(&gu0), DType::F32)
                .unwrap(),
        );
        (a, b, u, m, gd, gu)
    });
    let want = {
        let lb = lora.as_mut().map(|(a, b, u, m, gd, gu)| LoraBackward {
            lora: Lora {
                down: &a.0,
                up: &b.0,
                scale: SCALE,
                dropout: m.as_ref().map(|m| &m.0),
            },
            x: &xc,
            hidden: &u.0,
            grad_down: &mut gd.0,
            grad_up: &mut gu.0,
            accum,
        });
        cpu().linear_backward(&dyc, &wc, lb, dx).unwrap()
    };
    let got = {
        let lb = lora.as_mut().map(|(a, b, u, m, gd, gu)| LoraBackward {
            lora: Lora {
                down: &a.1,
                up: &b.1,
                scale: SCALE,
                dropout: m.as_ref().map(|m| &m.1),
            },
            x: &xd,
            hidden: &u.1,
            grad_down: &mut gd.1,
            grad_up: &mut gu.1,
            accum,
        });
        e.be.linear_backward(&dyd, &wd, lb, dx).unwrap()
    };
    match (&got, &want) {
        (None, None) => assert!(!dx, "{what}: dx missing"),
        (Some(g), Some(w)) => {
            assert_eq!(g.dtype(), dtype, "{what}: dx dtype");
            assert_matches(&format!("{what}: dx"), g, w, tol_for(dtype, w));
        }
        _ => panic!("{what}: dx present on one side only"),
    }
    if let Some((_, _, _, _, gd, gu)) = &lora {
        // f32 reductions over all rows of the same (f16-rounded) inputs on both sides.
        assert_matches(
            &format!("{what}: grad_down"),
            &gd.1,
            &gd.0,
            tol_for(DType::F32, &gd.0),
        );
        assert_matches(
            &format!("{what}: grad_up"),
            &gu.1,
            &gu.0,
            tol_for(DType::F32, &gu.0),
        );
    }
}

/// Odd sizes: a tail in every launch dimension (rows, in, out, rank), batch dims, and a rank
/// above one 64-wide tile.
const ODD: [Layer<'static>; 6] = [
    Layer {
        lead: &[37],
        inf: 45,
        outf: 29,
        rank: None,
        bias: false,
        dropout: false,
    },
    Layer {
        lead: &[37],
        inf: 45,
        outf: 29,
        rank: None,
        bias: true,
        dropout: false,
    },
    Layer {
        lead: &[2, 37],
        inf: 45,
        outf: 29,
        rank: Some(3),
        bias: true,
        dropout: false,
    },
    Layer {
        lead: &[2, 37],
        inf: 45,
        outf: 29,
        rank: Some(3),
        bias: false,
        dropout: true,
    },
    Layer {
        lead: &[5],
        inf: 3,
        outf: 77,
        rank: Some(5),
        bias: true,
        dropout: true,
    },
    Layer {
        lead: &[3, 50],
        inf: 70,
        outf: 130,
        rank: Some(65),
        bias: true,
        dropout: true,
    },
];

fn forward_odd(dtype: DType) {
    let mut rng = Rng::new(11);
    for e in engines(dtype) {
        for l in ODD {
            check_forward(&e, &mut rng, dtype, l);
        }
    }
}

#[test]
fn forward_odd_sizes_f32() {
    forward_odd(DType::F32);
}

#[test]
fn forward_odd_sizes_f16() {
    forward_odd(DType::F16);
}

fn backward_odd(dtype: DType) {
    let mut rng = Rng::new(12);
    for e in engines(dtype) {
        for l in ODD {
            if l.rank.is_none() {
                check_backward(&e, &mut rng, dtype, l, Accum::Assign, true);
                check_backward(&e, &mut rng, dtype, l, Accum::Assign, false);
                continue;
            }
            for accum in [Accum::Assign, Accum::Add] {
                for dx in [true, false] {
                    check_backward(&e, &mut rng, dtype, l, accum, dx);
                }
            }
        }
    }
}

#[test]
fn backward_odd_sizes_f32() {
    backward_odd(DType::F32);
}

#[test]
fn backward_odd_sizes_f16() {
    backward_odd(DType::F16);
}

/// SD1.5 layers: a 320-channel attention projection (to_q / to_out / proj_in) on 2 × 64
/// tokens, cross-attention's to_k on the 77-token 768-wide text context, and the GEGLU
/// projection 320 -> 2560; on a GPU at 64x64 latents (4096 tokens), ranks 8 and 32.
fn sd15(dtype: DType) {
    let mut rng = Rng::new(13);
    for e in engines(dtype) {
        let layers: Vec<Layer> = if e.gpu {
            vec![
                Layer {
                    lead: &[2, 4096],
                    inf: 320,
                    outf: 320,
                    rank: Some(8),
                    bias: true,
                    dropout: true,
                },
                Layer {
                    lead: &[2, 4096],
                    inf: 320,
                    outf: 2560,
                    rank: Some(32),
                    bias: true,
                    dropout: false,
                },
                Layer {
                    lead: &[2, 77],
                    inf: 768,
                    outf: 320,
                    rank: Some(8),
                    bias: false,
                    dropout: false,
                },
            ]
        } else {
            vec![
                Layer {
                    lead: &[2, 64],
                    inf: 320,
                    outf: 320,
                    rank: Some(8),
                    bias: true,
                    dropout: true,
                },
                Layer {
                    lead: &[1, 77],
                    inf: 768,
                    outf: 320,
                    rank: Some(8),
                    bias: false,
                    dropout: false,
                },
                Layer {
                    lead: &[1, 16],
                    inf: 320,
                    outf: 2560,
                    rank: Some(32),
                    bias: true,
                    dropout: false,
                },
            ]
        };
        for l in layers {
            check_forward(&e, &mut rng, dtype, l);
            check_backward(&e, &mut rng, dtype, l, Accum::Add, true);
        }
    }
}

#[test]
fn sd15_layers_f32() {
    sd15(DType::F32);
}

#[test]
fn sd15_layers_f16() {
    sd15(DType::F16);
}

fn kind(e: &Error) -> std::mem::Discriminant<Error> {
    std::mem::discriminant(e)
}

#[test]
fn errors() {
    let mut rng = Rng::new(14);
    for e in engines(DType::F32) {
        let f32p = |rng: &mut Rng, s: &[usize]| random_pair(&e.be, rng, s, DType::F32);
        let (xc, xd) = f32p(&mut rng, &[4, 6]);
        let (wc, wd) = f32p(&mut rng, &[3, 6]);
        let (bad_wc, bad_wd) = f32p(&mut rng, &[3, 5]);
        let (ac, ad) = f32p(&mut rng, &[2, 6]);
        let (bc, bd) = f32p(&mut rng, &[3, 2]);
        let (dyc, dyd) = f32p(&mut rng, &[4, 3]);
        let (uc, ud) = f32p(&mut rng, &[4, 2]);
        let (bad_mc, bad_md) = f32p(&mut rng, &[4, 3]);

        // Bad shapes: the same error kind as the CPU backend.
        let want = cpu().linear(&xc, &bad_wc, None, None).err().unwrap();
        let got = e.be.linear(&xd, &bad_wd, None, None).err().unwrap();
        assert_eq!(kind(&got), kind(&want), "w: {got} vs {want}");
        assert!(matches!(got, Error::ShapeMismatch { .. }), "{got}");
        let lora = |a, b, m| Lora {
            down: a,
            up: b,
            scale: 1.0,
            dropout: m,
        };
        let want = cpu()
            .linear(&xc, &wc, None, Some(lora(&ac, &bc, Some(&bad_mc))))
            .err()
            .unwrap();
        let got =
            e.be.linear(&xd, &wd, None, Some(lora(&ad, &bd, Some(&bad_md))))
                .err()
                .unwrap();
        assert_eq!(kind(&got), kind(&want), "mask: {got} vs {want}");
        let want = cpu().linear(&xc, &wc, Some(&ac), None).err().unwrap();
        let got = e.be.linear(&xd, &wd, Some(&ad), None).err().unwrap();
        assert_eq!(kind(&got), kind(&want), "bias: {got} vs {want}");
        let (mut gdc, mut gdd) = f32p(&mut rng, &[2, 5]); // A is [2, 6]
        let (mut guc, mut gud) = f32p(&mut rng, &[3, 2]);
        let want = cpu()
            .linear_backward(
                &dyc,
                &wc,
                Some(LoraBackward {
                    lora: lora(&ac, &bc, None),
                    x: &xc,
                    hidden: &uc,
                    grad_down: &mut gdc,
                    grad_up: &mut guc,
                    accum: Accum::Add,
                }),
                true,
            )
            .err()
            .unwrap();
        let got =
            e.be.linear_backward(
                &dyd,
                &wd,
                Some(LoraBackward {
                    lora: lora(&ad, &bd, None),
                    x: &xd,
                    hidden: &ud,
                    grad_down: &mut gdd,
                    grad_up: &mut gud,
                    accum: Accum::Add,
                }),
                true,
            )
            .err()
            .unwrap();
        assert_eq!(kind(&got), kind(&want), "grad_down: {got} vs {want}");
        assert!(matches!(got, Error::ShapeMismatch { .. }), "{got}");

        // A CPU tensor handed to the CUDA backend.
        let got = e.be.linear(&xc, &wd, None, None).err().unwrap();
        assert!(matches!(got, Error::Device { .. }), "x on the CPU: {got}");
        let got =
            e.be.linear(&xd, &wd, None, Some(lora(&ad, &bc, None)))
                .err()
                .unwrap();
        assert!(matches!(got, Error::Device { .. }), "B on the CPU: {got}");
        let (mut gdc, _) = f32p(&mut rng, &[2, 6]);
        let got =
            e.be.linear_backward(
                &dyd,
                &wd,
                Some(LoraBackward {
                    lora: lora(&ad, &bd, None),
                    x: &xd,
                    hidden: &ud,
                    grad_down: &mut gdc,
                    grad_up: &mut gud,
                    accum: Accum::Add,
                }),
                true,
            )
            .err()
            .unwrap();
        assert!(
            matches!(got, Error::Device { .. }),
            "grad_down on the CPU: {got}"
        );

        // LoRA weights are f32 on the CUDA backend, also next to f16 activations.
        let a16 = e.be.cast(&ad, DType::F16).unwrap();
        let got =
            e.be.linear(&xd, &wd, None, Some(lora(&a16, &bd, None)))
                .err()
                .unwrap();
        assert!(matches!(got, Error::DType { .. }), "f16 A: {got}");
        let x16 = e.be.cast(&xd, DType::F16).unwrap();
        let got = e.be.linear(&x16, &wd, None, None).err().unwrap();
        assert!(matches!(got, Error::DType { .. }), "f16 x, f32 w: {got}");
    }
}
