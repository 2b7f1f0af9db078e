//! The CPU buffer pool (src/backend/cpu/pool.rs): recycled buffers hold an earlier op's
//! values, so every op that adds into its output must start from zeros, and every op that
//! overwrites must write every element. Each case runs once, then again after the pool was
//! filled with NaN buffers of the outputs' sizes; the results must be the same bits. And a
//! loop of the same ops allocates nothing fresh once it has run once.

use lorafuse::backend::cpu::pool;
use lorafuse::backend::prelude::*;
use lorafuse::backend::{Attention, Conv2d, Pad2d};
use lorafuse::rng::Rng;
use lorafuse::{CpuBackend, DType, Tensor};

fn randn(rng: &mut Rng, shape: &[usize], dtype: DType) -> Tensor {
    let n = shape.iter().product();
    let v = rng.normal_vec(n);
    match dtype {
        DType::F64 => Tensor::from_f64(shape, v).unwrap(),
        _ => Tensor::from_f32(shape, v.iter().map(|&x| x as f32).collect()).unwrap(),
    }
}

/// Fills the pool with NaN buffers of each of `lens` (and 1/16 longer, which the pool also
/// hands out for these lengths), a few of each: pooled outputs of `scale`, dropped at once.
fn poison(be: &CpuBackend, lens: &[usize], dtype: DType) {
    let mut held = Vec::new();
    for &n in lens {
        for len in [n, n + n / 16] {
            let nan = match dtype {
                DType::F64 => Tensor::from_f64([len], vec![f64::NAN; len]).unwrap(),
                _ => Tensor::from_f32([len], vec![f32::NAN; len]).unwrap(),
            };
            for _ in 0..3 {
                held.push(be.scale(&nan, 1.0).unwrap());
            }
        }
    }
}

/// Every case's outputs, in order: the ops that add into their outputs (3x3 convolution's
/// input gradient, padding, attention's dQ, LoRA's dX) and ones that overwrite.
fn outputs(be: &CpuBackend, dtype: DType) -> Vec<Tensor> {
    let mut rng = Rng::new(41);
    let conv = Conv2d {
        stride: 1,
        padding: 1,
    };
    let x = randn(&mut rng, &[1, 8, 48, 48], dtype);
    let w = randn(&mut rng, &[8, 8, 3, 3], dtype);
    let w1 = randn(&mut rng, &[8, 8, 1, 1], dtype);
    let one = Conv2d {
        stride: 1,
        padding: 0,
    };
    let y = be.conv2d(&x, &w, None, conv, None).unwrap();
    let dx = be.conv2d_input_grad(&y, &w, (48, 48), conv).unwrap();
    let dx1 = be.conv2d_input_grad(&y, &w1, (48, 48), one).unwrap();
    let pad = Pad2d {
        top: 1,
        bottom: 2,
        left: 0,
        right: 3,
    };
    let padded = be.pad2d(&x, pad).unwrap();
    let gamma = randn(&mut rng, &[8], dtype);
    let beta = randn(&mut rng, &[8], dtype);
    let (gn, stats) = be.group_norm(&x, &gamma, &beta, 4, 1e-5, true).unwrap();
    let dgn = be
        .group_norm_backward(&y, &x, &gamma, &beta, &stats, 4, true)
        .unwrap();
    let up = be.upsample_nearest2x(&x).unwrap();
    // Attention: 2 heads of 24 over 700 tokens (q, k, v [1, 700, 48]).
    let p = Attention {
        heads: 2,
        causal: false,
    };
    let q = randn(&mut rng, &[1, 700, 48], dtype);
    let k = randn(&mut rng, &[1, 700, 48], dtype);
    let v = randn(&mut rng, &[1, 700, 48], dtype);
    let (o, lse) = be.attention(&q, &k, &v, p).unwrap();
    let (dq, dk, dv) = be.attention_backward(&q, &k, &v, &o, &lse, &o, p).unwrap();
    let lin = be
        .linear(&q, &randn(&mut rng, &[64, 48], dtype), None, None)
        .unwrap()
        .y;
    vec![y, dx, dx1, padded, gn, dgn, up, o, dq, dk, dv, lin]
}

fn check_no_leak(dtype: DType) {
    // On for the rest of this test binary (other tests' results do not depend on it).
    pool::set_enabled(true);
    let be = CpuBackend::new();
    let before = outputs(&be, dtype);
    let lens: Vec<usize> = before.iter().map(|t| t.numel()).collect();
    poison(&be, &lens, dtype);
    let after = outputs(&be, dtype);
    for (i, (a, b)) in before.iter().zip(&after).enumerate() {
        let (a, b) = (a.to_f64_vec(), b.to_f64_vec());
        assert!(
            b.iter().all(|x| x.is_finite()),
            "{dtype} output {i}: NaN leaked"
        );
        assert!(
            a == b,
            "{dtype} output {i}: differs after the pool was poisoned"
        );
    }
}

#[test]
fn recycled_buffers_never_leak_into_results_f32() {
    check_no_leak(DType::F32);
}

#[test]
fn recycled_buffers_never_leak_into_results_f64() {
    check_no_leak(DType::F64);
}

#[test]
fn a_repeated_loop_reuses_buffers() {
    pool::set_enabled(true);
    let be = CpuBackend::new();
    let mut fresh = Vec::new();
    // Other tests share the process pool and evict this loop's buffers (under the whole ops
    // binary, rounds after the first were measured at 8-12 fresh of 14): reuse must show as
    // fewer fresh allocations than the first round's in every later round. That each later
    // round alone allocates nothing is pool.rs's own test, on a private pool.
    for _ in 0..6 {
        let f0 = pool::fresh_on_this_thread();
        drop(outputs(&be, DType::F32));
        fresh.push(pool::fresh_on_this_thread() - f0);
    }
    assert!(
        fresh[0] >= 10,
        "the first round allocates its outputs: {fresh:?}"
    );
    assert!(
        fresh[1..].iter().all(|&f| f < fresh[0]),
        "a later round found no recycled buffer: {fresh:?}"
    );
    let s = pool::stats();
    assert!(s.live + s.cached <= s.peak_live, "over the bound: {s:?}");
}
