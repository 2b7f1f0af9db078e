//! Ctrl-C: the first press asks the trainer to finish its step, save and exit; a second press
//! ends the process at once (the default action is restored after the first).

use std::sync::atomic::{AtomicBool, Ordering};

/// Set by the first SIGINT.
pub static STOP: AtomicBool = AtomicBool::new(false);

#[cfg(unix)]
mod sys {
    pub const SIGINT: i32 = 2;
    pub const SIG_DFL: usize = 0;
    extern "C" {
        // POSIX signal(2); the handler is passed as an address.
        pub fn signal(signum: i32, handler: usize) -> usize;
    }
}

#[cfg(unix)]
extern "C" fn on_sigint(_: i32) {
    STOP.store(true, Ordering::SeqCst);
    // SAFETY: signal() with SIG_DFL is async-signal-safe (it only installs a disposition).
    unsafe {
        sys::signal(sys::SIGINT, sys::SIG_DFL);
    }
}

/// Installs the handler (a no-op where SIGINT does not exist).
pub fn install() {
    #[cfg(unix)]
    // SAFETY: the handler only stores to an atomic and restores the default disposition.
    unsafe {
        sys::signal(sys::SIGINT, on_sigint as extern "C" fn(i32) as usize);
    }
}
