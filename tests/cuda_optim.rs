//! Lion, SGD with Nesterov momentum and Prodigy on the CUDA backend against the CPU backend
//! (emulator, and GPU when present): whole optimizer steps through `OptimizerKind`, so that
//! Prodigy's host arithmetic between its two launches runs on both.
#![cfg(any(feature = "cuda", feature = "cuda-emu"))]

mod common;

use common::cuda::*;
use lorafuse::rng::Rng;
use lorafuse::train::optim::{LionSettings, OptimizerKind, ProdigySettings, SgdSettings};
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
                let mut c_opt = kind.build(&cpu, n).unwrap();
                let mut d_opt = kind.build(&e.be, n).unwrap();
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
