//! The CUDA backend (feature `cuda`). Its kernels and the `Backend` implementation come with
//! the CUDA backend work; for now this module finds the driver and the device, so that a
//! machine without either gets a clear message instead of a panic.

use std::fmt;

use crate::error::{Error, Result};

/// What `probe` found on device 0.
#[derive(Clone, Debug)]
pub struct DeviceInfo {
    pub name: String,
    pub compute_capability: (i32, i32),
    pub total_memory: usize,
}

impl fmt::Display for DeviceInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (sm_{}{}, {:.1} GiB)",
            self.name,
            self.compute_capability.0,
            self.compute_capability.1,
            self.total_memory as f64 / (1u64 << 30) as f64
        )
    }
}

/// Opens libcuda and device 0. Errors say which of driver or device is missing.
pub fn probe() -> Result<DeviceInfo> {
    use cudarc::driver::sys::CUdevice_attribute as A;
    // Without this check cudarc panics when libcuda.so is absent.
    // SAFETY: only tries to dlopen the driver library.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(Error::CudaUnavailable(
            "libcuda.so was not found: no NVIDIA driver on this machine (use `device: cpu`)".into(),
        ));
    }
    let ctx = cudarc::driver::CudaContext::new(0)
        .map_err(|e| Error::CudaUnavailable(format!("no usable CUDA device 0: {e}")))?;
    let attr = |a| {
        ctx.attribute(a)
            .map_err(|e| Error::CudaUnavailable(format!("cannot query device 0: {e}")))
    };
    Ok(DeviceInfo {
        name: ctx.name().unwrap_or_else(|_| "unknown device".into()),
        compute_capability: (
            attr(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?,
            attr(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?,
        ),
        total_memory: ctx.total_mem().unwrap_or(0),
    })
}
