//! The metadata of a LoRA lorafuse trains, compared key by key with what kohya's sd-scripts
//! writes for the same run. The reference, tests/fixtures/kohya_meta/reference.json, is made by
//! tests/fixtures/make_kohya_metadata_fixture.py with sd-scripts' own code at a pinned commit
//! (its config reader, its `DreamBoothDataset`, its hash functions) on the same data set
//! (tests/fixtures/kohya_meta/train, reg) and config (kohya_meta/run.toml).
//!
//! Keys whose value legitimately differs, or that one side lacks, are listed in [`DIFFERS`],
//! [`ONLY_KOHYA`] and [`ONLY_LORAFUSE`], each with its reason and, where one exists, what is
//! checked instead. Every other key must be in both files with the same text (JSON values
//! compared as JSON).

use crate::common;
use common::tools::TempDir;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use lorafuse::lora::export::{
    model_hash_legacy, save_kohya, sha256_file, training_metadata, SavePrecision, TrainingInfo,
};
use lorafuse::lora::{LayerKind, LoraModule, LoraSet};
use lorafuse::model::checkpoint::safetensors::SafetensorsFile;
use lorafuse::train::metadata::RunIdentity;
use lorafuse::Tensor;

const FIXTURES: &str = "tests/fixtures";

fn reference() -> serde_json::Value {
    let text = std::fs::read_to_string(Path::new(FIXTURES).join("kohya_meta/reference.json"))
        .expect("tests/fixtures/kohya_meta/reference.json");
    serde_json::from_str(&text).unwrap()
}

/// A fresh, empty folder under the system temp dir, removed when dropped.
fn temp_dir(name: &str) -> TempDir {
    TempDir::new(&format!("kohya-meta-{name}"))
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

/// sd-scripts' `model_hash` and `calculate_sha256` (what it stores as `ss_sd_model_hash` and
/// `ss_new_sd_model_hash`) of a model file over 1 MiB are lorafuse's, and a run on that file
/// writes them.
#[test]
fn model_hashes_are_sd_scripts_hashes() {
    let r = reference();
    let h = &r["model_hashes"];
    let file = Path::new(FIXTURES).join(h["file"].as_str().unwrap());
    assert!(std::fs::metadata(&file).unwrap().len() > (1 << 20) + (1 << 16));
    assert_eq!(model_hash_legacy(&file).unwrap(), h["model_hash"]);
    assert_eq!(sha256_file(&file).unwrap(), h["calculate_sha256"]);
    // A run on that file records them.
    let id = RunIdentity::new(&file).unwrap();
    let meta = training_metadata(&TrainingInfo {
        base_model: id.base_model,
        ..TrainingInfo::default()
    });
    assert_eq!(meta["ss_sd_model_hash"], h["model_hash"]);
    assert_eq!(meta["ss_new_sd_model_hash"], h["calculate_sha256"]);
    assert_eq!(meta["ss_sd_model_name"], h["file"]);
}

/// The synthetic LoRA of the reference (a formula, see the generator's `synthetic_lora`).
fn synthetic_lora(spec: &serde_json::Value) -> LoraSet {
    let rank = spec["rank"].as_u64().unwrap() as usize;
    let width = spec["width"].as_u64().unwrap() as usize;
    let alpha = spec["alpha"].as_f64().unwrap();
    let value = |i: usize, m: usize| (((i * 37 + m * 11) % 101) as f32 - 50.0) / 64.0;
    let modules = spec["modules"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(m, name)| {
            let v: Vec<f32> = (0..rank * width).map(|i| value(i, m)).collect();
            LoraModule {
                name: name.as_str().unwrap().to_string(),
                down: Tensor::from_f32([rank, width], v.clone()).unwrap(),
                up: Tensor::from_f32([width, rank], v).unwrap(),
                alpha,
                kind: LayerKind::Linear,
                algo: Default::default(),
            }
        })
        .collect();
    LoraSet::new(modules)
}

/// `sshs_model_hash` and `sshs_legacy_hash` are what sd-scripts'
/// `precalculate_safetensors_hashes` gives for the same tensors and `ss_*` metadata, on a
/// LoRA over 1 MiB (so the legacy hash reads tensor bytes, whose place depends on the
/// header's length and the tensors' order).
#[test]
fn lora_hashes_are_sd_scripts_precalculated_hashes() {
    let r = reference();
    let spec = &r["synthetic_lora"];
    let metadata: BTreeMap<String, String> =
        serde_json::from_value(spec["metadata"].clone()).unwrap();
    let dir = temp_dir("hashes");
    let path = dir.join("hash_check.safetensors");
    save_kohya(&path, &synthetic_lora(spec), SavePrecision::Fp16, &metadata).unwrap();
    assert!(std::fs::metadata(&path).unwrap().len() > (1 << 20) + (1 << 16));
    let file = SafetensorsFile::open(&path).unwrap();
    for key in ["sshs_model_hash", "sshs_legacy_hash"] {
        assert_eq!(
            file.metadata()[key],
            spec["hashes"][key].as_str().unwrap(),
            "{key}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Keys whose value differs between the two runs for a reason, and what is checked instead.
const DIFFERS: &[(&str, &str)] = &[
    (
        "ss_session_id",
        "random per run in both; checked: an integer in [0, 2^32]",
    ),
    (
        "ss_training_started_at",
        "the clock; checked: a float, not after ss_training_finished_at",
    ),
    ("ss_training_finished_at", "the clock; checked: a float"),
    (
        "ss_sd_model_name",
        "the reference hashed tests/fixtures/tiny-sd15.safetensors, the run trains the demo's \
         tiny model (the fixture's 512-token text encoder does not take the real tokenizer); \
         checked: the run's model folder name",
    ),
    (
        "ss_sd_model_hash",
        "the run's model is a diffusers folder, for which sd-scripts writes the text of the \
         error it caught (\"IsADirectory\") and lorafuse writes nothing; checked: absent. For a \
         file, model_hashes_are_sd_scripts_hashes checks the values that go here",
    ),
    ("ss_new_sd_model_hash", "as ss_sd_model_hash"),
    (
        "ss_optimizer",
        "sd-scripts names the PyTorch class and only the optimizer_args given \
         (torch.optim.adamw.AdamW); lorafuse names its own implementation with every setting it \
         used; checked: starts with AdamW(",
    ),
    (
        "modelspec.implementation_version",
        "the trainer and its version (sd-scripts/..., lorafuse/...)",
    ),
];

/// Keys only sd-scripts writes.
const ONLY_KOHYA: &[(&str, &str)] = &[(
    "ss_sd_scripts_commit_hash",
    "the sd-scripts commit that trained; lorafuse is not sd-scripts (its version is in \
     modelspec.implementation_version)",
)];

/// Keys only lorafuse writes (or that the reference leaves out), and why.
const ONLY_LORAFUSE: &[(&str, &str)] = &[
    (
        "lorafuse.targets",
        "which layers lorafuse adapted (its lora_targets key)",
    ),
    (
        "lorafuse.train_text_encoder",
        "whether the text encoder was trained",
    ),
    (
        "sshs_model_hash",
        "sd-scripts writes it too, in save_weights after the metadata dict; checked by \
         lora_hashes_are_sd_scripts_precalculated_hashes",
    ),
    ("sshs_legacy_hash", "as sshs_model_hash"),
    (
        "modelspec.date",
        "the clock (sd-scripts writes it too; left out of the reference)",
    ),
];

const JSON_KEYS: &[&str] = &[
    "ss_dataset_dirs",
    "ss_reg_dataset_dirs",
    "ss_tag_frequency",
    "ss_bucket_info",
    "ss_network_args",
];

fn listed(list: &[(&str, &str)], key: &str) -> bool {
    list.iter().any(|(k, _)| *k == key)
}

/// Equal JSON, floats within 1e-12 relative (numpy's mean sums pairwise).
fn json_close(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value as V;
    match (a, b) {
        (V::Number(x), V::Number(y)) if x.is_f64() || y.is_f64() => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            (x - y).abs() <= 1e-12 * x.abs().max(y.abs()).max(1e-300)
        }
        (V::Object(x), V::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_close(v, w)))
        }
        (V::Array(x), V::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(v, w)| json_close(v, w))
        }
        _ => a == b,
    }
}

/// The config of the reference run, trained from the command line on the demo's tiny model
/// with the same data (folder-name captions, a regularisation folder, tags, three buckets):
/// every key of the written LoRA compared with what sd-scripts writes.
#[test]
fn a_kohya_run_writes_the_metadata_sd_scripts_writes() {
    let r = reference();
    let want: BTreeMap<String, String> = serde_json::from_value(r["metadata"].clone()).unwrap();
    let dir = temp_dir("run");
    let data = dir.join("data");
    copy_tree(
        &Path::new(FIXTURES).join("kohya_meta/train"),
        &data.join("train"),
    );
    copy_tree(
        &Path::new(FIXTURES).join("kohya_meta/reg"),
        &data.join("reg"),
    );
    let demo = lorafuse::demo::prepare(&dir.join("demo"), 2).unwrap();
    let out = dir.join("out");
    let template =
        std::fs::read_to_string(Path::new(FIXTURES).join("kohya_meta/run.toml")).unwrap();
    let config = dir.join("run.toml");
    std::fs::write(
        &config,
        template
            .replace("{model}", &demo.model.display().to_string())
            .replace("{train}", &data.join("train").display().to_string())
            .replace("{reg}", &data.join("reg").display().to_string())
            .replace("{out}", &out.display().to_string()),
    )
    .unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_lorafuse"))
        .arg("train")
        .arg(&config)
        .args(["--set", "device=cpu"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(0), "{stderr}");
    let file = SafetensorsFile::open(&out.join("meta_run.safetensors")).unwrap();
    let got: BTreeMap<String, String> = file.metadata().clone().into_iter().collect();

    let mut problems = Vec::new();
    for (key, value) in &want {
        if listed(DIFFERS, key) {
            continue;
        }
        if listed(ONLY_KOHYA, key) {
            if got.contains_key(key) {
                problems.push(format!("{key}: listed as sd-scripts' only, but written"));
            }
            continue;
        }
        let Some(mine) = got.get(key) else {
            problems.push(format!("{key}: missing (sd-scripts writes {value:?})"));
            continue;
        };
        let same = if JSON_KEYS.contains(&key.as_str()) {
            let parse = |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap();
            json_close(&parse(mine), &parse(value))
        } else {
            mine == value
        };
        if !same {
            problems.push(format!("{key}: {mine:?}, sd-scripts {value:?}"));
        }
    }
    for key in got.keys() {
        if !want.contains_key(key) && !listed(ONLY_LORAFUSE, key) && !listed(DIFFERS, key) {
            problems.push(format!(
                "{key}: written, not in sd-scripts' metadata nor listed"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    // What is checked instead for the keys that differ.
    let id: u64 = got["ss_session_id"].parse().unwrap();
    assert!(id <= 1 << 32);
    let started: f64 = got["ss_training_started_at"].parse().unwrap();
    let finished: f64 = got["ss_training_finished_at"].parse().unwrap();
    assert!(
        started > 1.6e9 && started <= finished,
        "{started} {finished}"
    );
    assert_eq!(
        got["ss_sd_model_name"],
        demo.model.file_name().unwrap().to_string_lossy()
    );
    assert!(demo.model.is_dir());
    assert!(!got.contains_key("ss_sd_model_hash") && !got.contains_key("ss_new_sd_model_hash"));
    assert!(
        got["ss_optimizer"].starts_with("AdamW("),
        "{}",
        got["ss_optimizer"]
    );
    assert!(got["modelspec.implementation_version"].starts_with("lorafuse/"));
    let _ = std::fs::remove_dir_all(&dir);
}
