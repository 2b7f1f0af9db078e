//! `lorafuse extract` on the demo's tiny SD1.5-topology model (a diffusers folder): a tuned
//! copy whose targeted weights differ from the original by a known rank-2 delta gives those
//! deltas back (to 1e-5, without clamping); the modules are exactly the model's own LoRA
//! targets; an unchanged text encoder is skipped; mismatched models and bad values exit 2.

use crate::common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use lorafuse::linalg::Mat;
use lorafuse::lora::extract::{extract, targets, ExtractArgs, Parts};
use lorafuse::lora::resize::factors;
use lorafuse::lora::{kohya, LoraTargets};
use lorafuse::model::family::{family_of, WeightsFrom};
use lorafuse::model::layers::kohya_name;
use lorafuse::{CpuBackend, DType};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use common::low_rank;
use common::tools::{assert_bad_input, TempDir};

/// The demo model (diffusers folder), written once.
fn original() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = common::tools::process_dir("extract-orig");
        lorafuse::demo::model::write_tiny_model(&d, 7).unwrap();
        d
    })
}

/// Copies the original (a diffusers folder) to `dst`, adding to every f32 weight of the
/// components `parts` for which `pick` holds its own rank-2 delta; returns the deltas by
/// kohya module name.
fn tuned_copy(dst: &Path, parts: &[&str], pick: &dyn Fn(&str) -> bool) -> BTreeMap<String, Mat> {
    let src = original();
    std::fs::create_dir_all(dst).unwrap();
    let mut deltas = BTreeMap::new();
    for entry in ["model_index.json", "unet", "vae", "text_encoder"] {
        let from = src.join(entry);
        let to = dst.join(entry);
        if from.is_file() {
            std::fs::copy(&from, &to).unwrap();
            continue;
        }
        std::fs::create_dir_all(&to).unwrap();
        for f in std::fs::read_dir(&from).unwrap() {
            let f = f.unwrap().path();
            let name = f.file_name().unwrap().to_str().unwrap().to_string();
            if !(name.ends_with(".safetensors") && parts.contains(&entry)) {
                std::fs::copy(&f, to.join(&name)).unwrap();
                continue;
            }
            let bytes = std::fs::read(&f).unwrap();
            let st = SafeTensors::deserialize(&bytes).unwrap();
            let mut out: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
            for (i, (key, view)) in st.tensors().into_iter().enumerate() {
                let shape = view.shape().to_vec();
                let mut data = view.data().to_vec();
                let path = format!("{entry}.{key}");
                if pick(&path) && shape.len() >= 2 && view.dtype() == Dtype::F32 {
                    let cols = shape[1..].iter().product();
                    let d = low_rank(shape[0], cols, 1000 + i as u64);
                    let w: Vec<f32> = data
                        .chunks_exact(4)
                        .zip(&d.data)
                        .map(|(b, x)| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) + *x as f32)
                        .collect();
                    data = w.iter().flat_map(|x| x.to_le_bytes()).collect();
                    let module = kohya_name(path.strip_suffix(".weight").unwrap());
                    deltas.insert(module, d);
                }
                out.push((key.to_string(), view.dtype(), shape, data));
            }
            let views: Vec<(String, TensorView<'_>)> = out
                .iter()
                .map(|(k, d, s, b)| (k.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
                .collect();
            std::fs::write(to.join(&name), safetensors::serialize(views, None).unwrap()).unwrap();
        }
    }
    deltas
}

#[test]
fn targets_are_the_models_own_lora_targets() {
    let orig = original();
    let parts = Parts::load(orig, &Default::default()).unwrap();
    let be = CpuBackend::new();
    let models = family_of(orig)
        .unwrap()
        .load(WeightsFrom::Checkpoint(orig), &be, &mut |_| {})
        .unwrap();
    let names = |v: Vec<lorafuse::lora::TargetLayer>| -> Vec<String> {
        let mut n: Vec<String> = v.into_iter().map(|t| t.name).collect();
        n.sort();
        n
    };
    let (plain, _) = models.adapter_targets(LoraTargets::Transformer, true);
    let mut with_conv = plain.clone();
    with_conv.extend(models.unet.conv_targets());
    with_conv.extend(models.unet.resnet_linear_targets());
    for (conv, want) in [(false, names(plain)), (true, names(with_conv))] {
        let got: Vec<String> = targets(&parts, conv)
            .into_iter()
            .map(|t| t.module)
            .collect();
        assert_eq!(got, want, "conv = {conv}");
    }
}

fn args<'a>(tuned: &'a Path, out: &'a Path) -> ExtractArgs<'a> {
    ExtractArgs {
        original: original(),
        tuned,
        output: out,
        dim: 4,
        conv_dim: Some(3),
        clamp_quantile: None,
        min_diff: 0.01,
        precision: None,
        v_parameterization: false,
        hints: Default::default(),
    }
}

#[test]
fn extract_recovers_a_rank_2_difference() {
    let dir = TempDir::new("rank2");
    let tuned = dir.path("tuned");
    let deltas = tuned_copy(&tuned, &["unet", "text_encoder"], &|_| true);
    let out = dir.path("x.safetensors");
    let report = extract(&args(&tuned, &out), &|_, _| {}).unwrap();
    assert!(!report.text_encoder_skipped);
    let set = kohya::load(&out, &CpuBackend::new(), DType::F64).unwrap();
    assert_eq!(set.len(), report.unet_modules + report.text_encoder_modules);
    assert!(report.text_encoder_modules > 0);
    for m in set.modules() {
        let want = &deltas[&m.name];
        let (u, d) = factors(m);
        let got = u.matmul(&d);
        assert_eq!(m.alpha, m.rank() as f64, "{}: alpha = rank", m.name);
        let err = got
            .data
            .iter()
            .zip(&want.data)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(err < 1e-5, "{}: delta recovered to {err:e}", m.name);
        let expect_rank = match m.kind {
            lorafuse::lora::LayerKind::Conv { .. } => 3,
            _ => 4,
        };
        assert_eq!(m.rank(), expect_rank, "{}", m.name);
    }
    let meta = lorafuse::model::checkpoint::safetensors::SafetensorsFile::open(&out).unwrap();
    let meta = meta.metadata();
    assert_eq!(meta["ss_network_dim"], "4");
    assert_eq!(meta["ss_network_alpha"], "4.0");
    assert_eq!(
        meta["ss_network_args"],
        r#"{"conv_alpha":"3.0","conv_dim":"3"}"#
    );
    // The SAI model spec, as sd-scripts' extract writes it for an SD1 LoRA.
    let stem = out.file_stem().unwrap().to_str().unwrap();
    assert_eq!(meta["modelspec.title"], stem);
    assert_eq!(meta["modelspec.architecture"], "stable-diffusion-v1/lora");
    assert_eq!(meta["modelspec.resolution"], "512x512");
    assert_eq!(meta["modelspec.prediction_type"], "epsilon");
    assert!(meta.contains_key("modelspec.date"));
    assert!(!meta.contains_key("modelspec.encoder_layer"));

    // Clamped at the 0.99 quantile: no factor entry beyond it, and the product is close.
    let clamped = dir.path("c.safetensors");
    let mut a = args(&tuned, &clamped);
    a.clamp_quantile = Some(0.99);
    extract(&a, &|_, _| {}).unwrap();
    let set = kohya::load(&clamped, &CpuBackend::new(), DType::F64).unwrap();
    for m in set.modules() {
        let (u, d) = factors(m);
        let all: Vec<f64> = u.data.iter().chain(&d.data).copied().collect();
        let hi = all.iter().fold(0.0f64, |a, x| a.max(*x));
        assert!(all.iter().all(|x| x.abs() <= hi + 1e-7), "{}", m.name);
    }
}

#[test]
fn an_unchanged_text_encoder_is_skipped() {
    let dir = TempDir::new("te");
    let tuned = dir.path("tuned");
    tuned_copy(&tuned, &["unet"], &|p| p.contains(".attentions."));
    let out = dir.path("x.safetensors");
    let mut a = args(&tuned, &out);
    a.conv_dim = None;
    let report = extract(&a, &|_, _| {}).unwrap();
    assert!(report.text_encoder_skipped);
    assert_eq!(report.text_encoder_max_diff, 0.0);
    let set = kohya::load(&out, &CpuBackend::new(), DType::F64).unwrap();
    assert!(set
        .modules()
        .iter()
        .all(|m| m.name.starts_with("lora_unet_")));
    assert!(set
        .modules()
        .iter()
        .all(|m| !matches!(m.kind, lorafuse::lora::LayerKind::Conv { .. })));
}

#[test]
fn extract_bad_input_exits_2_naming_it() {
    let dir = TempDir::new("bad");
    let o = dir.path("o.safetensors");
    let (orig, o) = (original().to_str().unwrap(), o.to_str().unwrap());
    let other = "tests/fixtures/tiny-sd15-diffusers";
    let x = format!("extract --original {orig}");
    let cases = [
        (format!("{x} --tuned nope {o} --dim 4"), "nope"),
        (
            format!("{x} --tuned {other} {o} --dim 4"),
            "the two checkpoints are not the same model",
        ),
        (format!("{x} --tuned {orig} {o} --dim 0"), "at least 1"),
        (
            format!("{x} --tuned tests/fixtures/tiny-lora.safetensors {o} --dim 2"),
            "tiny-lora.safetensors is not an SD1.x, SD2.x or SDXL checkpoint",
        ),
        (
            format!("{x} --tuned {orig} {o} --dim 2 --clamp-quantile 1.5"),
            "--clamp-quantile 1.5",
        ),
        (
            format!("extract --original {other} --tuned {other} {o} --dim 2 --v-parameterization"),
            "says it predicts epsilon (scheduler/scheduler_config.json)",
        ),
    ];
    assert_bad_input(&cases);
    assert!(!Path::new(o).exists());
}
