//! Gradient checkpointing's check, shared by tests/unet_checkpointing.rs (the CPU backends) and
//! tests/cuda_checkpointing.rs (the CUDA backend): one training forward and backward of the
//! fixture UNet with and without checkpointing, compared bit for bit.

use std::path::{Path, PathBuf};

use lorafuse::backend::Accum;
use lorafuse::lora::dropout::LoraDropout;
use lorafuse::lora::{kohya, LoraModule, LoraSet};
use lorafuse::model::checkpoint::load_sd15;
use lorafuse::model::layers::Ctx;
use lorafuse::model::unet::Unet;
use lorafuse::rng::Rng;
use lorafuse::{Backend, DType};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// What one training forward and backward of the fixture UNet gave.
pub struct Pass {
    loss_bits: u64,
    /// Every adapter gradient (down then up, module by module), as f32 bits.
    grads: Vec<Vec<u32>>,
    tape_bytes: usize,
}

/// One forward and backward on `be` of the fixture UNet with its linear LoRA and LoCon on
/// every conv target, LoRA dropout 0.3, batch 2 at 16x16 latents; with `dora` every module is
/// DoRA instead (random magnitudes; no dropout, which DoRA refuses).
pub fn pass(be: &dyn Backend, checkpoint: bool, dora: bool) -> Pass {
    let ck = load_sd15(fixtures().join("tiny-sd15-diffusers")).unwrap();
    let unet = Unet::load(&ck.unet.0, &ck.unet.1, be, "unet").unwrap();
    let dt = be.compute_dtype();
    // Adapters are f32 (f64 on the f64 CPU backend) whatever the activations are.
    let lora_dt = if dt == DType::F64 {
        DType::F64
    } else {
        DType::F32
    };
    let linear = kohya::load(fixtures().join("tiny-lora.safetensors"), be, lora_dt).unwrap();
    let mut rng = Rng::new(9);
    let mut randn = |shape: &[usize], scale: f64, dtype: DType| {
        let v: Vec<f32> = rng
            .normal_vec(shape.iter().product())
            .iter()
            .map(|x| (x * scale) as f32)
            .collect();
        be.tensor_from_f32(shape, &v, dtype).unwrap()
    };
    let targets = [unet.conv_targets(), unet.resnet_linear_targets()].concat();
    let convs: Vec<LoraModule> = targets
        .iter()
        .map(|l| {
            let (ds, us) = l.kind.shapes(3, l.in_features, l.out_features);
            LoraModule {
                name: l.name.clone(),
                down: randn(&ds, 0.1, lora_dt),
                up: randn(&us, 0.1, lora_dt),
                alpha: 2.0,
                kind: l.kind,
                algo: Default::default(),
            }
        })
        .collect();
    let n_linear = linear.len();
    let mut lora = linear.with_inserted(n_linear, LoraSet::new(convs));
    if dora {
        let mut rng = Rng::new(10);
        let modules = lora
            .modules()
            .iter()
            .map(|m| {
                let shape = lorafuse::lora::dora::magnitude_shape(m.kind, m.up.dims()[0]);
                let v: Vec<f32> = rng
                    .uniform_vec(shape.iter().product(), 0.5, 1.5)
                    .iter()
                    .map(|&x| x as f32)
                    .collect();
                let magnitude = be.tensor_from_f32(&shape, &v, lora_dt).unwrap();
                LoraModule {
                    algo: lorafuse::lora::Algo::Dora { magnitude },
                    ..m.clone()
                }
            })
            .collect();
        lora = LoraSet::new(modules);
    }
    let x = randn(&[2, 4, 16, 16], 1.0, dt);
    let target = randn(&[2, 4, 16, 16], 1.0, dt);
    let ctx = randn(&[2, 77, ck.unet.0.cross_attention_dim], 1.0, dt);
    let t = be.tensor_from_f32(&[2], &[37.0, 911.0], dt).unwrap();
    let dropout = LoraDropout::for_site(0.3, 7, &[4, 0, 0]).unwrap();
    let cx = Ctx::new(be, Some(&lora))
        .with_dropout((!dora).then_some(&dropout))
        .with_checkpointing(checkpoint);
    let (out, tape) = unet.forward(&cx, &x, &t, &ctx, true, None).unwrap();
    let tape = tape.unwrap();
    let tape_bytes = tape.size_in_bytes();
    let scale = if dt == DType::F16 { 1024.0 } else { 1.0 };
    let (loss, d_out) = be.mse_loss(&out, &target, None, scale).unwrap();
    let mut grads = lora.zero_grads(be).unwrap();
    grads.accum = Accum::Assign;
    unet.backward(&cx, &d_out, &ctx, tape, &mut grads).unwrap();
    let grads = grads
        .down
        .iter()
        .chain(&grads.up)
        .chain(grads.extra.iter().flatten())
        .map(|g| {
            be.to_f32_vec(g)
                .unwrap()
                .iter()
                .map(|v| v.to_bits())
                .collect()
        })
        .collect();
    Pass {
        loss_bits: loss.to_bits(),
        grads,
        tape_bytes,
    }
}

/// The same loss and gradients bit for bit, some of them non-zero, and a smaller tape.
pub fn assert_same(what: &str, plain: &Pass, ckpt: &Pass) {
    assert_eq!(plain.loss_bits, ckpt.loss_bits, "{what}: loss");
    assert_eq!(plain.grads.len(), ckpt.grads.len());
    for (i, (a, b)) in plain.grads.iter().zip(&ckpt.grads).enumerate() {
        assert!(a == b, "{what}: gradient {i} differs with checkpointing");
    }
    assert!(plain
        .grads
        .iter()
        .flatten()
        .any(|&g| f32::from_bits(g) != 0.0));
    println!(
        "{what}: tape {} B without checkpointing, {} B with",
        plain.tape_bytes, ckpt.tape_bytes
    );
    assert!(
        ckpt.tape_bytes * 2 < plain.tape_bytes,
        "{what}: the checkpointed tape ({} B) should hold far less than {} B",
        ckpt.tape_bytes,
        plain.tape_bytes
    );
}
