//! CPU backend throughput at SD1.5-like shapes (512x512 images: 64x64 latents, 4096 tokens):
//! GFLOP/s of the matrix products and 3x3 convolutions, so later changes can be compared.
//!
//! `cargo bench --bench cpu_ops` prints a table; `BENCH_JSON=path` also writes the figures as
//! JSON; `BENCH_REPS=n` sets the timed repetitions (default 5, median reported);
//! `BENCH_ONLY=text` runs only the groups whose name contains it (matmul, attention, conv,
//! pointwise: GEGLU, GroupNorm+SiLU and LayerNorm, rated in G elements/s);
//! `BENCH_PRECISION=bf16` computes the products with frozen weights in bf16 (`cpu_precision:
//! bf16`, AVX512_BF16; f32 by default).
//!
//! Each op gets two rates: FLOP per wall-clock second, and FLOP per CPU-second of this
//! process (all its threads, from /proc/self/task/*/schedstat on Linux). On a machine shared
//! with other work the wall rate falls with the load; the CPU rate barely moves, so it is
//! the one to compare across runs there. The CPU rate is set against one core's FMA peak,
//! measured first: independent chains of 256-bit FMAs (x86-64 with AVX2/FMA). That is the
//! peak of CPUs whose 512-bit FMA takes two 256-bit halves (AMD Zen 4) or that have no
//! AVX-512; on Intel parts with two 512-bit FMA units the true peak is twice it.

use std::time::Instant;

use lorafuse::backend::cpu::CpuPrecision;
use lorafuse::backend::prelude::*;
use lorafuse::backend::{Adapter, Attention, Conv2d, Lora};
use lorafuse::rng::Rng;
use lorafuse::{CpuBackend, DType, Tensor};

struct Row {
    name: String,
    shape: String,
    gflop: f64,
    median_ms: f64,
    /// CPU time of the process over the same repetition (all threads), when known.
    cpu_ms: Option<f64>,
}

impl Row {
    /// A row from its timing, (median wall ms, median CPU ms).
    fn new(
        name: String,
        shape: String,
        gflop: f64,
        (median_ms, cpu_ms): (f64, Option<f64>),
    ) -> Row {
        Row {
            name,
            shape,
            gflop,
            median_ms,
            cpu_ms,
        }
    }
}

/// CPU time this process's threads have run, in seconds (Linux: the first field of each
/// thread's schedstat is its run time in ns); None where that is not available.
fn cpu_seconds() -> Option<f64> {
    let mut ns = 0u64;
    for t in std::fs::read_dir("/proc/self/task").ok()? {
        let stat = std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok()?;
        ns += stat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(ns as f64 * 1e-9)
}

/// One core's FMA peak in GFLOP/s of CPU time: `chains` independent accumulators of
/// `lanes` f32 each, so no FMA waits for the one before it.
#[cfg(target_arch = "x86_64")]
fn fma_peak_per_core() -> Option<(f64, &'static str)> {
    use std::arch::x86_64::*;
    const CHAINS: usize = 12;
    const ITERS: usize = 20_000_000;
    #[target_feature(enable = "avx2,fma")]
    unsafe fn chains256() -> f32 {
        let mut acc = [_mm256_set1_ps(0.0); CHAINS];
        let (a, b) = (_mm256_set1_ps(0.999_999_9), _mm256_set1_ps(1e-7));
        for _ in 0..ITERS {
            for x in acc.iter_mut() {
                *x = _mm256_fmadd_ps(*x, a, b);
            }
        }
        let mut out = [0f32; 8];
        let mut sum = 0.0;
        for x in acc {
            _mm256_storeu_ps(out.as_mut_ptr(), x);
            sum += out.iter().sum::<f32>();
        }
        sum
    }
    if !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")) {
        return None;
    }
    let t0 = cpu_seconds()?;
    // SAFETY: the features were detected above.
    let sink = unsafe { chains256() };
    let dt = cpu_seconds()? - t0;
    std::hint::black_box(sink);
    Some(((ITERS * CHAINS * 8 * 2) as f64 / dt / 1e9, "AVX2 FMA"))
}
#[cfg(not(target_arch = "x86_64"))]
fn fma_peak_per_core() -> Option<(f64, &'static str)> {
    None
}

fn rand_t(rng: &mut Rng, shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.normal() as f32 * 0.1).collect();
    Tensor::from_f32(shape, v).expect("length matches shape")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Median wall-clock and CPU milliseconds of `reps` calls, after one warm-up call.
fn time(reps: usize, mut f: impl FnMut()) -> (f64, Option<f64>) {
    f(); // warm-up: page faults, rayon pool start
    let (mut wall, mut cpu) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        let c = cpu_seconds();
        let t = Instant::now();
        f();
        wall.push(t.elapsed().as_secs_f64() * 1e3);
        if let (Some(c0), Some(c1)) = (c, cpu_seconds()) {
            cpu.push((c1 - c0) * 1e3);
        }
    }
    let cpu = (cpu.len() == reps).then(|| median(cpu));
    (median(wall), cpu)
}

fn main() {
    let reps: usize = std::env::var("BENCH_REPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let want = std::env::var("BENCH_PRECISION").unwrap_or_else(|_| "f32".into());
    let precision = CpuPrecision::ALL
        .into_iter()
        .find(|p| p.name() == want)
        .unwrap_or_else(|| panic!("BENCH_PRECISION={want}: f32 or bf16"));
    let be = CpuBackend::with_precision(precision).unwrap_or_else(|e| panic!("{e}"));
    let mut rng = Rng::new(42);
    let mut rows = Vec::new();
    let only = std::env::var("BENCH_ONLY").ok();
    let on = |group: &str| only.as_deref().is_none_or(|o| group.contains(o));

    // Linear layers of the UNet's transformer blocks: (tokens, in, out, what).
    let linears = [
        (4096, 320, 320, "attn q/k/v/out, level 1"),
        (4096, 320, 2560, "GEGLU proj, level 1"),
        (4096, 1280, 320, "FF out, level 1"),
        (1024, 640, 640, "attn q/k/v/out, level 2"),
        (256, 1280, 1280, "attn q/k/v/out, level 3"),
        (77, 768, 320, "cross-attn k/v from text"),
        // 256x256 images (32x32 latents): the deep levels' few tokens against big weights,
        // where packing the weight on every call costs as much as the product.
        (64, 1280, 1280, "attn q/k/v/out, level 3, 256px"),
        (16, 1280, 10240, "GEGLU proj, mid block, 256px"),
    ];
    for (m, k, n, what) in linears.into_iter().filter(|_| on("matmul")) {
        let x = rand_t(&mut rng, &[m, k]);
        let w = rand_t(&mut rng, &[n, k]);
        let t = time(reps, || {
            be.linear(&x, &w, None, None).expect("linear");
        });
        rows.push(Row::new(
            format!("matmul {what}"),
            format!("[{m},{k}]x[{k},{n}]"),
            2.0 * (m * k * n) as f64 / 1e9,
            t,
        ));
    }
    // The same layer with a rank-8 LoRA and its backward (dX, dA, dB): the training step's work.
    if on("matmul") {
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
        let t = time(reps, || {
            be.linear(&x, &w, None, Some(Adapter::Lora(lora)))
                .expect("linear");
        });
        let flop = 2.0 * (m * k * n + m * k * r + m * r * n) as f64;
        rows.push(Row::new(
            "matmul + LoRA r8 forward".into(),
            format!("[{m},{k}]x[{k},{n}]"),
            flop / 1e9,
            t,
        ));
    }

    // The input gradient of a linear layer, dX = dY·W (W not transposed, unlike the forward).
    let grads = [
        (4096, 320, 320, "level 1"),
        (64, 1280, 1280, "level 3, 256px"),
    ];
    for (m, k, n, what) in grads.into_iter().filter(|_| on("matmul")) {
        let dy = rand_t(&mut rng, &[m, n]);
        let w = rand_t(&mut rng, &[n, k]);
        let t = time(reps, || {
            be.linear_backward(&dy, &w, None, true)
                .expect("linear_backward");
        });
        rows.push(Row::new(
            format!("matmul input grad, {what}"),
            format!("[{m},{n}]x[{n},{k}]"),
            2.0 * (m * k * n) as f64 / 1e9,
            t,
        ));
    }

    // Self-attention of the transformer blocks: 8 heads of 40 (level 1) over 4096 tokens
    // (512x512) and 1024 (256x256), and cross-attention of 4096 tokens over the text's 77.
    // Forward: Q·Kᵀ and P·V; backward: Q·Kᵀ again, then dV, dP, dQ, dK (5 products), all of
    // 2·Lq·Lk·d FLOP per head.
    let attns = [
        (4096, 4096, "512px"),
        (1024, 1024, "256px"),
        (4096, 77, "cross 512px"),
    ];
    for (len, keys, what) in attns.into_iter().filter(|_| on("attention")) {
        let (heads, d) = (8, 40);
        let p = Attention {
            heads,
            causal: false,
        };
        let q = rand_t(&mut rng, &[1, len, heads * d]);
        let k = rand_t(&mut rng, &[1, keys, heads * d]);
        let v = rand_t(&mut rng, &[1, keys, heads * d]);
        let product = 2.0 * (len * keys * d * heads) as f64 / 1e9;
        let t = time(reps, || {
            be.attention(&q, &k, &v, p).expect("attention");
        });
        rows.push(Row::new(
            format!("attention level 1, {what}"),
            format!("[1,{len},{heads}x{d}] {keys} keys"),
            2.0 * product,
            t,
        ));
        let (o, lse) = be.attention(&q, &k, &v, p).expect("attention");
        let d_o = rand_t(&mut rng, &[1, len, heads * d]);
        let t = time(reps, || {
            be.attention_backward(&q, &k, &v, &o, &lse, &d_o, p)
                .expect("attention_backward");
        });
        rows.push(Row::new(
            format!("attention backward level 1, {what}"),
            format!("[1,{len},{heads}x{d}] {keys} keys"),
            5.0 * product,
            t,
        ));
    }

    // 3x3 convolutions of the ResNet blocks and downsamplers: (C, O, H, stride, what).
    let convs = [
        (320, 320, 64, 1, "resnet level 1"),
        (640, 640, 32, 1, "resnet level 2"),
        (1280, 1280, 16, 1, "resnet level 3"),
        (1280, 1280, 8, 1, "resnet level 4"),
        (1280, 1280, 4, 1, "resnet level 4, 256px"),
        (320, 320, 64, 2, "downsample level 1"),
        (4, 320, 64, 1, "conv_in"),
    ];
    for (c, o, h, stride, what) in convs.into_iter().filter(|_| on("conv")) {
        let x = rand_t(&mut rng, &[1, c, h, h]);
        let w = rand_t(&mut rng, &[o, c, 3, 3]);
        let p = Conv2d { stride, padding: 1 };
        let ho = p.out_size(h, 3).expect("kernel fits");
        let flop = 2.0 * (o * c * 9 * ho * ho) as f64;
        let t = time(reps, || {
            be.conv2d(&x, &w, None, p, None).expect("conv2d");
        });
        rows.push(Row::new(
            format!("conv3x3 {what}"),
            format!("[1,{c},{h},{h}]->{o} s{stride}"),
            flop / 1e9,
            t,
        ));
        if stride == 1 && c == o && h <= 32 {
            let dy = be.conv2d(&x, &w, None, p, None).expect("conv2d");
            let t = time(reps, || {
                be.conv2d_input_grad(&dy, &w, (h, h), p)
                    .expect("conv2d_input_grad");
            });
            rows.push(Row::new(
                format!("conv3x3 input grad {what}"),
                format!("[1,{o},{h},{h}]->{c}"),
                flop / 1e9,
                t,
            ));
        }
    }

    // Pointwise work of the same layers (`pointwise`): GEGLU of the level-1 feed-forward and
    // GroupNorm with SiLU of a level-1 ResNet block, forward and input gradient. Their "GFLOP"
    // column holds G elements of output (the FMA peak is no yardstick for them).
    if on("pointwise") {
        let (m, f) = (4096, 1280);
        let x = rand_t(&mut rng, &[1, m, 2 * f]);
        let dy = rand_t(&mut rng, &[1, m, f]);
        let elems = (m * f) as f64 / 1e9;
        let t = time(reps, || {
            be.geglu(&x).expect("geglu");
        });
        rows.push(Row::new(
            "pointwise GEGLU level 1 (Gelem)".into(),
            format!("[1,{m},{}]", 2 * f),
            elems,
            t,
        ));
        let t = time(reps, || {
            be.geglu_backward(&dy, &x).expect("geglu_backward");
        });
        rows.push(Row::new(
            "pointwise GEGLU backward (Gelem)".into(),
            format!("[1,{m},{}]", 2 * f),
            elems,
            t,
        ));
        let (c, h) = (320, 64);
        let x = rand_t(&mut rng, &[1, c, h, h]);
        let dy = rand_t(&mut rng, &[1, c, h, h]);
        let gamma = rand_t(&mut rng, &[c]);
        let beta = rand_t(&mut rng, &[c]);
        let elems = (c * h * h) as f64 / 1e9;
        let t = time(reps, || {
            be.group_norm(&x, &gamma, &beta, 32, 1e-5, true)
                .expect("group_norm");
        });
        rows.push(Row::new(
            "pointwise GroupNorm+SiLU level 1 (Gelem)".into(),
            format!("[1,{c},{h},{h}]"),
            elems,
            t,
        ));
        let (_, stats) = be
            .group_norm(&x, &gamma, &beta, 32, 1e-5, true)
            .expect("group_norm");
        let t = time(reps, || {
            be.group_norm_backward(&dy, &x, &gamma, &beta, &stats, 32, true)
                .expect("group_norm_backward");
        });
        rows.push(Row::new(
            "pointwise GroupNorm+SiLU backward (Gelem)".into(),
            format!("[1,{c},{h},{h}]"),
            elems,
            t,
        ));
        // LayerNorm of a level-1 transformer block: 4096 rows of 320 channels.
        let (m, c) = (4096, 320);
        let x = rand_t(&mut rng, &[1, m, c]);
        let dy = rand_t(&mut rng, &[1, m, c]);
        let gamma = rand_t(&mut rng, &[c]);
        let beta = rand_t(&mut rng, &[c]);
        let elems = (m * c) as f64 / 1e9;
        let t = time(reps, || {
            be.layer_norm(&x, &gamma, &beta, 1e-5).expect("layer_norm");
        });
        rows.push(Row::new(
            "pointwise LayerNorm level 1 (Gelem)".into(),
            format!("[1,{m},{c}]"),
            elems,
            t,
        ));
        let (_, stats) = be.layer_norm(&x, &gamma, &beta, 1e-5).expect("layer_norm");
        let t = time(reps, || {
            be.layer_norm_backward(&dy, &x, &gamma, &stats)
                .expect("layer_norm_backward");
        });
        rows.push(Row::new(
            "pointwise LayerNorm backward (Gelem)".into(),
            format!("[1,{m},{c}]"),
            elems,
            t,
        ));
    }

    let threads = rayon::current_num_threads();
    let peak = fma_peak_per_core();
    println!(
        "lorafuse CPU backend, f32 (products with frozen weights: {}), {threads} threads, median of {reps}",
        precision.name()
    );
    match peak {
        Some((g, how)) => println!(
            "FMA peak ({how}, one core, per CPU-second): {g:.1} GFLOP/s; x{threads} threads = {:.1}",
            g * threads as f64
        ),
        None => println!("FMA peak: not measured on this CPU"),
    }
    println!(
        "{:<40} {:<26} {:>9} {:>9} {:>9} {:>10} {:>7}",
        "op", "shape", "ms", "GFLOP/s", "cpu ms", "GF/cpu-s", "% peak"
    );
    let fmt = |v: Option<f64>, prec: usize| v.map_or("-".to_string(), |v| format!("{v:.prec$}"));
    for r in &rows {
        let per_cpu = r.cpu_ms.map(|c| r.gflop / (c / 1e3));
        println!(
            "{:<40} {:<26} {:>9.2} {:>9.1} {:>9} {:>10} {:>7}",
            r.name,
            r.shape,
            r.median_ms,
            r.gflop / (r.median_ms / 1e3),
            fmt(r.cpu_ms, 2),
            fmt(per_cpu, 1),
            fmt(per_cpu.zip(peak).map(|(g, (p, _))| 100.0 * g / p), 0),
        );
    }
    if let Ok(path) = std::env::var("BENCH_JSON") {
        let items: Vec<String> = rows
            .iter()
            .map(|r| {
                format!(
                    "{{\"op\":\"{}\",\"shape\":\"{}\",\"gflop\":{:.4},\"median_ms\":{:.3},\"gflops\":{:.2},\"cpu_ms\":{}}}",
                    r.name,
                    r.shape,
                    r.gflop,
                    r.median_ms,
                    r.gflop / (r.median_ms / 1e3),
                    r.cpu_ms.map_or("null".to_string(), |c| format!("{c:.3}"))
                )
            })
            .collect();
        let json = format!(
            "{{\"backend\":\"cpu\",\"dtype\":\"{}\",\"cpu_precision\":\"{}\",\"threads\":{threads},\"reps\":{reps},\"fma_peak_gflops_per_core\":{},\"results\":[{}]}}\n",
            DType::F32,
            precision.name(),
            peak.map_or("null".to_string(), |(g, _)| format!("{g:.1}")),
            items.join(",")
        );
        if let Err(e) = std::fs::write(&path, json) {
            eprintln!("cannot write {path}: {e}");
            std::process::exit(2);
        }
    }
}
