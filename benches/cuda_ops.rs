//! CUDA backend kernels at SD1.5 shapes (512x512: 64x64 latents, 4096 tokens), f16, on the
//! GPU: for each op, the median milliseconds and achieved TFLOP/s (matrix work) or GB/s
//! (memory-bound ops) of the fast kernels and of their simple twins, and the speed-up.
//! benches/kernel_reference.py times the same shapes in PyTorch (cuBLAS, cuDNN, SDPA) and the
//! device's measured fp16 matmul and copy ceilings in the same device call, and prints the
//! joined table (scripts/gpu-check.sh runs both).
//!
//! `cargo bench --features cuda --bench cuda_ops` (scripts/gpu-check.sh runs it on a lent
//! GPU); `BENCH_JSON=path` also writes JSON; `BENCH_REPS=n` (default 10). Without a GPU it
//! prints `SKIPPED: no CUDA device` and exits 0.

use std::time::Instant;

use lorafuse::backend::cuda::{CudaBackend, Device, KernelChoice};
use lorafuse::backend::prelude::*;
use lorafuse::backend::{Activation, Adapter, Attention, Conv2d, Lora};
use lorafuse::rng::Rng;
use lorafuse::{DType, Tensor};

struct Row {
    name: String,
    shape: String,
    /// Median milliseconds of the fast kernels (as `CudaBackend::new` picks them) and of the
    /// simple twins.
    fast_ms: f64,
    simple_ms: f64,
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
    let fast = CudaBackend::new(dev.clone(), DType::F16).expect("f16 backend");
    let simple = fast.clone().with_kernels(KernelChoice::simple());
    println!("fast kernels except: {}", fast.kernels().simple_families());
    let be = &fast;
    let mut rng = Rng::new(7);
    let mut rand = |shape: &[usize], dtype: DType| -> Tensor {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.normal() as f32 * 0.1).collect();
        be.tensor_from_f32(shape, &v, dtype).expect("upload")
    };
    let time1 = |be: &CudaBackend, f: &mut dyn FnMut(&CudaBackend)| -> f64 {
        f(be);
        dev.synchronize().expect("sync");
        let mut ms: Vec<f64> = (0..reps)
            .map(|_| {
                let t = Instant::now();
                f(be);
                dev.synchronize().expect("sync");
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        ms.sort_by(|a, b| a.total_cmp(b));
        ms[ms.len() / 2]
    };
    // (fast ms, simple ms) of one op.
    let time = |f: &mut dyn FnMut(&CudaBackend)| -> (f64, f64) {
        (time1(&fast, &mut *f), time1(&simple, &mut *f))
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
        let (fast_ms, simple_ms) = time(&mut |be| {
            be.linear(&x, &w, None, Some(Adapter::Lora(lora)))
                .expect("linear");
        });
        let flop = 2.0 * (m * k * n + m * k * r + m * r * n) as f64;
        rows.push(Row {
            name: what.into(),
            shape: format!("{m}x{k} -> {n}, r {r}"),
            fast_ms,
            simple_ms,
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
        let (fast_ms, simple_ms) = time(&mut |be| {
            be.conv2d(&x, &w, None, p, None).expect("conv");
        });
        let flop = 2.0 * (o * ho * ho * c * 9) as f64;
        rows.push(Row {
            name: format!("conv3x3 stride {stride}"),
            shape: format!("{c}->{o} @{hw}x{hw}"),
            fast_ms,
            simple_ms,
            work: (flop, "TFLOP/s"),
        });
        let dy = rand(&[1, o, ho, ho], DType::F16);
        let (fast_ms, simple_ms) = time(&mut |be| {
            be.conv2d_input_grad(&dy, &w, (hw, hw), p)
                .expect("conv dgrad");
        });
        rows.push(Row {
            name: format!("conv3x3 input grad stride {stride}"),
            shape: format!("{c}->{o} @{hw}x{hw}"),
            fast_ms,
            simple_ms,
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
        let (fast_ms, simple_ms) = time(&mut |be| {
            be.attention(&q, &k, &v, p).expect("attention");
        });
        rows.push(Row {
            name: format!("{what} forward"),
            shape: format!("{lq}x{lk}, {heads}x{d}"),
            fast_ms,
            simple_ms,
            work: (flop, "TFLOP/s"),
        });
        let (o, lse) = be.attention(&q, &k, &v, p).expect("attention");
        let d_o = rand(&[1, lq, heads * d], DType::F16);
        let (fast_ms, simple_ms) = time(&mut |be| {
            be.attention_backward(&q, &k, &v, &o, &lse, &d_o, p)
                .expect("attention backward");
        });
        rows.push(Row {
            name: format!("{what} backward"),
            shape: format!("{lq}x{lk}, {heads}x{d}"),
            fast_ms,
            simple_ms,
            work: (2.5 * flop, "TFLOP/s"),
        });
    }
    let x = rand(&[1, 320, 64, 64], DType::F16);
    let g = rand(&[320], DType::F16);
    let bt = rand(&[320], DType::F16);
    let (fast_ms, simple_ms) = time(&mut |be| {
        be.group_norm(&x, &g, &bt, 32, 1e-5, true)
            .expect("group norm");
    });
    rows.push(Row {
        name: "group_norm+silu".into(),
        shape: "320ch 64x64".into(),
        fast_ms,
        simple_ms,
        work: (2.0 * 2.0 * x.numel() as f64, "GB/s"),
    });
    let t = rand(&[4096, 320], DType::F16);
    let (fast_ms, simple_ms) = time(&mut |be| {
        be.layer_norm(&t, &g, &bt, 1e-5).expect("layer norm");
    });
    rows.push(Row {
        name: "layer_norm".into(),
        shape: "4096x320".into(),
        fast_ms,
        simple_ms,
        work: (2.0 * 2.0 * t.numel() as f64, "GB/s"),
    });
    let f = rand(&[4096, 2560], DType::F16);
    let (fast_ms, simple_ms) = time(&mut |be| {
        be.geglu(&f).expect("geglu");
    });
    rows.push(Row {
        name: "geglu".into(),
        shape: "4096x2560".into(),
        fast_ms,
        simple_ms,
        work: (2.0 * 1.5 * f.numel() as f64, "GB/s"),
    });
    let (fast_ms, simple_ms) = time(&mut |be| {
        be.activation(&x, Activation::Silu).expect("silu");
    });
    rows.push(Row {
        name: "silu".into(),
        shape: "320ch 64x64".into(),
        fast_ms,
        simple_ms,
        work: (2.0 * 2.0 * x.numel() as f64, "GB/s"),
    });

    println!(
        "{:<40} {:<22} {:>9} {:>14} {:>9} {:>14} {:>8}",
        "op (f16)", "shape", "fast ms", "fast rate", "simple ms", "simple rate", "speedup"
    );
    let rate =
        |r: &Row, ms: f64| r.work.0 / (ms * 1e-3) / if r.work.1 == "TFLOP/s" { 1e12 } else { 1e9 };
    for r in &rows {
        println!(
            "{:<40} {:<22} {:>9.3} {:>6.2} {:<7} {:>9.3} {:>6.2} {:<7} {:>7.2}x",
            r.name,
            r.shape,
            r.fast_ms,
            rate(r, r.fast_ms),
            r.work.1,
            r.simple_ms,
            rate(r, r.simple_ms),
            r.work.1,
            r.simple_ms / r.fast_ms
        );
    }
    println!("pool: {:?}", dev.pool_stats());
    if let Ok(path) = std::env::var("BENCH_JSON") {
        let items: Vec<String> = rows
            .iter()
            .map(|r| {
                format!(
                    "{{\"kernel\": \"{}\", \"shape\": \"{}\", \"fast_ms\": {:.4}, \"simple_ms\": {:.4}, \"work\": {}, \"unit\": \"{}\"}}",
                    r.name, r.shape, r.fast_ms, r.simple_ms, r.work.0, r.work.1
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
