//! Bad input to the models is an error that names what is wrong, never a panic.

use std::path::{Path, PathBuf};

use lorafuse::error::ErrorKind;
use lorafuse::lora::kohya;
use lorafuse::model::checkpoint::load_sd15;
use lorafuse::model::clip::ClipTextModel;
use lorafuse::model::layers::Ctx;
use lorafuse::model::unet::Unet;
use lorafuse::model::vae::Vae;
use lorafuse::{CpuBackend, DType, Tensor};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn zeros(shape: &[usize]) -> Tensor {
    Tensor::zeros(shape, DType::F32)
}

#[test]
fn unet_inputs_are_checked() {
    let be = CpuBackend::new();
    let cx = Ctx::new(&be, None);
    let ck = load_sd15(fixtures().join("tiny-sd15-diffusers")).unwrap();
    let unet = Unet::load(&ck.unet.0, &ck.unet.1, &be, "unet").unwrap();
    let t = zeros(&[1]);
    let ctx = zeros(&[1, 77, 64]);
    let msg = unet
        .forward(&cx, &zeros(&[1, 4, 15, 16]), &t, &ctx, false, None)
        .err()
        .unwrap()
        .to_string();
    assert!(
        msg.contains("[1, 4, 15, 16]") && msg.contains("multiples of 8"),
        "{msg}"
    );
    let msg = unet
        .forward(&cx, &zeros(&[1, 3, 16, 16]), &t, &ctx, false, None)
        .err()
        .unwrap()
        .to_string();
    assert!(
        msg.contains("[1, 3, 16, 16]") && msg.contains("[N, 4, H, W]"),
        "{msg}"
    );
    let msg = unet
        .forward(
            &cx,
            &zeros(&[1, 4, 16, 16]),
            &t,
            &zeros(&[1, 77, 768]),
            false,
            None,
        )
        .err()
        .unwrap()
        .to_string();
    assert!(
        msg.contains("[1, 77, 768]") && msg.contains("[1, 4, 16, 16]") && msg.contains("64"),
        "{msg}"
    );
    let msg = unet
        .forward(
            &cx,
            &zeros(&[1, 4, 16, 16]),
            &zeros(&[2]),
            &ctx,
            false,
            None,
        )
        .err()
        .unwrap()
        .to_string();
    assert!(msg.contains("timesteps") && msg.contains("[2]"), "{msg}");
}

#[test]
fn weights_that_do_not_fit_the_config_name_key_file_and_shapes() {
    let be = CpuBackend::new();
    let ck = load_sd15(fixtures().join("tiny-sd15-diffusers")).unwrap();
    let mut cfg = ck.unet.0.clone();
    cfg.block_out_channels = vec![16, 16, 24, 24];
    let e = Unet::load(&cfg, &ck.unet.1, &be, "unet").err().unwrap();
    assert_eq!(e.kind(), ErrorKind::BadInput, "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("unet.down_blocks.0.resnets.0.norm1.weight")
            && msg.contains("diffusion_pytorch_model.safetensors"),
        "{msg}"
    );
    assert!(msg.contains("has shape [8], expected [16]"), "{msg}");
}

#[test]
fn text_encoder_and_vae_inputs_are_checked() {
    let be = CpuBackend::new();
    let cx = Ctx::new(&be, None);
    let ck = load_sd15(fixtures().join("tiny-sd15-diffusers")).unwrap();
    let te =
        ClipTextModel::load(&ck.text_encoder.0, &ck.text_encoder.1, &be, "text_encoder").unwrap();
    let msg = te.forward(&cx, &[1; 78], 1, 1).err().unwrap().to_string();
    assert!(msg.contains("78 ids") && msg.contains("77"), "{msg}");
    let msg = te.forward(&cx, &[1; 77], 1, 4).err().unwrap().to_string();
    assert!(
        msg.contains("clip_skip") && msg.contains("between 1 and 3"),
        "{msg}"
    );
    let e = te.forward(&cx, &[600; 77], 1, 1).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::BadInput, "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains("600") && msg.contains("[512, 64]"), "{msg}");
    let vae = Vae::load(&ck.vae.0, &ck.vae.1, &be, "vae").unwrap();
    let msg = vae
        .encode(&cx, &zeros(&[1, 4, 32, 32]))
        .err()
        .unwrap()
        .to_string();
    assert!(
        msg.contains("[1, 4, 32, 32]") && msg.contains("[N, 3, H, W]"),
        "{msg}"
    );
    let msg = vae
        .decode(&cx, &zeros(&[1, 3, 4, 4]))
        .err()
        .unwrap()
        .to_string();
    assert!(msg.contains("[1, 3, 4, 4]"), "{msg}");
}

#[test]
fn a_base_model_is_not_a_lora() {
    let be = CpuBackend::new();
    let e = kohya::load(fixtures().join("tiny-sd15.safetensors"), &be, DType::F32)
        .err()
        .unwrap();
    assert_eq!(e.kind(), ErrorKind::BadInput, "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("tiny-sd15.safetensors") && msg.contains("not a kohya-format LoRA"),
        "{msg}"
    );
}
