//! `CudaBackend`: the whole `Backend` op set on a [`Device`] (a GPU, the kernel emulator or the
//! memory meter). This file holds what the backend is (device, dtype, kernel choice); each op
//! family implements its trait for it in its own file (`impl LinearOps for CudaBackend` in
//! ops/linear.rs, kernels/linear.cu), which checks the arguments with the shared checks,
//! allocates outputs from the device's pool and launches the family's kernels. Nothing here
//! imports the ops.

use std::sync::Arc;

use super::choice::{Impl, KernelChoice};
use super::device::Device;
use crate::backend::{BackendInfo, DeviceMemory};
use crate::error::{Error, Result};
use crate::tensor::DType;

/// The CUDA backend: activations and frozen weights in `dtype` (f16, bf16 or f32), LoRA weights,
/// their gradients and the optimizer state in f32, f32 accumulation everywhere.
#[derive(Clone)]
pub struct CudaBackend {
    dev: Arc<Device>,
    dtype: DType,
    kernels: KernelChoice,
}

impl CudaBackend {
    /// A backend computing in `dtype` (f16, bf16 or f32) on `dev`; bf16 needs compute
    /// capability 8.0 or newer ([`super::DeviceLimits::bf16_refused`]).
    pub fn new(dev: Arc<Device>, dtype: DType) -> Result<CudaBackend> {
        if !matches!(dtype, DType::F16 | DType::BF16 | DType::F32) {
            return Err(Error::DType {
                op: "CudaBackend::new",
                name: "dtype",
                got: dtype,
                expected: "f16, bf16 or f32 (f64 exists on the CPU backend only)".into(),
            });
        }
        if let Some(why) = dev.limits().unsupported() {
            return Err(Error::CudaUnavailable(why));
        }
        if dtype == DType::BF16 {
            if let Some(why) = dev.limits().bf16_refused() {
                return Err(Error::CudaUnavailable(why));
            }
        }
        Ok(CudaBackend {
            dev,
            dtype,
            kernels: KernelChoice::from_env()?,
        })
    }
    /// The same backend with the kernel families chosen by `kernels` (tests compare the fast
    /// kernels with their simple twins this way).
    pub fn with_kernels(mut self, kernels: KernelChoice) -> CudaBackend {
        self.kernels = kernels;
        self
    }
    /// Which implementation each kernel family runs as asked; fast kernels serve f16 and bf16
    /// (see [`CudaBackend::fast16`]: f32 runs the simple kernels).
    pub fn kernels(&self) -> KernelChoice {
        self.kernels
    }
    /// Whether a family set to `choice` runs its fast kernels (f16 and bf16 storage) here:
    /// asked for, and f16, or bf16 on a device with bf16 tensor cores (compute capability 8.0+).
    pub(crate) fn fast16(&self, choice: Impl) -> bool {
        choice == Impl::Fast
            && match self.dtype {
                DType::F16 => true,
                DType::BF16 => self.dev.limits().bf16_refused().is_none(),
                _ => false,
            }
    }
    pub fn device(&self) -> &Arc<Device> {
        &self.dev
    }
}

impl BackendInfo for CudaBackend {
    fn name(&self) -> &'static str {
        self.dev.name()
    }
    fn compute_dtype(&self) -> DType {
        self.dtype
    }
    fn device_memory(&self) -> Option<DeviceMemory> {
        let s = self.dev.pool_stats();
        Some(DeviceMemory {
            in_use: s.in_use,
            peak: s.peak_in_use,
        })
    }
    fn release_cache(&self) -> Result<()> {
        self.dev.release_cache()
    }
    fn device_free_memory(&self) -> Option<usize> {
        self.dev.mem_info().map(|(free, _)| free)
    }
    fn device_limits(&self) -> Option<super::DeviceLimits> {
        Some(self.dev.limits().clone())
    }
    fn with_compute_dtype(&self, dtype: DType) -> Option<Box<dyn crate::backend::Backend>> {
        let twin = CudaBackend::new(self.dev.clone(), dtype).ok()?;
        Some(Box::new(twin.with_kernels(self.kernels)))
    }
}
