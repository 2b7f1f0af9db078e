//! CUDA backend kernels at SD1.5 shapes (512x512: 64x64 latents, 4096 tokens), f16, on the
//! GPU: median milliseconds and achieved TFLOP/s (matrix work) or GB/s (memory-bound ops) of
//! the simple reference kernels, so the fast kernels can report their speed-up against them.
//!
//! `cargo bench --features cuda --bench cuda_ops` (scripts/gpu-check.sh runs it on a lent
//! GPU); `BENCH_JSON=path` also writes JSON; `BENCH_REPS=n` (default 10). Without a GPU it
//! prints `SKIPPED: no CUDA device` and exits 0.

use std::time::Instant;

use lorafuse::backend::cuda::{CudaBackend, Device};
use lorafuse::backend::{Activation, Attention, Conv2d, Lora};
use lorafuse::rng::Rng;
use lorafuse::{Backend, DType, Tensor};

struct Row {
    name: String,
    shape: String,
    median_ms: f64,
    /// (amount, unit): FLOPs for matrix work, bytes moved for the rest.
    work: (f64, &'static str),
}

fn main() {
    let dev = match Device::gpu(0) {
        Ok(d) => d,
        Err(e) => {
            println!("SKIPPED: no CUDA device ({e})");
            return;
        }
    };
    let reps: usize = std::env::var("BENCH_REPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    println!("device: {}", dev.describe());
    let be = CudaBackend::new(dev.clone(), DType::F16).expect("f16 backend");
    let mut rng = Rng::new(7);
    let mut rand = |shape: &[usize], dtype: DType| -> Tensor {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.normal() as f32 * 0.1).collect();
        be.tensor_from_f32(shape, &v, dtype).expect("upload")
    };
    let time = |f: &mut dyn FnMut()| -> f64 {
        f();
        dev.synchronize().expect("sync");
        let mut ms: Vec<f64> = (0..reps)
            .map(|_| {
                let t = Instant::now();
                f();
                dev.synchronize().expect("sync");
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        ms.sort_by(|a, b| a.total_cmp(b));
        ms[ms.len() / 2]
    };
    let mut rows = Vec::new();

    for (m, k, n, r, what) in [
        (4096, 320, 320, 8, "linear+LoRA q/k/v/out, level 1"),
        (4096, 320, 2560, 8, "linear+LoRA GEGLU proj, level 1"),
        (4096, 1280, 320, 8, "linear+LoRA FF out, level 1"),
        (256, 1280, 1280, 8, "linear+LoRA level 3"),
    ] {
        let x = rand(&[m, k], DType::F16);
        let w = rand(&[n, k], DType::F16);
        let a = rand(&[r, k], DType::F32);
        let b = rand(&[n, r], DType::F32);
        let lora = Lora {
            down: &a,
            up: &b,
            scale: 1.0,
            dropout: None,
        };
        let ms = time(&mut || {
            be.linear(&x, &w, None, Some(lora)).expect("linear");
        });
        let flop = 2.0 * (m * k * n + m * k * r + m * r * n) as f64;
        rows.push(Row {
            name: what.into(),
            shape: format!("{m}x{k} -> {n}, r {r}"),
            median_ms: ms,
            work: (flop, "TFLOP/s"),
        });
    }
    for (c, o, hw, stride) in [
        (320, 320, 64, 1),
        (640, 640, 32, 1),
        (1280, 1280, 16, 1),
        (320, 320, 64, 2),
    ] {
        let x = rand(&[1, c, hw, hw], DType::F16);
        let w = rand(&[o, c, 3, 3], DType::F16);
        let p = Conv2d { stride, padding: 1 };
        let ho = hw / stride;
        let ms = time(&mut || {
            be.conv2d(&x, &w, None, p).expect("conv");
        });
        let flop = 2.0 * (o * ho * ho * c * 9) as f64;
        rows.push(Row {
            name: format!("conv3x3 stride {stride}"),
            shape: format!("{c}->{o} @{hw}x{hw}"),
            median_ms: ms,
            work: (flop, "TFLOP/s"),
        });
        let dy = rand(&[1, o, ho, ho], DType::F16);
        let ms = time(&mut || {
            be.conv2d_input_grad(&dy, &w, (hw, hw), p)
                .expect("conv dgrad");
        });
        rows.push(Row {
            name: format!("conv3x3 input grad stride {stride}"),
            shape: format!("{c}->{o} @{hw}x{hw}"),
            median_ms: ms,
            work: (flop, "TFLOP/s"),
        });
    }
    for (lq, lk, heads, d, what) in [
        (4096, 4096, 8, 40, "self-attention level 1"),
        (4096, 77, 8, 40, "cross-attention level 1"),
        (1024, 1024, 8, 80, "self-attention level 2"),
    ] {
        let q = rand(&[1, lq, heads * d], DType::F16);
        let k = rand(&[1, lk, heads * d], DType::F16);
        let v = rand(&[1, lk, heads * d], DType::F16);
        let p = Attention {
            heads,
            causal: false,
        };
        let flop = 4.0 * (heads * lq * lk * d) as f64;
        let ms = time(&mut || {
            be.attention(&q, &k, &v, p).expect("attention");
        });
        rows.push(Row {
            name: format!("{what} forward"),
            shape: format!("{lq}x{lk}, {heads}x{d}"),
            median_ms: ms,
            work: (flop, "TFLOP/s"),
        });
        let (o, lse) = be.attention(&q, &k, &v, p).expect("attention");
        let d_o = rand(&[1, lq, heads * d], DType::F16);
        let ms = time(&mut || {
            be.attention_backward(&q, &k, &v, &o, &lse, &d_o, p)
                .expect("attention backward");
        });
        rows.push(Row {
            name: format!("{what} backward"),
            shape: format!("{lq}x{lk}, {heads}x{d}"),
            median_ms: ms,
            work: (2.5 * flop, "TFLOP/s"),
        });
    }
    let x = rand(&[1, 320, 64, 64], DType::F16);
    let g = rand(&[320], DType::F16);
    let bt = rand(&[320], DType::F16);
    let ms = time(&mut || {
        be.group_norm(&x, &g, &bt, 32, 1e-5, true)
            .expect("group norm");
    });
    rows.push(Row {
        name: "group_norm+silu".into(),
        shape: "320ch 64x64".into(),
        median_ms: ms,
        work: (2.0 * 2.0 * x.numel() as f64, "GB/s"),
    });
    let t = rand(&[4096, 320], DType::F16);
    let ms = time(&mut || {
        be.layer_norm(&t, &g, &bt, 1e-5).expect("layer norm");
    });
    rows.push(Row {
        name: "layer_norm".into(),
        shape: "4096x320".into(),
        median_ms: ms,
        work: (2.0 * 2.0 * t.numel() as f64, "GB/s"),
    });
    let f = rand(&[4096, 2560], DType::F16);
    let ms = time(&mut || {
        be.geglu(&f).expect("geglu");
    });
    rows.push(Row {
        name: "geglu".into(),
        shape: "4096x2560".into(),
        median_ms: ms,
        work: (2.0 * 1.5 * f.numel() as f64, "GB/s"),
    });
    let ms = time(&mut || {
        be.activation(&x, Activation::Silu).expect("silu");
    });
    rows.push(Row {
        name: "silu".into(),
        shape: "320ch 64x64".into(),
        median_ms: ms,
        work: (2.0 * 2.0 * x.numel() as f64, "GB/s"),
    });

    println!(
        "{:<40} {:<22} {:>10} {:>12}",
        "kernel (simple, f16)", "shape", "median ms", "rate"
    );
    for r in &rows {
        let rate = r.work.0 / (r.median_ms * 1e-3) / if r.work.1 == "TFLOP/s" { 1e12 } else { 1e9 };
        println!(
            "{:<40} {:<22} {:>10.3} {:>8.2} {}",
            r.name, r.shape, r.median_ms, rate, r.work.1
        );
    }
    println!("pool: {:?}", dev.pool_stats());
    if let Ok(path) = std::env::var("BENCH_JSON") {
        let items: Vec<String> = rows
            .iter()
            .map(|r| {
                format!(
                    "{{\"kernel\": \"{}\", \"shape\": \"{}\", \"median_ms\": {:.4}, \"work\": {}, \"unit\": \"{}\"}}",
                    r.name, r.shape, r.median_ms, r.work.0, r.work.1
                )
            })
            .collect();
        let json = format!(
            "{{\"device\": \"{}\", \"rows\": [\n  {}\n]}}\n",
            dev.describe(),
            items.join(",\n  ")
        );
        std::fs::write(&path, json).expect("BENCH_JSON is writable");
    }
}
