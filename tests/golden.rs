//! Golden tests: the tiny SD1.5 of tests/fixtures (made by make_fixtures.py with diffusers and
//! transformers on the CPU) loaded from both layouts, against diffusers' outputs, per-block
//! activations, and torch autograd's LoRA gradients.
//!
//! Tolerance: the norm-wise relative error ‖ours − ref‖/‖ref‖ of every tensor must be below
//! 1e-4. Both sides compute in f32 from the same f16-exact weights, in different orders
//! (the `gemm` crate vs MKL, blocked vs full softmax), so they differ by f32 rounding: the
//! fixtures record the f32-vs-f64 distance of each reference, at most 6e-6, and ours is of
//! the same size. 1e-4 leaves more than 10x margin for that and still fails on any real
//! mistake (a wrong eps, group layout or scale moves outputs by 1e-3 or more).

use std::path::{Path, PathBuf};

use lorafuse::backend::prelude::*;
use lorafuse::backend::Accum;
use lorafuse::lora::kohya;
use lorafuse::model::checkpoint::{
    load_sd15, load_sd15_with, ConfigHints, Sd15Checkpoint, Weights,
};
use lorafuse::model::clip::ClipTextModel;
use lorafuse::model::layers::Ctx;
use lorafuse::model::unet::{Trace, Unet};
use lorafuse::model::vae::Vae;
use lorafuse::{CpuBackend, DType, Tensor};

use crate::common;
use common::golden::{assert_matches, assert_same_weights, get, rel_err, TOL};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Both layouts of the tiny model. The single file needs the group count: shapes cannot show
/// it, and the fixture departs from SD1.x's 32 to stay small.
fn checkpoints() -> Vec<(&'static str, Sd15Checkpoint)> {
    let hints = ConfigHints {
        norm_num_groups: Some(4),
        ..ConfigHints::default()
    };
    vec![
        (
            "diffusers folder",
            load_sd15(fixtures().join("tiny-sd15-diffusers")).unwrap(),
        ),
        (
            "single file",
            load_sd15_with(fixtures().join("tiny-sd15.safetensors"), &hints).unwrap(),
        ),
    ]
}

fn reference(file: &str) -> Weights {
    Weights::open(fixtures().join(file)).unwrap()
}

/// An int64 reference tensor (ids, timesteps), read with the safetensors crate.
fn ints(file: &str, name: &str) -> Vec<i64> {
    common::golden::int64s(&fixtures().join(file), name)
}

#[test]
fn text_encoder_matches_transformers() {
    let be = CpuBackend::new();
    let cx = Ctx::new(&be, None);
    let r = reference("reference_te.safetensors");
    let ids: Vec<u32> = ints("reference_te.safetensors", "te.in.input_ids")
        .iter()
        .map(|&i| i as u32)
        .collect();
    for (layout, ck) in checkpoints() {
        let (cfg, w) = &ck.text_encoder;
        let te = ClipTextModel::load(cfg, w, &be, "text_encoder").unwrap();
        let last = te.forward(&cx, &ids, 2, 1).unwrap();
        assert_matches(
            &format!("{layout}: last_hidden_state"),
            &last,
            &get(&r, "te.last_hidden_state"),
        );
        let skip2 = te.forward(&cx, &ids, 2, 2).unwrap();
        assert_matches(
            &format!("{layout}: clip_skip 2"),
            &skip2,
            &get(&r, "te.clip_skip_2"),
        );
        // Pooled: the row at each sequence's first EOS (511, the largest id).
        let d = cfg.hidden_size;
        let lv = last.to_f32_vec();
        let mut pooled = Vec::new();
        for b in 0..2 {
            let row = &ids[b * 77..(b + 1) * 77];
            let eos = row.iter().position(|&i| i == 511).unwrap();
            pooled.extend_from_slice(&lv[(b * 77 + eos) * d..(b * 77 + eos + 1) * d]);
        }
        let pooled = Tensor::from_f32([2, d], pooled).unwrap();
        assert_matches(&format!("{layout}: pooled"), &pooled, &get(&r, "te.pooled"));
    }
}

#[test]
fn vae_matches_diffusers() {
    let be = CpuBackend::new();
    let cx = Ctx::new(&be, None);
    let r = reference("reference_vae.safetensors");
    for (layout, ck) in checkpoints() {
        let (cfg, w) = &ck.vae;
        let vae = Vae::load(cfg, w, &be, "vae").unwrap();
        let post = vae.encode(&cx, &get(&r, "vae.in.image")).unwrap();
        assert_matches(
            &format!("{layout}: mean"),
            &post.mean,
            &get(&r, "vae.posterior.mean"),
        );
        assert_matches(
            &format!("{layout}: logvar"),
            &post.logvar,
            &get(&r, "vae.posterior.logvar"),
        );
        let latents = vae.latents(&cx, &post, None).unwrap();
        assert_matches(
            &format!("{layout}: latents"),
            &latents,
            &get(&r, "vae.latents"),
        );
        let noise = get(&r, "vae.in.sample_noise");
        let sample = be
            .gaussian_sample(&post.mean, &post.logvar, Some(&noise), 1.0)
            .unwrap();
        assert_matches(
            &format!("{layout}: sample"),
            &sample,
            &get(&r, "vae.posterior.sample"),
        );
        let image = vae.decode(&cx, &get(&r, "vae.latents")).unwrap();
        assert_matches(
            &format!("{layout}: decode"),
            &image,
            &get(&r, "vae.decode.out"),
        );
    }
}

fn timesteps(file: &str, name: &str) -> Tensor {
    let t: Vec<f32> = ints(file, name).iter().map(|&t| t as f32).collect();
    Tensor::from_f32([t.len()], t).unwrap()
}

#[test]
fn unet_matches_diffusers_block_by_block() {
    let be = CpuBackend::new();
    let cx = Ctx::new(&be, None);
    let r = reference("reference_unet.safetensors");
    let context = get(
        &reference("reference_te.safetensors"),
        "te.last_hidden_state",
    );
    let t = timesteps("reference_unet.safetensors", "unet.in.timesteps");
    for (layout, ck) in checkpoints() {
        let (cfg, w) = &ck.unet;
        let unet = Unet::load(cfg, w, &be, "unet").unwrap();
        let mut trace = Trace::new();
        let (out, tape) = unet
            .forward(
                &cx,
                &get(&r, "unet.in.sample"),
                &t,
                &context,
                false,
                Some(&mut trace),
            )
            .unwrap();
        assert!(tape.is_none());
        let mut compared = 0;
        for (name, act) in &trace {
            let key = format!("unet.{name}.out");
            assert!(r.contains(&key), "{layout}: no reference for traced {key}");
            assert_matches(&format!("{layout}: {key}"), act, &get(&r, &key));
            compared += 1;
        }
        // time embedding, conv_in, 10 down + 3 mid + 12 up modules with the samplers, conv_act.
        assert_eq!(compared, 47, "{layout}: every block was traced");
        assert_matches(&format!("{layout}: output"), &out, &get(&r, "unet.out"));
    }
}

/// The training step of the fixture: kohya LoRA on all 192 targets, MSE against the noise,
/// and every dA, dB against torch autograd.
#[test]
fn lora_loss_and_gradients_match_autograd() {
    let be = CpuBackend::new();
    let r = reference("reference_lora.safetensors");
    let lora = kohya::load(fixtures().join("tiny-lora.safetensors"), &be, DType::F32).unwrap();
    assert_eq!(lora.len(), 192);
    let cx = Ctx::new(&be, Some(&lora));
    let context = get(
        &reference("reference_te.safetensors"),
        "te.last_hidden_state",
    );
    let t = timesteps("reference_lora.safetensors", "lora.in.timesteps");
    // The noisy latents from DDPM's schedule, as diffusers' add_noise makes them.
    let abar = get(&r, "scheduler.alphas_cumprod").to_f64_vec();
    let ts = ints("reference_lora.safetensors", "lora.in.timesteps");
    let a: Vec<f64> = ts.iter().map(|&t| abar[t as usize].sqrt()).collect();
    let b: Vec<f64> = ts
        .iter()
        .map(|&t| (1.0 - abar[t as usize]).sqrt())
        .collect();
    let noise = get(&r, "lora.in.noise");
    let noisy = be
        .add_noise(&get(&r, "lora.in.x0"), &noise, &a, &b)
        .unwrap();
    assert_matches("noisy latents", &noisy, &get(&r, "lora.in.noisy_latents"));

    for (layout, ck) in checkpoints() {
        let (cfg, w) = &ck.unet;
        let unet = Unet::load(cfg, w, &be, "unet").unwrap();
        let targets = unet.lora_targets(lorafuse::lora::LoraTargets::Transformer);
        assert_eq!(targets.len(), 192);
        assert_eq!(
            unet.lora_targets(lorafuse::lora::LoraTargets::Attention)
                .len(),
            128
        );
        assert!(
            targets.iter().all(|t| lora.find(&t.name).is_some()),
            "every target has an adapter in the file"
        );
        let (out, tape) = unet.forward(&cx, &noisy, &t, &context, true, None).unwrap();
        assert_matches(
            &format!("{layout}: output with LoRA"),
            &out,
            &get(&r, "lora.unet.out"),
        );
        let (loss, d_out) = be.mse_loss(&out, &noise, None, 1.0).unwrap();
        let want_loss = get(&r, "lora.loss").to_f64_vec()[0];
        assert!(
            (loss - want_loss).abs() < TOL * want_loss,
            "{layout}: loss {loss} vs {want_loss}"
        );
        let mut grads = lora.zero_grads(&be).unwrap();
        grads.accum = Accum::Assign;
        unet.backward(&cx, &d_out, &context, tape.unwrap(), &mut grads)
            .unwrap();
        let mut worst = (0.0, String::new());
        for (i, m) in lora.modules().iter().enumerate() {
            for (part, g) in [("lora_down", &grads.down[i]), ("lora_up", &grads.up[i])] {
                let want = get(&r, &format!("grad.{}.{part}.weight", m.name));
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
            "{layout}: loss {loss:.8} (torch {want_loss:.8}); worst gradient error {:.2e} at {}",
            worst.0, worst.1
        );
    }
}

// ---- SD2.x: the tiny SD2.x of tests/fixtures/sd2 (make_sd2_fixtures.py) ----

mod sd2 {
    use super::*;
    use lorafuse::model::checkpoint::Generation;
    use lorafuse::model::family::{family_of, Prediction};
    use lorafuse::sample::NoiseSchedule;
    use lorafuse::train::step::{Noised, Objective};

    fn dir() -> PathBuf {
        fixtures().join("sd2")
    }

    /// Both layouts. The single file needs the group count and the head width (SD2.x's is 64;
    /// the fixture's 4): shapes show neither.
    fn checkpoints() -> Vec<(&'static str, Sd15Checkpoint)> {
        let hints = ConfigHints {
            norm_num_groups: Some(4),
            attention_head_width: Some(4),
            ..ConfigHints::default()
        };
        vec![
            (
                "diffusers folder",
                load_sd15(dir().join("tiny-sd2-diffusers")).unwrap(),
            ),
            (
                "single file",
                load_sd15_with(dir().join("tiny-sd2.safetensors"), &hints).unwrap(),
            ),
        ]
    }

    fn refs() -> Weights {
        Weights::open(dir().join("reference.safetensors")).unwrap()
    }

    fn ints(name: &str) -> Vec<i64> {
        super::ints("sd2/reference.safetensors", name)
    }

    #[test]
    fn both_layouts_load_to_the_same_weights_and_configs() {
        let cks = checkpoints();
        let (folder, file) = (&cks[0].1, &cks[1].1);
        for ck in [folder, file] {
            assert_eq!(ck.generation, Generation::Sd2);
        }
        assert_eq!(folder.prediction, Some(Prediction::V), "scheduler config");
        assert_eq!(file.prediction, None, "a single file does not say");
        assert_eq!(folder.unet.0.heads(0), file.unet.0.heads(0));
        for level in 0..4 {
            assert_eq!(folder.unet.0.head_dim(level), Some(4), "level {level}");
            assert_eq!(file.unet.0.head_dim(level), Some(4), "level {level}");
        }
        assert!(folder.unet.0.use_linear_projection && file.unet.0.use_linear_projection);
        assert_eq!(folder.text_encoder.0, file.text_encoder.0);
        assert_eq!(
            file.text_encoder.0.num_hidden_layers, 3,
            "the last block dropped"
        );
        // Every tensor, bit for bit (the single file's q/k/v are thirds of in_proj).
        for (part, a, b) in [
            ("unet", &folder.unet.1, &file.unet.1),
            ("vae", &folder.vae.1, &file.vae.1),
            ("text encoder", &folder.text_encoder.1, &file.text_encoder.1),
        ] {
            assert_same_weights(part, a, b);
        }
        assert!(file
            .ignored
            .iter()
            .any(|k| k.ends_with("transformer.resblocks.3.attn.in_proj_weight")));
        assert!(file.ignored.iter().any(|k| k.ends_with("text_projection")));
    }

    #[test]
    fn family_is_read_from_the_checkpoint() {
        for path in [
            dir().join("tiny-sd2-diffusers"),
            dir().join("tiny-sd2.safetensors"),
        ] {
            assert_eq!(family_of(&path).unwrap().id(), "sd2", "{}", path.display());
        }
        assert_eq!(
            family_of(&fixtures().join("tiny-sd15.safetensors"))
                .unwrap()
                .id(),
            "sd1"
        );
        assert_eq!(
            family_of(&fixtures().join("tiny-sd15-diffusers"))
                .unwrap()
                .id(),
            "sd1"
        );
    }

    #[test]
    fn text_encoder_matches_transformers() {
        let be = CpuBackend::new();
        let cx = Ctx::new(&be, None);
        let r = refs();
        let ids: Vec<u32> = ints("te.in.input_ids").iter().map(|&i| i as u32).collect();
        assert_eq!(ids[7], 0, "padded with 0 after the EOS");
        for (layout, ck) in checkpoints() {
            let (cfg, w) = &ck.text_encoder;
            let te = ClipTextModel::load(cfg, w, &be, "text_encoder").unwrap();
            // sd-scripts names SD2's converted text encoder's modules as SD1's.
            let names: Vec<String> = te.lora_targets().into_iter().map(|t| t.name).collect();
            assert_eq!(names.len(), 3 * 6, "q, k, v, out, fc1, fc2 of 3 layers");
            assert_eq!(
                names[0],
                "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
            );
            assert_eq!(names[17], "lora_te_text_model_encoder_layers_2_mlp_fc2");
            for (skip, key) in [(1, "te.last_hidden_state"), (2, "te.clip_skip_2")] {
                let got = te.forward(&cx, &ids, 2, skip).unwrap();
                assert_matches(&format!("sd2 {layout}: {key}"), &got, &get(&r, key));
            }
        }
    }

    #[test]
    fn unet_matches_diffusers_block_by_block() {
        let be = CpuBackend::new();
        let cx = Ctx::new(&be, None);
        let r = refs();
        let context = get(&r, "te.last_hidden_state");
        let t: Vec<f32> = ints("unet.in.timesteps")
            .iter()
            .map(|&t| t as f32)
            .collect();
        let t = Tensor::from_f32([2], t).unwrap();
        for (layout, ck) in checkpoints() {
            let (cfg, w) = &ck.unet;
            let unet = Unet::load(cfg, w, &be, "unet").unwrap();
            let mut trace = Trace::new();
            let (out, _) = unet
                .forward(
                    &cx,
                    &get(&r, "unet.in.sample"),
                    &t,
                    &context,
                    false,
                    Some(&mut trace),
                )
                .unwrap();
            let mut compared = 0;
            for (name, act) in &trace {
                let key = format!("unet.{name}.out");
                assert!(r.contains(&key), "sd2 {layout}: no reference for {key}");
                assert_matches(&format!("sd2 {layout}: {key}"), act, &get(&r, &key));
                compared += 1;
            }
            assert_eq!(compared, 47, "sd2 {layout}: every block was traced");
            assert_matches(&format!("sd2 {layout}: output"), &out, &get(&r, "unet.out"));
        }
    }

    /// The v-prediction step: target v = √ᾱ·ε − √(1−ᾱ)·x₀ (diffusers' get_velocity), the
    /// MSE loss with a kohya LoRA on the 192 default targets (Linear proj_in/proj_out), and
    /// every LoRA gradient against torch autograd.
    #[test]
    fn v_prediction_loss_and_lora_gradients_match_autograd() {
        let be = CpuBackend::new();
        let r = refs();
        let lora = kohya::load(dir().join("tiny-sd2-lora.safetensors"), &be, DType::F32).unwrap();
        assert_eq!(lora.len(), 192);
        let cx = Ctx::new(&be, Some(&lora));
        let context = get(&r, "te.last_hidden_state");
        let ts: Vec<usize> = ints("v.in.timesteps").iter().map(|&t| t as usize).collect();
        let obj = Objective {
            prediction: Prediction::V,
            ..Objective::plain(NoiseSchedule::sd15())
        };
        let (a, b) = obj.schedule.add_noise_coefficients(&ts).unwrap();
        let x0 = get(&r, "v.in.x0");
        let noise = get(&r, "v.in.noise");
        let noisy = be.add_noise(&x0, &noise, &a, &b).unwrap();
        assert_matches("sd2 noisy", &noisy, &get(&r, "v.noisy"));
        let nz = Noised {
            timesteps: ts.clone(),
            noise,
            noisy,
        };
        let target = obj.target(&be, &x0, &nz).unwrap();
        assert_matches("sd2 v target", &target, &get(&r, "v.target"));
        let t = Tensor::from_f32([2], ts.iter().map(|&t| t as f32).collect()).unwrap();
        for (layout, ck) in checkpoints() {
            let (cfg, w) = &ck.unet;
            let unet = Unet::load(cfg, w, &be, "unet").unwrap();
            let targets = unet.lora_targets(lorafuse::lora::LoraTargets::Transformer);
            assert_eq!(targets.len(), 192);
            assert!(targets.iter().all(|t| lora.find(&t.name).is_some()));
            let (out, tape) = unet
                .forward(&cx, &nz.noisy, &t, &context, true, None)
                .unwrap();
            assert_matches(&format!("sd2 {layout}: out"), &out, &get(&r, "v.unet.out"));
            let (loss, d_out) = be.mse_loss(&out, &target, None, 1.0).unwrap();
            let want = get(&r, "v.loss").to_f64_vec()[0];
            assert!(
                (loss - want).abs() < TOL * want,
                "sd2 {layout}: loss {loss} vs {want}"
            );
            let mut grads = lora.zero_grads(&be).unwrap();
            grads.accum = Accum::Assign;
            unet.backward(&cx, &d_out, &context, tape.unwrap(), &mut grads)
                .unwrap();
            for (i, m) in lora.modules().iter().enumerate() {
                for (part, g) in [("lora_down", &grads.down[i]), ("lora_up", &grads.up[i])] {
                    let want = get(&r, &format!("grad.{}.{part}.weight", m.name));
                    let e = rel_err(g, &want);
                    assert!(e < TOL, "sd2 {layout}: d{part} of {}: {e:.3e}", m.name);
                }
            }
        }
    }

    #[test]
    fn zero_terminal_snr_matches_diffusers() {
        let r = refs();
        let want = get(&r, "ztsnr.alphas_cumprod").to_f64_vec();
        let got = NoiseSchedule::sd15().with_zero_terminal_snr();
        let got = got.alphas_cumprod();
        assert_eq!(got.len(), want.len());
        assert_eq!(got[999], 0.0);
        for (t, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!((g - w).abs() < 2e-6, "t {t}: {g} vs {w}");
        }
        let plain = get(&r, "scheduler.alphas_cumprod").to_f64_vec();
        assert!((got[0] - plain[0]).abs() < 1e-7, "ᾱ_0 kept");
    }

    /// The whole tiny SD2.x's diffusers check (tests/common/diffusers_check.rs): the UNet and
    /// the OpenCLIP text encoder, as `lora_unet_` / `lora_te_` with the Linear projections 2-D.
    fn check() -> common::diffusers_check::Case {
        common::diffusers_check::Case {
            model: dir().join("tiny-sd2-diffusers"),
            dir: dir().join("diffusers_check"),
            base_version: "sd_v2",
            sample: [1, 4, 8, 8],
            context: [1, 8, 64],
            added: None,
            encoders: &[("lora_te_", "text_encoder")],
        }
    }

    #[test]
    fn lorafuse_writes_the_committed_diffusers_check_files() {
        common::diffusers_check::assert_writes_the_committed_files(&check());
    }

    /// diffusers 0.39 (+ peft 0.17.1) loads the file into StableDiffusionPipeline with every
    /// module adapted and the UNet moving as lorafuse predicts.
    #[test]
    fn diffusers_loads_the_sd2_lora_with_every_key() {
        common::diffusers_check::assert_diffusers_loaded_every_key(&check());
    }
}
