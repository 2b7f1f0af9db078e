//! `merge --model` and `extract` on SDXL and SD2.x single files (the committed tiny fixtures):
//! - extract(base, base + a known rank-2 delta on every weight of the UNet and the encoders,
//!   each third of a fused OpenCLIP in_proj its own) gives those deltas back to 1e-5, on the
//!   model's own LoRA targets, with the family's metadata (SDXL; SD2.x);
//! - an SDXL LoRA on every target of the model (LoCon convs, te1, te2's q/k/v thirds) merged
//!   into the SGM file gives W + ratio·scale·up·down in f16 (1 ulp), every module used, every
//!   other tensor unchanged; merged at fp32 and extracted again, the products come back; a
//!   LoHa module into a UNet conv and a DoRA module into te2's v third likewise;
//! - LoRAs of SDXL (SD2.x) merged into one LoRA keep the family's names and metadata;
//! - the refusals across families (merge, merge into one LoRA, extract) exit 2 naming both.
//!
//! The module names are written out here as sd-scripts names them ([`modules_of`]), not taken
//! from lorafuse's mapping, except SD2.x's UNet (diffusers paths through `ldm_to_diffusers`).

use crate::common;

use std::collections::BTreeMap;
use std::path::Path;

use half::f16;
use lorafuse::linalg::Mat;
use lorafuse::lora::export::{save_kohya, SavePrecision};
use lorafuse::lora::extract::{extract, targets, ExtractArgs, Parts};
use lorafuse::lora::merge::merge_into_checkpoint;
use lorafuse::lora::merge_loras::{merge_loras, LoraMergeArgs};
use lorafuse::lora::resize::factors;
use lorafuse::lora::{kohya, LoraSet, LoraTargets};
use lorafuse::model::checkpoint::safetensors::SafetensorsFile;
use lorafuse::model::checkpoint::sdxl::load_sdxl_with;
use lorafuse::model::checkpoint::{ldm_to_diffusers, ConfigHints, LdmLayout};
use lorafuse::model::family::{family_of, WeightsFrom};
use lorafuse::model::layers::kohya_name;
use lorafuse::rng::Rng;
use lorafuse::{CpuBackend, DType, Tensor};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use common::tools::{assert_bad_input, lorafuse as run, TempDir};
use common::{f16_ulps as ulps, low_rank};

const SDXL: &str = "tests/fixtures/sdxl/model/tiny-sdxl.safetensors";
const SD2: &str = "tests/fixtures/sd2/tiny-sd2.safetensors";
const SDXL_DIR: &str = "tests/fixtures/sdxl/model/tiny-sdxl-diffusers";
const SD2_DIR: &str = "tests/fixtures/sd2/tiny-sd2-diffusers";
const SD15: &str = "tests/fixtures/tiny-sd15.safetensors";
const SD1_LORA: &str = "tests/fixtures/tiny-lora.safetensors";
const SDXL_LORA: &str = "tests/fixtures/sdxl/text/lora.safetensors";

/// A module's name and the third of a fused in_proj it adapts (None: the whole weight).
type Module = (String, Option<usize>);

/// kohya's module names of the stored weight `key` of an SGM (SDXL) or LDM (SD2.x) file:
/// SDXL's UNet by its SGM path (`lora_unet_input_blocks_4_1_proj_in`), its first encoder by
/// transformers' path (`lora_te1_text_model_encoder_layers_0_mlp_fc1`), OpenCLIP's blocks
/// (SDXL's second encoder `lora_te2_`, SD2.x's `lora_te_`) renamed as sd-scripts renames them;
/// SD2.x's UNet by its diffusers path (`ldm`: the LDM file's layout; None for SGM's).
fn modules_of(key: &str, ldm: Option<&LdmLayout>) -> Vec<Module> {
    let Some(k) = key
        .strip_suffix(".weight")
        .or_else(|| key.strip_suffix("_weight"))
    else {
        return Vec::new();
    };
    let under = |p: &str| k.strip_prefix(p).map(|r| r.replace('.', "_"));
    if let Some(r) = under("model.diffusion_model.") {
        let Some(layout) = ldm else {
            return vec![(format!("lora_unet_{r}"), None)];
        };
        let path = ldm_to_diffusers(key, layout).unwrap();
        return vec![(kohya_name(path.strip_suffix(".weight").unwrap()), None)];
    }
    if let Some(r) = under("conditioner.embedders.0.transformer.") {
        return vec![(format!("lora_te1_{r}"), None)];
    }
    let (rest, prefix) = match (
        k.strip_prefix("conditioner.embedders.1.model.transformer.resblocks."),
        k.strip_prefix("cond_stage_model.model.transformer.resblocks."),
    ) {
        (Some(r), _) => (r, "lora_te2"),
        (_, Some(r)) => (r, "lora_te"),
        _ => return Vec::new(),
    };
    let (i, t) = rest.split_once('.').unwrap();
    let name = |x: &str| format!("{prefix}_text_model_encoder_layers_{i}_{x}");
    match t {
        "attn.in_proj" => ["q", "k", "v"]
            .iter()
            .enumerate()
            .map(|(j, p)| (name(&format!("self_attn_{p}_proj")), Some(j)))
            .collect(),
        "attn.out_proj" => vec![(name("self_attn_out_proj"), None)],
        "mlp.c_fc" => vec![(name("mlp_fc1"), None)],
        "mlp.c_proj" => vec![(name("mlp_fc2"), None)],
        _ => Vec::new(),
    }
}

/// A stored tensor: dtype, shape, bytes.
type Stored = (Dtype, Vec<usize>, Vec<u8>);

/// The layout of an LDM file's keys; None for an SGM (SDXL) file.
fn ldm_layout(stored: &BTreeMap<String, Stored>) -> Option<LdmLayout> {
    let sgm = stored.keys().any(|k| k.starts_with("conditioner."));
    (!sgm).then(|| LdmLayout::infer(stored.keys().map(String::as_str)))
}

fn read(path: &Path) -> BTreeMap<String, Stored> {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(k, v)| (k, (v.dtype(), v.shape().to_vec(), v.data().to_vec())))
        .collect()
}

fn write(path: &Path, tensors: &BTreeMap<String, Stored>) {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(k, (d, s, b))| (k.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

/// The values of an f16 or f32 tensor.
fn values((dtype, _, bytes): &Stored) -> Vec<f64> {
    match dtype {
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f64())
            .collect(),
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64)
            .collect(),
        other => panic!("{other:?}"),
    }
}

fn as_f32(v: &[f64]) -> Vec<u8> {
    v.iter().flat_map(|x| (*x as f32).to_le_bytes()).collect()
}

/// Writes `fixture` with its float tensors in f32 to `base`, and to `tuned` the same plus its
/// own rank-2 delta on every weight that names modules (one per third of a fused in_proj);
/// returns the deltas by module name.
fn tuned_pair(fixture: &str, base: &Path, tuned: &Path) -> BTreeMap<String, Mat> {
    let stored = read(Path::new(fixture));
    let layout = ldm_layout(&stored);
    let (mut b, mut t) = (BTreeMap::new(), BTreeMap::new());
    let mut deltas = BTreeMap::new();
    for (i, (key, s)) in stored.iter().enumerate() {
        if !matches!(s.0, Dtype::F16 | Dtype::F32) {
            b.insert(key.clone(), s.clone());
            t.insert(key.clone(), s.clone());
            continue;
        }
        let w = values(s);
        let mut tw = w.clone();
        let modules = if s.1.len() >= 2 {
            modules_of(key, layout.as_ref())
        } else {
            Vec::new()
        };
        for (j, (module, third)) in modules.into_iter().enumerate() {
            let rows = s.1[0] / if third.is_some() { 3 } else { 1 };
            let cols = w.len() / s.1[0];
            let d = low_rank(rows, cols, 7000 + 3 * i as u64 + j as u64);
            let start = third.unwrap_or(0) * rows * cols;
            for (x, dx) in tw[start..start + rows * cols].iter_mut().zip(&d.data) {
                *x += dx;
            }
            deltas.insert(module, d);
        }
        b.insert(key.clone(), (Dtype::F32, s.1.clone(), as_f32(&w)));
        t.insert(key.clone(), (Dtype::F32, s.1.clone(), as_f32(&tw)));
    }
    write(base, &b);
    write(tuned, &t);
    deltas
}

/// What the tiny single files' shapes cannot tell (a real model needs none of these).
fn hints(path: &Path) -> ConfigHints {
    let sdxl = family_of(path).unwrap().id() == "sdxl";
    ConfigHints {
        norm_num_groups: Some(if sdxl { 8 } else { 4 }),
        attention_head_width: Some(if sdxl { 8 } else { 4 }),
        addition_time_embed_dim: sdxl.then_some(8),
    }
}

fn args<'a>(original: &'a Path, tuned: &'a Path, out: &'a Path, rank: usize) -> ExtractArgs<'a> {
    ExtractArgs {
        hints: hints(original),
        original,
        tuned,
        output: out,
        dim: rank,
        conv_dim: Some(rank),
        clamp_quantile: None,
        min_diff: 0.0,
        precision: None,
        v_parameterization: false,
    }
}

/// The model's own LoRA targets: the trainer's (UNet transformers, every text encoder), and
/// with `conv` the ResNet/sampler layers LoCon adds; from the fixture's diffusers folder (the
/// same model as its single file, tests/sdxl_model.rs and golden.rs).
fn model_targets(file: &str, conv: bool) -> Vec<lorafuse::lora::TargetLayer> {
    let path = if file == SDXL { SDXL_DIR } else { SD2_DIR };
    let be = CpuBackend::new();
    let models = family_of(Path::new(path))
        .unwrap()
        .load(WeightsFrom::Checkpoint(Path::new(path)), &be, &mut |_| {})
        .unwrap();
    let (mut layers, _) = models.adapter_targets(LoraTargets::Transformer, true);
    if conv {
        layers.extend(models.unet.conv_targets());
        layers.extend(models.unet.resnet_linear_targets());
    }
    layers
}

fn names(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[test]
fn extract_targets_are_the_models_own_for_sdxl_and_sd2() {
    for path in [SDXL, SD2] {
        let parts = Parts::load(Path::new(path), &hints(Path::new(path))).unwrap();
        for conv in [false, true] {
            let want = names(
                model_targets(path, conv)
                    .into_iter()
                    .map(|t| t.name)
                    .collect(),
            );
            let got = names(
                targets(&parts, conv)
                    .into_iter()
                    .map(|t| t.module)
                    .collect(),
            );
            assert_eq!(got, want, "{path}, conv = {conv}");
        }
    }
}

/// Every module of the LoRA at `out` is its delta in `deltas` (to 1e-5, alpha = rank); returns
/// the names.
fn assert_recovered(out: &Path, deltas: &BTreeMap<String, Mat>) -> Vec<String> {
    let set = kohya::load(out, &CpuBackend::new(), DType::F64).unwrap();
    for m in set.modules() {
        let want = deltas
            .get(&m.name)
            .unwrap_or_else(|| panic!("{}: no delta", m.name));
        let (u, d) = factors(m);
        assert_eq!(m.alpha, m.rank() as f64, "{}", m.name);
        let err = (u.matmul(&d).data.iter().zip(&want.data))
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(err < 1e-5, "{}: delta recovered to {err:e}", m.name);
    }
    set.modules().iter().map(|m| m.name.clone()).collect()
}

fn metadata(path: &Path) -> std::collections::HashMap<String, String> {
    SafetensorsFile::open(path).unwrap().metadata().clone()
}

#[test]
fn sdxl_extract_recovers_deltas_on_the_unet_and_both_encoders() {
    let dir = TempDir::new("xl-extract");
    let (base, tuned, out) = (
        dir.path("base.safetensors"),
        dir.path("tuned.safetensors"),
        dir.path("x.safetensors"),
    );
    let deltas = tuned_pair(SDXL, &base, &tuned);
    let report = extract(&args(&base, &tuned, &out, 3), &|_, _| {}).unwrap();
    assert!(!report.text_encoder_skipped);
    let got = assert_recovered(&out, &deltas);
    let want: Vec<String> = model_targets(SDXL, true)
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names(got.clone()), names(want));
    for (prefix, n) in [("lora_te1_", 12), ("lora_te2_", 18)] {
        let count = got.iter().filter(|m| m.starts_with(prefix)).count();
        assert_eq!(count, n, "{prefix}");
    }
    for third in ["q", "k", "v"] {
        let m = format!("lora_te2_text_model_encoder_layers_2_self_attn_{third}_proj");
        assert!(got.contains(&m), "{m}");
    }
    assert!(got.contains(&"lora_unet_input_blocks_4_1_proj_in".to_string()));
    assert!(got.contains(&"lora_unet_output_blocks_2_2_conv".to_string()));
    assert_eq!(report.text_encoder_modules, 30);
    let meta = metadata(&out);
    assert_eq!(meta["ss_base_model_version"], "sdxl_base_v1-0");
    assert_eq!(meta["ss_v2"], "False");
    assert_eq!(
        meta["modelspec.architecture"],
        "stable-diffusion-xl-v1-base/lora"
    );
    assert_eq!(meta["modelspec.resolution"], "1024x1024");
}

#[test]
fn sd2_extract_recovers_deltas_with_fused_in_proj_thirds() {
    let dir = TempDir::new("sd2-extract");
    let (base, tuned, out) = (
        dir.path("base.safetensors"),
        dir.path("tuned.safetensors"),
        dir.path("x.safetensors"),
    );
    let deltas = tuned_pair(SD2, &base, &tuned);
    let mut a = args(&base, &tuned, &out, 3);
    a.v_parameterization = true;
    extract(&a, &|_, _| {}).unwrap();
    let got = assert_recovered(&out, &deltas);
    let want: Vec<String> = model_targets(SD2, true)
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names(got.clone()), names(want));
    assert!(got.contains(&"lora_te_text_model_encoder_layers_0_self_attn_k_proj".to_string()));
    assert!(got.contains(&"lora_unet_down_blocks_1_attentions_0_proj_in".to_string()));
    let meta = metadata(&out);
    assert_eq!(meta["ss_v2"], "True");
    assert_eq!(meta["ss_base_model_version"], "sd_v2_v");
    assert_eq!(
        meta["modelspec.architecture"],
        "stable-diffusion-v2-768-v/lora"
    );
    assert_eq!(meta["modelspec.prediction_type"], "v");
    assert_eq!(meta["modelspec.resolution"], "768x768");
}

/// A LoRA of rank 3, alpha 2 on every target of the SDXL fixture (LoCon on its convs), up and
/// down random, saved (fp32, `meta`) to `path` and read back in f64.
fn sdxl_lora(path: &Path, meta: &BTreeMap<String, String>, seed: u64) -> LoraSet {
    let be = CpuBackend::new();
    let mut rng = Rng::new(seed);
    let layers = model_targets(SDXL, true);
    let mut set = LoraSet::init(&be, &layers, 3, 2.0, &mut rng).unwrap();
    for m in set.modules_mut() {
        let dims = m.up.dims().to_vec();
        let n = dims.iter().product();
        let v = rng.normal_vec(n).into_iter().map(|x| 0.05 * x).collect();
        m.up = Tensor::from_f64(dims, v).unwrap();
    }
    save_kohya(path, &set, SavePrecision::Fp32, meta).unwrap();
    kohya::load(path, &be, DType::F64).unwrap()
}

fn sdxl_meta() -> BTreeMap<String, String> {
    BTreeMap::from([(
        "ss_base_model_version".to_string(),
        "sdxl_base_v1-0".to_string(),
    )])
}

/// ratio·scale·up·down of a module, [out, in·k²].
fn product(set: &LoraSet, name: &str, ratio: f64) -> Mat {
    let m = &set.modules()[set.find(name).unwrap()];
    let (u, d) = factors(m);
    let mut p = u.matmul(&d);
    for x in &mut p.data {
        *x *= ratio * m.scale();
    }
    p
}

#[test]
fn sdxl_merge_bakes_every_module_into_its_stored_weight() {
    let dir = TempDir::new("xl-merge");
    let lora = sdxl_lora(&dir.path("l.safetensors"), &sdxl_meta(), 5);
    let out = dir.path("merged.safetensors");
    let ratio = 0.8;
    let report = merge_into_checkpoint(Path::new(SDXL), &[(&lora, ratio)], &out, None).unwrap();
    assert_eq!(report.modules_per_lora, vec![lora.len()]);
    let (base, merged) = (read(Path::new(SDXL)), read(&out));
    assert_eq!(
        base.keys().collect::<Vec<_>>(),
        merged.keys().collect::<Vec<_>>()
    );
    let layout = ldm_layout(&base);
    let mut used = 0;
    for (key, b) in &base {
        let m = &merged[key];
        assert_eq!((b.0, &b.1), (m.0, &m.1), "{key}");
        let modules: Vec<Module> = modules_of(key, layout.as_ref())
            .into_iter()
            .filter(|(n, _)| lora.find(n).is_some())
            .collect();
        if modules.is_empty() {
            assert_eq!(b.2, m.2, "{key} changed");
            continue;
        }
        assert!(report.merged.iter().any(|w| &w.key == key), "{key}");
        let mut want = values(b);
        for (name, third) in &modules {
            used += 1;
            let p = product(&lora, name, ratio);
            let start = third.unwrap_or(0) * p.data.len();
            for (x, d) in want[start..start + p.data.len()].iter_mut().zip(&p.data) {
                *x += d;
            }
        }
        let (got, before) = (values(m), values(b));
        let mut moved = 0;
        for (j, (g, w)) in got.iter().zip(&want).enumerate() {
            let (g, w) = (f16::from_f64(*g), f16::from_f64(*w));
            assert!(ulps(g, w) <= 1, "{key}[{j}]: {g} vs {w}");
            moved += usize::from(got[j] != before[j]);
        }
        assert!(
            moved * 2 > got.len(),
            "{key}: {moved} of {} moved",
            got.len()
        );
    }
    assert_eq!(used, lora.len(), "every module merged once");
    assert_eq!(
        report.merged.len(),
        lora.len() - 6,
        "te2's q/k/v share 3 weights"
    );

    // The merged file loads as an SDXL model.
    assert_eq!(family_of(&out).unwrap().id(), "sdxl");
    load_sdxl_with(&out, &hints(Path::new(SDXL))).unwrap();
}

#[test]
fn sdxl_merge_then_extract_gives_the_products_back() {
    let dir = TempDir::new("xl-round");
    let lora = sdxl_lora(&dir.path("l.safetensors"), &sdxl_meta(), 9);
    let merged = dir.path("merged.safetensors");
    let ratio = 0.6;
    merge_into_checkpoint(
        Path::new(SDXL),
        &[(&lora, ratio)],
        &merged,
        Some(SavePrecision::Fp32),
    )
    .unwrap();
    let out = dir.path("x.safetensors");
    extract(&args(Path::new(SDXL), &merged, &out, 3), &|_, _| {}).unwrap();
    let deltas: BTreeMap<String, Mat> = (lora.modules().iter())
        .map(|m| (m.name.clone(), product(&lora, &m.name, ratio)))
        .collect();
    let got = assert_recovered(&out, &deltas);
    assert_eq!(got.len(), lora.len());
}

#[test]
fn sdxl_loras_merge_into_one_sdxl_lora() {
    let dir = TempDir::new("xl-loras");
    // The first says nothing but its names, the second only its model spec's architecture;
    // the merge says SDXL and keeps the architecture.
    let (a, b) = (dir.path("a.safetensors"), dir.path("b.safetensors"));
    let la = sdxl_lora(&a, &BTreeMap::new(), 1);
    let spec = "stable-diffusion-xl-v1-base/lora";
    let lb = sdxl_lora(
        &b,
        &BTreeMap::from([("modelspec.architecture".to_string(), spec.to_string())]),
        2,
    );
    let out = dir.path("ab.safetensors");
    let loras = [(a.clone(), 0.5), (b.clone(), 1.5)];
    merge_loras(&LoraMergeArgs {
        loras: &loras,
        output: &out,
        new_rank: None,
        new_conv_rank: None,
        clamp_quantile: None,
        precision: None,
    })
    .unwrap();
    let merged = kohya::load(&out, &CpuBackend::new(), DType::F64).unwrap();
    assert_eq!(merged.len(), la.len());
    for m in [
        "lora_te2_text_model_encoder_layers_1_self_attn_v_proj",
        "lora_unet_middle_block_1_proj_out",
    ] {
        let want = product(&la, m, 0.5).data;
        let got = product(&merged, m, 1.0).data;
        for ((g, x), y) in got.iter().zip(want).zip(product(&lb, m, 1.5).data) {
            assert!((g - (x + y)).abs() < 1e-6, "{m}");
        }
    }
    let meta = metadata(&out);
    assert_eq!(meta["ss_base_model_version"], "sdxl_base_v1-0");
    assert_eq!(meta["modelspec.architecture"], spec);
}

/// SD2.x LoRAs merged into one keep `ss_v2` (the fixture's only family key) and their sum.
#[test]
fn sd2_loras_merge_into_one_sd2_lora() {
    const SD2_LORA: &str = "tests/fixtures/sd2/tiny-sd2-lora.safetensors";
    let dir = TempDir::new("sd2-loras");
    let out = dir.path("ab.safetensors");
    let loras = [(SD2_LORA.into(), 0.5), (SD2_LORA.into(), 0.25)];
    merge_loras(&LoraMergeArgs {
        loras: &loras,
        output: &out,
        new_rank: None,
        new_conv_rank: None,
        clamp_quantile: None,
        precision: None,
    })
    .unwrap();
    assert_eq!(metadata(&out)["ss_v2"], "True");
    let (one, merged) = (
        kohya::load(SD2_LORA, &CpuBackend::new(), DType::F64).unwrap(),
        kohya::load(&out, &CpuBackend::new(), DType::F64).unwrap(),
    );
    assert_eq!(merged.len(), one.len());
    let m = "lora_unet_down_blocks_1_attentions_0_proj_in";
    let (want, got) = (product(&one, m, 0.75).data, product(&merged, m, 1.0).data);
    assert!(
        want.iter().zip(&got).all(|(w, g)| (w - g).abs() < 1e-6),
        "{m}"
    );
}

#[test]
fn refusals_across_families_name_both_and_exit_2() {
    let dir = TempDir::new("xl-refuse");
    let o = dir.path("o.safetensors");
    let o = o.to_str().unwrap();
    let cases = [
        (
            format!("merge --model {SDXL} --lora {SD1_LORA} --out {o}"),
            ["Stable Diffusion 1.x", "SDXL"],
        ),
        (
            format!("merge --model {SD15} --lora {SDXL_LORA} --out {o}"),
            ["LoRA for SDXL", "Stable Diffusion 1.x model"],
        ),
        (
            format!("merge --model {SD2} --lora {SDXL_LORA} --out {o}"),
            ["LoRA for SDXL", "Stable Diffusion 2.x model"],
        ),
        (
            format!("merge --lora {SD1_LORA} --lora {SDXL_LORA} --out {o}"),
            ["LoRA for SDXL", "LoRA for Stable Diffusion 1.x"],
        ),
        (
            format!("extract --original {SD2} --tuned {SDXL} {o} --dim 2"),
            ["SDXL model", "Stable Diffusion 2.x model"],
        ),
    ];
    let first: Vec<(String, &str)> = cases.iter().map(|(l, w)| (l.clone(), w[0])).collect();
    assert_bad_input(&first);
    for (line, want) in &cases {
        let argv: Vec<&str> = line.split_whitespace().collect();
        let (_, err) = run(&argv);
        assert!(want.iter().all(|w| err.contains(w)), "{line}: {err}");
    }
    assert!(!Path::new(o).exists());

    // Without the CLI's family check, an SD1.x LoRA matches nothing in SDXL and says why.
    let sd1 = kohya::load(SD1_LORA, &CpuBackend::new(), DType::F64).unwrap();
    let err = merge_into_checkpoint(Path::new(SDXL), &[(&sd1, 1.0)], Path::new(o), None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("not kohya's SDXL names"), "{err}");
    assert!(!Path::new(o).exists());
}

/// LyCORIS's adapters into SDXL: a LoHa module on a UNet 3x3 conv adds
/// ratio·(alpha/r)·(w1_a·w1_b) ⊙ (w2_a·w2_b); a DoRA module on te2's v_proj rescales the v
/// third of the fused in_proj row by row, W + ratio·(V − W) with V = W'·m / (‖W'‖ + eps),
/// W' = W + (alpha/r)·up·down; the q and k thirds stay as they were.
#[test]
fn sdxl_loha_and_dora_modules_merge_into_their_weights() {
    use lorafuse::lora::{Algo, LayerKind, LoraModule};
    let dir = TempDir::new("xl-lyco");
    let out = dir.path("merged.safetensors");
    let (conv, fused) = (
        "model.diffusion_model.input_blocks.4.0.in_layers.2.weight",
        "conditioner.embedders.1.model.transformer.resblocks.2.attn.in_proj_weight",
    );
    let base = read(Path::new(SDXL));
    let (co, cn) = (base[conv].1[0], base[conv].1[1] * 9);
    let d = base[fused].1[1];
    let r = 2;
    let mut rng = Rng::new(21);
    let mut t = |rows: usize, cols: usize, s: f64| {
        let v: Vec<f64> = rng.normal_vec(rows * cols).iter().map(|x| s * x).collect();
        (Tensor::from_f64([rows, cols], v.clone()).unwrap(), v)
    };
    let ((w1a, a1), (w1b, b1), (w2a, a2), (w2b, b2)) =
        (t(co, r, 1.0), t(r, cn, 1.0), t(co, r, 1.0), t(r, cn, 1.0));
    let ((up, u), (down, dn)) = (t(d, r, 0.05), t(r, d, 0.05));
    let m: Vec<f64> = (0..d).map(|k| 0.5 + (k % 7) as f64 / 10.0).collect();
    let set = LoraSet::new(vec![
        LoraModule {
            name: "lora_unet_input_blocks_4_0_in_layers_2".into(),
            down: w1b,
            up: w1a,
            alpha: 3.0,
            kind: LayerKind::Linear,
            algo: Algo::Loha {
                w2_a: w2a,
                w2_b: w2b,
            },
        },
        LoraModule {
            name: "lora_te2_text_model_encoder_layers_2_self_attn_v_proj".into(),
            down,
            up,
            alpha: 1.0,
            kind: LayerKind::Linear,
            algo: Algo::Dora {
                magnitude: Tensor::from_f64([d, 1], m.clone()).unwrap(),
            },
        },
    ]);
    let ratio = 0.7;
    let report = merge_into_checkpoint(Path::new(SDXL), &[(&set, ratio)], &out, None).unwrap();
    assert_eq!(report.merged.len(), 2);
    let merged = read(&out);
    let close = |got: f64, want: f64, what: String| {
        let (g, w) = (f16::from_f64(got), f16::from_f64(want));
        assert!(ulps(g, w) <= 1, "{what}: {g} vs {w}");
    };
    let (w, g) = (values(&base[conv]), values(&merged[conv]));
    for o in 0..co {
        for j in 0..cn {
            let p =
                |a: &[f64], b: &[f64]| (0..r).map(|k| a[o * r + k] * b[k * cn + j]).sum::<f64>();
            let dw = 3.0 / r as f64 * p(&a1, &b1) * p(&a2, &b2);
            close(
                g[o * cn + j],
                w[o * cn + j] + ratio * dw,
                format!("conv[{o},{j}]"),
            );
        }
    }
    let (w, g) = (values(&base[fused]), values(&merged[fused]));
    let v0 = 2 * d * d;
    for o in 0..d {
        let row = &w[v0 + o * d..v0 + (o + 1) * d];
        let adapted: Vec<f64> = (0..d)
            .map(|j| row[j] + (0..r).map(|k| u[o * r + k] * dn[k * d + j]).sum::<f64>() / r as f64)
            .collect();
        let norm = adapted.iter().map(|x| x * x).sum::<f64>().sqrt();
        let f = m[o] / (norm + lorafuse::lora::dora::EPS);
        for j in 0..d {
            let want = row[j] + ratio * (adapted[j] * f - row[j]);
            close(g[v0 + o * d + j], want, format!("v row {o} col {j}"));
        }
    }
    assert_eq!(g[..v0], w[..v0], "q and k thirds unchanged");
}
