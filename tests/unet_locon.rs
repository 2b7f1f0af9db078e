//! LoCon on the tiny UNet: the conv targets sd-scripts picks (ResnetBlock2D conv1/conv2,
//! Downsample2D and Upsample2D convs; and at the linear rank the ResNets' time_emb_proj and
//! conv_shortcut) with kohya's names and shapes, and the whole UNet's
//! backward through them against finite differences in f64, with the fixture's linear LoRA
//! attached too.

use crate::common;

use common::{assert_gradients_match, central_difference};
use std::path::{Path, PathBuf};

use lorafuse::backend::prelude::*;
use lorafuse::backend::Accum;
use lorafuse::lora::{kohya, LayerKind, LayerRole, LoraModule, LoraSet};
use lorafuse::model::checkpoint::load_sd15;
use lorafuse::model::layers::Ctx;
use lorafuse::model::unet::Unet;
use lorafuse::rng::Rng;
use lorafuse::{CpuBackend, DType, Tensor};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn randn(rng: &mut Rng, shape: &[usize], scale: f64) -> Tensor {
    let n = shape.iter().product();
    let v = rng.normal_vec(n).iter().map(|x| x * scale).collect();
    Tensor::from_f64(shape, v).unwrap()
}

#[test]
fn conv_targets_are_sd_scripts() {
    let be = CpuBackend::new();
    let ck = load_sd15(fixtures().join("tiny-sd15-diffusers")).unwrap();
    let unet = Unet::load(&ck.unet.0, &ck.unet.1, &be, "unet").unwrap();
    let t = unet.conv_targets();
    let names: Vec<&str> = t.iter().map(|l| l.name.as_str()).collect();
    // Every resnet: conv1, conv2; every level but the last: its sampler's conv.
    let levels = ck.unet.0.block_out_channels.len();
    let lpb = ck.unet.0.layers_per_block;
    let resnets = levels * lpb + 2 + levels * (lpb + 1);
    assert_eq!(t.len(), 2 * resnets + 2 * (levels - 1), "{names:?}");
    assert_eq!(names[0], "lora_unet_down_blocks_0_resnets_0_conv1");
    assert_eq!(names[1], "lora_unet_down_blocks_0_resnets_0_conv2");
    for n in [
        "lora_unet_down_blocks_0_downsamplers_0_conv",
        "lora_unet_mid_block_resnets_1_conv2",
        "lora_unet_up_blocks_0_upsamplers_0_conv",
    ] {
        assert!(names.contains(&n), "{n} in {names:?}");
    }
    assert!(!names
        .iter()
        .any(|n| n.contains("conv_in") || n.contains("conv_out") || n.contains("shortcut")));
    for l in &t {
        assert_eq!(l.kind, LayerKind::Conv { kernel: 3 });
        let sampler = l.name.contains("samplers");
        let role = if sampler {
            LayerRole::SamplerConv
        } else {
            LayerRole::ResnetConv
        };
        assert_eq!(l.role, role, "{}", l.name);
    }
    // With them sd-scripts adapts every ResNet's time_emb_proj and 1x1 conv_shortcut at the
    // linear rank: one time projection per resnet, a shortcut where the channels change.
    let extra = unet.resnet_linear_targets();
    let times = extra
        .iter()
        .filter(|l| l.role == LayerRole::TimeProjection)
        .count();
    assert_eq!(times, resnets);
    for l in &extra {
        let (kind, suffix) = match l.role {
            LayerRole::TimeProjection => (LayerKind::Linear, "_time_emb_proj"),
            LayerRole::Shortcut => (LayerKind::Conv1x1, "_conv_shortcut"),
            r => panic!("{}: {r:?}", l.name),
        };
        assert_eq!(l.kind, kind, "{}", l.name);
        assert!(l.name.ends_with(suffix), "{}", l.name);
    }
    assert!(extra
        .iter()
        .any(|l| l.name == "lora_unet_up_blocks_0_resnets_0_conv_shortcut"));
    // Fresh adapters have kohya's shapes: down [r, in, 3, 3], up [out, r, 1, 1].
    let set = LoraSet::init(&be, &t, 4, 2.0, &mut Rng::new(1)).unwrap();
    let m = &set.modules()[0];
    assert_eq!(m.down.dims(), [4, t[0].in_features, 3, 3]);
    assert_eq!(m.up.dims(), [t[0].out_features, 4, 1, 1]);
    assert_eq!(m.scale(), 0.5);
}

fn loss(unet: &Unet, be: &CpuBackend, lora: &LoraSet, io: &[Tensor; 4]) -> f64 {
    let [x, t, ctx, target] = io;
    let cx = Ctx::new(be, Some(lora));
    let (out, _) = unet.forward(&cx, x, t, ctx, false, None).unwrap();
    be.mse_loss(&out, target, None, 1.0).unwrap().0
}

/// A sample of LoCon parameters from every conv adapter kind (resnet conv1 and conv2 of the
/// first and other blocks, the down- and up-samplers), and some linear ones, against a
/// fourth-order central difference of the loss.
#[test]
fn locon_gradients_match_finite_differences_in_f64() {
    let be = CpuBackend::f64();
    let ck = load_sd15(fixtures().join("tiny-sd15-diffusers")).unwrap();
    let unet = Unet::load(&ck.unet.0, &ck.unet.1, &be, "unet").unwrap();
    let linear = kohya::load(fixtures().join("tiny-lora.safetensors"), &be, DType::F64).unwrap();
    let mut rng = Rng::new(9);
    // Non-zero up weights, so that every down weight has a gradient.
    let r = 3;
    let targets = [unet.conv_targets(), unet.resnet_linear_targets()].concat();
    let convs: Vec<LoraModule> = targets
        .iter()
        .map(|l| {
            let (ds, us) = l.kind.shapes(r, l.in_features, l.out_features);
            LoraModule {
                name: l.name.clone(),
                down: randn(&mut rng, &ds, 0.1),
                up: randn(&mut rng, &us, 0.1),
                alpha: 2.0,
                kind: l.kind,
                algo: Default::default(),
            }
        })
        .collect();
    let n_linear = linear.len();
    let mut lora = linear.with_inserted(n_linear, LoraSet::new(convs));
    let io = [
        randn(&mut rng, &[2, 4, 16, 16], 1.0),
        Tensor::from_f64([2], vec![37.0, 911.0]).unwrap(),
        randn(&mut rng, &[2, 77, ck.unet.0.cross_attention_dim], 1.0),
        randn(&mut rng, &[2, 4, 16, 16], 1.0),
    ];
    let [x, t, ctx, target] = &io;
    let cx = Ctx::new(&be, Some(&lora));
    let (out, tape) = unet.forward(&cx, x, t, ctx, true, None).unwrap();
    let (_, d_out) = be.mse_loss(&out, target, None, 1.0).unwrap();
    let mut grads = lora.zero_grads(&be).unwrap();
    grads.accum = Accum::Assign;
    unet.backward(&cx, &d_out, ctx, tape.unwrap(), &mut grads)
        .unwrap();
    // Every module's gradients were written (Assign over zeros leaves no NaN; check all are
    // finite and the conv ones not all zero).
    for (m, g) in lora.modules().iter().zip(&grads.down) {
        assert!(g.to_f64_vec().iter().all(|v| v.is_finite()), "{}", m.name);
    }

    let n = lora.len();
    let mut picks: Vec<(usize, bool, usize)> = Vec::new();
    let mut modules: Vec<usize> = (n_linear..n).step_by(3).collect();
    modules.extend([n_linear, n_linear + 1, n - 1, 0, n_linear - 1]);
    for name in [
        "downsamplers_0_conv",
        "upsamplers_0_conv",
        "down_blocks_0_resnets_0_time_emb_proj",
        "mid_block_resnets_1_time_emb_proj",
        "up_blocks_0_resnets_0_conv_shortcut",
        "up_blocks_1_resnets_2_conv_shortcut",
    ] {
        modules.extend((0..n).filter(|&i| lora.modules()[i].name.ends_with(name)));
    }
    modules.sort_unstable();
    modules.dedup();
    for &m in &modules {
        for down in [true, false] {
            let len = if down {
                lora.modules()[m].down.numel()
            } else {
                lora.modules()[m].up.numel()
            };
            picks.push((m, down, rng.below(len as u64) as usize));
        }
    }
    let (mut ana, mut num) = (Vec::new(), Vec::new());
    for &(m, down, j) in &picks {
        let g = if down { &grads.down[m] } else { &grads.up[m] };
        ana.push(g.to_f64_vec()[j]);
        let base = {
            let md = &lora.modules()[m];
            if down {
                md.down.clone()
            } else {
                md.up.clone()
            }
        };
        let set = |lora: &mut LoraSet, p: Tensor| {
            let md = &mut lora.modules_mut()[m];
            if down {
                md.down = p
            } else {
                md.up = p
            }
        };
        let mut at = |delta: f64| {
            let mut v = base.to_f64_vec();
            v[j] += delta;
            set(
                &mut lora,
                Tensor::from_f64(base.shape().clone(), v).unwrap(),
            );
            loss(&unet, &be, &lora, &io)
        };
        num.push(central_difference(&mut at, 1e-3));
        set(&mut lora, base);
    }
    let labels: Vec<(String, bool, usize)> = picks
        .iter()
        .map(|&(m, d, j)| (lora.modules()[m].name.clone(), d, j))
        .collect();
    assert!(
        ana.iter().filter(|v| v.abs() > 1e-12).count() > picks.len() * 3 / 4,
        "most sampled gradients are non-zero: {ana:?}"
    );
    assert_gradients_match(&format!("{n} modules, LoCon"), &ana, &num, &labels);
}
