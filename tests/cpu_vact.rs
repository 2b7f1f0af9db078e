//! The f32 SIMD activations (src/backend/cpu/vact.rs) against the same formulas in f64 (libm's
//! erf, std's exp): GELU's Φ to 3e-7 absolute and, below 0, 1e-6 relative; SiLU to a few ulp;
//! every slice kernel (the copy this CPU dispatches to) at lengths that take the SIMD loop, its
//! remainder and both; and the edges (0, large |x|, ±inf, NaN).

use lorafuse::backend::cpu::vact::{
    geglu, geglu_backward, gelu, gelu_grad, gelu_grad_slice, gelu_slice, silu, silu_grad,
    silu_grad_in_place, silu_grad_slice, silu_in_place, silu_slice,
};
use lorafuse::rng::Rng;

fn cdf64(x: f64) -> f64 {
    0.5 * libm::erfc(-x / std::f64::consts::SQRT_2)
}
fn gelu64(x: f64) -> f64 {
    x * cdf64(x)
}
fn gelu_grad64(x: f64) -> f64 {
    cdf64(x) + x * (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt()
}
fn sigmoid64(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}
fn silu64(x: f64) -> f64 {
    x * sigmoid64(x)
}
fn silu_grad64(x: f64) -> f64 {
    let s = sigmoid64(x);
    s * (1.0 + x * (1.0 - s))
}

/// f32's spacing at |v| (the smallest subnormal for 0 and subnormals).
fn ulp(v: f64) -> f64 {
    let w = (v as f32).abs();
    if w == 0.0 || !w.is_normal() {
        f32::from_bits(1) as f64
    } else {
        (f32::from_bits(w.to_bits() + 1) - w) as f64
    }
}

/// Every 1/256 from -12 to 12, a dense sweep around 0 and the far tails.
fn sweep() -> impl Iterator<Item = f32> {
    (-12 * 256..=12 * 256)
        .map(|i| i as f32 / 256.0)
        .chain((-2000..=2000).map(|i| i as f32 * 1e-5))
        .chain([-1e30, -500.0, -40.0, -15.0, 15.0, 40.0, 500.0, 1e30])
}

/// The allowed error of gelu(x): Φ's absolute bound times |x| (x ≥ 0) or its relative bound
/// (x < 0), plus one ulp of the result's rounding.
fn gelu_tolerance(x: f64, want: f64) -> f64 {
    phi_tolerance(x) * x.abs() + ulp(want) + subnormal_slack(x)
}

/// Below f32's normal range the exponential and the products lose bits (gradual underflow):
/// results under about 1e-38 may be off by that much.
fn subnormal_slack(x: f64) -> f64 {
    f32::MIN_POSITIVE as f64 * (1.0 + x.abs())
}

/// Φ's error bound: absolute for x ≥ 0; relative for x < 0, where the rounding of x²/2 (a
/// relative x²/2·2⁻²⁴ in the exponent, so much in the result) joins erfc's 4e-7.
fn phi_tolerance(x: f64) -> f64 {
    if x >= 0.0 {
        3e-7
    } else {
        (5e-7 + x * x * 6e-8) * cdf64(x)
    }
}

/// The allowed error of gelu'(x): Φ's bound plus x·φ(x)'s (a few ulp of the exponential, and
/// the rounding of x²/2 that the exponent takes, relative x²/2 · 2⁻²³).
fn gelu_grad_tolerance(x: f64) -> f64 {
    let gauss = (x * (-0.5 * x * x).exp()).abs() / (2.0 * std::f64::consts::PI).sqrt();
    phi_tolerance(x) + gauss * (1e-6 + x * x * 1.2e-7) + ulp(gelu_grad64(x)) + subnormal_slack(x)
}

#[test]
fn gelu_and_its_gradient_within_bounds_over_the_range() {
    for fma in [false, true] {
        let (g, gg) = if fma {
            (
                gelu::<true> as fn(f32) -> f32,
                gelu_grad::<true> as fn(f32) -> f32,
            )
        } else {
            (
                gelu::<false> as fn(f32) -> f32,
                gelu_grad::<false> as fn(f32) -> f32,
            )
        };
        let (mut worst_abs_cdf, mut worst_rel_neg) = (0f64, 0f64);
        for x in sweep() {
            let xd = x as f64;
            let (want, got) = (gelu64(xd), g(x) as f64);
            let tol = gelu_tolerance(xd, want);
            assert!(
                (got - want).abs() <= tol,
                "fma {fma}: gelu({x}) = {got}, want {want} (tolerance {tol:e})"
            );
            let (want, got) = (gelu_grad64(xd), gg(x) as f64);
            let tol = gelu_grad_tolerance(xd);
            assert!(
                (got - want).abs() <= tol,
                "fma {fma}: gelu'({x}) = {got}, want {want} (tolerance {tol:e})"
            );
            if xd != 0.0 && xd.abs() < 4.0 {
                let cdf = g(x) as f64 / xd;
                worst_abs_cdf = worst_abs_cdf.max((cdf - cdf64(xd)).abs());
                if xd < 0.0 {
                    worst_rel_neg = worst_rel_neg.max((cdf / cdf64(xd) - 1.0).abs());
                }
            }
        }
        // The module header's claims, with the product's rounding (x·Φ then /x) on top.
        assert!(
            worst_abs_cdf < 3e-7,
            "fma {fma}: Φ off by {worst_abs_cdf:e}"
        );
        assert!(
            worst_rel_neg < 1.5e-6,
            "fma {fma}: Φ relative {worst_rel_neg:e}"
        );
    }
}

#[test]
fn silu_and_its_gradient_within_a_few_ulp() {
    for fma in [false, true] {
        let (s, sg) = if fma {
            (
                silu::<true> as fn(f32) -> f32,
                silu_grad::<true> as fn(f32) -> f32,
            )
        } else {
            (
                silu::<false> as fn(f32) -> f32,
                silu_grad::<false> as fn(f32) -> f32,
            )
        };
        for x in sweep() {
            let xd = x as f64;
            let (want, got) = (silu64(xd), s(x) as f64);
            // σ carries exp's few ulp and a division; x·σ one more rounding.
            let tol = 6.0 * ulp(want) + 4e-7 * (xd * sigmoid64(xd)).abs();
            assert!(
                (got - want).abs() <= tol,
                "fma {fma}: silu({x}) = {got}, want {want}"
            );
            let (want, got) = (silu_grad64(xd), sg(x) as f64);
            // 1 - σ cancels for large x: absolute in σ's ulp, scaled by |x|·σ.
            let s64 = sigmoid64(xd);
            let tol = 6.0 * ulp(want) + 4e-7 * s64 * (1.0 + xd.abs());
            assert!(
                (got - want).abs() <= tol,
                "fma {fma}: silu'({x}) = {got}, want {want}"
            );
        }
    }
}

#[test]
fn edges() {
    for fma in [false, true] {
        let (g, gg, s) = if fma {
            (
                gelu::<true> as fn(f32) -> f32,
                gelu_grad::<true> as fn(f32) -> f32,
                silu::<true> as fn(f32) -> f32,
            )
        } else {
            (
                gelu::<false> as fn(f32) -> f32,
                gelu_grad::<false> as fn(f32) -> f32,
                silu::<false> as fn(f32) -> f32,
            )
        };
        assert_eq!(g(0.0), 0.0);
        assert_eq!(gg(0.0), 0.5);
        assert_eq!(s(0.0), 0.0);
        assert_eq!(g(f32::INFINITY), f32::INFINITY);
        assert_eq!(g(1e30), 1e30);
        assert_eq!(g(-1e30), 0.0);
        assert_eq!(gg(1e30), 1.0);
        assert_eq!(gg(-1e30), 0.0);
        assert_eq!(s(1e30), 1e30);
        assert_eq!(s(-1e30), 0.0);
        // As the generic path: x·Φ(x) at -inf is -inf·0.
        assert!(g(f32::NEG_INFINITY).is_nan());
        assert!(g(f32::NAN).is_nan() && gg(f32::NAN).is_nan() && s(f32::NAN).is_nan());
    }
}

/// Random values spread over the activations' working range.
fn values(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| 6.0 * rng.normal() as f32).collect()
}

#[test]
fn slice_kernels_match_f64_at_every_length() {
    let mut rng = Rng::new(17);
    for n in [0, 1, 7, 8, 9, 31, 32, 33, 1000] {
        let (x, dy) = (values(&mut rng, n), values(&mut rng, n));
        let mut y = vec![f32::NAN; n];
        gelu_slice(&x, &mut y);
        let mut dx = vec![f32::NAN; n];
        gelu_grad_slice(&dy, &x, &mut dx);
        for i in 0..n {
            let xd = x[i] as f64;
            let want = gelu64(xd);
            let got = y[i] as f64;
            let tol = gelu_tolerance(xd, want);
            assert!(
                (got - want).abs() <= tol,
                "gelu({xd}) n={n} i={i}: {got} vs {want}, tol {tol:e}"
            );
            let want = dy[i] as f64 * gelu_grad64(xd);
            let tol = (dy[i] as f64).abs() * gelu_grad_tolerance(xd) + ulp(want);
            assert!((dx[i] as f64 - want).abs() <= tol, "gelu' n={n} i={i}");
        }
        silu_slice(&x, &mut y);
        let mut z = x.clone();
        silu_in_place(&mut z);
        assert_eq!(y, z, "silu_in_place differs from silu_slice (n={n})");
        silu_grad_slice(&dy, &x, &mut dx);
        let mut w = x.clone();
        silu_grad_in_place(&dy, &mut w);
        assert_eq!(
            dx, w,
            "silu_grad_in_place differs from silu_grad_slice (n={n})"
        );
        for i in 0..n {
            let xd = x[i] as f64;
            let want = silu64(xd);
            assert!(
                (y[i] as f64 - want).abs() <= 6.0 * ulp(want) + 4e-7 * want.abs(),
                "silu n={n} i={i}"
            );
            let want = dy[i] as f64 * silu_grad64(xd);
            let tol = (dy[i] as f64).abs() * (6.0 * ulp(silu_grad64(xd)) + 4e-7 * (1.0 + xd.abs()))
                + ulp(want);
            assert!((dx[i] as f64 - want).abs() <= tol, "silu' n={n} i={i}");
        }
    }
}

#[test]
fn geglu_rows_match_f64() {
    let mut rng = Rng::new(23);
    for f in [1, 8, 13, 40, 320] {
        let (h, g, dy) = (
            values(&mut rng, f),
            values(&mut rng, f),
            values(&mut rng, f),
        );
        let mut y = vec![f32::NAN; f];
        geglu(&h, &g, &mut y);
        let (mut dh, mut dg) = (vec![f32::NAN; f], vec![f32::NAN; f]);
        geglu_backward(&dy, &h, &g, &mut dh, &mut dg);
        for i in 0..f {
            let (hd, gd, dyd) = (h[i] as f64, g[i] as f64, dy[i] as f64);
            let want = hd * gelu64(gd);
            let tol = hd.abs() * gelu_tolerance(gd, gelu64(gd)) + ulp(want);
            let got = y[i] as f64;
            assert!(
                (got - want).abs() <= tol,
                "geglu h={hd} g={gd} f={f} i={i}: {got} vs {want}, tol {tol:e}"
            );
            let want = dyd * gelu64(gd);
            let tol = dyd.abs() * gelu_tolerance(gd, gelu64(gd)) + ulp(want);
            assert!((dh[i] as f64 - want).abs() <= tol, "geglu dh f={f} i={i}");
            let want = dyd * hd * gelu_grad64(gd);
            let tol = (dyd * hd).abs() * gelu_grad_tolerance(gd) + 2.0 * ulp(want);
            let got = dg[i] as f64;
            assert!(
                (got - want).abs() <= tol,
                "geglu dg h={hd} g={gd} dy={dyd}: {got} vs {want}, tol {tol:e}"
            );
        }
    }
}
