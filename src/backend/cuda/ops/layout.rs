//! Layout ops (kernels/layout.cu): upsampling and its gradient, channel concat and split,
//! zero padding, NCHW <-> NLC transposes, and the embedding lookup.

use super::super::backend::CudaBackend;
use super::super::launch::{kernels, In, LaunchCfg, Out};
use super::super::tiles::{TR_ROWS, TR_TILE};
use super::{alloc, buffer, by_dtype, float_dtype, input, int, output, BLOCK};
use crate::backend::check::layout::ConcatDims;
use crate::backend::{check, LayoutOps, Pad2d};
use crate::error::Result;
use crate::tensor::{DType, Tensor};

kernels! {
    module "layout";
    fn upsample2x_f32(x: In, y: Out, h: i32, w: i32, n: i32);
    fn upsample2x_f16(x: In, y: Out, h: i32, w: i32, n: i32);
    fn upsample2x_bf16(x: In, y: Out, h: i32, w: i32, n: i32);
    fn upsample2x_bwd_f32(dy: In, dx: Out, h: i32, w: i32, n: i32);
    fn upsample2x_bwd_f16(dy: In, dx: Out, h: i32, w: i32, n: i32);
    fn upsample2x_bwd_bf16(dy: In, dx: Out, h: i32, w: i32, n: i32);
    fn concat_f32(a: In, b: In, y: Out, la: i32, lb: i32, n: i32);
    fn concat_f16(a: In, b: In, y: Out, la: i32, lb: i32, n: i32);
    fn concat_bf16(a: In, b: In, y: Out, la: i32, lb: i32, n: i32);
    fn split_f32(dy: In, da: Out, db: Out, la: i32, lb: i32, n: i32);
    fn split_f16(dy: In, da: Out, db: Out, la: i32, lb: i32, n: i32);
    fn split_bf16(dy: In, da: Out, db: Out, la: i32, lb: i32, n: i32);
    fn pad2d_f32(x: In, y: Out, h: i32, w: i32, top: i32, left: i32, ho: i32, wo: i32, n: i32);
    fn pad2d_f16(x: In, y: Out, h: i32, w: i32, top: i32, left: i32, ho: i32, wo: i32, n: i32);
    fn pad2d_bf16(x: In, y: Out, h: i32, w: i32, top: i32, left: i32, ho: i32, wo: i32, n: i32);
    fn transpose_f32(x: In, y: Out, rows: i32, cols: i32);
    fn transpose_f16(x: In, y: Out, rows: i32, cols: i32);
    fn transpose_bf16(x: In, y: Out, rows: i32, cols: i32);
    fn embedding_f32(table: In, ids: In, y: Out, c: i32, n: i32);
    fn embedding_f16(table: In, ids: In, y: Out, c: i32, n: i32);
    fn embedding_bf16(table: In, ids: In, y: Out, c: i32, n: i32);
}

impl LayoutOps for CudaBackend {
    fn upsample_nearest2x(&self, x: &Tensor) -> Result<Tensor> {
        const OP: &str = "upsample_nearest2x";
        let [n, c, h, w] = check::layout::upsample(x)?;
        let d = float_dtype(OP, "x", x)?;
        let xi = input(self, OP, "x", x)?;
        let mut y = alloc(self, [n, c, 2 * h, 2 * w], d)?;
        let total = int(OP, "y", y.numel())?;
        if total == 0 {
            return Ok(y);
        }
        let f = by_dtype!(d, OP, upsample2x_f32, upsample2x_f16, upsample2x_bf16);
        let cfg = LaunchCfg::for_items(y.numel(), BLOCK);
        let yo = output(self, OP, "y", &mut y)?;
        f(
            self.device(),
            cfg,
            xi,
            yo,
            int(OP, "h", h)?,
            int(OP, "w", w)?,
            total,
        )?;
        Ok(y)
    }

    fn upsample_nearest2x_backward(&self, dy: &Tensor) -> Result<Tensor> {
        const OP: &str = "upsample_nearest2x_backward";
        let [n, c, h, w] = check::layout::upsample_backward(dy)?;
        let d = float_dtype(OP, "dy", dy)?;
        let dyi = input(self, OP, "dy", dy)?;
        int(OP, "dy", dy.numel())?;
        let mut dx = alloc(self, [n, c, h, w], d)?;
        let total = int(OP, "dx", dx.numel())?;
        if total == 0 {
            return Ok(dx);
        }
        let f = by_dtype!(
            d,
            OP,
            upsample2x_bwd_f32,
            upsample2x_bwd_f16,
            upsample2x_bwd_bf16
        );
        let cfg = LaunchCfg::for_items(dx.numel(), BLOCK);
        let dxo = output(self, OP, "dx", &mut dx)?;
        f(
            self.device(),
            cfg,
            dyi,
            dxo,
            int(OP, "h", h)?,
            int(OP, "w", w)?,
            total,
        )?;
        Ok(dx)
    }

    fn concat_channels(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        const OP: &str = "concat_channels";
        let cd = check::layout::concat(a, b)?;
        let d = float_dtype(OP, "a", a)?;
        check::dtype(OP, "b", b, d)?;
        let (ai, bi) = (input(self, OP, "a", a)?, input(self, OP, "b", b)?);
        let mut y = alloc(self, with_channels(a, cd.ca + cd.cb), d)?;
        let total = int(OP, "y", y.numel())?;
        let (la, lb) = sides(OP, &cd)?;
        if total == 0 {
            return Ok(y);
        }
        let f = by_dtype!(d, OP, concat_f32, concat_f16, concat_bf16);
        let cfg = LaunchCfg::for_items(y.numel(), BLOCK);
        let yo = output(self, OP, "y", &mut y)?;
        f(self.device(), cfg, ai, bi, yo, la, lb, total)?;
        Ok(y)
    }

    fn split_channels(&self, dy: &Tensor, ca: usize) -> Result<(Tensor, Tensor)> {
        const OP: &str = "split_channels";
        let cd = check::layout::split(dy, ca)?;
        let d = float_dtype(OP, "dy", dy)?;
        let dyi = input(self, OP, "dy", dy)?;
        let total = int(OP, "dy", dy.numel())?;
        let (la, lb) = sides(OP, &cd)?;
        let mut da = alloc(self, with_channels(dy, cd.ca), d)?;
        let mut db = alloc(self, with_channels(dy, cd.cb), d)?;
        if total > 0 {
            let f = by_dtype!(d, OP, split_f32, split_f16, split_bf16);
            let cfg = LaunchCfg::for_items(dy.numel(), BLOCK);
            let dao = output(self, OP, "da", &mut da)?;
            let dbo = output(self, OP, "db", &mut db)?;
            f(self.device(), cfg, dyi, dao, dbo, la, lb, total)?;
        }
        Ok((da, db))
    }

    fn pad2d(&self, x: &Tensor, pad: Pad2d) -> Result<Tensor> {
        const OP: &str = "pad2d";
        let [n, c, h, w] = check::layout::pad2d(x, pad)?;
        let d = float_dtype(OP, "x", x)?;
        let xi = input(self, OP, "x", x)?;
        let (ho, wo) = (pad.top + h + pad.bottom, pad.left + w + pad.right);
        let numel = [n, c, ho, wo]
            .iter()
            .try_fold(1usize, |a, &b| a.checked_mul(b))
            .unwrap_or(usize::MAX);
        let total = int(OP, "y", numel)?;
        let mut y = alloc(self, [n, c, ho, wo], d)?;
        if total == 0 {
            return Ok(y);
        }
        let f = by_dtype!(d, OP, pad2d_f32, pad2d_f16, pad2d_bf16);
        let cfg = LaunchCfg::for_items(numel, BLOCK);
        let yo = output(self, OP, "y", &mut y)?;
        f(
            self.device(),
            cfg,
            xi,
            yo,
            int(OP, "h", h)?,
            int(OP, "w", w)?,
            int(OP, "top", pad.top)?,
            int(OP, "left", pad.left)?,
            int(OP, "ho", ho)?,
            int(OP, "wo", wo)?,
            total,
        )?;
        Ok(y)
    }

    fn nchw_to_nlc(&self, x: &Tensor) -> Result<Tensor> {
        const OP: &str = "nchw_to_nlc";
        let [n, c, h, w] = check::layout::nchw_to_nlc(x)?;
        transpose(self, OP, x, (n, c, h * w), &[n, h * w, c])
    }

    fn nlc_to_nchw(&self, x: &Tensor, h: usize, w: usize) -> Result<Tensor> {
        const OP: &str = "nlc_to_nchw";
        let [n, c, h, w] = check::layout::nlc_to_nchw(x, h, w)?;
        transpose(self, OP, x, (n, h * w, c), &[n, c, h, w])
    }

    fn embedding(&self, table: &Tensor, ids: &[u32]) -> Result<Tensor> {
        const OP: &str = "embedding";
        check::rank(OP, "table", table, 2, "[vocab, channels]")?;
        let (vocab, c) = (table.dims()[0], table.dims()[1]);
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
        let d = float_dtype(OP, "table", table)?;
        let ti = input(self, OP, "table", table)?;
        int(OP, "table", table.numel())?;
        let numel = ids.len().saturating_mul(c);
        let total = int(OP, "y", numel)?;
        let mut y = alloc(self, [ids.len(), c], d)?;
        if total == 0 {
            return Ok(y);
        }
        // The ids as a device buffer of u32 (allocated as f32: the same 4 bytes per element).
        let id_buf = alloc(self, [ids.len()], DType::F32)?;
        self.device()
            .upload(buffer(self, OP, "ids", &id_buf)?, bytemuck::cast_slice(ids))?;
        let f = by_dtype!(d, OP, embedding_f32, embedding_f16, embedding_bf16);
        let cfg = LaunchCfg::for_items(numel, BLOCK);
        let idi = input(self, OP, "ids", &id_buf)?;
        let yo = output(self, OP, "y", &mut y)?;
        f(self.device(), cfg, ti, idi, yo, int(OP, "c", c)?, total)?;
        Ok(y)
    }
}

/// The shape of `like` with the channel dim (1) replaced by `c`.
fn with_channels(like: &Tensor, c: usize) -> Vec<usize> {
    let mut d = like.dims().to_vec();
    d[1] = c;
    d
}

/// (la, lb): the elements per image of each side, as i32.
fn sides(op: &'static str, d: &ConcatDims) -> Result<(i32, i32)> {
    Ok((int(op, "a", d.ca * d.inner)?, int(op, "b", d.cb * d.inner)?))
}

/// y[img] = x[img]ᵀ for `n` row-major [rows, cols] matrices, into a fresh tensor of `shape`.
fn transpose(
    be: &CudaBackend,
    op: &'static str,
    x: &Tensor,
    (n, rows, cols): (usize, usize, usize),
    shape: &[usize],
) -> Result<Tensor> {
    let d = float_dtype(op, "x", x)?;
    let xi = input(be, op, "x", x)?;
    int(op, "x", x.numel())?;
    let (r, c) = (int(op, "rows", rows)?, int(op, "cols", cols)?);
    let mut y = alloc(be, shape, d)?;
    if y.numel() == 0 {
        return Ok(y);
    }
    let tiles = rows.div_ceil(TR_TILE) * cols.div_ceil(TR_TILE);
    let cfg = LaunchCfg::new(
        (
            tiles.min(u32::MAX as usize) as u32,
            1,
            n.min(u32::MAX as usize) as u32,
        ),
        (TR_TILE as u32, TR_ROWS as u32, 1),
        0,
    );
    let f = by_dtype!(d, op, transpose_f32, transpose_f16, transpose_bf16);
    let yo = output(be, op, "y", &mut y)?;
    f(be.device(), cfg, xi, yo, r, c)?;
    Ok(y)
}
