//! The CUDA backend's linear layer with LoRA (kernels/linear.cu) against the CPU backend, in
//! the emulator and (when present) on the GPU: forward with and without bias, LoRA and dropout
//! mask; backward with each `Accum` (Add adds to nonzero gradients, Assign never reads its
//! NaN-filled ones), with and without dX; f32, f16 and bf16 activations (LoRA tensors f32 always);
//! odd sizes, batch dims, split-K reductions, SD1.5 layer shapes; and the errors.
#![cfg(any(feature = "cuda", feature = "cuda-emu"))]

use crate::common;

use common::cuda::*;
use lorafuse::backend::prelude::*;
use lorafuse::backend::{Accum, Adapter, AdapterBackward, Lora, LoraBackward};
use lorafuse::rng::Rng;
use lorafuse::{DType, Error, Tensor};

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
            lora.as_ref()
                .map(|(a, b, m)| Lora {
                    down: &a.0,
                    up: &b.0,
                    scale: SCALE,
                    dropout: m.as_ref().map(|m| &m.0),
                })
                .map(Adapter::Lora),
        )
        .unwrap();
    let got =
        e.be.linear(
            &xd,
            &wd,
            bias.as_ref().map(|b| &b.1),
            lora.as_ref()
                .map(|(a, b, m)| Lora {
                    down: &a.1,
                    up: &b.1,
                    scale: SCALE,
                    dropout: m.as_ref().map(|m| &m.1),
                })
                .map(Adapter::Lora),
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
        cpu()
            .linear_backward(&dyc, &wc, lb.map(AdapterBackward::Lora), dx)
            .unwrap()
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
        e.be.linear_backward(&dyd, &wd, lb.map(AdapterBackward::Lora), dx)
            .unwrap()
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

/// bf16 (compute capability 8.0 and later): the simple GEMM, against the CPU in f32 on the
/// same bf16-rounded inputs with `tol(DType::BF16)`.
#[test]
fn forward_odd_sizes_bf16() {
    forward_odd(DType::BF16);
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

#[test]
fn backward_odd_sizes_bf16() {
    backward_odd(DType::BF16);
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
            .linear(
                &xc,
                &wc,
                None,
                Some(Adapter::Lora(lora(&ac, &bc, Some(&bad_mc)))),
            )
            .err()
            .unwrap();
        let got =
            e.be.linear(
                &xd,
                &wd,
                None,
                Some(Adapter::Lora(lora(&ad, &bd, Some(&bad_md)))),
            )
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
                Some(AdapterBackward::Lora(LoraBackward {
                    lora: lora(&ac, &bc, None),
                    x: &xc,
                    hidden: &uc,
                    grad_down: &mut gdc,
                    grad_up: &mut guc,
                    accum: Accum::Add,
                })),
                true,
            )
            .err()
            .unwrap();
        let got =
            e.be.linear_backward(
                &dyd,
                &wd,
                Some(AdapterBackward::Lora(LoraBackward {
                    lora: lora(&ad, &bd, None),
                    x: &xd,
                    hidden: &ud,
                    grad_down: &mut gdd,
                    grad_up: &mut gud,
                    accum: Accum::Add,
                })),
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
            e.be.linear(&xd, &wd, None, Some(Adapter::Lora(lora(&ad, &bc, None))))
                .err()
                .unwrap();
        assert!(matches!(got, Error::Device { .. }), "B on the CPU: {got}");
        let (mut gdc, _) = f32p(&mut rng, &[2, 6]);
        let got =
            e.be.linear_backward(
                &dyd,
                &wd,
                Some(AdapterBackward::Lora(LoraBackward {
                    lora: lora(&ad, &bd, None),
                    x: &xd,
                    hidden: &ud,
                    grad_down: &mut gdc,
                    grad_up: &mut gud,
                    accum: Accum::Add,
                })),
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
            e.be.linear(&xd, &wd, None, Some(Adapter::Lora(lora(&a16, &bd, None))))
                .err()
                .unwrap();
        assert!(matches!(got, Error::DType { .. }), "f16 A: {got}");
        let x16 = e.be.cast(&xd, DType::F16).unwrap();
        let got = e.be.linear(&x16, &wd, None, None).err().unwrap();
        assert!(matches!(got, Error::DType { .. }), "f16 x, f32 w: {got}");
    }
}

// ---- The fast kernels (kernels/linear_fast.cu), f16 and bf16 ----
//
// Each case runs the f16 (or bf16) backend with fast GEMMs, its simple twin, and the CPU
// backend in f32 (the baseline) and f64 (the reference) on the same rounded inputs. f16 (bf16)
// outputs (y, dX) meet the f16 criterion (error vs f64 <= 2 x the f32 CPU's with its output
// rounded to f16, or bf16: `assert_criterion`); f32 outputs (ũ, dA, dB) match the f32 CPU
// within the f32 tolerance. Which path ran: with a LoRA the fast path's
// f32 outputs differ bitwise from the simple kernels' somewhere (other summation orders), and
// a declined shape gives the simple kernels' bits exactly. (Without a LoRA the emulator's mma
// sums in the simple kernel's order, so y alone cannot tell; the dispatch is the same branch.)

use lorafuse::backend::cuda::KernelChoice;

fn f64_of(t: &Tensor) -> Tensor {
    cpu().cast(t, DType::F64).unwrap()
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.to_f32_vec().iter().map(|x| x.to_bits()).collect()
}

/// Largest |got - reference| for an f32 output, and the f32 CPU's.
fn f32_errors(got: &Tensor, base: &Tensor, reference: &Tensor) -> (f64, f64) {
    let r = reference.to_f64_vec();
    let as64 = |t: &Tensor| -> Vec<f64> { t.to_f32_vec().iter().map(|&x| x as f64).collect() };
    (max_abs_diff(&as64(got), &r), max_abs_diff(&as64(base), &r))
}

/// The fast and simple backends of an f16 (or bf16) engine.
fn fast_and_simple(
    e: &Engine,
) -> (
    lorafuse::backend::cuda::CudaBackend,
    lorafuse::backend::cuda::CudaBackend,
) {
    (
        e.be.clone().with_kernels(KernelChoice::fast()),
        e.be.clone().with_kernels(KernelChoice::simple()),
    )
}

/// The largest rank the fast kernels take on `e`'s device (ops/linear/fast.rs): (forward,
/// backward) for sm_80's shared memory, for the 99 KiB of sm_86/sm_89 and for the 64 KiB of
/// sm_75.
fn max_fast_rank(e: &Engine) -> (usize, usize) {
    match e.be.device().limits().smem_per_block / 1024 {
        163.. => (192, 195),
        99.. => (98, 98),
        _ => (44, 48),
    }
}

/// The fast path runs when `in` is a multiple of 8 and the rank at most
/// [`max_fast_rank`]'s (forward).
fn fast_forward(e: &Engine, rng: &mut Rng, l: Layer) {
    let max_rank = max_fast_rank(e).0;
    let expect_fast = l.inf.is_multiple_of(8) && l.rank.is_none_or(|r| r <= max_rank);
    let dtype = e.be.compute_dtype();
    let what = format!("{} fast forward {dtype:?} {l:?}", e.be.name());
    let (fast, simple) = fast_and_simple(e);
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
    let host = |f64s: bool| {
        let c = |t: &Tensor| if f64s { f64_of(t) } else { t.clone() };
        let (x, w) = (c(&xc), c(&wc));
        let b = bias.as_ref().map(|b| c(&b.0));
        let lo = lora
            .as_ref()
            .map(|(a, bb, m)| (c(&a.0), c(&bb.0), m.as_ref().map(|m| c(&m.0))));
        cpu()
            .linear(
                &x,
                &w,
                b.as_ref(),
                lo.as_ref()
                    .map(|(a, bb, m)| Lora {
                        down: a,
                        up: bb,
                        scale: SCALE,
                        dropout: m.as_ref(),
                    })
                    .map(Adapter::Lora),
            )
            .unwrap()
    };
    let (base, reference) = (host(false), host(true));
    let dev = |be: &lorafuse::backend::cuda::CudaBackend| {
        be.linear(
            &xd,
            &wd,
            bias.as_ref().map(|b| &b.1),
            lora.as_ref()
                .map(|(a, b, m)| Lora {
                    down: &a.1,
                    up: &b.1,
                    scale: SCALE,
                    dropout: m.as_ref().map(|m| &m.1),
                })
                .map(Adapter::Lora),
        )
        .unwrap()
    };
    let (got, twin) = (dev(&fast), dev(&simple));
    let criterion = |name: &str, got: &Tensor| {
        assert_criterion(
            dtype,
            &format!("{what}: {name}"),
            got,
            &base.y,
            &reference.y,
        )
    };
    let ((fe, be_), (se, _)) = (criterion("y", &got.y), criterion("simple y", &twin.y));
    println!(
        "{what}: y max err vs f64: fast {fe:.3e}, simple {se:.3e}, f32 CPU ({dtype:?}-rounded) \
         {be_:.3e}"
    );
    assert_matches(
        &format!("{what}: y vs simple"),
        &got.y,
        &twin.y,
        tol_for(dtype, &twin.y),
    );
    if let (Some(g), Some(b), Some(r), Some(s)) = (
        &got.lora_hidden,
        &base.lora_hidden,
        &reference.lora_hidden,
        &twin.lora_hidden,
    ) {
        assert_matches(&format!("{what}: hidden"), g, b, tol_for(DType::F32, b));
        let (ge, bse) = f32_errors(g, b, r);
        println!("{what}: hidden max err vs f64: fast {ge:.3e}, f32 CPU {bse:.3e}");
        if expect_fast {
            assert_ne!(
                bits(g),
                bits(s),
                "{what}: hidden bitwise equal to the simple kernels'"
            );
        }
    }
    if !expect_fast {
        assert_eq!(
            bits(&got.y),
            bits(&twin.y),
            "{what}: declined, yet y differs from simple"
        );
        if let (Some(g), Some(s)) = (&got.lora_hidden, &twin.lora_hidden) {
            assert_eq!(
                bits(g),
                bits(s),
                "{what}: declined, yet hidden differs from simple"
            );
        }
    }
}

/// The fast path runs when `in` and `out` are multiples of 8 and the rank at most 195
/// (backward).
fn fast_backward(e: &Engine, rng: &mut Rng, l: Layer, accum: Accum, dx: bool) {
    let max_rank = max_fast_rank(e).1;
    let expect_fast =
        l.inf.is_multiple_of(8) && l.outf.is_multiple_of(8) && l.rank.is_none_or(|r| r <= max_rank);
    let dtype = e.be.compute_dtype();
    let what = format!(
        "{} fast backward {dtype:?} {l:?} {accum:?} want_dx {dx}",
        e.be.name()
    );
    let (fast, simple) = fast_and_simple(e);
    let (dyc, dyd) = random_pair(&e.be, rng, &with_last(l.lead, l.outf), dtype);
    let (wc, wd) = random_pair(&e.be, rng, &[l.outf, l.inf], dtype);
    let (xc, xd) = random_pair(&e.be, rng, &with_last(l.lead, l.inf), dtype);
    let lora = l.rank.map(|r| {
        let a = random_pair(&e.be, rng, &[r, l.inf], DType::F32);
        let b = random_pair(&e.be, rng, &[l.outf, r], DType::F32);
        let u = random_pair(&e.be, rng, &with_last(l.lead, r), DType::F32);
        let m = l
            .dropout
            .then(|| mask_pair(e, rng, &with_last(l.lead, r), dtype));
        let gd0 = nonzero(rng, r * l.inf);
        let gu0 = nonzero(rng, l.outf * r);
        (a, b, u, m, gd0, gu0, r)
    });
    // (dx, grad_down, grad_up) on the host in f32 or f64.
    let host = |f64s: bool| {
        let c = |t: &Tensor| if f64s { f64_of(t) } else { t.clone() };
        let (dy, w, x) = (c(&dyc), c(&wc), c(&xc));
        let mut grads = lora.as_ref().map(|(_, _, _, _, gd0, gu0, r)| {
            (
                c(&Tensor::from_f32([*r, l.inf], gd0.clone()).unwrap()),
                c(&Tensor::from_f32([l.outf, *r], gu0.clone()).unwrap()),
            )
        });
        let ops = lora
            .as_ref()
            .map(|(a, b, u, m, ..)| (c(&a.0), c(&b.0), c(&u.0), m.as_ref().map(|m| c(&m.0))));
        let lb = match (&ops, grads.as_mut()) {
            (Some((a, b, u, m)), Some((gd, gu))) => Some(AdapterBackward::Lora(LoraBackward {
                lora: Lora {
                    down: a,
                    up: b,
                    scale: SCALE,
                    dropout: m.as_ref(),
                },
                x: &x,
                hidden: u,
                grad_down: gd,
                grad_up: gu,
                accum,
            })),
            _ => None,
        };
        let d = cpu().linear_backward(&dy, &w, lb, dx).unwrap();
        (d, grads)
    };
    let dev = |be: &lorafuse::backend::cuda::CudaBackend| {
        let mut grads = lora.as_ref().map(|(_, _, _, _, gd0, gu0, r)| {
            let start = |v: &[f32]| match accum {
                Accum::Add => v.to_vec(),
                Accum::Assign => vec![f32::NAN; v.len()],
            };
            (
                e.be.tensor_from_f32(&[*r, l.inf], &start(gd0), DType::F32)
                    .unwrap(),
                e.be.tensor_from_f32(&[l.outf, *r], &start(gu0), DType::F32)
                    .unwrap(),
            )
        });
        let lb = match (&lora, grads.as_mut()) {
            (Some((a, b, u, m, ..)), Some((gd, gu))) => Some(AdapterBackward::Lora(LoraBackward {
                lora: Lora {
                    down: &a.1,
                    up: &b.1,
                    scale: SCALE,
                    dropout: m.as_ref().map(|m| &m.1),
                },
                x: &xd,
                hidden: &u.1,
                grad_down: gd,
                grad_up: gu,
                accum,
            })),
            _ => None,
        };
        let d = be.linear_backward(&dyd, &wd, lb, dx).unwrap();
        (d, grads)
    };
    let ((bdx, bgr), (rdx, rgr)) = (host(false), host(true));
    let ((gdx, ggr), (sdx, sgr)) = (dev(&fast), dev(&simple));
    match (&gdx, &sdx, &bdx, &rdx) {
        (Some(g), Some(s), Some(b), Some(r)) => {
            let (fe, be_) = assert_criterion(dtype, &format!("{what}: dx"), g, b, r);
            let (se, _) = assert_criterion(dtype, &format!("{what}: simple dx"), s, b, r);
            println!(
                "{what}: dx max err vs f64: fast {fe:.3e}, simple {se:.3e}, f32 CPU \
                 ({dtype:?}-rounded) {be_:.3e}"
            );
            assert_matches(&format!("{what}: dx vs simple"), g, s, tol_for(dtype, s));
            if !expect_fast {
                assert_eq!(
                    bits(g),
                    bits(s),
                    "{what}: declined, yet dx differs from simple"
                );
            }
        }
        (None, None, None, None) => assert!(!dx, "{what}: dx missing"),
        _ => panic!("{what}: dx present on some sides only"),
    }
    if let (Some((gd, gu)), Some((sd, su)), Some((bd, bu)), Some((rd, ru))) =
        (&ggr, &sgr, &bgr, &rgr)
    {
        for (name, g, s, b, r) in [("grad_down", gd, sd, bd, rd), ("grad_up", gu, su, bu, ru)] {
            assert_matches(&format!("{what}: {name}"), g, b, tol_for(DType::F32, b));
            assert_matches(
                &format!("{what}: {name} vs simple"),
                g,
                s,
                tol_for(DType::F32, s),
            );
            let (ge, bse) = f32_errors(g, b, r);
            let (se, _) = f32_errors(s, b, r);
            println!(
                "{what}: {name} max err vs f64: fast {ge:.3e}, simple {se:.3e}, f32 CPU {bse:.3e}"
            );
            if !expect_fast {
                assert_eq!(
                    bits(g),
                    bits(s),
                    "{what}: declined, yet {name} differs from simple"
                );
            }
        }
        if expect_fast {
            assert!(
                bits(gd) != bits(sd) || bits(gu) != bits(su),
                "{what}: LoRA gradients bitwise equal to the simple kernels'"
            );
        }
    }
}

const fn layer(
    lead: &'static [usize],
    inf: usize,
    outf: usize,
    rank: Option<usize>,
    bias: bool,
    dropout: bool,
) -> Layer<'static> {
    Layer {
        lead,
        inf,
        outf,
        rank,
        bias,
        dropout,
    }
}

/// Tails in every dimension (M = 37, K = 40 = 32 + 8, N = 72 = 64 + 8, odd N), ranks 4 and 8,
/// with and without bias, LoRA and dropout mask; the 64x64 tile.
const FAST_TAILS: [Layer<'static>; 5] = [
    layer(&[37], 40, 72, Some(4), true, true),
    layer(&[37], 40, 72, Some(8), false, false),
    layer(&[37], 40, 72, None, true, false),
    layer(&[37], 40, 71, Some(8), true, true),
    layer(&[1, 37], 72, 40, Some(4), false, true),
];

/// SD1.5-like: 320 -> 320 attention projections on a few hundred tokens (128x128 tiles in the
/// emulator), GEGLU 320 -> 2560 (and its backward 2560 -> 320), 640 -> 1280, 640 -> 256 with
/// 128x64 tiles.
const FAST_SD: [Layer<'static>; 4] = [
    layer(&[2, 130], 320, 320, Some(8), true, true),
    layer(&[1, 40], 320, 2560, Some(4), true, false),
    layer(&[1, 24], 640, 1280, Some(8), true, true),
    layer(&[100], 640, 256, Some(16), false, true),
];

/// Shapes the fast path declines (row lengths not a multiple of 8 halves; a rank whose
/// shared memory fits no tile): the simple kernels' results, bit for bit.
const FAST_DECLINED: [Layer<'static>; 3] = [
    layer(&[37], 45, 72, Some(4), true, true),
    layer(&[37], 40, 29, Some(4), true, true),
    layer(&[37], 40, 72, Some(200), true, true),
];

/// Ranks that are not a multiple of 4 or of the block's threads, and one above the largest
/// tiles' shared memory (the 64x64 tile serves it).
const FAST_RANKS: [Layer<'static>; 3] = [
    layer(&[37], 40, 72, Some(3), true, true),
    layer(&[2, 37], 40, 72, Some(72), false, true),
    layer(&[140], 40, 272, Some(130), true, false),
];

#[test]
fn fast_forward_tails_f16() {
    let mut rng = Rng::new(21);
    for e in engines(DType::F16) {
        for l in FAST_TAILS {
            fast_forward(&e, &mut rng, l);
        }
        // The backward declines out = 29; the forward only needs in % 8 == 0.
        for l in FAST_DECLINED.into_iter().chain(FAST_RANKS) {
            fast_forward(&e, &mut rng, l);
        }
    }
}

#[test]
fn fast_backward_tails_f16() {
    let mut rng = Rng::new(22);
    for e in engines(DType::F16) {
        for l in FAST_TAILS {
            for accum in [Accum::Assign, Accum::Add] {
                for dx in [true, false] {
                    if l.rank.is_none() && (!dx || accum == Accum::Add) {
                        continue;
                    }
                    fast_backward(&e, &mut rng, l, accum, dx);
                }
            }
        }
        for l in FAST_DECLINED.into_iter().chain(FAST_RANKS) {
            fast_backward(&e, &mut rng, l, Accum::Add, true);
        }
    }
}

/// The emulator held to an RTX 3060's limits (sm_86, 99 KiB of shared memory per block):
/// ranks the A100's tiles take but the 3060's do not fall back to the simple kernels, the
/// others take the smaller tiles that fit; every result as on the CPU.
#[cfg(feature = "cuda-emu")]
#[test]
fn fast_kernels_under_an_rtx_3060s_limits_f16() {
    use lorafuse::backend::cuda::{CudaBackend, Device, DeviceLimits};
    let limits = DeviceLimits::profile("RTX 3060").unwrap();
    let e = Engine {
        be: CudaBackend::new(Device::emulating(limits), DType::F16).unwrap(),
        gpu: false,
    };
    let mut rng = Rng::new(24);
    for l in FAST_RANKS
        .into_iter()
        .chain([layer(&[130], 64, 96, Some(96), true, false)])
    {
        fast_forward(&e, &mut rng, l);
        fast_backward(&e, &mut rng, l, Accum::Add, true);
    }
}

/// The emulator as a T4 (sm_75: m16n8k16 as two m16n8k8, synchronous copies; 64 KiB of
/// shared memory per block): ranks up to 44 (forward) and 48 (backward) on the tensor-core
/// GEMM, larger ones on the simple kernels; every result as on the CPU.
#[cfg(feature = "cuda-emu")]
#[test]
fn fast_kernels_on_turing_f16() {
    let e = Engine {
        be: emulating("T4", DType::F16),
        gpu: false,
    };
    let mut rng = Rng::new(25);
    for l in FAST_RANKS.into_iter().chain([
        layer(&[130], 64, 96, Some(44), true, false),
        layer(&[70], 64, 96, Some(46), false, true),
        layer(&[2, 37], 320, 64, None, true, false),
    ]) {
        fast_forward(&e, &mut rng, l);
        fast_backward(&e, &mut rng, l, Accum::Add, true);
    }
    assert_turing_path("linear", &e.be, true);
}

#[test]
fn fast_sd15_like_f16() {
    let mut rng = Rng::new(23);
    for e in engines(DType::F16) {
        let full = [
            layer(&[2, 4096], 320, 320, Some(8), true, true),
            layer(&[2, 4096], 320, 2560, Some(32), true, false),
            layer(&[2, 1024], 1280, 5120, Some(16), true, true),
            layer(&[2, 77], 768, 320, Some(8), false, false),
        ];
        let layers: Vec<Layer> = if e.gpu {
            FAST_SD.iter().chain(full.iter()).copied().collect()
        } else {
            FAST_SD.to_vec()
        };
        for l in layers {
            fast_forward(&e, &mut rng, l);
            fast_backward(&e, &mut rng, l, Accum::Add, true);
        }
        // The backward without dX (g only from the dY pass).
        fast_backward(&e, &mut rng, FAST_SD[0], Accum::Assign, false);
    }
}

/// bf16 on the fast kernels (compute capability 8.0+: the emulator's A100, or the GPU): tails
/// in every dimension, ranks 4 and 8, an SD1.5-like 640 -> 256 layer at rank 16, forward and
/// backward (with and without dX) by the criterion with the baseline rounded to bf16, the LoRA
/// gradients as the f32 CPU's; a shape the fast path declines gives the simple kernels' bits.
/// The launches were the `_bf16` GEMM and LoRA-gradient kernels, on tensor cores.
#[test]
fn fast_kernels_bf16() {
    let mut rng = Rng::new(26);
    for e in engines(DType::BF16) {
        for l in [FAST_TAILS[0], FAST_TAILS[3], FAST_TAILS[4], FAST_SD[3]] {
            fast_forward(&e, &mut rng, l);
            fast_backward(&e, &mut rng, l, Accum::Add, true);
        }
        fast_backward(&e, &mut rng, FAST_TAILS[1], Accum::Assign, false);
        fast_forward(&e, &mut rng, FAST_DECLINED[0]);
        let launches = assert_bf16_fast_path("linear bf16", &e.be, &["linear_fast_"], true);
        for k in ["_nk_bf16", "_kn_bf16", "linear_fast_lora_grad_bf16"] {
            assert!(
                launches.keys().any(|n| n.ends_with(k)),
                "no {k} launch: {launches:?}"
            );
        }
    }
}
