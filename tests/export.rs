//! Saving LoRAs in kohya's format: round trips through the loader (fp32 exactly, fp16/bf16 to
//! their rounding), key names, shapes and dtypes as sd15-formats.md §2.1–2.5 says, metadata
//! (§2.6) and kohya's precomputed hashes, atomic writes; SHA-256 and the A1111 model hashes;
//! `inspect` on the fixture LoRA.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use half::{bf16, f16};
use lorafuse::lora::export::{
    minimum_metadata, model_hash_legacy, save_kohya, sha256_file, training_metadata, Bucket,
    BucketSettings, DatasetDir, SavePrecision, TrainingInfo, SS_METADATA_MINIMUM_KEYS,
};
use lorafuse::lora::hash::{sha256_hex, Sha256};
use lorafuse::lora::inspect::{inspect, TargetKind};
use lorafuse::lora::{kohya, LayerKind, LoraModule, LoraSet, LoraTargets};
use lorafuse::model::checkpoint::safetensors::SafetensorsFile;
use lorafuse::rng::Rng;
use lorafuse::{CpuBackend, DType, Error, Tensor};
use safetensors::tensor::{Dtype, TensorView};

const FIXTURE_LORA: &str = "tests/fixtures/tiny-lora.safetensors";

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "lorafuse-test-export-{}-{n}-{tag}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
    fn entries(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn module(
    rng: &mut Rng,
    name: &str,
    rank: usize,
    i: usize,
    o: usize,
    alpha: f64,
    conv: bool,
) -> LoraModule {
    let down: Vec<f32> = (0..rank * i).map(|_| rng.normal() as f32 * 0.1).collect();
    let up: Vec<f32> = (0..o * rank).map(|_| rng.normal() as f32 * 0.01).collect();
    LoraModule {
        name: name.to_string(),
        down: Tensor::from_f32([rank, i], down).unwrap(),
        up: Tensor::from_f32([o, rank], up).unwrap(),
        alpha,
        kind: if conv {
            LayerKind::Conv1x1
        } else {
            LayerKind::Linear
        },
        algo: Default::default(),
    }
}

/// Three modules: a 1x1 conv, a cross-attention projection and a feed-forward layer.
fn small_set(seed: u64) -> LoraSet {
    let mut rng = Rng::new(seed);
    LoraSet::new(vec![
        module(
            &mut rng,
            "lora_unet_down_blocks_0_attentions_0_proj_in",
            4,
            32,
            32,
            2.0,
            true,
        ),
        module(
            &mut rng,
            "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k",
            4,
            48,
            32,
            2.0,
            false,
        ),
        module(
            &mut rng,
            "lora_te_text_model_encoder_layers_0_mlp_fc1",
            4,
            48,
            192,
            0.3,
            false,
        ),
    ])
}

fn info() -> TrainingInfo {
    let mut tags = BTreeMap::new();
    tags.insert("1girl".to_string(), 12u64);
    tags.insert("smile, \"quoted\"".to_string(), 3u64);
    let mut tag_frequency = BTreeMap::new();
    tag_frequency.insert("10_mychar".to_string(), tags);
    TrainingInfo {
        output_name: "mychar-v1".into(),
        session_id: 123456789,
        training_started_at: 1_700_000_000.5,
        training_finished_at: 1_700_003_600.25,
        steps: 1000,
        epoch: 10,
        lora_rank: 4,
        lora_alpha: 2.0,
        learning_rate: 1e-4,
        unet_lr: Some(1e-4),
        text_encoder_lr: Some(5e-5),
        optimizer_args: vec![("weight_decay".into(), "0.01".into())],
        lr_scheduler: "cosine".into(),
        lr_warmup_steps: 50,
        clip_skip: Some(2),
        noise_offset: Some(0.05),
        min_snr_gamma: Some(5.0),
        rank_dropout: Some(0.1),
        targets: LoraTargets::Transformer,
        dataset_dirs: vec![
            DatasetDir {
                name: "10_mychar".into(),
                n_repeats: 10,
                img_count: 20,
            },
            DatasetDir {
                name: "10_mychar".into(),
                n_repeats: 2,
                img_count: 5,
            },
        ],
        tag_frequency,
        buckets: BucketSettings {
            enable_bucket: true,
            min_bucket_reso: 256,
            max_bucket_reso: 1024,
            bucket_no_upscale: false,
            buckets: vec![
                Bucket {
                    width: 512,
                    height: 512,
                    count: 150,
                },
                Bucket {
                    width: 448,
                    height: 576,
                    count: 60,
                },
            ],
            mean_img_ar_error: Some(0.02),
        },
        num_train_images: 210,
        num_validation_images: 4,
        ..TrainingInfo::default()
    }
}

fn load(path: &Path) -> LoraSet {
    kohya::load(path, &CpuBackend::new(), DType::F32).unwrap()
}

fn by_name(set: &LoraSet) -> HashMap<String, LoraModule> {
    set.modules()
        .iter()
        .map(|m| (m.name.clone(), m.clone()))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Round trips, names, shapes, dtypes

#[test]
fn fp32_round_trip_is_exact_with_kohya_names_and_shapes() {
    let dir = TempDir::new("fp32");
    let out = dir.path("lora.safetensors");
    let set = small_set(1);
    save_kohya(&out, &set, SavePrecision::Fp32, &BTreeMap::new()).unwrap();

    let back = by_name(&load(&out));
    assert_eq!(back.len(), 3);
    for m in set.modules() {
        let b = &back[&m.name];
        assert_eq!(b.down.dims(), m.down.dims(), "{}", m.name);
        assert_eq!(b.up.dims(), m.up.dims(), "{}", m.name);
        assert_eq!(b.down.to_f32_vec(), m.down.to_f32_vec(), "{}", m.name);
        assert_eq!(b.up.to_f32_vec(), m.up.to_f32_vec(), "{}", m.name);
        assert_eq!(b.alpha, m.alpha as f32 as f64, "{}", m.name);
        assert_eq!(b.kind, m.kind, "{}", m.name);
    }

    // The keys, shapes and dtypes in the file, exactly.
    let file = SafetensorsFile::open(&out).unwrap();
    let mut found: Vec<(String, Vec<usize>, Dtype)> = file
        .names()
        .map(|k| {
            let t = file.tensor_info(k).unwrap();
            (k.to_string(), t.shape.clone(), t.dtype)
        })
        .collect();
    found.sort();
    let p = "lora_unet_down_blocks_0_attentions_0";
    let te = "lora_te_text_model_encoder_layers_0_mlp_fc1";
    let want: Vec<(String, Vec<usize>, Dtype)> = vec![
        (format!("{te}.alpha"), vec![], Dtype::F32),
        (format!("{te}.lora_down.weight"), vec![4, 48], Dtype::F32),
        (format!("{te}.lora_up.weight"), vec![192, 4], Dtype::F32),
        (format!("{p}_proj_in.alpha"), vec![], Dtype::F32),
        (
            format!("{p}_proj_in.lora_down.weight"),
            vec![4, 32, 1, 1],
            Dtype::F32,
        ),
        (
            format!("{p}_proj_in.lora_up.weight"),
            vec![32, 4, 1, 1],
            Dtype::F32,
        ),
        (
            format!("{p}_transformer_blocks_0_attn2_to_k.alpha"),
            vec![],
            Dtype::F32,
        ),
        (
            format!("{p}_transformer_blocks_0_attn2_to_k.lora_down.weight"),
            vec![4, 48],
            Dtype::F32,
        ),
        (
            format!("{p}_transformer_blocks_0_attn2_to_k.lora_up.weight"),
            vec![32, 4],
            Dtype::F32,
        ),
    ];
    assert_eq!(found, want);
    // Without metadata from the caller, only kohya's two precomputed hashes.
    let meta: BTreeMap<_, _> = file.metadata().clone().into_iter().collect();
    assert_eq!(
        meta.keys().collect::<Vec<_>>(),
        vec!["sshs_legacy_hash", "sshs_model_hash"]
    );
    assert_eq!(dir.entries(), vec!["lora.safetensors".to_string()]);
}

#[test]
fn fp16_and_bf16_round_trips_match_their_rounding() {
    let dir = TempDir::new("half");
    let set = small_set(2);
    for precision in [SavePrecision::Fp16, SavePrecision::Bf16] {
        let out = dir.path(&format!("lora-{precision}.safetensors"));
        save_kohya(&out, &set, precision, &BTreeMap::new()).unwrap();
        let round = |x: f32| match precision {
            SavePrecision::Fp16 => f16::from_f32(x).to_f32(),
            _ => bf16::from_f32(x).to_f32(),
        };
        let back = by_name(&load(&out));
        for m in set.modules() {
            let b = &back[&m.name];
            let want: Vec<f32> = m.down.to_f32_vec().into_iter().map(round).collect();
            assert_eq!(b.down.to_f32_vec(), want, "{precision} {}", m.name);
            let want: Vec<f32> = m.up.to_f32_vec().into_iter().map(round).collect();
            assert_eq!(b.up.to_f32_vec(), want, "{precision} {}", m.name);
            assert_eq!(b.alpha, round(m.alpha as f32) as f64);
            // and within the format's relative precision of the original
            let eps = if precision == SavePrecision::Fp16 {
                1.0 / 2048.0
            } else {
                1.0 / 256.0
            };
            for (g, w) in b.down.to_f32_vec().iter().zip(m.down.to_f32_vec()) {
                assert!((g - w).abs() <= eps * w.abs() + 1e-7, "{g} vs {w}");
            }
        }
        let file = SafetensorsFile::open(&out).unwrap();
        let want = precision_dtype(precision);
        for k in file.names() {
            assert_eq!(file.tensor_info(k).unwrap().dtype, want, "{k}");
        }
        let alpha = file
            .tensor_info("lora_te_text_model_encoder_layers_0_mlp_fc1.alpha")
            .unwrap();
        assert!(alpha.shape.is_empty());
    }
}

fn precision_dtype(p: SavePrecision) -> Dtype {
    match p {
        SavePrecision::Fp16 => Dtype::F16,
        SavePrecision::Fp32 => Dtype::F32,
        SavePrecision::Bf16 => Dtype::BF16,
    }
}

/// The fixture was written by PyTorch + safetensors (kohya's layout, fp16): loading it and
/// saving it again in fp16 reproduces every tensor's bytes, dtype and shape.
#[test]
fn fixture_lora_resaved_in_fp16_has_identical_tensors() {
    let dir = TempDir::new("fixture");
    let out = dir.path("again.safetensors");
    let set = load(Path::new(FIXTURE_LORA));
    assert_eq!(set.len(), 192);
    save_kohya(&out, &set, SavePrecision::Fp16, &BTreeMap::new()).unwrap();
    let a = SafetensorsFile::open(Path::new(FIXTURE_LORA)).unwrap();
    let b = SafetensorsFile::open(&out).unwrap();
    assert_eq!(a.len(), b.len());
    for k in a.names() {
        let (ta, tb) = (a.tensor_info(k).unwrap(), b.tensor_info(k).unwrap());
        assert_eq!(ta.shape, tb.shape, "{k}");
        assert_eq!(ta.dtype, tb.dtype, "{k}");
        assert_eq!(a.bytes(ta), b.bytes(tb), "{k}");
    }
}

#[test]
fn same_lora_same_bytes() {
    let dir = TempDir::new("determinism");
    let set = small_set(3);
    let meta = training_metadata(&info());
    let (a, b) = (dir.path("a.safetensors"), dir.path("b.safetensors"));
    save_kohya(&a, &set, SavePrecision::Fp16, &meta).unwrap();
    save_kohya(&b, &set, SavePrecision::Fp16, &meta).unwrap();
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
}

// ---------------------------------------------------------------------------------------------
// Metadata and kohya's hashes

#[test]
fn training_metadata_has_the_minimum_set_and_kohya_values() {
    let m = training_metadata(&info());
    let expect = [
        ("ss_network_module", "networks.lora"),
        ("ss_network_dim", "4"),
        ("ss_network_alpha", "2.0"),
        ("ss_base_model_version", "sd_v1"),
        ("ss_v2", "False"),
        ("ss_output_name", "mychar-v1"),
        ("modelspec.sai_model_spec", "1.0.1"),
        ("modelspec.architecture", "stable-diffusion-v1/lora"),
        ("modelspec.implementation", "diffusers"),
        ("modelspec.title", "mychar-v1"),
        ("modelspec.resolution", "512x512"),
        ("modelspec.date", "2023-11-14T23:13:20+00:00"),
        ("modelspec.prediction_type", "epsilon"),
        ("modelspec.encoder_layer", "2"),
        ("ss_learning_rate", "0.0001"),
        ("ss_text_encoder_lr", "5e-05"),
        ("ss_optimizer", "AdamW(weight_decay=0.01)"),
        ("ss_lr_scheduler", "cosine"),
        ("ss_lr_warmup_steps", "50"),
        ("ss_steps", "1000"),
        ("ss_epoch", "10"),
        ("ss_clip_skip", "2"),
        ("ss_noise_offset", "0.05"),
        ("ss_min_snr_gamma", "5.0"),
        ("ss_network_dropout", "None"),
        ("ss_resolution", "(512, 512)"),
        ("ss_training_started_at", "1700000000.5"),
        ("ss_session_id", "123456789"),
        ("ss_num_train_images", "210"),
        ("ss_num_validation_images", "4"),
        ("ss_mixed_precision", "fp16"),
        ("ss_enable_bucket", "True"),
        ("lorafuse.targets", "transformer"),
    ];
    for (k, v) in expect {
        assert_eq!(m.get(k).map(String::as_str), Some(v), "{k}");
    }
    for k in SS_METADATA_MINIMUM_KEYS {
        assert!(m.contains_key(k), "{k}");
    }
    // JSON where kohya uses JSON.
    let json = |k: &str| -> serde_json::Value { serde_json::from_str(&m[k]).unwrap() };
    assert_eq!(
        json("ss_network_args"),
        serde_json::json!({"rank_dropout": "0.1"})
    );
    assert_eq!(
        json("ss_dataset_dirs"),
        serde_json::json!({
            "10_mychar": {"n_repeats": 10, "img_count": 20},
            "10_mychar (2)": {"n_repeats": 2, "img_count": 5}
        })
    );
    assert_eq!(
        json("ss_tag_frequency"),
        serde_json::json!({"10_mychar": {"1girl": 12, "smile, \"quoted\"": 3}})
    );
    assert_eq!(
        json("ss_bucket_info"),
        serde_json::json!({
            "buckets": {
                "0": {"resolution": [512, 512], "count": 150},
                "1": {"resolution": [448, 576], "count": 60}
            },
            "mean_img_ar_error": 0.02
        })
    );
    // Defaults: without network args there is no ss_network_args, as train_network.py writes
    // it only for a run with --network_args.
    let d = training_metadata(&TrainingInfo::default());
    assert!(!d.contains_key("ss_network_args"));
    // Without bucketing, kohya's bucket_info is None: "null".
    assert_eq!(d["ss_bucket_info"], "null");
    assert_eq!(d["modelspec.encoder_layer"], "1");
    let min = minimum_metadata(&m);
    assert!(min
        .keys()
        .all(|k| SS_METADATA_MINIMUM_KEYS.contains(&k.as_str()) || k.starts_with("modelspec.")));
    assert_eq!(
        min.len(),
        6 + m.keys().filter(|k| k.starts_with("modelspec.")).count()
    );
}

#[test]
fn saved_metadata_and_kohya_hashes() {
    let dir = TempDir::new("hashes");
    // Large enough (> 1 MiB + 64 KiB of fp32) that the legacy hash reads tensor bytes.
    let mut rng = Rng::new(9);
    let set = LoraSet::new(vec![
        module(
            &mut rng,
            "lora_unet_mid_block_attentions_0_proj_in",
            64,
            1280,
            1280,
            32.0,
            true,
        ),
        module(
            &mut rng,
            "lora_unet_mid_block_attentions_0_proj_out",
            64,
            1280,
            1280,
            32.0,
            true,
        ),
    ]);
    let meta = training_metadata(&info());
    let out = dir.path("big.safetensors");
    save_kohya(&out, &set, SavePrecision::Fp32, &meta).unwrap();
    let bytes = std::fs::read(&out).unwrap();
    assert!(bytes.len() > (1 << 20) + (1 << 16));

    let file = SafetensorsFile::open(&out).unwrap();
    let stored: BTreeMap<String, String> = file.metadata().clone().into_iter().collect();
    for (k, v) in &meta {
        assert_eq!(stored.get(k), Some(v), "{k}");
    }
    assert_eq!(stored.len(), meta.len() + 2);

    // sshs_model_hash: SHA-256 of everything after the header of the written file.
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    assert_eq!(stored["sshs_model_hash"], sha256_hex(&bytes[8 + n..]));

    // sshs_legacy_hash: the legacy hash of the file the safetensors crate's own serializer
    // makes from the same tensors with only the ss_* metadata (what kohya hashes).
    let views: Vec<(String, TensorView)> = file
        .names()
        .map(|k| {
            let t = file.tensor_info(k).unwrap();
            (
                k.to_string(),
                TensorView::new(t.dtype, t.shape.clone(), file.bytes(t)).unwrap(),
            )
        })
        .collect();
    let ss_only: HashMap<String, String> = meta
        .iter()
        .filter(|(k, _)| k.starts_with("ss_"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let reference = safetensors::serialize(views, Some(ss_only)).unwrap();
    let window = &reference[1 << 20..(1 << 20) + (1 << 16)];
    assert_eq!(stored["sshs_legacy_hash"], sha256_hex(window)[..8]);
    // The tensor bytes are the same as the crate's, in the same order.
    let rn = u64::from_le_bytes(reference[..8].try_into().unwrap()) as usize;
    assert_eq!(&reference[8 + rn..], &bytes[8 + n..]);

    // inspect checks the stored hash against the tensors.
    let s = inspect(&out).unwrap();
    assert_eq!(s.sshs_model_hash_matches, Some(true));
    let mut tampered = bytes.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    let t = dir.path("tampered.safetensors");
    std::fs::write(&t, &tampered).unwrap();
    assert_eq!(inspect(&t).unwrap().sshs_model_hash_matches, Some(false));
}

// ---------------------------------------------------------------------------------------------
// Atomic writes and refusals

fn assert_untouched(dir: &TempDir, path: &Path, content: &[u8]) {
    assert_eq!(std::fs::read(path).unwrap(), content);
    assert_eq!(
        dir.entries(),
        vec![path.file_name().unwrap().to_string_lossy().into_owned()]
    );
}

#[test]
fn refused_lora_leaves_the_existing_file_and_no_temp_file() {
    let dir = TempDir::new("refuse");
    let out = dir.path("lora.safetensors");
    std::fs::write(&out, b"previous").unwrap();
    let mut bad = small_set(4).modules().to_vec();
    bad[1].up = Tensor::from_f32([32, 4], vec![f32::NAN; 128]).unwrap();
    let e = save_kohya(
        &out,
        &LoraSet::new(bad),
        SavePrecision::Fp16,
        &BTreeMap::new(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("attn2_to_k") && e.contains("NaN"), "{e}");
    assert!(e.contains(&out.display().to_string()), "{e}");
    assert_untouched(&dir, &out, b"previous");

    // fp16 overflow is refused, pointing to fp32/bf16.
    let mut big = small_set(4).modules().to_vec();
    big[0].down = Tensor::from_f32([4, 32], vec![1e5; 128]).unwrap();
    let set = LoraSet::new(big);
    let e = save_kohya(&out, &set, SavePrecision::Fp16, &BTreeMap::new()).unwrap_err();
    assert!(e.to_string().contains("fp16"), "{e}");
    assert_untouched(&dir, &out, b"previous");
    save_kohya(&out, &set, SavePrecision::Bf16, &BTreeMap::new()).unwrap();

    // Mismatched ranks and an empty set.
    let mut skew = small_set(4).modules().to_vec();
    skew[0].up = Tensor::from_f32([32, 3], vec![0.0; 96]).unwrap();
    let e = save_kohya(
        &out,
        &LoraSet::new(skew),
        SavePrecision::Fp32,
        &BTreeMap::new(),
    );
    assert!(matches!(e, Err(Error::Lora { .. })), "{e:?}");
    let e = save_kohya(
        &out,
        &LoraSet::default(),
        SavePrecision::Fp32,
        &BTreeMap::new(),
    );
    assert!(e.unwrap_err().to_string().contains("no modules"));
}

#[test]
fn unwritable_destinations_are_errors_naming_the_path() {
    let dir = TempDir::new("dest");
    let set = small_set(5);
    let none = BTreeMap::new();

    let missing = dir.path("no-such-folder").join("lora.safetensors");
    let e = save_kohya(&missing, &set, SavePrecision::Fp16, &none).unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e:?}");
    assert!(
        e.to_string().contains(&missing.display().to_string()),
        "{e}"
    );

    // A non-empty folder where the file should go: the rename fails, the folder stays.
    let folder = dir.path("taken.safetensors");
    std::fs::create_dir(&folder).unwrap();
    std::fs::write(folder.join("keep"), b"keep").unwrap();
    let e = save_kohya(&folder, &set, SavePrecision::Fp16, &none).unwrap_err();
    assert!(e.to_string().contains(&folder.display().to_string()), "{e}");
    assert_eq!(std::fs::read(folder.join("keep")).unwrap(), b"keep");
    assert_eq!(dir.entries(), vec!["taken.safetensors".to_string()]);

    // A read-only folder (meaningless for root, who may write anyway).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let ro = dir.path("readonly");
        std::fs::create_dir(&ro).unwrap();
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
        let probe = ro.join("probe");
        let root_like = std::fs::write(&probe, b"").is_ok();
        let _ = std::fs::remove_file(&probe);
        if !root_like {
            let target = ro.join("lora.safetensors");
            let e = save_kohya(&target, &set, SavePrecision::Fp16, &none).unwrap_err();
            assert!(e.to_string().contains(&target.display().to_string()), "{e}");
            assert_eq!(std::fs::read_dir(&ro).unwrap().count(), 0);
        }
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// SHA-256 and the model hashes

#[test]
fn sha256_fips_test_vectors() {
    let cases: [(&[u8], &str); 4] = [
        (b"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
        (b"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
        (
            b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1",
        ),
        (
            b"abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu",
            "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1",
        ),
    ];
    for (input, want) in cases {
        assert_eq!(sha256_hex(input), want);
    }
    // One million 'a', fed in uneven pieces.
    let mut h = Sha256::new();
    let a = vec![b'a'; 1_000_000];
    for piece in a.chunks(9973) {
        h.update(piece);
    }
    assert_eq!(
        h.finalize_hex(),
        "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"
    );
}

#[test]
fn legacy_and_full_model_hashes_of_a_synthetic_file() {
    let dir = TempDir::new("modelhash");
    // 1 MiB + 100 KiB of a known pattern; the expected values are Python hashlib's.
    let bytes: Vec<u8> = (0..(1usize << 20) + 100 * 1024)
        .map(|i| ((i * 31 + 7) % 251) as u8)
        .collect();
    let p = dir.path("model.safetensors");
    std::fs::write(&p, &bytes).unwrap();
    assert_eq!(model_hash_legacy(&p).unwrap(), "7c04580a");
    assert_eq!(
        sha256_file(&p).unwrap(),
        "42d39351fe915622361e785815f57cce64fb510c28905a0da2da4b8e79f293b2"
    );
    // Shorter than 1 MiB: Python's seek past the end then read() gives b"".
    let short = dir.path("short.bin");
    std::fs::write(&short, &bytes[..1000]).unwrap();
    assert_eq!(model_hash_legacy(&short).unwrap(), "e3b0c442");
    let e = model_hash_legacy(&dir.path("absent.bin")).unwrap_err();
    assert!(e.to_string().contains("absent.bin"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// inspect

#[test]
fn inspect_fixture_lora() {
    let s = inspect(FIXTURE_LORA).unwrap();
    assert_eq!(s.modules, 192);
    assert_eq!(s.unet_modules, 192);
    assert_eq!(s.text_encoder_modules, 0);
    assert_eq!(s.conv_modules, 32);
    assert_eq!(
        s.kinds.iter().collect::<Vec<_>>(),
        vec![
            (&"LoRA 1x1 conv".to_string(), &32),
            (&"LoRA linear".to_string(), &160)
        ]
    );
    assert_eq!(s.per_module.len(), 192);
    assert_eq!(s.ranks.iter().collect::<Vec<_>>(), vec![(&4, &192)]);
    assert_eq!(s.alphas, vec![(2.0, 192)]);
    assert_eq!(s.modules_without_alpha, 0);
    assert_eq!(
        s.dtypes.iter().collect::<Vec<_>>(),
        vec![(&"F16".to_string(), &576)]
    );
    assert_eq!(s.targets, TargetKind::Transformer);
    assert_eq!(s.non_finite, 0);
    assert!(s.problems.is_empty() && s.extra_tensors.is_empty());
    assert_eq!(s.sshs_model_hash_matches, None);
    assert_eq!(
        s.metadata.get("ss_network_dim").map(String::as_str),
        Some("4")
    );
    assert_eq!(s.metadata.len(), 7);
    let set = load(Path::new(FIXTURE_LORA));
    assert_eq!(s.parameters, set.num_params());
    let text = s.to_string();
    for want in [
        "192 (UNet 192, text encoder 0)",
        "4 (192 modules)",
        "scale alpha/rank = 0.5",
        "F16 (576 tensors)",
        "ss_network_module",
        // SD1.5 has transformer blocks in IN01, IN02, IN04, IN05, IN07, IN08, MID and
        // OUT03–OUT11: 16 blocks of 12 modules.
        "per block   IN01    12 modules  rank 4  alpha 2.0",
        "            OUT11   12 modules  rank 4  alpha 2.0",
        "written by  ",
    ] {
        assert!(text.contains(want), "{want} not in\n{text}");
    }
}

#[test]
fn inspect_classifies_targets_and_refuses_non_loras() {
    let dir = TempDir::new("inspect");
    let mut rng = Rng::new(6);
    let attn = LoraSet::new(vec![
        module(
            &mut rng,
            "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q",
            2,
            8,
            8,
            1.0,
            false,
        ),
        module(
            &mut rng,
            "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_out_0",
            2,
            8,
            8,
            1.0,
            false,
        ),
        module(
            &mut rng,
            "lora_te_text_model_encoder_layers_0_self_attn_q_proj",
            2,
            8,
            8,
            1.0,
            false,
        ),
    ]);
    let p = dir.path("attn.safetensors");
    save_kohya(&p, &attn, SavePrecision::Fp16, &BTreeMap::new()).unwrap();
    let s = inspect(&p).unwrap();
    assert_eq!(s.targets, TargetKind::Attention);
    assert_eq!((s.unet_modules, s.text_encoder_modules), (2, 1));

    let locon = LoraSet::new(vec![module(
        &mut rng,
        "lora_unet_down_blocks_0_resnets_0_time_emb_proj",
        2,
        8,
        8,
        1.0,
        false,
    )]);
    let p = dir.path("locon.safetensors");
    save_kohya(&p, &locon, SavePrecision::Fp16, &BTreeMap::new()).unwrap();
    assert!(matches!(
        inspect(&p).unwrap().targets,
        TargetKind::Other { .. }
    ));

    let e = inspect("tests/fixtures/tiny-sd15.safetensors").unwrap_err();
    assert!(e.to_string().contains("not a kohya-format LoRA"), "{e}");
}

/// SDXL runs: sdxl_model_util's base version, sai_model_spec's SDXL architecture and, for an
/// SDXL LoRA, Stability AI's implementation.
#[test]
fn sdxl_metadata_names_the_family() {
    let m = training_metadata(&TrainingInfo {
        sdxl: true,
        ..info()
    });
    assert_eq!(m["ss_v2"], "False");
    assert_eq!(m["ss_base_model_version"], "sdxl_base_v1-0");
    assert_eq!(
        m["modelspec.architecture"],
        "stable-diffusion-xl-v1-base/lora"
    );
    assert_eq!(
        m["modelspec.implementation"],
        "https://github.com/Stability-AI/generative-models"
    );
    assert_eq!(m["modelspec.prediction_type"], "epsilon");
    let sd1 = training_metadata(&info());
    assert_eq!(sd1["modelspec.implementation"], "diffusers");
}

/// SD2.x runs: kohya's `ss_v2`, `ss_base_model_version` (`get_model_version_str_for_sd1_sd2`)
/// and sai_model_spec's architecture and prediction type, for the 512 base and the 768-v model.
#[test]
fn sd2_metadata_names_the_family_and_prediction() {
    for (v, version, arch, pred) in [
        (false, "sd_v2", "stable-diffusion-v2-512/lora", "epsilon"),
        (true, "sd_v2_v", "stable-diffusion-v2-768-v/lora", "v"),
    ] {
        let m = training_metadata(&TrainingInfo {
            v2: true,
            v_parameterization: v,
            ..info()
        });
        assert_eq!(m["ss_v2"], "True");
        assert_eq!(m["ss_base_model_version"], version);
        assert_eq!(m["modelspec.architecture"], arch);
        assert_eq!(m["modelspec.prediction_type"], pred);
    }
    let m = training_metadata(&info());
    assert_eq!(
        (m["ss_v2"].as_str(), m["ss_base_model_version"].as_str()),
        ("False", "sd_v1")
    );
    // inspect names the family from the metadata; the SD2 fixture LoRA's Linear proj_in/out
    // count as kohya's default targets.
    let mut s = inspect("tests/fixtures/sd2/tiny-sd2-lora.safetensors").unwrap();
    assert_eq!(s.targets, TargetKind::Transformer);
    assert_eq!(s.unet_modules, 192);
    assert_eq!(s.base_model(), None);
    s.metadata
        .insert("ss_base_model_version".into(), "sd_v2_v".into());
    assert!(s
        .to_string()
        .contains("base model  Stable Diffusion 2.x, v-prediction (768-v)"));
}
