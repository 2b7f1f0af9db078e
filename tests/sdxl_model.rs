//! A whole tiny SDXL model in both layouts (tests/fixtures/make_sdxl_fixtures.py: the part
//! generators' UNet and text encoders sized to fit each other, and a VAE): both load through
//! `checkpoint::sdxl` to the same configurations and bit-equal weights, the family is read from
//! each, and the models built from the two give the same conditioning and prediction.

use std::path::PathBuf;

use lorafuse::backend::Tensors;

mod common;
use common::golden::assert_same_weights;
use lorafuse::data::SizeCond;
use lorafuse::model::checkpoint::sdxl::{load_sdxl, load_sdxl_with, SdxlCheckpoint};
use lorafuse::model::checkpoint::ConfigHints;
use lorafuse::model::cond::{unet_forward, Cond};
use lorafuse::model::family::{family_of, WeightsFrom};
use lorafuse::model::layers::Ctx;
use lorafuse::{CpuBackend, DType};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sdxl/model")
}

/// What the tiny single file's shapes cannot say (a real SDXL file needs none of these).
fn hints() -> ConfigHints {
    ConfigHints {
        norm_num_groups: Some(8),
        attention_head_width: Some(8),
        addition_time_embed_dim: Some(8),
    }
}

fn both() -> (SdxlCheckpoint, SdxlCheckpoint) {
    let folder = load_sdxl(dir().join("tiny-sdxl-diffusers")).unwrap();
    let file = load_sdxl_with(dir().join("tiny-sdxl.safetensors"), &hints()).unwrap();
    (folder, file)
}

#[test]
fn both_layouts_load_to_the_same_model() {
    let (folder, file) = both();
    let unet_file = lorafuse::model::config::UnetConfig {
        sample_size: folder.unet.0.sample_size,
        ..file.unet.0.clone()
    };
    assert_eq!(folder.unet.0, unet_file);
    assert_eq!(folder.unet.0.cross_attention_dim, 64 + 128);
    assert_eq!(folder.text_encoder.0, file.text_encoder.0);
    assert_eq!(folder.text_encoder_2.0, file.text_encoder_2.0);
    assert_eq!(file.text_encoder_2.0.text_projection, Some(96));
    // A single file does not store the latent scale: SDXL's is set, as the folder says it.
    assert_eq!(folder.vae.0.scaling_factor, 0.13025);
    assert_eq!(file.vae.0.scaling_factor, 0.13025);
    assert_eq!(
        folder.vae.0.block_out_channels,
        file.vae.0.block_out_channels
    );
    assert_same_weights("unet", &folder.unet.1, &file.unet.1);
    assert_same_weights("vae", &folder.vae.1, &file.vae.1);
    assert_same_weights("text_encoder", &folder.text_encoder.1, &file.text_encoder.1);
    assert_same_weights(
        "text_encoder_2",
        &folder.text_encoder_2.1,
        &file.text_encoder_2.1,
    );
    assert!(file.ignored.iter().any(|k| k.ends_with("logit_scale")));
}

#[test]
fn the_family_is_read_from_both_and_they_predict_alike() {
    let be = CpuBackend::new();
    let cx = Ctx::new(&be, None);
    let folder = dir().join("tiny-sdxl-diffusers");
    let file = dir().join("tiny-sdxl.safetensors");
    assert_eq!(family_of(&folder).unwrap().id(), "sdxl");
    assert_eq!(family_of(&file).unwrap().id(), "sdxl");
    // The folder through the family seam; ids below the tiny vocabulary of 512, EOS 511.
    let family = family_of(&folder).unwrap();
    let m = family
        .load(WeightsFrom::Checkpoint(&folder), &be, &mut |_| {})
        .unwrap();
    let mut ids = vec![0u32; 77];
    ids[..4].copy_from_slice(&[510, 17, 23, 511]);
    for id in &mut ids[4..] {
        *id = 511;
    }
    let text = m.encode_text(&cx, &ids, 1, 1).unwrap();
    assert_eq!(text.context.dims(), &[1, 77, 192]);
    assert_eq!(text.pooled.as_ref().unwrap().dims(), &[1, 96]);
    let sizes = [SizeCond::of((1500, 1000), (1024, 1024), false, true)];
    let cond = Cond::with_sizes(&be, text, &sizes).unwrap();
    let mut rng = lorafuse::rng::Rng::new(5);
    let x: Vec<f32> = rng
        .normal_vec(4 * 8 * 8)
        .iter()
        .map(|&v| v as f32)
        .collect();
    let x = be.tensor_from_f32(&[1, 4, 8, 8], &x, DType::F32).unwrap();
    let t = be.tensor_from_f32(&[1], &[500.0], DType::F32).unwrap();
    let (out, _) = unet_forward(&m.unet, &cx, &x, &t, &cond, false, None).unwrap();
    // The single file's models, built from its checkpoint, predict the same bits.
    let ck = load_sdxl_with(&file, &hints()).unwrap();
    let unet = lorafuse::model::unet::Unet::load(&ck.unet.0, &ck.unet.1, &be, "unet").unwrap();
    let (out2, _) = unet_forward(&unet, &cx, &x, &t, &cond, false, None).unwrap();
    assert_eq!(out.to_f32_vec(), out2.to_f32_vec());
    // The size ids move the prediction (the added embedding is wired in).
    let text = m.encode_text(&cx, &ids, 1, 1).unwrap();
    let other = Cond::with_sizes(&be, text, &[SizeCond::for_generation((1024, 1024))]).unwrap();
    let (out3, _) = unet_forward(&m.unet, &cx, &x, &t, &other, false, None).unwrap();
    assert_ne!(out.to_f32_vec(), out3.to_f32_vec());
}

// ------------------------------------------------------------------ diffusers loads our file

fn check_dir() -> PathBuf {
    dir().join("diffusers_check")
}

/// A LoRA as lorafuse writes it for this model: every default target of the UNet and both
/// text encoders, rank 4, alpha 2, random non-zero factors; and the UNet outputs it predicts
/// for fixed inputs without and with it. tests/fixtures/check_sdxl_lora_diffusers.py loads the
/// file into diffusers' SDXL pipeline and records what diffusers did (result.json).
fn write_check(out: &std::path::Path) {
    use lorafuse::lora::export::{save_kohya, SavePrecision};
    use lorafuse::lora::{LoraSet, LoraTargets};
    use lorafuse::Tensor;
    let be = CpuBackend::new();
    let folder = dir().join("tiny-sdxl-diffusers");
    let m = family_of(&folder)
        .unwrap()
        .load(WeightsFrom::Checkpoint(&folder), &be, &mut |_| {})
        .unwrap();
    let (layers, _) = m.adapter_targets(LoraTargets::Transformer, true);
    let mut rng = lorafuse::rng::Rng::new(0x5d1);
    let mut set = LoraSet::init(&be, &layers, 4, 2.0, &mut rng).unwrap();
    for module in set.modules_mut() {
        for t in module.tensors_mut() {
            let v: Vec<f32> = (0..t.numel()).map(|_| 0.3 * rng.normal() as f32).collect();
            *t = Tensor::from_f32(t.shape().clone(), v).unwrap();
        }
    }
    let meta = std::collections::BTreeMap::from([(
        "ss_base_model_version".to_string(),
        "sdxl_base_v1-0".to_string(),
    )]);
    save_kohya(
        out.join("lora.safetensors"),
        &set,
        SavePrecision::Fp32,
        &meta,
    )
    .unwrap();
    let mut rng = lorafuse::rng::Rng::new(78);
    let mut t = |shape: &[usize]| {
        let n = shape.iter().product();
        let v = (0..n).map(|_| rng.normal() as f32).collect();
        Tensor::from_f32(shape.to_vec(), v).unwrap()
    };
    let size = SizeCond::of((1500, 1000), (1024, 1024), false, true);
    let mut x = std::collections::BTreeMap::from([
        ("in.sample".to_string(), t(&[1, 4, 8, 8])),
        ("in.context".to_string(), t(&[1, 8, 192])),
        ("in.text_embeds".to_string(), t(&[1, 96])),
        (
            "in.time_ids".to_string(),
            Tensor::from_f32([1, 6], size.ids().to_vec()).unwrap(),
        ),
        (
            "in.timestep".to_string(),
            Tensor::from_f32([1], vec![500.0]).unwrap(),
        ),
    ]);
    let cond = Cond {
        context: x["in.context"].clone(),
        added: Some(lorafuse::model::unet::AddedCond {
            text_embeds: x["in.text_embeds"].clone(),
            time_ids: x["in.time_ids"].clone(),
        }),
    };
    for (name, lora) in [("out.base", None), ("out.lora", Some(&set))] {
        let cx = Ctx::new(&be, lora);
        let (y, _) = unet_forward(
            &m.unet,
            &cx,
            &x["in.sample"],
            &x["in.timestep"],
            &cond,
            false,
            None,
        )
        .unwrap();
        x.insert(name.to_string(), y);
    }
    common::golden::write_tensors(&out.join("expected.safetensors"), &x);
}

#[test]
fn lorafuse_writes_the_committed_diffusers_check_files() {
    let bless = std::env::var_os("LORAFUSE_BLESS").is_some();
    let out = if bless {
        check_dir()
    } else {
        std::env::temp_dir().join(format!("lorafuse-sdxl-check-{}", std::process::id()))
    };
    std::fs::create_dir_all(&out).unwrap();
    write_check(&out);
    if bless {
        return;
    }
    assert!(
        std::fs::read(out.join("lora.safetensors")).unwrap()
            == std::fs::read(check_dir().join("lora.safetensors")).unwrap(),
        "lorafuse now writes other bytes; rerun with LORAFUSE_BLESS=1, then \
         check_sdxl_lora_diffusers.py"
    );
    let got = common::golden::read_tensors(&out.join("expected.safetensors"));
    let want = common::golden::read_tensors(&check_dir().join("expected.safetensors"));
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    for (k, g) in &got {
        let e = g
            .iter()
            .zip(&want[k])
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(e < 1e-5, "{k}: lorafuse's prediction moved by {e}");
    }
    let _ = std::fs::remove_dir_all(&out);
}

/// What diffusers 0.39 (+ peft 0.17.1) did with the committed file (result.json, written by
/// check_sdxl_lora_diffusers.py from exactly these bytes: their SHA-256 is recorded there):
/// every module of the UNet and of both text encoders adapted, no key left over, and the
/// UNet's output moved as lorafuse predicts.
#[test]
fn diffusers_loads_the_sdxl_lora_with_every_key() {
    let text = std::fs::read_to_string(check_dir().join("result.json")).unwrap();
    let r: serde_json::Value = serde_json::from_str(&text).unwrap();
    let file = check_dir().join("lora.safetensors");
    let sha = lorafuse::lora::hash::sha256_file(&file).unwrap();
    assert_eq!(r["sha256"].as_str(), Some(sha.as_str()));
    let be = CpuBackend::new();
    let set = lorafuse::lora::kohya::load(&file, &be, DType::F32).unwrap();
    let count = |p: &str| {
        set.modules()
            .iter()
            .filter(|m| m.name.starts_with(p))
            .count() as u64
    };
    assert_eq!(r["loaded"], true, "{}", r["error"]);
    assert_eq!(r["adapted"]["unet"].as_u64(), Some(count("lora_unet_")));
    assert_eq!(
        r["adapted"]["text_encoder"].as_u64(),
        Some(count("lora_te1_"))
    );
    assert_eq!(
        r["adapted"]["text_encoder_2"].as_u64(),
        Some(count("lora_te2_"))
    );
    assert!(count("lora_te2_") > 0 && count("lora_unet_") > 0);
    assert!(
        r["warnings"].as_array().unwrap().is_empty(),
        "{}",
        r["warnings"]
    );
    assert!(r["base_vs_lorafuse"].as_f64().unwrap() < 1e-5);
    assert!(
        r["move_rel_err"].as_f64().unwrap() < 1e-4,
        "{}",
        r["move_rel_err"]
    );
}
