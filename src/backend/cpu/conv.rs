//! 2-D convolution (square kernel, equal stride s and zero padding p on both axes), its input
//! and weight gradients, by im2col and GEMM, one image at a time; LoCon (a LoRA on the conv)
//! composed from them.
//!
//! Forward, x [N, C, H, W], w [O, C, k, k] viewed as W [O, C·k·k], for each image n:
//!   cols[(c·k + i)·k + j, oh·Wo + ow] = x[n, c, oh·s + i - p, ow·s + j - p]   (0 in the padding)
//!   y[n] = W·cols (+ bias[o] on row o)                        cols [C·k·k, Ho·Wo], y[n] [O, Ho·Wo]
//!   with Ho = (H + 2p - k)/s + 1 and Wo alike.
//! Input gradient, dy [N, O, Ho, Wo]:
//!   dcols = Wᵀ·dy[n]                                          [C·k·k, Ho·Wo]
//!   dx[n, c, oh·s + i - p, ow·s + j - p] += dcols[(c·k + i)·k + j, oh·Wo + ow]   (col2im)
//!   Input pixels no window reaches (the tail rows a stride skips) get exactly 0.
//! Weight gradient (`conv2d_weight_grad`), x and dy as above:
//!   dW (=|+=) scale·Σₙ dy[n]·cols(x[n])ᵀ                     [O, C·k·k], images and blocks in order
//! LoCon, down A [r, C, k, k] (the layer's stride and padding), up B [O, r, 1, 1]:
//!   ũ = conv(x, A) ⊙ mask, y += s·conv1x1(ũ, B)               (ũ returned for the backward)
//!   g = conv1x1ᵀ(dy, B) ⊙ mask, dx += s·convᵀ(g, A), dB (+)= s·wgrad(ũ, dy), dA (+)= s·wgrad(x, g)
//! A 1x1 kernel with stride 1 and no padding has cols = x[n] viewed as [C, H·W], so then
//! y[n] = W·x[n] and dx[n] = Wᵀ·dy[n] with no cols buffer at all.
//!
//! The cols matrix is built one block of output rows at a time, so its size stays near
//! `COLS_BUDGET` elements (at least one output row) instead of C·k·k·Ho·Wo, which is over
//! a gigabyte for the VAE at 512x512. The GEMMs are multithreaded; im2col runs one rayon task
//! per row of cols and col2im one per input channel (a channel's plane is written by its own
//! k·k rows of dcols only, so the scatter-add has no races).
//!
//! With `cpu_precision: bf16` the products with the frozen weight (W·cols and Wᵀ·dy) compute
//! in bf16 (gemm_bf16.rs); LoCon's adapter convolutions and every weight gradient stay f32.

use std::ops::Range;

use rayon::prelude::*;

use super::gemm::{gemm, gemm_frozen, Frozen, Mat, Side};
use super::{data, data_mut, dispatch, tensor, Real};
use super::{CpuBackend, CpuPrecision};
use crate::backend::check::conv::{ConvDims, LoraDims};
use crate::backend::{
    check, Accum, Adapter, AdapterBackward, Conv2d, ConvOps, ConvOut, Lora, LoraBackward,
};
use crate::error::Result;
use crate::tensor::Tensor;

/// Elements of the im2col buffer per block of output rows (16 MiB in f32).
const COLS_BUDGET: usize = 1 << 22;

impl ConvOps for CpuBackend {
    fn conv2d_out(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: Option<&Tensor>,
        p: Conv2d,
        adapter: Option<Adapter<'_>>,
    ) -> Result<ConvOut> {
        let d = check::conv::forward(x, w, bias, p)?;
        // The one adapter kind so far (a new kind of `Adapter` stops the build here).
        match adapter {
            None => Ok(ConvOut {
                y: dispatch!(
                    "conv2d",
                    x,
                    forward_t(x, w, bias, &d, COLS_BUDGET, self.precision)
                )?,
                lora_hidden: None,
            }),
            Some(Adapter::Lora(l)) => {
                let ld = check::conv::lora("conv2d", w, &d, &l)?;
                dispatch!(
                    "conv2d",
                    x,
                    forward_lora_t(x, w, bias, &d, &ld, &l, self.precision)
                )
            }
        }
    }

    fn conv2d_input_grad(
        &self,
        dy: &Tensor,
        w: &Tensor,
        input_hw: (usize, usize),
        p: Conv2d,
    ) -> Result<Tensor> {
        let d = check::conv::input_grad(dy, w, input_hw, p)?;
        dispatch!(
            "conv2d_input_grad",
            dy,
            input_grad_t(dy, w, &d, COLS_BUDGET, self.precision)
        )
    }

    fn conv2d_backward(
        &self,
        dy: &Tensor,
        w: &Tensor,
        input_hw: (usize, usize),
        p: Conv2d,
        adapter: Option<AdapterBackward<'_>>,
    ) -> Result<Tensor> {
        const OP: &str = "conv2d_backward";
        let d = check::conv::input_grad(dy, w, input_hw, p)?;
        // The one adapter kind so far (a new kind of `AdapterBackward` stops the build here).
        match adapter {
            None => dispatch!(OP, dy, input_grad_t(dy, w, &d, COLS_BUDGET, self.precision)),
            Some(AdapterBackward::Lora(lb)) => {
                let ld = check::conv::lora_backward(OP, w, &d, &lb)?;
                dispatch!(OP, dy, backward_lora_t(dy, w, &d, &ld, lb, self.precision))
            }
        }
    }

    fn conv2d_weight_grad(
        &self,
        x: &Tensor,
        dy: &Tensor,
        p: Conv2d,
        scale: f64,
        dw: &mut Tensor,
        accum: Accum,
    ) -> Result<()> {
        let d = check::conv::weight_grad(x, dy, dw, p)?;
        dispatch!(
            "conv2d_weight_grad",
            x,
            weight_grad_t(x, dy, &d, scale, dw, accum)
        )
    }
}

/// LoCon's forward by composition: y = conv(x, w) + bias + s·conv1x1(ũ, up) with
/// ũ = conv(x, down) ⊙ mask (returned for the backward); the adapter's convolutions in f32
/// whatever `precision` the frozen one takes.
fn forward_lora_t<T: Real>(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    d: &ConvDims,
    ld: &LoraDims,
    l: &Lora<'_>,
    precision: CpuPrecision,
) -> Result<ConvOut> {
    const OP: &str = "conv2d";
    const F32: CpuPrecision = CpuPrecision::F32;
    let mut y = forward_t::<T>(x, w, bias, d, COLS_BUDGET, precision)?;
    let mut u = forward_t::<T>(x, l.down, None, &ld.down, COLS_BUDGET, F32)?;
    if let Some(mask) = l.dropout {
        let mask = data::<T>(OP, "lora dropout mask", mask)?;
        apply_mask(data_mut::<T>(OP, "lora hidden", &mut u)?, mask);
    }
    let z = forward_t::<T>(&u, l.up, None, &ld.up, COLS_BUDGET, F32)?;
    let s = T::from_f64(l.scale);
    let zs = data::<T>(OP, "lora output", &z)?;
    for (y, &z) in data_mut::<T>(OP, "y", &mut y)?.iter_mut().zip(zs) {
        *y += s * z;
    }
    Ok(ConvOut {
        y,
        lora_hidden: Some(u),
    })
}

/// LoCon's backward by composition (the math is in [`ConvOps::conv2d_backward`]); the
/// adapter's products in f32 whatever `precision` the frozen one takes.
fn backward_lora_t<T: Real>(
    dy: &Tensor,
    w: &Tensor,
    d: &ConvDims,
    ld: &LoraDims,
    lb: LoraBackward<'_>,
    precision: CpuPrecision,
) -> Result<Tensor> {
    const OP: &str = "conv2d_backward";
    const F32: CpuPrecision = CpuPrecision::F32;
    let l = lb.lora;
    let mut dx = input_grad_t::<T>(dy, w, d, COLS_BUDGET, precision)?;
    let mut g = input_grad_t::<T>(dy, l.up, &ld.up, COLS_BUDGET, F32)?;
    if let Some(mask) = l.dropout {
        let mask = data::<T>(OP, "lora dropout mask", mask)?;
        apply_mask(data_mut::<T>(OP, "lora hidden gradient", &mut g)?, mask);
    }
    let dx_lora = input_grad_t::<T>(&g, l.down, &ld.down, COLS_BUDGET, F32)?;
    let s = T::from_f64(l.scale);
    let dl = data::<T>(OP, "lora dx", &dx_lora)?;
    for (a, &b) in data_mut::<T>(OP, "dx", &mut dx)?.iter_mut().zip(dl) {
        *a += s * b;
    }
    weight_grad_t::<T>(lb.hidden, dy, &ld.up, l.scale, lb.grad_up, lb.accum)?;
    weight_grad_t::<T>(lb.x, &g, &ld.down, l.scale, lb.grad_down, lb.accum)?;
    Ok(dx)
}

/// v ⊙= mask, elementwise (same lengths: the shapes were checked).
fn apply_mask<T: Real>(v: &mut [T], mask: &[T]) {
    for (x, &k) in v.iter_mut().zip(mask) {
        *x *= k;
    }
}

/// dw [O, C·k·k] (=|+=) scale·Σₙ dy[n] [O, Ho·Wo] · cols(x[n])ᵀ [Ho·Wo, C·k·k], image by
/// image and block by block in a fixed order (the same result on any thread count).
fn weight_grad_t<T: Real>(
    x: &Tensor,
    dy: &Tensor,
    d: &ConvDims,
    scale: f64,
    dw: &mut Tensor,
    accum: Accum,
) -> Result<()> {
    const OP: &str = "conv2d_weight_grad";
    let xs = data::<T>(OP, "x", x)?;
    let dys = data::<T>(OP, "dy", dy)?;
    let dws = data_mut::<T>(OP, "dw", dw)?;
    if accum == Accum::Assign {
        dws.fill(T::ZERO);
    }
    let s = T::from_f64(scale);
    let (in_img, out_plane) = (d.c * d.h * d.w, d.ho * d.wo);
    let out_img = d.o * out_plane;
    let ckk = d.c * d.k * d.k;
    if dws.is_empty() || out_plane == 0 {
        return Ok(());
    }
    let block = rows_per_block(d, COLS_BUDGET);
    let mut cols = if pointwise(d) {
        Vec::new()
    } else {
        vec![T::ZERO; ckk * block * d.wo]
    };
    for img in 0..d.n {
        let xn = &xs[img * in_img..(img + 1) * in_img];
        let dy_img = &dys[img * out_img..(img + 1) * out_img];
        if pointwise(d) {
            // dw [O, C] += s · dy[n] [O, H·W] · x[n]ᵀ [H·W, C].
            gemm(
                s,
                Mat::new(dy_img, d.o, out_plane),
                Mat::new(xn, d.c, out_plane).t(),
                T::ONE,
                dws,
                d.c,
            );
            continue;
        }
        for r0 in (0..d.ho).step_by(block) {
            let rows = r0..(r0 + block).min(d.ho);
            let ncols = rows.len() * d.wo;
            let cols = &mut cols[..ckk * ncols];
            im2col(xn, d, rows, cols);
            // dw [O, C·k·k] += s · (the block's columns of dy[n]) [O, ncols] · colsᵀ.
            gemm(
                s,
                Mat::strided(&dy_img[r0 * d.wo..], d.o, ncols, out_plane),
                Mat::new(cols, ckk, ncols).t(),
                T::ONE,
                dws,
                ckk,
            );
        }
    }
    Ok(())
}

/// Whether cols would equal the input itself (1x1 kernel, stride 1, no padding).
fn pointwise(d: &ConvDims) -> bool {
    d.k == 1 && d.stride == 1 && d.padding == 0
}

/// Output rows per im2col block: as many as fit in `budget` elements, at least one.
fn rows_per_block(d: &ConvDims, budget: usize) -> usize {
    let row = d.c * d.k * d.k * d.wo;
    (budget / row.max(1)).clamp(1, d.ho.max(1))
}

/// The output indices o in 0..out_len whose input index o·s + kk - p lies in 0..in_len,
/// for kernel offset kk: a contiguous range (empty when none does).
fn valid(out_len: usize, in_len: usize, kk: usize, s: usize, p: usize) -> Range<usize> {
    // o·s + kk >= p  <=>  o >= ceil((p - kk) / s)
    let lo = if p > kk { (p - kk).div_ceil(s) } else { 0 };
    // o·s + kk - p <= in_len - 1  <=>  o <= (in_len + p - kk - 1) / s
    let hi = if in_len + p > kk {
        ((in_len + p - kk - 1) / s + 1).min(out_len)
    } else {
        0
    };
    lo.min(hi)..hi
}

fn forward_t<T: Real>(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    d: &ConvDims,
    budget: usize,
    precision: CpuPrecision,
) -> Result<Tensor> {
    const OP: &str = "conv2d";
    let xs = data::<T>(OP, "x", x)?;
    let ws = data::<T>(OP, "w", w)?;
    let bs = bias.map(|b| data::<T>(OP, "bias", b)).transpose()?;
    let (in_img, out_plane) = (d.c * d.h * d.w, d.ho * d.wo);
    let out_img = d.o * out_plane;
    let ckk = d.c * d.k * d.k;
    let mut y = vec![T::ZERO; d.n * out_img];
    if y.is_empty() {
        return tensor(d.output_shape(), y);
    }
    let block = rows_per_block(d, budget);
    let mut cols = if pointwise(d) {
        Vec::new()
    } else {
        vec![T::ZERO; ckk * block * d.wo]
    };
    for img in 0..d.n {
        let xn = &xs[img * in_img..(img + 1) * in_img];
        let yn = &mut y[img * out_img..(img + 1) * out_img];
        if pointwise(d) {
            // y[n] [O, H·W] = W [O, C] · x[n] [C, H·W]; beta = 0 overwrites y[n].
            gemm_frozen(
                Frozen {
                    precision,
                    weight: w,
                    side: Side::A,
                },
                T::ONE,
                Mat::new(ws, d.o, d.c),
                Mat::new(xn, d.c, out_plane),
                T::ZERO,
                yn,
                out_plane,
            );
        } else {
            for r0 in (0..d.ho).step_by(block) {
                let rows = r0..(r0 + block).min(d.ho);
                let ncols = rows.len() * d.wo;
                let cols = &mut cols[..ckk * ncols];
                im2col(xn, d, rows.clone(), cols);
                // The block's columns of y[n]: rows of O, ldc = Ho·Wo. beta = 0 overwrites.
                gemm_frozen(
                    Frozen {
                        precision,
                        weight: w,
                        side: Side::A,
                    },
                    T::ONE,
                    Mat::new(ws, d.o, ckk),
                    Mat::new(cols, ckk, ncols),
                    T::ZERO,
                    &mut yn[r0 * d.wo..],
                    out_plane,
                );
            }
        }
        if let Some(bs) = bs {
            yn.par_chunks_mut(out_plane)
                .zip(bs.par_iter())
                .for_each(|(plane, &b)| plane.iter_mut().for_each(|v| *v += b));
        }
    }
    tensor(d.output_shape(), y)
}

/// Fills cols [C·k·k, rows.len()·Wo] for the output rows `rows` of one image xn [C, H, W].
/// Every element is written (padding as 0), so the reused buffer's old contents never leak.
fn im2col<T: Real>(xn: &[T], d: &ConvDims, rows: Range<usize>, cols: &mut [T]) {
    let (k, s, p) = (d.k, d.stride, d.padding);
    let ncols = rows.len() * d.wo;
    if ncols == 0 {
        return;
    }
    cols.par_chunks_mut(ncols)
        .enumerate()
        .for_each(|(row, dst)| {
            let (c, i, j) = (row / (k * k), row / k % k, row % k);
            let plane = &xn[c * d.h * d.w..(c + 1) * d.h * d.w];
            let oh_ok = valid(d.ho, d.h, i, s, p);
            let ow_ok = valid(d.wo, d.w, j, s, p);
            for (oh, out) in rows.clone().zip(dst.chunks_exact_mut(d.wo)) {
                if !oh_ok.contains(&oh) {
                    out.fill(T::ZERO);
                    continue;
                }
                let ih = oh * s + i - p;
                let src = &plane[ih * d.w..(ih + 1) * d.w];
                out[..ow_ok.start].fill(T::ZERO);
                out[ow_ok.end..].fill(T::ZERO);
                if s == 1 {
                    // iw = ow + j - p: a contiguous run of the input row.
                    let iw0 = ow_ok.start + j - p;
                    out[ow_ok.clone()].copy_from_slice(&src[iw0..iw0 + ow_ok.len()]);
                } else {
                    for ow in ow_ok.clone() {
                        out[ow] = src[ow * s + j - p];
                    }
                }
            }
        });
}

fn input_grad_t<T: Real>(
    dy: &Tensor,
    w: &Tensor,
    d: &ConvDims,
    budget: usize,
    precision: CpuPrecision,
) -> Result<Tensor> {
    const OP: &str = "conv2d_input_grad";
    let dys = data::<T>(OP, "dy", dy)?;
    let ws = data::<T>(OP, "w", w)?;
    let (in_plane, out_plane) = (d.h * d.w, d.ho * d.wo);
    let (in_img, out_img) = (d.c * in_plane, d.o * out_plane);
    let ckk = d.c * d.k * d.k;
    // Zeroed: col2im adds into it, block after block.
    let mut dx = vec![T::ZERO; d.n * in_img];
    if dx.is_empty() {
        return tensor(d.input_shape(), dx);
    }
    let block = rows_per_block(d, budget);
    let mut dcols = if pointwise(d) {
        Vec::new()
    } else {
        vec![T::ZERO; ckk * block * d.wo]
    };
    for img in 0..d.n {
        let dy_img = &dys[img * out_img..(img + 1) * out_img];
        let dxn = &mut dx[img * in_img..(img + 1) * in_img];
        if pointwise(d) {
            // dx[n] [C, H·W] = Wᵀ [C, O] · dy[n] [O, H·W]; beta = 0 overwrites dx[n].
            gemm_frozen(
                Frozen {
                    precision,
                    weight: w,
                    side: Side::A,
                },
                T::ONE,
                Mat::new(ws, d.o, d.c).t(),
                Mat::new(dy_img, d.o, out_plane),
                T::ZERO,
                dxn,
                in_plane,
            );
            continue;
        }
        for r0 in (0..d.ho).step_by(block) {
            let rows = r0..(r0 + block).min(d.ho);
            let ncols = rows.len() * d.wo;
            let dcols = &mut dcols[..ckk * ncols];
            // dcols [C·k·k, ncols] = Wᵀ [C·k·k, O] · (the block's columns of dy[n]) [O, ncols];
            // beta = 0 overwrites the reused buffer.
            gemm_frozen(
                Frozen {
                    precision,
                    weight: w,
                    side: Side::A,
                },
                T::ONE,
                Mat::new(ws, d.o, ckk).t(),
                Mat::strided(&dy_img[r0 * d.wo..], d.o, ncols, out_plane),
                T::ZERO,
                dcols,
                ncols,
            );
            col2im(dcols, d, rows, dxn);
        }
    }
    tensor(d.input_shape(), dx)
}

/// Adds dcols [C·k·k, rows.len()·Wo] (the output rows `rows`) into dxn [C, H, W]: the
/// transpose of `im2col`. One task per channel: channel c's plane receives only the rows
/// (c, i, j) of dcols.
fn col2im<T: Real>(dcols: &[T], d: &ConvDims, rows: Range<usize>, dxn: &mut [T]) {
    let (k, s, p) = (d.k, d.stride, d.padding);
    let ncols = rows.len() * d.wo;
    let in_plane = d.h * d.w;
    if ncols == 0 || in_plane == 0 {
        return;
    }
    dxn.par_chunks_mut(in_plane)
        .enumerate()
        .for_each(|(c, plane)| {
            for i in 0..k {
                let oh_ok = valid(d.ho, d.h, i, s, p);
                for j in 0..k {
                    let ow_ok = valid(d.wo, d.w, j, s, p);
                    let row = (c * k + i) * k + j;
                    let src = &dcols[row * ncols..(row + 1) * ncols];
                    for (oh, g) in rows.clone().zip(src.chunks_exact(d.wo)) {
                        if !oh_ok.contains(&oh) {
                            continue;
                        }
                        let ih = oh * s + i - p;
                        let dst = &mut plane[ih * d.w..(ih + 1) * d.w];
                        if s == 1 {
                            // iw = ow + j - p: a contiguous run of the input row.
                            let iw0 = ow_ok.start + j - p;
                            let dst = &mut dst[iw0..iw0 + ow_ok.len()];
                            for (x, &v) in dst.iter_mut().zip(&g[ow_ok.clone()]) {
                                *x += v;
                            }
                        } else {
                            for ow in ow_ok.clone() {
                                dst[ow * s + j - p] += g[ow];
                            }
                        }
                    }
                }
            }
        });
}

#[cfg(test)]
mod tests {
    //! The blocking of cols must not change results: one output row per block against one
    //! block for the whole image, with a poisoned batch neighbour to catch stale buffers.
    use super::*;
    use crate::rng::Rng;

    fn rand(rng: &mut Rng, shape: &[usize]) -> Tensor {
        let n = shape.iter().product();
        Tensor::from_f64(shape, rng.normal_vec(n)).unwrap()
    }

    #[test]
    fn blocks_of_rows_match_one_block() {
        let mut rng = Rng::new(11);
        for (h, wd, k, s, p) in [(7, 9, 3, 2, 1), (6, 5, 3, 1, 1), (5, 5, 1, 2, 0)] {
            let conv = Conv2d {
                stride: s,
                padding: p,
            };
            let x = rand(&mut rng, &[2, 3, h, wd]);
            let w = rand(&mut rng, &[4, 3, k, k]);
            let b = rand(&mut rng, &[4]);
            let d = check::conv::forward(&x, &w, Some(&b), conv).unwrap();
            let one =
                forward_t::<f64>(&x, &w, Some(&b), &d, usize::MAX, CpuPrecision::F32).unwrap();
            let rows = forward_t::<f64>(&x, &w, Some(&b), &d, 1, CpuPrecision::F32).unwrap();
            let (a, b) = (one.to_f64_vec(), rows.to_f64_vec());
            let err = a
                .iter()
                .zip(&b)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f64::max);
            assert!(err < 1e-12, "forward {h}x{wd} k{k} s{s}: {err}");
            let dy = rand(&mut rng, d.output_shape().dims());
            let one = input_grad_t::<f64>(&dy, &w, &d, usize::MAX, CpuPrecision::F32).unwrap();
            let rows = input_grad_t::<f64>(&dy, &w, &d, 1, CpuPrecision::F32).unwrap();
            let (a, b) = (one.to_f64_vec(), rows.to_f64_vec());
            let err = a
                .iter()
                .zip(&b)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f64::max);
            assert!(err < 1e-12, "input grad {h}x{wd} k{k} s{s}: {err}");
        }
    }

    #[test]
    fn stale_blocks_do_not_leak() {
        // Image 0 is all NaN; image 1 must come out as if it were alone, block by block.
        let mut rng = Rng::new(12);
        let conv = Conv2d {
            stride: 2,
            padding: 1,
        };
        let mut xv = vec![f64::NAN; 3 * 7 * 6];
        let x1 = rng.normal_vec(3 * 7 * 6);
        xv.extend(&x1);
        let x = Tensor::from_f64([2, 3, 7, 6], xv).unwrap();
        let alone = Tensor::from_f64([1, 3, 7, 6], x1).unwrap();
        let w = rand(&mut rng, &[5, 3, 3, 3]);
        let d = check::conv::forward(&x, &w, None, conv).unwrap();
        let d1 = check::conv::forward(&alone, &w, None, conv).unwrap();
        let y = forward_t::<f64>(&x, &w, None, &d, 1, CpuPrecision::F32)
            .unwrap()
            .to_f64_vec();
        let y1 = forward_t::<f64>(&alone, &w, None, &d1, 1, CpuPrecision::F32)
            .unwrap()
            .to_f64_vec();
        assert_eq!(&y[y.len() / 2..], &y1[..]);

        let mut dyv = vec![f64::NAN; 5 * 4 * 3];
        let dy1 = rng.normal_vec(5 * 4 * 3);
        dyv.extend(&dy1);
        let dy = Tensor::from_f64([2, 5, 4, 3], dyv).unwrap();
        let dy_alone = Tensor::from_f64([1, 5, 4, 3], dy1).unwrap();
        let dx = input_grad_t::<f64>(&dy, &w, &d, 1, CpuPrecision::F32)
            .unwrap()
            .to_f64_vec();
        let dx1 = input_grad_t::<f64>(&dy_alone, &w, &d1, 1, CpuPrecision::F32)
            .unwrap()
            .to_f64_vec();
        assert_eq!(&dx[dx.len() / 2..], &dx1[..]);
    }
}
