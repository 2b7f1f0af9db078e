//! `cpu_precision: bf16` on the CPU backend against the f32 reference:
//! - linear and convolution (3x3 with stride and padding, 1x1), forward and input gradient,
//!   with a LoRA / LoCon attached: each element within bf16's bound of the f32 result,
//!   (2⁻⁷ + 2⁻¹⁶ + 2k·2⁻²⁴) times the same op on |x| and |w| (two roundings of up to 2⁻⁸, and
//!   both sides' f32 sums), and somewhere off the f32 result (the rounding took place);
//!   the adapter's hidden value and its weight gradients bit-identical (they stay f32);
//! - f64 tensors (the gradient checks' type) are never rounded;
//! - a weight changed in place between two products (the optimizer's way) gives the new
//!   weight's products, forward and input gradient: the panels kept with it go stale never;
//! - a short training run of the tiny SD1.5 fixture whose loss tracks f32's step by step
//!   (within 1% of the loss), whose first adapter gradients are within 2% of f32's (as a
//!   whole: the norm of the difference against the norm), and whose adapters move as f32's
//!   do within 15% (AdamW's first steps move each weight by about lr·sign(gradient), so a
//!   weight whose gradient is near 0 moves differently under any perturbation: measured 8%).
//!
//! Skipped, with a line saying so, only on a CPU without AVX512_BF16.

use lorafuse::backend::cpu::{gemm_bf16, CpuPrecision, Real};
use lorafuse::backend::prelude::*;
use lorafuse::backend::{Accum, Adapter, AdapterBackward, Conv2d, Lora, LoraBackward};
use lorafuse::lora::{LoraSet, LoraTargets};
use lorafuse::model::checkpoint::load_sd15;
use lorafuse::model::cond::{Cond, TextCond};
use lorafuse::model::layers::Ctx;
use lorafuse::model::unet::Unet;
use lorafuse::rng::Rng;
use lorafuse::sample::schedule::NoiseSchedule;
use lorafuse::train::optim::{AdamWSettings, OptimizerKind, ParamGroup};
use lorafuse::train::step::{denoise_micro_batch, MicroBatch, Objective};
use lorafuse::{CpuBackend, DType, Tensor};

fn skip() -> bool {
    if !gemm_bf16::available() {
        println!("SKIPPED: this CPU has no AVX512_BF16; cpu_precision: bf16 cannot run here");
        return true;
    }
    false
}

fn backends() -> (CpuBackend, CpuBackend) {
    let bf = CpuBackend::with_precision(CpuPrecision::Bf16).unwrap();
    assert_eq!(bf.precision(), CpuPrecision::Bf16);
    (CpuBackend::new(), bf)
}

fn randn(rng: &mut Rng, shape: &[usize], s: f64) -> Tensor {
    let n = shape.iter().product();
    let v: Vec<f32> = rng.normal_vec(n).iter().map(|&x| (x * s) as f32).collect();
    Tensor::from_f32(shape, v).unwrap()
}

fn abs(t: &Tensor) -> Tensor {
    let v: Vec<f32> = t.to_f64_vec().iter().map(|x| x.abs() as f32).collect();
    Tensor::from_f32(t.dims(), v).unwrap()
}

/// got (bf16) against want (f32) within (2⁻⁷ + 2⁻¹⁶ + 2k·2⁻²⁴)·scale elementwise, and not
/// equal to it everywhere.
fn assert_bf16_close(what: &str, got: &Tensor, want: &Tensor, scale: &Tensor, k: usize) {
    assert_eq!(got.dims(), want.dims(), "{what}");
    let (g, w, s) = (got.to_f64_vec(), want.to_f64_vec(), scale.to_f64_vec());
    let rel = 2f64.powi(-7) + 2f64.powi(-16) + 2.0 * k as f64 * 2f64.powi(-24);
    let mut differs = false;
    for (i, ((g, w), s)) in g.iter().zip(&w).zip(&s).enumerate() {
        let bound = rel * s * 1.01 + 1e-30;
        assert!(
            (g - w).abs() <= bound,
            "{what}[{i}]: bf16 {g} vs f32 {w} (bound {bound})"
        );
        differs |= g != w;
    }
    assert!(
        differs,
        "{what}: bf16 equals f32 everywhere: nothing was rounded"
    );
}

#[test]
fn linear_with_lora_stays_within_bf16s_bound_and_the_adapter_stays_f32() {
    if skip() {
        return;
    }
    let (f32be, bf) = backends();
    let mut rng = Rng::new(1);
    // [2, 19, 70] x [45, 70]ᵀ: partial register tiles, odd sizes, 3-D input.
    let (k, n, r) = (70, 45, 4);
    let x = randn(&mut rng, &[2, 19, k], 1.0);
    let w = randn(&mut rng, &[n, k], 0.2);
    let bias = randn(&mut rng, &[n], 1.0);
    let (a, b) = (randn(&mut rng, &[r, k], 0.3), randn(&mut rng, &[n, r], 0.3));
    let lora = || Lora {
        down: &a,
        up: &b,
        scale: 0.5,
        dropout: None,
    };
    let want = f32be
        .linear(&x, &w, Some(&bias), Some(Adapter::Lora(lora())))
        .unwrap();
    let got = bf
        .linear(&x, &w, Some(&bias), Some(Adapter::Lora(lora())))
        .unwrap();
    let scale = f32be.linear(&abs(&x), &abs(&w), None, None).unwrap().y;
    assert_bf16_close("linear y", &got.y, &want.y, &scale, k);
    let (hw, hg) = (want.lora_hidden.unwrap(), got.lora_hidden.unwrap());
    assert_eq!(
        hg.to_f64_vec(),
        hw.to_f64_vec(),
        "the adapter's hidden value"
    );

    let dy = randn(&mut rng, &[2, 19, n], 1.0);
    let grads = |be: &CpuBackend| {
        let (mut gd, mut gu) = (
            Tensor::zeros([r, k], DType::F32),
            Tensor::zeros([n, r], DType::F32),
        );
        let dx = be
            .linear_backward(
                &dy,
                &w,
                Some(AdapterBackward::Lora(LoraBackward {
                    lora: lora(),
                    x: &x,
                    hidden: &hw,
                    grad_down: &mut gd,
                    grad_up: &mut gu,
                    accum: Accum::Assign,
                })),
                true,
            )
            .unwrap()
            .unwrap();
        (dx, gd, gu)
    };
    let (dx_w, gd_w, gu_w) = grads(&f32be);
    let (dx_g, gd_g, gu_g) = grads(&bf);
    // dX = dY·W (+ the adapter's f32 term): bounded by |dY|·|W|.
    let wt = abs(&w);
    let scale = f32be
        .linear_backward(&abs(&dy), &wt, None, true)
        .unwrap()
        .unwrap();
    assert_bf16_close("linear dx", &dx_g, &dx_w, &scale, n);
    assert_eq!(
        gd_g.to_f64_vec(),
        gd_w.to_f64_vec(),
        "grad of the down weights"
    );
    assert_eq!(
        gu_g.to_f64_vec(),
        gu_w.to_f64_vec(),
        "grad of the up weights"
    );
}

#[test]
fn convolutions_stay_within_bf16s_bound_and_locon_stays_f32() {
    if skip() {
        return;
    }
    let (f32be, bf) = backends();
    let mut rng = Rng::new(2);
    for (k, stride, padding) in [(3, 2, 1), (3, 1, 1), (1, 1, 0)] {
        let p = Conv2d { stride, padding };
        let (c, o, r) = (5, 7, 3);
        let x = randn(&mut rng, &[2, c, 9, 8], 1.0);
        let w = randn(&mut rng, &[o, c, k, k], 0.3);
        let bias = randn(&mut rng, &[o], 1.0);
        let (a, b) = (
            randn(&mut rng, &[r, c, k, k], 0.3),
            randn(&mut rng, &[o, r, 1, 1], 0.3),
        );
        let lora = || Lora {
            down: &a,
            up: &b,
            scale: 0.7,
            dropout: None,
        };
        let what = format!("conv k{k} s{stride} p{padding}");
        let want = f32be
            .conv2d_out(&x, &w, Some(&bias), p, Some(Adapter::Lora(lora())))
            .unwrap();
        let got = bf
            .conv2d_out(&x, &w, Some(&bias), p, Some(Adapter::Lora(lora())))
            .unwrap();
        let scale = f32be
            .conv2d_out(&abs(&x), &abs(&w), None, p, None)
            .unwrap()
            .y;
        let ckk = c * k * k;
        assert_bf16_close(&format!("{what} y"), &got.y, &want.y, &scale, ckk);
        let hw = want.lora_hidden.unwrap();
        assert_eq!(got.lora_hidden.unwrap().to_f64_vec(), hw.to_f64_vec());

        let dy = randn(&mut rng, want.y.dims(), 1.0);
        let hwin = (9, 8);
        let grads = |be: &CpuBackend| {
            let (mut gd, mut gu) = (
                Tensor::zeros(a.dims(), DType::F32),
                Tensor::zeros(b.dims(), DType::F32),
            );
            let dx = be
                .conv2d_backward(
                    &dy,
                    &w,
                    hwin,
                    p,
                    Some(AdapterBackward::Lora(LoraBackward {
                        lora: lora(),
                        x: &x,
                        hidden: &hw,
                        grad_down: &mut gd,
                        grad_up: &mut gu,
                        accum: Accum::Assign,
                    })),
                )
                .unwrap();
            (dx, gd, gu)
        };
        let (dx_w, gd_w, gu_w) = grads(&f32be);
        let (dx_g, gd_g, gu_g) = grads(&bf);
        let scale = f32be
            .conv2d_input_grad(&abs(&dy), &abs(&w), hwin, p)
            .unwrap();
        assert_bf16_close(&format!("{what} dx"), &dx_g, &dx_w, &scale, o * k * k);
        // The input gradient without an adapter takes the same product.
        let plain = bf.conv2d_input_grad(&dy, &w, hwin, p).unwrap();
        let plain_f32 = f32be.conv2d_input_grad(&dy, &w, hwin, p).unwrap();
        assert_bf16_close(
            &format!("{what} dx plain"),
            &plain,
            &plain_f32,
            &scale,
            o * k * k,
        );
        assert_eq!(gd_g.to_f64_vec(), gd_w.to_f64_vec(), "{what} grad down");
        assert_eq!(gu_g.to_f64_vec(), gu_w.to_f64_vec(), "{what} grad up");
    }
}

#[test]
fn a_weight_changed_in_place_gives_the_new_products() {
    if skip() {
        return;
    }
    let (_, bf) = backends();
    let mut rng = Rng::new(3);
    let x = randn(&mut rng, &[2, 9, 30], 1.0);
    let dy = randn(&mut rng, &[2, 9, 20], 1.0);
    let xc = randn(&mut rng, &[1, 4, 6, 6], 1.0);
    let p = Conv2d {
        stride: 1,
        padding: 1,
    };
    let dyc = randn(&mut rng, &[1, 5, 6, 6], 1.0);
    let mut w = randn(&mut rng, &[20, 30], 0.3);
    let mut wc = randn(&mut rng, &[5, 4, 3, 3], 0.3);
    // Each product's bits: the weight's panels are packed on the first and kept.
    let products = |w: &Tensor, wc: &Tensor| {
        [
            bf.linear(&x, w, None, None).unwrap().y,
            bf.linear_backward(&dy, w, None, true).unwrap().unwrap(),
            bf.conv2d_out(&xc, wc, None, p, None).unwrap().y,
            bf.conv2d_input_grad(&dyc, wc, (6, 6), p).unwrap(),
        ]
        .map(|t| t.to_f64_vec())
    };
    let before = products(&w, &wc);
    assert_eq!(products(&w, &wc), before, "kept panels give the same bits");
    for t in [&mut w, &mut wc] {
        for v in f32::data_mut(t).unwrap().iter_mut().step_by(2) {
            *v *= -1.5;
        }
    }
    let after = products(&w, &wc);
    // The same elements in new tensors, which have never been packed.
    let fresh = |t: &Tensor| Tensor::from_f32(t.dims(), t.to_f32_vec()).unwrap();
    assert_eq!(after, products(&fresh(&w), &fresh(&wc)));
    for (i, (a, b)) in after.iter().zip(&before).enumerate() {
        assert_ne!(a, b, "product {i} did not change with its weight");
    }
}

#[test]
fn f64_is_never_rounded() {
    if skip() {
        return;
    }
    let (f32be, bf) = backends();
    let mut rng = Rng::new(3);
    let x = Tensor::from_f64([3, 5], rng.normal_vec(15)).unwrap();
    let w = Tensor::from_f64([4, 5], rng.normal_vec(20)).unwrap();
    let want = f32be.linear(&x, &w, None, None).unwrap().y;
    let got = bf.linear(&x, &w, None, None).unwrap().y;
    assert_eq!(got.dtype(), DType::F64);
    assert_eq!(got.to_f64_vec(), want.to_f64_vec());
}

#[test]
fn the_tiny_model_trains_in_bf16_as_in_f32() {
    if skip() {
        return;
    }
    let (f32be, bf) = backends();
    let (loss_f32, g_f32, lora_f32) = tiny_run(&f32be, 8);
    let (loss_bf, g_bf, lora_bf) = tiny_run(&bf, 8);
    println!("losses f32 {loss_f32:?}\nlosses bf16 {loss_bf:?}");
    for (i, (a, b)) in loss_f32.iter().zip(&loss_bf).enumerate() {
        assert!(
            (a - b).abs() <= 0.01 * a.abs(),
            "step {i}: loss bf16 {b} vs f32 {a}"
        );
    }
    assert_ne!(
        loss_f32, loss_bf,
        "bf16 ran exactly as f32: nothing was rounded"
    );
    let rel = |a: &[f64], b: &[f64]| {
        let d: f64 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
        d.sqrt() / a.iter().map(|x| x * x).sum::<f64>().sqrt()
    };
    let (g, moved) = (rel(&g_f32, &g_bf), rel(&lora_f32, &lora_bf));
    println!("first gradients: |bf16 - f32| / |f32| = {g:.5}; adapters' moves: {moved:.4}");
    assert!(
        g <= 0.02,
        "first step's adapter gradients differ by {g} of their norm"
    );
    assert!(
        moved <= 0.15,
        "the adapters' moves differ by {moved} of their norm"
    );
}

/// `steps` LoRA training steps (rank 4 on the transformer blocks, AdamW at 1e-3, batch 2)
/// of the tiny SD1.5 fixture's UNet on `be`, from the same seed whatever the backend: the
/// loss of each step, the first step's adapter gradients, and how far every adapter weight
/// moved from its start.
fn tiny_run(be: &CpuBackend, steps: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-sd15-diffusers");
    let ck = load_sd15(dir).unwrap();
    let unet = Unet::load(&ck.unet.0, &ck.unet.1, be, "unet").unwrap();
    let targets = unet.lora_targets(LoraTargets::Transformer);
    let mut rng = Rng::new(7);
    let mut lora = LoraSet::init(be, &targets, 4, 4.0, &mut rng).unwrap();
    let flat = |l: &LoraSet| -> Vec<f64> {
        l.modules()
            .iter()
            .flat_map(|m| [m.down.to_f64_vec(), m.up.to_f64_vec()])
            .flatten()
            .collect()
    };
    let start = flat(&lora);
    let adamw = OptimizerKind::AdamW(AdamWSettings::default());
    let mut opt = ParamGroup::new(be, "unet", &lora, 0..lora.len(), &adamw).unwrap();
    let mut grads = lora.zero_grads(be).unwrap();
    let lat = unet.config.sample_size;
    let latents = randn(&mut rng, &[2, 4, lat, lat], 1.0);
    let cond = Cond::text_only(TextCond {
        context: randn(&mut rng, &[2, 77, unet.config.cross_attention_dim], 1.0),
        pooled: None,
    });
    let obj = Objective::plain(NoiseSchedule::sd15());
    let (mut losses, mut first) = (Vec::new(), Vec::new());
    for _ in 0..steps {
        let batch = MicroBatch {
            latents: &latents,
            cond: &cond,
            grad_scale: 1.0,
            want_text_grad: false,
            loss_weights: None,
        };
        let cx = Ctx::new(be, Some(&lora));
        let out = denoise_micro_batch(&cx, &unet, &obj, &batch, &mut grads, &mut rng).unwrap();
        losses.push(out.loss);
        if first.is_empty() {
            first = grads
                .down
                .iter()
                .chain(&grads.up)
                .flat_map(|t| t.to_f64_vec())
                .collect();
        }
        opt.load_grads(be, &grads).unwrap();
        opt.update(be, 1e-3, 1.0, &mut lora).unwrap();
    }
    let moved = flat(&lora).iter().zip(&start).map(|(a, b)| a - b).collect();
    (losses, first, moved)
}
