//! CPU backend throughput at SD1.5-like shapes (512x512 images: 64x64 latents, 4096 tokens):
//! GFLOP/s of the matrix products and 3x3 convolutions, so later changes can be compared.
//!
//! `cargo bench --bench cpu_ops` prints a table; `BENCH_JSON=path` also writes the figures as
//! JSON; `BENCH_REPS=n` sets the timed repetitions (default 5, median reported).

use std::time::Instant;

use lorafuse::backend::prelude::*;
use lorafuse::backend::{Adapter, Conv2d, Lora};
use lorafuse::rng::Rng;
use lorafuse::{CpuBackend, DType, Tensor};

struct Row {
    name: String,
    shape: String,
    gflop: f64,
    median_ms: f64,
}

fn rand_t(rng: &mut Rng, shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.normal() as f32 * 0.1).collect();
    Tensor::from_f32(shape, v).expect("length matches shape")
}

fn time(reps: usize, mut f: impl FnMut()) -> f64 {
    f(); // warm-up: page faults, rayon pool start
    let mut ms: Vec<f64> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    ms.sort_by(|a, b| a.total_cmp(b));
    ms[ms.len() / 2]
}

fn main() {
    let reps: usize = std::env::var("BENCH_REPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let be = CpuBackend::new();
    let mut rng = Rng::new(42);
    let mut rows = Vec::new();

    // Linear layers of the UNet's transformer blocks: (tokens, in, out, what).
    let linears = [
        (4096, 320, 320, "attn q/k/v/out, level 1"),
        (4096, 320, 2560, "GEGLU proj, level 1"),
        (4096, 1280, 320, "FF out, level 1"),
        (1024, 640, 640, "attn q/k/v/out, level 2"),
        (256, 1280, 1280, "attn q/k/v/out, level 3"),
        (77, 768, 320, "cross-attn k/v from text"),
    ];
    for (m, k, n, what) in linears {
        let x = rand_t(&mut rng, &[m, k]);
        let w = rand_t(&mut rng, &[n, k]);
        let ms = time(reps, || {
            be.linear(&x, &w, None, None).expect("linear");
        });
        rows.push(Row {
            name: format!("matmul {what}"),
            shape: format!("[{m},{k}]x[{k},{n}]"),
            gflop: 2.0 * (m * k * n) as f64 / 1e9,
            median_ms: ms,
        });
    }
    // The same layer with a rank-8 LoRA and its backward (dX, dA, dB): the training step's work.
    {
        let (m, k, n, r) = (4096, 320, 320, 8);
        let x = rand_t(&mut rng, &[m, k]);
        let w = rand_t(&mut rng, &[n, k]);
        let a = rand_t(&mut rng, &[r, k]);
        let b = rand_t(&mut rng, &[n, r]);
        let lora = Lora {
            down: &a,
            up: &b,
            scale: 1.0,
            dropout: None,
        };
        let ms = time(reps, || {
            be.linear(&x, &w, None, Some(Adapter::Lora(lora)))
                .expect("linear");
        });
        let flop = 2.0 * (m * k * n + m * k * r + m * r * n) as f64;
        rows.push(Row {
            name: "matmul + LoRA r8 forward".into(),
            shape: format!("[{m},{k}]x[{k},{n}]"),
            gflop: flop / 1e9,
            median_ms: ms,
        });
    }

    // 3x3 convolutions of the ResNet blocks and downsamplers: (C, O, H, stride, what).
    let convs = [
        (320, 320, 64, 1, "resnet level 1"),
        (640, 640, 32, 1, "resnet level 2"),
        (1280, 1280, 16, 1, "resnet level 3"),
        (1280, 1280, 8, 1, "resnet level 4"),
        (320, 320, 64, 2, "downsample level 1"),
        (4, 320, 64, 1, "conv_in"),
    ];
    for (c, o, h, stride, what) in convs {
        let x = rand_t(&mut rng, &[1, c, h, h]);
        let w = rand_t(&mut rng, &[o, c, 3, 3]);
        let p = Conv2d { stride, padding: 1 };
        let ho = p.out_size(h, 3).expect("kernel fits");
        let flop = 2.0 * (o * c * 9 * ho * ho) as f64;
        let ms = time(reps, || {
            be.conv2d(&x, &w, None, p, None).expect("conv2d");
        });
        rows.push(Row {
            name: format!("conv3x3 {what}"),
            shape: format!("[1,{c},{h},{h}]->{o} s{stride}"),
            gflop: flop / 1e9,
            median_ms: ms,
        });
        if stride == 1 && c == o && h <= 32 {
            let dy = be.conv2d(&x, &w, None, p, None).expect("conv2d");
            let ms = time(reps, || {
                be.conv2d_input_grad(&dy, &w, (h, h), p)
                    .expect("conv2d_input_grad");
            });
            rows.push(Row {
                name: format!("conv3x3 input grad {what}"),
                shape: format!("[1,{o},{h},{h}]->{c}"),
                gflop: flop / 1e9,
                median_ms: ms,
            });
        }
    }

    println!(
        "lorafuse CPU backend, f32, {} threads, median of {reps}",
        rayon::current_num_threads()
    );
    println!(
        "{:<40} {:<26} {:>10} {:>10}",
        "op", "shape", "ms", "GFLOP/s"
    );
    for r in &rows {
        println!(
            "{:<40} {:<26} {:>10.2} {:>10.1}",
            r.name,
            r.shape,
            r.median_ms,
            r.gflop / (r.median_ms / 1e3)
        );
    }
    if let Ok(path) = std::env::var("BENCH_JSON") {
        let items: Vec<String> = rows
            .iter()
            .map(|r| {
                format!(
                    "{{\"op\":\"{}\",\"shape\":\"{}\",\"gflop\":{:.4},\"median_ms\":{:.3},\"gflops\":{:.2}}}",
                    r.name, r.shape, r.gflop, r.median_ms, r.gflop / (r.median_ms / 1e3)
                )
            })
            .collect();
        let json = format!(
            "{{\"backend\":\"cpu\",\"dtype\":\"{}\",\"threads\":{},\"reps\":{reps},\"results\":[{}]}}\n",
            DType::F32,
            rayon::current_num_threads(),
            items.join(",")
        );
        if let Err(e) = std::fs::write(&path, json) {
            eprintln!("cannot write {path}: {e}");
            std::process::exit(2);
        }
    }
}
