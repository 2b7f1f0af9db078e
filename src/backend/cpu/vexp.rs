//! exp over a slice of f32 in SIMD lanes, for the attention softmax: `exp_sub_sum` replaces
//! each x by exp(x − c) and returns the sum of the results.
//!
//! exp(x) = 2ⁿ·eʳ with n = round(x·log₂e) and r = x − n·ln2 in [−ln2/2, ln2/2]; r is taken
//! in two steps (ln2 = LN2_HI + LN2_LO, LN2_HI with 12 trailing zero bits, so n·LN2_HI is
//! exact), eʳ is its Taylor polynomial to degree 7 (the first term left out, r⁸/8!, is below
//! 6e-9 relative: under a tenth of f32's half-ulp), and 2ⁿ is built from exponent bits in two
//! halves so that n from −150 to 128 needs no special case: results below f32's smallest
//! normal number come out subnormal or 0 through the multiplication, above f32::MAX as +inf.
//! NaN stays NaN. Error: at most a few ulp (tests/cpu_vexp.rs measures it against f64).
//!
//! The loop body is plain arithmetic that LLVM vectorises; on x86-64 CPUs with AVX2 and FMA
//! it is compiled a second time with those features and picked at run time (16 lanes per
//! step, two 256-bit registers), elsewhere it runs with the baseline's SIMD (SSE2 on x86-64).
//! Partial sums are kept per lane and added at the end, so the sum's rounding differs from a
//! sequential sum by f32 rounding only.

const LOG2E: f32 = std::f32::consts::LOG2_E;
/// ln2 split so that n·LN2_HI is exact for |n| < 2¹²: 0x3F317200 and the rest.
const LN2_HI: f32 = 0.693_145_75;
const LN2_LO: f32 = 1.428_606_8e-6;
/// 1.5·2²³: adding it rounds a float of magnitude below 2²² to an integer, held in the
/// low mantissa bits.
const ROUND: f32 = 12_582_912.0;
/// Inputs are clamped to this range first: below it exp rounds to 0, above it to +inf, and
/// inside it n stays within the two-halves exponent construction's reach.
const X_MIN: f32 = -104.0;
const X_MAX: f32 = 88.8;
/// Lanes per step: the partial sums (two AVX2 registers).
const LANES: usize = 16;

/// Whether this CPU runs the copies compiled with AVX2 and FMA (here and in flash.rs).
pub(crate) fn avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    return is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// A function from a body generic over `const FMA: bool`: on x86-64 with AVX2 and FMA the
/// body compiled a second time with those features (`FMA` true), elsewhere the baseline's
/// (`FMA` false), picked at run time. Here and in vact.rs; flash.rs picks its copy by an
/// explicit `Kernel` instead, which its tests choose.
macro_rules! simd_kernel {
    ($(#[$doc:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)? $body:block) => {
        $(#[$doc])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body<const FMA: bool>($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                body::<true>($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            if $crate::backend::cpu::vexp::avx2_fma() {
                // SAFETY: the CPU has the features `avx2` is compiled for.
                return unsafe { avx2($($arg),*) };
            }
            body::<false>($($arg),*)
        }
    };
}
pub(crate) use simd_kernel;

simd_kernel! {
    /// Replaces each x by exp(x − c) and returns the sum of the new values.
    pub fn exp_sub_sum(xs: &mut [f32], c: f32) -> f32 {
        exp_sub_sum_body::<FMA>(xs, c)
    }
}

#[inline(always)]
pub(crate) fn exp_sub_sum_body<const FMA: bool>(xs: &mut [f32], c: f32) -> f32 {
    let mut acc = [0f32; LANES];
    let mut chunks = xs.chunks_exact_mut(LANES);
    for chunk in &mut chunks {
        for (x, a) in chunk.iter_mut().zip(&mut acc) {
            *x = exp::<FMA>(*x - c);
            *a += *x;
        }
    }
    let mut sum = 0f32;
    for x in chunks.into_remainder() {
        *x = exp::<FMA>(*x - c);
        sum += *x;
    }
    acc.iter().sum::<f32>() + sum
}

/// a·b + c, fused where the CPU has FMA (a library call otherwise, which is slow).
#[inline(always)]
pub(crate) fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// exp(x) as described in the module header: one lane of the loop. `FMA` fuses the
/// multiply-adds (correct either way; fast only where the CPU has FMA).
#[inline(always)]
pub fn exp<const FMA: bool>(x: f32) -> f32 {
    let x = x.clamp(X_MIN, X_MAX);
    let t = madd::<FMA>(x, LOG2E, ROUND);
    let n = t - ROUND;
    let ni = (t.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let r = madd::<FMA>(n, -LN2_HI, x);
    let r = madd::<FMA>(n, -LN2_LO, r);
    // eʳ ≈ Σ rᵏ/k!, k ≤ 7, by Horner.
    let mut p = 1.0 / 5040.0;
    p = madd::<FMA>(p, r, 1.0 / 720.0);
    p = madd::<FMA>(p, r, 1.0 / 120.0);
    p = madd::<FMA>(p, r, 1.0 / 24.0);
    p = madd::<FMA>(p, r, 1.0 / 6.0);
    p = madd::<FMA>(p, r, 0.5);
    p = madd::<FMA>(p, r, 1.0);
    p = madd::<FMA>(p, r, 1.0);
    // 2ⁿ = 2^h · 2^(n−h), h = n/2 rounded down: each factor a normal float for n in range.
    let h = ni >> 1;
    let s1 = f32::from_bits(((h + 127) << 23) as u32);
    let s2 = f32::from_bits(((ni - h + 127) << 23) as u32);
    p * s1 * s2
}
