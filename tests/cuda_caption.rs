//! The WD14 tagger's ViT (tanh GELU, fused qkv split, token pooling as a linear) on the CUDA
//! backend against the timm reference of tests/caption.rs: f32 activations within 1e-4
//! relative, f16 within 2e-2.
#![cfg(any(feature = "cuda", feature = "cuda-emu"))]

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::cuda::engines;
use lorafuse::caption::Tagger;
use lorafuse::data::pixels::decode_image;
use lorafuse::model::checkpoint::Weights;
use lorafuse::DType;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tagger")
}

#[test]
fn tagger_logits_match_timm_on_the_cuda_backend() {
    let reference = Weights::open(fixtures().join("reference.safetensors")).unwrap();
    for (dtype, tol) in [(DType::F32, 1e-4), (DType::F16, 2e-2)] {
        for e in engines(dtype) {
            for model in ["vit-v3", "vit-cls"] {
                let tagger = Tagger::load(&fixtures().join(model), &e.be).unwrap();
                for image in ["wide-alpha", "small"] {
                    let path = fixtures().join(format!("images/{image}.png"));
                    let img = decode_image(&path, &fs::read(&path).unwrap()).unwrap();
                    let pixels = tagger.preprocess.pixels(&img);
                    let got = tagger.vit.logits(&e.be, &pixels).unwrap();
                    let key = format!("{model}/{image}/logits");
                    let want = reference.get(&key, [got.len()]).unwrap().to_f32_vec();
                    let diff = got
                        .iter()
                        .zip(&want)
                        .map(|(a, b)| f64::from((a - b).abs()))
                        .fold(0.0, f64::max);
                    let scale = want.iter().map(|b| f64::from(b.abs())).fold(0.0, f64::max);
                    let rel = diff / scale;
                    assert!(rel < tol, "{dtype:?} {key}: rel err {rel:e}");
                }
            }
        }
    }
}
