//! Linear layer with an optional LoRA term, forward and backward (W frozen).
//!
//! Forward, x [M, in] (M = all leading dims), W [out, in], A [r, in], B [out, r], s = alpha/r:
//!   u = x·Aᵀ            [M, r]   (returned, saved for the backward)
//!   y = x·Wᵀ + b + s·u·Bᵀ  [M, out]
//! Backward, dY [M, out]:
//!   g  = dY·B           [M, r]
//!   dB (+)= s·dYᵀ·u     [out, r]
//!   dA (+)= s·gᵀ·x      [r, in]
//!   dX  = dY·W + s·g·A  [M, in]   (only when asked: the backward stops at the first LoRA)
//! dA and dB are `=` on the first micro-batch of a step and `+=` after (`Accum`).

use super::gemm::{gemm, Mat};
use super::{data, data_mut, dispatch, tensor, Real};
use crate::backend::{check, Accum, LinearOut, Lora, LoraBackward};
use crate::error::Result;
use crate::tensor::Tensor;

pub fn forward(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    lora: Option<Lora<'_>>,
) -> Result<LinearOut> {
    dispatch!("linear", x, forward_t(x, w, bias, lora))
}

fn forward_t<T: Real>(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    lora: Option<Lora<'_>>,
) -> Result<LinearOut> {
    const OP: &str = "linear";
    let d = check::linear::forward(x, w, bias, lora.as_ref())?;
    let (m, k, n) = (d.rows, d.in_features, d.out_features);
    let xs = data::<T>(OP, "x", x)?;
    let ws = data::<T>(OP, "w", w)?;
    let mut y = vec![T::ZERO; m * n];
    gemm(
        T::ONE,
        Mat::new(xs, m, k),
        Mat::new(ws, n, k).t(),
        T::ZERO,
        &mut y,
        n,
    );
    if let Some(b) = bias {
        let bs = data::<T>(OP, "bias", b)?;
        for row in y.chunks_mut(n.max(1)) {
            for (yv, &bv) in row.iter_mut().zip(bs) {
                *yv += bv;
            }
        }
    }
    let mut hidden = None;
    if let Some(l) = lora {
        let r = d.rank;
        let a = data::<T>(OP, "lora down (A)", l.down)?;
        let b = data::<T>(OP, "lora up (B)", l.up)?;
        let mut u = vec![T::ZERO; m * r];
        gemm(
            T::ONE,
            Mat::new(xs, m, k),
            Mat::new(a, r, k).t(),
            T::ZERO,
            &mut u,
            r,
        );
        gemm(
            T::from_f64(l.scale),
            Mat::new(&u, m, r),
            Mat::new(b, n, r).t(),
            T::ONE,
            &mut y,
            n,
        );
        hidden = Some(tensor(x.shape().with_last(r), u)?);
    }
    Ok(LinearOut {
        y: tensor(x.shape().with_last(n), y)?,
        lora_hidden: hidden,
    })
}

pub fn backward(
    dy: &Tensor,
    w: &Tensor,
    lora: Option<LoraBackward<'_>>,
    want_dx: bool,
) -> Result<Option<Tensor>> {
    check::linear::backward(
        dy,
        w,
        lora.as_ref()
            .map(|l| (&l.lora, l.x, l.hidden, &*l.grad_down, &*l.grad_up)),
    )?;
    dispatch!("linear_backward", dy, backward_t(dy, w, lora, want_dx))
}

fn backward_t<T: Real>(
    dy: &Tensor,
    w: &Tensor,
    lora: Option<LoraBackward<'_>>,
    want_dx: bool,
) -> Result<Option<Tensor>> {
    const OP: &str = "linear_backward";
    let n = w.dims()[0];
    let k = w.dims()[1];
    let m = dy.shape().rows();
    let dys = data::<T>(OP, "dy", dy)?;
    let ws = data::<T>(OP, "w", w)?;
    let mut dx = want_dx.then(|| vec![T::ZERO; m * k]);
    if let Some(dx) = dx.as_mut() {
        gemm(
            T::ONE,
            Mat::new(dys, m, n),
            Mat::new(ws, n, k),
            T::ZERO,
            dx,
            k,
        );
    }
    if let Some(lb) = lora {
        let r = lb.lora.down.dims()[0];
        let s = T::from_f64(lb.lora.scale);
        let a = data::<T>(OP, "lora down (A)", lb.lora.down)?;
        let b = data::<T>(OP, "lora up (B)", lb.lora.up)?;
        let xs = data::<T>(OP, "x", lb.x)?;
        let u = data::<T>(OP, "lora hidden", lb.hidden)?;
        let beta = match lb.accum {
            Accum::Assign => T::ZERO,
            Accum::Add => T::ONE,
        };
        let mut g = vec![T::ZERO; m * r];
        gemm(
            T::ONE,
            Mat::new(dys, m, n),
            Mat::new(b, n, r),
            T::ZERO,
            &mut g,
            r,
        );
        let gu = data_mut::<T>(OP, "grad_up", lb.grad_up)?;
        gemm(s, Mat::new(dys, m, n).t(), Mat::new(u, m, r), beta, gu, r);
        let gd = data_mut::<T>(OP, "grad_down", lb.grad_down)?;
        gemm(s, Mat::new(&g, m, r).t(), Mat::new(xs, m, k), beta, gd, k);
        if let Some(dx) = dx.as_mut() {
            gemm(s, Mat::new(&g, m, r), Mat::new(a, r, k), T::ONE, dx, k);
        }
    }
    dx.map(|v| tensor(dy.shape().with_last(k), v)).transpose()
}
