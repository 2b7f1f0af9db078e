//! The whole tiny UNet's LoRA backward against finite differences in f64: the fixture model and
//! its kohya LoRA, loaded in double precision; for a sample of adapter parameters spread over
//! every level (down, mid, up; proj_in, attention, feed-forward, proj_out; A and B), the
//! analytic d loss / d θ against a fourth-order central difference of the loss.

use crate::common;

use common::{assert_gradients_match, central_difference};
use std::path::{Path, PathBuf};

use lorafuse::backend::prelude::*;
use lorafuse::backend::Accum;
use lorafuse::lora::{kohya, LoraSet};
use lorafuse::model::checkpoint::load_sd15;
use lorafuse::model::layers::Ctx;
use lorafuse::model::unet::Unet;
use lorafuse::rng::Rng;
use lorafuse::{CpuBackend, DType, Tensor};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn loss(
    unet: &Unet,
    be: &CpuBackend,
    lora: &LoraSet,
    x: &Tensor,
    t: &Tensor,
    ctx: &Tensor,
    target: &Tensor,
) -> f64 {
    let cx = Ctx::new(be, Some(lora));
    let (out, _) = unet.forward(&cx, x, t, ctx, false, None).unwrap();
    be.mse_loss(&out, target, None, 1.0).unwrap().0
}

#[test]
fn lora_gradients_match_finite_differences_in_f64() {
    let be = CpuBackend::f64();
    let ck = load_sd15(fixtures().join("tiny-sd15-diffusers")).unwrap();
    let unet = Unet::load(&ck.unet.0, &ck.unet.1, &be, "unet").unwrap();
    let mut lora = kohya::load(fixtures().join("tiny-lora.safetensors"), &be, DType::F64).unwrap();
    let mut rng = Rng::new(3);
    let randn = |rng: &mut Rng, shape: &[usize]| {
        let n = shape.iter().product();
        Tensor::from_f64(shape, rng.normal_vec(n)).unwrap()
    };
    // Batch 2 at 16x16 (the mid block then sees 2x2 = 4 tokens), 77 context tokens.
    let x = randn(&mut rng, &[2, 4, 16, 16]);
    let target = randn(&mut rng, &[2, 4, 16, 16]);
    let ctx = randn(&mut rng, &[2, 77, ck.unet.0.cross_attention_dim]);
    let t = Tensor::from_f64([2], vec![37.0, 911.0]).unwrap();

    let cx = Ctx::new(&be, Some(&lora));
    let (out, tape) = unet.forward(&cx, &x, &t, &ctx, true, None).unwrap();
    let (_, d_out) = be.mse_loss(&out, &target, None, 1.0).unwrap();
    let mut grads = lora.zero_grads(&be).unwrap();
    grads.accum = Accum::Assign;
    unet.backward(&cx, &d_out, &ctx, tape.unwrap(), &mut grads)
        .unwrap();

    // Two parameters of every 8th module (both A and B), plus the first and last module.
    let n = lora.len();
    let mut picks: Vec<(usize, bool, usize)> = Vec::new();
    for m in (0..n).step_by(8).chain([n - 1]) {
        for down in [true, false] {
            let len = if down {
                lora.modules()[m].down.numel()
            } else {
                lora.modules()[m].up.numel()
            };
            picks.push((m, down, rng.below(len as u64) as usize));
        }
    }
    let (mut ana, mut num) = (Vec::new(), Vec::new());
    for &(m, down, j) in &picks {
        let g = if down { &grads.down[m] } else { &grads.up[m] };
        ana.push(g.to_f64_vec()[j]);
        let base = {
            let md = &lora.modules()[m];
            if down {
                md.down.clone()
            } else {
                md.up.clone()
            }
        };
        let mut at = |delta: f64| {
            let mut v = base.to_f64_vec();
            v[j] += delta;
            let p = Tensor::from_f64(base.shape().clone(), v).unwrap();
            let md = &mut lora.modules_mut()[m];
            if down {
                md.down = p
            } else {
                md.up = p
            }
            loss(&unet, &be, &lora, &x, &t, &ctx, &target)
        };
        num.push(central_difference(&mut at, 1e-3));
        let md = &mut lora.modules_mut()[m];
        if down {
            md.down = base
        } else {
            md.up = base
        }
    }
    assert!(
        ana.iter().filter(|v| v.abs() > 1e-12).count() > picks.len() / 2,
        "most sampled gradients are non-zero"
    );
    assert_gradients_match(&format!("{n} modules"), &ana, &num, &picks);
}

/// d loss / d context, summed over every cross-attention: what the text encoder's backward
/// starts from when it is trained.
#[test]
fn context_gradient_matches_finite_differences_in_f64() {
    let be = CpuBackend::f64();
    let ck = load_sd15(fixtures().join("tiny-sd15-diffusers")).unwrap();
    let unet = Unet::load(&ck.unet.0, &ck.unet.1, &be, "unet").unwrap();
    let lora = kohya::load(fixtures().join("tiny-lora.safetensors"), &be, DType::F64).unwrap();
    let mut rng = Rng::new(4);
    let randn = |rng: &mut Rng, shape: &[usize]| {
        let n = shape.iter().product();
        Tensor::from_f64(shape, rng.normal_vec(n)).unwrap()
    };
    let x = randn(&mut rng, &[1, 4, 16, 16]);
    let target = randn(&mut rng, &[1, 4, 16, 16]);
    let ctx = randn(&mut rng, &[1, 77, ck.unet.0.cross_attention_dim]);
    let t = Tensor::from_f64([1], vec![250.0]).unwrap();
    let cx = Ctx::new(&be, Some(&lora));
    let (out, tape) = unet.forward(&cx, &x, &t, &ctx, true, None).unwrap();
    let (_, d_out) = be.mse_loss(&out, &target, None, 1.0).unwrap();
    let mut grads = lora.zero_grads(&be).unwrap();
    let d_ctx = unet
        .backward_with_context_grad(&cx, &d_out, &ctx, tape.unwrap(), &mut grads, true)
        .unwrap()
        .unwrap();
    assert_eq!(d_ctx.dims(), ctx.dims());
    let g = d_ctx.to_f64_vec();
    let (mut ana, mut num) = (Vec::new(), Vec::new());
    let mut picks = Vec::new();
    for _ in 0..24 {
        let j = rng.below(ctx.numel() as u64) as usize;
        picks.push(j);
        let mut at = |delta: f64| {
            let mut v = ctx.to_f64_vec();
            v[j] += delta;
            let c = Tensor::from_f64(ctx.shape().clone(), v).unwrap();
            loss(&unet, &be, &lora, &x, &t, &c, &target)
        };
        num.push(central_difference(&mut at, 1e-3));
        ana.push(g[j]);
    }
    assert_gradients_match("context elements", &ana, &num, &picks);
    // Without the request, no context gradient is computed.
    let (_, tape) = unet.forward(&cx, &x, &t, &ctx, true, None).unwrap();
    let none = unet
        .backward_with_context_grad(&cx, &d_out, &ctx, tape.unwrap(), &mut grads, false)
        .unwrap();
    assert!(none.is_none());
}
