//! The files tests/fixtures/check_lora_diffusers.py loads into diffusers for one model family:
//! a LoRA as lorafuse writes it for a tiny model (every default target of the UNet and the text
//! encoders, rank 4, alpha 2, random non-zero factors) and the UNet outputs lorafuse predicts
//! for fixed inputs without and with it; and the checks of what diffusers did with them
//! (result.json, whose SHA-256 ties it to exactly these bytes).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use lorafuse::lora::export::{save_kohya, SavePrecision};
use lorafuse::lora::{LoraSet, LoraTargets};
use lorafuse::model::cond::{unet_forward, Cond};
use lorafuse::model::family::{family_of, WeightsFrom};
use lorafuse::model::layers::Ctx;
use lorafuse::model::unet::AddedCond;
use lorafuse::rng::Rng;
use lorafuse::{CpuBackend, DType, Tensor};

/// One family's check: the tiny model's diffusers folder, the folder of the check's files,
/// the base-model version written into the LoRA's metadata, the UNet's inputs and, for SDXL,
/// the size ids.
pub struct Case {
    pub model: PathBuf,
    pub dir: PathBuf,
    pub base_version: &'static str,
    /// Shapes of the noisy latents and of the text context.
    pub sample: [usize; 4],
    pub context: [usize; 3],
    /// SDXL's pooled text width and its six size ids (None for SD1.x/SD2.x).
    pub added: Option<(usize, [f32; 6])>,
    /// The text encoders' module prefixes and the pipeline attribute each lands on.
    pub encoders: &'static [(&'static str, &'static str)],
}

/// Writes the LoRA and the predictions into `out`.
pub fn write(case: &Case, out: &Path) {
    let be = CpuBackend::new();
    let m = family_of(&case.model)
        .unwrap()
        .load(WeightsFrom::Checkpoint(&case.model), &be, &mut |_| {})
        .unwrap();
    let (layers, _) = m.adapter_targets(LoraTargets::Transformer, true);
    let mut rng = Rng::new(0x5d1);
    let mut set = LoraSet::init(&be, &layers, 4, 2.0, &mut rng).unwrap();
    for module in set.modules_mut() {
        for t in module.tensors_mut() {
            let v: Vec<f32> = (0..t.numel()).map(|_| 0.3 * rng.normal() as f32).collect();
            *t = Tensor::from_f32(t.shape().clone(), v).unwrap();
        }
    }
    let meta = BTreeMap::from([(
        "ss_base_model_version".to_string(),
        case.base_version.to_string(),
    )]);
    save_kohya(
        out.join("lora.safetensors"),
        &set,
        SavePrecision::Fp32,
        &meta,
    )
    .unwrap();
    let mut rng = Rng::new(78);
    let mut t = |shape: &[usize]| {
        let n = shape.iter().product();
        let v = (0..n).map(|_| rng.normal() as f32).collect();
        Tensor::from_f32(shape.to_vec(), v).unwrap()
    };
    let mut x = BTreeMap::from([
        ("in.sample".to_string(), t(&case.sample)),
        ("in.context".to_string(), t(&case.context)),
    ]);
    if let Some((pooled, ids)) = case.added {
        x.insert("in.text_embeds".to_string(), t(&[1, pooled]));
        x.insert(
            "in.time_ids".to_string(),
            Tensor::from_f32([1, 6], ids.to_vec()).unwrap(),
        );
    }
    x.insert(
        "in.timestep".to_string(),
        Tensor::from_f32([1], vec![500.0]).unwrap(),
    );
    let cond = Cond {
        context: x["in.context"].clone(),
        added: case.added.map(|_| AddedCond {
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
    super::golden::write_tensors(&out.join("expected.safetensors"), &x);
}

/// lorafuse still writes the committed files: the LoRA's bytes, and predictions within 1e-5
/// (LORAFUSE_BLESS=1 rewrites them; then rerun the Python check).
pub fn assert_writes_the_committed_files(case: &Case) {
    let bless = std::env::var_os("LORAFUSE_BLESS").is_some();
    // Removed when dropped, at the end or on a failed assertion.
    let scratch = super::tools::TempDir::new("diffusers-check");
    let out = if bless {
        case.dir.clone()
    } else {
        scratch.0.clone()
    };
    std::fs::create_dir_all(&out).unwrap();
    write(case, &out);
    if bless {
        return;
    }
    assert!(
        std::fs::read(out.join("lora.safetensors")).unwrap()
            == std::fs::read(case.dir.join("lora.safetensors")).unwrap(),
        "lorafuse now writes other bytes; rerun with LORAFUSE_BLESS=1, then \
         check_lora_diffusers.py"
    );
    let got = super::golden::read_tensors(&out.join("expected.safetensors"));
    let want = super::golden::read_tensors(&case.dir.join("expected.safetensors"));
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
}

/// What diffusers did with the committed file (result.json, written by check_lora_diffusers.py
/// from exactly these bytes): it loaded it with no warning, every module of the UNet and of
/// each text encoder carries an adapter, and the UNet's output moved as lorafuse predicts.
pub fn assert_diffusers_loaded_every_key(case: &Case) {
    let text = std::fs::read_to_string(case.dir.join("result.json")).unwrap();
    let r: serde_json::Value = serde_json::from_str(&text).unwrap();
    let file = case.dir.join("lora.safetensors");
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
    assert!(count("lora_unet_") > 0);
    assert_eq!(r["adapted"]["unet"].as_u64(), Some(count("lora_unet_")));
    for (prefix, attribute) in case.encoders {
        assert!(count(prefix) > 0, "{prefix}");
        assert_eq!(
            r["adapted"][attribute].as_u64(),
            Some(count(prefix)),
            "{attribute}"
        );
    }
    let modules = set.modules().len() as u64;
    let adapted: u64 = r["adapted"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(adapted, modules, "every module of the file is used");
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
