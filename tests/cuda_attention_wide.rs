//! The CUDA backend's attention forward for heads wider than 256 (the VAE's single 512-wide
//! head) against the CPU backend, f32, f16 and bf16, with tails, batch > 1, two heads, causal; the
//! backward of such heads is refused with a message naming the limit.
#![cfg(any(feature = "cuda", feature = "cuda-emu"))]

use crate::common;

use common::cuda::*;
use lorafuse::backend::cuda::CudaBackend;
use lorafuse::backend::prelude::*;
use lorafuse::backend::Attention;
use lorafuse::rng::Rng;
use lorafuse::{CpuBackend, DType};

#[test]
fn wide_heads_match_the_cpu() {
    wide_heads_match_the_cpu_in(&[DType::F32, DType::F16]);
}

/// The same in bf16 (compute capability 8.0 and later; the simple kernels), against the CPU
/// in f32 on the same bf16-rounded inputs with `tol(DType::BF16)`.
#[test]
fn wide_heads_match_the_cpu_bf16() {
    wide_heads_match_the_cpu_in(&[DType::BF16]);
}

fn wide_heads_match_the_cpu_in(dtypes: &[DType]) {
    let cpu = cpu();
    for &dtype in dtypes {
        for e in engines(dtype) {
            let be = &e.be;
            let mut rng = Rng::new(11);
            // (batch, heads, lq, lk, d, dv, causal)
            let mut cases = vec![
                (1, 1, 37, 45, 512, 512, false),
                (2, 2, 19, 19, 300, 264, true),
                (1, 1, 3, 70, 257, 8, false),
            ];
            if e.gpu {
                cases.push((1, 1, 4096, 4096, 512, 512, false)); // the VAE at 512x512
            }
            for case in cases {
                matches_the_cpu(&cpu, be, &mut rng, case, dtype);
            }
        }
    }
}

/// (batch, heads, lq, lk, d, dv, causal)
type Case = (usize, usize, usize, usize, usize, usize, bool);

/// Random q, k, v of `case` in `dtype`: `be`'s O and lse against the CPU's.
fn matches_the_cpu(cpu: &CpuBackend, be: &CudaBackend, rng: &mut Rng, case: Case, dtype: DType) {
    let (b, h, lq, lk, d, dv, causal) = case;
    let what = format!("b{b} h{h} {lq}x{lk} d{d} dv{dv} causal {causal} {dtype:?}");
    let p = Attention { heads: h, causal };
    let (qc, qg) = random_pair(be, rng, &[b, lq, h * d], dtype);
    let (kc, kg) = random_pair(be, rng, &[b, lk, h * d], dtype);
    let (vc, vg) = random_pair(be, rng, &[b, lk, h * dv], dtype);
    let (o_want, lse_want) = cpu.attention(&qc, &kc, &vc, p).unwrap();
    let (o_got, lse_got) = be.attention(&qg, &kg, &vg, p).unwrap();
    assert_matches(&format!("{what}: o"), &o_got, &o_want, tol(dtype));
    assert_matches(
        &format!("{what}: lse"),
        &lse_got,
        &lse_want,
        tol(DType::F32),
    );
}

#[test]
fn wide_heads_have_no_backward_on_cuda() {
    for e in engines(DType::F32) {
        let be = &e.be;
        let mut rng = Rng::new(12);
        let p = Attention {
            heads: 1,
            causal: false,
        };
        let (_, q) = random_pair(be, &mut rng, &[1, 4, 512], DType::F32);
        let (o, lse) = be.attention(&q, &q, &q, p).unwrap();
        let err = be
            .attention_backward(&q, &q, &q, &o, &lse, &o, p)
            .unwrap_err()
            .to_string();
        assert!(err.contains("head_dim") && err.contains("256"), "{err}");
    }
}

/// Keys beyond what a block's shared memory holds are taken in chunks with an online softmax:
/// on an emulated device whose blocks hold 24 scores beside a 300-wide query row, 70 keys
/// are three chunks (24, 24, 22) and causal rows stop inside any of them; the result is the
/// CPU's. (Turing's 64 KiB take the VAE's 16384 keys at 1024x1024 in two chunks.)
#[cfg(feature = "cuda-emu")]
#[test]
fn keys_past_the_shared_memory_are_taken_in_chunks() {
    use lorafuse::backend::cuda::{Device, DeviceLimits};
    let cpu = cpu();
    let mut limits = DeviceLimits::default_target();
    let (d, chunk) = (300, 24);
    // The kernel's static scratch (32 floats) and 4·(d + chunk) bytes of dynamic memory.
    limits.smem_per_block = 4 * 32 + 4 * (d + chunk) as u32;
    limits.name = "a 1.3 KiB test device".into();
    for dtype in [DType::F32, DType::F16] {
        let be = CudaBackend::new(Device::emulating(limits.clone()), dtype).unwrap();
        let mut rng = Rng::new(13);
        for case in [(1, 1, 5, 70, d, 264, false), (2, 1, 70, 70, d, 300, true)] {
            matches_the_cpu(&cpu, &be, &mut rng, case, dtype);
        }
    }
}
