//! The host allocator's settings for training on the CPU. Every op returns a new buffer;
//! with glibc's defaults, buffers from 128 KiB up (the threshold rises with use, to at most
//! 32 MiB) come from mmap and go back to the kernel when freed, and freed memory at the top
//! of the heap is trimmed off, so the next step's buffers are fresh pages that the kernel
//! clears on first touch (issue 19's profile: 5-7% of the step in `clear_page`).
//!
//! [`keep_freed_memory`] tells glibc to serve every buffer up to 32 MiB (mmap's largest
//! threshold on 64-bit) from its heap, to keep what is freed instead of trimming it, and to
//! grow the heap 256 MiB at a time, so a steady-state step reuses the pages of the last one.
//! Bigger buffers still come from mmap. The settings are process-wide: the program calls
//! this (the CLI before training, the benches), the library never does by itself (a host
//! application that embeds lorafuse keeps its own).

/// Applies the settings above where the C library is glibc (returns whether glibc took them
/// all); elsewhere does nothing and returns false.
pub fn keep_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::raw::c_int;
        extern "C" {
            /// glibc's malloc.h: returns 1 on success, 0 on error.
            fn mallopt(param: c_int, value: c_int) -> c_int;
        }
        // malloc.h's parameter numbers.
        const M_TRIM_THRESHOLD: c_int = -1;
        const M_TOP_PAD: c_int = -2;
        const M_MMAP_THRESHOLD: c_int = -3;
        // SAFETY: mallopt only changes the allocator's parameters; glibc serialises it with
        // the allocator's own locks, so it is safe while other threads allocate.
        unsafe {
            mallopt(M_MMAP_THRESHOLD, 32 << 20) == 1
                && mallopt(M_TRIM_THRESHOLD, c_int::MAX) == 1
                && mallopt(M_TOP_PAD, 256 << 20) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}
