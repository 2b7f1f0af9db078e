//! Pointwise activations (SiLU, exact GELU, QuickGELU, tanh GELU) and GEGLU, forward and input gradient
//! (kernels/activation.cu): one thread per element. Inputs and outputs share one dtype (f16
//! or f32); the math is f32.

use super::super::backend::CudaBackend;
use super::super::launch::{kernels, In, LaunchCfg, Out};
use super::{alloc, by_dtype, float_dtype, input, int, output, BLOCK};
use crate::backend::{check, Activation, ActivationOps};
use crate::error::Result;
use crate::tensor::Tensor;

kernels! {
    module "activation";
    fn silu_f32(x: In, y: Out, n: i32);
    fn silu_f16(x: In, y: Out, n: i32);
    fn silu_bf16(x: In, y: Out, n: i32);
    fn gelu_f32(x: In, y: Out, n: i32);
    fn gelu_f16(x: In, y: Out, n: i32);
    fn gelu_bf16(x: In, y: Out, n: i32);
    fn quick_gelu_f32(x: In, y: Out, n: i32);
    fn quick_gelu_f16(x: In, y: Out, n: i32);
    fn quick_gelu_bf16(x: In, y: Out, n: i32);
    fn gelu_tanh_f32(x: In, y: Out, n: i32);
    fn gelu_tanh_f16(x: In, y: Out, n: i32);
    fn gelu_tanh_bf16(x: In, y: Out, n: i32);
    fn silu_backward_f32(dy: In, x: In, dx: Out, n: i32);
    fn silu_backward_f16(dy: In, x: In, dx: Out, n: i32);
    fn silu_backward_bf16(dy: In, x: In, dx: Out, n: i32);
    fn gelu_backward_f32(dy: In, x: In, dx: Out, n: i32);
    fn gelu_backward_f16(dy: In, x: In, dx: Out, n: i32);
    fn gelu_backward_bf16(dy: In, x: In, dx: Out, n: i32);
    fn quick_gelu_backward_f32(dy: In, x: In, dx: Out, n: i32);
    fn quick_gelu_backward_f16(dy: In, x: In, dx: Out, n: i32);
    fn quick_gelu_backward_bf16(dy: In, x: In, dx: Out, n: i32);
    fn gelu_tanh_backward_f32(dy: In, x: In, dx: Out, n: i32);
    fn gelu_tanh_backward_f16(dy: In, x: In, dx: Out, n: i32);
    fn gelu_tanh_backward_bf16(dy: In, x: In, dx: Out, n: i32);
    fn geglu_f32(x: In, y: Out, f: i32, n: i32);
    fn geglu_f16(x: In, y: Out, f: i32, n: i32);
    fn geglu_bf16(x: In, y: Out, f: i32, n: i32);
    fn geglu_backward_f32(dy: In, x: In, dx: Out, f: i32, n: i32);
    fn geglu_backward_f16(dy: In, x: In, dx: Out, f: i32, n: i32);
    fn geglu_backward_bf16(dy: In, x: In, dx: Out, f: i32, n: i32);
}

impl ActivationOps for CudaBackend {
    fn activation(&self, x: &Tensor, act: Activation) -> Result<Tensor> {
        const OP: &str = "activation";
        let d = float_dtype(OP, "x", x)?;
        let xi = input(self, OP, "x", x)?;
        let n = int(OP, "x", x.numel())?;
        let mut y = alloc(self, x.shape().clone(), d)?;
        if n == 0 {
            return Ok(y);
        }
        let f = match act {
            Activation::Silu => by_dtype!(d, OP, silu_f32, silu_f16, silu_bf16),
            Activation::Gelu => by_dtype!(d, OP, gelu_f32, gelu_f16, gelu_bf16),
            Activation::QuickGelu => {
                by_dtype!(d, OP, quick_gelu_f32, quick_gelu_f16, quick_gelu_bf16)
            }
            Activation::GeluTanh => by_dtype!(d, OP, gelu_tanh_f32, gelu_tanh_f16, gelu_tanh_bf16),
        };
        let cfg = LaunchCfg::for_items(x.numel(), BLOCK);
        f(self.device(), cfg, xi, output(self, OP, "y", &mut y)?, n)?;
        Ok(y)
    }

    fn activation_backward(&self, dy: &Tensor, x: &Tensor, act: Activation) -> Result<Tensor> {
        const OP: &str = "activation_backward";
        check::activation::backward(OP, dy, x)?;
        let d = float_dtype(OP, "x", x)?;
        check::dtype(OP, "dy", dy, d)?;
        let (dyi, xi) = (input(self, OP, "dy", dy)?, input(self, OP, "x", x)?);
        let n = int(OP, "x", x.numel())?;
        let mut dx = alloc(self, x.shape().clone(), d)?;
        if n == 0 {
            return Ok(dx);
        }
        let f = match act {
            Activation::Silu => by_dtype!(
                d,
                OP,
                silu_backward_f32,
                silu_backward_f16,
                silu_backward_bf16
            ),
            Activation::Gelu => by_dtype!(
                d,
                OP,
                gelu_backward_f32,
                gelu_backward_f16,
                gelu_backward_bf16
            ),
            Activation::QuickGelu => {
                by_dtype!(
                    d,
                    OP,
                    quick_gelu_backward_f32,
                    quick_gelu_backward_f16,
                    quick_gelu_backward_bf16
                )
            }
            Activation::GeluTanh => {
                by_dtype!(
                    d,
                    OP,
                    gelu_tanh_backward_f32,
                    gelu_tanh_backward_f16,
                    gelu_tanh_backward_bf16
                )
            }
        };
        let cfg = LaunchCfg::for_items(x.numel(), BLOCK);
        f(
            self.device(),
            cfg,
            dyi,
            xi,
            output(self, OP, "dx", &mut dx)?,
            n,
        )?;
        Ok(dx)
    }

    fn geglu(&self, x: &Tensor) -> Result<Tensor> {
        const OP: &str = "geglu";
        let g = check::activation::geglu(OP, x)?;
        let d = float_dtype(OP, "x", x)?;
        let xi = input(self, OP, "x", x)?;
        int(OP, "x", x.numel())?;
        let n = g.rows * g.features;
        let mut y = alloc(self, x.shape().with_last(g.features), d)?;
        if n == 0 {
            return Ok(y);
        }
        let f = by_dtype!(d, OP, geglu_f32, geglu_f16, geglu_bf16);
        let cfg = LaunchCfg::for_items(n, BLOCK);
        f(
            self.device(),
            cfg,
            xi,
            output(self, OP, "y", &mut y)?,
            int(OP, "x", g.features)?,
            int(OP, "x", n)?,
        )?;
        Ok(y)
    }

    fn geglu_backward(&self, dy: &Tensor, x: &Tensor) -> Result<Tensor> {
        const OP: &str = "geglu_backward";
        let g = check::activation::geglu_backward(dy, x)?;
        let d = float_dtype(OP, "x", x)?;
        check::dtype(OP, "dy", dy, d)?;
        let (dyi, xi) = (input(self, OP, "dy", dy)?, input(self, OP, "x", x)?);
        int(OP, "x", x.numel())?;
        let n = g.rows * g.features;
        let mut dx = alloc(self, x.shape().clone(), d)?;
        if n == 0 {
            return Ok(dx);
        }
        let f = by_dtype!(
            d,
            OP,
            geglu_backward_f32,
            geglu_backward_f16,
            geglu_backward_bf16
        );
        let cfg = LaunchCfg::for_items(n, BLOCK);
        f(
            self.device(),
            cfg,
            dyi,
            xi,
            output(self, OP, "dx", &mut dx)?,
            int(OP, "x", g.features)?,
            int(OP, "x", n)?,
        )?;
        Ok(dx)
    }
}
