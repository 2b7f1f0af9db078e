//! The host buffer pool, off unless asked for (`LORAFUSE_CPU_POOL=on`, or [`set_enabled`]):
//! the CPU ops' outputs and big scratch buffers come from here and go back here when their
//! tensor (or [`Buf`]) is dropped, so that a training step after the first allocates almost
//! nothing new. What that saves: a fresh big `Vec` is new memory from glibc, whose pages the
//! kernel clears on first touch (page faults and `clear_page_erms`), and `munmap` on free.
//! On SD1.5 at 256x256 that was a third to two thirds of the step's system time, 4-5% of the
//! step's CPU; and it costs a higher peak RSS (+35 MiB there), which is why it is off:
//! benches/results/cpu-pool-2026-12-07.md.
//!
//! A recycled buffer keeps its old values (safe Rust: they are initialised, just stale), so an
//! op takes [`take`] when it overwrites every element (a product with beta = 0, a map, a
//! copy) and [`zeroed`] when it adds into its output. Buffers under [`MIN_BYTES`] bypass the
//! pool (glibc serves those from its heap without clearing pages).
//!
//! Bounded: the pool's memory (buffers handed out and still alive, plus cached ones) never
//! exceeds the most that was ever handed out and alive at once, `peak_live`: a fresh
//! allocation that would break the bound first frees the least recently cached buffers, and
//! a buffer given back is cached, freeing older ones as needed. [`release`] frees the whole
//! cache (the CPU backend's `release_cache`). The pool's own memory is thus never more than
//! was resident without it; what still raises the peak RSS is memory outside it: glibc keeps
//! what the pool frees in its heap (so the pool asks glibc to return it, `trim_heap_if_due`),
//! and buffers made outside the pool (the optimizer's flat copies at the end of a step) come
//! on top of a full cache where they used to come on top of freed memory.
//!
//! Sizes match when a cached buffer's capacity is between the request and 1/8 more (the
//! smallest such first), so that e.g. a batch's odd-sized products still find buffers.

use std::collections::BTreeMap;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;

/// Buffers smaller than this many bytes are plain `Vec`s, never pooled.
pub const MIN_BYTES: usize = 64 << 10;

/// Freed bytes after which glibc is asked to return its free heap memory (see `trim_heap_if_due`).
pub const TRIM_AFTER: usize = 32 << 20;

/// What the pool has done since the process started (counters) and holds now (bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Requests served by a fresh allocation (the pages the kernel clears).
    pub fresh: u64,
    /// Requests served by a cached buffer.
    pub reused: u64,
    /// Buffers made elsewhere and taken over by an op's output (counted as live).
    pub adopted: u64,
    /// Cached buffers freed to keep the bound.
    pub evicted: u64,
    /// Bytes handed out and alive now.
    pub live: usize,
    /// The most bytes handed out and alive at once.
    pub peak_live: usize,
    /// Bytes cached (free for reuse) now.
    pub cached: usize,
}

/// The element types the pool holds (the CPU backend's compute types).
pub trait Elem: Copy + Default + Send + 'static {
    fn classes(p: &mut Pool) -> &mut Classes<Self>;
}

impl Elem for f32 {
    fn classes(p: &mut Pool) -> &mut Classes<Self> {
        &mut p.f32
    }
}

impl Elem for f64 {
    fn classes(p: &mut Pool) -> &mut Classes<Self> {
        &mut p.f64
    }
}

/// Cached buffers of one element type by capacity; each list oldest first, with the order
/// in which each came back (for freeing the least recently cached).
pub struct Classes<T>(BTreeMap<usize, Vec<(u64, Vec<T>)>>);

impl<T> Classes<T> {
    const fn new() -> Self {
        Classes(BTreeMap::new())
    }
    /// The most recently cached buffer whose capacity is in n..=n + n/8, the smallest first.
    fn take(&mut self, n: usize) -> Option<Vec<T>> {
        let (&cap, list) = self.0.range_mut(n..=n + n / 8).next()?;
        let (_, v) = list.pop()?;
        if list.is_empty() {
            self.0.remove(&cap);
        }
        Some(v)
    }
    /// The order number of the least recently cached buffer.
    fn oldest(&self) -> Option<u64> {
        self.0.values().filter_map(|l| l.first().map(|e| e.0)).min()
    }
    /// Frees the buffer cached as `seq`; returns its bytes.
    fn evict(&mut self, seq: u64) -> usize {
        let Some((&cap, list)) = self.0.iter_mut().find(|(_, l)| l[0].0 == seq) else {
            return 0;
        };
        let (_, v) = list.remove(0);
        if list.is_empty() {
            self.0.remove(&cap);
        }
        bytes_of(&v)
    }
}

/// The pool's state; the process has one ([`stats`], [`take`], ...), tests make their own.
pub struct Pool {
    f32: Classes<f32>,
    f64: Classes<f64>,
    seq: u64,
    stats: PoolStats,
    /// Bytes freed to the allocator since it was last asked to return free memory.
    untrimmed: usize,
}

fn bytes_of<T>(v: &Vec<T>) -> usize {
    v.capacity() * std::mem::size_of::<T>()
}

impl Default for Pool {
    fn default() -> Self {
        Pool::new()
    }
}

impl Pool {
    pub const fn new() -> Self {
        Pool {
            f32: Classes::new(),
            f64: Classes::new(),
            seq: 0,
            untrimmed: 0,
            stats: PoolStats {
                fresh: 0,
                reused: 0,
                adopted: 0,
                evicted: 0,
                live: 0,
                peak_live: 0,
                cached: 0,
            },
        }
    }

    pub fn stats(&self) -> PoolStats {
        self.stats
    }

    /// A buffer of `n` elements (n·size ≥ [`MIN_BYTES`]): a cached one with its old values
    /// (`Ok`, counted as `bytes`) or `Err(bytes)`, the caller to allocate `n` fresh elements
    /// (counted already; the cache was trimmed to make room).
    pub fn take<T: Elem>(&mut self, n: usize) -> Result<(Vec<T>, usize), usize> {
        if let Some(mut v) = T::classes(self).take(n) {
            let bytes = bytes_of(&v);
            self.stats.cached -= bytes;
            self.stats.reused += 1;
            self.note_live(bytes);
            // Stored full (len = capacity), so this shortens; the tail stays allocated.
            v.truncate(n);
            return Ok((v, bytes));
        }
        let bytes = n * std::mem::size_of::<T>();
        self.stats.fresh += 1;
        self.note_live(bytes);
        Err(bytes)
    }

    /// A buffer made elsewhere becomes an output the pool will take back: counted as live.
    pub fn adopt(&mut self, bytes: usize) {
        self.stats.adopted += 1;
        self.note_live(bytes);
    }

    /// A buffer counted as `counted` bytes comes back: cached (returned as `None`), the
    /// least recently cached ones freed if the bound needs it; handed back to be freed when
    /// it is too small to pool or bigger than the bound allows at all.
    pub fn give_back<T: Elem>(&mut self, mut v: Vec<T>, counted: usize) -> Option<Vec<T>> {
        self.stats.live -= counted.min(self.stats.live);
        let bytes = bytes_of(&v);
        if bytes < MIN_BYTES || bytes > self.room() {
            self.untrimmed += bytes;
            return Some(v);
        }
        // Full length, so that `take` can hand out any length up to the capacity without
        // writing; this writes only what an earlier `take` shortened (under 1/8).
        v.resize(v.capacity(), T::default());
        self.seq += 1;
        let seq = self.seq;
        T::classes(self)
            .0
            .entry(v.capacity())
            .or_default()
            .push((seq, v));
        self.stats.cached += bytes;
        self.trim();
        None
    }

    /// Frees every cached buffer, and the bound starts again from what is live now (the
    /// sizes of a finished phase, e.g. the VAE's, need not stay reserved for the next).
    pub fn release(&mut self) {
        self.f32.0.clear();
        self.f64.0.clear();
        self.stats.cached = 0;
        self.stats.peak_live = self.stats.live;
    }

    /// Whether enough was freed since the last time to ask the allocator to return its free
    /// memory (and the count starts again).
    pub fn due_for_trim(&mut self) -> bool {
        let due = self.untrimmed >= TRIM_AFTER;
        if due {
            self.untrimmed = 0;
        }
        due
    }

    /// How many bytes may be cached now: the live peak less what is live.
    fn room(&self) -> usize {
        let s = &self.stats;
        s.peak_live - s.live
    }

    /// `bytes` more are live: the peak follows, and the least recently cached buffers are
    /// freed while live + cached would exceed it.
    fn note_live(&mut self, bytes: usize) {
        let s = &mut self.stats;
        s.live += bytes;
        s.peak_live = s.peak_live.max(s.live);
        self.trim();
    }

    /// Frees the least recently cached buffers while the cache is over its room.
    fn trim(&mut self) {
        while self.stats.cached > self.room() {
            let freed = match (self.f32.oldest(), self.f64.oldest()) {
                (Some(a), Some(b)) if b < a => self.f64.evict(b),
                (Some(a), _) => self.f32.evict(a),
                (None, Some(b)) => self.f64.evict(b),
                (None, None) => break,
            };
            if freed == 0 {
                break;
            }
            self.stats.cached -= freed;
            self.stats.evicted += 1;
            self.untrimmed += freed;
        }
    }
}

/// The process's pool.
static POOL: Mutex<Pool> = Mutex::new(Pool::new());

fn lock() -> std::sync::MutexGuard<'static, Pool> {
    // Every update leaves the pool consistent before anything can panic, so a poisoned
    // lock's pool is still good.
    POOL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Asks glibc to return the free memory inside its heap to the kernel, when the pool has
/// freed enough since the last time. Buffers freed by the pool (evicted, or over the bound)
/// mostly live in glibc's heap, not in their own mappings: glibc keeps such memory, and
/// since the pool serves the sizes that would have reused it, it would stay resident beside
/// the cache and raise the peak RSS.
fn trim_heap_if_due() {
    if !lock().due_for_trim() {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            /// glibc's malloc.h: returns 1 if memory was released, else 0.
            fn malloc_trim(pad: usize) -> std::os::raw::c_int;
        }
        // SAFETY: malloc_trim only releases free pages of glibc's own heap, under glibc's
        // locks; it is safe while other threads allocate.
        unsafe {
            malloc_trim(0);
        }
    }
}

/// Whether the process pool is on: `LORAFUSE_CPU_POOL=on` in the environment, or
/// [`set_enabled`]. Off, every buffer is a fresh `Vec` freed on drop, as before the pool.
pub fn enabled() -> bool {
    match ENABLED.load(Ordering::Relaxed) {
        UNSET => {
            let on = std::env::var("LORAFUSE_CPU_POOL").is_ok_and(|v| v == "on");
            // A concurrent `set_enabled` wins over the environment.
            let _ = ENABLED.compare_exchange(UNSET, on as u8, Ordering::Relaxed, Ordering::Relaxed);
            ENABLED.load(Ordering::Relaxed) == 1
        }
        v => v == 1,
    }
}

/// Turns the process pool on or off from now on (buffers already handed out still come
/// back to it when dropped).
pub fn set_enabled(on: bool) {
    ENABLED.store(on as u8, Ordering::Relaxed);
}

const UNSET: u8 = 2;
static ENABLED: AtomicU8 = AtomicU8::new(UNSET);

thread_local! {
    /// Fresh (and adopted) pooled buffers this thread asked for: what a steady-state loop on
    /// one thread allocates, whatever other threads do meanwhile.
    static FRESH_HERE: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// How many fresh buffers of pooled size this thread has allocated (or had adopted), ever.
pub fn fresh_on_this_thread() -> u64 {
    FRESH_HERE.with(|c| c.get())
}

fn count_fresh_here() {
    FRESH_HERE.with(|c| c.set(c.get() + 1));
}

/// The process's pool figures.
pub fn stats() -> PoolStats {
    lock().stats()
}

/// Frees the process pool's cache (memory back to the system; the next step allocates anew).
pub fn release() {
    lock().release()
}

/// A buffer of `n` elements whose values are whatever it held before (stale values of an
/// earlier op, or zeros): for an output the op overwrites in full.
pub fn take<T: Elem>(n: usize) -> Buf<T> {
    if n * std::mem::size_of::<T>() < MIN_BYTES || !enabled() {
        return Buf::plain(vec![T::default(); n]);
    }
    let got = lock().take::<T>(n);
    match got {
        Ok((v, counted)) => Buf { v, counted },
        Err(counted) => {
            count_fresh_here();
            trim_heap_if_due();
            Buf {
                v: vec![T::default(); n],
                counted,
            }
        }
    }
}

/// A buffer of `n` zeros: for an output the op adds into.
pub fn zeroed<T: Elem>(n: usize) -> Buf<T> {
    if n * std::mem::size_of::<T>() < MIN_BYTES || !enabled() {
        return Buf::plain(vec![T::default(); n]);
    }
    let got = lock().take::<T>(n);
    match got {
        Ok((mut v, counted)) => {
            v.fill(T::default());
            Buf { v, counted }
        }
        // Fresh memory comes zeroed (calloc: the kernel's cleared pages).
        Err(counted) => {
            count_fresh_here();
            trim_heap_if_due();
            Buf {
                v: vec![T::default(); n],
                counted,
            }
        }
    }
}

/// Gives a dropped tensor's buffer back to the process pool (`counted`: the bytes it was
/// counted as when handed out).
pub fn give_back<T: Elem>(v: Vec<T>, counted: usize) {
    let rejected = lock().give_back(v, counted);
    // Freed outside the lock (munmap).
    drop(rejected);
    trim_heap_if_due();
}

/// A buffer from the pool (or a plain `Vec` under [`MIN_BYTES`]); back to the pool when
/// dropped, unless it became a tensor's elements ([`Buf::into_parts`]).
pub struct Buf<T: Elem> {
    v: Vec<T>,
    /// Bytes the pool counted it as; 0 when it is not the pool's.
    counted: usize,
}

impl<T: Elem> Buf<T> {
    fn plain(v: Vec<T>) -> Self {
        Buf { v, counted: 0 }
    }
    /// The elements and the bytes the pool counted them as (0: not the pool's), to become
    /// a tensor that gives them back when dropped.
    pub fn into_parts(mut self) -> (Vec<T>, usize) {
        (
            std::mem::take(&mut self.v),
            std::mem::take(&mut self.counted),
        )
    }
}

impl<T: Elem> From<Vec<T>> for Buf<T> {
    /// A `Vec` made by the op itself (`collect`), big enough to pool: counted from now on, so
    /// that it is cached when its tensor is dropped.
    fn from(v: Vec<T>) -> Self {
        let bytes = bytes_of(&v);
        if bytes < MIN_BYTES || !enabled() {
            return Buf::plain(v);
        }
        lock().adopt(bytes);
        count_fresh_here();
        Buf { v, counted: bytes }
    }
}

impl<T: Elem> Deref for Buf<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.v
    }
}

impl<T: Elem> DerefMut for Buf<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut self.v
    }
}

impl<T: Elem> Drop for Buf<T> {
    fn drop(&mut self) {
        if self.counted > 0 {
            give_back(std::mem::take(&mut self.v), self.counted);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const N: usize = MIN_BYTES / 4; // f32 elements of the smallest pooled buffer

    #[test]
    fn a_repeated_pattern_reuses_every_buffer() {
        let mut p = Pool::new();
        let sizes = [N, 3 * N, 2 * N, N];
        for round in 0..3 {
            let mut held = Vec::new();
            for &n in &sizes {
                held.push(match p.take::<f32>(n) {
                    Ok((v, c)) => (v, c),
                    Err(c) => (vec![0.0; n], c),
                });
            }
            for (v, c) in held {
                assert_eq!(p.give_back(v, c), None, "round {round}: cached");
            }
            let s = p.stats();
            assert_eq!(s.fresh, 4, "round {round}: only the first round allocates");
            assert_eq!(s.reused, 4 * round);
            assert_eq!((s.live, s.cached, s.peak_live), (0, 28 * N, 28 * N));
        }
    }

    #[test]
    fn cached_plus_live_never_exceeds_the_live_peak() {
        let mut p = Pool::new();
        // Peak: two buffers of 4N live at once.
        let a = p.take::<f32>(4 * N).unwrap_err();
        let b = p.take::<f32>(4 * N).unwrap_err();
        assert_eq!(p.give_back(vec![0f32; 4 * N], a), None);
        assert_eq!(p.give_back(vec![0f32; 4 * N], b), None);
        assert_eq!(p.stats().cached, 32 * N);
        // A new size while both are cached: the older one is freed to make room.
        let c = p.take::<f32>(2 * N).unwrap_err();
        let s = p.stats();
        assert_eq!((s.evicted, s.live, s.cached), (1, 8 * N, 16 * N));
        assert!(s.live + s.cached <= s.peak_live);
        // Within the peak: cached; a request up to 1/8 smaller takes it.
        assert_eq!(p.give_back(vec![0f32; 2 * N], c), None);
        let (v, _) = p.take::<f32>(2 * N - N / 8).unwrap();
        assert_eq!((v.len(), v.capacity()), (2 * N - N / 8, 2 * N));
        assert!(
            p.take::<f32>(3 * N).is_err(),
            "4N is over 1/8 bigger than 3N"
        );
    }

    #[test]
    fn buffers_over_the_bound_and_small_ones_are_not_cached() {
        let mut p = Pool::new();
        let a = p.take::<f64>(N).unwrap_err();
        // Came back bigger than it went out: no room for it.
        assert!(p.give_back(vec![0f64; 4 * N], a).is_some());
        assert!(p.give_back(vec![0f64; 8], 0).is_some());
        assert_eq!(p.stats().cached, 0);
        p.release();
    }
}
