//! `lorafuse resize` (and the other LoRA tools) against the numpy fixture of
//! tests/fixtures/make_svd_fixture.py: the same rank reproduces up·down, a lower rank is the
//! best approximation (Eckart–Young), the dynamic methods pick the ranks sd-scripts'
//! resize_lora.py rules give; metadata; bad input exits 2 naming it.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::tools::{assert_bad_input, TempDir};

use lorafuse::linalg::Mat;
use lorafuse::lora::rank::DynamicMethod;
use lorafuse::lora::resize::{factors, resize, ResizeArgs};
use lorafuse::lora::{kohya, LoraModule, LoraSet};
use lorafuse::model::checkpoint::safetensors::SafetensorsFile;
use lorafuse::{CpuBackend, DType};

const RESIZE_IN: &str = "tests/fixtures/svd/resize-in.safetensors";
const LIN: &str = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q";
const CONV: &str = "lora_unet_down_blocks_0_resnets_0_conv1";

fn load(p: &Path) -> LoraSet {
    kohya::load(p, &CpuBackend::new(), DType::F64).unwrap()
}

/// scale · up · down of a module, [out, in·taps].
fn delta(m: &LoraModule) -> Mat {
    let (u, d) = factors(m);
    let mut w = u.matmul(&d);
    for x in &mut w.data {
        *x *= m.scale();
    }
    w
}

fn diff_norm(a: &Mat, b: &Mat) -> f64 {
    a.data
        .iter()
        .zip(&b.data)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f64>()
        .sqrt()
}

fn fixture() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string("tests/fixtures/svd/resize.json").unwrap())
        .unwrap()
}

fn args<'a>(input: &'a Path, output: &'a Path, rank: usize) -> ResizeArgs<'a> {
    ResizeArgs {
        input,
        output,
        rank,
        conv_rank: None,
        dynamic: None,
        precision: None,
    }
}

#[test]
fn resize_to_the_same_rank_reproduces_the_product() {
    let t = TempDir::new("same");
    let out = t.path("same.safetensors");
    let report = resize(&args(Path::new(RESIZE_IN), &out, 32)).unwrap();
    let (before, after) = (load(Path::new(RESIZE_IN)), load(&out));
    for name in [LIN, CONV] {
        let a = &before.modules()[before.find(name).unwrap()];
        let b = &after.modules()[after.find(name).unwrap()];
        assert_eq!(b.kind, a.kind);
        assert!((b.scale() - a.scale()).abs() < 1e-7, "{name}: scale kept");
        let (da, db) = (delta(a), delta(b));
        let rel = diff_norm(&da, &db) / da.norm();
        assert!(rel < 1e-6, "{name}: product changed by {rel:e}");
    }
    // The conv module's product has rank 6 (out = 6): capped there, alpha = 4/8 · 6.
    let conv = &after.modules()[after.find(CONV).unwrap()];
    assert_eq!((conv.rank(), conv.alpha), (6, 3.0));
    assert_eq!(conv.down.dims(), &[6, 4, 3, 3]);
    assert_eq!(conv.up.dims(), &[6, 6, 1, 1]);
    assert_eq!(report.modules.len(), 2);

    // inspect names each module's adapter kind.
    let s = lorafuse::lora::inspect::inspect(&out).unwrap();
    let kinds: Vec<(&str, &str)> = s
        .per_module
        .iter()
        .map(|m| (m.name.as_str(), m.kind.as_str()))
        .collect();
    assert_eq!(kinds, vec![(LIN, "LoRA linear"), (CONV, "LoCon 3x3 conv")]);
    assert_eq!(s.conv_modules, 0, "a 3x3 conv is not a 1x1 conv");
    assert!(s
        .to_string()
        .contains("LoCon 3x3 conv (1 modules), LoRA linear (1 modules)"));
    assert!(s
        .module_table()
        .contains("LoCon 3x3 conv   rank    6  alpha 3.0"));
}

#[test]
fn resize_to_a_lower_rank_is_the_best_approximation() {
    let fx = fixture();
    let t = TempDir::new("lower");
    for k in [1usize, 4, 8] {
        let out = t.path(&format!("r{k}.safetensors"));
        resize(&args(Path::new(RESIZE_IN), &out, k)).unwrap();
        let (before, after) = (load(Path::new(RESIZE_IN)), load(&out));
        for name in [LIN, CONV] {
            let a = &before.modules()[before.find(name).unwrap()];
            let b = &after.modules()[after.find(name).unwrap()];
            // The conv product has rank 6 (out = 6): a larger rank is capped there.
            let cap = if name == CONV { 6 } else { 32 };
            assert_eq!(b.rank(), k.min(cap), "{name}");
            assert!((b.scale() - a.scale()).abs() < 1e-7);
            // ‖W − W_k‖_F (W = up·down, unscaled) = √Σ_{i≥k} s_i², numpy's.
            let (wa, wb) = (delta(a), delta(b));
            let got = diff_norm(&wa, &wb) / a.scale();
            let want = fx[name]["fro_error"][k - 1].as_f64().unwrap();
            assert!(
                (got - want).abs() <= 1e-5 * want + 1e-6,
                "{name} rank {k}: error {got} vs Eckart–Young {want}"
            );
        }
    }
    let meta = SafetensorsFile::open(&t.path("r8.safetensors")).unwrap();
    let m = meta.metadata();
    assert_eq!(m["ss_network_dim"], "8");
    // The last module (by name) is the conv: alpha 4/8 · 6 (its rank capped at 6).
    assert_eq!(m["ss_network_alpha"], "3.0");
    assert_eq!(
        m["ss_training_comment"],
        "dimension is resized from 32 to 8; fixture"
    );
    assert_eq!(
        m["ss_network_args"],
        r#"{"conv_alpha":"3.0","conv_dim":"6"}"#
    );
}

#[test]
fn dynamic_methods_pick_the_fixture_ranks() {
    let fx = fixture();
    let t = TempDir::new("dyn");
    let cases = fx[LIN]["dynamic"].as_array().unwrap();
    for (i, case) in cases.iter().enumerate() {
        let method: DynamicMethod = case["method"].as_str().unwrap().parse().unwrap();
        let param = case["param"].as_f64().unwrap();
        let out = t.path(&format!("d{i}.safetensors"));
        let mut a = args(
            Path::new(RESIZE_IN),
            &out,
            case["cap"].as_u64().unwrap() as usize,
        );
        a.dynamic = Some((method, param));
        let report = resize(&a).unwrap();
        let after = load(&out);
        for name in [LIN, CONV] {
            let want = fx[name]["dynamic"][i]["rank"].as_u64().unwrap() as usize;
            let m = &after.modules()[after.find(name).unwrap()];
            assert_eq!(m.rank(), want, "{name} {method} {param}");
            let r = report.modules.iter().find(|r| r.name == name).unwrap();
            assert_eq!(r.choice.rank, want);
            assert!(r.choice.fro_retained > 0.0 && r.choice.fro_retained <= 1.0 + 1e-12);
        }
        let meta = SafetensorsFile::open(&out).unwrap();
        assert_eq!(meta.metadata()["ss_network_dim"], "Dynamic");
        assert_eq!(meta.metadata()["ss_network_alpha"], "Dynamic");
        assert!(meta.metadata()["ss_training_comment"]
            .starts_with(&format!("Dynamic resize with {method}: ")));
    }
}

#[test]
fn resize_precision_fp16() {
    let t = TempDir::new("fp16");
    let out = t.path("h.safetensors");
    let mut a = args(Path::new(RESIZE_IN), &out, 4);
    a.precision = Some("fp16".parse().unwrap());
    resize(&a).unwrap();
    let f = SafetensorsFile::open(&out).unwrap();
    let raw = f.tensor_info(&format!("{LIN}.lora_up.weight")).unwrap();
    assert_eq!(raw.dtype, safetensors::tensor::Dtype::F16);
}

#[test]
fn resize_bad_input_exits_2_naming_it() {
    let t = TempDir::new("bad");
    let out = t.path("o.safetensors");
    let o = out.to_str().unwrap();
    let r = format!("resize {RESIZE_IN} {o} --new-rank 4");
    let cases = [
        (
            format!("resize missing.safetensors {o} --new-rank 4"),
            "missing.safetensors: no such file",
        ),
        (format!("resize {RESIZE_IN} {o} --new-rank 0"), "at least 1"),
        (
            format!("{r} --dynamic-method sv_fro"),
            "needs --dynamic-param",
        ),
        (
            format!("{r} --dynamic-method sv_x --dynamic-param 1"),
            "--dynamic-method sv_x: expected one of sv_ratio, sv_fro, sv_cumulative",
        ),
        (
            format!("{r} --dynamic-method sv_fro --dynamic-param 1.5"),
            "1.5 for sv_fro",
        ),
        (
            format!("resize {RESIZE_IN} {RESIZE_IN} --new-rank 4"),
            "is the input itself",
        ),
    ];
    assert_bad_input(&cases);
    assert!(!out.exists());
}

// ---------------------------------------------------------------------------------------------
// merge: LoRA into LoRA

const TINY_LORA: &str = "tests/fixtures/tiny-lora.safetensors";

/// A second LoRA on every other module of the fixture LoRA (rank 3, alpha 1.5) plus a LoCon
/// module the fixture lacks, written to `path`.
fn second_lora(path: &Path) -> LoraSet {
    use lorafuse::lora::export::{save_kohya, SavePrecision};
    use lorafuse::lora::LayerKind;
    use lorafuse::Tensor;
    let base = load(Path::new(TINY_LORA));
    let mut rng = lorafuse::rng::Rng::new(9);
    let mut modules: Vec<LoraModule> = base
        .modules()
        .iter()
        .step_by(2)
        .map(|m| {
            let (o, i) = (m.up.dims()[0], m.down.dims()[1]);
            LoraModule {
                name: m.name.clone(),
                down: Tensor::from_f64([3, i], rng.normal_vec(3 * i)).unwrap(),
                up: Tensor::from_f64([o, 3], rng.normal_vec(o * 3)).unwrap(),
                alpha: 1.5,
                kind: m.kind,
                algo: Default::default(),
            }
        })
        .collect();
    modules.push(LoraModule {
        name: CONV.into(),
        down: Tensor::from_f64([2, 4, 3, 3], rng.normal_vec(72)).unwrap(),
        up: Tensor::from_f64([5, 2, 1, 1], rng.normal_vec(10)).unwrap(),
        alpha: 2.0,
        kind: LayerKind::Conv { kernel: 3 },
        algo: Default::default(),
    });
    let set = LoraSet::new(modules);
    save_kohya(path, &set, SavePrecision::Fp32, &Default::default()).unwrap();
    load(path)
}

/// Σ ratio · scale · up · down of the module `name` over the sets that have it.
fn summed(sets: &[(&LoraSet, f64)], name: &str) -> Mat {
    let mut acc: Option<Mat> = None;
    for (s, r) in sets {
        if let Some(i) = s.find(name) {
            let mut d = delta(&s.modules()[i]);
            for x in &mut d.data {
                *x *= r;
            }
            acc = Some(match acc {
                None => d,
                Some(mut a) => {
                    for (x, y) in a.data.iter_mut().zip(&d.data) {
                        *x += y;
                    }
                    a
                }
            });
        }
    }
    acc.unwrap()
}

#[test]
fn lora_merge_stacks_ranks_and_equals_the_sum_of_deltas() {
    use lorafuse::lora::merge_loras::{merge_loras, LoraMergeArgs};
    let t = TempDir::new("mergelora");
    let b_path = t.path("b.safetensors");
    let b = second_lora(&b_path);
    let a = load(Path::new(TINY_LORA));
    let out = t.path("ab.safetensors");
    let loras = [(PathBuf::from(TINY_LORA), 0.7), (b_path.clone(), -0.4)];
    let report = merge_loras(&LoraMergeArgs {
        loras: &loras,
        output: &out,
        new_rank: None,
        new_conv_rank: None,
        clamp_quantile: None,
        precision: None,
    })
    .unwrap();
    assert_eq!(report.modules_per_lora, vec![192, 97]);
    assert_eq!(report.modules, 193);
    let merged = load(&out);
    let sets = [(&a, 0.7), (&b, -0.4)];
    for m in merged.modules() {
        let want = summed(&sets, &m.name);
        let rank = a.find(&m.name).map_or(0, |i| a.modules()[i].rank())
            + b.find(&m.name).map_or(0, |i| b.modules()[i].rank());
        assert_eq!(m.rank(), rank, "{}: ranks stacked", m.name);
        let rel = diff_norm(&delta(m), &want) / want.norm();
        assert!(rel < 1e-6, "{}: {rel:e}", m.name);
    }
    let meta = SafetensorsFile::open(&out).unwrap();
    assert_eq!(meta.metadata()["ss_network_dim"], "Dynamic");

    // SVD to a rank at least the stacked one: the same sum; to rank 2: the best rank-2
    // approximation of it (Eckart–Young against the exact SVD of the formed sum).
    for (rank, name) in [(16usize, "svd16"), (2, "svd2")] {
        let out = t.path(&format!("{name}.safetensors"));
        merge_loras(&LoraMergeArgs {
            loras: &loras,
            output: &out,
            new_rank: Some(rank),
            new_conv_rank: None,
            clamp_quantile: None,
            precision: None,
        })
        .unwrap();
        let merged = load(&out);
        assert_eq!(merged.len(), 193);
        for m in merged.modules() {
            assert_eq!(m.alpha, m.rank() as f64);
            let want = summed(&sets, &m.name);
            let s = lorafuse::linalg::svd(&want).s;
            let k = rank.min(s.len());
            let optimal = s[k..].iter().map(|x| x * x).sum::<f64>().sqrt();
            let got = diff_norm(&delta(m), &want);
            assert!(
                (got - optimal).abs() <= 1e-6 * want.norm(),
                "{name} {}: {got} vs {optimal}",
                m.name
            );
        }
    }
}

#[test]
fn merge_bad_input_exits_2_naming_it() {
    use lorafuse::lora::export::{save_kohya, SavePrecision};
    let t = TempDir::new("mergebad");
    let out = t.path("o.safetensors");
    let o = out.to_str().unwrap();
    // The fixture's first module with another input size.
    let mut other = load(Path::new(TINY_LORA)).modules()[..1].to_vec();
    other[0].down = lorafuse::Tensor::from_f64([4, 3], vec![0.5; 12]).unwrap();
    let wrong = t.path("wrong.safetensors");
    save_kohya(
        &wrong,
        &LoraSet::new(other),
        SavePrecision::Fp32,
        &Default::default(),
    )
    .unwrap();
    let w = wrong.to_str().unwrap();
    let cases = [
        (
            format!("merge --lora {TINY_LORA} --lora {TINY_LORA} --ratios 0.5 --out {o}"),
            "--ratios has 1 values for 2 --lora files",
        ),
        (
            format!("merge --lora gone.safetensors --out {o}"),
            "gone.safetensors: no such file",
        ),
        (
            format!("merge --lora {TINY_LORA} --lora {w} --out {o}"),
            "the LoRAs are for different models",
        ),
        (
            format!("merge --lora {TINY_LORA} --new-rank 0 --out {o}"),
            "at least 1",
        ),
        (
            format!("merge --lora a.safetensors:0.5 --ratios 0.5 --out {o}"),
            "use one or the other",
        ),
    ];
    assert_bad_input(&cases);
    assert!(!out.exists());
}

// ---------------------------------------------------------------------------------------------
// README

/// Every `lorafuse` line of README.md's LoRA-tools example block runs and exits 0, with its
/// file names standing for: my-lora = the resize fixture, v1-5 / my-finetune = two demo
/// models (diffusers folders, seeds 7 and 8), a = the fixture LoRA, b = it resized to rank 2.
/// Outputs go to a temporary folder (the commands' working folder).
#[test]
fn readme_examples_run() {
    let t = TempDir::new("readme");
    let root = std::env::current_dir().unwrap();
    let b = t.path("b-input.safetensors");
    resize(&args(Path::new(TINY_LORA), &b, 2)).unwrap();
    let base = lorafuse::demo::model::write_tiny_model(&t.path("base"), 7).unwrap();
    let tuned = lorafuse::demo::model::write_tiny_model(&t.path("tuned"), 8).unwrap();
    let names: [(&str, PathBuf); 5] = [
        ("my-lora.safetensors", root.join(RESIZE_IN)),
        ("v1-5.safetensors", base),
        ("my-finetune.safetensors", tuned),
        ("a.safetensors", root.join(TINY_LORA)),
        ("b.safetensors", b),
    ];
    let readme = std::fs::read_to_string("README.md").unwrap();
    let block = readme
        .split("<!-- lora-tools-examples")
        .nth(1)
        .expect("the example block's marker")
        .split("```")
        .nth(1)
        .unwrap();
    let lines: Vec<&str> = block
        .lines()
        .filter(|l| l.starts_with("lorafuse "))
        .collect();
    assert_eq!(lines.len(), 6, "{block}");
    for line in lines {
        let argv: Vec<String> = line
            .split_whitespace()
            .skip(1)
            .map(|a| {
                let (file, ratio) = a.split_once(':').unwrap_or((a, ""));
                match names.iter().find(|(n, _)| *n == file) {
                    Some((_, p)) if ratio.is_empty() => p.display().to_string(),
                    Some((_, p)) => format!("{}:{ratio}", p.display()),
                    None => a.to_string(),
                }
            })
            .collect();
        let out = Command::new(env!("CARGO_BIN_EXE_lorafuse"))
            .args(&argv)
            .current_dir(&t.0)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{line}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for f in [
        "my-lora-r8.safetensors",
        "my-lora-dyn.safetensors",
        "extracted.safetensors",
        "ab.safetensors",
        "ab-r16.safetensors",
    ] {
        assert!(t.path(f).is_file(), "{f}");
    }
}

/// A tensor that is no module's down/up/alpha is not carried over by resize, and the report
/// names it; a `dora_scale` beside a module's LoRA keys makes it DoRA, and is carried.
#[test]
fn resize_reports_tensors_it_drops() {
    use safetensors::tensor::{Dtype, SafeTensors, TensorView};
    let t = TempDir::new("dropped");
    let bytes = std::fs::read(RESIZE_IN).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let extra = vec![0u8; 36 * 4];
    let with = |key: &str, name: &str| {
        let mut views: Vec<(String, TensorView<'_>)> = st
            .tensors()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        views.push((
            key.to_string(),
            TensorView::new(Dtype::F32, vec![36, 1], &extra).unwrap(),
        ));
        let input = t.path(name);
        std::fs::write(&input, safetensors::serialize(views, None).unwrap()).unwrap();
        input
    };
    let out = t.path("out.safetensors");
    let input = with(&format!("{LIN}.dora_scale"), "with-dora.safetensors");
    let report = resize(&args(&input, &out, 4)).unwrap();
    assert!(report.dropped.is_empty(), "{:?}", report.dropped);
    let f = SafetensorsFile::open(&out).unwrap();
    assert!(f.tensor_info(&format!("{LIN}.dora_scale")).is_some());
    std::fs::remove_file(&out).unwrap();
    let extra_key = "unknown_extra_tensor".to_string();
    let input = with(&extra_key, "with-extra.safetensors");
    let report = resize(&args(&input, &out, 4)).unwrap();
    assert_eq!(report.dropped, vec![extra_key.clone()]);
    let f = SafetensorsFile::open(&out).unwrap();
    assert!(f.tensor_info(&extra_key).is_none());
    assert_eq!(f.len(), 6);
}

/// A LyCORIS LoHa file (tests/fixtures/lycoris): `inspect` names its modules' kind, rank and
/// alpha; `resize` refuses it naming the module and what to do instead, writing nothing.
#[test]
fn loha_files_are_inspected_and_refused_by_resize() {
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lycoris/loha.safetensors");
    let s = lorafuse::lora::inspect::inspect(&fixture).unwrap();
    assert_eq!(s.kinds.get("LoHa"), Some(&2), "{:?}", s.kinds);
    assert_eq!(
        s.ranks.iter().map(|(r, n)| (*r, *n)).collect::<Vec<_>>(),
        [(2, 1), (3, 1)]
    );
    assert_eq!(s.alphas, [(1.5, 1), (3.0, 1)]);
    let dir = TempDir::new("loha-resize");
    let out = dir.path("out.safetensors");
    let e = resize(&ResizeArgs {
        input: &fixture,
        output: &out,
        rank: 1,
        conv_rank: None,
        dynamic: None,
        precision: None,
    })
    .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("lora_unet_conv") && msg.contains("loha") && msg.contains("lorafuse merge"),
        "{msg}"
    );
    assert_eq!(e.kind(), lorafuse::error::ErrorKind::BadInput);
    assert!(!out.exists());
}

/// The LyCORIS DoRA fixture (tests/fixtures/lycoris/dora.safetensors): `inspect` names each
/// module's kind as DoRA with its layer and counts `dora_scale` in the parameters. `resize`
/// keeps DoRA: the magnitudes carried bit for bit; at the full rank the adapted weight V of
/// every module is the input's (to the f32 the factors are written in), at rank 1 its delta is the best rank-1
/// approximation of the input's.
#[test]
fn dora_files_are_inspected_and_resized_keeping_their_magnitudes() {
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lycoris/dora.safetensors");
    let s = lorafuse::lora::inspect::inspect(&fixture).unwrap();
    assert_eq!(s.kinds.get("DoRA (LoRA linear)"), Some(&1), "{:?}", s.kinds);
    assert_eq!(
        s.kinds.get("DoRA (LoCon 3x3 conv)"),
        Some(&1),
        "{:?}",
        s.kinds
    );
    // linear: down 2x6, up 5x2, m 5; conv: down 3x3x3x3, up 4x3, m 4.
    assert_eq!(s.parameters, 12 + 10 + 5 + 81 + 12 + 4);
    let t = TempDir::new("dora-resize");
    let be = CpuBackend::new();
    let input = kohya::load(&fixture, &be, DType::F64).unwrap();
    let mut rng = lorafuse::rng::Rng::new(5);
    for rank in [3, 1] {
        let out = t.path(&format!("r{rank}.safetensors"));
        let report = resize(&args(&fixture, &out, rank)).unwrap();
        let resized = kohya::load(&out, &be, DType::F64).unwrap();
        assert_eq!(resized.modules().len(), 2);
        for (a, b) in input.modules().iter().zip(resized.modules()) {
            let (da, db) = (a.dora().unwrap(), b.dora().unwrap());
            assert_eq!(
                da.magnitude.to_f64_vec(),
                db.magnitude.to_f64_vec(),
                "{}",
                a.name
            );
            let (up, down) = factors(a);
            let (o, n) = (up.rows, down.cols);
            let weight = common::randn(&mut rng, &[o, n]);
            let (va, vb) = (
                da.decompose(&be, &weight).unwrap(),
                db.decompose(&be, &weight).unwrap(),
            );
            if rank >= a.rank() {
                let e = common::rel_err(&vb.v.to_f64_vec(), &va.v.to_f64_vec());
                // (the new factors are written in f32)
                assert!(e < 1e-6, "{}: V moved by {e}", a.name);
            } else {
                // The delta kept is the best rank-1 one: its share of the product's Frobenius
                // norm is the report's.
                let m = report.modules.iter().find(|m| m.name == a.name).unwrap();
                let delta = |d: &lorafuse::Tensor| -> Vec<f64> {
                    let w = weight.to_f64_vec();
                    d.to_f64_vec().iter().zip(&w).map(|(x, y)| x - y).collect()
                };
                let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
                let share = norm(&delta(&vb.adapted)) / norm(&delta(&va.adapted));
                assert!(
                    (share - m.choice.fro_retained).abs() < 1e-6,
                    "{}: {share} vs {}",
                    a.name,
                    m.choice.fro_retained
                );
                assert_eq!(b.rank(), 1);
            }
        }
    }
}

/// A LoRA of another family (here SDXL-named modules; and one whose metadata says SDXL) given
/// to the SD1.5 fixture is refused by `sample` and by `merge --model`, naming both families.
#[test]
fn a_lora_of_another_family_is_refused_naming_both() {
    use lorafuse::lora::export::{save_kohya, SavePrecision};
    let t = TempDir::new("family");
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-sd15.safetensors");
    let model = model.to_str().unwrap();
    let mut m = load(Path::new(TINY_LORA)).modules()[..1].to_vec();
    m[0].name = "lora_te1_text_model_encoder_layers_0_mlp_fc1".into();
    let by_names = t.path("xl-names.safetensors");
    save_kohya(
        &by_names,
        &LoraSet::new(m),
        SavePrecision::Fp32,
        &Default::default(),
    )
    .unwrap();
    let by_meta = t.path("xl-meta.safetensors");
    let meta = std::collections::BTreeMap::from([(
        "ss_base_model_version".to_string(),
        "sdxl_base_v1-0".to_string(),
    )]);
    save_kohya(
        &by_meta,
        &load(Path::new(TINY_LORA)),
        SavePrecision::Fp32,
        &meta,
    )
    .unwrap();
    let out = t.path("o.safetensors");
    let png = t.path("o.png");
    let mut cases = Vec::new();
    for (lora, evidence) in [
        (&by_names, "lora_te1_text_model_encoder_layers_0_mlp_fc1"),
        (&by_meta, "sdxl_base_v1-0"),
    ] {
        let l = lora.to_str().unwrap();
        cases.push((
            format!(
                "merge --model {model} --lora {l} --out {}",
                out.to_str().unwrap()
            ),
            evidence,
        ));
        cases.push((
            format!(
                "sample --model {model} --lora {l} --out {} x",
                png.to_str().unwrap()
            ),
            evidence,
        ));
    }
    assert_bad_input(&cases);
    for (line, _) in &cases {
        let argv: Vec<&str> = line.split_whitespace().collect();
        let (_, err) = common::tools::lorafuse(&argv);
        assert!(
            err.contains("LoRA for SDXL") && err.contains("Stable Diffusion 1.x model"),
            "{line}: {err}"
        );
    }
    assert!(!out.exists() && !png.exists());
}

/// Decoded RGB bytes of a PNG.
fn pixels(p: &Path) -> Vec<u8> {
    image::open(p).unwrap().to_rgb8().into_raw()
}

/// `sample` applies a DoRA file (at weight 1) and a LoHa file (at any weight: its alpha times
/// the weight) as the layers run them: each image differs from the base model's and from the
/// others. DoRA at another weight, or sharing a layer with another file, is refused naming the
/// module. (The layers' DoRA and LoHa are checked against LyCORIS in ops_dora / ops_locon.)
#[test]
fn sample_applies_dora_and_loha_files() {
    use lorafuse::lora::export::{save_kohya, SavePrecision};
    use lorafuse::lora::LoraTargets;
    use lorafuse::lora::{dora, Algo, LayerKind};
    use lorafuse::model::family::{family_of, WeightsFrom};
    let t = TempDir::new("sample-adapters");
    let model = lorafuse::demo::model::write_tiny_model(&t.path("model"), 3).unwrap();
    let be = CpuBackend::new();
    let models = family_of(&model)
        .unwrap()
        .load(WeightsFrom::Checkpoint(&model), &be, &mut |_| {})
        .unwrap();
    let (layers, _) = models.adapter_targets(LoraTargets::Transformer, true);
    let mut rng = lorafuse::rng::Rng::new(11);
    let base = LoraSet::init(&be, &layers, 2, 1.0, &mut rng).unwrap();
    let model = model.to_str().unwrap();
    let mut dora_modules = Vec::new();
    let mut loha_modules = Vec::new();
    for m in base.modules() {
        let m = LoraModule {
            up: common::randn(&mut rng, m.up.dims()),
            ..m.clone()
        };
        let out = m.up.dims()[0];
        let magnitude = common::uniform(&mut rng, &dora::magnitude_shape(m.kind, out), 0.5, 1.5);
        dora_modules.push(LoraModule {
            algo: Algo::Dora { magnitude },
            ..m.clone()
        });
        if m.kind == LayerKind::Linear {
            let w2_a = common::randn(&mut rng, m.up.dims());
            let w2_b = common::randn(&mut rng, m.down.dims());
            loha_modules.push(LoraModule {
                algo: Algo::Loha { w2_a, w2_b },
                ..m.clone()
            });
        }
    }
    let write = |name: &str, modules: Vec<LoraModule>| {
        let p = t.path(name);
        save_kohya(
            &p,
            &LoraSet::new(modules),
            SavePrecision::Fp32,
            &Default::default(),
        )
        .unwrap();
        p.to_str().unwrap().to_string()
    };
    let (dora, loha) = (
        write("dora.safetensors", dora_modules),
        write("loha.safetensors", loha_modules),
    );
    let prompt = "a cat --w 64 --h 64 --s 4 --d 7";
    let sample = |model: &str, lora: Option<&str>, png: &str| {
        let png = t.path(png);
        let mut args = vec!["sample", "--model", model, "--out", png.to_str().unwrap()];
        if let Some(l) = lora {
            args.extend(["--lora", l]);
        }
        args.push(prompt);
        let (code, err) = common::tools::lorafuse(&args);
        assert_eq!(code, Some(0), "{err}");
        pixels(&png)
    };
    let plain = sample(model, None, "plain.png");
    let mut images = vec![plain];
    for with in [format!("{dora}:1"), format!("{loha}:0.5"), loha.clone()] {
        let got = sample(model, Some(&with), "with.png");
        for other in &images {
            let moved = got.iter().zip(other).filter(|(a, b)| a != b).count();
            assert!(moved > got.len() / 4, "{with}: only {moved} values moved");
        }
        images.push(got);
    }
    // The set `sample` applies: the modules as they are, LoHa's alpha times its weight.
    let read = |p: &str| kohya::load(Path::new(p), &be, DType::F32).unwrap();
    let (d, l) = (read(&dora), read(&loha));
    for (from, w) in [(&d, 1.0), (&l, 0.5)] {
        let set = LoraSet::combine(&be, &[(from, w)]).unwrap();
        assert_eq!(set.modules().len(), from.modules().len());
        for (m, f) in set.modules().iter().zip(from.modules()) {
            assert_eq!(m.algo.name(), f.algo.name(), "{}", m.name);
            assert_eq!(m.alpha, f.alpha * w, "{}", m.name);
            assert_eq!(m.up.to_f32_vec(), f.up.to_f32_vec());
        }
    }
    let png = t.path("x.png");
    let png = png.to_str().unwrap();
    common::tools::assert_bad_input(&[
        (
            format!("sample --model {model} --lora {dora}:0.7 --out {png} x"),
            "weight 1 only",
        ),
        (
            format!("sample --model {model} --lora {dora} --lora {loha} --out {png} x"),
            "share its layer",
        ),
    ]);
}
