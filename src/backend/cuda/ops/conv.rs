//! 2-D convolution and its input gradient. Simple kernels (kernels/conv.cu): implicit GEMMs
//! over tiles of 64 output channels x 64 output pixels, f32 accumulation, f32 and f16. Fast
//! kernels (kernels/conv_fast.cu, f16 backends with the conv family fast): implicit GEMMs on
//! tensor cores over tiles of 128 output pixels x 64 output channels; the input gradient as
//! one dense GEMM per residue class of the input pixels mod the stride (see conv_fast.cu).
//! The fast path takes kernels 1x1 and 3x3 (every SD1.5 conv: any channel count, spatial
//! size, padding; forward any stride, input gradient stride 1 or 2); other kernel sizes and
//! strides run the simple kernels.

use super::super::backend::CudaBackend;
use super::super::launch::{kernels, In, LaunchCfg, Out};
use super::super::tiles::{CONV_BM, CONV_BN, CONV_THREADS};
use super::{alloc, by_dtype, float_dtype, input, int, output};
use crate::backend::check::conv::ConvDims;
use crate::backend::{check, Adapter, Conv2d, ConvOps};
use crate::error::Result;
use crate::tensor::Tensor;

mod fast;

kernels! {
    module "conv";
    fn conv2d_fwd_f32(x: In, w: In, bias: In, y: Out, has_bias: i32, n: i32, c: i32, h: i32,
        wd: i32, o: i32, k: i32, ho: i32, wo: i32, s: i32, pad: i32);
    fn conv2d_fwd_f16(x: In, w: In, bias: In, y: Out, has_bias: i32, n: i32, c: i32, h: i32,
        wd: i32, o: i32, k: i32, ho: i32, wo: i32, s: i32, pad: i32);
    fn conv2d_dgrad_f32(dy: In, w: In, dx: Out, n: i32, c: i32, h: i32, wd: i32, o: i32,
        k: i32, ho: i32, wo: i32, s: i32, pad: i32);
    fn conv2d_dgrad_f16(dy: In, w: In, dx: Out, n: i32, c: i32, h: i32, wd: i32, o: i32,
        k: i32, ho: i32, wo: i32, s: i32, pad: i32);
}

/// The sizes as the kernels take them, each checked to fit an i32, along with the element
/// counts of x, w and y (the kernels index within an image and a weight with i32 parts).
struct Sizes {
    n: i32,
    c: i32,
    h: i32,
    w: i32,
    o: i32,
    k: i32,
    ho: i32,
    wo: i32,
    s: i32,
    pad: i32,
}

fn sizes(op: &'static str, d: &ConvDims, w_numel: usize) -> Result<Sizes> {
    int(op, "x", d.input_shape().numel())?;
    int(op, "y", d.output_shape().numel())?;
    int(op, "w", w_numel)?;
    Ok(Sizes {
        n: int(op, "n", d.n)?,
        c: int(op, "c", d.c)?,
        h: int(op, "h", d.h)?,
        w: int(op, "w", d.w)?,
        o: int(op, "o", d.o)?,
        k: int(op, "k", d.k)?,
        ho: int(op, "ho", d.ho)?,
        wo: int(op, "wo", d.wo)?,
        s: int(op, "stride", d.stride)?,
        pad: int(op, "padding", d.padding)?,
    })
}

/// Grid over (output pixels N·plane in tiles of 64, output channels m in tiles of 64).
fn grid(pixels: usize, m: usize) -> LaunchCfg {
    let gx = pixels.div_ceil(CONV_BN).clamp(1, u32::MAX as usize) as u32;
    let gy = m.div_ceil(CONV_BM).clamp(1, u32::MAX as usize) as u32;
    LaunchCfg::new((gx, gy, 1), (CONV_THREADS as u32, 1, 1), 0)
}

impl ConvOps for CudaBackend {
    fn conv2d(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: Option<&Tensor>,
        p: Conv2d,
        adapter: Option<Adapter<'_>>,
    ) -> Result<Tensor> {
        const OP: &str = "conv2d";
        check::conv::no_adapter(OP, adapter.as_ref())?;
        let d = check::conv::forward(x, w, bias, p)?;
        let dt = float_dtype(OP, "x", x)?;
        check::dtype(OP, "w", w, dt)?;
        if let Some(b) = bias {
            check::dtype(OP, "bias", b, dt)?;
        }
        let (xi, wi) = (input(self, OP, "x", x)?, input(self, OP, "w", w)?);
        let bi = match bias {
            Some(b) => input(self, OP, "bias", b)?,
            None => In(0),
        };
        let s = sizes(OP, &d, w.numel())?;
        let mut y = alloc(self, d.output_shape(), dt)?;
        if y.numel() == 0 {
            return Ok(y);
        }
        if self.fast(self.kernels().conv) && fast::forward_supported(&d) {
            let yo = output(self, OP, "y", &mut y)?;
            fast::forward(self, &d, xi, wi, bi, bias.is_some(), yo)?;
            return Ok(y);
        }
        let cfg = grid(d.n * d.ho * d.wo, d.o);
        let f = by_dtype!(dt, OP, conv2d_fwd_f32, conv2d_fwd_f16);
        f(
            self.device(),
            cfg,
            xi,
            wi,
            bi,
            output(self, OP, "y", &mut y)?,
            bias.is_some() as i32,
            s.n,
            s.c,
            s.h,
            s.w,
            s.o,
            s.k,
            s.ho,
            s.wo,
            s.s,
            s.pad,
        )?;
        Ok(y)
    }

    fn conv2d_input_grad(
        &self,
        dy: &Tensor,
        w: &Tensor,
        input_hw: (usize, usize),
        p: Conv2d,
    ) -> Result<Tensor> {
        const OP: &str = "conv2d_input_grad";
        let d = check::conv::input_grad(dy, w, input_hw, p)?;
        let dt = float_dtype(OP, "dy", dy)?;
        check::dtype(OP, "w", w, dt)?;
        let (dyi, wi) = (input(self, OP, "dy", dy)?, input(self, OP, "w", w)?);
        let s = sizes(OP, &d, w.numel())?;
        let mut dx = alloc(self, d.input_shape(), dt)?;
        if dx.numel() == 0 {
            return Ok(dx);
        }
        if self.fast(self.kernels().conv) && fast::input_grad_supported(&d) {
            let dxo = output(self, OP, "dx", &mut dx)?;
            fast::input_grad(self, &d, dyi, wi, dxo)?;
            return Ok(dx);
        }
        let cfg = grid(d.n * d.h * d.w, d.c);
        let f = by_dtype!(dt, OP, conv2d_dgrad_f32, conv2d_dgrad_f16);
        f(
            self.device(),
            cfg,
            dyi,
            wi,
            output(self, OP, "dx", &mut dx)?,
            s.n,
            s.c,
            s.h,
            s.w,
            s.o,
            s.k,
            s.ho,
            s.wo,
            s.s,
            s.pad,
        )?;
        Ok(dx)
    }
}
