//! SDXL's UNet against diffusers: the tiny SDXL-topology UNet of tests/fixtures/sdxl/unet
//! (made by tests/fixtures/sdxl_unet_fixture.py, diffusers 0.39 on the CPU) from both layouts
//! (SGM single file, diffusers `unet/` folder), every block's output, one kohya-LoRA training
//! step's loss, every LoRA gradient and the text inputs' gradients, within SD1.x's bound
//! (tests/golden.rs: norm-wise relative error < 1e-4); kohya's SGM-layout names; the added
//! embedding and d text_embeds against f64 finite differences; wrong configurations refused.

use crate::common;
use common::golden::{assert_matches, assert_same_weights, get, rel_err, TOL};

use common::{assert_gradients_match, central_difference};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use lorafuse::backend::prelude::*;
use lorafuse::backend::Accum;
use lorafuse::lora::{kohya, LoraModule, LoraSet, LoraTargets};
use lorafuse::model::checkpoint::safetensors::SafetensorsFile;
use lorafuse::model::checkpoint::sdxl_unet;
use lorafuse::model::checkpoint::{ConfigHints, Weights};
use lorafuse::model::config::{PerLevel, UnetConfig};
use lorafuse::model::layers::Ctx;
use lorafuse::model::unet::{AddedCond, Trace, Unet, UnetCond, WantGrads};
use lorafuse::model::weights::ShapeOnly;
use lorafuse::rng::Rng;
use lorafuse::{CpuBackend, DType, Tensor};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sdxl/unet")
}

/// What the fixture's shapes cannot show: 8 groups (SDXL 32), heads of width 8 (SDXL 64),
/// 8-wide id sinusoids (SDXL 256).
fn hints() -> ConfigHints {
    ConfigHints {
        norm_num_groups: Some(8),
        attention_head_width: Some(8),
        addition_time_embed_dim: Some(8),
    }
}

fn layouts() -> Vec<(&'static str, UnetConfig, Weights)> {
    let (fc, fw) = sdxl_unet::from_diffusers(&dir().join("unet")).unwrap();
    let path = dir().join("tiny-sdxl-unet.safetensors");
    let file = Arc::new(SafetensorsFile::open(&path).unwrap());
    let (sc, sw, ignored) = sdxl_unet::from_single_file(&path, &file, &hints()).unwrap();
    assert!(ignored.is_empty(), "{ignored:?}");
    vec![("diffusers folder", fc, fw), ("single file", sc, sw)]
}

fn refs() -> Weights {
    Weights::open(dir().join("reference.safetensors")).unwrap()
}

/// An int64 reference (timesteps) as f32.
fn timesteps(name: &str) -> Tensor {
    let v: Vec<f32> = common::golden::int64s(&dir().join("reference.safetensors"), name)
        .into_iter()
        .map(|v| v as f32)
        .collect();
    Tensor::from_f32([v.len()], v).unwrap()
}

fn added(r: &Weights) -> AddedCond {
    AddedCond {
        text_embeds: get(r, "unet.in.text_embeds"),
        time_ids: get(r, "unet.in.time_ids"),
    }
}

#[test]
fn both_layouts_load_the_same_weights_and_configs() {
    let l = layouts();
    let ((_, fc, fw), (_, sc, sw)) = (&l[0], &l[1]);
    // A single file does not say the training resolution: SDXL's 1024 px (128 latents).
    assert_eq!(sc.sample_size, 128);
    let sc = &UnetConfig {
        sample_size: fc.sample_size,
        ..sc.clone()
    };
    assert_eq!(fc, sc, "configs");
    assert_eq!(
        fc.transformer_layers_per_block,
        PerLevel::Each(vec![1, 1, 2])
    );
    assert_eq!(fc.added_embedding_widths(), Ok(Some((32, 8))));
    for level in 1..3 {
        assert_eq!(sc.head_dim(level), Some(8), "level {level}");
    }
    assert!(fw.contains("unet.add_embedding.linear_1.weight"));
    assert!(fw.contains("unet.mid_block.attentions.0.transformer_blocks.1.attn2.to_k.weight"));
    assert_same_weights("unet", fw, sw);
}

#[test]
fn unet_matches_diffusers_block_by_block() {
    let be = CpuBackend::new();
    let cx = Ctx::new(&be, None);
    let r = refs();
    let t = timesteps("unet.in.timesteps");
    let context = get(&r, "unet.in.context");
    let added = added(&r);
    for (layout, cfg, w) in layouts() {
        let unet = Unet::load(&cfg, &w, &be, "unet").unwrap();
        let mut trace = Trace::new();
        let cond = UnetCond {
            context: &context,
            added: Some(&added),
        };
        let sample = get(&r, "unet.in.sample");
        let (out, _) = unet
            .forward(&cx, &sample, &t, cond, false, Some(&mut trace))
            .unwrap();
        for (name, act) in &trace {
            let key = format!("unet.{name}.out");
            assert!(r.contains(&key), "{layout}: no reference for {key}");
            assert_matches(&format!("{layout}: {key}"), act, &get(&r, &key));
        }
        // Every module the generator hooked: the time and added embeddings, conv_in, 6 down
        // resnets, 4 down attentions, 2 downsamplers, 3 mid modules, 9 up resnets, 6 up
        // attentions, 2 upsamplers, conv_act.
        let hooked = r
            .keys()
            .filter(|k| k.ends_with(".out") && k.starts_with("unet.") && *k != "unet.out")
            .count();
        assert_eq!(trace.len(), hooked, "{layout}: every block traced");
        assert_eq!(trace.len(), 36, "{layout}");
        assert_matches(&format!("{layout}: output"), &out, &get(&r, "unet.out"));
    }
}

fn lora(be: &dyn Backend, dtype: DType) -> LoraSet {
    kohya::load(dir().join("lora.safetensors"), be, dtype).unwrap()
}

/// The fixture's training step: kohya LoRA on the default targets, epsilon MSE, every dA, dB
/// and the gradients of text_embeds and the context against torch autograd; with gradient
/// checkpointing the same gradients bit for bit.
#[test]
fn lora_step_matches_autograd() {
    let be = CpuBackend::new();
    let r = refs();
    let lora = lora(&be, DType::F32);
    let t = timesteps("lora.in.timesteps");
    let context = get(&r, "unet.in.context");
    let added = added(&r);
    let noisy = get(&r, "lora.in.noisy");
    let noise = get(&r, "lora.in.noise");
    let want_loss = get(&r, "lora.loss").to_f64_vec()[0];
    for (layout, cfg, w) in layouts() {
        let unet = Unet::load(&cfg, &w, &be, "unet").unwrap();
        let targets = unet.lora_targets(LoraTargets::Transformer);
        assert_eq!(targets.len(), lora.len(), "{layout}");
        assert!(targets.iter().all(|t| lora.find(&t.name).is_some()));
        let mut first: Option<Vec<Vec<f32>>> = None;
        for checkpoint in [false, true] {
            let cx = Ctx::new(&be, Some(&lora)).with_checkpointing(checkpoint);
            let cond = UnetCond {
                context: &context,
                added: Some(&added),
            };
            let (out, tape) = unet.forward(&cx, &noisy, &t, cond, true, None).unwrap();
            assert_matches(
                &format!("{layout}: output"),
                &out,
                &get(&r, "lora.unet.out"),
            );
            let (loss, d_out) = be.mse_loss(&out, &noise, None, 1.0).unwrap();
            assert!(
                (loss - want_loss).abs() < TOL * want_loss,
                "{layout}: loss {loss} vs {want_loss}"
            );
            let mut grads = lora.zero_grads(&be).unwrap();
            grads.accum = Accum::Assign;
            let want = WantGrads {
                context: true,
                text_embeds: true,
            };
            let g = unet
                .backward_with_cond_grads(&cx, &d_out, &context, tape.unwrap(), &mut grads, want)
                .unwrap();
            let what = format!("{layout}, checkpointing {checkpoint}");
            assert_matches(
                &format!("{what}: d text_embeds"),
                &g.text_embeds.unwrap(),
                &get(&r, "lora.d_text_embeds"),
            );
            assert_matches(
                &format!("{what}: d context"),
                &g.context.unwrap(),
                &get(&r, "lora.d_context"),
            );
            let mut all = Vec::new();
            for (i, m) in lora.modules().iter().enumerate() {
                for (part, g) in [("lora_down", &grads.down[i]), ("lora_up", &grads.up[i])] {
                    let want = get(&r, &format!("grad.{}.{part}.weight", m.name));
                    let e = rel_err(g, &want);
                    assert!(e < TOL, "{what}: d{part} of {}: {e:.3e}", m.name);
                    all.push(g.to_f32_vec());
                }
            }
            match &first {
                None => first = Some(all),
                Some(f) => assert!(*f == all, "{layout}: checkpointing changed a gradient"),
            }
        }
    }
}

/// sd-scripts names SDXL's UNet modules in SGM's layout; the fixture's LoRA (named by the
/// generator's own diffusers -> SGM map) has an adapter for exactly our targets. The real
/// SDXL topology (depths 1, 2, 10) has sd-scripts' 722 default targets.
/// Each of `want` is among `names`.
fn assert_among(names: &[String], want: &[&str]) {
    for n in want {
        assert!(names.iter().any(|m| m == n), "{n} not among {names:?}");
    }
}

#[test]
fn kohya_names_follow_sgm_layout() {
    let be = CpuBackend::new();
    let (cfg, w) = sdxl_unet::from_diffusers(&dir().join("unet")).unwrap();
    let unet = Unet::load(&cfg, &w, &be, "unet").unwrap();
    let names: Vec<String> = unet
        .lora_targets(LoraTargets::Transformer)
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_among(
        &names,
        &[
            "lora_unet_input_blocks_4_1_proj_in",
            "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q",
            "lora_unet_input_blocks_8_1_transformer_blocks_1_attn2_to_out_0",
            "lora_unet_middle_block_1_transformer_blocks_1_ff_net_0_proj",
            "lora_unet_output_blocks_0_1_transformer_blocks_1_ff_net_2",
            "lora_unet_output_blocks_5_1_proj_out",
        ],
    );
    assert!(names.iter().all(|n| !n.contains("down_blocks")));
    let lora = lora(&be, DType::F32);
    let mut ours = names.clone();
    let mut file: Vec<String> = lora.modules().iter().map(|m| m.name.clone()).collect();
    ours.sort();
    file.sort();
    assert_eq!(ours, file);

    // LoCon's layers: resnets, samplers.
    let convs: Vec<String> = unet.conv_targets().into_iter().map(|t| t.name).collect();
    assert_among(
        &convs,
        &[
            "lora_unet_input_blocks_1_0_in_layers_2",
            "lora_unet_input_blocks_1_0_out_layers_3",
            "lora_unet_input_blocks_3_0_op",
            "lora_unet_input_blocks_6_0_op",
            "lora_unet_middle_block_2_out_layers_3",
            "lora_unet_output_blocks_2_2_conv",
            "lora_unet_output_blocks_5_2_conv",
            "lora_unet_output_blocks_8_0_in_layers_2",
        ],
    );
    let linears: Vec<String> = unet
        .resnet_linear_targets()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_among(
        &linears,
        &[
            "lora_unet_input_blocks_1_0_emb_layers_1",
            "lora_unet_input_blocks_4_0_skip_connection",
            "lora_unet_output_blocks_0_0_skip_connection",
        ],
    );

    // SDXL 1.0's depths and block layout at small widths.
    let real = UnetConfig {
        block_out_channels: vec![32, 64, 64],
        attention_head_dim: PerLevel::Each(vec![1, 1, 1]),
        cross_attention_dim: 16,
        addition_time_embed_dim: Some(4),
        projection_class_embeddings_input_dim: Some(8 + 24),
        ..UnetConfig::sdxl()
    };
    let unet = Unet::load(&real, &ShapeOnly, &be, "unet").unwrap();
    assert_eq!(unet.lora_targets(LoraTargets::Transformer).len(), 722);
    assert_eq!(unet.lora_targets(LoraTargets::Attention).len(), 560);
}

#[test]
fn wrong_configurations_are_refused() {
    let sdxl = UnetConfig::sdxl();
    assert_eq!(sdxl.validate(), Ok(()));
    assert_eq!(UnetConfig::sd15().validate(), Ok(()));
    let refused = |c: UnetConfig, needle: &str| {
        let e = c.validate().unwrap_err();
        assert!(e.contains(needle), "{e}");
    };
    refused(
        UnetConfig {
            addition_embed_type: Some("image".into()),
            ..sdxl.clone()
        },
        "\"image\"",
    );
    refused(
        UnetConfig {
            addition_time_embed_dim: None,
            ..sdxl.clone()
        },
        "addition_time_embed_dim",
    );
    refused(
        UnetConfig {
            projection_class_embeddings_input_dim: Some(1536),
            ..sdxl.clone()
        },
        "no room for the pooled text",
    );
    refused(
        UnetConfig {
            up_block_types: UnetConfig::sd15().up_block_types[1..].to_vec(),
            ..sdxl.clone()
        },
        "mirror",
    );
    refused(
        UnetConfig {
            transformer_layers_per_block: PerLevel::Each(vec![1, 2]),
            ..sdxl.clone()
        },
        "transformer_layers_per_block at level 2",
    );
    // A diffusers unet/ that is not SDXL's.
    let sd2 =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sd2/tiny-sd2-diffusers/unet");
    let e = sdxl_unet::from_diffusers(&sd2).unwrap_err().to_string();
    assert!(
        e.contains("not an SDXL UNet") && e.contains("config.json"),
        "{e}"
    );

    // The forward needs the added conditioning, and only SDXL takes it.
    let be = CpuBackend::new();
    let cx = Ctx::new(&be, None);
    let r = refs();
    let (cfg, w) = sdxl_unet::from_diffusers(&dir().join("unet")).unwrap();
    let unet = Unet::load(&cfg, &w, &be, "unet").unwrap();
    let (x, t, ctx) = (
        get(&r, "unet.in.sample"),
        timesteps("unet.in.timesteps"),
        get(&r, "unet.in.context"),
    );
    let e = unet
        .forward(&cx, &x, &t, &ctx, false, None)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("text_time"), "{e}");
    let mut short = added(&r);
    short.time_ids = Tensor::from_f32([2, 5], vec![0.0; 10]).unwrap();
    let cond = UnetCond {
        context: &ctx,
        added: Some(&short),
    };
    let e = unet
        .forward(&cx, &x, &t, cond, false, None)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("time_ids"), "{e}");
}

fn loss_f64(unet: &Unet, be: &CpuBackend, lora: &LoraSet, inp: &Inputs, text: &Tensor) -> f64 {
    let cx = Ctx::new(be, Some(lora));
    let added = AddedCond {
        text_embeds: text.clone(),
        time_ids: inp.time_ids.clone(),
    };
    let cond = UnetCond {
        context: &inp.ctx,
        added: Some(&added),
    };
    let (out, _) = unet
        .forward(&cx, &inp.x, &inp.t, cond, false, None)
        .unwrap();
    be.mse_loss(&out, &inp.target, None, 1.0).unwrap().0
}

struct Inputs {
    x: Tensor,
    t: Tensor,
    ctx: Tensor,
    time_ids: Tensor,
    target: Tensor,
}

/// d loss / d text_embeds (through every resnet's time projection, the SiLU, add_embedding's
/// linear_2, SiLU and linear_1) and LoCon gradients on the first level (which has no
/// attention: a resnet conv, a time projection, the downsampler), against fourth-order central
/// differences in f64, with the fixture's LoRA attached too. Asking for d text_embeds leaves
/// the adapters' gradients as they are.
#[test]
fn text_embeds_and_first_level_gradients_match_finite_differences_in_f64() {
    let be = CpuBackend::f64();
    let (cfg, w) = sdxl_unet::from_diffusers(&dir().join("unet")).unwrap();
    let unet = Unet::load(&cfg, &w, &be, "unet").unwrap();
    let mut rng = Rng::new(5);
    let randn = |rng: &mut Rng, shape: &[usize]| {
        let n = shape.iter().product();
        Tensor::from_f64(shape, rng.normal_vec(n)).unwrap()
    };
    let first_level = [
        "lora_unet_input_blocks_1_0_in_layers_2",
        "lora_unet_input_blocks_2_0_emb_layers_1",
        "lora_unet_input_blocks_3_0_op",
    ];
    let locon: Vec<LoraModule> = [unet.conv_targets(), unet.resnet_linear_targets()]
        .concat()
        .into_iter()
        .filter(|t| first_level.contains(&t.name.as_str()))
        .map(|l| {
            let (ds, us) = l.kind.shapes(3, l.in_features, l.out_features);
            let scaled = |rng: &mut Rng, s: &[usize]| {
                let v = rng.normal_vec(s.iter().product());
                Tensor::from_f64(s, v.iter().map(|x| x * 0.1).collect()).unwrap()
            };
            LoraModule {
                name: l.name.clone(),
                down: scaled(&mut rng, &ds),
                up: scaled(&mut rng, &us),
                alpha: 2.0,
                kind: l.kind,
                algo: Default::default(),
            }
        })
        .collect();
    assert_eq!(locon.len(), 3);
    let linear = lora(&be, DType::F64);
    let n_linear = linear.len();
    let mut lora = linear.with_inserted(n_linear, LoraSet::new(locon));
    let inp = Inputs {
        x: randn(&mut rng, &[2, 4, 8, 8]),
        target: randn(&mut rng, &[2, 4, 8, 8]),
        ctx: randn(&mut rng, &[2, 77, cfg.cross_attention_dim]),
        t: Tensor::from_f64([2], vec![37.0, 911.0]).unwrap(),
        time_ids: get(&refs(), "unet.in.time_ids"),
    };
    let text = randn(&mut rng, &[2, 32]);
    let cx = Ctx::new(&be, Some(&lora));
    let run = |want: WantGrads| {
        let added = AddedCond {
            text_embeds: text.clone(),
            time_ids: inp.time_ids.clone(),
        };
        let cond = UnetCond {
            context: &inp.ctx,
            added: Some(&added),
        };
        let (out, tape) = unet.forward(&cx, &inp.x, &inp.t, cond, true, None).unwrap();
        let (_, d_out) = be.mse_loss(&out, &inp.target, None, 1.0).unwrap();
        let mut grads = lora.zero_grads(&be).unwrap();
        grads.accum = Accum::Assign;
        let g = unet
            .backward_with_cond_grads(&cx, &d_out, &inp.ctx, tape.unwrap(), &mut grads, want)
            .unwrap();
        (g, grads)
    };
    let (g, grads) = run(WantGrads {
        context: false,
        text_embeds: true,
    });
    let (plain, plain_grads) = run(WantGrads::default());
    assert!(plain.text_embeds.is_none() && plain.context.is_none());
    for i in 0..lora.len() {
        assert_eq!(grads.down[i].to_f64_vec(), plain_grads.down[i].to_f64_vec());
        assert_eq!(grads.up[i].to_f64_vec(), plain_grads.up[i].to_f64_vec());
    }
    // The first level's LoCon parameters: two of each matrix.
    let (mut ana, mut num, mut picks) = (Vec::new(), Vec::new(), Vec::new());
    for m in n_linear..lora.len() {
        for down in [true, true, false, false] {
            let base = {
                let md = &lora.modules()[m];
                if down {
                    md.down.clone()
                } else {
                    md.up.clone()
                }
            };
            let j = rng.below(base.numel() as u64) as usize;
            let g = if down { &grads.down[m] } else { &grads.up[m] };
            ana.push(g.to_f64_vec()[j]);
            picks.push((m, down, j));
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
                loss_f64(&unet, &be, &lora, &inp, &text)
            };
            num.push(central_difference(&mut at, 1e-3));
            let md = &mut lora.modules_mut()[m];
            if down {
                md.down = base
            } else {
                md.up = base
            }
        }
    }
    assert_gradients_match("first-level LoCon", &ana, &num, &picks);
    let d_text = g.text_embeds.unwrap();
    assert_eq!(d_text.dims(), [2, 32]);
    let gv = d_text.to_f64_vec();
    let (mut ana, mut num, mut picks) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..16 {
        let j = rng.below(text.numel() as u64) as usize;
        picks.push(j);
        let mut at = |delta: f64| {
            let mut v = text.to_f64_vec();
            v[j] += delta;
            let p = Tensor::from_f64(text.shape().clone(), v).unwrap();
            loss_f64(&unet, &be, &lora, &inp, &p)
        };
        num.push(central_difference(&mut at, 1e-3));
        ana.push(gv[j]);
    }
    assert!(ana.iter().all(|v| v.abs() > 1e-12), "non-zero: {ana:?}");
    assert_gradients_match("text_embeds elements", &ana, &num, &picks);
}

/// `ldm::diffusers_to_ldm_unet`, which names SDXL's LoRA modules, inverts the single-file
/// mapping on every UNet tensor of the SGM fixture and of the SD1.x LDM fixture (whose first
/// up level has no attention: its upsampler is `output_blocks.2.1.conv`).
#[test]
fn sgm_names_round_trip() {
    use lorafuse::model::checkpoint::ldm::{diffusers_to_ldm_unet, ldm_to_diffusers, LdmLayout};
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    for (path, up_attention) in [
        (
            dir().join("tiny-sdxl-unet.safetensors"),
            vec![true, true, false],
        ),
        (
            fixtures.join("tiny-sd15.safetensors"),
            vec![false, true, true, true],
        ),
    ] {
        let file = SafetensorsFile::open(&path).unwrap();
        let layout = LdmLayout::infer(file.names());
        let mut n = 0;
        for stored in file
            .names()
            .filter(|k| k.starts_with("model.diffusion_model."))
        {
            let name = ldm_to_diffusers(stored, &layout).unwrap();
            let rest = name.strip_prefix("unet.").unwrap();
            let back = diffusers_to_ldm_unet(rest, &layout, &up_attention).unwrap();
            assert_eq!(
                format!("model.diffusion_model.{back}"),
                stored,
                "{}",
                path.display()
            );
            n += 1;
        }
        assert!(n > 300, "{}: {n} UNet tensors", path.display());
    }
}
