//! Elementwise ops: sums for residuals, scaling, the per-channel time-embedding bias of a
//! ResNet block, and dtype casts.
//!
//!   add:              y = a + b                     (same shapes)
//!   add_assign:       a += b                        (residual and skip gradients accumulate)
//!   scale:            y = s·x
//!   mul:              y = a ⊙ b                     (same shapes)
//!   add_channel_bias: y[n, c, ...] = x[n, c, ...] + bias[n, c]
//!   cast:             f16 <-> f32 <-> f64 (f16 rounds to nearest even); u8 <-> the others
//!                     exactly (to u8: the integers 0 to 255 only)

use half::{bf16, f16};
use rayon::prelude::*;

use super::CpuBackend;
use super::{data, data_mut, dispatch, tensor, Real};
use crate::backend::{check, ElementwiseOps, Tensors};
use crate::error::Result;
use crate::tensor::{CpuData, DType, Storage, Tensor};

/// Elements per rayon task for pointwise loops.
pub(crate) const CHUNK: usize = 1 << 14;

impl ElementwiseOps for CpuBackend {
    fn add(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        check::same_shape("add", "a", a, "b", b)?;
        dispatch!("add", a, add_t(a, b))
    }

    fn add_assign(&self, a: &mut Tensor, b: &Tensor) -> Result<()> {
        check::same_shape("add_assign", "a", a, "b", b)?;
        match a.dtype() {
            DType::F32 => add_assign_t::<f32>(a, b),
            DType::F64 => add_assign_t::<f64>(a, b),
            d => Err(super::cpu_dtype_error("add_assign", d)),
        }
    }

    fn scale(&self, x: &Tensor, s: f64) -> Result<Tensor> {
        dispatch!("scale", x, scale_t(x, s))
    }

    fn mul(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        check::same_shape("mul", "a", a, "b", b)?;
        dispatch!("mul", a, mul_t(a, b))
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
        dispatch!(OP, x, add_channel_bias_t(x, bias))
    }
}

fn add_t<T: Real>(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (av, bv) = (data::<T>("add", "a", a)?, data::<T>("add", "b", b)?);
    let mut y = av.to_vec();
    y.par_chunks_mut(CHUNK)
        .zip(bv.par_chunks(CHUNK))
        .for_each(|(y, b)| y.iter_mut().zip(b).for_each(|(y, &b)| *y += b));
    tensor(a.shape().clone(), y)
}

fn mul_t<T: Real>(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (av, bv) = (data::<T>("mul", "a", a)?, data::<T>("mul", "b", b)?);
    let mut y = av.to_vec();
    y.par_chunks_mut(CHUNK)
        .zip(bv.par_chunks(CHUNK))
        .for_each(|(y, b)| y.iter_mut().zip(b).for_each(|(y, &b)| *y *= b));
    tensor(a.shape().clone(), y)
}

fn add_assign_t<T: Real>(a: &mut Tensor, b: &Tensor) -> Result<()> {
    let bv = data::<T>("add_assign", "b", b)?;
    let av = data_mut::<T>("add_assign", "a", a)?;
    av.par_chunks_mut(CHUNK)
        .zip(bv.par_chunks(CHUNK))
        .for_each(|(a, b)| a.iter_mut().zip(b).for_each(|(a, &b)| *a += b));
    Ok(())
}

fn scale_t<T: Real>(x: &Tensor, s: f64) -> Result<Tensor> {
    let s = T::from_f64(s);
    let y = data::<T>("scale", "x", x)?
        .par_iter()
        .map(|&v| v * s)
        .collect();
    tensor(x.shape().clone(), y)
}

fn add_channel_bias_t<T: Real>(x: &Tensor, bias: &Tensor) -> Result<Tensor> {
    const OP: &str = "add_channel_bias";
    let xs = data::<T>(OP, "x", x)?;
    let bs = data::<T>(OP, "bias", bias)?;
    let plane = x.dims()[2..].iter().product::<usize>();
    let mut y = xs.to_vec();
    if plane > 0 {
        y.par_chunks_mut(plane)
            .zip(bs.par_iter())
            .for_each(|(p, &b)| p.iter_mut().for_each(|v| *v += b));
    }
    tensor(x.shape().clone(), y)
}

/// f32 values that are byte codes (the integers 0 to 255) as bytes; anything else is refused.
pub(crate) fn codes(v: &[f32]) -> Result<Vec<u8>> {
    v.iter()
        .map(|&f| {
            if f.fract() == 0.0 && (0.0..=255.0).contains(&f) {
                Ok(f as u8)
            } else {
                Err(crate::error::Error::BadValue {
                    op: "cast",
                    name: "x",
                    value: f.to_string(),
                    expected:
                        "a byte code, an integer from 0 to 255 (u8 holds quantised optimizer state)"
                            .into(),
                })
            }
        })
        .collect()
}

impl Tensors for CpuBackend {
    fn zeros(&self, shape: &[usize], dtype: DType) -> Result<Tensor> {
        Ok(Tensor::zeros(shape, dtype))
    }
    fn tensor_from_f32(&self, shape: &[usize], data: &[f32], dtype: DType) -> Result<Tensor> {
        let t = Tensor::from_f32(shape, data.to_vec())?;
        if dtype == DType::F32 {
            Ok(t)
        } else {
            self.cast(&t, dtype)
        }
    }
    fn to_f32_vec(&self, x: &Tensor) -> Result<Vec<f32>> {
        Ok(x.to_f32_vec())
    }
    fn cast(&self, x: &Tensor, dtype: DType) -> Result<Tensor> {
        #[allow(irrefutable_let_patterns)]
        let Storage::Cpu(src) = x.storage() else {
            return Err(crate::error::Error::Device {
                op: "cast",
                name: "x",
                got: x.storage().device_name().into(),
                backend: "cpu",
            });
        };
        let data = match (src, dtype) {
            (CpuData::F16(v), DType::F16) => CpuData::F16(v.clone()),
            (CpuData::F32(v), DType::F32) => CpuData::F32(v.clone()),
            (CpuData::F64(v), DType::F64) => CpuData::F64(v.clone()),
            (CpuData::F16(v), DType::F32) => {
                CpuData::F32(v.par_iter().map(|h| h.to_f32()).collect())
            }
            (CpuData::F16(v), DType::F64) => {
                CpuData::F64(v.par_iter().map(|h| h.to_f64()).collect())
            }
            (CpuData::F32(v), DType::F16) => {
                CpuData::F16(v.par_iter().map(|&f| f16::from_f32(f)).collect())
            }
            (CpuData::F64(v), DType::F16) => {
                CpuData::F16(v.par_iter().map(|&f| f16::from_f64(f)).collect())
            }
            (CpuData::F32(v), DType::F64) => {
                CpuData::F64(v.par_iter().map(|&f| f as f64).collect())
            }
            (CpuData::F64(v), DType::F32) => {
                CpuData::F32(v.par_iter().map(|&f| f as f32).collect())
            }
            (CpuData::U8(v), DType::U8) => CpuData::U8(v.clone()),
            (CpuData::U8(v), d) => {
                return Tensor::from_f32(x.dims(), v.iter().map(|&b| b as f32).collect()).and_then(
                    |t| {
                        if d == DType::F32 {
                            Ok(t)
                        } else {
                            self.cast(&t, d)
                        }
                    },
                )
            }
            (_, DType::U8) => CpuData::U8(codes(&x.to_f32_vec())?),
            // bf16 is held and converted here, never computed in: through f32, which holds
            // every bf16 exactly (the rounding to bf16 is to nearest even).
            (CpuData::BF16(v), d) => {
                return self.cast(
                    &Tensor::from_f32(x.dims(), v.iter().map(|h| h.to_f32()).collect())?,
                    d,
                )
            }
            (_, DType::BF16) => CpuData::BF16(
                x.to_f32_vec()
                    .par_iter()
                    .map(|&f| bf16::from_f32(f))
                    .collect(),
            ),
        };
        Tensor::from_cpu(x.shape().clone(), data)
    }
}
