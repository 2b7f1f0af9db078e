//! The one run a server holds at a time: its thread, its canceller, its output folder, and
//! the log of its events (as JSON text) that each event stream reads from its own place.

use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::api::{Canceller, Trainer};

use super::events::{ended, event};

/// A started run.
pub struct Job {
    pub id: u64,
    /// The output folder, made canonical: files are served only from under it.
    pub output_dir: PathBuf,
    cancel: Canceller,
    log: Mutex<Log>,
    changed: Condvar,
}

#[derive(Default)]
struct Log {
    events: Vec<String>,
    done: bool,
}

impl Job {
    /// Starts `trainer` (resuming when asked) on a thread of its own.
    pub fn start(id: u64, trainer: Trainer, output_dir: PathBuf, resume: bool) -> Arc<Job> {
        let job = Arc::new(Job {
            id,
            output_dir,
            cancel: trainer.canceller(),
            log: Mutex::new(Log::default()),
            changed: Condvar::new(),
        });
        let runner = Arc::clone(&job);
        std::thread::spawn(move || {
            let on_event = |e| runner.push(event(&e).to_string(), false);
            let result = if resume {
                trainer.resume(on_event)
            } else {
                trainer.run(on_event)
            };
            runner.push(ended(&result).to_string(), true);
        });
        job
    }

    fn push(&self, json: String, last: bool) {
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        log.events.push(json);
        log.done |= last;
        self.changed.notify_all();
    }

    /// Finishes the step, saves the state, ends the run.
    pub fn stop(&self) {
        self.cancel.cancel();
    }

    pub fn running(&self) -> bool {
        !self.log.lock().unwrap_or_else(|p| p.into_inner()).done
    }

    /// The events from number `from` on, waiting up to `wait` for one when there are none
    /// yet; and whether the run has ended.
    pub fn events_from(&self, from: usize, wait: Duration) -> (Vec<String>, bool) {
        let log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        let (log, _) = self
            .changed
            .wait_timeout_while(log, wait, |l| l.events.len() <= from && !l.done)
            .unwrap_or_else(|p| p.into_inner());
        (log.events.get(from..).unwrap_or(&[]).to_vec(), log.done)
    }
}
