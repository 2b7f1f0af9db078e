//! SDXL's two text encoders (tests/fixtures/sdxl/text) with their kohya LoRA through the CUDA
//! backend (the kernel emulator in CI, the GPU when one is present) against the CPU backend:
//! context, pooled output, and every LoRA gradient from d context and d pooled, for one
//! window and for a three-window long caption (the scatter of the pooled rows, the width
//! concat and its split run on the device).
#![cfg(any(feature = "cuda", feature = "cuda-emu"))]

use crate::common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::cuda::*;
use common::rel_err;
use lorafuse::backend::prelude::*;
use lorafuse::backend::Accum;
use lorafuse::lora::kohya;
use lorafuse::model::checkpoint::safetensors::SafetensorsFile;
use lorafuse::model::checkpoint::sdxl_text;
use lorafuse::model::layers::Ctx;
use lorafuse::model::sdxl_text::SdxlText;
use lorafuse::rng::Rng;
use lorafuse::{Backend, CpuBackend, DType};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sdxl/text")
}

/// Captions of SD1.x-padded ids: BOS, `n` tokens, EOS padding, in `windows` windows each.
fn captions(lengths: &[usize], windows: usize) -> Vec<u32> {
    let mut ids = Vec::new();
    for (k, &n) in lengths.iter().enumerate() {
        let mut full = vec![510u32];
        full.extend((0..n).map(|i| 1 + ((i * 7 + k * 13) % 500) as u32));
        full.resize(windows * 75 + 2, 511);
        for w in 0..windows {
            ids.push(510);
            ids.extend_from_slice(&full[1 + w * 75..1 + (w + 1) * 75]);
            ids.push(511);
        }
    }
    ids
}

/// Context, pooled and every LoRA gradient (down then up, module by module) on `be`.
fn step(be: &dyn Backend, ids: &[u32], batch: usize, seed: u64) -> Vec<Vec<f32>> {
    let path = dir().join("sgm-text.safetensors");
    let file = Arc::new(SafetensorsFile::open(&path).unwrap());
    let ((c1, w1), (c2, w2), _) = sdxl_text::from_single_file(&path, &file).unwrap();
    let text = SdxlText::load((&c1, &w1), (&c2, &w2), be).unwrap();
    let lora = kohya::load(dir().join("lora.safetensors"), be, DType::F32).unwrap();
    let cx = Ctx::new(be, Some(&lora));
    let (cond, tape) = text.forward_train(&cx, ids, batch, true).unwrap();
    let dt = be.compute_dtype();
    let mut rng = Rng::new(seed);
    let mut up = |dims: &[usize]| {
        let v = nonzero(&mut rng, dims.iter().product());
        be.tensor_from_f32(dims, &v, dt).unwrap()
    };
    let (d_ctx, d_pool) = (up(cond.context.dims()), up(cond.pooled.dims()));
    let mut grads = lora.zero_grads(be).unwrap();
    grads.accum = Accum::Assign;
    text.backward(&cx, &d_ctx, Some(&d_pool), tape.unwrap(), &mut grads)
        .unwrap();
    let mut out = vec![
        be.to_f32_vec(&cond.context).unwrap(),
        be.to_f32_vec(&cond.pooled).unwrap(),
    ];
    out.extend(
        grads
            .down
            .iter()
            .chain(&grads.up)
            .map(|t| be.to_f32_vec(t).unwrap()),
    );
    out
}

fn matches_the_cpu(ids: &[u32], batch: usize, dtypes: &[DType]) {
    let want = step(&CpuBackend::new(), ids, batch, 7);
    let f = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
    for &dtype in dtypes {
        let bound = if dtype == DType::F32 { 1e-4 } else { 3e-2 };
        for e in engines(dtype) {
            let got = step(&e.be, ids, batch, 7);
            let mut worst = 0.0f64;
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                assert!(a.iter().all(|x| x.is_finite()), "{dtype}: output {i}");
                // te1's last layer gets exactly zero on both.
                if b.iter().all(|&x| x == 0.0) {
                    assert!(a.iter().all(|&x| x == 0.0), "{dtype}: output {i} not zero");
                    continue;
                }
                let r = rel_err(&f(a), &f(b));
                let limit = if i < 2 { bound } else { 10.0 * bound };
                assert!(r < limit, "{dtype}: output {i} rel. error {r}");
                worst = worst.max(r);
            }
            println!(
                "{dtype} on {}: worst of context, pooled and gradients {worst:.2e}",
                e.be.name()
            );
        }
    }
}

#[test]
fn sdxl_text_encoders_with_lora_match_the_cpu() {
    matches_the_cpu(&captions(&[5, 75], 1), 2, &[DType::F32, DType::F16]);
}

#[test]
fn sdxl_long_caption_windows_match_the_cpu() {
    matches_the_cpu(&captions(&[160], 3), 1, &[DType::F32]);
}
