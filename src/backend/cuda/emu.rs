//! The kernel emulator's entry from Rust: kernels/emu/runtime.cpp runs a launch on host
//! threads and calls back into the typed launcher's closure, which calls the kernel.

use std::ffi::c_void;

use super::launch::LaunchCfg;
use crate::error::{Error, Result};

extern "C" {
    fn emu_launch(
        gx: u32,
        gy: u32,
        gz: u32,
        bx: u32,
        by: u32,
        bz: u32,
        smem: usize,
        sm: i32,
        thunk: extern "C" fn(*mut c_void),
        closure: *mut c_void,
        tally: *mut u64,
    ) -> i32;
}

type Body<'a> = &'a (dyn Fn() + Sync);

extern "C" fn trampoline(closure: *mut c_void) {
    // SAFETY: `closure` is the `&Body` that `launch` passes, alive for the whole launch.
    let body = unsafe { *(closure as *const Body) };
    body();
}

/// The instructions the emulator counted (kernels/emu/emu.h, `emu::Counted`): which
/// architecture's path the kernels took.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EmulatedOps {
    /// mma.sync m16n8k16, per warp (sm_80 and later).
    pub mma_m16n8k16: u64,
    /// mma.sync m16n8k8, per warp (sm_75: two per m16n8k16 of the kernels).
    pub mma_m16n8k8: u64,
    /// cp.async copies, per thread (sm_80 and later; sm_75 copies synchronously).
    pub cp_async: u64,
}

impl EmulatedOps {
    pub(crate) fn add(&mut self, o: &EmulatedOps) {
        self.mma_m16n8k16 += o.mma_m16n8k16;
        self.mma_m16n8k8 += o.mma_m16n8k8;
        self.cp_async += o.cp_async;
    }
}

/// Runs `body` (one call of the kernel function) for every thread of every block of `cfg`,
/// as on a device of compute capability `cc`, and returns what it counted.
pub(crate) fn launch(
    kernel: &str,
    cfg: &LaunchCfg,
    cc: (u32, u32),
    body: Body,
) -> Result<EmulatedOps> {
    let mut b: Body = body;
    let p = &mut b as *mut Body as *mut c_void;
    let mut tally = [0u64; 3];
    // SAFETY: emu_launch calls `trampoline(p)` from its worker threads and returns only after
    // all have finished, while `b` is alive; the body is Sync; `tally` has the 3 counters
    // (emu::COUNTED) it adds to.
    let rc = unsafe {
        emu_launch(
            cfg.grid.0,
            cfg.grid.1,
            cfg.grid.2,
            cfg.block.0,
            cfg.block.1,
            cfg.block.2,
            cfg.smem as usize,
            (cc.0 * 10 + cc.1) as i32,
            trampoline,
            p,
            tally.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(Error::Cuda {
            what: format!("emulated launch of {kernel}"),
            detail: format!("the emulator refused {cfg:?}"),
        });
    }
    Ok(EmulatedOps {
        mma_m16n8k16: tally[0],
        mma_m16n8k8: tally[1],
        cp_async: tally[2],
    })
}
