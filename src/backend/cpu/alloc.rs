//! How the C library's allocator treats the CPU backend's buffers during training.
//!
//! Every op returns a new buffer and the tape frees the step's activations at its end, so a
//! training step allocates and frees the same sizes, step after step. glibc by default
//! - serves buffers above a threshold (128 KiB at first, raised with use to at most 32 MiB)
//!   with their own mmap, which the kernel clears page by page on first touch and takes
//!   back on free;
//! - gives the top of its heap back to the kernel whenever more than twice that threshold
//!   lies free there.
//!
//! At 512x512 the level-1 buffers (GEGLU's [4096, 2560] is 42 MB) are above 32 MiB and the
//! heap's top is trimmed again and again: 1.8-2.0 s of kernel time in a 12-14 s SD1.5 step on
//! a 2-core machine (benches/results/cpu-alloc-2026-12-08.md), spent clearing pages that the
//! previous step had just handed back.
//!
//! [`keep_freed_memory`] has glibc serve every buffer below 1 GiB from its heap, never trim
//! the heap, and grow it 256 MiB at a time, so a steady-state step reuses the last step's
//! pages. The peak resident set barely moves (the same buffers are alive at the peak; +1.2% at
//! 512x512 batch 4, the same elsewhere); what changes is that freed memory stays with the
//! process until it exits.
//!
//! Measured to pay with f32 products only: with `cpu_precision: bf16` steps got slower in 4 of
//! 5 back-to-back pairs (same file), for reasons not yet found, so programs apply it through
//! [`keep_freed_memory_for`], which leaves bf16 runs with glibc's defaults. The settings are process-wide, so only programs apply them (the CLI's `train` and
//! `demo`, the benches); the library never does by itself: a host application that embeds
//! lorafuse decides for its own process.

use super::CpuPrecision;

/// The largest buffer served from the heap (larger ones still get their own mmap), bytes.
const HEAP_UP_TO: i32 = 1 << 30;
/// How much the heap grows beyond each request when it must grow, bytes.
const GROW_BY: i32 = 256 << 20;

/// Applies the settings above where the C library is glibc; returns whether glibc took them
/// all (false elsewhere, where nothing is changed).
pub fn keep_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::raw::c_int;
        extern "C" {
            /// glibc's `mallopt` (malloc.h): 1 when the parameter was set, 0 when refused.
            fn mallopt(param: c_int, value: c_int) -> c_int;
        }
        // malloc.h's parameter numbers.
        const M_TRIM_THRESHOLD: c_int = -1;
        const M_TOP_PAD: c_int = -2;
        const M_MMAP_THRESHOLD: c_int = -3;
        // SAFETY: mallopt only changes the allocator's parameters, under the allocator's own
        // lock, so it may run while other threads allocate.
        unsafe {
            mallopt(M_MMAP_THRESHOLD, HEAP_UP_TO) == 1
                && mallopt(M_TRIM_THRESHOLD, c_int::MAX) == 1
                && mallopt(M_TOP_PAD, GROW_BY) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// [`keep_freed_memory`] for a run whose CPU products are in `precision`, where it was measured
/// to pay (f32); a bf16 run keeps glibc's defaults. Returns whether the settings were applied.
pub fn keep_freed_memory_for(precision: CpuPrecision) -> bool {
    precision == CpuPrecision::F32 && keep_freed_memory()
}
