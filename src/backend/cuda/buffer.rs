//! Device buffers: a block of the pool, its element type and count, and the device it lives
//! on. Dropping a buffer returns its block to the pool.

use std::fmt;
use std::sync::Arc;

use super::device::Device;
use crate::error::Result;
use crate::tensor::DType;

/// A tensor's elements on a CUDA device (or in the kernel emulator's memory).
pub struct DeviceBuffer {
    pub(crate) dev: Arc<Device>,
    pub(crate) addr: u64,
    pub(crate) block: usize,
    pub(crate) len: usize,
    pub(crate) dtype: DType,
}

impl DeviceBuffer {
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn device(&self) -> &Arc<Device> {
        &self.dev
    }
    pub fn size_in_bytes(&self) -> usize {
        self.len * self.dtype.size_in_bytes()
    }
    /// The elements as f32 on the host (f16 and bf16 widened).
    pub fn to_f32_vec(&self) -> Result<Vec<f32>> {
        if self.dev.is_meter() {
            // The meter holds no values; zeros stand in, as its kernels leave them.
            return Ok(vec![0.0; self.len]);
        }
        let mut bytes = vec![0u8; self.size_in_bytes()];
        self.dev.download(self, &mut bytes)?;
        Ok(match self.dtype {
            DType::F32 => bytemuck::pod_collect_to_vec(&bytes),
            DType::F16 => bytemuck::pod_collect_to_vec::<u8, half::f16>(&bytes)
                .into_iter()
                .map(f32::from)
                .collect(),
            DType::BF16 => bytemuck::pod_collect_to_vec::<u8, half::bf16>(&bytes)
                .into_iter()
                .map(f32::from)
                .collect(),
            DType::F64 => bytemuck::pod_collect_to_vec::<u8, f64>(&bytes)
                .into_iter()
                .map(|x| x as f32)
                .collect(),
            DType::U8 => bytes.iter().map(|&x| x as f32).collect(),
        })
    }
    /// A copy on the same device.
    pub fn try_clone(&self) -> Result<DeviceBuffer> {
        let out = self.dev.alloc(self.len, self.dtype)?;
        self.dev.copy(&out, self)?;
        Ok(out)
    }
}

impl Clone for DeviceBuffer {
    /// Tensors are cloned rarely (the trainer never clones device activations); a device that
    /// cannot even copy a buffer has failed, and says so.
    fn clone(&self) -> Self {
        self.try_clone()
            .unwrap_or_else(|e| panic!("copying a device buffer failed: {e}"))
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        self.dev.release(self.addr, self.block);
    }
}

impl fmt::Debug for DeviceBuffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "DeviceBuffer({} x {} on {})",
            self.len,
            self.dtype,
            self.dev.name()
        )
    }
}
