//! The WD14 tagger's ViT (tanh GELU, fused qkv split, token pooling as a linear) on the CUDA
//! backend against the timm reference of tests/caption.rs: f32 activations within 1e-4
//! relative, f16 within 2e-2; the same for CLIP interrogation's towers.
#![cfg(any(feature = "cuda", feature = "cuda-emu"))]

use crate::common;

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

/// CLIP interrogation's towers (the vision ViT with pre_layrnorm and quick/exact GELU, the
/// text encoder's pooled output and both projections) on the CUDA backend against the
/// transformers reference of tests/caption.rs.
#[test]
fn clip_embeddings_match_transformers_on_the_cuda_backend() {
    use lorafuse::caption::{ClipModel, Vocabulary};
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/clip");
    let reference = Weights::open(dir.join("reference.safetensors")).unwrap();
    let want = |key: &str| {
        let shape = reference.shape(key).unwrap().to_vec();
        reference.get(key, shape).unwrap().to_f32_vec()
    };
    let rel = |got: &[f32], want: &[f32]| {
        let diff = got
            .iter()
            .zip(want)
            .map(|(a, b)| f64::from((a - b).abs()))
            .fold(0.0, f64::max);
        diff / want.iter().map(|b| f64::from(b.abs())).fold(0.0, f64::max)
    };
    let phrases: Vec<String> = ["colours", "things"]
        .iter()
        .flat_map(|v| {
            Vocabulary::read(&dir.join(format!("vocab/{v}.txt")))
                .unwrap()
                .phrases
        })
        .collect();
    for (dtype, tol) in [(DType::F32, 1e-4), (DType::F16, 2e-2)] {
        for e in engines(dtype) {
            let model = ClipModel::load(&dir.join("tiny"), &e.be).unwrap();
            let text = model.text_embeds(&e.be, &phrases, &mut |_, _| {}).unwrap();
            let r = rel(&text, &want("text/text_embeds"));
            assert!(r < tol, "{dtype:?} text_embeds: rel err {r:e}");
            let path = dir.join("images/large.png");
            let img = decode_image(&path, &fs::read(&path).unwrap()).unwrap();
            let pixels = model.preprocess.pixels(&img);
            let got = model.image_embeds(&e.be, &pixels).unwrap();
            let r = rel(&got, &want("large/image_embeds"));
            assert!(r < tol, "{dtype:?} image_embeds: rel err {r:e}");
        }
    }
}
