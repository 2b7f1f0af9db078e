//! The CLIP text encoder's LoRA backward (kohya's `lora_te_…` adapters on q/k/v/out_proj, fc1,
//! fc2): gradients against fourth-order central finite differences in f64 through the whole
//! fixture text encoder, for clip_skip 1 and 2 (the skipped layer's adapters get exactly zero);
//! gradient accumulation over micro-batches; the skipped layers' Assign/Add rule; the training
//! forward's output equal to the plain forward bit for bit; the tape's contents; the targets.

use crate::common;

use common::assert_gradients_match;
use std::path::{Path, PathBuf};

use lorafuse::backend::prelude::*;
use lorafuse::backend::Accum;
use lorafuse::lora::{LayerKind, LayerRole, LoraGrads, LoraSet, TargetLayer};
use lorafuse::model::checkpoint::load_sd15;
use lorafuse::model::clip::ClipTextModel;
use lorafuse::model::config::{ClipTextConfig, HiddenAct};
use lorafuse::model::layers::Ctx;
use lorafuse::model::weights::RandomWeights;
use lorafuse::rng::Rng;
use lorafuse::{CpuBackend, DType, Tensor};

const BOS: u32 = 510;
const EOS: u32 = 511;
const RANK: usize = 4;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The fixture's text encoder (vocab 512, hidden 64, 1 head, 3 layers, quick_gelu) in the
/// backend's compute dtype.
fn fixture_te(be: &CpuBackend) -> ClipTextModel {
    let ck = load_sd15(fixtures().join("tiny-sd15-diffusers")).unwrap();
    let (cfg, w) = &ck.text_encoder;
    ClipTextModel::load(cfg, w, be, "text_encoder").unwrap()
}

/// A text encoder of random weights with several heads (the fixture has one).
fn multi_head_te(be: &CpuBackend, act: HiddenAct) -> ClipTextModel {
    let cfg = ClipTextConfig {
        vocab_size: 40,
        hidden_size: 32,
        intermediate_size: 64,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        max_position_embeddings: 20,
        layer_norm_eps: 1e-5,
        hidden_act: act,
        text_projection: None,
    };
    ClipTextModel::load(&cfg, &RandomWeights { seed: 11 }, be, "text_encoder").unwrap()
}

/// SD1.x-style rows for the fixture: BOS, `n` random tokens, EOS padded to `len`; the lengths
/// cycle through short, full and in-between prompts.
fn fixture_ids(rng: &mut Rng, batch: usize, len: usize) -> Vec<u32> {
    let mut ids = Vec::with_capacity(batch * len);
    for b in 0..batch {
        let n = [5, len - 2, len / 2, 1][b % 4];
        ids.push(BOS);
        ids.extend((0..n).map(|_| rng.below(BOS as u64) as u32));
        ids.extend(std::iter::repeat_n(EOS, len - 1 - n));
    }
    ids
}

/// Random ids below `vocab`.
fn random_ids(rng: &mut Rng, n: usize, vocab: usize) -> Vec<u32> {
    (0..n).map(|_| rng.below(vocab as u64) as u32).collect()
}

/// kohya's initialisation on every target, in `dtype`, then B random too (rank 4, alpha 2:
/// scale 0.5), so every adapter changes the output and every dA is non-zero.
fn random_lora(te: &ClipTextModel, dtype: DType, rng: &mut Rng) -> LoraSet {
    let be = CpuBackend::new();
    let mut set = LoraSet::init(&be, &te.lora_targets(), RANK, 2.0, rng).unwrap();
    for m in set.modules_mut() {
        let up: Vec<f32> = rng
            .normal_vec(m.up.numel())
            .iter()
            .map(|v| (0.2 * v) as f32)
            .collect();
        m.up = be.tensor_from_f32(m.up.dims(), &up, dtype).unwrap();
        m.down = be.cast(&m.down, dtype).unwrap();
    }
    set
}

fn randn(rng: &mut Rng, shape: &[usize], dtype: DType) -> Tensor {
    let n = shape.iter().product();
    let t = Tensor::from_f64(shape, rng.normal_vec(n)).unwrap();
    CpuBackend::new().cast(&t, dtype).unwrap()
}

/// Gradient buffers filled with 7: shows which ones a backward wrote.
fn poisoned_grads(be: &CpuBackend, lora: &LoraSet, accum: Accum) -> LoraGrads {
    let mut g = lora.zero_grads(be).unwrap();
    for t in g.down.iter_mut().chain(g.up.iter_mut()) {
        let sevens = vec![7.0f32; t.numel()];
        *t = be.tensor_from_f32(t.dims(), &sevens, t.dtype()).unwrap();
    }
    g.accum = accum;
    g
}

/// loss = Σ r·output.
fn loss(
    te: &ClipTextModel,
    be: &CpuBackend,
    lora: &LoraSet,
    ids: &[u32],
    batch: usize,
    clip_skip: usize,
    r: &Tensor,
) -> f64 {
    let out = te
        .forward(&Ctx::new(be, Some(lora)), ids, batch, clip_skip)
        .unwrap();
    out.to_f64_vec()
        .iter()
        .zip(r.to_f64_vec())
        .map(|(a, b)| a * b)
        .sum()
}

/// Checks one A and one B element of every adapter against a fourth-order central difference;
/// returns the norm-wise relative error over all of them. Adapters of layers that clip_skip
/// skips must have exactly zero gradient, analytic (written over the 7s) and numeric.
fn gradcheck(te: &ClipTextModel, ids: &[u32], batch: usize, clip_skip: usize, seed: u64) -> f64 {
    let be = CpuBackend::f64();
    let mut rng = Rng::new(seed);
    let mut lora = random_lora(te, DType::F64, &mut rng);
    // The output's length: the ids', or the joined windows' of a long caption.
    let (len, p) = (ids.len() / batch, te.config.max_position_embeddings);
    let len = if len > p { len / p * (p - 2) + 2 } else { len };
    let r = randn(&mut rng, &[batch, len, te.config.hidden_size], DType::F64);

    let cx = Ctx::new(&be, Some(&lora));
    let (out, tape) = te.forward_train(&cx, ids, batch, clip_skip, true).unwrap();
    assert_eq!(out.dims(), r.dims());
    let mut grads = poisoned_grads(&be, &lora, Accum::Assign);
    te.backward(&cx, &r, tape.unwrap(), &mut grads).unwrap();

    let run = te.config.num_hidden_layers + 1 - clip_skip;
    let n = lora.len();
    assert_eq!(n, 6 * te.config.num_hidden_layers);
    let (mut ana, mut num, mut picks) = (Vec::new(), Vec::new(), Vec::new());
    for m in 0..n {
        let skipped = m / 6 >= run;
        for down in [true, false] {
            let g = (if down { &grads.down[m] } else { &grads.up[m] }).to_f64_vec();
            if skipped {
                assert!(
                    g.iter().all(|&v| v == 0.0),
                    "{} (skipped by clip_skip {clip_skip}) has a non-zero gradient",
                    lora.modules()[m].name
                );
            } else {
                assert!(
                    g.iter().all(|&v| v != 7.0),
                    "{} was not written",
                    lora.modules()[m].name
                );
            }
            let j = rng.below(g.len() as u64) as usize;
            let base = {
                let md = &lora.modules()[m];
                (if down { &md.down } else { &md.up }).clone()
            };
            let mut at = |delta: f64| {
                let mut v = base.to_f64_vec();
                v[j] += delta;
                let p = Tensor::from_f64(base.shape().clone(), v).unwrap();
                let md = &mut lora.modules_mut()[m];
                if down {
                    md.down = p
                } else {
                    md.up = p
                }
                loss(te, &be, &lora, ids, batch, clip_skip, &r)
            };
            let h = 1e-3;
            let l = [at(-2.0 * h), at(-h), at(h), at(2.0 * h)];
            let fd = (l[0] - 8.0 * l[1] + 8.0 * l[2] - l[3]) / (12.0 * h);
            let md = &mut lora.modules_mut()[m];
            if down {
                md.down = base
            } else {
                md.up = base
            }
            if skipped {
                let l0 = loss(te, &be, &lora, ids, batch, clip_skip, &r);
                assert!(
                    l.iter().all(|&v| v == l0),
                    "the loss does not depend on a skipped layer"
                );
                continue;
            }
            ana.push(g[j]);
            num.push(fd);
            picks.push((lora.modules()[m].name.clone(), down, j));
        }
    }
    assert!(
        ana.iter().all(|v| v.abs() > 1e-12),
        "every sampled gradient is non-zero: {ana:?}"
    );
    assert_gradients_match(
        &format!("clip_skip {clip_skip}, {} of {n} modules run", 6 * run),
        &ana,
        &num,
        &picks,
    )
}

#[test]
fn te_lora_gradients_match_finite_differences_in_f64() {
    let be = CpuBackend::f64();
    let te = fixture_te(&be);
    let ids = fixture_ids(&mut Rng::new(5), 2, 77);
    for clip_skip in [1, 2] {
        gradcheck(&te, &ids, 2, clip_skip, 100 + clip_skip as u64);
    }
}

/// kohya's long captions (max_token_length 225): three windows per caption, each encoded
/// alone and joined; the gradient flows back through the join into every window.
#[test]
fn te_lora_gradients_through_long_caption_windows_match_finite_differences() {
    let be = CpuBackend::f64();
    let te = fixture_te(&be);
    // Two captions of three windows of 77 ids each.
    let ids = fixture_ids(&mut Rng::new(15), 6, 77);
    for clip_skip in [1, 2] {
        gradcheck(&te, &ids, 2, clip_skip, 200 + clip_skip as u64);
    }
}

/// The long-caption encoding is each window encoded alone, joined exactly as sd-scripts
/// joins them: the first window's BOS state, states 1..=75 of every window, the last
/// window's EOS state (3·75 + 2 = 227 for 225 tokens), for clip_skip 1 and 2.
#[test]
fn long_captions_are_encoded_window_by_window_and_joined_as_sd_scripts_does() {
    let be = CpuBackend::new();
    let te = fixture_te(&be);
    let (p, d) = (77, te.config.hidden_size);
    let ids = fixture_ids(&mut Rng::new(16), 6, p);
    let cx = Ctx::new(&be, None);
    for clip_skip in [1, 2] {
        let joined = te.forward(&cx, &ids, 2, clip_skip).unwrap();
        assert_eq!(joined.dims(), [2, 227, d]);
        let joined = joined.to_f32_vec();
        // Every window as its own sequence (a batch of 6 rows), and one at a time.
        let rows = te.forward(&cx, &ids, 6, clip_skip).unwrap().to_f32_vec();
        let state = |row: usize, pos: usize| &rows[(row * p + pos) * d..(row * p + pos + 1) * d];
        for b in 0..2 {
            let mut want: Vec<f32> = state(3 * b, 0).to_vec();
            for w in 0..3 {
                for pos in 1..=75 {
                    want.extend_from_slice(state(3 * b + w, pos));
                }
            }
            want.extend_from_slice(state(3 * b + 2, 76));
            assert_eq!(
                joined[b * 227 * d..(b + 1) * 227 * d],
                want[..],
                "clip_skip {clip_skip}"
            );
            for w in 0..3 {
                let row = 3 * b + w;
                let alone = te
                    .forward(&cx, &ids[row * p..(row + 1) * p], 1, clip_skip)
                    .unwrap()
                    .to_f32_vec();
                for (x, y) in alone.iter().zip(&rows[row * p * d..(row + 1) * p * d]) {
                    assert!((x - y).abs() <= 1e-5 * (1.0 + y.abs()), "{x} {y}");
                }
            }
        }
    }
    // Ids that are neither one window nor whole windows are refused.
    let e = te
        .forward(&cx, &ids[..2 * 100], 2, 1)
        .unwrap_err()
        .to_string();
    assert!(e.contains("multiple of 77"), "{e}");
}

#[test]
fn te_lora_gradients_match_finite_differences_with_several_heads() {
    let be = CpuBackend::f64();
    for act in [HiddenAct::QuickGelu, HiddenAct::Gelu] {
        let te = multi_head_te(&be, act);
        let ids = random_ids(&mut Rng::new(6), 2 * 20, 40);
        gradcheck(&te, &ids, 2, 1, 7);
    }
}

#[test]
fn accumulating_two_half_batches_equals_one_whole_batch() {
    let be = CpuBackend::f64();
    let te = fixture_te(&be);
    let mut rng = Rng::new(9);
    let lora = random_lora(&te, DType::F64, &mut rng);
    let cx = Ctx::new(&be, Some(&lora));
    let (batch, len, d) = (4, 77, te.config.hidden_size);
    let ids = fixture_ids(&mut rng, batch, len);
    let r = randn(&mut rng, &[batch, len, d], DType::F64).to_f64_vec();
    let half = |i: usize| {
        let n = batch / 2 * len;
        let t = Tensor::from_f64([batch / 2, len, d], r[i * n * d..(i + 1) * n * d].to_vec());
        (&ids[i * n..(i + 1) * n], t.unwrap())
    };
    for clip_skip in [1, 2] {
        let mut whole = poisoned_grads(&be, &lora, Accum::Assign);
        let (_, tape) = te.forward_train(&cx, &ids, batch, clip_skip, true).unwrap();
        let r_all = Tensor::from_f64([batch, len, d], r.clone()).unwrap();
        te.backward(&cx, &r_all, tape.unwrap(), &mut whole).unwrap();

        let mut parts = poisoned_grads(&be, &lora, Accum::Assign);
        for (i, accum) in [Accum::Assign, Accum::Add].into_iter().enumerate() {
            parts.accum = accum;
            let (ids_i, r_i) = half(i);
            let (_, tape) = te
                .forward_train(&cx, ids_i, batch / 2, clip_skip, true)
                .unwrap();
            te.backward(&cx, &r_i, tape.unwrap(), &mut parts).unwrap();
        }
        for (m, md) in lora.modules().iter().enumerate() {
            for (what, a, b) in [
                ("A", &whole.down[m], &parts.down[m]),
                ("B", &whole.up[m], &parts.up[m]),
            ] {
                let (a, b) = (a.to_f64_vec(), b.to_f64_vec());
                let scale = a.iter().fold(0.0f64, |s, v| s.max(v.abs()));
                let err = a
                    .iter()
                    .zip(&b)
                    .fold(0.0f64, |s, (x, y)| s.max((x - y).abs()));
                assert!(
                    err <= 1e-12 * scale.max(1e-300),
                    "clip_skip {clip_skip}, {} d{what}: max difference {err:e} (scale {scale:e})",
                    md.name
                );
                if m / 6 >= te.config.num_hidden_layers + 1 - clip_skip {
                    assert!(a.iter().chain(&b).all(|&v| v == 0.0), "{} skipped", md.name);
                }
            }
        }
    }
}

#[test]
fn skipped_layers_get_zero_with_assign_and_are_left_alone_with_add() {
    let be = CpuBackend::new();
    let te = fixture_te(&be);
    let mut rng = Rng::new(13);
    let lora = random_lora(&te, DType::F32, &mut rng);
    let cx = Ctx::new(&be, Some(&lora));
    let ids = fixture_ids(&mut rng, 2, 77);
    let r = randn(&mut rng, &[2, 77, te.config.hidden_size], DType::F32);
    let layers = te.config.num_hidden_layers;
    for clip_skip in 1..=layers {
        let run = layers + 1 - clip_skip;
        for accum in [Accum::Assign, Accum::Add] {
            let mut g = poisoned_grads(&be, &lora, accum);
            let (_, tape) = te.forward_train(&cx, &ids, 2, clip_skip, true).unwrap();
            let tape = tape.unwrap();
            assert_eq!(tape.layers_run(), run);
            te.backward(&cx, &r, tape, &mut g).unwrap();
            for (m, md) in lora.modules().iter().enumerate() {
                for t in [&g.down[m], &g.up[m]] {
                    let v = t.to_f32_vec();
                    let what = format!("clip_skip {clip_skip}, {accum:?}, {}", md.name);
                    match (m / 6 >= run, accum) {
                        (true, Accum::Assign) => {
                            assert!(v.iter().all(|&x| x == 0.0), "{what}: set to 0")
                        }
                        (true, Accum::Add) => {
                            assert!(v.iter().all(|&x| x == 7.0), "{what}: left unchanged")
                        }
                        (false, _) => assert!(v.iter().any(|&x| x != 7.0), "{what}: written"),
                    }
                }
            }
        }
    }
}

#[test]
fn training_forward_output_equals_the_plain_forward_bit_for_bit() {
    let be = CpuBackend::new();
    let te = fixture_te(&be);
    let mut rng = Rng::new(17);
    let lora = random_lora(&te, DType::F32, &mut rng);
    let ids = fixture_ids(&mut rng, 2, 77);
    for set in [None, Some(&lora)] {
        let cx = Ctx::new(&be, set);
        for clip_skip in 1..=te.config.num_hidden_layers {
            let plain = te.forward(&cx, &ids, 2, clip_skip).unwrap().to_f32_vec();
            let (y, tape) = te.forward_train(&cx, &ids, 2, clip_skip, false).unwrap();
            assert!(tape.is_none());
            assert_eq!(y.to_f32_vec(), plain, "save = false, clip_skip {clip_skip}");
            let (y, tape) = te.forward_train(&cx, &ids, 2, clip_skip, true).unwrap();
            assert!(tape.is_some());
            assert_eq!(y.to_f32_vec(), plain, "save = true, clip_skip {clip_skip}");
        }
    }
}

/// The tape holds exactly what the backward needs: per layer x, x2, q, k, v, o [N, L, D],
/// f [N, L, F], lse [N, H, L], the two LayerNorms' stats (none for layer 0's layer_norm1),
/// six adapters' u [N, L, r]; and final_layer_norm's input and stats.
#[test]
fn the_tape_holds_what_the_backward_needs_and_nothing_more() {
    let be = CpuBackend::new();
    let te = fixture_te(&be);
    let mut rng = Rng::new(19);
    let lora = random_lora(&te, DType::F32, &mut rng);
    let c = &te.config;
    let (n, l) = (2, 77);
    let ids = fixture_ids(&mut rng, n, l);
    let tokens = n * l;
    for (set, u_per_layer) in [(None, 0), (Some(&lora), 6 * tokens * RANK)] {
        let cx = Ctx::new(&be, set);
        for clip_skip in 1..=c.num_hidden_layers {
            let run = c.num_hidden_layers + 1 - clip_skip;
            let (_, tape) = te.forward_train(&cx, &ids, n, clip_skip, true).unwrap();
            let per_layer = 6 * tokens * c.hidden_size
                + tokens * c.intermediate_size
                + n * c.num_attention_heads * l
                + 2 * 2 * tokens
                + u_per_layer;
            let floats = run * per_layer - 2 * tokens + tokens * c.hidden_size + 2 * tokens;
            assert_eq!(
                tape.unwrap().size_in_bytes(),
                4 * floats,
                "clip_skip {clip_skip}"
            );
        }
    }
}

#[test]
fn backward_errors_are_reported_not_panics() {
    let be = CpuBackend::new();
    let te = fixture_te(&be);
    let mut rng = Rng::new(23);
    let lora = random_lora(&te, DType::F32, &mut rng);
    let ids = fixture_ids(&mut rng, 1, 77);
    let with = Ctx::new(&be, Some(&lora));
    // d_out of the wrong shape.
    let (_, tape) = te.forward_train(&with, &ids, 1, 1, true).unwrap();
    let bad = randn(&mut rng, &[1, 76, te.config.hidden_size], DType::F32);
    let mut g = lora.zero_grads(&be).unwrap();
    assert!(te.backward(&with, &bad, tape.unwrap(), &mut g).is_err());
    // A tape made without the adapters, backward with them: no u saved.
    let (_, tape) = te
        .forward_train(&Ctx::new(&be, None), &ids, 1, 1, true)
        .unwrap();
    let d = randn(&mut rng, &[1, 77, te.config.hidden_size], DType::F32);
    let msg = te
        .backward(&with, &d, tape.unwrap(), &mut g)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("lora"), "{msg}");
    // clip_skip out of range in the training forward too.
    assert!(te.forward_train(&with, &ids, 1, 0, true).is_err());
    assert!(te.forward_train(&with, &ids, 1, 4, true).is_err());
}

fn check_targets(te: &ClipTextModel) -> Vec<TargetLayer> {
    let c = &te.config;
    let t = te.lora_targets();
    assert_eq!(t.len(), 6 * c.num_hidden_layers);
    let (d, f) = (c.hidden_size, c.intermediate_size);
    for (i, chunk) in t.chunks(6).enumerate() {
        let p = format!("lora_te_text_model_encoder_layers_{i}_");
        let want = [
            ("self_attn_q_proj", d, d, true),
            ("self_attn_k_proj", d, d, true),
            ("self_attn_v_proj", d, d, true),
            ("self_attn_out_proj", d, d, true),
            ("mlp_fc1", d, f, false),
            ("mlp_fc2", f, d, false),
        ];
        for (got, (name, in_f, out_f, attn)) in chunk.iter().zip(want) {
            assert_eq!(
                got,
                &TargetLayer {
                    name: format!("{p}{name}"),
                    in_features: in_f,
                    out_features: out_f,
                    kind: LayerKind::Linear,
                    role: if attn {
                        LayerRole::Attention
                    } else {
                        LayerRole::FeedForward
                    },
                }
            );
        }
    }
    t
}

#[test]
fn te_targets_are_six_per_layer_in_forward_order() {
    let be = CpuBackend::new();
    // The fixture: 3 layers, 18 targets.
    assert_eq!(check_targets(&fixture_te(&be)).len(), 18);
    // SD1.5's 12 layers (narrow random weights: only the topology counts here): 72.
    let cfg = ClipTextConfig {
        vocab_size: 16,
        hidden_size: 8,
        intermediate_size: 32,
        num_attention_heads: 2,
        ..ClipTextConfig::sd15()
    };
    let te = ClipTextModel::load(&cfg, &RandomWeights { seed: 1 }, &be, "text_encoder").unwrap();
    let t = check_targets(&te);
    assert_eq!(t.len(), 72);
    assert_eq!(
        t.iter().filter(|t| t.role == LayerRole::Attention).count(),
        48
    );
    assert_eq!(t[71].name, "lora_te_text_model_encoder_layers_11_mlp_fc2");
}
