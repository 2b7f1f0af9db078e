//! A trainer handle's state: the configuration (or why it could not be read), the caps and
//! event callback the host set, the run in flight on its own thread, and the last failure's
//! message. Every call locks briefly; `lorafuse_wait` joins the run without holding the state's
//! lock, so that `lorafuse_cancel` and the event callback never wait on it.

use std::ffi::{c_void, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Mutex, MutexGuard, TryLockError};
use std::thread::{JoinHandle, ThreadId};

use lorafuse::api::{Canceller, Caps, Problem, Trainer};
use lorafuse::config::TrainConfig;
use lorafuse::train::events::{Event, TrainReport};

use crate::fail::Fail;
use crate::{
    events, lorafuse_event_fn, LORAFUSE_CANCELLED, LORAFUSE_ERR_BUSY, LORAFUSE_ERR_FAILED,
    LORAFUSE_ERR_INVALID, LORAFUSE_OK,
};

/// The host's callback and its user data, called on the run's thread.
#[derive(Clone, Copy)]
pub(crate) struct Sink {
    pub f: lorafuse_event_fn,
    pub user: *mut c_void,
}

// The host promises (lorafuse.h) that its callback may be called from the run's thread with
// its user data.
unsafe impl Send for Sink {}

impl Sink {
    fn emit(&self, (kind, json): (i32, String)) {
        // JSON escapes NUL, so the text always makes a C string.
        if let (Some(f), Ok(text)) = (self.f, CString::new(json)) {
            unsafe { f(self.user, kind, text.as_ptr()) }
        }
    }
}

pub(crate) struct State {
    /// The configuration, or why it could not be made.
    cfg: Result<TrainConfig, Fail>,
    pub caps: Caps,
    pub sink: Sink,
    /// From the last `lorafuse_validate`, the failed load, or a run refused as invalid.
    pub problems: Vec<Problem>,
    /// The last failure's message.
    pub error: String,
    cancel: Option<Canceller>,
    /// The thread of the last run started (the one the callback is called on).
    run_thread: Option<ThreadId>,
    /// How the last run waited for ended.
    last: Option<Result<i32, Fail>>,
    /// The last run's report as JSON ("" when none).
    pub report: String,
}

impl State {
    /// The configuration's notices (none without a configuration).
    pub fn notices(&self) -> Vec<String> {
        self.cfg.as_ref().map(|c| c.warnings()).unwrap_or_default()
    }
}

pub(crate) struct Handle {
    state: Mutex<State>,
    run: Mutex<Option<JoinHandle<Result<TrainReport, Fail>>>>,
}

/// A lock that a panic elsewhere does not make unusable (every write to the state is whole).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Handle {
    pub fn new(cfg: Result<TrainConfig, Fail>) -> Handle {
        let (problems, error) = match &cfg {
            Ok(_) => (Vec::new(), String::new()),
            Err(f) => (f.problems.clone(), f.message.clone()),
        };
        Handle {
            state: Mutex::new(State {
                cfg,
                caps: Caps::default(),
                sink: Sink {
                    f: None,
                    user: std::ptr::null_mut(),
                },
                problems,
                error,
                cancel: None,
                run_thread: None,
                last: None,
                report: String::new(),
            }),
            run: Mutex::new(None),
        }
    }

    pub fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Keeps `f`'s message (and problems) for the host and returns its code.
    pub fn failed(&self, f: Fail) -> i32 {
        let mut st = self.state();
        if !f.problems.is_empty() {
            st.problems.clone_from(&f.problems);
        }
        st.error = f.message;
        f.code
    }

    /// A trainer with the configuration and the caps set now.
    fn trainer(st: &State) -> Result<Trainer, Fail> {
        match &st.cfg {
            Ok(cfg) => Ok(Trainer::new(cfg.clone()).with_caps(st.caps.clone())),
            Err(f) if f.code == LORAFUSE_ERR_INVALID => Err(f.clone()),
            Err(f) => Err(Fail::new(
                LORAFUSE_ERR_INVALID,
                format!("this trainer has no configuration: {}", f.message),
            )),
        }
    }

    pub fn validate(&self) -> Result<i32, Fail> {
        let mut st = self.state();
        let problems = Handle::trainer(&st)?.validate();
        if problems.is_empty() {
            st.problems.clear();
            Ok(LORAFUSE_OK)
        } else {
            Err(Fail::invalid(problems))
        }
    }

    pub fn start(&self, resume: bool) -> Result<i32, Fail> {
        let mut slot = match self.run.try_lock() {
            Ok(s) => s,
            Err(TryLockError::Poisoned(e)) => e.into_inner(),
            Err(TryLockError::WouldBlock) => return Err(Fail::busy()),
        };
        if slot.is_some() {
            return Err(Fail::busy());
        }
        let mut st = self.state();
        let trainer = Handle::trainer(&st)?;
        // The problems now rather than as the run's end (the run checks them again).
        let problems = trainer.validate();
        if !problems.is_empty() {
            return Err(Fail::invalid(problems));
        }
        let cancel = trainer.canceller();
        let sink = st.sink;
        let thread = std::thread::Builder::new()
            .name("lorafuse-run".into())
            .spawn(move || run(trainer, resume, sink));
        let thread = thread.map_err(|e| {
            Fail::new(
                LORAFUSE_ERR_FAILED,
                format!("cannot start the run's thread: {e}"),
            )
        })?;
        st.cancel = Some(cancel);
        st.run_thread = Some(thread.thread().id());
        st.last = None;
        st.report.clear();
        *slot = Some(thread);
        Ok(LORAFUSE_OK)
    }

    pub fn cancel(&self) {
        if let Some(c) = &self.state().cancel {
            c.cancel();
        }
    }

    /// Whether this is the run's own thread (the event callback), which must not wait for
    /// the run: that would never return.
    pub fn on_run_thread(&self) -> bool {
        self.state().run_thread == Some(std::thread::current().id())
    }

    pub fn wait(&self) -> Result<i32, Fail> {
        if self.on_run_thread() {
            return Err(Fail::new(
                LORAFUSE_ERR_BUSY,
                "lorafuse_wait was called from the run's own event callback, where it would \
                 wait forever: call lorafuse_cancel there, and wait on another thread",
            ));
        }
        let mut slot = lock(&self.run);
        if let Some(thread) = slot.take() {
            let end = thread.join().unwrap_or_else(|p| Err(Fail::panic(p)));
            let mut st = self.state();
            st.last = Some(match end {
                Ok(r) => {
                    st.report = r.to_json().to_string();
                    Ok(if r.interrupted {
                        LORAFUSE_CANCELLED
                    } else {
                        LORAFUSE_OK
                    })
                }
                Err(f) => Err(f),
            });
        }
        drop(slot);
        match &self.state().last {
            Some(last) => last.clone(),
            None => Err(Fail::not_started()),
        }
    }
}

/// A run on its own thread: every event to the host, then `finished` or `failed`.
fn run(trainer: Trainer, resume: bool, sink: Sink) -> Result<TrainReport, Fail> {
    let end = catch_unwind(AssertUnwindSafe(|| {
        let on = move |e: Event| sink.emit(events::of_event(&e));
        if resume {
            trainer.resume(on)
        } else {
            trainer.run(on)
        }
        .map_err(Fail::from)
    }))
    .unwrap_or_else(|p| Err(Fail::panic(p)));
    let _ = catch_unwind(AssertUnwindSafe(|| sink.emit(events::of_end(&end))));
    end
}
