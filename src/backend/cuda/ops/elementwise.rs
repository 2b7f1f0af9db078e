//! Elementwise ops, casts, and the host <-> device transfers (kernels/elementwise.cu).

use half::{bf16, f16};

use super::super::backend::CudaBackend;
use super::super::launch::{kernels, In, LaunchCfg, Out};
use super::{alloc, buffer, by_dtype, device_dtype, float_dtype, input, int, output, BLOCK};
use crate::backend::{check, ElementwiseOps, Tensors};
use crate::error::{Error, Result};
use crate::tensor::{DType, Shape, Tensor};

kernels! {
    module "elementwise";
    fn add_f32(a: In, b: In, y: Out, n: i32);
    fn add_f16(a: In, b: In, y: Out, n: i32);
    fn add_bf16(a: In, b: In, y: Out, n: i32);
    fn mul_f32(a: In, b: In, y: Out, n: i32);
    fn mul_f16(a: In, b: In, y: Out, n: i32);
    fn mul_bf16(a: In, b: In, y: Out, n: i32);
    fn add_assign_f32(a: Out, b: In, n: i32);
    fn add_assign_f16(a: Out, b: In, n: i32);
    fn add_assign_bf16(a: Out, b: In, n: i32);
    fn scale_f32(x: In, y: Out, s: f32, n: i32);
    fn scale_f16(x: In, y: Out, s: f32, n: i32);
    fn scale_bf16(x: In, y: Out, s: f32, n: i32);
    fn add_channel_bias_f32(x: In, bias: In, y: Out, plane: i32, n: i32);
    fn add_channel_bias_f16(x: In, bias: In, y: Out, plane: i32, n: i32);
    fn add_channel_bias_bf16(x: In, bias: In, y: Out, plane: i32, n: i32);
    fn cast_f32_f16(x: In, y: Out, n: i32);
    fn cast_f16_f32(x: In, y: Out, n: i32);
    fn cast_f32_bf16(x: In, y: Out, n: i32);
    fn cast_bf16_f32(x: In, y: Out, n: i32);
}

/// What a device tensor may hold: f16, bf16 or f32, or u8 codes (the 8-bit optimizers' state,
/// which no kernel but theirs reads).
fn stored_dtype(d: DType) -> Result<DType> {
    match d {
        DType::U8 => Ok(d),
        d => device_dtype("device tensor", "dtype", d),
    }
}

impl Tensors for CudaBackend {
    fn zeros(&self, shape: &[usize], dtype: DType) -> Result<Tensor> {
        let t = alloc(self, shape, stored_dtype(dtype)?)?;
        let b = buffer(self, "zeros", "out", &t)?;
        self.device().memset(b.addr, 0, b.size_in_bytes())?;
        Ok(t)
    }

    fn tensor_from_f32(&self, shape: &[usize], data: &[f32], dtype: DType) -> Result<Tensor> {
        let shape = Shape::from(shape);
        if data.len() != shape.numel() {
            return Err(Error::DataLength {
                len: data.len(),
                expected: shape.numel(),
                shape,
            });
        }
        let t = alloc(self, shape, stored_dtype(dtype)?)?;
        if self.device().is_meter() {
            // Nothing to copy into: the meter only counts the allocation.
            return Ok(t);
        }
        let b = buffer(self, "tensor_from_f32", "out", &t)?;
        match dtype {
            DType::U8 => self
                .device()
                .upload(b, &crate::backend::cpu::elementwise::codes(data)?)?,
            DType::F16 => {
                let h: Vec<f16> = data.iter().map(|&x| f16::from_f32(x)).collect();
                self.device().upload(b, bytemuck::cast_slice(&h))?
            }
            DType::BF16 => {
                let h: Vec<bf16> = data.iter().map(|&x| bf16::from_f32(x)).collect();
                self.device().upload(b, bytemuck::cast_slice(&h))?
            }
            _ => self.device().upload(b, bytemuck::cast_slice(data))?,
        }
        Ok(t)
    }

    fn to_f32_vec(&self, x: &Tensor) -> Result<Vec<f32>> {
        buffer(self, "to_f32_vec", "x", x)?.to_f32_vec()
    }

    fn cast(&self, x: &Tensor, dtype: DType) -> Result<Tensor> {
        const OP: &str = "cast";
        let from = float_dtype(OP, "x", x)?;
        let to = device_dtype("device tensor", "dtype", dtype)?;
        let xi = input(self, OP, "x", x)?;
        let mut y = alloc(self, x.shape().clone(), to)?;
        let n = int(OP, "x", x.numel())?;
        let cfg = LaunchCfg::for_items(x.numel(), BLOCK);
        let yo = output(self, OP, "y", &mut y)?;
        match (from, to) {
            (DType::F32, DType::F16) => cast_f32_f16(self.device(), cfg, xi, yo, n)?,
            (DType::F16, DType::F32) => cast_f16_f32(self.device(), cfg, xi, yo, n)?,
            (DType::F32, DType::BF16) => cast_f32_bf16(self.device(), cfg, xi, yo, n)?,
            (DType::BF16, DType::F32) => cast_bf16_f32(self.device(), cfg, xi, yo, n)?,
            (a, b) if a == b => {
                let src = buffer(self, OP, "x", x)?;
                let dst = buffer(self, OP, "y", &y)?;
                self.device().copy(dst, src)?;
            }
            // Between the 16-bit types: through f32, which holds both exactly.
            _ => return self.cast(&self.cast(x, DType::F32)?, to),
        }
        Ok(y)
    }
}

impl ElementwiseOps for CudaBackend {
    fn add(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        binary(self, "add", a, b, [add_f32, add_f16, add_bf16])
    }

    fn mul(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        binary(self, "mul", a, b, [mul_f32, mul_f16, mul_bf16])
    }

    fn add_assign(&self, a: &mut Tensor, b: &Tensor) -> Result<()> {
        const OP: &str = "add_assign";
        check::same_shape(OP, "a", a, "b", b)?;
        let d = float_dtype(OP, "a", a)?;
        check::dtype(OP, "b", b, d)?;
        let bi = input(self, OP, "b", b)?;
        let n = int(OP, "a", a.numel())?;
        let cfg = LaunchCfg::for_items(a.numel(), BLOCK);
        let ao = output(self, OP, "a", a)?;
        let f = by_dtype!(d, OP, add_assign_f32, add_assign_f16, add_assign_bf16);
        f(self.device(), cfg, ao, bi, n)
    }

    fn scale(&self, x: &Tensor, s: f64) -> Result<Tensor> {
        const OP: &str = "scale";
        let d = float_dtype(OP, "x", x)?;
        let xi = input(self, OP, "x", x)?;
        let mut y = alloc(self, x.shape().clone(), d)?;
        let n = int(OP, "x", x.numel())?;
        let f = by_dtype!(d, OP, scale_f32, scale_f16, scale_bf16);
        f(
            self.device(),
            LaunchCfg::for_items(x.numel(), BLOCK),
            xi,
            output(self, OP, "y", &mut y)?,
            s as f32,
            n,
        )?;
        Ok(y)
    }

    fn add_channel_bias(&self, x: &Tensor, bias: &Tensor) -> Result<Tensor> {
        const OP: &str = "add_channel_bias";
        check::min_rank(OP, "x", x, 2, "[N, C, ...]")?;
        check::rank(OP, "bias", bias, 2, "[N, C]")?;
        if bias.dims() != &x.dims()[..2] {
            return Err(check::mismatch(
                OP,
                "x",
                x,
                "bias",
                bias,
                "bias must be [N, C] of x's first two dimensions",
            ));
        }
        let d = float_dtype(OP, "x", x)?;
        check::dtype(OP, "bias", bias, d)?;
        let plane = int(OP, "x", x.dims()[2..].iter().product::<usize>())?;
        let (xi, bi) = (input(self, OP, "x", x)?, input(self, OP, "bias", bias)?);
        let mut y = alloc(self, x.shape().clone(), d)?;
        let n = int(OP, "x", x.numel())?;
        let f = by_dtype!(
            d,
            OP,
            add_channel_bias_f32,
            add_channel_bias_f16,
            add_channel_bias_bf16
        );
        let cfg = LaunchCfg::for_items(x.numel(), BLOCK);
        f(
            self.device(),
            cfg,
            xi,
            bi,
            output(self, OP, "y", &mut y)?,
            plane,
            n,
        )?;
        Ok(y)
    }
}

/// One launch of `y[i] = a[i] ∘ b[i]` (add, mul), the kernel picked from `kernels` (f32, f16, bf16)
/// by a's dtype.
type Binary = fn(&crate::backend::cuda::Device, LaunchCfg, In, In, Out, i32) -> Result<()>;

fn binary(
    be: &CudaBackend,
    op: &'static str,
    a: &Tensor,
    b: &Tensor,
    kernels: [Binary; 3],
) -> Result<Tensor> {
    check::same_shape(op, "a", a, "b", b)?;
    let d = float_dtype(op, "a", a)?;
    check::dtype(op, "b", b, d)?;
    let (ai, bi) = (input(be, op, "a", a)?, input(be, op, "b", b)?);
    let mut y = alloc(be, a.shape().clone(), d)?;
    let n = int(op, "a", a.numel())?;
    let [f32_kernel, f16_kernel, bf16_kernel] = kernels;
    let f = by_dtype!(d, op, f32_kernel, f16_kernel, bf16_kernel);
    f(
        be.device(),
        LaunchCfg::for_items(a.numel(), BLOCK),
        ai,
        bi,
        output(be, op, "y", &mut y)?,
        n,
    )?;
    Ok(y)
}
