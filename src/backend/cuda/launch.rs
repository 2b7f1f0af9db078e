//! Typed kernel launchers. Every kernel entry point is declared once, in the op family's file
//! under `ops/`, with [`kernels!`]; the macro makes a Rust function that launches it on the
//! GPU (cudarc's launch builder) or runs the same source in the kernel emulator, with the same
//! grid, block, shared memory and argument list. Nothing outside `backend::cuda` launches.

use crate::error::{Error, Result};

/// Grid, block and dynamic shared memory of one launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchCfg {
    pub grid: (u32, u32, u32),
    pub block: (u32, u32, u32),
    pub smem: u32,
}

impl LaunchCfg {
    /// `n` work items, one per thread, in blocks of `block` threads (a 1-D grid).
    pub fn for_items(n: usize, block: u32) -> LaunchCfg {
        let blocks = n.div_ceil(block as usize).max(1);
        LaunchCfg {
            grid: (blocks.min(u32::MAX as usize) as u32, 1, 1),
            block: (block, 1, 1),
            smem: 0,
        }
    }
    /// A grid of `grid` blocks of `block` threads.
    pub fn new(grid: (u32, u32, u32), block: (u32, u32, u32), smem: u32) -> LaunchCfg {
        LaunchCfg { grid, block, smem }
    }
    pub fn threads_per_block(&self) -> u64 {
        self.block.0 as u64 * self.block.1 as u64 * self.block.2 as u64
    }

    /// The limits every CUDA device of compute capability 8.0 and up enforces, checked
    /// before either engine runs the launch: so the emulator refuses what the GPU would.
    pub fn check(&self, kernel: &str, max_smem: u32) -> Result<()> {
        let bad = |why: String| {
            Err(Error::Cuda {
                what: format!("launch of {kernel} with {self:?}"),
                detail: why,
            })
        };
        let t = self.threads_per_block();
        if t == 0 || t > 1024 || self.block.2 > 64 {
            return bad(format!("{t} threads per block (1..=1024, z <= 64)"));
        }
        let (gx, gy, gz) = self.grid;
        if gx == 0 || gy == 0 || gz == 0 || gx > i32::MAX as u32 || gy > 65535 || gz > 65535 {
            return bad("grid dimensions out of range (x < 2^31, y and z <= 65535, none 0)".into());
        }
        if self.smem > max_smem {
            return bad(format!(
                "{} bytes of dynamic shared memory (at most {max_smem})",
                self.smem
            ));
        }
        Ok(())
    }
}

/// A device pointer a kernel reads (`const T*` in the .cu).
#[derive(Clone, Copy, Debug)]
#[cfg_attr(not(any(feature = "cuda", feature = "cuda-emu")), allow(dead_code))]
pub struct In(pub(crate) u64);
/// A device pointer a kernel writes (`T*` in the .cu).
#[derive(Clone, Copy, Debug)]
#[cfg_attr(not(any(feature = "cuda", feature = "cuda-emu")), allow(dead_code))]
pub struct Out(pub(crate) u64);

/// How one launcher argument crosses to the kernel: `Ffi` is its C type for the emulator's
/// direct call; on the GPU its bytes are pushed as they are (device pointers as u64).
pub trait KernelArg: Copy + Sync {
    #[cfg(feature = "cuda-emu")]
    type Ffi;
    #[cfg(feature = "cuda-emu")]
    fn ffi(self) -> Self::Ffi;
    #[cfg(feature = "cuda")]
    type Gpu: cudarc::driver::DeviceRepr;
    #[cfg(feature = "cuda")]
    fn gpu(self) -> Self::Gpu;
}

impl KernelArg for In {
    #[cfg(feature = "cuda-emu")]
    type Ffi = *const std::ffi::c_void;
    #[cfg(feature = "cuda-emu")]
    fn ffi(self) -> Self::Ffi {
        self.0 as usize as *const std::ffi::c_void
    }
    #[cfg(feature = "cuda")]
    type Gpu = u64;
    #[cfg(feature = "cuda")]
    fn gpu(self) -> u64 {
        self.0
    }
}
impl KernelArg for Out {
    #[cfg(feature = "cuda-emu")]
    type Ffi = *mut std::ffi::c_void;
    #[cfg(feature = "cuda-emu")]
    fn ffi(self) -> Self::Ffi {
        self.0 as usize as *mut std::ffi::c_void
    }
    #[cfg(feature = "cuda")]
    type Gpu = u64;
    #[cfg(feature = "cuda")]
    fn gpu(self) -> u64 {
        self.0
    }
}
macro_rules! scalar_arg {
    ($($t:ty),*) => {$(
        impl KernelArg for $t {
            #[cfg(feature = "cuda-emu")]
            type Ffi = $t;
            #[cfg(feature = "cuda-emu")]
            fn ffi(self) -> $t { self }
            #[cfg(feature = "cuda")]
            type Gpu = $t;
            #[cfg(feature = "cuda")]
            fn gpu(self) -> $t { self }
        }
    )*};
}
scalar_arg!(i32, u32, i64, u64, f32, f64);

/// Declares kernel entry points of one `.cu` module and makes a typed launcher for each:
/// `fn name(dev: &Device, cfg: LaunchCfg, args..) -> Result<()>`. Argument order and types
/// must mirror the `KERNEL void name(..)` in kernels/<module>.cu (the emulator tests and the
/// GPU run check both sides).
macro_rules! kernels {
    (module $module:literal; $( $(#[$doc:meta])* fn $name:ident ( $( $arg:ident : $ty:ty ),* $(,)? ); )* ) => {
        #[cfg(feature = "cuda-emu")]
        mod ffi {
            #[allow(unused_imports)]
            use super::*;
            extern "C" {
                $( pub fn $name( $( $arg: <$ty as $crate::backend::cuda::launch::KernelArg>::Ffi ),* ); )*
            }
        }
        $(
            $(#[$doc])*
            #[allow(clippy::too_many_arguments, dead_code)]
            pub(crate) fn $name(
                dev: &$crate::backend::cuda::Device,
                cfg: $crate::backend::cuda::launch::LaunchCfg,
                $( $arg: $ty ),*
            ) -> $crate::error::Result<()> {
                #[allow(unused_imports)]
                use $crate::backend::cuda::launch::KernelArg;
                dev.check_launch(stringify!($name), &cfg)?;
                if dev.is_meter() {
                    $( let _ = $arg; )*
                    return Ok(());
                }
                #[cfg(feature = "cuda")]
                if let Some(gpu) = dev.gpu_engine() {
                    use cudarc::driver::PushKernelArg;
                    let f = gpu.function($module, stringify!($name), cfg.smem)?;
                    $( let $arg = $arg.gpu(); )*
                    let mut b = gpu.stream().launch_builder(&f);
                    $( b.arg(&$arg); )*
                    // SAFETY: the argument list mirrors the kernel's signature (declared
                    // above, checked against the emulator build of the same source), and
                    // every pointer is a live pool buffer sized by the op that launches.
                    let r = unsafe { b.launch(gpu.config(&cfg)) };
                    return gpu.launched(r, stringify!($name));
                }
                #[cfg(feature = "cuda-emu")]
                if dev.is_emulator() {
                    // SAFETY: as above; on the emulator device pointers are host pointers
                    // into the pool's buffers.
                    let call = || unsafe { ffi::$name( $( $arg.ffi() ),* ) };
                    return dev.emulate(stringify!($name), &cfg, &call);
                }
                #[allow(unreachable_code)]
                Err($crate::error::Error::CudaUnavailable(format!(
                    "{}: no engine can run kernel {}", dev.name(), stringify!($name)
                )))
            }
        )*
    };
}
pub(crate) use kernels;
