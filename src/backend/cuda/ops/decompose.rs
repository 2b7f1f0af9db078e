//! DoRA's weight decomposition (kernels/decompose.cu): one block per row of W', f32 only.

use super::super::backend::CudaBackend;
use super::super::launch::{kernels, In, LaunchCfg, Out};
use super::{alloc, input, int, output, BLOCK};
use crate::backend::{check, DecomposeOps};
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};

kernels! {
    module "decompose";
    fn weight_decompose_f32(w: In, m: In, v: Out, norm: Out, eps: f32, n: i32);
    fn weight_decompose_backward_f32(
        g: In, w: In, m: In, norm: In, dw: Out, dm: Out, eps: f32, n: i32
    );
}

/// The adapters (and so W') are f32 on the device.
fn f32_only(op: &'static str, w: &Tensor) -> Result<()> {
    if w.dtype() != DType::F32 {
        return Err(Error::DType {
            op,
            name: "w",
            got: w.dtype(),
            expected: "f32 (the adapters' dtype on the CUDA backend)".into(),
        });
    }
    Ok(())
}

/// One block per row.
fn rows_cfg(rows: usize) -> Result<LaunchCfg> {
    let grid = u32::try_from(rows).map_err(|_| Error::BadValue {
        op: "weight_decompose",
        name: "rows",
        value: rows.to_string(),
        expected: "at most 2^32 - 1 rows".into(),
    })?;
    Ok(LaunchCfg::new((grid, 1, 1), (BLOCK, 1, 1), 0))
}

impl DecomposeOps for CudaBackend {
    fn weight_decompose(&self, w: &Tensor, m: &Tensor, eps: f64) -> Result<(Tensor, Tensor)> {
        const OP: &str = "weight_decompose";
        let (rows, n) = check::decompose::forward(OP, w, m)?;
        f32_only(OP, w)?;
        let mut v = alloc(self, [rows, n], DType::F32)?;
        let mut norm = alloc(self, [rows], DType::F32)?;
        if rows == 0 {
            return Ok((v, norm));
        }
        weight_decompose_f32(
            self.device(),
            rows_cfg(rows)?,
            input(self, OP, "w", w)?,
            input(self, OP, "m", m)?,
            output(self, OP, "v", &mut v)?,
            output(self, OP, "norm", &mut norm)?,
            eps as f32,
            int(OP, "w", n)?,
        )?;
        Ok((v, norm))
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
        f32_only(OP, w)?;
        let mut dw = alloc(self, [rows, n], DType::F32)?;
        let mut dm = alloc(self, m.shape().clone(), DType::F32)?;
        if rows == 0 {
            return Ok((dw, dm));
        }
        weight_decompose_backward_f32(
            self.device(),
            rows_cfg(rows)?,
            input(self, OP, "g", g)?,
            input(self, OP, "w", w)?,
            input(self, OP, "m", m)?,
            input(self, OP, "norm", norm)?,
            output(self, OP, "dw", &mut dw)?,
            output(self, OP, "dm", &mut dm)?,
            eps as f32,
            int(OP, "w", n)?,
        )?;
        Ok((dw, dm))
    }
}
