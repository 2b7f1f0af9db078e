//! The NCCL communicator (`--features cuda`; libnccl is opened at run time, like the driver):
//! one process per GPU, NCCL's id handed out by the rendezvous, and the rendezvous's
//! connections watched while a collective runs, so that a rank that dies ends the others'
//! wait at once with its name (NCCL alone would wait forever, or fail without naming it).
//!
//! Each sum copies the host buffer to the GPU, runs NCCL's in-place all-reduce on this
//! communicator's stream, polls its completion (the watch, NCCL's asynchronous error, the
//! timeout), and copies the sum back. The buffers are the adapters' gradients, a few MiB.
//! NCCL's ring order is its own: ranks agree bit for bit with each other, and with one device
//! up to the rounding of the sum's order.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cudarc::driver::{CudaContext, CudaStream, DeviceRepr};
use cudarc::nccl::safe::{Comm, Id, NcclType, ReduceOp};

use crate::dist::comm::Communicator;
use crate::dist::error::DistError;
use crate::dist::launch::WorldEnv;
use crate::dist::rendezvous::{exchange, Watch};

/// One rank's NCCL communicator.
pub struct Nccl {
    rank: usize,
    world: usize,
    timeout: Duration,
    inner: Mutex<Inner>,
    watch: Watch,
}

struct Inner {
    comm: Comm,
    stream: Arc<CudaStream>,
    /// Collectives so far (named in a timeout).
    seq: u64,
}

// SAFETY: the NCCL communicator is a handle NCCL allows any thread to use, one at a time;
// every use goes through `Nccl::inner`'s mutex.
unsafe impl Send for Inner {}

fn nccl_err(what: &str, e: impl std::fmt::Debug) -> DistError {
    DistError::Library {
        what: what.to_string(),
        detail: format!("{e:?}"),
    }
}

impl Nccl {
    /// Joins the run `env` describes on GPU `ordinal`: rank 0 makes NCCL's id and serves it
    /// at MASTER_ADDR:MASTER_PORT, the others fetch it, and every rank makes its
    /// communicator. `timeout` bounds the rendezvous and every later wait.
    pub fn join(env: &WorldEnv, ordinal: usize, timeout: Duration) -> Result<Nccl, DistError> {
        let ctx = CudaContext::new(ordinal).map_err(|e| nccl_err("opening the GPU", e))?;
        let stream = ctx
            .new_stream()
            .map_err(|e| nccl_err("creating a stream", e))?;
        let mine: Vec<u8> = match env.rank {
            0 => Id::new()
                .map_err(|e| nccl_err("ncclGetUniqueId (is libnccl.so.2 installed?)", e))?
                .internal()
                .iter()
                .map(|&c| c as u8)
                .collect(),
            _ => Vec::new(),
        };
        let (id, watch) = exchange(env, &mine, timeout)?;
        let mut internal = [0 as std::ffi::c_char; 128];
        if id.len() != internal.len() {
            return Err(nccl_err(
                "the rendezvous",
                format!("an id of {} bytes", id.len()),
            ));
        }
        for (d, s) in internal.iter_mut().zip(&id) {
            *d = *s as std::ffi::c_char;
        }
        let comm = Comm::from_rank(stream.clone(), env.rank, env.world, Id::uninit(internal))
            .map_err(|e| nccl_err("ncclCommInitRank", e))?;
        Ok(Nccl {
            rank: env.rank,
            world: env.world,
            timeout,
            inner: Mutex::new(Inner {
                comm,
                stream,
                seq: 0,
            }),
            watch,
        })
    }

    /// This rank ends normally (its closed connection is then no failure).
    pub fn finish(&self) {
        self.watch.bye();
    }

    fn sum<T: NcclType + DeviceRepr + Default + Copy>(
        &self,
        buf: &mut [T],
    ) -> Result<(), DistError> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.seq += 1;
        let seq = inner.seq;
        let stream = inner.stream.clone();
        let mut d = stream
            .clone_htod(buf)
            .map_err(|e| nccl_err("copying gradients to the GPU", e))?;
        inner
            .comm
            .all_reduce_in_place(&mut d, &ReduceOp::Sum)
            .map_err(|e| nccl_err("ncclAllReduce", e))?;
        let done = stream
            .record_event(None)
            .map_err(|e| nccl_err("recording an event", e))?;
        let deadline = Instant::now() + self.timeout;
        loop {
            match done.try_is_complete() {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => return Err(nccl_err("the all-reduce", e)),
            }
            if let Some((rank, reason)) = self.watch.failed() {
                return Err(DistError::RankFailed {
                    rank,
                    world: self.world,
                    reason,
                });
            }
            if Instant::now() >= deadline {
                return Err(DistError::Timeout {
                    missing: Vec::new(),
                    world: self.world,
                    collective: seq,
                    seconds: self.timeout.as_secs(),
                });
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        stream
            .memcpy_dtoh(&d, buf)
            .map_err(|e| nccl_err("copying the sum back", e))
    }
}

impl Communicator for Nccl {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world(&self) -> usize {
        self.world
    }
    fn all_reduce_sum(&self, buf: &mut [f32], contributes: bool) -> Result<(), DistError> {
        if !contributes {
            buf.fill(0.0);
        }
        self.sum(buf)
    }
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<(), DistError> {
        self.sum(buf)
    }
    fn abort(&self, why: &str) {
        self.watch.report(why);
    }
}
