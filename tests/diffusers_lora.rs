//! diffusers loading proof (issue 15): lorafuse writes one SD1.x UNet adapter file per kind
//! (plain LoRA, LoCon, DoRA, LoHa) for the tiny fixture model, random non-zero and on a few
//! blocks to stay small, and the UNet outputs lorafuse predicts for fixed inputs: the base
//! model's, and each file merged into the checkpoint (`merge_into_checkpoint`, fp32) and run.
//! tests/fixtures/make_diffusers_lora_check.py (pinned, diffusers 0.39 + peft 0.17.1) loads
//! each file into diffusers' tiny pipeline with `load_lora_weights`, records what diffusers
//! did with every key and how far its UNet output moved, in result.json. This test rewrites
//! nothing unless LORAFUSE_BLESS=1: it checks that lorafuse still writes the committed files
//! byte for byte and predicts the committed outputs, and reads result.json.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use lorafuse::lora::export::{save_kohya, SavePrecision};
use lorafuse::lora::merge::merge_into_checkpoint;
use lorafuse::lora::{kohya, loha, LoraSet, LoraTargets, TargetLayer};
use lorafuse::model::checkpoint::{load_sd15_with, ConfigHints};
use lorafuse::model::layers::Ctx;
use lorafuse::model::unet::Unet;
use lorafuse::rng::Rng;
use lorafuse::{CpuBackend, DType, Tensor};

use crate::common;
use common::golden::{read_tensors, write_tensors};

const KINDS: [&str; 4] = ["lora", "locon", "dora", "loha"];

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}
fn dir() -> PathBuf {
    fixtures().join("diffusers_lora")
}
fn hints() -> ConfigHints {
    ConfigHints {
        norm_num_groups: Some(4),
        ..ConfigHints::default()
    }
}
fn bless() -> bool {
    std::env::var_os("LORAFUSE_BLESS").is_some()
}

/// The adapted layers: those of down_blocks.1 and the mid block (LoCon, DoRA and LoHa also
/// their 3x3 convs, time_emb_proj and conv_shortcut), as kohya would target them.
fn targets(unet: &Unet, convs: bool) -> Vec<TargetLayer> {
    let mut all = unet.lora_targets(LoraTargets::Transformer);
    if convs {
        all.extend(unet.conv_targets());
        all.extend(unet.resnet_linear_targets());
    }
    all.into_iter()
        .filter(|t| t.name.contains("down_blocks_1_") || t.name.contains("mid_block_"))
        .collect()
}

/// A random adapter set of `kind` with every tensor non-zero (a fresh one has up = 0).
fn adapters(be: &CpuBackend, unet: &Unet, kind: &str) -> LoraSet {
    let mut rng = Rng::new(0xd1ff + kind.len() as u64);
    let layers = targets(unet, kind != "lora");
    let mut set = match kind {
        "loha" => LoraSet::new(
            layers
                .iter()
                .map(|l| loha::init(be, l, 2, 1.0, &mut rng).unwrap())
                .collect(),
        ),
        _ => LoraSet::init(be, &layers, 2, 1.0, &mut rng).unwrap(),
    };
    if kind == "dora" {
        let w = unet.adaptable_weights();
        let look = |n: &str| w.iter().find(|(m, _)| *m == n).map(|(_, t)| *t);
        set = set.with_dora(be, look).unwrap();
    }
    for m in set.modules_mut() {
        let dora = m.dora().is_some();
        for (j, t) in m.tensors_mut().into_iter().enumerate() {
            let v: Vec<f32> = t
                .to_f32_vec()
                .iter()
                .map(|&x| match (dora, j) {
                    // DoRA's magnitude: its start, scaled by a factor in [0.8, 1.2].
                    (true, 2) => x * (1.0 + 0.2 * rng.uniform_in(-1.0, 1.0) as f32),
                    _ => 0.5 * rng.normal() as f32,
                })
                .collect();
            *t = Tensor::from_f32(t.shape().clone(), v).unwrap();
        }
    }
    set
}

/// The inputs: latents [1, 4, 16, 16], timestep 500, a context of 8 tokens [1, 8, 64].
fn inputs() -> BTreeMap<String, Tensor> {
    let mut rng = Rng::new(77);
    let mut t = |shape: &[usize]| {
        let n = shape.iter().product();
        let v = (0..n).map(|_| rng.normal() as f32).collect();
        Tensor::from_f32(shape.to_vec(), v).unwrap()
    };
    BTreeMap::from([
        ("in.sample".to_string(), t(&[1, 4, 16, 16])),
        ("in.context".to_string(), t(&[1, 8, 64])),
        (
            "in.timestep".to_string(),
            Tensor::from_f32([1], vec![500.0]).unwrap(),
        ),
    ])
}

fn unet_out(be: &CpuBackend, ck: &Path, x: &BTreeMap<String, Tensor>) -> Tensor {
    let model = load_sd15_with(ck, &hints()).unwrap();
    let (cfg, w) = &model.unet;
    let unet = Unet::load(cfg, w, be, "unet").unwrap();
    let cx = Ctx::new(be, None);
    let (y, _) = unet
        .forward(
            &cx,
            &x["in.sample"],
            &x["in.timestep"],
            &x["in.context"],
            false,
            None,
        )
        .unwrap();
    y
}

/// lorafuse's files and predictions, written to `out` (the fixture folder when blessing).
fn write_all(out: &Path) -> BTreeMap<String, Tensor> {
    let be = CpuBackend::new();
    let base = fixtures().join("tiny-sd15.safetensors");
    let model = load_sd15_with(&base, &hints()).unwrap();
    let unet = Unet::load(&model.unet.0, &model.unet.1, &be, "unet").unwrap();
    let x = inputs();
    let mut expected = x.clone();
    expected.insert("out.base".into(), unet_out(&be, &base, &x));
    let tmp = std::env::temp_dir().join(format!("lorafuse-difflora-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    for kind in KINDS {
        let set = adapters(&be, &unet, kind);
        let file = out.join(format!("{kind}.safetensors"));
        save_kohya(&file, &set, SavePrecision::Fp16, &BTreeMap::new()).unwrap();
        // What the file holds (fp16), merged as `lorafuse merge --model --precision fp32`.
        let loaded = kohya::load(&file, &be, DType::F32).unwrap();
        let merged = tmp.join(format!("{kind}-merged.safetensors"));
        merge_into_checkpoint(&base, &[(&loaded, 1.0)], &merged, Some(SavePrecision::Fp32))
            .unwrap();
        expected.insert(format!("out.{kind}"), unet_out(&be, &merged, &x));
        // The merge and the adapters run in the UNet agree.
        let cx = Ctx::new(&be, Some(&loaded));
        let (y, _) = unet
            .forward(
                &cx,
                &x["in.sample"],
                &x["in.timestep"],
                &x["in.context"],
                false,
                None,
            )
            .unwrap();
        let (a, b) = (
            y.to_f64_vec(),
            expected[&format!("out.{kind}")].to_f64_vec(),
        );
        let base = expected["out.base"].to_f64_vec();
        let d: Vec<f64> = b.iter().zip(&base).map(|(b, c)| b - c).collect();
        let e: Vec<f64> = a.iter().zip(&b).map(|(a, b)| a - b).collect();
        let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!(
            norm(&e) < 1e-4 * norm(&d).max(1e-30),
            "{kind}: merge vs adapters"
        );
        assert!(
            norm(&d) > 1e-3 * norm(&base),
            "{kind}: the adapter changes the output"
        );
    }
    let _ = std::fs::remove_dir_all(&tmp);
    write_tensors(&out.join("expected.safetensors"), &expected);
    expected
}

#[test]
fn lorafuse_writes_the_committed_files_and_predictions() {
    let out = if bless() {
        dir()
    } else {
        let t = std::env::temp_dir().join(format!("lorafuse-difflora-out-{}", std::process::id()));
        std::fs::create_dir_all(&t).unwrap();
        t
    };
    write_all(&out);
    if !bless() {
        for kind in KINDS {
            let name = format!("{kind}.safetensors");
            assert!(
                std::fs::read(out.join(&name)).unwrap()
                    == std::fs::read(dir().join(&name)).unwrap(),
                "{name}: lorafuse now writes other bytes; rerun with LORAFUSE_BLESS=1, then \
                 make_diffusers_lora_check.py"
            );
        }
        let (got, want) = (
            read_tensors(&out.join("expected.safetensors")),
            read_tensors(&dir().join("expected.safetensors")),
        );
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>()
        );
        for (k, g) in &got {
            let w = &want[k];
            let e = g
                .iter()
                .zip(w)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(e < 1e-5, "{k}: lorafuse's prediction moved by {e}");
        }
        let _ = std::fs::remove_dir_all(&out);
    }
}

/// What diffusers 0.39 (+ peft 0.17.1) did with the committed files (result.json, written by
/// make_diffusers_lora_check.py from exactly these files: their SHA-256 is recorded there).
#[test]
fn diffusers_loads_them_as_the_committed_result_says() {
    let text = std::fs::read_to_string(dir().join("result.json")).unwrap();
    let r: serde_json::Value = serde_json::from_str(&text).unwrap();
    let num = |v: &serde_json::Value| v.as_f64().unwrap();
    let be = CpuBackend::new();
    assert!(num(&r["base_vs_lorafuse"]) < 1e-5, "the base UNets agree");
    for kind in KINDS {
        let e = &r[kind];
        let file = dir().join(format!("{kind}.safetensors"));
        let sha = lorafuse::lora::hash::sha256_file(&file).unwrap();
        assert_eq!(
            e["sha256"].as_str(),
            Some(sha.as_str()),
            "{kind}: result of these bytes"
        );
        let n = kohya::load(&file, &be, DType::F32).unwrap().len();
        assert_eq!(e["modules_in_file"].as_u64(), Some(n as u64), "{kind}");
    }
    // Only the notice that the UNet-only files have no text-encoder keys.
    let benign = |e: &serde_json::Value, also: &str| {
        e["warnings"].as_array().unwrap().iter().all(|w| {
            let w = w.as_str().unwrap();
            w.starts_with("No LoRA keys associated to CLIPTextModel")
                || (!also.is_empty() && w.contains(also))
        })
    };
    // LoRA and LoCon: every module adapted, no unexpected key, the move lorafuse's merge
    // predicts.
    for kind in ["lora", "locon"] {
        let e = &r[kind];
        assert_eq!(e["loaded"], true, "{kind}");
        assert_eq!(e["modules_adapted"], e["modules_in_file"], "{kind}");
        assert!(
            num(&e["move_rel_err"]) < 1e-4,
            "{kind}: {}",
            e["move_rel_err"]
        );
        assert!(benign(e, ""), "{kind}: {}", e["warnings"]);
    }
    // DoRA: load_lora_weights drops dora_scale with a warning, so the file runs as a plain
    // LoRA (far from lorafuse's DoRA); diffusers' converter maps dora_scale to peft's
    // lora_magnitude_vector but keeps LyCORIS's shapes, which peft refuses; reshaped
    // ([out, 1] -> [out], [out, 1, 1, 1] -> [1, out, 1, 1]) peft runs it as lorafuse does.
    let e = &r["dora"];
    assert_eq!(e["loaded"], true);
    assert!(
        benign(e, "filter out the keys associated to 'dora_scale`"),
        "{}",
        e["warnings"]
    );
    assert!(e["warnings"].to_string().contains("dora_scale"));
    assert!(
        num(&e["move_rel_err"]) > 0.1,
        "without its magnitudes the DoRA is not itself"
    );
    let c = &r["dora_via_converter_reshaped"];
    assert!(
        c["as_converted"]
            .as_str()
            .unwrap()
            .starts_with("RuntimeError"),
        "{c}"
    );
    for k in [
        "magnitude_keys",
        "modules_adapted",
        "modules_with_magnitude",
    ] {
        assert_eq!(c[k], r["dora"]["modules_in_file"], "{k}");
    }
    assert!(num(&c["move_rel_err"]) < 1e-4, "{}", c["move_rel_err"]);
    assert_eq!(c["warnings"].as_array().map(Vec::len), Some(0));
    // LoHa: diffusers' kohya converter knows lora_down/lora_up/alpha/dora_scale only.
    let e = &r["loha"];
    assert_eq!(e["loaded"], false);
    let err = e["error"].as_str().unwrap();
    assert!(
        err.contains("have not been correctly renamed") && err.contains("hada_w1_a"),
        "{err}"
    );
}
