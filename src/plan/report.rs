//! The planner's printed breakdown.

use std::fmt::Write;

use super::fit::Fit;
use super::MemoryPlan;

/// Bytes as MiB with one decimal.
pub fn mib(b: usize) -> String {
    format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
}

/// Bytes as GiB with two decimals.
pub fn gib(b: usize) -> String {
    format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64)
}

/// The one-line prediction `train` prints before it starts.
pub fn summary(p: &MemoryPlan) -> String {
    let i = &p.input;
    format!(
        "predicted peak VRAM {} (batch {}, {}x{}, rank {}, {}): weights {}, LoRA + optimizer {}, \
         saved activations {}, workspace {}, context {}",
        gib(p.peak()),
        i.batch(),
        i.width(),
        i.height(),
        i.rank(),
        i.dtype(),
        mib(p.weights.iter().filter(|w| w.2).map(|w| w.1).sum()),
        mib(p.lora + p.optimizer + p.grads),
        mib(p.tape_bytes()),
        mib(p.workspace()),
        mib(p.context),
    )
}

/// The full breakdown, and the fit when a budget was given.
pub fn table(p: &MemoryPlan, fit: Option<&Fit>) -> String {
    let i = &p.input;
    let mut s = String::new();
    let row = |s: &mut String, what: &str, b: usize| {
        let _ = writeln!(s, "  {what:<34} {:>12}", mib(b));
    };
    let _ = writeln!(
        s,
        "memory plan: {}, batch {}, {}x{}, LoRA rank {} on {:?} targets, activations {}",
        p.family,
        i.batch(),
        i.width(),
        i.height(),
        i.rank(),
        i.cfg.lora_targets,
        i.dtype()
    );
    let _ = writeln!(s, "resident during training:");
    for (name, b, kept) in &p.weights {
        if *kept {
            row(&mut s, &format!("weights: {name}"), *b);
        }
    }
    row(&mut s, "LoRA weights (f32)", p.lora);
    row(&mut s, "LoRA gradients (f32)", p.grads);
    row(&mut s, "optimizer: params, grads, state", p.optimizer);
    row(
        &mut s,
        &format!(
            "caches: {} captions ({} latents stay in host memory)",
            p.cached.1, p.cached.0
        ),
        p.caches,
    );
    row(&mut s, "evaluation sets (fixed noise)", p.eval_sets);
    let _ = writeln!(s, "saved activations (the tape), by block:");
    for (name, b) in &p.tape {
        row(&mut s, name, *b);
    }
    row(&mut s, "workspace at the peak", p.workspace());
    let _ = writeln!(s, "peaks of the pool:");
    row(&mut s, "caching (VAE encode, all models)", p.caching_peak);
    row(&mut s, "training step", p.training_peak);
    row(&mut s, "evaluation", p.evaluation_peak);
    if let Some(sp) = p.sampling_peak {
        row(&mut s, "sampling", sp);
    }
    row(&mut s, "reserved from the driver, at most", p.reserved_peak);
    row(&mut s, "CUDA context (estimate)", p.context);
    let _ = writeln!(
        s,
        "predicted peak VRAM: {} ({} pool, at the {}, + context)",
        gib(p.peak()),
        mib(p.pool_peak()),
        p.peak_phase()
    );
    for (name, _, kept) in &p.weights {
        if !kept {
            let _ = writeln!(s, "(the {name} is released after caching)");
        }
    }
    if let Some(f) = fit {
        let _ = writeln!(s, "within {}:", gib(f.budget));
        let verdict = if p.peak() <= f.budget {
            "fits"
        } else {
            "does NOT fit"
        };
        let _ = writeln!(s, "  this configuration {verdict}");
        let _ = match f.batch {
            Some(b) => writeln!(
                s,
                "  largest batch_size at {}x{}: {b}",
                i.width(),
                i.height()
            ),
            None => writeln!(s, "  no batch_size fits at {}x{}", i.width(), i.height()),
        };
        let _ = match f.side {
            Some(side) => writeln!(
                s,
                "  largest square resolution at batch_size {}: {side}x{side}",
                i.batch()
            ),
            None => writeln!(s, "  no resolution fits at batch_size {}", i.batch()),
        };
        if let Some(c) = &f.checkpointed {
            let verdict = if c.fits { "fits" } else { "does NOT fit" };
            let batch = match c.batch {
                Some(b) => format!("largest batch_size at {}x{}: {b}", i.width(), i.height()),
                None => "no batch_size fits".into(),
            };
            let _ = writeln!(
                s,
                "  with gradient_checkpointing: true, this configuration {verdict}; {batch}"
            );
        }
    }
    s
}
