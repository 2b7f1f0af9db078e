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
        thunk: extern "C" fn(*mut c_void),
        closure: *mut c_void,
    ) -> i32;
}

type Body<'a> = &'a (dyn Fn() + Sync);

extern "C" fn trampoline(closure: *mut c_void) {
    // SAFETY: `closure` is the `&Body` that `launch` passes, alive for the whole launch.
    let body = unsafe { *(closure as *const Body) };
    body();
}

/// Runs `body` (one call of the kernel function) for every thread of every block of `cfg`.
pub(crate) fn launch(kernel: &str, cfg: &LaunchCfg, body: Body) -> Result<()> {
    let mut b: Body = body;
    let p = &mut b as *mut Body as *mut c_void;
    // SAFETY: emu_launch calls `trampoline(p)` from its worker threads and returns only after
    // all have finished, while `b` is alive; the body is Sync.
    let rc = unsafe {
        emu_launch(
            cfg.grid.0,
            cfg.grid.1,
            cfg.grid.2,
            cfg.block.0,
            cfg.block.1,
            cfg.block.2,
            cfg.smem as usize,
            trampoline,
            p,
        )
    };
    if rc != 0 {
        return Err(Error::Cuda {
            what: format!("emulated launch of {kernel}"),
            detail: format!("the emulator refused {cfg:?}"),
        });
    }
    Ok(())
}
