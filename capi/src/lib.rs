//! The C ABI of lorafuse (liblorafuse_capi.so and include/lorafuse.h, which
//! tests/header.rs generates from this file's exported items and their doc comments).
//!
//! Every exported function catches panics (an internal error is `LORAFUSE_ERR_PANIC`), takes
//! NULL and bad UTF-8 as errors, and keeps its failure's message on the trainer handle, so
//! that trainers on different threads never see each other's errors.

#![allow(non_camel_case_types)]
// The functions check their pointers for NULL; the rest of each pointer's contract is the C
// caller's, as lorafuse.h states it per function.
#![allow(clippy::missing_safety_doc)]

mod events;
mod fail;
mod handle;
mod strings;

use std::ffi::{c_char, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

use lorafuse::api::Trainer;

use fail::Fail;
use handle::{Handle, State};
use strings::{copy_out, text, texts};

/// Success (`lorafuse_wait`: the run finished all its steps, or stopped early as configured).
pub const LORAFUSE_OK: i32 = 0;
/// `lorafuse_wait`: the run was cancelled; it finished its step and saved its state, and
/// `lorafuse_start(t, 1)` resumes it.
pub const LORAFUSE_CANCELLED: i32 = 1;
/// The configuration has problems (`lorafuse_problem_key`/`lorafuse_problem_message`);
/// nothing was done.
pub const LORAFUSE_ERR_INVALID: i32 = 2;
/// The memory cap refuses the run (or its thread pool cannot start); nothing was done.
pub const LORAFUSE_ERR_REFUSED: i32 = 3;
/// The run failed (a bad image, a device error, a full disk).
pub const LORAFUSE_ERR_FAILED: i32 = 4;
/// A run was started and not yet waited for.
pub const LORAFUSE_ERR_BUSY: i32 = 5;
/// A pointer argument is NULL.
pub const LORAFUSE_ERR_NULL: i32 = 6;
/// A string argument is not valid UTF-8.
pub const LORAFUSE_ERR_UTF8: i32 = 7;
/// `lorafuse_wait` without a run started.
pub const LORAFUSE_ERR_NOT_STARTED: i32 = 8;
/// An internal error in lorafuse (a caught panic): please report it.
pub const LORAFUSE_ERR_PANIC: i32 = 9;

/// {"event":"info","message":text}
pub const LORAFUSE_EVENT_INFO: i32 = 1;
/// {"event":"warning","message":text}
pub const LORAFUSE_EVENT_WARNING: i32 = 2;
/// {"event":"started","total_steps","first_step","steps_per_epoch","images","validation_images","trainable"}
pub const LORAFUSE_EVENT_STARTED: i32 = 3;
/// {"event":"step","step","total","epoch","loss","lr","seconds","skipped","device_memory":{"in_use","peak"} or null}
pub const LORAFUSE_EVENT_STEP: i32 = 4;
/// {"event":"validation","step","loss","best"}
pub const LORAFUSE_EVENT_VALIDATION: i32 = 5;
/// {"event":"saved","what","path"}
pub const LORAFUSE_EVENT_SAVED: i32 = 6;
/// The last event of a run that ended (also when cancelled): {"event":"finished","report":{...}}
/// with the report of lorafuse_report.
pub const LORAFUSE_EVENT_FINISHED: i32 = 7;
/// The last event of a run that did not end well: {"event":"failed","code","message"}.
pub const LORAFUSE_EVENT_FAILED: i32 = 8;

/// A configured trainer: made by lorafuse_trainer_from_yaml or lorafuse_trainer_from_file,
/// released by lorafuse_free. All functions taking one may be called from any thread;
/// lorafuse_free must be the last call on it.
pub struct lorafuse_trainer(Handle);

/// Receives a run's events on the run's own thread: `kind` is a LORAFUSE_EVENT_* value and
/// `json` a small JSON object (valid only during the call) whose "event" names the kind. It may
/// call lorafuse_cancel, but not lorafuse_wait or lorafuse_free on the same trainer.
pub type lorafuse_event_fn =
    Option<unsafe extern "C" fn(user: *mut c_void, kind: i32, json: *const c_char)>;

/// The library's version, a static string.
#[no_mangle]
pub extern "C" fn lorafuse_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// Writes `lorafuse demo`'s tiny model, synthetic data and DIR/demo.yaml (`steps` optimizer
/// steps) under `dir`, for trying the library. On failure the message goes to `message`
/// (`cap` bytes, may be NULL when `cap` is 0).
#[no_mangle]
pub unsafe extern "C" fn lorafuse_demo_write(
    dir: *const c_char,
    steps: u32,
    message: *mut c_char,
    cap: usize,
) -> i32 {
    let r = catch_unwind(|| {
        let dir = text(dir, "dir")?;
        lorafuse::demo::prepare(dir.as_ref(), steps as usize)
            .map(|_| ())
            .map_err(|e| Fail::new(LORAFUSE_ERR_FAILED, e.to_string()))
    })
    .unwrap_or_else(|p| Err(Fail::panic(p)));
    match r {
        Ok(()) => LORAFUSE_OK,
        Err(f) => {
            copy_out(&f.message, message, cap);
            f.code
        }
    }
}

/// Makes a trainer from YAML text (`name` stands for the file in messages, NULL for
/// "config.yaml"; relative paths in it are read against the working folder) and
/// `n_overrides` "key=value" strings (`overrides` may be NULL when it is 0). When `out` is
/// not NULL, *out is a trainer to free even when the result is an error: its
/// lorafuse_error_message and problems say what is wrong.
#[no_mangle]
pub unsafe extern "C" fn lorafuse_trainer_from_yaml(
    yaml: *const c_char,
    name: *const c_char,
    overrides: *const *const c_char,
    n_overrides: usize,
    out: *mut *mut lorafuse_trainer,
) -> i32 {
    make(out, || {
        let yaml = text(yaml, "yaml")?;
        let name = if name.is_null() {
            "config.yaml"
        } else {
            text(name, "name")?
        };
        let sets = texts(overrides, n_overrides, "overrides")?;
        Ok(Trainer::from_yaml(yaml, name, &sets)?)
    })
}

/// Makes a trainer from a config file (lorafuse's YAML or a kohya TOML) and overrides, as
/// lorafuse_trainer_from_yaml does.
#[no_mangle]
pub unsafe extern "C" fn lorafuse_trainer_from_file(
    path: *const c_char,
    overrides: *const *const c_char,
    n_overrides: usize,
    out: *mut *mut lorafuse_trainer,
) -> i32 {
    make(out, || {
        let path = text(path, "path")?;
        let sets = texts(overrides, n_overrides, "overrides")?;
        Ok(Trainer::from_file(path, &sets)?)
    })
}

/// Worker threads for the run's CPU work (a pool of its own); 0: a pool shared by the
/// process. Applies to runs started afterwards.
#[no_mangle]
pub unsafe extern "C" fn lorafuse_set_threads(t: *mut lorafuse_trainer, threads: usize) -> i32 {
    with_state(t, |st| st.caps.threads = (threads > 0).then_some(threads))
}

/// Refuses a run whose planned memory exceeds `bytes` (0: no cap); with `adapt` non-zero, turns
/// on gradient checkpointing and splits the batch until the plan fits instead (a warning event
/// says so).
#[no_mangle]
pub unsafe extern "C" fn lorafuse_set_max_memory(
    t: *mut lorafuse_trainer,
    bytes: u64,
    adapt: i32,
) -> i32 {
    with_state(t, |st| {
        st.caps.max_memory_bytes = (bytes > 0).then_some(bytes);
        st.caps.adapt_to_memory = adapt != 0;
    })
}

/// Every folder the run writes must lie under `root` (NULL: anywhere); one outside is a
/// problem that lorafuse_validate and lorafuse_start report (LORAFUSE_ERR_INVALID).
#[no_mangle]
pub unsafe extern "C" fn lorafuse_set_output_root(
    t: *mut lorafuse_trainer,
    root: *const c_char,
) -> i32 {
    call(t, |h| {
        let root = if root.is_null() {
            None
        } else {
            Some(PathBuf::from(text(root, "root")?))
        };
        h.state().caps.output_root = root;
        Ok(LORAFUSE_OK)
    })
}

/// Sends the events of runs started afterwards to `callback` with `user` (NULL: none).
#[no_mangle]
pub unsafe extern "C" fn lorafuse_set_event_callback(
    t: *mut lorafuse_trainer,
    callback: lorafuse_event_fn,
    user: *mut c_void,
) -> i32 {
    with_state(t, |st| {
        st.sink = handle::Sink { f: callback, user };
    })
}

/// Checks everything that would stop a run before it starts (the configuration, its paths,
/// the output root): LORAFUSE_OK, or LORAFUSE_ERR_INVALID with the problems' count in *count
/// (`count` may be NULL).
#[no_mangle]
pub unsafe extern "C" fn lorafuse_validate(t: *mut lorafuse_trainer, count: *mut usize) -> i32 {
    let code = call(t, |h| h.validate());
    if let (false, Some(h)) = (count.is_null(), t.as_ref()) {
        *count = h.0.state().problems.len();
    }
    code
}

/// Copies the key of problem `i` (from the last lorafuse_validate, or the failed load or run)
/// into `buf` ("" when it is about no one key) and returns its length: as snprintf, `cap`
/// counts the NUL and a longer text is cut.
#[no_mangle]
pub unsafe extern "C" fn lorafuse_problem_key(
    t: *mut lorafuse_trainer,
    i: usize,
    buf: *mut c_char,
    cap: usize,
) -> usize {
    read_problem(t, i, buf, cap, |p| p.key.clone().unwrap_or_default())
}

/// Copies the message of problem `i` into `buf`, as lorafuse_problem_key.
#[no_mangle]
pub unsafe extern "C" fn lorafuse_problem_message(
    t: *mut lorafuse_trainer,
    i: usize,
    buf: *mut c_char,
    cap: usize,
) -> usize {
    read_problem(t, i, buf, cap, |p| p.message.clone())
}

/// Copies the configuration's notices (settings that are valid but do nothing as combined,
/// kohya meanings applied: what the CLI prints as warnings), one a line, into `buf` ("" when
/// there are none), as lorafuse_problem_key.
#[no_mangle]
pub unsafe extern "C" fn lorafuse_notices(
    t: *mut lorafuse_trainer,
    buf: *mut c_char,
    cap: usize,
) -> usize {
    read(t, buf, cap, |st| st.notices().join("\n"))
}

/// Starts a run on a thread of its own and returns at once: from the start, or with `resume`
/// non-zero from the state saved in output_dir (after a cancel or a crash). Returns
/// LORAFUSE_ERR_INVALID with the problems lorafuse_validate would give, LORAFUSE_ERR_BUSY while
/// an earlier run has not been waited for; a run the memory cap refuses starts and ends at
/// once (lorafuse_wait: LORAFUSE_ERR_REFUSED).
#[no_mangle]
pub unsafe extern "C" fn lorafuse_start(t: *mut lorafuse_trainer, resume: i32) -> i32 {
    call(t, |h| h.start(resume != 0))
}

/// Asks the run to stop (from any thread, the event callback included): it finishes its
/// step, saves its state and ends, and lorafuse_wait returns LORAFUSE_CANCELLED. Nothing
/// happens without a run.
#[no_mangle]
pub unsafe extern "C" fn lorafuse_cancel(t: *mut lorafuse_trainer) -> i32 {
    call(t, |h| {
        h.cancel();
        Ok(LORAFUSE_OK)
    })
}

/// Waits for the run to end and returns how it ended: LORAFUSE_OK, LORAFUSE_CANCELLED or an
/// error (its message in lorafuse_error_message). Called again, returns the same. From the
/// run's own event callback: LORAFUSE_ERR_BUSY (it would never return).
#[no_mangle]
pub unsafe extern "C" fn lorafuse_wait(t: *mut lorafuse_trainer) -> i32 {
    call(t, |h| h.wait())
}

/// Copies the report of the last run waited for (JSON: "lora_path", "state_path", "steps",
/// "stopped", "interrupted", "train_loss_before", "train_loss_after", "best_validation",
/// "skipped_steps"; "" when there is none) into `buf`, as lorafuse_problem_key.
#[no_mangle]
pub unsafe extern "C" fn lorafuse_report(
    t: *mut lorafuse_trainer,
    buf: *mut c_char,
    cap: usize,
) -> usize {
    read(t, buf, cap, |st| st.report.clone())
}

/// Copies the message of the last call on `t` that failed into `buf`, as
/// lorafuse_problem_key.
#[no_mangle]
pub unsafe extern "C" fn lorafuse_error_message(
    t: *mut lorafuse_trainer,
    buf: *mut c_char,
    cap: usize,
) -> usize {
    if t.is_null() {
        return copy_out("the trainer is NULL", buf, cap);
    }
    read(t, buf, cap, |st| st.error.clone())
}

/// Cancels a run in flight, waits for it, and releases the trainer (NULL: nothing). From the
/// run's own event callback it does nothing (it could not wait there).
#[no_mangle]
pub unsafe extern "C" fn lorafuse_free(t: *mut lorafuse_trainer) {
    if t.is_null() {
        return;
    }
    let _ = catch_unwind(AssertUnwindSafe(|| {
        if (*t).0.on_run_thread() {
            return;
        }
        let h = Box::from_raw(t);
        h.0.cancel();
        let _ = h.0.wait();
    }));
}

/// A new handle in `*out` holding the configuration or why there is none.
unsafe fn make(
    out: *mut *mut lorafuse_trainer,
    load: impl FnOnce() -> Result<Trainer, Fail>,
) -> i32 {
    if out.is_null() {
        return LORAFUSE_ERR_NULL;
    }
    let r = catch_unwind(AssertUnwindSafe(|| {
        let cfg = load().map(|t| t.config().clone());
        let code = cfg.as_ref().err().map_or(LORAFUSE_OK, |f| f.code);
        (Box::new(lorafuse_trainer(Handle::new(cfg))), code)
    }));
    match r {
        Ok((h, code)) => {
            *out = Box::into_raw(h);
            code
        }
        Err(_) => {
            *out = std::ptr::null_mut();
            LORAFUSE_ERR_PANIC
        }
    }
}

/// Runs `f` on the handle behind `t`: NULL and panics become codes, a failure's message is kept
/// on the handle.
unsafe fn call(t: *mut lorafuse_trainer, f: impl FnOnce(&Handle) -> Result<i32, Fail>) -> i32 {
    let Some(h) = t.as_ref() else {
        return LORAFUSE_ERR_NULL;
    };
    let r = catch_unwind(AssertUnwindSafe(|| f(&h.0))).unwrap_or_else(|p| Err(Fail::panic(p)));
    r.unwrap_or_else(|fail| h.0.failed(fail))
}

unsafe fn with_state(t: *mut lorafuse_trainer, f: impl FnOnce(&mut State)) -> i32 {
    call(t, |h| {
        f(&mut h.state());
        Ok(LORAFUSE_OK)
    })
}

/// Copies a text of the state into `buf` ("" for a NULL trainer).
unsafe fn read(
    t: *mut lorafuse_trainer,
    buf: *mut c_char,
    cap: usize,
    f: impl FnOnce(&State) -> String,
) -> usize {
    let s = t
        .as_ref()
        .and_then(|h| catch_unwind(AssertUnwindSafe(|| f(&h.0.state()))).ok())
        .unwrap_or_default();
    copy_out(&s, buf, cap)
}

/// Copies a text of problem `i` into `buf` ("" past the last problem).
unsafe fn read_problem(
    t: *mut lorafuse_trainer,
    i: usize,
    buf: *mut c_char,
    cap: usize,
    f: impl FnOnce(&lorafuse::api::Problem) -> String,
) -> usize {
    read(t, buf, cap, |st| {
        st.problems.get(i).map(f).unwrap_or_default()
    })
}
