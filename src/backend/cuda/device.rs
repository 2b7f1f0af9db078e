//! A compute device for the CUDA backend: a real GPU (feature `cuda`), the kernel emulator
//! (feature `cuda-emu`) or the memory meter (every build), the memory pool in front of it, and
//! the raw memory operations the engines provide. Launchers (launch.rs) ask it which engine
//! runs a kernel.
//!
//! The meter runs no kernel and holds no memory: it hands out addresses nobody reads, so the
//! backend's code runs unchanged and the pool records exactly the allocations a GPU would see,
//! in the same order and sizes. `lorafuse plan` predicts peak VRAM this way.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::buffer::DeviceBuffer;
#[cfg(feature = "cuda-emu")]
pub use super::emu::EmulatedOps;
#[cfg(feature = "cuda")]
use super::gpu::Gpu;
use super::launch::LaunchCfg;
use super::pool::{rounded, Pool, PoolStats};
use super::profile::DeviceLimits;
use crate::error::{Error, Result};
use crate::tensor::DType;

enum Engine {
    #[cfg(feature = "cuda")]
    Gpu(Gpu),
    #[cfg(feature = "cuda-emu")]
    Emu,
    /// No kernels, no memory.
    Meter(Meter),
}

/// The memory meter's bookkeeping: the next fake address, the bytes it has handed out, and
/// the device size it pretends to have (None: unlimited).
struct Meter {
    next: AtomicU64,
    held: AtomicUsize,
    total: Option<usize>,
}

/// One device and its memory pool. Shared (`Arc`) by the backend and every buffer on it.
pub struct Device {
    engine: Engine,
    /// The limits launches are chosen for and checked against: the GPU's own, or for the
    /// emulator and the meter a card's from the profile table.
    limits: DeviceLimits,
    pool: Mutex<Pool>,
    /// Fill every new buffer with 0xFF bytes (NaN in f16 and f32), so that an element a kernel
    /// forgets to write shows up in the results. Always on in the emulator; on a GPU with
    /// LORAFUSE_POISON=1.
    poison: bool,
    /// Launches per kernel since the device opened (or [`Device::take_launch_counts`]): which
    /// kernels a workload chose on this device's limits, for tests and diagnostics.
    launches: Mutex<BTreeMap<&'static str, u64>>,
    /// The emulator's instruction counts since the device opened (or
    /// [`Device::take_emulated_ops`]): which architecture's path the kernels ran.
    #[cfg(feature = "cuda-emu")]
    emulated: Mutex<EmulatedOps>,
}

impl Device {
    /// The kernel emulator: kernels/*.cu built for the host, device memory in host memory,
    /// launches held to [`DeviceLimits::default_target`]'s limits.
    #[cfg(feature = "cuda-emu")]
    pub fn emulator() -> Arc<Device> {
        Device::emulating(DeviceLimits::default_target())
    }
    /// The kernel emulator choosing and checking launches as on a device with `limits`.
    #[cfg(feature = "cuda-emu")]
    pub fn emulating(limits: DeviceLimits) -> Arc<Device> {
        Arc::new(Device {
            engine: Engine::Emu,
            limits,
            pool: Mutex::new(Pool::default()),
            poison: true,
            launches: Mutex::default(),
            emulated: Mutex::default(),
        })
    }

    /// The memory meter: allocations are counted by the pool but no memory exists, kernels are
    /// checked against the launch limits but not run, downloads read zeros. For planning.
    pub fn meter() -> Arc<Device> {
        Device::metering(DeviceLimits::default_target(), None)
    }
    /// The memory meter pretending to be a device of `total` bytes: allocations beyond it fail
    /// as on a full GPU, and [`Device::mem_info`] reports what is left (tests of the
    /// out-of-memory paths).
    pub fn meter_with_memory(total: usize) -> Arc<Device> {
        Device::metering(DeviceLimits::default_target(), Some(total))
    }
    /// The memory meter choosing and checking launches as on a device with `limits` (its
    /// memory is not enforced: a plan measures the peak and compares it).
    pub fn meter_for(limits: DeviceLimits) -> Arc<Device> {
        Device::metering(limits, None)
    }
    fn metering(limits: DeviceLimits, total: Option<usize>) -> Arc<Device> {
        Arc::new(Device {
            engine: Engine::Meter(Meter {
                next: AtomicU64::new(1 << 40),
                held: AtomicUsize::new(0),
                total,
            }),
            limits,
            pool: Mutex::new(Pool::default()),
            poison: false,
            launches: Mutex::default(),
            #[cfg(feature = "cuda-emu")]
            emulated: Mutex::default(),
        })
    }

    /// The limits launches are chosen for on this device.
    pub fn limits(&self) -> &DeviceLimits {
        &self.limits
    }

    /// CUDA device `ordinal`, with every kernel module loaded.
    #[cfg(feature = "cuda")]
    pub fn gpu(ordinal: usize) -> Result<Arc<Device>> {
        let gpu = Gpu::open(ordinal)?;
        Ok(Arc::new(Device {
            limits: gpu.limits().clone(),
            engine: Engine::Gpu(gpu),
            pool: Mutex::new(Pool::default()),
            poison: std::env::var_os("LORAFUSE_POISON").is_some_and(|v| v == "1"),
            launches: Mutex::default(),
            #[cfg(feature = "cuda-emu")]
            emulated: Mutex::default(),
        }))
    }

    /// "cuda" on a GPU, "cuda-emu" in the emulator.
    pub fn name(&self) -> &'static str {
        match &self.engine {
            #[cfg(feature = "cuda")]
            Engine::Gpu(_) => "cuda",
            #[cfg(feature = "cuda-emu")]
            Engine::Emu => "cuda-emu",
            Engine::Meter(_) => "meter",
        }
    }
    /// A line for messages: the GPU's name, capability and memory, or "kernel emulator".
    pub fn describe(&self) -> String {
        match &self.engine {
            #[cfg(feature = "cuda")]
            Engine::Gpu(g) => g.info().to_string(),
            #[cfg(feature = "cuda-emu")]
            Engine::Emu => "kernel emulator (kernels/*.cu on host threads)".into(),
            Engine::Meter(_) => "memory meter (counts allocations, runs nothing)".into(),
        }
    }
    pub fn is_emulator(&self) -> bool {
        match &self.engine {
            #[cfg(feature = "cuda-emu")]
            Engine::Emu => true,
            _ => false,
        }
    }
    /// Whether this is the memory meter (launchers return at once).
    pub fn is_meter(&self) -> bool {
        matches!(self.engine, Engine::Meter(_))
    }
    #[cfg(feature = "cuda")]
    pub(crate) fn gpu_engine(&self) -> Option<&Gpu> {
        match &self.engine {
            Engine::Gpu(g) => Some(g),
            _ => None,
        }
    }

    /// The pool's figures (in use, peak, reserved, driver allocations).
    pub fn pool_stats(&self) -> PoolStats {
        self.lock_pool().stats()
    }
    /// Starts a new peak measurement.
    pub fn reset_peak(&self) {
        self.lock_pool().reset_peak();
    }
    /// Frees every cached (not in use) block: the pool's reserve drops to what is in use.
    /// Every block is freed even when one fails; the first failure is returned.
    pub fn release_cache(&self) -> Result<()> {
        let blocks = self.lock_pool().drain_cache();
        self.free_blocks(blocks)
    }
    fn free_blocks(&self, blocks: Vec<(u64, usize)>) -> Result<()> {
        let mut first = Ok(());
        for (a, size) in blocks {
            let r = self.raw_free(a, size);
            if first.is_ok() {
                first = r;
            }
        }
        first
    }
    /// Waits for every launched kernel; reports a kernel's failure.
    pub fn synchronize(&self) -> Result<()> {
        match &self.engine {
            #[cfg(feature = "cuda")]
            Engine::Gpu(g) => g.synchronize(),
            _ => Ok(()),
        }
    }

    /// Checks a launch against the device's limits and counts it.
    pub(crate) fn check_launch(&self, kernel: &'static str, cfg: &LaunchCfg) -> Result<()> {
        cfg.check(kernel, self.limits.smem_per_block)?;
        let mut counts = self.launches.lock().unwrap_or_else(|p| p.into_inner());
        *counts.entry(kernel).or_insert(0) += 1;
        Ok(())
    }

    /// The launches per kernel since the last call (or since the device opened), and starts
    /// counting anew.
    pub fn take_launch_counts(&self) -> BTreeMap<&'static str, u64> {
        std::mem::take(&mut *self.launches.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Runs one launch of a kernel in the emulator, as on this device's compute capability
    /// (its architecture's path through common.cuh), and counts its instructions.
    #[cfg(feature = "cuda-emu")]
    pub(crate) fn emulate(
        &self,
        kernel: &str,
        cfg: &LaunchCfg,
        body: &(dyn Fn() + Sync),
    ) -> Result<()> {
        let ops = super::emu::launch(kernel, cfg, self.limits.compute_capability, body)?;
        self.emulated
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .add(&ops);
        Ok(())
    }

    /// The emulator's instruction counts since the last call (or since the device opened),
    /// and starts counting anew: m16n8k8 pairs and no cp.async show that sm_75's path ran.
    #[cfg(feature = "cuda-emu")]
    pub fn take_emulated_ops(&self) -> EmulatedOps {
        std::mem::take(&mut *self.emulated.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn lock_pool(&self) -> std::sync::MutexGuard<'_, Pool> {
        self.pool.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A buffer of `len` elements of `dtype`, contents unspecified (poisoned when enabled).
    pub(crate) fn alloc(self: &Arc<Self>, len: usize, dtype: DType) -> Result<DeviceBuffer> {
        let block = rounded(len * dtype.size_in_bytes());
        let cached = self.lock_pool().take(block);
        let addr = match cached {
            Some(a) => a,
            None => self.alloc_from_driver(block)?,
        };
        let buf = DeviceBuffer {
            dev: self.clone(),
            addr,
            block,
            len,
            dtype,
        };
        if self.poison {
            self.memset(addr, 0xff, block)?;
        }
        Ok(buf)
    }

    fn alloc_from_driver(&self, block: usize) -> Result<u64> {
        let mut pool = self.lock_pool();
        let addr = match self.raw_alloc(block)? {
            Some(a) => a,
            None => {
                // Give the cached blocks back and try once more before giving up.
                self.free_blocks(pool.drain_cache())?;
                match self.raw_alloc(block)? {
                    Some(a) => a,
                    None => return Err(self.out_of_memory(block, &pool)),
                }
            }
        };
        pool.add_from_driver(block);
        Ok(addr)
    }

    fn out_of_memory(&self, block: usize, pool: &Pool) -> Error {
        let mib = |b: usize| b as f64 / (1 << 20) as f64;
        let free = match self.mem_info() {
            Some((free, total)) => format!("{:.1} MiB free of {:.1} MiB", mib(free), mib(total)),
            None => "the allocator refused it".into(),
        };
        Error::OutOfMemory(format!(
            "out of {} memory: asked for {:.1} MiB, {free}; lorafuse's pool holds {:.1} MiB in \
             live buffers. Lower `batch_size` or `resolution` (or use `device: cpu`), then run again",
            self.name(),
            mib(block),
            mib(pool.stats().in_use),
        ))
    }

    /// (free, total) device memory.
    pub fn mem_info(&self) -> Option<(usize, usize)> {
        match &self.engine {
            #[cfg(feature = "cuda")]
            Engine::Gpu(g) => g.mem_info(),
            Engine::Meter(m) => m
                .total
                .map(|t| (t.saturating_sub(m.held.load(Ordering::Relaxed)), t)),
            #[cfg(feature = "cuda-emu")]
            Engine::Emu => None,
        }
    }

    pub(crate) fn release(&self, addr: u64, block: usize) {
        self.lock_pool().give_back(addr, block);
    }

    /// `bytes` from the driver: `Ok(None)` when the device is out of memory; any other
    /// driver failure keeps its code and is never called out-of-memory.
    fn raw_alloc(&self, bytes: usize) -> Result<Option<u64>> {
        match &self.engine {
            #[cfg(feature = "cuda")]
            Engine::Gpu(g) => g.alloc(bytes),
            #[cfg(feature = "cuda-emu")]
            Engine::Emu => {
                let Ok(layout) = std::alloc::Layout::from_size_align(bytes, 256) else {
                    return Ok(None);
                };
                // SAFETY: a non-zero size (the pool rounds up to its granule).
                let p = unsafe { std::alloc::alloc(layout) };
                Ok((!p.is_null()).then_some(p as usize as u64))
            }
            Engine::Meter(m) => {
                let held = m.held.fetch_add(bytes, Ordering::Relaxed) + bytes;
                if m.total.is_some_and(|t| held > t) {
                    m.held.fetch_sub(bytes, Ordering::Relaxed);
                    return Ok(None);
                }
                Ok(Some(m.next.fetch_add(bytes as u64, Ordering::Relaxed)))
            }
        }
    }
    fn raw_free(&self, addr: u64, bytes: usize) -> Result<()> {
        match &self.engine {
            #[cfg(feature = "cuda")]
            Engine::Gpu(g) => g.free(addr)?,
            #[cfg(feature = "cuda-emu")]
            Engine::Emu => {
                let layout = std::alloc::Layout::from_size_align(bytes, 256)
                    .expect("the layout was valid when allocated");
                // SAFETY: allocated by raw_alloc with this layout, freed once.
                unsafe { std::alloc::dealloc(addr as usize as *mut u8, layout) }
            }
            Engine::Meter(m) => {
                m.held.fetch_sub(bytes, Ordering::Relaxed);
            }
        }
        let _ = (addr, bytes);
        Ok(())
    }

    pub(crate) fn upload(&self, buf: &DeviceBuffer, src: &[u8]) -> Result<()> {
        assert!(src.len() <= buf.block, "upload larger than its buffer");
        match &self.engine {
            #[cfg(feature = "cuda")]
            Engine::Gpu(g) => g.upload(buf.addr, src),
            #[cfg(feature = "cuda-emu")]
            Engine::Emu => {
                // SAFETY: the buffer's block holds at least src.len() bytes.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        src.as_ptr(),
                        buf.addr as usize as *mut u8,
                        src.len(),
                    )
                };
                Ok(())
            }
            Engine::Meter(_) => Ok(()),
        }
    }
    pub(crate) fn download(&self, buf: &DeviceBuffer, dst: &mut [u8]) -> Result<()> {
        assert!(dst.len() <= buf.block, "download larger than its buffer");
        match &self.engine {
            #[cfg(feature = "cuda")]
            Engine::Gpu(g) => g.download(dst, buf.addr),
            #[cfg(feature = "cuda-emu")]
            Engine::Emu => {
                // SAFETY: the buffer's block holds at least dst.len() bytes.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        buf.addr as usize as *const u8,
                        dst.as_mut_ptr(),
                        dst.len(),
                    )
                };
                Ok(())
            }
            Engine::Meter(_) => {
                dst.fill(0);
                Ok(())
            }
        }
    }
    /// dst = src, byte for byte (the smaller of the two sizes).
    pub(crate) fn copy(&self, dst: &DeviceBuffer, src: &DeviceBuffer) -> Result<()> {
        let bytes = dst.size_in_bytes().min(src.size_in_bytes());
        match &self.engine {
            #[cfg(feature = "cuda")]
            Engine::Gpu(g) => g.copy(dst.addr, src.addr, bytes),
            #[cfg(feature = "cuda-emu")]
            Engine::Emu => {
                // SAFETY: both blocks hold at least `bytes` bytes and are distinct buffers.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        src.addr as usize as *const u8,
                        dst.addr as usize as *mut u8,
                        bytes,
                    )
                };
                Ok(())
            }
            Engine::Meter(_) => {
                let _ = bytes;
                Ok(())
            }
        }
    }
    pub(crate) fn memset(&self, addr: u64, byte: u8, bytes: usize) -> Result<()> {
        match &self.engine {
            #[cfg(feature = "cuda")]
            Engine::Gpu(g) => g.memset(addr, byte, bytes),
            #[cfg(feature = "cuda-emu")]
            Engine::Emu => {
                // SAFETY: `addr` starts a pool block of at least `bytes` bytes.
                unsafe { std::ptr::write_bytes(addr as usize as *mut u8, byte, bytes) };
                Ok(())
            }
            Engine::Meter(_) => {
                let _ = (addr, byte, bytes);
                Ok(())
            }
        }
    }
}

impl Drop for Device {
    /// Every buffer holds the device, so none is alive here: the cache is all there is. A
    /// failure to free it has nowhere to go (the library does not print; the driver frees the
    /// context's memory with the context): a program that wants to know calls
    /// [`Device::release_cache`] before dropping the device.
    fn drop(&mut self) {
        let _ = self.release_cache();
    }
}
