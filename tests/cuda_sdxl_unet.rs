//! The tiny SDXL UNet (tests/fixtures/sdxl/unet) with its kohya LoRA through the CUDA backend
//! (the kernel emulator in CI, the GPU when one is present) against the CPU backend: output,
//! loss, every LoRA gradient and d text_embeds, in f32 and f16. What SDXL adds to SD2.x's
//! kernels: transformer depth > 1 (the same kernels chained), levels without attention, and
//! the text-time embedding (timestep_embedding of the ids, cast, concat_channels and
//! split_channels on [N, C], linear, SiLU and its backward).
#![cfg(any(feature = "cuda", feature = "cuda-emu"))]

use crate::common;

use std::path::{Path, PathBuf};

use common::cuda::*;
use common::rel_err;
use lorafuse::backend::prelude::*;
use lorafuse::backend::Accum;
use lorafuse::lora::kohya;
use lorafuse::model::checkpoint::sdxl_unet;
use lorafuse::model::layers::Ctx;
use lorafuse::model::unet::{AddedCond, Unet, UnetCond, WantGrads};
use lorafuse::rng::Rng;
use lorafuse::{Backend, CpuBackend, DType};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sdxl/unet")
}

/// Output, loss, d text_embeds, then every LoRA gradient (down then up) of one step on `be`.
fn step(be: &dyn Backend, inputs: &[(Vec<usize>, Vec<f32>)]) -> (Vec<f32>, f64, Vec<Vec<f32>>) {
    let (cfg, w) = sdxl_unet::from_diffusers(&dir().join("unet")).unwrap();
    let unet = Unet::load(&cfg, &w, be, "unet").unwrap();
    let lora = kohya::load(dir().join("lora.safetensors"), be, DType::F32).unwrap();
    let dt = be.compute_dtype();
    let up = |i: usize, dt| be.tensor_from_f32(&inputs[i].0, &inputs[i].1, dt).unwrap();
    let (x, target, ctx, t) = (up(0, dt), up(1, dt), up(2, dt), up(3, dt));
    let added = AddedCond {
        text_embeds: up(4, dt),
        time_ids: up(5, DType::F32),
    };
    let cx = Ctx::new(be, Some(&lora));
    let cond = UnetCond {
        context: &ctx,
        added: Some(&added),
    };
    let (out, tape) = unet.forward(&cx, &x, &t, cond, true, None).unwrap();
    let scale = if dt == DType::F16 { 1024.0 } else { 1.0 };
    let (loss, d_out) = be.mse_loss(&out, &target, None, scale).unwrap();
    let mut grads = lora.zero_grads(be).unwrap();
    grads.accum = Accum::Assign;
    let want = WantGrads {
        context: false,
        text_embeds: true,
    };
    let g = unet
        .backward_with_cond_grads(&cx, &d_out, &ctx, tape.unwrap(), &mut grads, want)
        .unwrap();
    let unscale = |t: &lorafuse::Tensor| -> Vec<f32> {
        let v = be.to_f32_vec(t).unwrap();
        v.iter().map(|g| g / scale as f32).collect()
    };
    let mut all = vec![unscale(&g.text_embeds.unwrap())];
    all.extend(grads.down.iter().chain(&grads.up).map(unscale));
    (be.to_f32_vec(&out).unwrap(), loss, all)
}

#[test]
fn tiny_sdxl_unet_forward_and_gradients_match_the_cpu() {
    let mut rng = Rng::new(6);
    let mut inputs = vec![];
    for shape in [
        vec![2, 4, 8, 8],
        vec![2, 4, 8, 8],
        vec![2, 77, 64],
        vec![2, 32],
    ] {
        let n = shape.iter().product();
        inputs.push((shape, nonzero(&mut rng, n)));
    }
    inputs.insert(3, (vec![2], vec![37.0, 911.0]));
    let ids = [
        1024.0, 1024.0, 0.0, 0.0, 1024.0, 1024.0, 768.0, 1344.0, 32.0, 16.0, 832.0, 1216.0,
    ];
    inputs.push((vec![2, 6], ids.to_vec()));
    let (out_c, loss_c, g_c) = step(&CpuBackend::new(), &inputs);
    for dtype in [DType::F32, DType::F16] {
        let bound = if dtype == DType::F32 { 1e-4 } else { 3e-2 };
        for e in engines(dtype) {
            let (out_g, loss_g, g_g) = step(&e.be, &inputs);
            let f = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
            let r = rel_err(&f(&out_g), &f(&out_c));
            assert!(r < bound, "{dtype}: output rel. error {r}");
            assert!(
                (loss_g - loss_c).abs() < bound * loss_c,
                "{dtype}: loss {loss_g} vs {loss_c}"
            );
            let text = rel_err(&f(&g_g[0]), &f(&g_c[0]));
            assert!(
                text < 10.0 * bound,
                "{dtype}: d text_embeds rel. error {text}"
            );
            let mut worst = 0.0f64;
            for (i, (a, b)) in g_g.iter().zip(&g_c).enumerate().skip(1) {
                assert!(a.iter().all(|x| x.is_finite()), "{dtype}: gradient {i}");
                worst = worst.max(rel_err(&f(a), &f(b)));
            }
            println!(
                "{dtype} on {}: output {r:.2e}, loss {loss_g} vs {loss_c}, d text_embeds \
                 {text:.2e}, worst LoRA gradient {worst:.2e}",
                e.be.name()
            );
            assert!(worst < 10.0 * bound, "{dtype}: worst LoRA gradient {worst}");
        }
    }
}
