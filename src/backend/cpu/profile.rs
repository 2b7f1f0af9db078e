//! An optional profile of the CPU backend, to see where a step's time goes: with
//! `LORAFUSE_CPU_PROFILE=1` in the environment (or after [`set_enabled`]),
//! - every op entered through `dispatch!` (and the fused f32 attention) adds its wall time to
//!   a table keyed by the op's name and its first input's shape, with the part of that time
//!   spent in matrix products;
//! - every f32 or f64 product through `gemm::gemm` adds its wall time and FLOPs to a table
//!   keyed by its sizes and layout (A and B each N, or T for a transposed view).
//!
//! An op called from inside another op on the same thread counts toward the outer one only.
//! [`report`] formats both tables, largest first (benches/train_step.rs prints it after each
//! configuration). Off, the cost is one relaxed atomic load per op and per product.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use crate::tensor::Tensor;

/// The environment variable that turns the profile on.
pub const ENV: &str = "LORAFUSE_CPU_PROFILE";

/// 0: not yet read from the environment, 1: off, 2: on.
static STATE: AtomicU8 = AtomicU8::new(0);
/// Nanoseconds spent in products so far, all threads.
static GEMM_NS: AtomicU64 = AtomicU64::new(0);
static OPS: Mutex<Vec<Entry>> = Mutex::new(Vec::new());
static GEMMS: Mutex<Vec<Entry>> = Mutex::new(Vec::new());

thread_local! {
    /// Ops in progress on this thread (only the outermost is timed).
    static DEPTH: Cell<usize> = const { Cell::new(0) };
}

/// One row of a table.
#[derive(Clone, Debug)]
pub struct Entry {
    pub key: String,
    pub calls: u64,
    pub secs: f64,
    /// Ops: the seconds of `secs` spent in products. Products: their FLOPs.
    pub extra: f64,
}

/// Whether the profile is on.
pub fn enabled() -> bool {
    match STATE.load(Ordering::Relaxed) {
        0 => {
            let on = std::env::var_os(ENV).is_some_and(|v| v != "0" && !v.is_empty());
            STATE.store(if on { 2 } else { 1 }, Ordering::Relaxed);
            on
        }
        s => s == 2,
    }
}

/// Turns the profile on or off, whatever the environment says.
pub fn set_enabled(on: bool) {
    STATE.store(if on { 2 } else { 1 }, Ordering::Relaxed);
}

/// Empties both tables.
pub fn reset() {
    lock(&OPS).clear();
    lock(&GEMMS).clear();
}

fn lock(t: &Mutex<Vec<Entry>>) -> std::sync::MutexGuard<'_, Vec<Entry>> {
    // A panic while holding the lock leaves a table that is still well formed.
    t.lock().unwrap_or_else(|e| e.into_inner())
}

fn add(table: &Mutex<Vec<Entry>>, key: String, secs: f64, extra: f64) {
    let mut t = lock(table);
    match t.iter_mut().find(|e| e.key == key) {
        Some(e) => {
            e.calls += 1;
            e.secs += secs;
            e.extra += extra;
        }
        None => t.push(Entry {
            key,
            calls: 1,
            secs,
            extra,
        }),
    }
}

/// Times one op from its creation to its drop (`dispatch!` holds one per call).
pub struct OpTimer {
    /// Whether this timer counted itself in DEPTH (the profile was on when it started).
    active: bool,
    /// The outermost op's key, start, and the product nanoseconds at its start.
    outer: Option<(String, Instant, u64)>,
}

impl OpTimer {
    pub fn start(op: &str, x: &Tensor) -> OpTimer {
        if !enabled() {
            return OpTimer {
                active: false,
                outer: None,
            };
        }
        let depth = DEPTH.with(|d| d.replace(d.get() + 1));
        let outer = (depth == 0).then(|| {
            let key = format!("{op} {:?}", x.shape().dims());
            (key, Instant::now(), GEMM_NS.load(Ordering::Relaxed))
        });
        OpTimer {
            active: true,
            outer,
        }
    }
}

impl Drop for OpTimer {
    fn drop(&mut self) {
        if !self.active {
            return;
        }
        DEPTH.with(|d| d.set(d.get() - 1));
        if let Some((key, t0, g0)) = self.outer.take() {
            let gemm = GEMM_NS.load(Ordering::Relaxed).saturating_sub(g0) as f64 * 1e-9;
            add(&OPS, key, t0.elapsed().as_secs_f64(), gemm);
        }
    }
}

/// The start of a product when the profile is on.
pub fn gemm_start() -> Option<Instant> {
    enabled().then(Instant::now)
}

/// One matrix product as the profile files it: A [m, k] times B [k, n], which operands are
/// transposed views, and whether it ran in bf16 (`cpu_precision: bf16`'s frozen-weight
/// products, gemm_bf16.rs) rather than f32 or f64.
#[derive(Clone, Copy, Debug)]
pub struct Product {
    pub m: usize,
    pub k: usize,
    pub n: usize,
    pub a_t: bool,
    pub b_t: bool,
    pub bf16: bool,
}

/// Records a product started at `t0` (from [`gemm_start`]).
pub fn gemm_done(t0: Option<Instant>, p: Product) {
    let Some(t0) = t0 else { return };
    let e = t0.elapsed();
    GEMM_NS.fetch_add(e.as_nanos() as u64, Ordering::Relaxed);
    let layout = |t: bool| if t { "T" } else { "N" };
    let precision = if p.bf16 { " bf16" } else { "" };
    let key = format!(
        "{}x{}x{} A{} B{}{precision}",
        p.m,
        p.k,
        p.n,
        layout(p.a_t),
        layout(p.b_t)
    );
    add(&GEMMS, key, e.as_secs_f64(), 2.0 * (p.m * p.k * p.n) as f64);
}

/// The op table, largest total first.
pub fn ops() -> Vec<Entry> {
    sorted(&OPS)
}

/// The product table, largest total first.
pub fn products() -> Vec<Entry> {
    sorted(&GEMMS)
}

fn sorted(t: &Mutex<Vec<Entry>>) -> Vec<Entry> {
    let mut v = lock(t).clone();
    v.sort_by(|a, b| b.secs.total_cmp(&a.secs));
    v
}

/// Both tables as text: ops by name (summed over shapes), the `rows` largest op rows, and the
/// `rows` largest product rows with their GFLOP/s.
pub fn report(rows: usize) -> String {
    use std::fmt::Write;
    let (ops, products) = (ops(), products());
    let total: f64 = ops.iter().map(|e| e.secs).sum();
    let mut by_name: Vec<(String, f64, f64)> = Vec::new();
    for e in &ops {
        let name = e.key.split(' ').next().unwrap_or_default();
        match by_name.iter_mut().find(|n| n.0 == name) {
            Some(n) => {
                n.1 += e.secs;
                n.2 += e.extra;
            }
            None => by_name.push((name.to_string(), e.secs, e.extra)),
        }
    }
    by_name.sort_by(|a, b| b.1.total_cmp(&a.1));
    let mut s = String::new();
    let _ = writeln!(s, "CPU profile: {total:.3} s in ops");
    let _ = writeln!(
        s,
        "{:<34} {:>9} {:>7} {:>12}",
        "op", "s", "share", "in products"
    );
    for (name, secs, gemm) in &by_name {
        let share = 100.0 * secs / total.max(f64::MIN_POSITIVE);
        let _ = writeln!(s, "{name:<34} {secs:>9.3} {share:>6.1}% {gemm:>11.3}s");
    }
    let _ = writeln!(
        s,
        "{:<50} {:>7} {:>9} {:>12}",
        "op and shape", "calls", "s", "in products"
    );
    for e in ops.iter().take(rows) {
        let _ = writeln!(
            s,
            "{:<50} {:>7} {:>9.3} {:>11.3}s",
            e.key, e.calls, e.secs, e.extra
        );
    }
    let (secs, flop) = products
        .iter()
        .fold((0.0, 0.0), |(s, f), e| (s + e.secs, f + e.extra));
    let _ = writeln!(
        s,
        "products: {secs:.3} s, {:.1} GFLOP/s",
        flop / secs.max(f64::MIN_POSITIVE) / 1e9
    );
    let _ = writeln!(
        s,
        "{:<34} {:>7} {:>9} {:>9}",
        "m x k x n", "calls", "s", "GFLOP/s"
    );
    for e in products.iter().take(rows) {
        let rate = e.extra / e.secs.max(f64::MIN_POSITIVE) / 1e9;
        let _ = writeln!(
            s,
            "{:<34} {:>7} {:>9.3} {rate:>9.1}",
            e.key, e.calls, e.secs
        );
    }
    s
}
