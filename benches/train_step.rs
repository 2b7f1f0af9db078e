//! One LoRA training step as the trainer runs it (noise, UNet forward with the tape, MSE loss,
//! backward into the adapters, gradient norm, AdamW), on cached latents and text embeddings:
//! median time per step, samples per second and peak device memory, for several (batch, rank)
//! configurations in one process (the frozen model is loaded once). The PyTorch side is
//! benches/pytorch_reference.py; scripts/bench-vs-pytorch.sh runs both and prints the ratios.
//!
//! `cargo bench --bench train_step` (add `--features cuda` for the GPU). Environment:
//! - BENCH_MODEL: `sd15` (SD1.5's UNet, random weights of the real configuration: the shapes,
//!   not the values, decide the work) or `tiny` (tests/fixtures' tiny SD1.5-topology model).
//!   Default: sd15 on a GPU, tiny on the CPU.
//! - BENCH_DEVICE: `cuda` or `cpu` (default: cuda when this build opens a GPU).
//! - BENCH_CONFIGS: `BATCHxRANK,...` (default `1x8,4x8,1x32,4x32`); BENCH_RES: pixels (512;
//!   the tiny model's is its sample size x 8); BENCH_WARMUP (3) and BENCH_STEPS (10).
//! - BENCH_BASELINE_USED: bytes the GPU had in use before this process (nvidia-smi), so the
//!   driver's used-memory delta (CUDA context included) can be reported.
//! - BENCH_JSON: also write the results as JSON there.
//! - LORAFUSE_CPU_PROFILE=1: on the CPU, also print where each configuration's timed steps
//!   spent their time, per op and per matrix product (src/backend/cpu/profile.rs).
//! - BENCH_PRECISION: on the CPU, `f32` (default, the reference) or `bf16` (`cpu_precision:
//!   bf16`: the products with frozen weights in bf16; needs AVX512_BF16).
//! - BENCH_KEEP_FREED: `1` applies `backend::cpu::alloc::keep_freed_memory`, `0` leaves
//!   glibc's allocator settings as they are; by default as the CLI's training: applied with
//!   f32 products, not with BENCH_PRECISION=bf16.
//!
//! On a GPU each configuration also gets `lorafuse plan`'s prediction for the same step and the
//! ratio of the pool's measured peak to it. On Linux each configuration also gets the process's
//! CPU time per step (user and system, median over the timed steps, and the first warm-up
//! step's apart: it packs what later steps reuse) and the process's peak RSS so far: on a
//! machine shared with other work, CPU time is the figure to compare, not wall time.

use std::time::Instant;

use lorafuse::backend::cpu::{alloc, CpuPrecision};
use lorafuse::backend::Backend;
use lorafuse::lora::{LoraDropout, LoraSet, LoraTargets};
use lorafuse::model::checkpoint::load_sd15;
use lorafuse::model::cond::{Cond, TextCond};
use lorafuse::model::config::UnetConfig;
use lorafuse::model::layers::Ctx;
use lorafuse::model::unet::Unet;
use lorafuse::model::weights::RandomWeights;
use lorafuse::rng::Rng;
use lorafuse::sample::schedule::NoiseSchedule;
use lorafuse::train::optim::{AdamWSettings, OptimizerKind, ParamGroup};
use lorafuse::train::step::{denoise_micro_batch, MicroBatch, Objective};
use lorafuse::{CpuBackend, DType};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// The backend to bench on: (backend, GPU device when on a GPU).
#[cfg(feature = "cuda")]
type Dev = Option<std::sync::Arc<lorafuse::backend::cuda::Device>>;
#[cfg(not(feature = "cuda"))]
type Dev = Option<()>;

fn open(want: &str) -> Res<(Box<dyn Backend>, Dev, String)> {
    #[cfg(feature = "cuda")]
    if want != "cpu" {
        use lorafuse::backend::cuda::{CudaBackend, Device};
        match Device::gpu(0) {
            Ok(dev) => {
                let name = dev.describe();
                let be = CudaBackend::new(dev.clone(), DType::F16)?;
                return Ok((Box::new(be), Some(dev), name));
            }
            Err(e) if want == "cuda" => return Err(e.into()),
            Err(e) => eprintln!("no GPU ({e}); benching the CPU"),
        }
    }
    if want == "cuda" {
        return Err("BENCH_DEVICE=cuda needs a build with --features cuda".into());
    }
    let threads = rayon::current_num_threads();
    let precision = cpu_precision()?;
    Ok((
        Box::new(CpuBackend::with_precision(precision)?),
        None,
        format!("cpu ({threads} threads, {} products)", precision.name()),
    ))
}

/// The CPU products' precision BENCH_PRECISION asks for (f32 by default).
fn cpu_precision() -> Res<CpuPrecision> {
    let want = std::env::var("BENCH_PRECISION").unwrap_or_else(|_| "f32".into());
    Ok(CpuPrecision::ALL
        .into_iter()
        .find(|p| p.name() == want)
        .ok_or_else(|| format!("BENCH_PRECISION={want}: f32 or bf16"))?)
}

struct Row {
    batch: usize,
    rank: usize,
    ms: f64,
    pool_peak: Option<usize>,
    pool_reserved: Option<usize>,
    driver_used: Option<usize>,
    plan_pool_peak: Option<usize>,
    /// Process CPU ms per timed step (median of user + system; its user and system parts
    /// from the same step) and of the first step; None where /proc is missing.
    cpu: Option<StepCpu>,
    /// The process's peak resident set so far (VmHWM), bytes.
    peak_rss: Option<usize>,
}

#[derive(Clone, Copy)]
struct StepCpu {
    user_ms: f64,
    sys_ms: f64,
    first_ms: f64,
}

/// This process's CPU time so far, (user, system) in ms: /proc/self/stat's utime and stime,
/// in clock ticks of 10 ms (USER_HZ is 100 on Linux); None elsewhere.
fn cpu_ms() -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The fields after the command name (which may hold spaces) in parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| f.get(i)?.parse::<f64>().ok().map(|t| t * 10.0);
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    Some((tick(11)?, tick(12)?))
}

/// The process's peak resident set (VmHWM in /proc/self/status), bytes.
fn peak_rss() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn main() -> Res<()> {
    match std::env::var("BENCH_KEEP_FREED").as_deref() {
        Ok("0") => {}
        Ok("1") => {
            alloc::keep_freed_memory();
        }
        _ => {
            alloc::keep_freed_memory_for(cpu_precision()?);
        }
    }
    let (be, dev, device_name) = open(&std::env::var("BENCH_DEVICE").unwrap_or_default())?;
    let on_gpu = dev.is_some();
    let model = std::env::var("BENCH_MODEL")
        .unwrap_or_else(|_| if on_gpu { "sd15" } else { "tiny" }.into());
    let configs: Vec<(usize, usize)> = std::env::var("BENCH_CONFIGS")
        .unwrap_or_else(|_| "1x8,4x8,1x32,4x32".into())
        .split(',')
        .map(|c| {
            let (b, r) = c.split_once('x').ok_or("BENCH_CONFIGS: BATCHxRANK,...")?;
            Ok((b.trim().parse()?, r.trim().parse()?))
        })
        .collect::<Res<_>>()?;
    let (warmup, steps) = (
        env_or("BENCH_WARMUP", 3usize),
        env_or("BENCH_STEPS", 10usize),
    );

    let t0 = Instant::now();
    let unet = match model.as_str() {
        "sd15" => Unet::load(
            &UnetConfig::sd15(),
            &RandomWeights { seed: 1 },
            be.as_ref(),
            "unet",
        )?,
        "tiny" => {
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/tiny-sd15-diffusers");
            let ck = load_sd15(dir)?;
            Unet::load(&ck.unet.0, &ck.unet.1, be.as_ref(), "unet")?
        }
        m => return Err(format!("BENCH_MODEL={m}: sd15 or tiny").into()),
    };
    let res: usize = if model == "tiny" {
        unet.config.sample_size * 8
    } else {
        env_or("BENCH_RES", 512)
    };
    let ctx_dim = unet.config.cross_attention_dim;
    println!(
        "model {model} ({} MiB of weights), {res}x{res}, {} activations, on {device_name}; loaded in {:.1} s",
        be.device_memory().map_or(0, |m| m.in_use >> 20),
        be.compute_dtype(),
        t0.elapsed().as_secs_f64()
    );
    let targets = unet.lora_targets(LoraTargets::Transformer);
    let obj = Objective::plain(NoiseSchedule::sd15());
    let adamw = OptimizerKind::AdamW(AdamWSettings::default());
    let dt = be.compute_dtype();
    let lat = res / 8;
    let mut rows = Vec::new();
    for &(batch, rank) in &configs {
        be.release_cache()?;
        sync(&dev)?;
        let mut rng = Rng::new(5);
        let mut lora = LoraSet::init(be.as_ref(), &targets, rank, rank as f64, &mut rng)?;
        let mut opt = ParamGroup::new(be.as_ref(), "unet", &lora, 0..lora.len(), &adamw)?;
        let mut grads = lora.zero_grads(be.as_ref())?;
        let randn = |rng: &mut Rng, shape: &[usize]| -> Res<lorafuse::Tensor> {
            let n: usize = shape.iter().product();
            let v: Vec<f32> = rng.normal_vec(n).iter().map(|&x| x as f32).collect();
            Ok(be.tensor_from_f32(shape, &v, dt)?)
        };
        // The cached inputs of one micro-batch.
        let latents = randn(&mut rng, &[batch, 4, lat, lat])?;
        let cond = Cond::text_only(TextCond {
            context: randn(&mut rng, &[batch, 77, ctx_dim])?,
            pooled: None,
        });
        reset_peak(&dev);
        let mut times = Vec::new();
        let (mut cpu_first, mut cpu_timed) = (None, Vec::new());
        let mut driver_used: Option<usize> = None;
        for i in 0..warmup + steps {
            if i == warmup {
                // The profile covers the timed steps only (warm-up packs what they reuse).
                lorafuse::backend::cpu::profile::reset();
            }
            let t = Instant::now();
            let c0 = cpu_ms();
            let dropout = LoraDropout::for_site(0.0, 1, &[i as u64])?;
            let loss_scale = if dt == DType::F16 { 1024.0 } else { 1.0 };
            let batch = MicroBatch {
                latents: &latents,
                cond: &cond,
                grad_scale: loss_scale,
                want_text_grad: false,
                loss_weights: None,
            };
            let cx = Ctx::new(be.as_ref(), Some(&lora)).with_dropout(Some(&dropout));
            denoise_micro_batch(&cx, &unet, &obj, &batch, &mut grads, &mut rng)?;
            opt.load_grads(be.as_ref(), &grads)?;
            let norm = opt.grad_sum_squares(be.as_ref())?.sqrt() / loss_scale;
            opt.update(
                be.as_ref(),
                1e-4,
                1.0 / loss_scale / norm.max(1.0),
                &mut lora,
            )?;
            sync(&dev)?;
            if i >= warmup {
                times.push(t.elapsed().as_secs_f64() * 1e3);
            }
            if let (Some(a), Some(b)) = (c0, cpu_ms()) {
                let (user, sys) = (b.0 - a.0, b.1 - a.1);
                if i == 0 {
                    cpu_first = Some(user + sys);
                }
                if i >= warmup {
                    cpu_timed.push((user, sys));
                }
            }
            if let Some(u) = used(&dev) {
                driver_used = Some(driver_used.map_or(u, |d: usize| d.max(u)));
            }
        }
        times.sort_by(|a, b| a.total_cmp(b));
        let ms = times[times.len() / 2];
        cpu_timed.sort_by(|a, b| (a.0 + a.1).total_cmp(&(b.0 + b.1)));
        let cpu = cpu_first
            .filter(|_| cpu_timed.len() == steps)
            .map(|first_ms| {
                let (user_ms, sys_ms) = cpu_timed[steps / 2];
                StepCpu {
                    user_ms,
                    sys_ms,
                    first_ms,
                }
            });
        let mem = be.device_memory();
        let reserved = pool_reserved(&dev);
        let plan_pool_peak = on_gpu
            .then(|| plan_peak(batch, rank, res, dt))
            .transpose()?;
        drop((latents, cond, opt, grads, lora));
        let row = Row {
            batch,
            rank,
            ms,
            pool_peak: mem.map(|m| m.peak),
            pool_reserved: reserved,
            driver_used,
            plan_pool_peak,
            cpu,
            peak_rss: peak_rss(),
        };
        print_row(&row);
        if lorafuse::backend::cpu::profile::enabled() {
            // Warm-up and timed steps together.
            println!("{}", lorafuse::backend::cpu::profile::report(40));
            lorafuse::backend::cpu::profile::reset();
        }
        rows.push(row);
    }
    if let Ok(path) = std::env::var("BENCH_JSON") {
        std::fs::write(&path, json(&model, &device_name, res, dt, &rows))?;
        println!("wrote {path}");
    }
    Ok(())
}

/// The planner's pool peak for the training step of this configuration, measured the way the
/// bench measures (after the model is loaded, from the step's start): the step's peak.
fn plan_peak(batch: usize, rank: usize, res: usize, dtype: DType) -> Res<usize> {
    let p = lorafuse::plan::plan(&lorafuse::plan::PlanInput::step(
        batch, res, res, rank, dtype,
    ))?;
    Ok(p.training_peak)
}

fn mib(b: usize) -> f64 {
    b as f64 / (1u64 << 20) as f64
}

fn print_row(r: &Row) {
    let opt = |v: Option<usize>| v.map_or("-".to_string(), |b| format!("{:.1}", mib(b)));
    println!(
        "batch {} rank {:>2}: {:8.2} ms/step, {:7.2} samples/s, pool peak {} MiB (plan {} MiB), \
         reserved {} MiB, driver used {} MiB",
        r.batch,
        r.rank,
        r.ms,
        r.batch as f64 * 1e3 / r.ms,
        opt(r.pool_peak),
        opt(r.plan_pool_peak),
        opt(r.pool_reserved),
        opt(r.driver_used),
    );
    if let Some(c) = r.cpu {
        println!(
            "  process CPU {:.0} ms/step (user {:.0}, system {:.0}); first warm-up step {:.0} ms",
            c.user_ms + c.sys_ms,
            c.user_ms,
            c.sys_ms,
            c.first_ms
        );
    }
    if let Some(b) = r.peak_rss {
        println!("  process peak RSS so far {:.1} MiB", mib(b));
    }
}

fn json(model: &str, device: &str, res: usize, dt: DType, rows: &[Row]) -> String {
    let num = |v: Option<usize>| v.map_or("null".to_string(), |b| b.to_string());
    let ms = |v: Option<f64>| v.map_or("null".to_string(), |m| format!("{m:.0}"));
    let baseline: Option<usize> = std::env::var("BENCH_BASELINE_USED")
        .ok()
        .and_then(|s| s.parse().ok());
    let items: Vec<String> = rows
        .iter()
        .map(|r| {
            let delta = r.driver_used.zip(baseline).map(|(u, b)| u.saturating_sub(b));
            let plan_ratio = r
                .pool_peak
                .zip(r.plan_pool_peak)
                .map_or("null".to_string(), |(m, p)| format!("{:.4}", p as f64 / m as f64));
            format!(
                "    {{\"batch\": {}, \"rank\": {}, \"ms_per_step\": {:.3}, \"samples_per_s\": {:.4}, \
                 \"pool_peak_bytes\": {}, \"pool_reserved_bytes\": {}, \"driver_used_peak_bytes\": {}, \
                 \"driver_used_delta_bytes\": {}, \"plan_pool_peak_bytes\": {}, \"plan_over_measured\": {}, \
                 \"cpu_user_ms_per_step\": {}, \"cpu_sys_ms_per_step\": {}, \"cpu_first_step_ms\": {}, \
                 \"peak_rss_bytes\": {}}}",
                r.batch,
                r.rank,
                r.ms,
                r.batch as f64 * 1e3 / r.ms,
                num(r.pool_peak),
                num(r.pool_reserved),
                num(r.driver_used),
                num(delta),
                num(r.plan_pool_peak),
                plan_ratio,
                ms(r.cpu.map(|c| c.user_ms)),
                ms(r.cpu.map(|c| c.sys_ms)),
                ms(r.cpu.map(|c| c.first_ms)),
                num(r.peak_rss),
            )
        })
        .collect();
    format!(
        "{{\n  \"bench\": \"train_step\",\n  \"model\": \"{model}\",\n  \"device\": \"{}\",\n  \
         \"resolution\": {res},\n  \"dtype\": \"{dt}\",\n  \"targets\": \"kohya transformer (192 on SD1.5)\",\n  \
         \"results\": [\n{}\n  ]\n}}\n",
        device.replace('"', "'"),
        items.join(",\n")
    )
}

#[cfg(feature = "cuda")]
fn sync(dev: &Dev) -> Res<()> {
    if let Some(d) = dev {
        d.synchronize()?;
    }
    Ok(())
}
#[cfg(feature = "cuda")]
fn reset_peak(dev: &Dev) {
    if let Some(d) = dev {
        d.reset_peak();
    }
}
#[cfg(feature = "cuda")]
fn used(dev: &Dev) -> Option<usize> {
    dev.as_ref()?.mem_info().map(|(free, total)| total - free)
}
#[cfg(feature = "cuda")]
fn pool_reserved(dev: &Dev) -> Option<usize> {
    dev.as_ref().map(|d| d.pool_stats().peak_reserved)
}
#[cfg(not(feature = "cuda"))]
fn sync(_: &Dev) -> Res<()> {
    Ok(())
}
#[cfg(not(feature = "cuda"))]
fn reset_peak(_: &Dev) {}
#[cfg(not(feature = "cuda"))]
fn used(_: &Dev) -> Option<usize> {
    None
}
#[cfg(not(feature = "cuda"))]
fn pool_reserved(_: &Dev) -> Option<usize> {
    None
}
