//! Layout ops: data movement only, no arithmetic but the sums of the upsampling gradient.
//!
//!   upsample_nearest2x:          y[n, c, 2i + a, 2j + b] = x[n, c, i, j]   (a, b in {0, 1})
//!   upsample_nearest2x_backward: dx[n, c, i, j] = Σ_{a,b} dy[n, c, 2i + a, 2j + b]
//!   concat_channels:             y[n] = a[n] ++ b[n]   ([Ca, ..] then [Cb, ..], per image)
//!   split_channels:              its gradient: dy[n] cut after Ca channels
//!   nchw_to_nlc:                 y[n] = x[n]ᵀ, x[n] viewed as [C, H·W] -> [H·W, C]
//!   nlc_to_nchw:                 y[n] = x[n]ᵀ, [L, C] -> [C, L] viewed as [C, h, w]
//!   pad2d:                       y[n, c, top + i, left + j] = x[n, c, i, j], zeros elsewhere
//!   embedding:                   y[i] = table[ids[i]]   (rows of a frozen table)
//! nchw_to_nlc and nlc_to_nchw are each other's inverse, hence each other's gradient.
//! Work is spread with rayon per channel plane (upsampling), per image (concat, split) and
//! per block of output rows within an image (transposes).

use rayon::prelude::*;

use super::CpuBackend;
use super::{data, dispatch, tensor, Real};
use crate::backend::check::layout::ConcatDims;
use crate::backend::{check, LayoutOps, Pad2d};
use crate::error::Result;
use crate::tensor::Tensor;

impl LayoutOps for CpuBackend {
    fn upsample_nearest2x(&self, x: &Tensor) -> Result<Tensor> {
        let d = check::layout::upsample(x)?;
        dispatch!("upsample_nearest2x", x, upsample_t(x, d))
    }

    fn upsample_nearest2x_backward(&self, dy: &Tensor) -> Result<Tensor> {
        let d = check::layout::upsample_backward(dy)?;
        dispatch!(
            "upsample_nearest2x_backward",
            dy,
            upsample_backward_t(dy, d)
        )
    }

    fn concat_channels(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        let d = check::layout::concat(a, b)?;
        dispatch!("concat_channels", a, concat_t(a, b, d))
    }

    fn split_channels(&self, dy: &Tensor, ca: usize) -> Result<(Tensor, Tensor)> {
        let d = check::layout::split(dy, ca)?;
        dispatch!("split_channels", dy, split_t(dy, d))
    }

    fn pad2d(&self, x: &Tensor, pad: Pad2d) -> Result<Tensor> {
        let d = check::layout::pad2d(x, pad)?;
        dispatch!("pad2d", x, pad2d_t(x, pad, d))
    }

    fn nchw_to_nlc(&self, x: &Tensor) -> Result<Tensor> {
        let d = check::layout::nchw_to_nlc(x)?;
        dispatch!("nchw_to_nlc", x, nchw_to_nlc_t(x, d))
    }

    fn nlc_to_nchw(&self, x: &Tensor, h: usize, w: usize) -> Result<Tensor> {
        let d = check::layout::nlc_to_nchw(x, h, w)?;
        dispatch!("nlc_to_nchw", x, nlc_to_nchw_t(x, d))
    }

    fn embedding(&self, table: &Tensor, ids: &[u32]) -> Result<Tensor> {
        const OP: &str = "embedding";
        check::rank(OP, "table", table, 2, "[vocab, channels]")?;
        let vocab = table.dims()[0];
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= vocab) {
            return Err(check::bad_value(
                OP,
                "id",
                bad,
                &format!(
                    "below the vocabulary size {vocab} of table {}",
                    table.shape()
                ),
            ));
        }
        dispatch!(OP, table, embedding_t(table, ids))
    }
}

fn upsample_t<T: Real>(x: &Tensor, [n, c, h, w]: [usize; 4]) -> Result<Tensor> {
    let xs = data::<T>("upsample_nearest2x", "x", x)?;
    let mut y = vec![T::ZERO; xs.len() * 4];
    let shape = [n, c, 2 * h, 2 * w];
    if y.is_empty() {
        return tensor(shape, y);
    }
    // One task per (n, c) plane: [H, W] -> [2H, 2W].
    y.par_chunks_mut(4 * h * w)
        .zip(xs.par_chunks(h * w))
        .for_each(|(out, src)| {
            for (rows, srow) in out.chunks_exact_mut(4 * w).zip(src.chunks_exact(w)) {
                // rows = output rows 2i and 2i + 1, each 2W long.
                let (even, odd) = rows.split_at_mut(2 * w);
                for (pair, &v) in even.chunks_exact_mut(2).zip(srow) {
                    pair.fill(v);
                }
                odd.copy_from_slice(even);
            }
        });
    tensor(shape, y)
}

fn upsample_backward_t<T: Real>(dy: &Tensor, [n, c, h, w]: [usize; 4]) -> Result<Tensor> {
    let dys = data::<T>("upsample_nearest2x_backward", "dy", dy)?;
    let mut dx = vec![T::ZERO; n * c * h * w];
    if dx.is_empty() {
        return tensor([n, c, h, w], dx);
    }
    // One task per plane: each dx element is the sum of its 2x2 block of dy; every element is
    // written, none accumulated.
    dx.par_chunks_mut(h * w)
        .zip(dys.par_chunks(4 * h * w))
        .for_each(|(out, src)| {
            for (orow, rows) in out.chunks_exact_mut(w).zip(src.chunks_exact(4 * w)) {
                let (even, odd) = rows.split_at(2 * w);
                for ((o, e), d) in orow
                    .iter_mut()
                    .zip(even.chunks_exact(2))
                    .zip(odd.chunks_exact(2))
                {
                    *o = (e[0] + e[1]) + (d[0] + d[1]);
                }
            }
        });
    tensor([n, c, h, w], dx)
}

/// The shape of `like` with the channel dim (1) replaced by `c`.
fn with_channels(like: &Tensor, c: usize) -> Vec<usize> {
    let mut d = like.dims().to_vec();
    d[1] = c;
    d
}

fn concat_t<T: Real>(a: &Tensor, b: &Tensor, d: ConcatDims) -> Result<Tensor> {
    const OP: &str = "concat_channels";
    let (av, bv) = (data::<T>(OP, "a", a)?, data::<T>(OP, "b", b)?);
    let (la, lb) = (d.ca * d.inner, d.cb * d.inner);
    let mut y = vec![T::ZERO; d.n * (la + lb)];
    let shape = with_channels(a, d.ca + d.cb);
    if y.is_empty() {
        return tensor(shape, y);
    }
    // Per image: a's channels, then b's. Every element is written.
    y.par_chunks_mut(la + lb)
        .enumerate()
        .for_each(|(img, out)| {
            out[..la].copy_from_slice(&av[img * la..(img + 1) * la]);
            out[la..].copy_from_slice(&bv[img * lb..(img + 1) * lb]);
        });
    tensor(shape, y)
}

fn split_t<T: Real>(dy: &Tensor, d: ConcatDims) -> Result<(Tensor, Tensor)> {
    let dys = data::<T>("split_channels", "dy", dy)?;
    let (la, lb) = (d.ca * d.inner, d.cb * d.inner);
    let mut da = vec![T::ZERO; d.n * la];
    let mut db = vec![T::ZERO; d.n * lb];
    if la + lb > 0 {
        // Per image, the first Ca channels go to da and the rest to db. Every element is
        // written; an empty side is skipped (chunks of zero length are not allowed).
        let images = dys.par_chunks(la + lb);
        match (la, lb) {
            (0, _) => images
                .zip(db.par_chunks_mut(lb))
                .for_each(|(src, b)| b.copy_from_slice(src)),
            (_, 0) => images
                .zip(da.par_chunks_mut(la))
                .for_each(|(src, a)| a.copy_from_slice(src)),
            _ => images
                .zip(da.par_chunks_mut(la))
                .zip(db.par_chunks_mut(lb))
                .for_each(|((src, a), b)| {
                    a.copy_from_slice(&src[..la]);
                    b.copy_from_slice(&src[la..]);
                }),
        }
    }
    Ok((
        tensor(with_channels(dy, d.ca), da)?,
        tensor(with_channels(dy, d.cb), db)?,
    ))
}

fn nchw_to_nlc_t<T: Real>(x: &Tensor, [n, c, h, w]: [usize; 4]) -> Result<Tensor> {
    let xs = data::<T>("nchw_to_nlc", "x", x)?;
    // Per image: [C, H·W] -> [H·W, C].
    let y = transpose_images(xs, n, c, h * w);
    tensor([n, h * w, c], y)
}

fn nlc_to_nchw_t<T: Real>(x: &Tensor, [n, c, h, w]: [usize; 4]) -> Result<Tensor> {
    let xs = data::<T>("nlc_to_nchw", "x", x)?;
    // Per image: [L, C] -> [C, L], L = h·w.
    let y = transpose_images(xs, n, h * w, c);
    tensor([n, c, h, w], y)
}

/// Output rows per transpose task: each task streams its TILE-long run of every source row,
/// so it keeps only TILE destination cache lines hot.
const TILE: usize = 32;

/// src holds n row-major [rows, cols] matrices; returns their transposes [cols, rows].
fn transpose_images<T: Real>(src: &[T], n: usize, rows: usize, cols: usize) -> Vec<T> {
    let img = rows * cols;
    let mut dst = vec![T::ZERO; n * img];
    if img == 0 {
        return dst;
    }
    dst.par_chunks_mut(img)
        .zip(src.par_chunks(img))
        .for_each(|(d, s)| {
            // Task t writes destination rows (source columns) c0..c0 + nc, all of them.
            d.par_chunks_mut(TILE * rows)
                .enumerate()
                .for_each(|(t, blk)| {
                    let c0 = t * TILE;
                    let nc = blk.len() / rows;
                    for (r, srow) in s.chunks_exact(cols).enumerate() {
                        for (j, &v) in srow[c0..c0 + nc].iter().enumerate() {
                            blk[j * rows + r] = v;
                        }
                    }
                });
        });
    dst
}

fn pad2d_t<T: Real>(x: &Tensor, p: Pad2d, [n, c, h, w]: [usize; 4]) -> Result<Tensor> {
    let xs = data::<T>("pad2d", "x", x)?;
    let (ho, wo) = (p.top + h + p.bottom, p.left + w + p.right);
    let mut y = vec![T::ZERO; n * c * ho * wo];
    if h * w > 0 {
        y.par_chunks_mut(ho * wo)
            .zip(xs.par_chunks(h * w))
            .for_each(|(yp, xp)| {
                for (i, row) in xp.chunks(w).enumerate() {
                    let at = (p.top + i) * wo + p.left;
                    yp[at..at + w].copy_from_slice(row);
                }
            });
    }
    tensor([n, c, ho, wo], y)
}

fn embedding_t<T: Real>(table: &Tensor, ids: &[u32]) -> Result<Tensor> {
    let c = table.dims()[1];
    let ts = data::<T>("embedding", "table", table)?;
    let mut out = Vec::with_capacity(ids.len() * c);
    for &i in ids {
        out.extend_from_slice(&ts[i as usize * c..(i as usize + 1) * c]);
    }
    tensor([ids.len(), c], out)
}
