//! A whole tiny SDXL model in both layouts (tests/fixtures/make_sdxl_fixtures.py: the part
//! generators' UNet and text encoders sized to fit each other, and a VAE): both load through
//! `checkpoint::sdxl` to the same configurations and bit-equal weights, the family is read from
//! each, and the models built from the two give the same conditioning and prediction.

use std::path::PathBuf;

use lorafuse::backend::Tensors;

use crate::common;
use common::golden::assert_same_weights;
use lorafuse::data::SizeCond;
use lorafuse::model::checkpoint::sdxl::{load_sdxl, load_sdxl_with, SdxlCheckpoint};
use lorafuse::model::checkpoint::ConfigHints;
use lorafuse::model::cond::{unet_forward, Cond};
use lorafuse::model::family::{family_of, WeightsFrom};
use lorafuse::model::layers::Ctx;
use lorafuse::{CpuBackend, DType};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sdxl/model")
}

/// What the tiny single file's shapes cannot say (a real SDXL file needs none of these).
fn hints() -> ConfigHints {
    ConfigHints {
        norm_num_groups: Some(8),
        attention_head_width: Some(8),
        addition_time_embed_dim: Some(8),
    }
}

fn both() -> (SdxlCheckpoint, SdxlCheckpoint) {
    let folder = load_sdxl(dir().join("tiny-sdxl-diffusers")).unwrap();
    let file = load_sdxl_with(dir().join("tiny-sdxl.safetensors"), &hints()).unwrap();
    (folder, file)
}

#[test]
fn both_layouts_load_to_the_same_model() {
    let (folder, file) = both();
    let unet_file = lorafuse::model::config::UnetConfig {
        sample_size: folder.unet.0.sample_size,
        ..file.unet.0.clone()
    };
    assert_eq!(folder.unet.0, unet_file);
    assert_eq!(folder.unet.0.cross_attention_dim, 64 + 128);
    assert_eq!(folder.text_encoder.0, file.text_encoder.0);
    assert_eq!(folder.text_encoder_2.0, file.text_encoder_2.0);
    assert_eq!(file.text_encoder_2.0.text_projection, Some(96));
    // A single file does not store the latent scale: SDXL's is set, as the folder says it.
    assert_eq!(folder.vae.0.scaling_factor, 0.13025);
    assert_eq!(file.vae.0.scaling_factor, 0.13025);
    assert_eq!(
        folder.vae.0.block_out_channels,
        file.vae.0.block_out_channels
    );
    assert_same_weights("unet", &folder.unet.1, &file.unet.1);
    assert_same_weights("vae", &folder.vae.1, &file.vae.1);
    assert_same_weights("text_encoder", &folder.text_encoder.1, &file.text_encoder.1);
    assert_same_weights(
        "text_encoder_2",
        &folder.text_encoder_2.1,
        &file.text_encoder_2.1,
    );
    assert!(file.ignored.iter().any(|k| k.ends_with("logit_scale")));
}

#[test]
fn the_family_is_read_from_both_and_they_predict_alike() {
    let be = CpuBackend::new();
    let cx = Ctx::new(&be, None);
    let folder = dir().join("tiny-sdxl-diffusers");
    let file = dir().join("tiny-sdxl.safetensors");
    assert_eq!(family_of(&folder).unwrap().id(), "sdxl");
    assert_eq!(family_of(&file).unwrap().id(), "sdxl");
    // The folder through the family seam; ids below the tiny vocabulary of 512, EOS 511.
    let family = family_of(&folder).unwrap();
    let m = family
        .load(WeightsFrom::Checkpoint(&folder), &be, &mut |_| {})
        .unwrap();
    let mut ids = vec![0u32; 77];
    ids[..4].copy_from_slice(&[510, 17, 23, 511]);
    for id in &mut ids[4..] {
        *id = 511;
    }
    let text = m.encode_text(&cx, &ids, 1, 1).unwrap();
    assert_eq!(text.context.dims(), &[1, 77, 192]);
    assert_eq!(text.pooled.as_ref().unwrap().dims(), &[1, 96]);
    let sizes = [SizeCond::of((1500, 1000), (1024, 1024), false, true)];
    let cond = Cond::with_sizes(&be, text, &sizes).unwrap();
    let mut rng = lorafuse::rng::Rng::new(5);
    let x: Vec<f32> = rng
        .normal_vec(4 * 8 * 8)
        .iter()
        .map(|&v| v as f32)
        .collect();
    let x = be.tensor_from_f32(&[1, 4, 8, 8], &x, DType::F32).unwrap();
    let t = be.tensor_from_f32(&[1], &[500.0], DType::F32).unwrap();
    let (out, _) = unet_forward(&m.unet, &cx, &x, &t, &cond, false, None).unwrap();
    // The single file's models, built from its checkpoint, predict the same bits.
    let ck = load_sdxl_with(&file, &hints()).unwrap();
    let unet = lorafuse::model::unet::Unet::load(&ck.unet.0, &ck.unet.1, &be, "unet").unwrap();
    let (out2, _) = unet_forward(&unet, &cx, &x, &t, &cond, false, None).unwrap();
    assert_eq!(out.to_f32_vec(), out2.to_f32_vec());
    // The size ids move the prediction (the added embedding is wired in).
    let text = m.encode_text(&cx, &ids, 1, 1).unwrap();
    let other = Cond::with_sizes(&be, text, &[SizeCond::for_generation((1024, 1024))]).unwrap();
    let (out3, _) = unet_forward(&m.unet, &cx, &x, &t, &other, false, None).unwrap();
    assert_ne!(out.to_f32_vec(), out3.to_f32_vec());
}

// ------------------------------------------------------------------ diffusers loads our file

/// The whole tiny SDXL's check (tests/common/diffusers_check.rs): UNet, te1 and te2.
fn check() -> common::diffusers_check::Case {
    common::diffusers_check::Case {
        model: dir().join("tiny-sdxl-diffusers"),
        dir: dir().join("diffusers_check"),
        base_version: "sdxl_base_v1-0",
        sample: [1, 4, 8, 8],
        context: [1, 8, 192],
        added: Some((
            96,
            SizeCond::of((1500, 1000), (1024, 1024), false, true).ids(),
        )),
        encoders: &[
            ("lora_te1_", "text_encoder"),
            ("lora_te2_", "text_encoder_2"),
        ],
    }
}

#[test]
fn lorafuse_writes_the_committed_diffusers_check_files() {
    common::diffusers_check::assert_writes_the_committed_files(&check());
}

/// diffusers 0.39 (+ peft 0.17.1) loads the file into StableDiffusionXLPipeline with every
/// module adapted and the UNet moving as lorafuse predicts.
#[test]
fn diffusers_loads_the_sdxl_lora_with_every_key() {
    common::diffusers_check::assert_diffusers_loaded_every_key(&check());
}

// ------------------------------------------------------------------ one whole training step

/// One whole SDXL LoRA training step against torch's autograd (tests/fixtures/
/// make_sdxl_step_fixture.py): LoRA on the UNet (192 modules) and both text encoders (12 + 18),
/// two captions through both encoders (te2's ids derived from te1's as lorafuse pads them), the
/// pooled text and each sample's size ids into the added embedding, the ε loss, and the
/// backward through the UNet into both encoders: the conditioning, the prediction, the loss and
/// every LoRA gradient within the golden bound (te1's last layer, which nothing reads, gets 0).
#[test]
fn a_whole_training_step_matches_autograd() {
    use common::golden::{get, int64s, rel_err, TOL};
    use lorafuse::backend::prelude::*;
    use lorafuse::backend::Accum;
    use lorafuse::lora::kohya;
    use lorafuse::model::checkpoint::Weights;
    use lorafuse::model::cond::unet_backward;
    use lorafuse::model::unet::AddedCond;
    let step = dir().join("step");
    let refs = Weights::open(step.join("reference.safetensors")).unwrap();
    let ints = |name: &str| -> Vec<u32> {
        int64s(&step.join("reference.safetensors"), name)
            .into_iter()
            .map(|v| v as u32)
            .collect()
    };
    let be = CpuBackend::new();
    let folder = dir().join("tiny-sdxl-diffusers");
    let m = family_of(&folder)
        .unwrap()
        .load(WeightsFrom::Checkpoint(&folder), &be, &mut |_| {})
        .unwrap();
    let lora = kohya::load(step.join("lora.safetensors"), &be, DType::F32).unwrap();
    let (targets, _) = m.adapter_targets(lorafuse::lora::LoraTargets::Transformer, true);
    assert_eq!(lora.len(), targets.len());
    assert_eq!(lora.len(), 192 + 12 + 18);
    let cx = Ctx::new(&be, Some(&lora));

    let (ids1, ids2) = (ints("in.ids1"), ints("in.ids2"));
    if let lorafuse::model::family::TextEncoders::Sdxl(te) = m.text.as_ref().unwrap() {
        assert_eq!(te.te2_ids(&ids1, 2).unwrap(), ids2, "te2's padding");
    }
    let (text, text_tape) = m.encode_text_train(&cx, &ids1, 2, 1, true).unwrap();
    let pooled = text.pooled.clone().unwrap();
    let check = |what: &str, got: &lorafuse::Tensor, want: &str| {
        let e = rel_err(got, &get(&refs, want));
        assert!(e < TOL, "{what}: relative error {e:.3e}");
    };
    check("context", &text.context, "text.context");
    check("pooled text", &pooled, "text.pooled");
    let cond = Cond {
        context: text.context.clone(),
        added: Some(AddedCond {
            text_embeds: pooled,
            time_ids: get(&refs, "in.time_ids"),
        }),
    };
    let t: Vec<f32> = int64s(&step.join("reference.safetensors"), "in.timesteps")
        .into_iter()
        .map(|v| v as f32)
        .collect();
    let t = lorafuse::Tensor::from_f32([2], t).unwrap();
    let (out, tape) =
        unet_forward(&m.unet, &cx, &get(&refs, "in.noisy"), &t, &cond, true, None).unwrap();
    check("prediction", &out, "unet.out");
    let (loss, d_out) = be
        .mse_loss(&out, &get(&refs, "in.noise"), None, 1.0)
        .unwrap();
    let want = get(&refs, "loss").to_f64_vec()[0];
    assert!((loss - want).abs() < TOL * want, "loss {loss} vs {want}");
    let mut grads = lora.zero_grads(&be).unwrap();
    grads.accum = Accum::Assign;
    let d_text = unet_backward(&m.unet, &cx, &d_out, &cond, tape.unwrap(), &mut grads, true)
        .unwrap()
        .unwrap();
    m.text_backward(&cx, &d_text, text_tape.unwrap(), &mut grads)
        .unwrap();
    let mut worst = (0.0, String::new());
    for (i, module) in lora.modules().iter().enumerate() {
        for (part, g) in [("lora_down", &grads.down[i]), ("lora_up", &grads.up[i])] {
            let want = get(&refs, &format!("grad.{}.{part}.weight", module.name));
            let what = format!("d{part} of {}", module.name);
            if want.to_f64_vec().iter().all(|v| *v == 0.0) {
                let most = g.to_f64_vec().iter().fold(0f64, |a, v| a.max(v.abs()));
                assert!(most == 0.0, "{what}: {most}, autograd's is 0");
                continue;
            }
            let e = rel_err(g, &want);
            assert!(e < TOL, "{what}: relative error {e:.3e}");
            if e > worst.0 {
                worst = (e, what);
            }
        }
    }
    println!(
        "tiny SDXL step: loss {loss:.8} (torch {want:.8}); worst of {} gradients {:.2e} ({})",
        2 * lora.len(),
        worst.0,
        worst.1
    );
}
