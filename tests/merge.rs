//! Merging LoRAs into a single-file checkpoint: the fixture LoRA into the fixture SD1.5 at
//! ratio 0.7 changes exactly the 192 targeted weights, each by ratio·(alpha/r)·up·down
//! (checked element by element against a computation written here, and for three weights
//! against a hand-written loop), and leaves every other tensor byte-identical; precision
//! conversion; a LoCon module into its 3x3 conv (against an index-by-index computation); the
//! refusals (a LoRA that matches nothing, a LoRA of the wrong size); LoHa and DoRA modules
//! baked into a 3x3 conv.

use crate::common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use half::f16;
use lorafuse::lora::export::SavePrecision;
use lorafuse::lora::merge::merge_into_checkpoint;
use lorafuse::lora::{kohya, LayerKind, LoraModule, LoraSet};
use lorafuse::model::checkpoint::safetensors::SafetensorsFile;
use lorafuse::model::checkpoint::{load_sd15_with, ConfigHints};
use lorafuse::{CpuBackend, DType, Error, Tensor};
use safetensors::tensor::Dtype;

use common::f16_ulps as ulps;

const BASE: &str = "tests/fixtures/tiny-sd15.safetensors";
const LORA: &str = "tests/fixtures/tiny-lora.safetensors";

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "lorafuse-test-merge-{}-{n}-{tag}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
    fn is_empty(&self) -> bool {
        std::fs::read_dir(&self.0).unwrap().next().is_none()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn fixture_lora() -> LoraSet {
    kohya::load(LORA, &CpuBackend::new(), DType::F64).unwrap()
}

fn f16s(bytes: &[u8]) -> Vec<f16> {
    bytes
        .chunks_exact(2)
        .map(|b| f16::from_le_bytes([b[0], b[1]]))
        .collect()
}

/// W + ratio · scale · up · down for one module, in f64, rounded once to f16.
fn expected(w: &[f16], m: &LoraModule, ratio: f64) -> Vec<f16> {
    let (up, down) = (m.up.to_f64_vec(), m.down.to_f64_vec());
    let (o, r, i) = (m.up.dims()[0], m.rank(), m.down.dims()[1]);
    assert_eq!(w.len(), o * i);
    let mut out = Vec::with_capacity(o * i);
    for row in 0..o {
        for col in 0..i {
            let mut delta = 0.0;
            for k in 0..r {
                delta += up[row * r + k] * down[k * i + col];
            }
            out.push(f16::from_f64(
                w[row * i + col].to_f64() + ratio * m.scale() * delta,
            ));
        }
    }
    out
}

#[test]
fn fixture_merge_changes_exactly_the_targeted_weights() {
    let dir = TempDir::new("fixture");
    let out = dir.path("merged.safetensors");
    let lora = fixture_lora();
    let report = merge_into_checkpoint(Path::new(BASE), &[(&lora, 0.7)], &out, None).unwrap();
    assert_eq!(report.merged.len(), 192);
    assert_eq!(report.modules_per_lora, vec![192]);
    assert_eq!(report.tensors, 991);
    assert_eq!(report.converted, 0);
    assert!(report.to_string().contains("into 192 weights"), "{report}");

    let base = SafetensorsFile::open(Path::new(BASE)).unwrap();
    let merged = SafetensorsFile::open(&out).unwrap();
    let mut base_keys: Vec<&str> = base.names().collect();
    let mut merged_keys: Vec<&str> = merged.names().collect();
    base_keys.sort_unstable();
    merged_keys.sort_unstable();
    assert_eq!(base_keys, merged_keys);
    assert_eq!(base.metadata(), merged.metadata());

    let targeted: std::collections::HashMap<&str, &str> = report
        .merged
        .iter()
        .map(|m| (m.key.as_str(), m.module.as_str()))
        .collect();
    let (mut exact, mut total) = (0usize, 0usize);
    for &k in &base_keys {
        let (a, b) = (base.tensor_info(k).unwrap(), merged.tensor_info(k).unwrap());
        assert_eq!(a.dtype, b.dtype, "{k}");
        assert_eq!(a.shape, b.shape, "{k}");
        let Some(module) = targeted.get(k) else {
            assert_eq!(base.bytes(a), merged.bytes(b), "{k} changed");
            continue;
        };
        let m = &lora.modules()[lora.find(module).unwrap()];
        let want = expected(&f16s(base.bytes(a)), m, 0.7);
        let got = f16s(merged.bytes(b));
        let before = f16s(base.bytes(a));
        let changed = got.iter().zip(&before).filter(|(g, w)| g != w).count();
        assert!(
            changed * 2 > got.len(),
            "{k}: only {changed} of {} changed",
            got.len()
        );
        for (j, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(ulps(*g, *w) <= 1, "{k}[{j}]: {g} vs {w}");
            exact += usize::from(g == w);
            total += 1;
        }
    }
    // A single rounding of the f64 sum: nearly every element is exact; a 1-ulp difference
    // can only come from summation order at a rounding tie.
    assert!(
        exact as f64 >= 0.999 * total as f64,
        "{exact} of {total} exact"
    );

    // Three weights by a hand-written loop over one element each.
    let hand = [
        (
            "model.diffusion_model.input_blocks.1.1.proj_in.weight",
            "lora_unet_down_blocks_0_attentions_0_proj_in",
            (3usize, 5usize),
        ),
        (
            "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.attn2.to_k.weight",
            "lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_attn2_to_k",
            (7, 63),
        ),
        (
            "model.diffusion_model.middle_block.1.transformer_blocks.0.ff.net.0.proj.weight",
            "lora_unet_mid_block_attentions_0_transformer_blocks_0_ff_net_0_proj",
            (190, 11),
        ),
    ];
    for (key, module, (row, col)) in hand {
        assert_eq!(targeted.get(key), Some(&module), "{key}");
        let m = &lora.modules()[lora.find(module).unwrap()];
        let (a, b) = (
            base.tensor_info(key).unwrap(),
            merged.tensor_info(key).unwrap(),
        );
        let in_f = a.shape[1];
        let w = f16s(base.bytes(a))[row * in_f + col].to_f64();
        let (up, down, r) = (m.up.to_f64_vec(), m.down.to_f64_vec(), m.rank());
        let mut delta = 0.0;
        for k in 0..r {
            delta += up[row * r + k] * down[k * in_f + col];
        }
        // alpha 2, rank 4 in the fixture: scale 0.5.
        let want = f16::from_f64(w + 0.7 * 0.5 * delta);
        let got = f16s(merged.bytes(b))[row * in_f + col];
        assert!(ulps(got, want) <= 1, "{key}: {got} vs {want}");
    }

    // The merged file loads as a model (the tiny one has 4 norm groups, not SD1.5's 32).
    let hints = ConfigHints {
        norm_num_groups: Some(4),
        ..ConfigHints::default()
    };
    let model = load_sd15_with(&out, &hints).unwrap();
    assert!(!model.unet.1.is_empty());
}

#[test]
fn two_halves_equal_one_whole_and_precision_converts_floats_only() {
    let dir = TempDir::new("halves");
    let lora = fixture_lora();
    let whole = dir.path("whole.safetensors");
    let halves = dir.path("halves.safetensors");
    merge_into_checkpoint(Path::new(BASE), &[(&lora, 0.7)], &whole, None).unwrap();
    let r = merge_into_checkpoint(
        Path::new(BASE),
        &[(&lora, 0.35), (&lora, 0.35)],
        &halves,
        None,
    )
    .unwrap();
    assert!(r.merged.iter().all(|m| m.loras == vec![0, 1]));
    let (a, b) = (
        SafetensorsFile::open(&whole).unwrap(),
        SafetensorsFile::open(&halves).unwrap(),
    );
    for k in a.names() {
        let (x, y) = (
            f16s(a.bytes(a.tensor_info(k).unwrap())),
            f16s(b.bytes(b.tensor_info(k).unwrap())),
        );
        if a.tensor_info(k).unwrap().dtype == Dtype::F16 {
            for (p, q) in x.iter().zip(&y) {
                assert!(ulps(*p, *q) <= 1, "{k}");
            }
        }
    }

    // fp32 output: float tensors become F32 (f16 → f32 exactly where unchanged), integer
    // tensors keep their dtype and bytes.
    let fp32 = dir.path("fp32.safetensors");
    let r = merge_into_checkpoint(
        Path::new(BASE),
        &[(&lora, 0.7)],
        &fp32,
        Some(SavePrecision::Fp32),
    )
    .unwrap();
    let base = SafetensorsFile::open(Path::new(BASE)).unwrap();
    let f16_tensors = base
        .names()
        .filter(|k| base.tensor_info(k).unwrap().dtype == Dtype::F16)
        .count();
    assert_eq!(r.converted, f16_tensors - 192);
    let c = SafetensorsFile::open(&fp32).unwrap();
    for k in base.names() {
        let (t0, t1) = (base.tensor_info(k).unwrap(), c.tensor_info(k).unwrap());
        match t0.dtype {
            Dtype::I64 | Dtype::I32 => {
                assert_eq!(t1.dtype, t0.dtype, "{k}");
                assert_eq!(base.bytes(t0), c.bytes(t1), "{k}");
            }
            _ => assert_eq!(t1.dtype, Dtype::F32, "{k}"),
        }
    }
    let k = "first_stage_model.decoder.conv_out.weight";
    let (t0, t1) = (base.tensor_info(k).unwrap(), c.tensor_info(k).unwrap());
    let widened: Vec<f32> = f16s(base.bytes(t0)).iter().map(|x| x.to_f32()).collect();
    let stored: Vec<f32> = c
        .bytes(t1)
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    assert_eq!(widened, stored);
}

#[test]
fn lora_matching_nothing_is_an_error_and_writes_nothing() {
    let dir = TempDir::new("nomatch");
    let out = dir.path("merged.safetensors");
    let lora = fixture_lora();
    // The same LoRA under LDM-style names (A1111's fallback naming): matches nothing here.
    let renamed: Vec<LoraModule> = lora
        .modules()
        .iter()
        .enumerate()
        .map(|(i, m)| LoraModule {
            name: format!("lora_unet_input_blocks_{i}_1_proj_in"),
            ..m.clone()
        })
        .collect();
    let e = merge_into_checkpoint(
        Path::new(BASE),
        &[(&LoraSet::new(renamed), 1.0)],
        &out,
        None,
    )
    .unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, Error::Lora { .. }), "{e:?}");
    assert!(text.contains("192 of the 192 modules"), "{text}");
    assert!(
        text.contains("lora_unet_input_blocks_0_1_proj_in"),
        "{text}"
    );
    assert!(text.contains("LDM layout"), "{text}");
    assert!(dir.is_empty());

    // One module too many (a text-encoder layer the tiny model does not have) also refuses.
    let mut extra = lora.modules().to_vec();
    let mut te = extra[0].clone();
    te.name = "lora_te_text_model_encoder_layers_11_mlp_fc1".into();
    extra.push(te);
    let e = merge_into_checkpoint(Path::new(BASE), &[(&LoraSet::new(extra), 1.0)], &out, None)
        .unwrap_err();
    assert!(e.to_string().contains("1 of the 193 modules"), "{e}");
    assert!(dir.is_empty());
}

#[test]
fn wrong_shapes_ratios_and_paths_are_refused() {
    let dir = TempDir::new("refuse");
    let out = dir.path("merged.safetensors");
    let lora = fixture_lora();
    let mut wrong = lora.modules().to_vec();
    wrong[5].down = Tensor::from_f64([4, 3], vec![0.0; 12]).unwrap();
    let name = wrong[5].name.clone();
    let e = merge_into_checkpoint(Path::new(BASE), &[(&LoraSet::new(wrong), 1.0)], &out, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains(&name) && e.contains("does not fit"), "{e}");

    let e = merge_into_checkpoint(Path::new(BASE), &[(&lora, f64::NAN)], &out, None).unwrap_err();
    assert!(e.to_string().contains("ratio"), "{e}");

    let e =
        merge_into_checkpoint(Path::new(BASE), &[(&lora, 1.0)], Path::new(BASE), None).unwrap_err();
    assert!(e.to_string().contains("base checkpoint itself"), "{e}");

    // A LoRA file is not a base model.
    let e = merge_into_checkpoint(Path::new(LORA), &[(&lora, 1.0)], &out, None).unwrap_err();
    assert!(e.to_string().contains("LoRA"), "{e}");
    assert!(dir.is_empty());

    // A diffusers folder: refused with what to pass instead (it failed with "os error 19").
    let folder = Path::new("tests/fixtures/tiny-sd15-diffusers");
    let e = merge_into_checkpoint(folder, &[(&lora, 1.0)], &out, None).unwrap_err();
    let m = e.to_string();
    assert!(
        m.contains("tiny-sd15-diffusers") && m.contains("single-file") && !m.contains("os error"),
        "{m}"
    );
    assert_eq!(e.kind(), lorafuse::error::ErrorKind::BadInput);
    assert!(dir.is_empty());

    // A LoCon module whose kernel does not fit the conv: refused, naming it.
    let locon = LoraSet::new(vec![LoraModule {
        name: "lora_unet_down_blocks_0_resnets_0_conv1".into(),
        down: Tensor::from_f64([2, 4, 5, 5], vec![0.0; 200]).unwrap(),
        up: Tensor::from_f64([4, 2, 1, 1], vec![0.0; 8]).unwrap(),
        alpha: 2.0,
        kind: LayerKind::Conv { kernel: 5 },
        algo: Default::default(),
    }]);
    let e = merge_into_checkpoint(Path::new(BASE), &[(&locon, 1.0)], &out, None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("lora_unet_down_blocks_0_resnets_0_conv1") && e.contains("does not fit"),
        "{e}"
    );
    assert!(dir.is_empty());

    // An output folder that does not exist.
    let nowhere = dir.path("missing").join("merged.safetensors");
    let e = merge_into_checkpoint(Path::new(BASE), &[(&lora, 1.0)], &nowhere, None).unwrap_err();
    assert!(
        e.to_string().contains(&nowhere.display().to_string()),
        "{e}"
    );
    assert!(dir.is_empty());
}

/// A LoCon module (down [r, in, 3, 3], up [out, r, 1, 1]) merges into its 3x3 conv as
/// W[o, c, y, x] + ratio·scale·Σ_k up[o, k]·down[k, c, y, x], computed here index by index.
#[test]
fn locon_module_merges_into_the_3x3_conv() {
    let dir = TempDir::new("locon");
    let out = dir.path("merged.safetensors");
    let name = "lora_unet_down_blocks_1_resnets_0_conv2";
    let key = "model.diffusion_model.input_blocks.4.0.out_layers.3.weight";
    let base = SafetensorsFile::open(Path::new(BASE)).unwrap();
    let raw = base.tensor_info(key).unwrap();
    let (o, c) = (raw.shape[0], raw.shape[1]);
    assert_eq!(&raw.shape[2..], &[3, 3]);
    let r = 3;
    let mut rng = lorafuse::rng::Rng::new(5);
    let down = rng.normal_vec(r * c * 9);
    let up = rng.normal_vec(o * r);
    let locon = LoraSet::new(vec![LoraModule {
        name: name.into(),
        down: Tensor::from_f64([r, c, 3, 3], down.clone()).unwrap(),
        up: Tensor::from_f64([o, r, 1, 1], up.clone()).unwrap(),
        alpha: 1.5,
        kind: LayerKind::Conv { kernel: 3 },
        algo: Default::default(),
    }]);
    let ratio = 0.6;
    let report = merge_into_checkpoint(Path::new(BASE), &[(&locon, ratio)], &out, None).unwrap();
    assert_eq!(report.merged.len(), 1);
    assert_eq!(report.merged[0].key, key);
    let merged = SafetensorsFile::open(&out).unwrap();
    let got = f16s(merged.bytes(merged.tensor_info(key).unwrap()));
    let w = f16s(base.bytes(raw));
    let scale = 1.5 / r as f64;
    let mut changed = 0;
    for oo in 0..o {
        for cc in 0..c {
            for y in 0..3 {
                for x in 0..3 {
                    let at = ((oo * c + cc) * 3 + y) * 3 + x;
                    let mut d = 0.0;
                    for k in 0..r {
                        d += up[oo * r + k] * down[((k * c + cc) * 3 + y) * 3 + x];
                    }
                    let want = f16::from_f64(w[at].to_f64() + ratio * scale * d);
                    assert!(ulps(got[at], want) <= 1, "[{oo},{cc},{y},{x}]");
                    changed += usize::from(got[at] != w[at]);
                }
            }
        }
    }
    assert!(changed * 2 > got.len(), "the conv changed");
}

#[test]
fn text_encoder_modules_merge_into_the_clip_weights() {
    let dir = TempDir::new("te");
    let out = dir.path("merged.safetensors");
    let (r, n) = (2usize, 64usize);
    let down: Vec<f64> = (0..r * n).map(|i| ((i % 7) as f64 - 3.0) * 0.01).collect();
    let up: Vec<f64> = (0..n * r).map(|i| ((i % 5) as f64 - 2.0) * 0.02).collect();
    let m = LoraModule {
        name: "lora_te_text_model_encoder_layers_1_self_attn_q_proj".into(),
        down: Tensor::from_f64([r, n], down).unwrap(),
        up: Tensor::from_f64([n, r], up).unwrap(),
        alpha: 1.0,
        kind: LayerKind::Linear,
        algo: Default::default(),
    };
    let set = LoraSet::new(vec![m.clone()]);
    let report = merge_into_checkpoint(Path::new(BASE), &[(&set, 1.5)], &out, None).unwrap();
    let key = "cond_stage_model.transformer.text_model.encoder.layers.1.self_attn.q_proj.weight";
    assert_eq!(report.merged.len(), 1);
    assert_eq!(report.merged[0].key, key);
    let (base, merged) = (
        SafetensorsFile::open(Path::new(BASE)).unwrap(),
        SafetensorsFile::open(&out).unwrap(),
    );
    let want = expected(&f16s(base.bytes(base.tensor_info(key).unwrap())), &m, 1.5);
    let got = f16s(merged.bytes(merged.tensor_info(key).unwrap()));
    for (g, w) in got.iter().zip(&want) {
        assert!(ulps(*g, *w) <= 1, "{g} vs {w}");
    }
}

/// SD2.x: a UNet module into its Linear proj_in, and q and v modules of one text-encoder
/// layer into the thirds of OpenCLIP's fused `in_proj_weight` (k's third, the bias and every
/// other tensor unchanged).
#[test]
fn sd2_modules_merge_into_linear_proj_in_and_fused_in_proj() {
    const SD2: &str = "tests/fixtures/sd2/tiny-sd2.safetensors";
    let dir = TempDir::new("sd2");
    let out = dir.path("merged.safetensors");
    let (r, n) = (2usize, 64usize);
    let module = |name: &str, o: usize, i: usize, salt: usize| LoraModule {
        name: name.into(),
        algo: Default::default(),
        down: Tensor::from_f64(
            [r, i],
            (0..r * i)
                .map(|k| (((k + salt) % 7) as f64 - 3.0) * 0.01)
                .collect(),
        )
        .unwrap(),
        up: Tensor::from_f64(
            [o, r],
            (0..o * r)
                .map(|k| (((k + salt) % 5) as f64 - 2.0) * 0.02)
                .collect(),
        )
        .unwrap(),
        alpha: 1.0,
        kind: LayerKind::Linear,
    };
    let q = module(
        "lora_te_text_model_encoder_layers_1_self_attn_q_proj",
        n,
        n,
        0,
    );
    let v = module(
        "lora_te_text_model_encoder_layers_1_self_attn_v_proj",
        n,
        n,
        3,
    );
    let p = module("lora_unet_down_blocks_1_attentions_0_proj_in", 16, 16, 1);
    let set = LoraSet::new(vec![q.clone(), v.clone(), p.clone()]);
    let report = merge_into_checkpoint(Path::new(SD2), &[(&set, 1.5)], &out, None).unwrap();
    let fused = "cond_stage_model.model.transformer.resblocks.1.attn.in_proj_weight";
    let proj = "model.diffusion_model.input_blocks.4.1.proj_in.weight";
    let mut keys: Vec<&str> = report.merged.iter().map(|m| m.key.as_str()).collect();
    keys.sort_unstable();
    assert_eq!(keys, [fused, proj]);
    let (base, merged) = (
        SafetensorsFile::open(Path::new(SD2)).unwrap(),
        SafetensorsFile::open(&out).unwrap(),
    );
    let w = |f: &SafetensorsFile, k: &str| f16s(f.bytes(f.tensor_info(k).unwrap()));
    let close = |got: &[f16], want: &[f16], what: &str| {
        assert_eq!(got.len(), want.len(), "{what}");
        for (g, w) in got.iter().zip(want) {
            assert!(ulps(*g, *w) <= 1, "{what}: {g} vs {w}");
        }
    };
    close(
        &w(&merged, proj),
        &expected(&w(&base, proj), &p, 1.5),
        "proj_in",
    );
    let (b, m) = (w(&base, fused), w(&merged, fused));
    let third = n * n;
    close(&m[..third], &expected(&b[..third], &q, 1.5), "q third");
    assert_eq!(
        m[third..2 * third],
        b[third..2 * third],
        "k third unchanged"
    );
    close(
        &m[2 * third..],
        &expected(&b[2 * third..], &v, 1.5),
        "v third",
    );
    for key in base.names() {
        if key != fused && key != proj {
            assert_eq!(
                base.bytes(base.tensor_info(key).unwrap()),
                merged.bytes(merged.tensor_info(key).unwrap()),
                "{key}"
            );
        }
    }
}

/// A LoHa module (LyCORIS's hada_* tensors, as a LoHa file loads) bakes into a 3x3 conv as
/// W + ratio·(alpha/r)·(w1_a·w1_b) ⊙ (w2_a·w2_b), ΔW [out, in·9] read as [out, in, 3, 3].
#[test]
fn loha_module_merges_into_the_3x3_conv() {
    let dir = TempDir::new("loha");
    let out = dir.path("merged.safetensors");
    let name = "lora_unet_down_blocks_1_resnets_0_conv2";
    let key = "model.diffusion_model.input_blocks.4.0.out_layers.3.weight";
    let base = SafetensorsFile::open(Path::new(BASE)).unwrap();
    let raw = base.tensor_info(key).unwrap();
    let (o, n) = (raw.shape[0], raw.shape[1] * 9);
    let r = 2;
    let mut rng = lorafuse::rng::Rng::new(6);
    let mut t = |rows: usize, cols: usize| {
        let v = rng.normal_vec(rows * cols);
        (Tensor::from_f64([rows, cols], v.clone()).unwrap(), v)
    };
    let ((w1a, a1), (w1b, b1), (w2a, a2), (w2b, b2)) = (t(o, r), t(r, n), t(o, r), t(r, n));
    let loha = LoraSet::new(vec![LoraModule {
        name: name.into(),
        down: w1b,
        up: w1a,
        alpha: 3.0,
        // As a LoHa file loads (its kernel is not in the file).
        kind: LayerKind::Linear,
        algo: lorafuse::lora::Algo::Loha {
            w2_a: w2a,
            w2_b: w2b,
        },
    }]);
    let ratio = 0.5;
    let report = merge_into_checkpoint(Path::new(BASE), &[(&loha, ratio)], &out, None).unwrap();
    assert_eq!(report.merged.len(), 1);
    let merged = SafetensorsFile::open(&out).unwrap();
    let got = f16s(merged.bytes(merged.tensor_info(key).unwrap()));
    let w = f16s(base.bytes(raw));
    let scale = 3.0 / r as f64;
    let mut changed = 0;
    for oo in 0..o {
        for j in 0..n {
            let p =
                |a: &[f64], b: &[f64]| (0..r).map(|k| a[oo * r + k] * b[k * n + j]).sum::<f64>();
            let at = oo * n + j;
            let want = f16::from_f64(w[at].to_f64() + ratio * scale * p(&a1, &b1) * p(&a2, &b2));
            assert!(ulps(got[at], want) <= 1, "[{oo},{j}]");
            changed += usize::from(got[at] != w[at]);
        }
    }
    assert!(changed * 2 > got.len(), "the conv changed");
}

/// A DoRA module bakes into a 3x3 conv row by row as W + ratio·(V − W), V = W' ⊙ m /
/// (‖W'‖ + eps), W' = W + (alpha/r)·up·down (at ratio 1 the weight the layer runs: LyCORIS's
/// merge; the ratio as A1111's and ComfyUI's strength).
#[test]
fn dora_module_merges_into_the_3x3_conv() {
    let dir = TempDir::new("dora");
    let out = dir.path("merged.safetensors");
    let name = "lora_unet_down_blocks_1_resnets_0_conv2";
    let key = "model.diffusion_model.input_blocks.4.0.out_layers.3.weight";
    let base = SafetensorsFile::open(Path::new(BASE)).unwrap();
    let raw = base.tensor_info(key).unwrap();
    let (o, c) = (raw.shape[0], raw.shape[1]);
    let n = c * 9;
    let r = 2;
    let mut rng = lorafuse::rng::Rng::new(7);
    let (down, up) = (rng.normal_vec(r * n), rng.normal_vec(o * r));
    let m: Vec<f64> = (0..o).map(|i| 0.5 + 0.1 * i as f64).collect();
    let dora = LoraSet::new(vec![LoraModule {
        name: name.into(),
        down: Tensor::from_f64([r, c, 3, 3], down.clone()).unwrap(),
        up: Tensor::from_f64([o, r, 1, 1], up.clone()).unwrap(),
        alpha: 1.0,
        kind: LayerKind::Conv { kernel: 3 },
        algo: lorafuse::lora::Algo::Dora {
            magnitude: Tensor::from_f64([o, 1, 1, 1], m.clone()).unwrap(),
        },
    }]);
    let ratio = 0.5;
    let report = merge_into_checkpoint(Path::new(BASE), &[(&dora, ratio)], &out, None).unwrap();
    assert_eq!(report.merged.len(), 1);
    let merged = SafetensorsFile::open(&out).unwrap();
    let got = f16s(merged.bytes(merged.tensor_info(key).unwrap()));
    let w = f16s(base.bytes(raw));
    let scale = 1.0 / r as f64;
    for oo in 0..o {
        let adapted: Vec<f64> = (0..n)
            .map(|j| {
                let d: f64 = (0..r).map(|k| up[oo * r + k] * down[k * n + j]).sum();
                w[oo * n + j].to_f64() + scale * d
            })
            .collect();
        let norm = adapted.iter().map(|x| x * x).sum::<f64>().sqrt();
        for j in 0..n {
            let wv = w[oo * n + j].to_f64();
            let v = adapted[j] * m[oo] / (norm + lorafuse::lora::dora::EPS);
            let want = f16::from_f64(wv + ratio * (v - wv));
            assert!(ulps(got[oo * n + j], want) <= 1, "[{oo},{j}]");
        }
    }
    // Rows rescaled towards m: the merged rows' norms are between ‖W‖ and m.
    let row_norm = |v: &[f16], oo: usize| {
        v[oo * n..(oo + 1) * n]
            .iter()
            .map(|x| x.to_f64().powi(2))
            .sum::<f64>()
            .sqrt()
    };
    assert!((0..o).any(|oo| (row_norm(&got, oo) - row_norm(&w, oo)).abs() > 1e-2));
}

/// SD2.x: a DoRA module on a text encoder's q_proj bakes into the q third of OpenCLIP's fused
/// `in_proj_weight`, its magnitudes applying to the q rows only: W + ratio·(V − W) with
/// V = W'·m / (‖W'‖ + eps) row by row, W' = W + (alpha/r)·up·down (A1111's and ComfyUI's
/// strength); the k and v thirds unchanged.
#[test]
fn sd2_dora_module_merges_into_its_third_of_the_fused_in_proj() {
    const SD2: &str = "tests/fixtures/sd2/tiny-sd2.safetensors";
    let dir = TempDir::new("sd2-dora");
    let out = dir.path("merged.safetensors");
    let (r, n, ratio) = (2usize, 64usize, 0.6);
    let det = |len: usize, m: usize, c: f64, salt: usize| -> Vec<f64> {
        (0..len)
            .map(|k| (((k * 7 + salt) % m) as f64 - (m / 2) as f64) * c)
            .collect()
    };
    let magnitude: Vec<f64> = (0..n).map(|k| 0.5 + (k % 11) as f64 / 10.0).collect();
    let q = LoraModule {
        name: "lora_te_text_model_encoder_layers_1_self_attn_q_proj".into(),
        algo: lorafuse::lora::Algo::Dora {
            magnitude: Tensor::from_f64([n, 1], magnitude.clone()).unwrap(),
        },
        down: Tensor::from_f64([r, n], det(r * n, 7, 0.01, 1)).unwrap(),
        up: Tensor::from_f64([n, r], det(n * r, 5, 0.02, 2)).unwrap(),
        alpha: 1.0,
        kind: LayerKind::Linear,
    };
    let set = LoraSet::new(vec![q.clone()]);
    merge_into_checkpoint(Path::new(SD2), &[(&set, ratio)], &out, None).unwrap();
    let fused = "cond_stage_model.model.transformer.resblocks.1.attn.in_proj_weight";
    let (base, merged) = (
        SafetensorsFile::open(Path::new(SD2)).unwrap(),
        SafetensorsFile::open(&out).unwrap(),
    );
    let w = |f: &SafetensorsFile, k: &str| f16s(f.bytes(f.tensor_info(k).unwrap()));
    let (b, m) = (w(&base, fused), w(&merged, fused));
    let third = n * n;
    let (up, down) = (q.up.to_f64_vec(), q.down.to_f64_vec());
    for row in 0..n {
        let adapted: Vec<f64> = (0..n)
            .map(|col| {
                let delta: f64 = (0..r).map(|k| up[row * r + k] * down[k * n + col]).sum();
                b[row * n + col].to_f64() + q.scale() * delta
            })
            .collect();
        let norm = adapted.iter().map(|x| x * x).sum::<f64>().sqrt();
        let f = magnitude[row] / (norm + f32::EPSILON as f64);
        for col in 0..n {
            let w0 = b[row * n + col].to_f64();
            let want = f16::from_f64(w0 + ratio * (adapted[col] * f - w0));
            let got = m[row * n + col];
            assert!(
                ulps(got, want) <= 1,
                "q row {row} col {col}: {got} vs {want}"
            );
        }
    }
    assert_eq!(m[third..], b[third..], "k and v thirds unchanged");
}
