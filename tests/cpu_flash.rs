//! The fused f32 attention (src/backend/cpu/flash.rs), both compiled copies of its kernels,
//! against the plain path in f64 (attention.rs, which f64 tensors take): O, lse, dQ, dK and
//! dV on shapes that leave partial query and key tiles, head widths that are not whole
//! vectors, causal masks across tiles, cross-attention over 77 keys, heads split into parts
//! (one of them empty), and scores whose row maximum grows or falls from tile to tile so that
//! the online softmax rescales.

use crate::common;

use common::attention::Case;
use common::*;
use lorafuse::backend::cpu::flash::{attention, attention_backward, Kernel};
use lorafuse::backend::prelude::*;
use lorafuse::rng::Rng;
use lorafuse::{CpuBackend, DType, Tensor};

fn kernels() -> Vec<Kernel> {
    let mut ks = vec![Kernel::Portable];
    if Kernel::detect() != Kernel::Portable {
        ks.push(Kernel::detect());
    }
    ks
}

/// Runs the case's f64 inputs (and dO) through the plain f64 path and, rounded to f32,
/// through the fused path with each kernel; compares all five outputs.
fn check(name: &str, c: Case, q: Tensor, k: Tensor, v: Tensor, d_o: Tensor) {
    let p = c.p();
    let be = CpuBackend::new();
    let (o, lse) = be.attention(&q, &k, &v, p).unwrap();
    let (dq, dk, dv) = be
        .attention_backward(&q, &k, &v, &o, &lse, &d_o, p)
        .unwrap();
    let want = [o, lse, dq, dk, dv];
    let (q, k, v, d_o) = (to_f32(&q), to_f32(&k), to_f32(&v), to_f32(&d_o));
    for kernel in kernels() {
        let (o, lse) = attention(&q, &k, &v, p, kernel).unwrap();
        let (dq, dk, dv) = attention_backward(&q, &k, &v, &o, &lse, &d_o, p, kernel).unwrap();
        let got = [o, lse, dq, dk, dv];
        for (what, (g, w)) in ["o", "lse", "dq", "dk", "dv"]
            .iter()
            .zip(got.iter().zip(&want))
        {
            assert_eq!(g.dtype(), DType::F32);
            assert_eq!(g.shape(), w.shape(), "{name} {what}");
            let w = w.to_f64_vec();
            // rtol 1e-4, with a floor at 1e-4 of the largest value for entries that are
            // sums of cancelling terms (as ops_attention's f32-against-f64 check).
            let floor = 1e-4 * w.iter().fold(0f64, |m, x| m.max(x.abs()));
            assert_close(
                &format!("{name} {kernel:?} {what}"),
                &g.to_f64_vec(),
                &w,
                1e-4,
                floor,
            );
        }
    }
}

fn random(name: &str, c: Case, seed: u64) {
    let mut rng = Rng::new(seed);
    let q = randn(&mut rng, &[c.b, c.lq, c.h * c.d]);
    let k = randn(&mut rng, &[c.b, c.lk, c.h * c.d]);
    let v = randn(&mut rng, &[c.b, c.lk, c.h * c.dv]);
    let d_o = randn(&mut rng, &[c.b, c.lq, c.h * c.dv]);
    check(name, c, q, k, v, d_o);
}

#[test]
fn matches_f64_on_partial_tiles_and_odd_widths() {
    let case = |b, h, d, dv, lq, lk, causal| Case {
        b,
        h,
        d,
        dv,
        lq,
        lk,
        causal,
    };
    // One query, one key, widths of 1.
    random("1x1", case(1, 1, 1, 1, 1, 1, false), 1);
    // Widths that are not whole vectors, dv != d, nothing a multiple of a tile.
    random("odd", case(2, 3, 5, 7, 13, 29, false), 2);
    // SD's head width 40, two and a bit query and key tiles.
    random("d40", case(1, 2, 40, 40, 100, 200, false), 3);
    // Cross-attention over the text's 77 tokens; value width 16.
    random("cross77", case(2, 2, 8, 16, 50, 77, false), 4);
    // Exact tiles, head width 80.
    random("d80", case(2, 2, 80, 80, 48, 96, false), 5);
    // Causal, head width 64, crossing query and key tiles.
    random("causal", case(1, 2, 64, 64, 197, 197, true), 6);
    // One head, split into 5 parts (5 query tiles; 7 key tiles, so the backward's parts
    // take 2, 2, 2, 1 and 0 of them); value width 160.
    random("parts", case(1, 1, 3, 160, 200, 600, false), 7);
    random("parts causal", case(1, 1, 24, 8, 300, 300, true), 8);
}

/// Keys along a line, k_j = t_j·u with t_j from −1 to 1, and q_i = ±u: each row's scores rise
/// (or fall) steadily along the keys, so that its maximum moves into every new tile (or stays
/// in the first), with scores up to ±|u|²/sqrt(d) = ±27: the softmax is nearly one-hot.
#[test]
fn online_softmax_rescales_across_tiles() {
    let c = Case {
        b: 1,
        h: 2,
        d: 4,
        dv: 4,
        lq: 20,
        lk: 350,
        causal: false,
    };
    let u = [4.0, -3.0, 2.0, 5.0];
    let mut rng = Rng::new(9);
    let mut q = Vec::new();
    for i in 0..c.lq {
        let sign = if i % 2 == 0 { 1.0 } else { -1.0 };
        for _ in 0..c.h {
            q.extend(u.iter().map(|x| x * sign));
        }
    }
    let mut k = Vec::new();
    for j in 0..c.lk {
        let t = (j as f64 - c.lk as f64 / 2.0) / c.lk as f64 * 2.0;
        for _ in 0..c.h {
            k.extend(u.iter().map(|x| x * t));
        }
    }
    let v = randn(&mut rng, &[c.b, c.lk, c.h * c.dv]);
    let d_o = randn(&mut rng, &[c.b, c.lq, c.h * c.dv]);
    let q = Tensor::from_f64(&[c.b, c.lq, c.h * c.d][..], q).unwrap();
    let k = Tensor::from_f64(&[c.b, c.lk, c.h * c.d][..], k).unwrap();
    check("line", c, q, k, v, d_o);
}
