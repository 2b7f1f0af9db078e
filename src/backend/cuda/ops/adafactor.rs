//! Adafactor on the flat buffer (kernels/adafactor.cu): one launch per step, one block per
//! tensor of the table (the kernel's header says why); the f32 constants and the checks are
//! the CPU backend's (cpu/adafactor.rs).

use super::super::backend::CudaBackend;
use super::super::launch::{kernels, In, LaunchCfg, Out};
use super::{alloc, buffer, input, int, output, BLOCK};
use crate::backend::cpu::adafactor::{check_adafactor, AdafactorConsts};
use crate::backend::{AdafactorBuffers, AdafactorStep, AdafactorTable};
use crate::error::Result;
use crate::tensor::{DType, Tensor};

kernels! {
    module "adafactor";
    fn adafactor_f32(p: Out, grad: In, table: In, row: Out, col: Out, v: Out, m: Out,
        row_mean: Out, lrs: Out, rel_step: f64, scale_param: i32, eps2: f64, clip: f64, wd: f64,
        gs: f32, eps1: f32, b2: f32, c2: f32, use_m: i32, b1: f32, c1: f32);
}

impl CudaBackend {
    pub(crate) fn adafactor(
        &self,
        params: &mut Tensor,
        grads: &Tensor,
        table: &AdafactorTable,
        t: AdafactorBuffers<'_>,
        h: &AdafactorStep,
    ) -> Result<f64> {
        const OP: &str = "adafactor_step";
        check_adafactor(OP, params, grads, table, &t)?;
        let segs = table.segments.len();
        if segs == 0 {
            return Ok(h.lr(0.0));
        }
        let k = AdafactorConsts::new(h);
        let use_m = t.m.is_some();
        // An absent buffer is never read: a null pointer stands for it.
        let out = |name, b: Option<&mut Tensor>| match b {
            Some(b) => output(self, OP, name, b),
            None => Ok(Out(0)),
        };
        let (row, col, v, m, row_mean) = (
            out("row", t.row)?,
            out("col", t.col)?,
            out("v", t.v)?,
            out("m", t.m)?,
            out("row_mean", t.row_mean)?,
        );
        let mut lrs = alloc(self, [segs], DType::F64)?;
        adafactor_f32(
            self.device(),
            LaunchCfg::new((int(OP, "segments", segs)? as u32, 1, 1), (BLOCK, 1, 1), 0),
            output(self, OP, "params", params)?,
            input(self, OP, "grads", grads)?,
            input(self, OP, "table", &table.device)?,
            row,
            col,
            v,
            m,
            row_mean,
            output(self, OP, "lrs", &mut lrs)?,
            h.rel_step,
            h.scale_parameter as i32,
            h.eps2,
            h.clip_threshold,
            h.weight_decay,
            k.gs,
            k.eps1,
            k.b2,
            k.c2,
            use_m as i32,
            k.b1,
            k.c1,
        )?;
        // The first tensor's rate (what AdafactorSchedule reports).
        let mut bytes = [0u8; 8];
        self.device()
            .download(buffer(self, OP, "lrs", &lrs)?, &mut bytes)?;
        Ok(f64::from_le_bytes(bytes))
    }
}
