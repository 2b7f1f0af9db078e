//! Lion, SGD with Nesterov momentum, Prodigy, DAdaptAdam, AdamW8bit, Lion8bit and Adafactor on the CUDA
//! backend against the CPU backend
//! (emulator, and GPU when present): whole optimizer steps through `OptimizerKind`, so that
//! Prodigy's and DAdaptAdam's host arithmetic between their two launches runs on both.
#![cfg(any(feature = "cuda", feature = "cuda-emu"))]

use crate::common;

use common::cuda::*;
use lorafuse::backend::prelude::*;
use lorafuse::rng::Rng;
use lorafuse::train::optim::{
    AdafactorSettings, AdamWSettings, DAdaptSettings, Layout, LionSettings, OptimizerKind,
    ProdigySettings, SgdSettings,
};
use lorafuse::DType;

fn kinds() -> Vec<(&'static str, OptimizerKind, f64)> {
    vec![
        (
            "lion",
            OptimizerKind::Lion(LionSettings {
                weight_decay: 0.1,
                ..LionSettings::default()
            }),
            1e-3,
        ),
        (
            "sgd_nesterov",
            OptimizerKind::SgdNesterov(SgdSettings {
                momentum: 0.9,
                weight_decay: 0.01,
            }),
            1e-2,
        ),
        (
            "prodigy",
            OptimizerKind::Prodigy(ProdigySettings {
                weight_decay: 0.01,
                use_bias_correction: true,
                ..ProdigySettings::default()
            }),
            1.0,
        ),
        (
            "prodigy coupled safeguard",
            OptimizerKind::Prodigy(ProdigySettings {
                weight_decay: 0.01,
                decouple: false,
                safeguard_warmup: true,
                d_coef: 2.0,
                growth_rate: 1.02,
                ..ProdigySettings::default()
            }),
            1.0,
        ),
        (
            "dadapt",
            OptimizerKind::DAdaptAdam(DAdaptSettings {
                weight_decay: 0.01,
                ..DAdaptSettings::default()
            }),
            1.0,
        ),
        (
            "dadapt decoupled bias-corrected",
            OptimizerKind::DAdaptAdam(DAdaptSettings {
                weight_decay: 0.01,
                decouple: true,
                use_bias_correction: true,
                growth_rate: 1.02,
                ..DAdaptSettings::default()
            }),
            1.0,
        ),
    ]
}

#[test]
fn optimizers_match_the_cpu() {
    let mut rng = Rng::new(23);
    let cpu = cpu();
    for e in engines(DType::F32) {
        // One element, a block's chunk plus a tail (Prodigy's partial sums), and several blocks.
        for n in [1usize, 1003, 8192 * 3 + 17] {
            for (what, kind, lr) in kinds() {
                let (mut cp, mut dp) = random_pair(&e.be, &mut rng, &[n], DType::F32);
                let mut c_opt = kind.build(&cpu, &Layout::flat(n)).unwrap();
                let mut d_opt = kind.build(&e.be, &Layout::flat(n)).unwrap();
                for _ in 0..5 {
                    let (cg, dg) = random_pair(&e.be, &mut rng, &[n], DType::F32);
                    c_opt.step(&cpu, &mut cp, &cg, lr, 0.5).unwrap();
                    d_opt.step(&e.be, &mut dp, &dg, lr, 0.5).unwrap();
                }
                let what = format!("{what} n={n}");
                assert_matches(&format!("{what} params"), &dp, &cp, (1e-5, 1e-6));
                for ((name, d), (_, c)) in d_opt.state().into_iter().zip(c_opt.state()) {
                    assert_matches(&format!("{what} {name}"), d, c, (1e-5, 1e-9));
                }
                assert_eq!(d_opt.steps(), c_opt.steps());
                let (de, ce) = (d_opt.effective_lr(lr), c_opt.effective_lr(lr));
                assert!(
                    (de - ce).abs() <= 1e-6 * ce.abs(),
                    "{what}: d·lr {de} vs {ce}"
                );
            }
        }
    }
}

/// Adafactor over tensors of many shapes (2-D LoRA-like, 4-D 3x3 and 1x1, a 1-D tensor, a
/// tensor larger than a block's threads many times over, a 1-element one, a zero-initialised
/// one), with each option: the kernel (one block per tensor) against the CPU, parameters,
/// moments and the reported rate.
#[test]
fn adafactor_matches_the_cpu() {
    let mut rng = Rng::new(31);
    let cpu = cpu();
    let layout = Layout::new(vec![
        vec![8, 40],
        vec![4, 6, 3, 3],
        vec![6, 4, 1, 1],
        vec![40, 8],
        vec![1],
        vec![300, 33],
        vec![77],
        vec![2, 3, 1, 517],
    ]);
    let n = layout.numel();
    let kohya = AdafactorSettings::default();
    let kinds = [
        ("kohya's defaults", kohya, 1.0),
        (
            "warmup_init, decay",
            AdafactorSettings {
                warmup_init: true,
                weight_decay: 0.01,
                ..kohya
            },
            1.0,
        ),
        (
            "scheduled, beta1, clip",
            AdafactorSettings {
                relative_step: false,
                scale_parameter: false,
                beta1: Some(0.9),
                weight_decay: 0.1,
                clip_threshold: 0.5,
                decay_rate: -0.5,
                ..kohya
            },
            1e-3,
        ),
    ];
    for e in engines(DType::F32) {
        for (what, s, lr) in kinds {
            // The 40x8 "up" starts at zero, as a LoRA's does (its rate is then eps2's).
            let mut start = random_pair(&e.be, &mut rng, &[n], DType::F32)
                .0
                .to_f32_vec();
            start[560..880].iter_mut().for_each(|x| *x = 0.0);
            let mut cp = cpu.tensor_from_f32(&[n], &start, DType::F32).unwrap();
            let mut dp = e.be.tensor_from_f32(&[n], &start, DType::F32).unwrap();
            let kind = OptimizerKind::Adafactor(s);
            let mut c_opt = kind.build(&cpu, &layout).unwrap();
            let mut d_opt = kind.build(&e.be, &layout).unwrap();
            for _ in 0..5 {
                let (cg, dg) = random_pair(&e.be, &mut rng, &[n], DType::F32);
                c_opt.step(&cpu, &mut cp, &cg, lr, 0.5).unwrap();
                d_opt.step(&e.be, &mut dp, &dg, lr, 0.5).unwrap();
            }
            assert_matches(&format!("{what} params"), &dp, &cp, (1e-5, 1e-6));
            let names: Vec<_> = c_opt.state().iter().map(|x| x.0).collect();
            assert_eq!(
                names,
                if s.beta1.is_some() {
                    ["col", "m", "row", "v"].to_vec()
                } else {
                    ["col", "row", "v"].to_vec()
                },
                "{what}"
            );
            for ((name, d), (_, c)) in d_opt.state().into_iter().zip(c_opt.state()) {
                assert_matches(&format!("{what} {name}"), d, c, (1e-5, 1e-9));
            }
            let (de, ce) = (d_opt.effective_lr(lr), c_opt.effective_lr(lr));
            assert!(
                (de - ce).abs() <= 1e-6 * ce.abs(),
                "{what}: lr {de} vs {ce}"
            );
        }
    }
}

/// The 8-bit optimizers: whole blocks, a partial last block, one element; a block whose
/// gradient is all zero (its absmax 0: the 0/0 path of the quantisation) and, for AdamW8bit,
/// non-finite gradients (left alone, moments 0). Parameters and absmax within rounding;
/// codes equal (on the emulator exactly; a GPU's fused multiply-adds may move a code at a
/// rounding tie by one step, so there at most 1 in 200 codes may differ, by one).
#[test]
fn eight_bit_optimizers_match_the_cpu() {
    let mut rng = Rng::new(29);
    let cpu = cpu();
    let kinds = [
        (
            "adamw8bit",
            OptimizerKind::AdamW8bit(AdamWSettings::default()),
            1e-3,
        ),
        (
            "lion8bit",
            OptimizerKind::Lion8bit(LionSettings {
                weight_decay: 0.1,
                ..LionSettings::default()
            }),
            1e-4,
        ),
    ];
    for e in engines(DType::F32) {
        let emulated = !e.gpu;
        for n in [1usize, 255, 256, 1003, 8192 * 3 + 17] {
            for (what, kind, lr) in &kinds {
                let (mut cp, mut dp) = random_pair(&e.be, &mut rng, &[n], DType::F32);
                let mut c_opt = kind.build(&cpu, &Layout::flat(n)).unwrap();
                let mut d_opt = kind.build(&e.be, &Layout::flat(n)).unwrap();
                for step in 0..5 {
                    let mut g = random_pair(&e.be, &mut rng, &[n], DType::F32)
                        .0
                        .to_f32_vec();
                    // The second block's gradient is zero on the first step.
                    if step == 0 && n > 512 {
                        g[256..512].iter_mut().for_each(|x| *x = 0.0);
                    }
                    if *what == "adamw8bit" && step == 2 {
                        g[0] = f32::NAN;
                        g[n - 1] = f32::INFINITY;
                    }
                    let cg = cpu.tensor_from_f32(&[n], &g, DType::F32).unwrap();
                    let dg = e.be.tensor_from_f32(&[n], &g, DType::F32).unwrap();
                    c_opt.step(&cpu, &mut cp, &cg, *lr, 0.5).unwrap();
                    d_opt.step(&e.be, &mut dp, &dg, *lr, 0.5).unwrap();
                }
                let what = format!("{what} n={n}");
                assert_matches(&format!("{what} params"), &dp, &cp, (1e-5, 1e-6));
                for ((name, d), (_, c)) in d_opt.state().into_iter().zip(c_opt.state()) {
                    if name.ends_with("_codes") {
                        assert_eq!(d.dtype(), DType::U8, "{what} {name}");
                        let (d, c) = (d.to_f32_vec(), c.to_f32_vec());
                        let off: Vec<f32> = d.iter().zip(&c).map(|(a, b)| (a - b).abs()).collect();
                        let differ = off.iter().filter(|&&x| x != 0.0).count();
                        if emulated {
                            assert_eq!(differ, 0, "{what} {name}: {differ} codes differ");
                        } else {
                            assert!(
                                differ * 200 <= n.max(200)
                                    && off.iter().all(|&x| x <= 1.0 || x == 255.0),
                                "{what} {name}: {differ} codes differ"
                            );
                        }
                    } else {
                        assert_matches(&format!("{what} {name}"), d, c, (1e-5, 1e-9));
                    }
                }
            }
        }
    }
}
