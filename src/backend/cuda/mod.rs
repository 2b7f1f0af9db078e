//! The CUDA backend.
//!
//! - [`Device`] is one compute device: a GPU opened through cudarc's driver API (feature
//!   `cuda`; kernels/*.cu compiled to PTX by build.rs, the module for the device's compute
//!   capability loaded at run time), the kernel emulator (feature `cuda-emu`: the same .cu
//!   sources built for the host, threads of a block as fibers meeting at barriers), so the
//!   kernels' logic, tails and launch configurations are tested on machines without a GPU, or
//!   the memory meter (every build: runs nothing, counts what the pool hands out), which
//!   `lorafuse plan` uses to predict peak VRAM without a GPU.
//! - Device memory comes from a caching pool (pool.rs) that reports its peak and makes no
//!   driver allocation once a training step has run once.
//! - Every kernel entry point has one typed launcher (launch.rs, declared in ops/<family>.rs)
//!   that drives either engine with the same grid, block, shared memory and arguments.
//! - [`CudaBackend`] implements `Backend` with these kernels: simple, correct kernels first
//!   (they are the GPU's own reference); the fast ones are checked against them.

mod backend;
mod buffer;
pub mod choice;
mod device;
#[cfg(feature = "cuda-emu")]
mod emu;
#[cfg(feature = "cuda")]
mod gpu;
pub(crate) mod launch;
pub(crate) mod ops;
mod pool;
mod profile;
pub(crate) mod tiles;

pub use backend::CudaBackend;
pub use buffer::DeviceBuffer;
pub use choice::{Impl, KernelChoice};
pub use device::Device;
#[cfg(feature = "cuda-emu")]
pub use device::EmulatedOps;
#[cfg(feature = "cuda")]
pub use gpu::{probe, DeviceInfo};
pub use ops::selftest;
pub use pool::PoolStats;
pub use profile::{DeviceLimits, USUAL_CARD};
