//! DoRA's weight decomposition (lora/dora.rs), row by row over W' [rows, n]:
//!
//!   weight_decompose:          ‖W'ᵢ‖ = sqrt(Σ_c W'ᵢc²), ν = ‖W'ᵢ‖ + eps, Vᵢ = W'ᵢ·mᵢ/ν
//!   weight_decompose_backward: rᵢ = Σ_c Gᵢc·W'ᵢc, dmᵢ = rᵢ/ν,
//!                              dW'ᵢ = (mᵢ/ν)·(Gᵢ − rᵢ·W'ᵢ/(ν·‖W'ᵢ‖))  (second term 0 when ‖W'ᵢ‖ = 0)
//!
//! Both return fresh tensors (`=`); the row norms come back [rows], dm in m's shape.

use rayon::prelude::*;

use super::CpuBackend;
use super::{data, dispatch, tensor, Real};
use crate::backend::{check, DecomposeOps};
use crate::error::Result;
use crate::tensor::Tensor;

impl DecomposeOps for CpuBackend {
    fn weight_decompose(&self, w: &Tensor, m: &Tensor, eps: f64) -> Result<(Tensor, Tensor)> {
        const OP: &str = "weight_decompose";
        let (rows, n) = check::decompose::forward(OP, w, m)?;
        dispatch!(OP, w, forward_t(w, m, eps, rows, n))
    }

    fn weight_decompose_backward(
        &self,
        g: &Tensor,
        w: &Tensor,
        m: &Tensor,
        norm: &Tensor,
        eps: f64,
    ) -> Result<(Tensor, Tensor)> {
        const OP: &str = "weight_decompose_backward";
        let (rows, n) = check::decompose::backward(OP, g, w, m, norm)?;
        dispatch!(OP, w, backward_t(g, w, m, norm, eps, rows, n))
    }
}

fn forward_t<T: Real>(
    w: &Tensor,
    m: &Tensor,
    eps: f64,
    rows: usize,
    n: usize,
) -> Result<(Tensor, Tensor)> {
    const OP: &str = "weight_decompose";
    let (wv, mv) = (data::<T>(OP, "w", w)?, data::<T>(OP, "m", m)?);
    let eps = T::from_f64(eps);
    let mut v = vec![T::ZERO; rows * n];
    let mut norm = vec![T::ZERO; rows];
    if n > 0 {
        v.par_chunks_mut(n)
            .zip(norm.par_iter_mut())
            .enumerate()
            .for_each(|(i, (vr, nr))| {
                let wr = &wv[i * n..(i + 1) * n];
                *nr = wr.iter().fold(T::ZERO, |a, &x| a + x * x).sqrt();
                let s = mv[i] / (*nr + eps);
                vr.iter_mut().zip(wr).for_each(|(v, &x)| *v = x * s);
            });
    }
    Ok((tensor([rows, n], v)?, tensor([rows], norm)?))
}

fn backward_t<T: Real>(
    g: &Tensor,
    w: &Tensor,
    m: &Tensor,
    norm: &Tensor,
    eps: f64,
    rows: usize,
    n: usize,
) -> Result<(Tensor, Tensor)> {
    const OP: &str = "weight_decompose_backward";
    let (gv, wv) = (data::<T>(OP, "g", g)?, data::<T>(OP, "w", w)?);
    let (mv, nv) = (data::<T>(OP, "m", m)?, data::<T>(OP, "norm", norm)?);
    let eps = T::from_f64(eps);
    let mut dw = vec![T::ZERO; rows * n];
    let mut dm = vec![T::ZERO; rows];
    let row = |i: usize, dwr: &mut [T], dmr: &mut T| {
        let (gr, wr) = (&gv[i * n..(i + 1) * n], &wv[i * n..(i + 1) * n]);
        let r = gr.iter().zip(wr).fold(T::ZERO, |a, (&g, &x)| a + g * x);
        let nu = nv[i] + eps;
        *dmr = r / nu;
        let a = mv[i] / nu;
        let b = if nv[i] > T::ZERO {
            r / (nu * nv[i])
        } else {
            T::ZERO
        };
        for ((d, &g), &x) in dwr.iter_mut().zip(gr).zip(wr) {
            *d = a * (g - b * x);
        }
    };
    if n > 0 {
        dw.par_chunks_mut(n)
            .zip(dm.par_iter_mut())
            .enumerate()
            .for_each(|(i, (dwr, dmr))| row(i, dwr, dmr));
    } else {
        dm.iter_mut()
            .enumerate()
            .for_each(|(i, d)| row(i, &mut [], d));
    }
    Ok((tensor([rows, n], dw)?, tensor(m.shape().clone(), dm)?))
}
