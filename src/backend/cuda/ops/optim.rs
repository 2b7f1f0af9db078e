//! The gradient norm, AdamW, Lion, SGD with Nesterov momentum, Prodigy and DAdaptAdam's first
//! half on the flat f32 buffers (kernels/optim.cu; the 8-bit AdamW and Lion in optim8.rs); the
//! f32 constants are the CPU backend's (cpu/optim.rs).

use super::super::backend::CudaBackend;
use super::super::launch::{kernels, In, LaunchCfg, Out};
use super::super::tiles::SQ_CHUNK;
use super::{alloc, buffer, by_dtype, float_dtype, input, int, output, BLOCK};
use crate::backend::cpu::optim::{DAdaptConsts, LionConsts, ProdigyConsts};
use crate::backend::{
    check, AdafactorBuffers, AdafactorStep, AdafactorTable, AdamW, DAdaptBuffers, DAdaptMoments,
    Lion, OptimOps, ProdigyBuffers, ProdigyMoments, ProdigySums, ProdigyUpdate, Quantized,
    SgdNesterov,
};
use crate::error::Result;
use crate::tensor::{DType, Tensor};

kernels! {
    module "optim";
    fn sum_squares_f32(x: In, partial: Out, n: i32);
    fn sum_squares_f16(x: In, partial: Out, n: i32);
    fn sum_squares_bf16(x: In, partial: Out, n: i32);
    fn adamw_f32(p: Out, grad: In, m: Out, v: Out, b1: f32, b2: f32, c1: f32, c2: f32, eps: f32,
        decay: f32, step: f32, rbc2: f32, gs: f32, n: i32);
    fn lion_f32(p: Out, grad: In, m: Out, b1: f32, b2: f32, c1: f32, c2: f32, decay: f32,
        lr: f32, gs: f32, n: i32);
    fn sgd_nesterov_f32(p: Out, grad: In, buf: Out, mu: f32, wd: f32, lr: f32, gs: f32, n: i32);
    fn prodigy_moments_f32(p: In, p0: In, grad: In, m: Out, v: Out, s: Out, partial: Out,
        b1: f32, b2: f32, b3: f32, c1: f32, c2: f32, cs: f32, coupled: f32, gs: f32, n: i32);
    fn prodigy_update_f32(p: Out, m: In, v: In, decay: f32, dlr: f32, d_eps: f32, n: i32);
    fn dadapt_moments_f32(p: In, grad: In, m: Out, v: Out, s: Out, partial: Out, b1: f32,
        b2: f32, sb2: f32, c1: f32, c2: f32, cs: f32, eps: f32, coupled: f32, gs: f32, n: i32);
}

impl OptimOps for CudaBackend {
    fn sum_squares(&self, x: &Tensor) -> Result<f64> {
        const OP: &str = "sum_squares";
        let d = float_dtype(OP, "x", x)?;
        if x.numel() == 0 {
            return Ok(0.0);
        }
        let blocks = x.numel().div_ceil(SQ_CHUNK);
        let mut partial = alloc(self, [blocks], DType::F64)?;
        let f = by_dtype!(d, OP, sum_squares_f32, sum_squares_f16, sum_squares_bf16);
        f(
            self.device(),
            LaunchCfg::new((int(OP, "x", blocks)? as u32, 1, 1), (BLOCK, 1, 1), 0),
            input(self, OP, "x", x)?,
            output(self, OP, "partial", &mut partial)?,
            int(OP, "x", x.numel())?,
        )?;
        let buf = buffer(self, OP, "partial", &partial)?;
        let mut bytes = vec![0u8; blocks * 8];
        self.device().download(buf, &mut bytes)?;
        Ok(bytemuck::pod_collect_to_vec::<u8, f64>(&bytes).iter().sum())
    }

    fn adamw_step(
        &self,
        params: &mut Tensor,
        grads: &Tensor,
        m: &mut Tensor,
        v: &mut Tensor,
        h: &AdamW,
    ) -> Result<()> {
        const OP: &str = "adamw_step";
        check::diffusion::adamw(params, grads, m, v, h)?;
        // The same f32 constants as the CPU backend's loop.
        let bc1 = 1.0 - h.beta1.powi(h.step.min(i32::MAX as u64) as i32);
        let bc2 = 1.0 - h.beta2.powi(h.step.min(i32::MAX as u64) as i32);
        let n = params.numel();
        let gi = input(self, OP, "grads", grads)?;
        let po = output(self, OP, "params", params)?;
        let mo = output(self, OP, "m", m)?;
        let vo = output(self, OP, "v", v)?;
        adamw_f32(
            self.device(),
            // One thread per float4 and one per tail element (kernels/optim.cu).
            LaunchCfg::for_items(n / 4 + n % 4, BLOCK),
            po,
            gi,
            mo,
            vo,
            h.beta1 as f32,
            h.beta2 as f32,
            (1.0 - h.beta1) as f32,
            (1.0 - h.beta2) as f32,
            h.eps as f32,
            (1.0 - h.lr * h.weight_decay) as f32,
            (h.lr / bc1) as f32,
            (1.0 / bc2.sqrt()) as f32,
            h.grad_scale as f32,
            int(OP, "params", n)?,
        )
    }

    fn lion_step(
        &self,
        params: &mut Tensor,
        grads: &Tensor,
        m: &mut Tensor,
        h: &Lion,
    ) -> Result<()> {
        const OP: &str = "lion_step";
        check::diffusion::flat_f32(OP, &[("params", params), ("grads", grads), ("m", m)])?;
        let k = LionConsts::new(h);
        let n = params.numel();
        let gi = input(self, OP, "grads", grads)?;
        let po = output(self, OP, "params", params)?;
        let mo = output(self, OP, "m", m)?;
        lion_f32(
            self.device(),
            LaunchCfg::for_items(n, BLOCK),
            po,
            gi,
            mo,
            k.b1,
            k.b2,
            k.c1,
            k.c2,
            k.decay,
            k.lr,
            k.gs,
            int(OP, "params", n)?,
        )
    }

    fn sgd_nesterov_step(
        &self,
        params: &mut Tensor,
        grads: &Tensor,
        buf: &mut Tensor,
        h: &SgdNesterov,
    ) -> Result<()> {
        const OP: &str = "sgd_nesterov_step";
        check::diffusion::flat_f32(OP, &[("params", params), ("grads", grads), ("buf", buf)])?;
        let n = params.numel();
        let gi = input(self, OP, "grads", grads)?;
        let po = output(self, OP, "params", params)?;
        let bo = output(self, OP, "buf", buf)?;
        sgd_nesterov_f32(
            self.device(),
            LaunchCfg::for_items(n, BLOCK),
            po,
            gi,
            bo,
            h.momentum as f32,
            h.weight_decay as f32,
            h.lr as f32,
            h.grad_scale as f32,
            int(OP, "params", n)?,
        )
    }

    fn prodigy_moments(
        &self,
        t: ProdigyBuffers<'_>,
        grads: &Tensor,
        h: &ProdigyMoments,
    ) -> Result<ProdigySums> {
        const OP: &str = "prodigy_moments";
        check::diffusion::flat_f32(
            OP,
            &[
                ("params", t.params),
                ("grads", grads),
                ("p0", t.p0),
                ("m", t.m),
                ("v", t.v),
                ("s", t.s),
            ],
        )?;
        let n = t.params.numel();
        if n == 0 {
            return Ok(ProdigySums {
                dot: 0.0,
                s_abs: 0.0,
            });
        }
        let k = ProdigyConsts::new(h);
        let blocks = n.div_ceil(SQ_CHUNK);
        let mut partial = alloc(self, [2 * blocks], DType::F64)?;
        prodigy_moments_f32(
            self.device(),
            LaunchCfg::new((int(OP, "params", blocks)? as u32, 1, 1), (BLOCK, 1, 1), 0),
            input(self, OP, "params", t.params)?,
            input(self, OP, "p0", t.p0)?,
            input(self, OP, "grads", grads)?,
            output(self, OP, "m", t.m)?,
            output(self, OP, "v", t.v)?,
            output(self, OP, "s", t.s)?,
            output(self, OP, "partial", &mut partial)?,
            k.b1,
            k.b2,
            k.b3,
            k.c1,
            k.c2,
            k.cs,
            k.coupled,
            k.gs,
            int(OP, "params", n)?,
        )?;
        self.pair_sums(OP, &partial)
    }

    fn dadapt_moments(
        &self,
        t: DAdaptBuffers<'_>,
        grads: &Tensor,
        h: &DAdaptMoments,
    ) -> Result<ProdigySums> {
        const OP: &str = "dadapt_moments";
        check::diffusion::flat_f32(
            OP,
            &[
                ("params", t.params),
                ("grads", grads),
                ("m", t.m),
                ("v", t.v),
                ("s", t.s),
            ],
        )?;
        let n = t.params.numel();
        if n == 0 {
            return Ok(ProdigySums {
                dot: 0.0,
                s_abs: 0.0,
            });
        }
        let k = DAdaptConsts::new(h);
        let blocks = n.div_ceil(SQ_CHUNK);
        let mut partial = alloc(self, [2 * blocks], DType::F64)?;
        dadapt_moments_f32(
            self.device(),
            LaunchCfg::new((int(OP, "params", blocks)? as u32, 1, 1), (BLOCK, 1, 1), 0),
            input(self, OP, "params", t.params)?,
            input(self, OP, "grads", grads)?,
            output(self, OP, "m", t.m)?,
            output(self, OP, "v", t.v)?,
            output(self, OP, "s", t.s)?,
            output(self, OP, "partial", &mut partial)?,
            k.b1,
            k.b2,
            k.sb2,
            k.c1,
            k.c2,
            k.cs,
            k.eps,
            k.coupled,
            k.gs,
            int(OP, "params", n)?,
        )?;
        self.pair_sums(OP, &partial)
    }

    fn adamw8bit_step(
        &self,
        params: &mut Tensor,
        grads: &Tensor,
        m: Quantized<'_>,
        v: Quantized<'_>,
        h: &AdamW,
    ) -> Result<()> {
        self.adamw8bit(params, grads, m, v, h)
    }

    fn lion8bit_step(
        &self,
        params: &mut Tensor,
        grads: &Tensor,
        m: Quantized<'_>,
        h: &Lion,
    ) -> Result<()> {
        self.lion8bit(params, grads, m, h)
    }

    fn adafactor_step(
        &self,
        params: &mut Tensor,
        grads: &Tensor,
        table: &AdafactorTable,
        t: AdafactorBuffers<'_>,
        h: &AdafactorStep,
    ) -> Result<f64> {
        self.adafactor(params, grads, table, t, h)
    }

    fn prodigy_update(
        &self,
        params: &mut Tensor,
        m: &Tensor,
        v: &Tensor,
        h: &ProdigyUpdate,
    ) -> Result<()> {
        const OP: &str = "prodigy_update";
        check::diffusion::flat_f32(OP, &[("params", params), ("m", m), ("v", v)])?;
        let n = params.numel();
        let mi = input(self, OP, "m", m)?;
        let vi = input(self, OP, "v", v)?;
        let po = output(self, OP, "params", params)?;
        prodigy_update_f32(
            self.device(),
            LaunchCfg::for_items(n, BLOCK),
            po,
            mi,
            vi,
            (1.0 - h.decay * h.dlr) as f32,
            h.dlr as f32,
            h.d_eps as f32,
            int(OP, "params", n)?,
        )
    }
}

impl CudaBackend {
    /// The two sums of a moments pass: its per-block pairs, each added in block order.
    fn pair_sums(&self, op: &'static str, partial: &Tensor) -> Result<ProdigySums> {
        let buf = buffer(self, op, "partial", partial)?;
        let mut bytes = vec![0u8; partial.numel() * 8];
        self.device().download(buf, &mut bytes)?;
        let sums = bytemuck::pod_collect_to_vec::<u8, f64>(&bytes);
        Ok(ProdigySums {
            dot: sums.iter().step_by(2).sum(),
            s_abs: sums.iter().skip(1).step_by(2).sum(),
        })
    }
}
