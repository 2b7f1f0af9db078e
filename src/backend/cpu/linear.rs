//! Linear layer with an optional LoRA term and optional LoRA dropout, forward and backward
//! (W frozen).
//!
//! Forward, x [M, in] (M = all leading dims), W [out, in], A [r, in], B [out, r], s = alpha/r,
//! and an optional pre-scaled keep mask K [M, r] (each element 0 or 1/(1−p); none: all ones):
//!   u = x·Aᵀ                [M, r]
//!   ũ = u ⊙ K               [M, r]   (returned as `lora_hidden`, saved for the backward)
//!   y = x·Wᵀ + b + s·ũ·Bᵀ   [M, out]
//! This is kohya's `network_dropout` (networks/lora.py, LoRAModule.forward): inverted
//! dropout, `torch.nn.functional.dropout(lora_down(x), p)`, on lora_down's output only,
//! before lora_up and the scale; the caller draws K and hands the same K to the backward.
//! Backward, dY [M, out]:
//!   g  = (dY·B) ⊙ K         [M, r]
//!   dB (+)= s·dYᵀ·ũ         [out, r]
//!   dA (+)= s·gᵀ·x          [r, in]
//!   dX  = dY·W + s·g·A      [M, in]   (only when asked: the backward stops at the first LoRA)
//! dA and dB are `=` on the first micro-batch of a step and `+=` after (`Accum`). Without a
//! mask no multiply happens at all, so results are bit-identical to a LoRA without dropout;
//! an all-ones mask (p = 0) gives the same numbers too, as x·1 = x exactly.
//! With `cpu_precision: bf16` the two products with W (x·Wᵀ and dY·W) compute in bf16
//! (gemm_bf16.rs); the adapter's products stay f32.

use super::gemm::{gemm, gemm_frozen, Frozen, Mat, Side};
use super::{data, data_mut, dispatch, tensor, Real};
use super::{CpuBackend, CpuPrecision};
use crate::backend::{
    check, Accum, Adapter, AdapterBackward, LinearOps, LinearOut, Lora, LoraBackward,
};
use crate::error::Result;
use crate::tensor::Tensor;

impl LinearOps for CpuBackend {
    fn linear(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: Option<&Tensor>,
        adapter: Option<Adapter<'_>>,
    ) -> Result<LinearOut> {
        // The one adapter kind so far (a new kind of `Adapter` stops the build here).
        let lora = adapter.map(|Adapter::Lora(l)| l);
        dispatch!("linear", x, forward_t(x, w, bias, lora, self.precision))
    }

    fn linear_backward(
        &self,
        dy: &Tensor,
        w: &Tensor,
        adapter: Option<AdapterBackward<'_>>,
        want_dx: bool,
    ) -> Result<Option<Tensor>> {
        // The one adapter kind so far (a new kind of `AdapterBackward` stops the build here).
        let lora = adapter.map(|AdapterBackward::Lora(l)| l);
        check::linear::backward(
            dy,
            w,
            lora.as_ref()
                .map(|l| (&l.lora, l.x, l.hidden, &*l.grad_down, &*l.grad_up)),
        )?;
        dispatch!(
            "linear_backward",
            dy,
            backward_t(dy, w, lora, want_dx, self.precision)
        )
    }
}

fn forward_t<T: Real>(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    lora: Option<Lora<'_>>,
    precision: CpuPrecision,
) -> Result<LinearOut> {
    const OP: &str = "linear";
    let d = check::linear::forward(x, w, bias, lora.as_ref())?;
    let (m, k, n) = (d.rows, d.in_features, d.out_features);
    let xs = data::<T>(OP, "x", x)?;
    let ws = data::<T>(OP, "w", w)?;
    let mut y = vec![T::ZERO; m * n];
    gemm_frozen(
        Frozen {
            precision,
            weight: w,
            side: Side::B,
        },
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
        if let Some(mask) = l.dropout {
            apply_mask(&mut u, data::<T>(OP, "lora dropout mask", mask)?);
        }
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

fn backward_t<T: Real>(
    dy: &Tensor,
    w: &Tensor,
    lora: Option<LoraBackward<'_>>,
    want_dx: bool,
    precision: CpuPrecision,
) -> Result<Option<Tensor>> {
    const OP: &str = "linear_backward";
    let n = w.dims()[0];
    let k = w.dims()[1];
    let m = dy.shape().rows();
    let dys = data::<T>(OP, "dy", dy)?;
    let ws = data::<T>(OP, "w", w)?;
    let mut dx = want_dx.then(|| vec![T::ZERO; m * k]);
    if let Some(dx) = dx.as_mut() {
        gemm_frozen(
            Frozen {
                precision,
                weight: w,
                side: Side::B,
            },
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
        let mask = lb
            .lora
            .dropout
            .map(|t| data::<T>(OP, "lora dropout mask", t))
            .transpose()?;
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
        if let Some(mask) = mask {
            apply_mask(&mut g, mask);
        }
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

/// v ⊙= mask, elementwise (same lengths: the shapes were checked).
fn apply_mask<T: Real>(v: &mut [T], mask: &[T]) {
    for (x, &k) in v.iter_mut().zip(mask) {
        *x *= k;
    }
}
