//! 2-D convolution and its input gradient. Simple kernels (kernels/conv.cu): implicit GEMMs
//! over tiles of 64 output channels x 64 output pixels, f32 accumulation, f32 and f16. Fast
//! kernels (kernels/conv_fast.cu, f16 backends, and bf16 ones on compute capability 8.0+,
//! with the conv family fast): implicit GEMMs on
//! tensor cores over tiles of 128 output pixels x 64 output channels; the input gradient as
//! one dense GEMM per residue class of the input pixels mod the stride (see conv_fast.cu).
//! The fast path takes kernels 1x1 and 3x3 (every SD1.5 conv: any channel count, spatial
//! size, padding; forward any stride, input gradient stride 1 or 2); other kernel sizes and
//! strides run the simple kernels.
//! LoCon (a LoRA on the conv, [`Adapter::Lora`] with a 4-D down): on the fast path fused into
//! the fast kernels (conv_fast.cu: four launches, about half the memory traffic of the
//! composition at 64x64); on the simple path composed of these kernels: the down conv with
//! the layer's stride and padding, a dropout mask product (conv_mask_mul), the 1x1 up conv,
//! scale and add. Its backward adds the adapters' weight gradients either way (conv2d_wgrad:
//! one block per dw element, f32 out).

use super::super::backend::CudaBackend;
use super::super::launch::{kernels, In, LaunchCfg, Out};
use std::borrow::Cow;

use super::super::tiles::{CONV_BM, CONV_BN, CONV_THREADS, CONV_WG_THREADS};
use super::{alloc, by_dtype, float_dtype, input, int, output, BLOCK};
use crate::backend::check::conv::ConvDims;
use crate::backend::{
    check, Accum, Adapter, AdapterBackward, Conv2d, ConvOps, ConvOut, ElementwiseOps, Tensors,
};
use crate::error::Result;
use crate::tensor::{DType, Tensor};

mod fast;

kernels! {
    module "conv";
    fn conv2d_fwd_f32(x: In, w: In, bias: In, y: Out, has_bias: i32, n: i32, c: i32, h: i32,
        wd: i32, o: i32, k: i32, ho: i32, wo: i32, s: i32, pad: i32);
    fn conv2d_fwd_f16(x: In, w: In, bias: In, y: Out, has_bias: i32, n: i32, c: i32, h: i32,
        wd: i32, o: i32, k: i32, ho: i32, wo: i32, s: i32, pad: i32);
    fn conv2d_fwd_bf16(x: In, w: In, bias: In, y: Out, has_bias: i32, n: i32, c: i32, h: i32,
        wd: i32, o: i32, k: i32, ho: i32, wo: i32, s: i32, pad: i32);
    fn conv2d_dgrad_f32(dy: In, w: In, dx: Out, n: i32, c: i32, h: i32, wd: i32, o: i32,
        k: i32, ho: i32, wo: i32, s: i32, pad: i32);
    fn conv2d_dgrad_f16(dy: In, w: In, dx: Out, n: i32, c: i32, h: i32, wd: i32, o: i32,
        k: i32, ho: i32, wo: i32, s: i32, pad: i32);
    fn conv2d_dgrad_bf16(dy: In, w: In, dx: Out, n: i32, c: i32, h: i32, wd: i32, o: i32,
        k: i32, ho: i32, wo: i32, s: i32, pad: i32);
    fn conv2d_wgrad_f32(x: In, dy: In, dw: Out, n: i32, c: i32, h: i32, wd: i32, o: i32,
        k: i32, ho: i32, wo: i32, s: i32, pad: i32, scale: f32, accumulate: i32);
    fn conv2d_wgrad_f16(x: In, dy: In, dw: Out, n: i32, c: i32, h: i32, wd: i32, o: i32,
        k: i32, ho: i32, wo: i32, s: i32, pad: i32, scale: f32, accumulate: i32);
    fn conv2d_wgrad_bf16(x: In, dy: In, dw: Out, n: i32, c: i32, h: i32, wd: i32, o: i32,
        k: i32, ho: i32, wo: i32, s: i32, pad: i32, scale: f32, accumulate: i32);
    fn conv_mask_mul_f32(v: Out, mask: In, count: i32);
    fn conv_mask_mul_f16(v: Out, mask: In, count: i32);
    fn conv_mask_mul_bf16(v: Out, mask: In, count: i32);
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
    fn conv2d_out(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: Option<&Tensor>,
        p: Conv2d,
        adapter: Option<Adapter<'_>>,
    ) -> Result<ConvOut> {
        const OP: &str = "conv2d";
        let d = check::conv::forward(x, w, bias, p)?;
        let dt = float_dtype(OP, "x", x)?;
        check::dtype(OP, "w", w, dt)?;
        if let Some(b) = bias {
            check::dtype(OP, "bias", b, dt)?;
        }
        // The one adapter kind so far (a new kind of `Adapter` stops the build here).
        let lora = match adapter {
            None => None,
            Some(Adapter::Lora(l)) => Some((check::conv::lora(OP, w, &d, &l)?, l)),
        };
        let Some((ld, l)) = lora else {
            return Ok(ConvOut {
                y: forward(self, &d, x, w, bias)?,
                lora_hidden: None,
            });
        };
        // The f32 adapter weights in the activations' dtype.
        let (down, up) = (in_dtype(self, l.down, dt)?, in_dtype(self, l.up, dt)?);
        if self.fast16(self.kernels().conv) && fast::forward_supported(&d) {
            // Fused (conv_fast.cu): y and ũ in one launch, then y += s·conv1x1(ũ, up).
            sizes(OP, &d, w.numel())?;
            sizes(OP, &ld.down, down.numel())?;
            let r = sizes(OP, &ld.up, up.numel())?.c as usize;
            let mut y = alloc(self, d.output_shape(), dt)?;
            let mut u = alloc(self, ld.up.input_shape(), dt)?;
            let mask = match l.dropout {
                Some(m) => Some(mask_input(self, m, &u)?),
                None => None,
            };
            if y.numel() + u.numel() > 0 {
                let t = fast::LoconForward {
                    x: input(self, OP, "x", x)?,
                    w: input(self, OP, "w", w)?,
                    bias: bias.map(|b| input(self, OP, "bias", b)).transpose()?,
                    down: input(self, OP, "lora down", &down)?,
                    up: input(self, OP, "lora up", &up)?,
                    mask,
                    scale: l.scale,
                    y: output(self, OP, "y", &mut y)?,
                    u: output(self, OP, "lora hidden", &mut u)?,
                };
                fast::locon_forward(self, &d, r, &t)?;
            }
            return Ok(ConvOut {
                y,
                lora_hidden: Some(u),
            });
        }
        // Composed: ũ = conv(x, down) ⊙ mask, y += s·conv1x1(ũ, up).
        let mut y = forward(self, &d, x, w, bias)?;
        let mut u = forward(self, &ld.down, x, down.as_ref(), None)?;
        if let Some(mask) = l.dropout {
            mask_mul(self, &mut u, mask)?;
        }
        let z = forward(self, &ld.up, &u, up.as_ref(), None)?;
        self.add_assign(&mut y, &self.scale(&z, l.scale)?)?;
        Ok(ConvOut {
            y,
            lora_hidden: Some(u),
        })
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
        input_grad(self, &d, dy, w)
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
        let dt = float_dtype(OP, "dy", dy)?;
        check::dtype(OP, "w", w, dt)?;
        // The one adapter kind so far (a new kind of `AdapterBackward` stops the build here).
        let Some(AdapterBackward::Lora(lb)) = adapter else {
            return input_grad(self, &d, dy, w);
        };
        let ld = check::conv::lora_backward(OP, w, &d, &lb)?;
        check::dtype(OP, "x", lb.x, dt)?;
        check::dtype(OP, "lora hidden", lb.hidden, dt)?;
        let l = lb.lora;
        let wg = |x: &Tensor, dy: &Tensor, dw: &mut Tensor, d: &ConvDims| {
            check::dtype(OP, "adapter gradient", dw, DType::F32)?;
            weight_grad(self, d, x, dy, l.scale, dw, lb.accum)
        };
        if self.fast16(self.kernels().conv) && fast::input_grad_supported(&d) {
            // Fused (conv_fast.cu): g = convᵀ1x1(dY, up) ⊙ mask, then dX = convᵀ(dY, w) +
            // s·convᵀ(g, down), one GEMM per residue class over dY and g together; the
            // adapter weights go to the class layout as they are (f32), not cast first.
            let down = adapter_weight(self, l.down, dt)?;
            let up = adapter_weight(self, l.up, dt)?;
            sizes(OP, &d, w.numel())?;
            sizes(OP, &ld.down, down.numel())?;
            let r = sizes(OP, &ld.up, up.numel())?.c as usize;
            let dyi = input(self, OP, "dy", dy)?;
            let mut g = alloc(self, ld.up.input_shape(), dt)?;
            let mut dx = alloc(self, d.input_shape(), dt)?;
            let mask = match l.dropout {
                Some(m) => Some(mask_input(self, m, &g)?),
                None => None,
            };
            if g.numel() > 0 {
                let up_part = fast::Part {
                    src: dyi,
                    channels: d.o,
                    w: input(self, OP, "lora up", &up)?,
                    w_dtype: up.dtype(),
                    scale: 1.0,
                };
                let go = output(self, OP, "lora hidden gradient", &mut g)?;
                fast::transposed(self, &ld.up, &[up_part], fast::Dst::Hidden(go, mask))?;
            }
            if dx.numel() > 0 {
                let parts = [
                    fast::Part {
                        src: dyi,
                        channels: d.o,
                        w: input(self, OP, "w", w)?,
                        w_dtype: dt,
                        scale: 1.0,
                    },
                    fast::Part {
                        src: input(self, OP, "lora hidden gradient", &g)?,
                        channels: r,
                        w: input(self, OP, "lora down", &down)?,
                        w_dtype: down.dtype(),
                        scale: l.scale as f32,
                    },
                ];
                let dxo = output(self, OP, "dx", &mut dx)?;
                fast::transposed(self, &d, &parts, fast::Dst::Main(dxo))?;
            }
            wg(lb.hidden, dy, lb.grad_up, &ld.up)?;
            wg(lb.x, &g, lb.grad_down, &ld.down)?;
            return Ok(dx);
        }
        // Composed, with the adapter weights in the activations' dtype.
        let (down, up) = (in_dtype(self, l.down, dt)?, in_dtype(self, l.up, dt)?);
        let mut dx = input_grad(self, &d, dy, w)?;
        // g = convᵀ₁ₓ₁(dY, up) ⊙ mask, the gradient of the hidden.
        let mut g = input_grad(self, &ld.up, dy, up.as_ref())?;
        if let Some(mask) = l.dropout {
            mask_mul(self, &mut g, mask)?;
        }
        let dx_lora = input_grad(self, &ld.down, &g, down.as_ref())?;
        self.add_assign(&mut dx, &self.scale(&dx_lora, l.scale)?)?;
        drop(dx_lora);
        wg(lb.hidden, dy, lb.grad_up, &ld.up)?;
        wg(lb.x, &g, lb.grad_down, &ld.down)?;
        Ok(dx)
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
        const OP: &str = "conv2d_weight_grad";
        let d = check::conv::weight_grad(x, dy, dw, p)?;
        let dt = float_dtype(OP, "x", x)?;
        check::dtype(OP, "dy", dy, dt)?;
        check::dtype(OP, "dw", dw, DType::F32)?;
        weight_grad(self, &d, x, dy, scale, dw, accum)
    }
}

/// `t` in `dt`: itself when it already is, else a converted copy.
fn in_dtype<'t>(be: &CudaBackend, t: &'t Tensor, dt: DType) -> Result<Cow<'t, Tensor>> {
    if t.dtype() == dt {
        Ok(Cow::Borrowed(t))
    } else {
        Ok(Cow::Owned(be.cast(t, dt)?))
    }
}

/// An adapter weight as the fast input gradient's layout reads it: f32 (the adapters' own
/// dtype) or the activations' dtype as it is, anything else converted to f32.
fn adapter_weight<'t>(be: &CudaBackend, t: &'t Tensor, dt: DType) -> Result<Cow<'t, Tensor>> {
    let want = if t.dtype() == dt { dt } else { DType::F32 };
    in_dtype(be, t, want)
}

/// The dropout mask of the hidden `v` as a kernel input (checked: v's shape and dtype).
fn mask_input(be: &CudaBackend, mask: &Tensor, v: &Tensor) -> Result<In> {
    const OP: &str = "conv2d lora dropout";
    check::same_shape(OP, "lora hidden", v, "lora dropout mask", mask)?;
    check::dtype(OP, "lora dropout mask", mask, v.dtype())?;
    input(be, OP, "lora dropout mask", mask)
}

/// v ⊙= mask (same shape and dtype).
fn mask_mul(be: &CudaBackend, v: &mut Tensor, mask: &Tensor) -> Result<()> {
    const OP: &str = "conv2d lora dropout";
    check::same_shape(OP, "lora hidden", v, "lora dropout mask", mask)?;
    let dt = float_dtype(OP, "lora hidden", v)?;
    check::dtype(OP, "lora dropout mask", mask, dt)?;
    let count = int(OP, "lora hidden", v.numel())?;
    if count == 0 {
        return Ok(());
    }
    let mi = input(be, OP, "lora dropout mask", mask)?;
    let f = by_dtype!(
        dt,
        OP,
        conv_mask_mul_f32,
        conv_mask_mul_f16,
        conv_mask_mul_bf16
    );
    f(
        be.device(),
        LaunchCfg::for_items(v.numel(), BLOCK),
        output(be, OP, "lora hidden", v)?,
        mi,
        count,
    )
}

/// The forward kernels for checked sizes `d` (dtypes checked by the caller).
fn forward(
    be: &CudaBackend,
    d: &ConvDims,
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
) -> Result<Tensor> {
    const OP: &str = "conv2d";
    let dt = x.dtype();
    let (xi, wi) = (input(be, OP, "x", x)?, input(be, OP, "w", w)?);
    let bi = match bias {
        Some(b) => input(be, OP, "bias", b)?,
        None => In(0),
    };
    let s = sizes(OP, d, w.numel())?;
    let mut y = alloc(be, d.output_shape(), dt)?;
    if y.numel() == 0 {
        return Ok(y);
    }
    if be.fast16(be.kernels().conv) && fast::forward_supported(d) {
        let yo = output(be, OP, "y", &mut y)?;
        fast::forward(be, d, xi, wi, bias.is_some().then_some(bi), yo)?;
        return Ok(y);
    }
    let cfg = grid(d.n * d.ho * d.wo, d.o);
    let f = by_dtype!(dt, OP, conv2d_fwd_f32, conv2d_fwd_f16, conv2d_fwd_bf16);
    f(
        be.device(),
        cfg,
        xi,
        wi,
        bi,
        output(be, OP, "y", &mut y)?,
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

/// The input-gradient kernels for checked sizes `d`.
fn input_grad(be: &CudaBackend, d: &ConvDims, dy: &Tensor, w: &Tensor) -> Result<Tensor> {
    const OP: &str = "conv2d_input_grad";
    let dt = dy.dtype();
    let (dyi, wi) = (input(be, OP, "dy", dy)?, input(be, OP, "w", w)?);
    let s = sizes(OP, d, w.numel())?;
    let mut dx = alloc(be, d.input_shape(), dt)?;
    if dx.numel() == 0 {
        return Ok(dx);
    }
    if be.fast16(be.kernels().conv) && fast::input_grad_supported(d) {
        let dxo = output(be, OP, "dx", &mut dx)?;
        fast::input_grad(be, d, dyi, wi, dxo)?;
        return Ok(dx);
    }
    let cfg = grid(d.n * d.h * d.w, d.c);
    let f = by_dtype!(
        dt,
        OP,
        conv2d_dgrad_f32,
        conv2d_dgrad_f16,
        conv2d_dgrad_bf16
    );
    f(
        be.device(),
        cfg,
        dyi,
        wi,
        output(be, OP, "dx", &mut dx)?,
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

/// The weight-gradient kernel for checked sizes `d`: dw (f32) `=`/`+=` scale·∂.
fn weight_grad(
    be: &CudaBackend,
    d: &ConvDims,
    x: &Tensor,
    dy: &Tensor,
    scale: f64,
    dw: &mut Tensor,
    accum: Accum,
) -> Result<()> {
    const OP: &str = "conv2d_weight_grad";
    let s = sizes(OP, d, dw.numel())?;
    if dw.numel() == 0 {
        return Ok(());
    }
    let (xi, dyi) = (input(be, OP, "x", x)?, input(be, OP, "dy", dy)?);
    let blocks = u32::try_from(dw.numel()).map_err(|_| crate::error::Error::BadValue {
        op: OP,
        name: "dw",
        value: dw.numel().to_string(),
        expected: "at most 2^32 - 1 elements".into(),
    })?;
    let cfg = LaunchCfg::new((blocks, 1, 1), (CONV_WG_THREADS as u32, 1, 1), 0);
    let f = by_dtype!(
        x.dtype(),
        OP,
        conv2d_wgrad_f32,
        conv2d_wgrad_f16,
        conv2d_wgrad_bf16
    );
    f(
        be.device(),
        cfg,
        xi,
        dyi,
        output(be, OP, "dw", dw)?,
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
        scale as f32,
        (accum == Accum::Add) as i32,
    )
}
