//! `Real`: the element types the CPU backend computes in. f32 is the reference path; f64
//! runs the same code for gradient checks. Each op is written once, generic over `Real`.

use std::fmt::Debug;
use std::iter::Sum;
use std::ops::{Add, AddAssign, Div, Mul, MulAssign, Neg, Sub, SubAssign};

use crate::tensor::{CpuData, DType, Storage, Tensor};

pub trait Real:
    Copy
    + Send
    + Sync
    + Default
    + PartialOrd
    + Debug
    + Sum
    + 'static
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + SubAssign
    + MulAssign
{
    const DTYPE: DType;
    const ZERO: Self;
    const ONE: Self;
    const NEG_INFINITY: Self;

    fn from_f64(x: f64) -> Self;
    fn to_f64(self) -> f64;
    fn exp(self) -> Self;
    fn ln(self) -> Self;
    fn sqrt(self) -> Self;
    fn sin(self) -> Self;
    fn cos(self) -> Self;
    fn erf(self) -> Self;
    fn tanh(self) -> Self;
    fn max(self, other: Self) -> Self;
    fn is_finite(self) -> bool;

    /// The tensor's elements if it holds this type on the host.
    fn data(t: &Tensor) -> Option<&[Self]>;
    fn data_mut(t: &mut Tensor) -> Option<&mut [Self]>;
    fn into_cpu_data(v: Vec<Self>) -> CpuData;

    /// C = alpha·A·B + beta·C on strided row/column layouts with matrixmultiply (gemm.rs
    /// says when it is used instead of the `gemm` crate).
    ///
    /// # Safety
    /// The pointers and strides must describe valid, non-overlapping m×k, k×n and m×n
    /// matrices; C must be writable.
    #[allow(clippy::too_many_arguments)]
    unsafe fn gemm_raw(
        m: usize,
        k: usize,
        n: usize,
        alpha: Self,
        a: *const Self,
        rsa: isize,
        csa: isize,
        b: *const Self,
        rsb: isize,
        csb: isize,
        beta: Self,
        c: *mut Self,
        rsc: isize,
        csc: isize,
    );

    /// Replaces each x by exp(x − c) and returns the sum of the new values: the exponentials
    /// of a softmax. f32 takes vexp.rs's SIMD exp (a few ulp); f64 each value's own `exp`,
    /// summed in order.
    fn exp_sub_sum(xs: &mut [Self], c: Self) -> Self;

    /// The elements as f32 when `Self` is f32 (for the f32-only paths, gemm_bf16.rs).
    fn as_f32(x: &[Self]) -> Option<&[f32]> {
        (std::any::TypeId::of::<Self>() == std::any::TypeId::of::<f32>())
            // SAFETY: Self is f32, so the slice is a slice of f32.
            .then(|| unsafe { std::slice::from_raw_parts(x.as_ptr().cast(), x.len()) })
    }
    fn as_f32_mut(x: &mut [Self]) -> Option<&mut [f32]> {
        (std::any::TypeId::of::<Self>() == std::any::TypeId::of::<f32>())
            // SAFETY: as in `as_f32`; the borrow is the caller's exclusive one.
            .then(|| unsafe { std::slice::from_raw_parts_mut(x.as_mut_ptr().cast(), x.len()) })
    }

    fn sigmoid(self) -> Self {
        Self::ONE / (Self::ONE + (-self).exp())
    }
}

macro_rules! impl_real {
    ($t:ty, $variant:ident, $dtype:expr, $gemm:path, $erf:path, $exp_sub_sum:path) => {
        impl Real for $t {
            const DTYPE: DType = $dtype;
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            const NEG_INFINITY: Self = <$t>::NEG_INFINITY;

            fn from_f64(x: f64) -> Self {
                x as $t
            }
            fn to_f64(self) -> f64 {
                self as f64
            }
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
            fn ln(self) -> Self {
                <$t>::ln(self)
            }
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            fn sin(self) -> Self {
                <$t>::sin(self)
            }
            fn cos(self) -> Self {
                <$t>::cos(self)
            }
            fn erf(self) -> Self {
                $erf(self)
            }
            fn tanh(self) -> Self {
                <$t>::tanh(self)
            }
            fn max(self, other: Self) -> Self {
                <$t>::max(self, other)
            }
            fn is_finite(self) -> bool {
                <$t>::is_finite(self)
            }
            fn data(t: &Tensor) -> Option<&[Self]> {
                match t.storage() {
                    Storage::Cpu(CpuData::$variant(v)) => Some(v),
                    #[allow(unreachable_patterns)]
                    _ => None,
                }
            }
            fn data_mut(t: &mut Tensor) -> Option<&mut [Self]> {
                match t.storage_mut() {
                    Storage::Cpu(CpuData::$variant(v)) => Some(v),
                    #[allow(unreachable_patterns)]
                    _ => None,
                }
            }
            fn into_cpu_data(v: Vec<Self>) -> CpuData {
                CpuData::$variant(v)
            }
            fn exp_sub_sum(xs: &mut [Self], c: Self) -> Self {
                $exp_sub_sum(xs, c)
            }
            unsafe fn gemm_raw(
                m: usize,
                k: usize,
                n: usize,
                alpha: Self,
                a: *const Self,
                rsa: isize,
                csa: isize,
                b: *const Self,
                rsb: isize,
                csb: isize,
                beta: Self,
                c: *mut Self,
                rsc: isize,
                csc: isize,
            ) {
                // SAFETY: forwarded from the caller's contract.
                unsafe { $gemm(m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc) }
            }
        }
    };
}

impl_real!(
    f32,
    F32,
    DType::F32,
    matrixmultiply::sgemm,
    libm::erff,
    super::vexp::exp_sub_sum
);
impl_real!(
    f64,
    F64,
    DType::F64,
    matrixmultiply::dgemm,
    libm::erf,
    exp_sub_sum_each
);

/// `Real::exp_sub_sum` one value at a time, in order.
fn exp_sub_sum_each<T: Real>(xs: &mut [T], c: T) -> T {
    let mut sum = T::ZERO;
    for x in xs {
        *x = (*x - c).exp();
        sum += *x;
    }
    sum
}
