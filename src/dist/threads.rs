//! Ranks as threads of one process: the communicator CI runs the data-parallel path on (CPU
//! backends, the emulated CUDA backend), and the reference for NCCL's results.
//!
//! A collective: each rank deposits its buffer in its slot and waits; the last to arrive sums
//! the slots in rank order, (((b₀ + b₁) + b₂) + …), and publishes the sum; each rank copies
//! it out, and the last to copy opens the next collective. So every rank gets the same bits,
//! and the same bits every run. A rank that fails calls `abort` and the others' waits end
//! at once with its name; a rank that vanishes (a thread that never comes back) is named when
//! the others' wait passes the timeout.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::dist::comm::Communicator;
use crate::dist::error::DistError;

/// One rank's handle on an in-process group.
pub struct InProcess {
    rank: usize,
    hub: Arc<Hub>,
    /// How many collectives this rank has entered.
    seq: Mutex<u64>,
}

struct Hub {
    world: usize,
    timeout: Duration,
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Clone)]
enum Values {
    F32(Vec<f32>),
    F64(Vec<f64>),
}

#[derive(Default)]
struct State {
    /// The collective now open (every rank's `seq` when it deposits).
    current: u64,
    /// Per rank: arrived, with its contribution (None: arrived, adds nothing).
    slots: Vec<Option<Option<Values>>>,
    /// The sum, once the last rank arrived.
    result: Option<Values>,
    /// Ranks that copied the result out.
    taken: usize,
    /// The first failure, by rank.
    failed: Option<(usize, String)>,
}

impl InProcess {
    /// A group of `world` ranks whose collectives give up after `timeout` without every rank.
    pub fn group(world: usize, timeout: Duration) -> Vec<InProcess> {
        let hub = Arc::new(Hub {
            world,
            timeout,
            state: Mutex::new(State {
                slots: vec![None; world],
                ..State::default()
            }),
            changed: Condvar::new(),
        });
        (0..world)
            .map(|rank| InProcess {
                rank,
                hub: hub.clone(),
                seq: Mutex::new(0),
            })
            .collect()
    }

    /// Deposits `mine`, waits for the sum, returns it.
    fn collective(&self, mine: Option<Values>) -> Result<Values, DistError> {
        let hub = &*self.hub;
        let seq = {
            let mut s = self.seq.lock().unwrap_or_else(|p| p.into_inner());
            *s += 1;
            *s - 1
        };
        let deadline = Instant::now() + hub.timeout;
        let mut st = hub.lock();
        // The previous collective is still being read by some rank.
        st = hub.wait_until(st, deadline, seq, |s| s.current == seq)?;
        st.slots[self.rank] = Some(mine);
        if st.slots.iter().all(Option::is_some) {
            match sum_in_rank_order(&st.slots, seq) {
                Ok(sum) => st.result = Some(sum),
                Err(e) => {
                    st.failed = Some((self.rank, e.to_string()));
                    hub.changed.notify_all();
                    return Err(e);
                }
            }
            hub.changed.notify_all();
        }
        st = hub.wait_until(st, deadline, seq, |s| s.result.is_some())?;
        let out = st.result.clone().expect("waited for the result");
        st.taken += 1;
        if st.taken == hub.world {
            st.slots.iter_mut().for_each(|s| *s = None);
            st.result = None;
            st.taken = 0;
            st.current += 1;
            hub.changed.notify_all();
        }
        Ok(out)
    }
}

impl Hub {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until `ready`, a failure, or the deadline (then naming the ranks not arrived).
    fn wait_until<'a>(
        &'a self,
        mut st: MutexGuard<'a, State>,
        deadline: Instant,
        seq: u64,
        ready: impl Fn(&State) -> bool,
    ) -> Result<MutexGuard<'a, State>, DistError> {
        loop {
            if let Some((rank, reason)) = &st.failed {
                return Err(DistError::RankFailed {
                    rank: *rank,
                    world: self.world,
                    reason: reason.clone(),
                });
            }
            if ready(&st) {
                return Ok(st);
            }
            let now = Instant::now();
            if now >= deadline {
                let missing: Vec<usize> = if st.current == seq {
                    (0..self.world).filter(|&r| st.slots[r].is_none()).collect()
                } else {
                    // Stuck behind the previous collective: whoever has not read it.
                    Vec::new()
                };
                let why = format!("did not reach step synchronisation #{seq} in time");
                if let Some(&first) = missing.first() {
                    st.failed = Some((first, why));
                    self.changed.notify_all();
                }
                return Err(DistError::Timeout {
                    missing,
                    world: self.world,
                    collective: seq,
                    seconds: self.timeout.as_secs(),
                });
            }
            st = self
                .changed
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

/// The slots' sum, rank 0's contribution first, then each next rank's added in turn.
fn sum_in_rank_order(slots: &[Option<Option<Values>>], seq: u64) -> Result<Values, DistError> {
    let mut sum: Option<Values> = None;
    for (rank, v) in slots.iter().enumerate() {
        let Some(Some(v)) = v else { continue };
        match (&mut sum, v) {
            (None, v) => sum = Some(v.clone()),
            (Some(Values::F32(s)), Values::F32(v)) if s.len() == v.len() => {
                s.iter_mut().zip(v).for_each(|(s, v)| *s += v)
            }
            (Some(Values::F64(s)), Values::F64(v)) if s.len() == v.len() => {
                s.iter_mut().zip(v).for_each(|(s, v)| *s += v)
            }
            (Some(s), v) => {
                return Err(DistError::Mismatch {
                    rank,
                    collective: seq,
                    got: v.len(),
                    expected: s.len(),
                })
            }
        }
    }
    Ok(sum.unwrap_or(Values::F32(Vec::new())))
}

impl Values {
    fn len(&self) -> usize {
        match self {
            Values::F32(v) => v.len(),
            Values::F64(v) => v.len(),
        }
    }
}

impl Communicator for InProcess {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world(&self) -> usize {
        self.hub.world
    }
    fn all_reduce_sum(&self, buf: &mut [f32], contributes: bool) -> Result<(), DistError> {
        let mine = contributes.then(|| Values::F32(buf.to_vec()));
        match self.collective(mine)? {
            Values::F32(sum) if sum.len() == buf.len() => buf.copy_from_slice(&sum),
            other => return Err(self.mismatch(other.len(), buf.len())),
        }
        Ok(())
    }
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<(), DistError> {
        match self.collective(Some(Values::F64(buf.to_vec())))? {
            Values::F64(sum) if sum.len() == buf.len() => buf.copy_from_slice(&sum),
            other => return Err(self.mismatch(buf.len(), other.len())),
        }
        Ok(())
    }
    fn abort(&self, why: &str) {
        let mut st = self.hub.lock();
        if st.failed.is_none() {
            st.failed = Some((self.rank, why.to_string()));
        }
        self.hub.changed.notify_all();
    }
}

impl InProcess {
    fn mismatch(&self, got: usize, expected: usize) -> DistError {
        DistError::Mismatch {
            rank: self.rank,
            collective: *self.seq.lock().unwrap_or_else(|p| p.into_inner()) - 1,
            got,
            expected,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on_threads<T: Send>(
        world: usize,
        timeout: Duration,
        f: impl Fn(&InProcess) -> T + Sync,
    ) -> Vec<T> {
        let group = InProcess::group(world, timeout);
        std::thread::scope(|s| {
            let handles: Vec<_> = group.iter().map(|c| s.spawn(|| f(c))).collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    #[test]
    fn sums_in_rank_order_with_the_same_bits_on_every_rank() {
        // Values whose sum depends on the order: 1e8 + 1 − 1e8 is 0 in f32 left to right.
        let parts = [1.0e8_f32, 1.0, -1.0e8, 3.0];
        let expect = ((parts[0] + parts[1]) + parts[2]) + parts[3];
        for _ in 0..20 {
            let got = on_threads(4, Duration::from_secs(10), |c| {
                let mut out = Vec::new();
                for round in 0..3 {
                    let mut buf = [parts[c.rank()] * (round + 1) as f32, c.rank() as f32];
                    c.all_reduce_sum(&mut buf, true).unwrap();
                    out.push(buf);
                }
                out
            });
            for rank in got {
                assert_eq!(rank[0][0].to_bits(), expect.to_bits());
                assert_eq!(rank[0][1], 6.0);
                assert_eq!(rank[2][0], ((3e8_f32 + 3.0) - 3e8) + 9.0);
            }
        }
    }

    #[test]
    fn a_rank_that_does_not_contribute_adds_nothing() {
        let got = on_threads(3, Duration::from_secs(10), |c| {
            let mut buf = [-0.0_f32, c.rank() as f32];
            c.all_reduce_sum(&mut buf, c.rank() != 1).unwrap();
            buf
        });
        for b in got {
            assert_eq!(
                b[0].to_bits(),
                (-0.0_f32).to_bits(),
                "-0 + nothing stays -0"
            );
            assert_eq!(b[1], 2.0);
        }
    }

    #[test]
    fn a_failing_rank_stops_the_others_with_its_name() {
        let got = on_threads(3, Duration::from_secs(60), |c| {
            if c.rank() == 2 {
                c.abort("cannot read image x.png");
                return String::new();
            }
            let mut v = [1.0];
            c.all_reduce_sum_f64(&mut v).unwrap_err().to_string()
        });
        assert!(got[0].contains("rank 2 of 3 failed"), "{}", got[0]);
        assert!(got[1].contains("x.png"), "{}", got[1]);
    }

    #[test]
    fn a_vanished_rank_is_named_after_the_timeout() {
        let t0 = Instant::now();
        let got = on_threads(3, Duration::from_millis(300), |c| {
            let mut v = [1.0];
            c.all_reduce_sum_f64(&mut v).unwrap();
            if c.rank() == 1 {
                return String::new(); // gone after the first collective, without a word
            }
            c.all_reduce_sum_f64(&mut v).unwrap_err().to_string()
        });
        assert!(t0.elapsed() < Duration::from_secs(5));
        for r in [0, 2] {
            assert!(
                got[r].contains("rank(s) 1 of 3") || got[r].contains("rank 1 of 3 failed"),
                "{}",
                got[r]
            );
        }
    }

    #[test]
    fn different_lengths_are_refused() {
        let got = on_threads(2, Duration::from_secs(10), |c| {
            let mut v = vec![0.0_f32; 2 + c.rank()];
            c.all_reduce_sum(&mut v, true).map_err(|e| e.to_string())
        });
        assert!(got.iter().all(|r| r.is_err()), "{got:?}");
    }
}
