//! SDXL's two text encoders against transformers on the CPU (tests/fixtures/sdxl/text, made by
//! sdxl_text_fixture.py): both checkpoint layouts (SGM single file with te2 in OpenCLIP's
//! layout, diffusers folders) load the same weights and configurations; te1's and te2's
//! penultimate states, te2's pooled output, the joined context, sd-scripts' long-caption
//! windows, and a kohya LoRA on both encoders (outputs, loss, every gradient) within the
//! golden bound of SD1.x (norm-wise relative error < 1e-4, tests/golden.rs); kohya's names and
//! counts; and f64 finite differences of the backward through the pooled output.

use crate::common;
use common::golden::{assert_matches, assert_same_weights, get, rel_err, TOL};

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::assert_gradients_match;
use lorafuse::backend::prelude::*;
use lorafuse::backend::Accum;
use lorafuse::lora::{kohya, LoraGrads, LoraSet};
use lorafuse::model::checkpoint::safetensors::SafetensorsFile;
use lorafuse::model::checkpoint::sdxl_text::{self, SdxlTextParts};
use lorafuse::model::checkpoint::Weights;
use lorafuse::model::clip::ClipOutput;
use lorafuse::model::config::{ClipTextConfig, HiddenAct};
use lorafuse::model::layers::Ctx;
use lorafuse::model::sdxl_text::SdxlText;
use lorafuse::rng::Rng;
use lorafuse::{CpuBackend, DType, Tensor};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sdxl/text")
}

fn single_file() -> SdxlTextParts {
    let path = dir().join("sgm-text.safetensors");
    let file = Arc::new(SafetensorsFile::open(&path).unwrap());
    sdxl_text::from_single_file(&path, &file).unwrap()
}

fn layouts() -> Vec<(&'static str, SdxlTextParts)> {
    vec![
        ("single file", single_file()),
        (
            "diffusers folder",
            sdxl_text::from_diffusers(&dir().join("diffusers")).unwrap(),
        ),
    ]
}

fn load(parts: &SdxlTextParts, be: &CpuBackend) -> SdxlText {
    let ((c1, w1), (c2, w2), _) = parts;
    SdxlText::load((c1, w1), (c2, w2), be).unwrap()
}

fn refs() -> Weights {
    Weights::open(dir().join("reference.safetensors")).unwrap()
}

/// An int64 reference (token ids) as u32.
fn ids(name: &str) -> Vec<u32> {
    common::golden::int64s(&dir().join("reference.safetensors"), name)
        .into_iter()
        .map(|v| v as u32)
        .collect()
}

#[test]
fn both_layouts_load_the_same_weights_and_configurations() {
    let want1 = ClipTextConfig {
        vocab_size: 512,
        hidden_size: 64,
        intermediate_size: 128,
        num_hidden_layers: 2,
        num_attention_heads: 1,
        ..ClipTextConfig::sdxl_te1()
    };
    let want2 = ClipTextConfig {
        vocab_size: 512,
        hidden_size: 128,
        intermediate_size: 256,
        num_hidden_layers: 3,
        num_attention_heads: 2,
        text_projection: Some(96),
        ..ClipTextConfig::sdxl_te2()
    };
    assert_eq!(want1.hidden_act, HiddenAct::QuickGelu);
    assert_eq!(want2.hidden_act, HiddenAct::Gelu);
    let [(_, single), (_, folder)] = <[_; 2]>::try_from(layouts()).ok().unwrap();
    for (a, b, want) in [
        (&single.0, &folder.0, &want1),
        (&single.1, &folder.1, &want2),
    ] {
        assert_eq!(&a.0, want);
        assert_eq!(&b.0, want);
        assert_same_weights("text encoder", &a.1, &b.1);
    }
    // te1: 2 embeddings + 16 per layer + final_layer_norm; te2 the same + text_projection.
    assert_eq!(single.0 .1.len(), 2 + 16 * 2 + 2);
    assert_eq!(single.1 .1.len(), 2 + 16 * 3 + 2 + 1);
    assert_eq!(
        single.1 .1.shape("text_encoder_2.text_projection.weight"),
        Some(&[96, 128][..]),
        "OpenCLIP's [width, projection] read transposed"
    );
    assert_eq!(
        single.2,
        [
            "conditioner.embedders.0.transformer.text_model.embeddings.position_ids",
            "conditioner.embedders.1.model.logit_scale"
        ]
    );
}

#[test]
fn hidden_states_pooled_and_context_match_transformers() {
    let be = CpuBackend::new();
    let cx = Ctx::new(&be, None);
    let r = refs();
    let (ids1, ids2) = (ids("ids1"), ids("ids2"));
    for (layout, parts) in layouts() {
        let text = load(&parts, &be);
        assert_eq!(
            text.te2_ids(&ids1, 2).unwrap(),
            ids2,
            "te2's padding with 0"
        );
        let e1 = text
            .te1
            .encode(&cx, &ids1, 2, ClipOutput::Penultimate, None, false)
            .unwrap();
        assert_matches(
            &format!("{layout}: te1 hidden_states[-2]"),
            &e1.states,
            &get(&r, "te1.hidden_states.-2"),
        );
        let eos: Vec<usize> = ids2
            .chunks(77)
            .map(|s| s.iter().position(|&i| i == 511).unwrap())
            .collect();
        let e2 = text
            .te2
            .encode(&cx, &ids2, 2, ClipOutput::Penultimate, Some(&eos), false)
            .unwrap();
        assert_matches(
            &format!("{layout}: te2 hidden_states[-2]"),
            &e2.states,
            &get(&r, "te2.hidden_states.-2"),
        );
        assert_matches(
            &format!("{layout}: te2 text_embeds"),
            &e2.pooled.unwrap(),
            &get(&r, "te2.text_embeds"),
        );
        let cond = text.forward(&cx, &ids1, 2).unwrap();
        assert_matches(
            &format!("{layout}: context"),
            &cond.context,
            &get(&r, "context"),
        );
        assert_matches(
            &format!("{layout}: pooled"),
            &cond.pooled,
            &get(&r, "te2.text_embeds"),
        );
        assert_eq!(text.context_width(), 192);
        assert_eq!(text.pooled_width(), 96);
    }
}

/// max_token_length 225: te1's ids are the tokenizer's SD1.x windows; te2's, made from them,
/// are sd-scripts' windows for a padding id other than EOS; both encoders' windows are joined
/// and the pooled output is the first window's, as get_hidden_states_sdxl does.
#[test]
fn long_captions_are_windowed_joined_and_pooled_as_sd_scripts_does() {
    let be = CpuBackend::new();
    let cx = Ctx::new(&be, None);
    let r = refs();
    let (l1, l2) = (ids("long.ids1"), ids("long.ids2"));
    assert_eq!(l1.len(), 3 * 77);
    for (layout, parts) in layouts() {
        let text = load(&parts, &be);
        assert_eq!(text.te2_ids(&l1, 1).unwrap(), l2, "{layout}: te2's windows");
        let cond = text.forward(&cx, &l1, 1).unwrap();
        assert_eq!(cond.context.dims(), [1, 227, 192]);
        assert_matches(
            &format!("{layout}: long context"),
            &cond.context,
            &get(&r, "long.context"),
        );
        assert_matches(
            &format!("{layout}: long pooled"),
            &cond.pooled,
            &get(&r, "long.pooled"),
        );
    }
}

#[test]
fn te2_ids_pad_with_zero_after_the_captions_eos() {
    let be = CpuBackend::new();
    let text = load(&single_file(), &be);
    let (bos, eos) = (510, 511);
    // An empty caption, one of 74 tokens (one EOS, no padding left but the last), 75 tokens.
    for n in [0usize, 74, 75] {
        let mut row = vec![bos];
        row.extend((0..n).map(|i| 1 + i as u32));
        row.resize(77, eos);
        let mut want = vec![bos];
        want.extend((0..n).map(|i| 1 + i as u32));
        want.push(eos);
        want.resize(77, 0);
        assert_eq!(text.te2_ids(&row, 1).unwrap(), want, "{n} tokens");
    }
    let e = text.te2_ids(&[bos; 100], 1).unwrap_err().to_string();
    assert!(e.contains("multiple of 77"), "{e}");
}

fn lora_grads(be: &CpuBackend, lora: &LoraSet) -> LoraGrads {
    let mut g = lora.zero_grads(be).unwrap();
    for t in g.down.iter_mut().chain(g.up.iter_mut()) {
        let sevens = vec![7.0f32; t.numel()];
        *t = be.tensor_from_f32(t.dims(), &sevens, t.dtype()).unwrap();
    }
    g.accum = Accum::Assign;
    g
}

#[test]
fn lora_outputs_loss_and_every_gradient_match_autograd() {
    let be = CpuBackend::new();
    let r = refs();
    let lora = kohya::load(dir().join("lora.safetensors"), &be, DType::F32).unwrap();
    assert_eq!(lora.len(), 6 * 2 + 6 * 3);
    let cx = Ctx::new(&be, Some(&lora));
    let ids1 = ids("ids1");
    let (r1, r2) = (get(&r, "lora.R1"), get(&r, "lora.R2"));
    for (layout, parts) in layouts() {
        let text = load(&parts, &be);
        let names: Vec<String> = text.lora_targets().into_iter().map(|t| t.name).collect();
        let mut in_file: Vec<&str> = lora.modules().iter().map(|m| m.name.as_str()).collect();
        let mut sorted = names.clone();
        sorted.sort();
        in_file.sort();
        assert_eq!(sorted, in_file, "the targets are the file's modules");
        let (cond, tape) = text.forward_train(&cx, &ids1, 2, true).unwrap();
        assert_matches(
            &format!("{layout}: context with LoRA"),
            &cond.context,
            &get(&r, "lora.context"),
        );
        assert_matches(
            &format!("{layout}: pooled with LoRA"),
            &cond.pooled,
            &get(&r, "lora.pooled"),
        );
        let dot = |a: &Tensor, b: &Tensor| -> f64 {
            a.to_f64_vec()
                .iter()
                .zip(b.to_f64_vec())
                .map(|(x, y)| x * y)
                .sum()
        };
        let loss = dot(&cond.context, &r1) + dot(&cond.pooled, &r2);
        let want = get(&r, "lora.loss").to_f64_vec()[0];
        assert!(
            (loss - want).abs() < TOL * want.abs(),
            "{layout}: loss {loss} vs {want}"
        );
        let tape = tape.unwrap();
        assert!(tape.size_in_bytes() > 0);
        let mut grads = lora_grads(&be, &lora);
        text.backward(&cx, &r1, Some(&r2), tape, &mut grads)
            .unwrap();
        let mut worst = (0.0, String::new());
        for (i, m) in lora.modules().iter().enumerate() {
            for (part, g) in [("lora_down", &grads.down[i]), ("lora_up", &grads.up[i])] {
                let want = get(&r, &format!("grad.{}.{part}.weight", m.name));
                if m.name.starts_with("lora_te1_text_model_encoder_layers_1_") {
                    assert!(
                        g.to_f64_vec().iter().all(|&v| v == 0.0),
                        "{}: te1's last layer does not run",
                        m.name
                    );
                    continue;
                }
                let e = rel_err(g, &want);
                assert!(
                    e < TOL,
                    "{layout}: d{part} of {}: relative error {e:.3e}",
                    m.name
                );
                if e > worst.0 {
                    worst = (e, format!("{}.{part}", m.name));
                }
            }
        }
        println!(
            "{layout}: loss {loss:.6} (torch {want:.6}); worst gradient error {:.2e} at {}",
            worst.0, worst.1
        );
    }
}

#[test]
fn lora_names_and_counts_are_kohyas() {
    let be = CpuBackend::new();
    let text = load(&single_file(), &be);
    let t = text.lora_targets();
    assert_eq!(t.len(), 6 * 2 + 6 * 3);
    assert_eq!(
        t[0].name,
        "lora_te1_text_model_encoder_layers_0_self_attn_q_proj"
    );
    assert_eq!(t[11].name, "lora_te1_text_model_encoder_layers_1_mlp_fc2");
    assert_eq!(
        t[12].name,
        "lora_te2_text_model_encoder_layers_0_self_attn_q_proj"
    );
    assert_eq!(
        t[15].name,
        "lora_te2_text_model_encoder_layers_0_self_attn_out_proj"
    );
    assert_eq!(t[17].name, "lora_te2_text_model_encoder_layers_0_mlp_fc2");
    assert_eq!(t[29].name, "lora_te2_text_model_encoder_layers_2_mlp_fc2");
    assert!(t.iter().all(|t| !t.name.contains("projection")));
    let w = text.adaptable_weights();
    assert_eq!(w.len(), t.len());
    for (a, b) in w.iter().zip(&t) {
        assert_eq!(a.0, b.name);
        assert_eq!(a.1.dims(), [b.out_features, b.in_features]);
    }
    // The real models: 72 + 192 = 264 adapters.
    for (c, n) in [
        (ClipTextConfig::sdxl_te1(), 72),
        (ClipTextConfig::sdxl_te2(), 192),
    ] {
        assert_eq!(6 * c.num_hidden_layers, n);
    }
}

// ---- f64 finite differences ----

/// kohya's initialisation on every target, then B random too (rank 4, alpha 2), in f64.
fn random_lora(text: &SdxlText, rng: &mut Rng) -> LoraSet {
    let be = CpuBackend::f64();
    let mut set = LoraSet::init(&be, &text.lora_targets(), 4, 2.0, rng).unwrap();
    for m in set.modules_mut() {
        let up: Vec<f64> = rng
            .normal_vec(m.up.numel())
            .iter()
            .map(|v| 0.2 * v)
            .collect();
        m.up = Tensor::from_f64(m.up.shape().clone(), up).unwrap();
        m.down = be.cast(&m.down, DType::F64).unwrap();
    }
    set
}

fn randn(rng: &mut Rng, shape: &[usize]) -> Tensor {
    Tensor::from_f64(shape, rng.normal_vec(shape.iter().product())).unwrap()
}

/// L = Σ context·r1 + Σ pooled·r2.
fn loss(text: &SdxlText, lora: &LoraSet, ids: &[u32], batch: usize, r: &(Tensor, Tensor)) -> f64 {
    let be = CpuBackend::f64();
    let c = text
        .forward(&Ctx::new(&be, Some(lora)), ids, batch)
        .unwrap();
    let dot = |a: &Tensor, b: &Tensor| -> f64 {
        a.to_f64_vec()
            .iter()
            .zip(b.to_f64_vec())
            .map(|(x, y)| x * y)
            .sum()
    };
    dot(&c.context, &r.0) + dot(&c.pooled, &r.1)
}

/// One A and one B element of every adapter against a fourth-order central difference, with
/// d context = r1 and d pooled = r2 (`pooled_only`: r1 = 0, the pooled path alone, through
/// every layer of te2). The adapters that get no gradient (te1's last layer, which does not
/// run; with `pooled_only` all of te1's) must be exactly zero, analytic and numeric.
fn gradcheck(ids: &[u32], batch: usize, pooled_only: bool, seed: u64) {
    let be = CpuBackend::f64();
    let text = load(&single_file(), &be);
    let mut rng = Rng::new(seed);
    let mut lora = random_lora(&text, &mut rng);
    let cx = Ctx::new(&be, Some(&lora));
    let (cond, tape) = text.forward_train(&cx, ids, batch, true).unwrap();
    let r1 = if pooled_only {
        Tensor::from_f64(
            cond.context.shape().clone(),
            vec![0.0; cond.context.numel()],
        )
        .unwrap()
    } else {
        randn(&mut rng, cond.context.dims())
    };
    let r = (r1, randn(&mut rng, cond.pooled.dims()));
    let mut grads = lora_grads(&be, &lora);
    text.backward(&cx, &r.0, Some(&r.1), tape.unwrap(), &mut grads)
        .unwrap();
    let zero = |name: &str| {
        name.starts_with("lora_te1_text_model_encoder_layers_1_")
            || (pooled_only && name.starts_with("lora_te1_"))
    };
    let (mut ana, mut num, mut picks) = (Vec::new(), Vec::new(), Vec::new());
    for m in 0..lora.len() {
        let name = lora.modules()[m].name.clone();
        for down in [true, false] {
            let g = (if down { &grads.down[m] } else { &grads.up[m] }).to_f64_vec();
            assert!(g.iter().all(|&v| v != 7.0), "{name} was not written");
            let j = rng.below(g.len() as u64) as usize;
            let base = {
                let md = &lora.modules()[m];
                (if down { &md.down } else { &md.up }).clone()
            };
            let fd = common::central_difference(
                |delta| {
                    let mut v = base.to_f64_vec();
                    v[j] += delta;
                    let p = Tensor::from_f64(base.shape().clone(), v).unwrap();
                    let md = &mut lora.modules_mut()[m];
                    if down {
                        md.down = p
                    } else {
                        md.up = p
                    }
                    loss(&text, &lora, ids, batch, &r)
                },
                1e-3,
            );
            let md = &mut lora.modules_mut()[m];
            if down {
                md.down = base
            } else {
                md.up = base
            }
            if zero(&name) {
                assert!(g.iter().all(|&v| v == 0.0), "{name}: non-zero gradient");
                assert!(fd.abs() < 1e-9, "{name}: the loss depends on it ({fd})");
                continue;
            }
            ana.push(g[j]);
            num.push(fd);
            picks.push((name.clone(), down, j));
        }
    }
    assert!(
        ana.iter().all(|v| v.abs() > 1e-12),
        "every sampled gradient is non-zero: {ana:?}"
    );
    assert_gradients_match(
        &format!("sdxl text, pooled only {pooled_only}, {} sequences", batch),
        &ana,
        &num,
        &picks,
    );
}

#[test]
fn pooled_path_gradients_match_finite_differences_in_f64() {
    let ids = ids("ids1");
    gradcheck(&ids, 2, true, 301);
}

#[test]
fn context_and_pooled_gradients_match_finite_differences_in_f64() {
    gradcheck(&ids("ids1"), 2, false, 302);
}

#[test]
fn long_caption_gradients_match_finite_differences_in_f64() {
    gradcheck(&ids("long.ids1"), 1, false, 303);
}

/// Without d pooled (a UNet that does not train through the text-time embedding), te2's last
/// layer gets no gradient: zero with Assign, untouched with Add.
#[test]
fn without_a_pooled_gradient_te2s_last_layer_gets_none() {
    let be = CpuBackend::new();
    let text = load(&single_file(), &be);
    let lora = random_lora(&text, &mut Rng::new(9));
    let lora = {
        let mut l = lora;
        for m in l.modules_mut() {
            m.down = be.cast(&m.down, DType::F32).unwrap();
            m.up = be.cast(&m.up, DType::F32).unwrap();
        }
        l
    };
    let cx = Ctx::new(&be, Some(&lora));
    let ids = ids("ids1");
    for accum in [Accum::Assign, Accum::Add] {
        let (cond, tape) = text.forward_train(&cx, &ids, 2, true).unwrap();
        let (plain, _) = text.forward_train(&cx, &ids, 2, false).unwrap();
        assert_eq!(cond.context.to_f32_vec(), plain.context.to_f32_vec());
        assert_eq!(cond.pooled.to_f32_vec(), plain.pooled.to_f32_vec());
        let mut grads = lora_grads(&be, &lora);
        grads.accum = accum;
        let d = randn(&mut Rng::new(3), cond.context.dims());
        let d = be.cast(&d, DType::F32).unwrap();
        text.backward(&cx, &d, None, tape.unwrap(), &mut grads)
            .unwrap();
        for (i, m) in lora.modules().iter().enumerate() {
            let skipped = m.name.starts_with("lora_te2_text_model_encoder_layers_2_")
                || m.name.starts_with("lora_te1_text_model_encoder_layers_1_");
            let g = grads.down[i].to_f32_vec();
            let want = match (skipped, accum) {
                (true, Accum::Assign) => Some(0.0),
                (true, Accum::Add) => Some(7.0),
                (false, _) => None,
            };
            match want {
                Some(v) => assert!(g.iter().all(|&x| x == v), "{} {accum:?}", m.name),
                None => assert!(g.iter().any(|&x| x != 7.0), "{} not written", m.name),
            }
        }
    }
    // A pooled gradient of the wrong shape is refused, not a panic.
    let (cond, tape) = text.forward_train(&cx, &ids, 2, true).unwrap();
    let mut grads = lora_grads(&be, &lora);
    let bad = Tensor::from_f32([2, 5], vec![0.0; 10]).unwrap();
    let e = text
        .backward(&cx, &cond.context, Some(&bad), tape.unwrap(), &mut grads)
        .unwrap_err()
        .to_string();
    assert!(e.contains("d_pooled"), "{e}");
}

/// Checkpoints that are not both SDXL text encoders are refused with what is missing or wrong,
/// naming the file or key: an SGM file without te2, a folder without `text_encoder_2/`, a
/// projection_dim that disagrees with the weight, te2 without its text_projection.
#[test]
fn bad_checkpoints_are_refused_naming_what_is_wrong() {
    let tmp = common::tools::TempDir::new("sdxl-text");
    let bytes = std::fs::read(dir().join("sgm-text.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let te1_only: Vec<_> = st
        .tensors()
        .into_iter()
        .filter(|(k, _)| !k.starts_with(sdxl_text::TE2_SGM_PREFIX))
        .collect();
    let path = tmp.path("te1-only.safetensors");
    std::fs::write(&path, safetensors::serialize(te1_only, None).unwrap()).unwrap();
    let file = Arc::new(SafetensorsFile::open(&path).unwrap());
    let e = sdxl_text::from_single_file(&path, &file)
        .unwrap_err()
        .to_string();
    println!("{e}");
    assert!(
        e.contains("te1-only.safetensors")
            && e.contains("second text encoder")
            && e.contains("conditioner.embedders.1.model.*"),
        "{e}"
    );

    let copy = |from: &str, to: &Path| {
        std::fs::create_dir_all(to).unwrap();
        for f in ["config.json", "model.safetensors"] {
            std::fs::copy(dir().join("diffusers").join(from).join(f), to.join(f)).unwrap();
        }
    };
    let folder = tmp.path("folder");
    copy("text_encoder", &folder.join("text_encoder"));
    let e = sdxl_text::from_diffusers(&folder).unwrap_err().to_string();
    assert!(e.contains("text_encoder_2"), "{e}");

    copy("text_encoder_2", &folder.join("text_encoder_2"));
    assert!(sdxl_text::from_diffusers(&folder).is_ok());
    let config = folder.join("text_encoder_2/config.json");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("\"projection_dim\": 96", "\"projection_dim\": 95"),
    )
    .unwrap();
    let e = sdxl_text::from_diffusers(&folder).unwrap_err().to_string();
    println!("{e}");
    assert!(
        e.contains("projection_dim is 95") && e.contains("96") && e.contains("config.json"),
        "{e}"
    );

    let be = CpuBackend::new();
    let ((c1, w1), (mut c2, w2), _) = single_file();
    c2.text_projection = None;
    let e = SdxlText::load((&c1, &w1), (&c2, &w2), &be)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("text_projection"), "{e}");
}
