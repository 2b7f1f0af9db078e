//! `lorafuse caption --tagger`: the WD14 v3 ViT tagger against the reference (timm, Pillow,
//! torchvision on the CPU; tests/fixtures/make_tagger_fixture.py) on two tiny random ViTs in
//! the tagger's own folder layout: the model's input tensor (alpha over white, pad to square,
//! PIL bicubic resize, BGR) and the logits and probabilities.

use std::fs;
use std::path::{Path, PathBuf};

use lorafuse::caption::Tagger;
use lorafuse::data::pixels::decode_image;
use lorafuse::model::checkpoint::Weights;
use lorafuse::CpuBackend;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tagger")
}

const MODELS: [&str; 2] = ["vit-v3", "vit-cls"];
const IMAGES: [&str; 2] = ["wide-alpha", "small"];

fn reference(name: &str) -> Vec<f32> {
    let r = Weights::open(fixtures().join("reference.safetensors")).unwrap();
    let shape = r.shape(name).unwrap().to_vec();
    r.get(name, shape).unwrap().to_f32_vec()
}

/// max |a − b| / max |b|.
fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let diff = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from((x - y).abs()))
        .fold(0.0, f64::max);
    let scale = b.iter().map(|y| f64::from(y.abs())).fold(0.0, f64::max);
    diff / scale
}

#[test]
fn tagger_matches_timm_and_pillow() {
    let be = CpuBackend::new();
    for model in MODELS {
        let tagger = Tagger::load(&fixtures().join(model), &be).unwrap();
        for image in IMAGES {
            let path = fixtures().join(format!("images/{image}.png"));
            let img = decode_image(&path, &fs::read(&path).unwrap()).unwrap();
            let key = format!("{model}/{image}");
            let pixels = tagger.preprocess.pixels(&img);
            let want = reference(&format!("{key}/pixels"));
            // Byte-exact resampling makes the tensor equal, not merely close.
            assert_eq!(pixels, want, "{key}: input tensor");
            let logits = tagger.vit.logits(&be, &pixels).unwrap();
            let e = rel_err(&logits, &reference(&format!("{key}/logits")));
            assert!(e < 1e-4, "{key}: logits rel err {e:e}");
            let probs = tagger.probabilities(&be, &img).unwrap();
            let want = reference(&format!("{key}/probs"));
            for (i, (p, w)) in probs.iter().zip(&want).enumerate() {
                let e = ((p - w) / w).abs();
                assert!(e < 1e-4, "{key}: prob {i}: {p} vs {w} (rel {e:e})");
            }
        }
    }
}
