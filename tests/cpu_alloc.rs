//! backend::cpu::alloc: glibc takes every setting (1 GiB heap threshold, no trimming, 256 MiB
//! growth), f32 runs get them and bf16 runs do not, and buffers allocated, freed and allocated
//! again afterwards come back intact.

use lorafuse::backend::cpu::alloc::{keep_freed_memory, keep_freed_memory_for};
use lorafuse::backend::cpu::CpuPrecision;

#[test]
fn glibc_takes_the_settings_and_buffers_still_work() {
    let took = keep_freed_memory();
    let glibc = cfg!(all(target_os = "linux", target_env = "gnu"));
    if glibc {
        assert!(took, "glibc refused a mallopt setting");
    } else {
        assert!(!took, "keep_freed_memory claims settings outside glibc");
    }
    // Only f32 runs get the settings (bf16 ones were measured slower with them).
    assert!(!keep_freed_memory_for(CpuPrecision::Bf16));
    assert_eq!(keep_freed_memory_for(CpuPrecision::F32), glibc);
    // Sizes on both sides of glibc's default 32 MiB mmap ceiling, twice over, so the second
    // round reuses what the first freed.
    for round in 0..2u32 {
        for mib in [1usize, 40, 200] {
            let n = mib << 18;
            let mut v = vec![0f32; n];
            assert!(v.iter().all(|&x| x == 0.0), "calloc'd buffer not zero");
            for (i, x) in v.iter_mut().enumerate().step_by(1021) {
                *x = ((i % 4096) as u32 + round) as f32;
            }
            let sum: f64 = v.iter().map(|&x| x as f64).sum();
            let want: f64 = (0..n)
                .step_by(1021)
                .map(|i| ((i % 4096) as u32 + round) as f64)
                .sum();
            assert_eq!(sum, want);
        }
    }
}
