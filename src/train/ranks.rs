//! A data-parallel run whose ranks are threads of this process, each with its own backend
//! (CPU backends, or emulated CUDA devices), summing through [`InProcess`]: what CI runs the
//! data-parallel path on, and what `lorafuse train --ranks N` runs on the CPU.

use std::sync::atomic::AtomicBool;
use std::time::Duration;

use crate::backend::Backend;
use crate::config::TrainConfig;
use crate::dist::{Communicator, InProcess};
use crate::error::{Error, Result};
use crate::train::events::{Observer, Quiet, TrainReport};
use crate::train::trainer::train_rank;

/// How many ranks, and how long a rank waits for the others at a synchronisation before it
/// names the missing ones and stops.
#[derive(Clone, Copy, Debug)]
pub struct Ranks {
    pub world: usize,
    pub timeout: Duration,
}

/// The default wait at a synchronisation: long enough for rank 0 to write samples and a save
/// point while the others wait, short enough that a dead rank ends the run.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Makes rank r's backend (on rank r's own thread).
pub type BackendFor<'f> = dyn Fn(usize) -> Result<Box<dyn Backend>> + Sync + 'f;

/// Trains `cfg` on `ranks.world` threads, rank r on `backend(r)`. Rank 0's events go to `obs`
/// (the others' nowhere) and its report is returned; a rank that fails or panics stops the
/// others, and the error returned names it.
pub fn train_threads(
    cfg: &TrainConfig,
    ranks: Ranks,
    backend: &BackendFor,
    resume: bool,
    stop: &AtomicBool,
    obs: &mut (dyn Observer + Send),
) -> Result<TrainReport> {
    let group = InProcess::group(ranks.world, ranks.timeout);
    let mut results: Vec<Result<TrainReport>> = std::thread::scope(|s| {
        let mut obs = Some(obs);
        let handles: Vec<_> = group
            .iter()
            .map(|comm| {
                let obs = obs.take();
                s.spawn(move || {
                    let run = || {
                        let be =
                            backend(comm.rank()).inspect_err(|e| comm.abort(&e.to_string()))?;
                        match obs {
                            Some(o) => train_rank(cfg, be.as_ref(), comm, resume, stop, o),
                            None => train_rank(cfg, be.as_ref(), comm, resume, stop, &mut Quiet),
                        }
                    };
                    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)) {
                        // train_rank has told the others of its own failure.
                        Ok(r) => r,
                        Err(_) => {
                            let why = format!("rank {} panicked", comm.rank());
                            comm.abort(&why);
                            Err(Error::BadValue {
                                op: "train",
                                name: "rank",
                                value: comm.rank().to_string(),
                                expected: why,
                            })
                        }
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("caught"))
            .collect()
    });
    // The first failure that is a rank's own (not another rank's report of it).
    if let Some(i) = results.iter().position(|r| {
        r.as_ref()
            .is_err_and(|e| e.downcast_ref::<crate::dist::DistError>().is_none())
    }) {
        return results.swap_remove(i);
    }
    results.swap_remove(0)
}
