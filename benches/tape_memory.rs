//! What the training forward keeps for the backward, on the real SD1.5 UNet (random weights
//! of the real configuration: the shapes, not the values, decide the bytes) at 512x512,
//! batch 1, with a rank-8 LoRA on kohya's 192 targets: the tape's bytes against the sum of
//! every intermediate activation the forward computes, and CPU times for forward and backward.
//!
//! `cargo bench --bench tape_memory` (about 4 GB of memory; BENCH_RES=256 for a quicker run).

use std::time::Instant;

use lorafuse::backend::cpu::output_bytes;
use lorafuse::backend::prelude::*;
use lorafuse::backend::Accum;
use lorafuse::lora::{LoraSet, LoraTargets};
use lorafuse::model::config::UnetConfig;
use lorafuse::model::layers::Ctx;
use lorafuse::model::unet::Unet;
use lorafuse::model::weights::RandomWeights;
use lorafuse::rng::Rng;
use lorafuse::{CpuBackend, DType, Tensor};

fn gib(b: u64) -> f64 {
    b as f64 / (1u64 << 30) as f64
}

fn peak_rss() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM"))
                .map(|l| l.split_whitespace().nth(1).unwrap_or("?").to_string())
        })
        .map_or("n/a".into(), |kb| {
            format!(
                "{:.2} GiB",
                kb.parse::<f64>().unwrap_or(0.0) / (1u64 << 20) as f64
            )
        })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let res: usize = std::env::var("BENCH_RES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(512);
    let be = CpuBackend::new();
    let t0 = Instant::now();
    let unet = Unet::load(&UnetConfig::sd15(), &RandomWeights { seed: 1 }, &be, "unet")?;
    println!(
        "SD1.5 UNet built from random weights in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    let targets = unet.lora_targets(LoraTargets::Transformer);
    let mut rng = Rng::new(2);
    let lora = LoraSet::init(&be, &targets, 8, 8.0, &mut rng)?;
    println!(
        "LoRA: {} modules, rank 8, {} parameters",
        lora.len(),
        lora.num_params()
    );

    let h = res / 8;
    let randn = |rng: &mut Rng, shape: &[usize]| -> Result<Tensor, Box<dyn std::error::Error>> {
        let n: usize = shape.iter().product();
        Ok(Tensor::from_f32(
            shape,
            rng.normal_vec(n).iter().map(|&v| v as f32).collect(),
        )?)
    };
    let x = randn(&mut rng, &[1, 4, h, h])?;
    let ctx = randn(&mut rng, &[1, 77, 768])?;
    let t = Tensor::from_f32([1], vec![500.0])?;
    let cx = Ctx::new(&be, Some(&lora));

    let before = output_bytes();
    let t1 = Instant::now();
    let (out, tape) = unet.forward(&cx, &x, &t, &ctx, true, None)?;
    let fwd_s = t1.elapsed().as_secs_f64();
    let all = output_bytes() - before;
    let tape = tape.ok_or("no tape")?;
    let saved = tape.size_in_bytes() as u64;
    let (_, d_out) = be.mse_loss(&out, &x, None, 1.0)?;
    let mut grads = lora.zero_grads(&be)?;
    grads.accum = Accum::Assign;
    let t2 = Instant::now();
    unet.backward(&cx, &d_out, &ctx, tape, &mut grads)?;
    let bwd_s = t2.elapsed().as_secs_f64();
    let gnorm = grads
        .down
        .iter()
        .chain(&grads.up)
        .map(|g| be.sum_squares(g).unwrap_or(f64::NAN))
        .sum::<f64>()
        .sqrt();

    println!(
        "resolution {res}x{res} (latents {h}x{h}), batch 1, {} activations",
        DType::F32
    );
    println!("tape (saved for the backward): {:>8.3} GiB", gib(saved));
    println!("all forward activations:       {:>8.3} GiB", gib(all));
    println!(
        "tape / all:                    {:>8.1} %",
        100.0 * saved as f64 / all as f64
    );
    println!("CPU forward {fwd_s:.1} s, backward {bwd_s:.1} s ({} threads); LoRA gradient norm {gnorm:.3e}", rayon::current_num_threads());
    println!("peak resident memory: {}", peak_rss());
    Ok(())
}
