//! GELU, SiLU and GEGLU over slices of f32 in SIMD lanes, forward and input gradient: the f32
//! path of activation.rs and of GroupNorm's fused SiLU (norm.rs). f64, the gradient checks'
//! type, keeps activation.rs's scalar formulas (libm's erf and std's exp).
//!
//! GELU needs Φ(x) = ½·erfc(−x/√2) and its derivative the density φ(x) = e^(−x²/2)/√(2π).
//! With a = |x|/√2:
//!   erfc(a) = e^(−a²)·R(t),  t = 1/(1 + P·a),  R a degree-9 polynomial in t
//!   Φ(x) = 1 − ½·erfc(a) for x ≥ 0,  ½·erfc(a) for x < 0
//! and e^(−a²) = e^(−x²/2) is the same exponential φ needs, so gelu' costs one exp, one
//! division and the polynomial. R was fitted to erfc(a)·e^(a²) on 0 ≤ a ≤ 6 (relative least
//! squares, reweighted towards the largest errors; scripts/fit-erfc.py): its own relative
//! error is under 1e-8;
//! evaluated in f32 the relative error of erfc is under 4e-7 (rounding of t and Horner's
//! steps), plus x²/2·2⁻²⁴ from rounding the exponent x²/2. Φ's absolute error is therefore
//! under 3e-7 (x ≥ 0), and for x < 0, where the generic code's 1 + erf(x/√2) cancels, its
//! relative error is under 5e-7 + x²·6e-8; above a = 6 the exponential alone takes erfc below
//! 1e-16, and to 0 from a² > 104. PyTorch's vectorised CPU erf has an absolute error bound of
//! about 1.5e-7. tests/cpu_vact.rs measures all of it against f64.
//!
//! SiLU: σ(x) = 1/(1 + e^(−x)), silu = x·σ, silu' = σ·(1 + x·(1 − σ)).
//! The exponentials are vexp.rs's (a few ulp). Each kernel's body is plain arithmetic that
//! LLVM vectorises, compiled a second time with AVX2 and FMA and picked at run time (vexp.rs's
//! `simd_kernel!`).

use super::vexp::{exp, madd, simd_kernel};
use crate::backend::Activation;

/// P in t = 1/(1 + P·a).
const P: f32 = 0.4;
/// R's coefficients, t⁰ first.
const R: [f32; 10] = [
    1.485_868e-4,
    0.222_920_84,
    0.247_924_18,
    0.105_230_32,
    0.465_653_36,
    -0.418_038_64,
    0.678_957_16,
    -0.355_647_12,
    0.045_805_81,
    0.007_045_5,
];
const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// 1/√(2π).
const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;

/// (Φ(x), e^(−x²/2)) as the module header says: one lane.
#[inline(always)]
fn cdf_and_gauss<const FMA: bool>(x: f32) -> (f32, f32) {
    let a = x.abs() * FRAC_1_SQRT_2;
    let t = 1.0 / madd::<FMA>(P, a, 1.0);
    let mut r = R[9];
    for &c in R[..9].iter().rev() {
        r = madd::<FMA>(r, t, c);
    }
    let e = exp::<FMA>(-0.5 * x * x);
    let half_erfc = 0.5 * e * r;
    let cdf = if x >= 0.0 { 1.0 - half_erfc } else { half_erfc };
    (cdf, e)
}

/// x·Φ(x): one lane.
#[inline(always)]
pub fn gelu<const FMA: bool>(x: f32) -> f32 {
    x * cdf_and_gauss::<FMA>(x).0
}

/// Φ(x) + x·φ(x): one lane.
#[inline(always)]
pub fn gelu_grad<const FMA: bool>(x: f32) -> f32 {
    gelu_and_grad::<FMA>(x).1
}

/// (gelu(x), gelu'(x)) from one Φ and one exponential: one lane.
#[inline(always)]
fn gelu_and_grad<const FMA: bool>(x: f32) -> (f32, f32) {
    let (cdf, e) = cdf_and_gauss::<FMA>(x);
    (x * cdf, madd::<FMA>(x * FRAC_1_SQRT_2PI, e, cdf))
}

/// σ(x): one lane.
#[inline(always)]
fn sigmoid<const FMA: bool>(x: f32) -> f32 {
    1.0 / (1.0 + exp::<FMA>(-x))
}

/// x·σ(x): one lane.
#[inline(always)]
pub fn silu<const FMA: bool>(x: f32) -> f32 {
    x * sigmoid::<FMA>(x)
}

/// σ(x)·(1 + x·(1 − σ(x))): one lane.
#[inline(always)]
pub fn silu_grad<const FMA: bool>(x: f32) -> f32 {
    let s = sigmoid::<FMA>(x);
    s * madd::<FMA>(x, 1.0 - s, 1.0)
}

simd_kernel! {
    /// y = gelu(x), elementwise (y as long as x).
    pub fn gelu_slice(x: &[f32], y: &mut [f32]) {
        for (y, &x) in y.iter_mut().zip(x) {
            *y = gelu::<FMA>(x);
        }
    }
}

simd_kernel! {
    /// dx = dy·gelu'(x), elementwise.
    pub fn gelu_grad_slice(dy: &[f32], x: &[f32], dx: &mut [f32]) {
        for (d, (&dy, &x)) in dx.iter_mut().zip(dy.iter().zip(x)) {
            *d = dy * gelu_grad::<FMA>(x);
        }
    }
}

simd_kernel! {
    /// y = silu(x), elementwise.
    pub fn silu_slice(x: &[f32], y: &mut [f32]) {
        for (y, &x) in y.iter_mut().zip(x) {
            *y = silu::<FMA>(x);
        }
    }
}

simd_kernel! {
    /// y = silu(y), in place.
    pub fn silu_in_place(y: &mut [f32]) {
        for y in y.iter_mut() {
            *y = silu::<FMA>(*y);
        }
    }
}

simd_kernel! {
    /// dx = dy·silu'(x), elementwise.
    pub fn silu_grad_slice(dy: &[f32], x: &[f32], dx: &mut [f32]) {
        for (d, (&dy, &x)) in dx.iter_mut().zip(dy.iter().zip(x)) {
            *d = dy * silu_grad::<FMA>(x);
        }
    }
}

simd_kernel! {
    /// x_dx = dy·silu'(x_dx), in place (GroupNorm's fused SiLU: the pre-activation in, its
    /// gradient out).
    pub fn silu_grad_in_place(dy: &[f32], x_dx: &mut [f32]) {
        for (d, &dy) in x_dx.iter_mut().zip(dy) {
            *d = dy * silu_grad::<FMA>(*d);
        }
    }
}

simd_kernel! {
    /// One GEGLU row's forward: y = h·gelu(g).
    pub fn geglu(h: &[f32], g: &[f32], y: &mut [f32]) {
        for (y, (&h, &g)) in y.iter_mut().zip(h.iter().zip(g)) {
            *y = h * gelu::<FMA>(g);
        }
    }
}

simd_kernel! {
    /// One GEGLU row's input gradient: dh = dy·gelu(g), dg = dy·h·gelu'(g), one exp each.
    pub fn geglu_backward(dy: &[f32], h: &[f32], g: &[f32], dh: &mut [f32], dg: &mut [f32]) {
        for ((dh, dg), ((&dy, &h), &g)) in dh
            .iter_mut()
            .zip(dg.iter_mut())
            .zip(dy.iter().zip(h).zip(g))
        {
            let (gelu, grad) = gelu_and_grad::<FMA>(g);
            *dh = dy * gelu;
            *dg = dy * h * grad;
        }
    }
}

/// A forward slice kernel: y = act(x).
pub type Forward = fn(&[f32], &mut [f32]);
/// An input-gradient slice kernel: (dy, x, dx), dx = dy·act'(x).
pub type Backward = fn(&[f32], &[f32], &mut [f32]);

/// The slice kernel of `act`'s forward, where this module has one.
pub fn forward(act: Activation) -> Option<Forward> {
    match act {
        Activation::Gelu => Some(gelu_slice),
        Activation::Silu => Some(silu_slice),
        Activation::QuickGelu | Activation::GeluTanh => None,
    }
}

/// The slice kernel of `act`'s input gradient (dy, x, dx), where this module has one.
pub fn backward(act: Activation) -> Option<Backward> {
    match act {
        Activation::Gelu => Some(gelu_grad_slice),
        Activation::Silu => Some(silu_grad_slice),
        Activation::QuickGelu | Activation::GeluTanh => None,
    }
}
