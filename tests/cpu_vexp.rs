//! The attention softmax's SIMD exp (src/backend/cpu/vexp.rs) against f64's exp: its error in
//! ulp over the whole f32 range, with and without fused multiply-adds, the edges (0, ±inf,
//! NaN, overflow, subnormal results), and `exp_sub_sum`'s values and sum at lengths that
//! take the SIMD chunks, the remainder, and both.

use lorafuse::backend::cpu::vexp::{exp, exp_sub_sum};
use lorafuse::rng::Rng;

/// Distance in units of the last place of `want` rounded to f32 (at least the smallest
/// subnormal, so results that are subnormal or 0 count in absolute units).
fn ulps(got: f32, want: f64) -> f64 {
    let w = want as f32;
    let ulp = if w == 0.0 || !w.is_normal() {
        f32::from_bits(1) as f64
    } else {
        (f32::from_bits(w.to_bits() + 1) - w) as f64
    };
    (got as f64 - want).abs() / ulp
}

#[test]
fn within_three_ulp_of_f64_over_the_range() {
    for fma in [false, true] {
        let f = if fma { exp::<true> } else { exp::<false> };
        let mut worst = (0.0f64, 0.0f32);
        // Every 1/64 of a unit from -104 to 89, plus a dense sweep around 0 where softmax
        // values live, and the overflow edge.
        let sweep = (-104 * 64..=89 * 64)
            .map(|i| i as f32 / 64.0)
            .chain((-4000..=4000).map(|i| i as f32 * 1e-4))
            .chain((0..200).map(|i| 88.70 + i as f32 * 1e-4));
        for x in sweep {
            let want = (x as f64).exp();
            let got = f(x);
            if want > f32::MAX as f64 * (1.0 + f32::EPSILON as f64 / 2.0) {
                assert_eq!(got, f32::INFINITY, "exp({x}) (fma {fma}) should overflow");
                continue;
            }
            let e = ulps(got, want);
            if e > worst.0 {
                worst = (e, x);
            }
        }
        assert!(
            worst.0 <= 3.0,
            "fma {fma}: worst error {} ulp at x = {}",
            worst.0,
            worst.1
        );
    }
}

#[test]
fn edges() {
    for f in [exp::<false>, exp::<true>] {
        assert_eq!(f(0.0), 1.0);
        assert_eq!(f(-0.0), 1.0);
        assert_eq!(f(f32::NEG_INFINITY), 0.0);
        assert_eq!(f(-1000.0), 0.0);
        assert_eq!(f(f32::INFINITY), f32::INFINITY);
        assert_eq!(f(89.0), f32::INFINITY);
        assert!(f(f32::NAN).is_nan());
        // A subnormal result: exp(-100) = 3.7e-44, 26 times the smallest subnormal.
        let sub = f(-100.0);
        assert!(sub > 0.0 && !sub.is_normal(), "exp(-100) = {sub}");
        assert!(ulps(sub, (-100f64).exp()) <= 1.0);
    }
}

#[test]
fn exp_sub_sum_matches_f64() {
    let mut rng = Rng::new(11);
    for len in [0, 1, 15, 16, 17, 33, 1000, 4096] {
        let xs: Vec<f32> = (0..len).map(|_| (rng.normal() * 4.0) as f32).collect();
        let c = xs.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
        let mut got = xs.clone();
        let sum = exp_sub_sum(&mut got, c);
        let want: Vec<f64> = xs.iter().map(|&x| (x as f64 - c as f64).exp()).collect();
        let want_sum: f64 = want.iter().sum();
        for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
            // x − c is rounded to f32 before the exp: up to half an ulp of |x − c| ≤ 32
            // (2^-19), i.e. 2e-6 relative in the result, on top of the exp's own 3 ulp.
            let rel = (g as f64 - w).abs() / w.max(f32::MIN_POSITIVE as f64);
            assert!(rel < 3e-6, "len {len} [{i}]: {g} vs {w}");
        }
        let rel = (sum as f64 - want_sum).abs() / want_sum.max(1.0);
        assert!(rel < 1e-5, "len {len}: sum {sum} vs {want_sum}");
        if len > 0 {
            assert!(sum >= 1.0, "the max's own term is exp(0) = 1");
        }
    }
}
