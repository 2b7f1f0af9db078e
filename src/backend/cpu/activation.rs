//! Pointwise activations and GEGLU, forward and input gradient.
//!
//!   silu(x)       = x·σ(x)                          silu'(x)  = σ(x)·(1 + x·(1 - σ(x)))
//!   gelu(x)       = x·Φ(x) = ½x·(1 + erf(x/√2))     gelu'(x)  = Φ(x) + x·φ(x),
//!                   φ(x) = exp(-x²/2)/√(2π)         (exact GELU, diffusers' approximate="none")
//!   quick_gelu(x) = x·σ(1.702x)  (CLIP)             qg'(x)    = s + 1.702·x·s·(1 - s),
//!                                                   s = σ(1.702x)
//!   gelu_tanh(x)  = ½x·(1 + t),  t = tanh(u),       gt'(x)    = ½(1 + t) + ½x·(1 - t²)·u',
//!                   u = √(2/π)·(x + 0.044715x³)     u' = √(2/π)·(1 + 3·0.044715x²)
//! GEGLU (diffusers `GEGLU`: `hidden, gate = proj(x).chunk(2, dim=-1)`), x [.., 2F]:
//!   h = x[.., :F], g = x[.., F:],  y = h·gelu(g)  [.., F]
//!   dh = dy·gelu(g),  dg = dy·h·gelu'(g)           dx = [dh, dg]  [.., 2F]
//! Rayon over chunks of elements (pointwise) or of rows (GEGLU). In f32, GELU, SiLU and GEGLU
//! run vact.rs's SIMD kernels (the same formulas, its own erf and exp); f64 runs these.

use rayon::prelude::*;

use super::elementwise::CHUNK;
use super::CpuBackend;
use super::{data, dispatch, tensor, vact, Real};
use crate::backend::{check, Activation, ActivationOps};
use crate::error::Result;
use crate::tensor::{DType, Tensor};

/// x·σ(x).
pub(crate) fn silu<T: Real>(x: T) -> T {
    x * x.sigmoid()
}

/// d silu/dx = σ(x) + x·σ(x)·(1 - σ(x)).
pub(crate) fn silu_grad<T: Real>(x: T) -> T {
    let s = x.sigmoid();
    s * (T::ONE + x * (T::ONE - s))
}

/// ½x·(1 + erf(x/√2)).
pub(crate) fn gelu<T: Real>(x: T) -> T {
    let half = T::from_f64(0.5);
    half * x * (T::ONE + (x * T::from_f64(std::f64::consts::FRAC_1_SQRT_2)).erf())
}

/// d gelu/dx = Φ(x) + x·φ(x).
pub(crate) fn gelu_grad<T: Real>(x: T) -> T {
    let half = T::from_f64(0.5);
    let cdf = half * (T::ONE + (x * T::from_f64(std::f64::consts::FRAC_1_SQRT_2)).erf());
    // 1/√(2π)
    let pdf = T::from_f64(0.398_942_280_401_432_7) * (-half * x * x).exp();
    cdf + x * pdf
}

/// CLIP's sigmoid approximation of GELU.
const QUICK_GELU_K: f64 = 1.702;

fn quick_gelu<T: Real>(x: T) -> T {
    x * (T::from_f64(QUICK_GELU_K) * x).sigmoid()
}

fn quick_gelu_grad<T: Real>(x: T) -> T {
    let k = T::from_f64(QUICK_GELU_K);
    let s = (k * x).sigmoid();
    s + k * x * s * (T::ONE - s)
}

/// √(2/π) and the cubic coefficient of GELU's tanh approximation.
const GELU_TANH_C: f64 = 0.797_884_560_802_865_4;
const GELU_TANH_K: f64 = 0.044_715;

fn gelu_tanh<T: Real>(x: T) -> T {
    let u = T::from_f64(GELU_TANH_C) * (x + T::from_f64(GELU_TANH_K) * x * x * x);
    T::from_f64(0.5) * x * (T::ONE + u.tanh())
}

fn gelu_tanh_grad<T: Real>(x: T) -> T {
    let (c, k, half) = (
        T::from_f64(GELU_TANH_C),
        T::from_f64(GELU_TANH_K),
        T::from_f64(0.5),
    );
    let t = (c * (x + k * x * x * x)).tanh();
    let du = c * (T::ONE + T::from_f64(3.0) * k * x * x);
    half * (T::ONE + t) + half * x * (T::ONE - t * t) * du
}

impl ActivationOps for CpuBackend {
    fn activation(&self, x: &Tensor, act: Activation) -> Result<Tensor> {
        dispatch!("activation", x, forward_t(x, act))
    }

    fn activation_backward(&self, dy: &Tensor, x: &Tensor, act: Activation) -> Result<Tensor> {
        const OP: &str = "activation_backward";
        check::activation::backward(OP, dy, x)?;
        dispatch!(OP, x, backward_t(dy, x, act))
    }

    fn geglu(&self, x: &Tensor) -> Result<Tensor> {
        const OP: &str = "geglu";
        let d = check::activation::geglu(OP, x)?;
        dispatch!(OP, x, geglu_t(x, d.features))
    }

    fn geglu_backward(&self, dy: &Tensor, x: &Tensor) -> Result<Tensor> {
        let d = check::activation::geglu_backward(dy, x)?;
        dispatch!("geglu_backward", x, geglu_backward_t(dy, x, d.features))
    }
}

fn forward_t<T: Real>(x: &Tensor, act: Activation) -> Result<Tensor> {
    let xs = data::<T>("activation", "x", x)?;
    // f32 takes vact.rs's SIMD kernels where it has one for `act`.
    let y = match (f32_slices::<T>(), vact::forward(act)) {
        (true, Some(kernel)) => map_chunks(xs, |x, y| kernel(f32s(x), f32s_mut(y))),
        _ => match act {
            Activation::Silu => map(xs, silu),
            Activation::Gelu => map(xs, gelu),
            Activation::QuickGelu => map(xs, quick_gelu),
            Activation::GeluTanh => map(xs, gelu_tanh),
        },
    };
    tensor(x.shape().clone(), y)
}

fn backward_t<T: Real>(dy: &Tensor, x: &Tensor, act: Activation) -> Result<Tensor> {
    const OP: &str = "activation_backward";
    let dys = data::<T>(OP, "dy", dy)?;
    let xs = data::<T>(OP, "x", x)?;
    // dx = dy·act'(x)
    let dx = match (f32_slices::<T>(), vact::backward(act)) {
        (true, Some(kernel)) => {
            map_grad_chunks(dys, xs, |dy, x, dx| kernel(f32s(dy), f32s(x), f32s_mut(dx)))
        }
        _ => match act {
            Activation::Silu => map_grad(dys, xs, silu_grad),
            Activation::Gelu => map_grad(dys, xs, gelu_grad),
            Activation::QuickGelu => map_grad(dys, xs, quick_gelu_grad),
            Activation::GeluTanh => map_grad(dys, xs, gelu_tanh_grad),
        },
    };
    tensor(x.shape().clone(), dx)
}

/// Whether `T` is f32 (whose slices [`f32s`] and [`f32s_mut`] view as such).
fn f32_slices<T: Real>() -> bool {
    T::DTYPE == DType::F32
}

/// A slice of `T` as f32; only called where [`f32_slices`] said `T` is f32.
fn f32s<T: Real>(x: &[T]) -> &[f32] {
    T::as_f32(x).expect("the f32 path runs on f32 elements")
}

fn f32s_mut<T: Real>(x: &mut [T]) -> &mut [f32] {
    T::as_f32_mut(x).expect("the f32 path runs on f32 elements")
}

/// f applied to every element, in parallel chunks.
fn map<T: Real>(xs: &[T], f: impl Fn(T) -> T + Sync) -> Vec<T> {
    map_chunks(xs, |x, y| y.iter_mut().zip(x).for_each(|(y, &x)| *y = f(x)))
}

/// y = kernel(x), chunk by chunk in parallel.
fn map_chunks<T: Real>(xs: &[T], kernel: impl Fn(&[T], &mut [T]) + Sync) -> Vec<T> {
    let mut y = vec![T::ZERO; xs.len()];
    y.par_chunks_mut(CHUNK)
        .zip(xs.par_chunks(CHUNK))
        .for_each(|(y, x)| kernel(x, y));
    y
}

/// dy·f'(x) for every element, in parallel chunks.
fn map_grad<T: Real>(dys: &[T], xs: &[T], grad: impl Fn(T) -> T + Sync) -> Vec<T> {
    map_grad_chunks(dys, xs, |dy, x, dx| {
        for (d, (&dyv, &xv)) in dx.iter_mut().zip(dy.iter().zip(x)) {
            *d = dyv * grad(xv);
        }
    })
}

/// dx = kernel(dy, x), chunk by chunk in parallel.
fn map_grad_chunks<T: Real>(
    dys: &[T],
    xs: &[T],
    kernel: impl Fn(&[T], &[T], &mut [T]) + Sync,
) -> Vec<T> {
    let mut dx = vec![T::ZERO; xs.len()];
    dx.par_chunks_mut(CHUNK)
        .zip(dys.par_chunks(CHUNK).zip(xs.par_chunks(CHUNK)))
        .for_each(|(dx, (dy, x))| kernel(dy, x, dx));
    dx
}

/// Rows of `len` elements per rayon task, so that a task has about `CHUNK` elements.
fn rows_per_task(len: usize) -> usize {
    (CHUNK / len.max(1)).max(1)
}

fn geglu_t<T: Real>(x: &Tensor, f: usize) -> Result<Tensor> {
    let xs = data::<T>("geglu", "x", x)?;
    let out_shape = x.shape().with_last(f);
    if f == 0 {
        return tensor(out_shape, Vec::<T>::new());
    }
    let mut y = vec![T::ZERO; out_shape.numel()];
    y.par_chunks_mut(f)
        .zip(xs.par_chunks(2 * f))
        .with_min_len(rows_per_task(2 * f))
        .for_each(|(y, x)| {
            let (h, g) = x.split_at(f);
            if f32_slices::<T>() {
                vact::geglu(f32s(h), f32s(g), f32s_mut(y));
                return;
            }
            for (yv, (&hv, &gv)) in y.iter_mut().zip(h.iter().zip(g)) {
                *yv = hv * gelu(gv);
            }
        });
    tensor(out_shape, y)
}

fn geglu_backward_t<T: Real>(dy: &Tensor, x: &Tensor, f: usize) -> Result<Tensor> {
    const OP: &str = "geglu_backward";
    let dys = data::<T>(OP, "dy", dy)?;
    let xs = data::<T>(OP, "x", x)?;
    if f == 0 {
        return tensor(x.shape().clone(), Vec::<T>::new());
    }
    let mut dx = vec![T::ZERO; xs.len()];
    dx.par_chunks_mut(2 * f)
        .zip(dys.par_chunks(f).zip(xs.par_chunks(2 * f)))
        .with_min_len(rows_per_task(2 * f))
        .for_each(|(dx, (dy, x))| {
            let (dh, dg) = dx.split_at_mut(f);
            let (h, g) = x.split_at(f);
            if f32_slices::<T>() {
                let (dh, dg) = (f32s_mut(dh), f32s_mut(dg));
                vact::geglu_backward(f32s(dy), f32s(h), f32s(g), dh, dg);
                return;
            }
            for ((dhv, dgv), ((&dyv, &hv), &gv)) in dh
                .iter_mut()
                .zip(dg.iter_mut())
                .zip(dy.iter().zip(h).zip(g))
            {
                *dhv = dyv * gelu(gv);
                *dgv = dyv * hv * gelu_grad(gv);
            }
        });
    tensor(x.shape().clone(), dx)
}
