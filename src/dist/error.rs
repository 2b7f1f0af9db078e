//! What goes wrong between ranks: every message names the rank it is about.

use crate::error::{Error, ErrorKind, LayerError};

#[derive(Debug, thiserror::Error)]
pub enum DistError {
    /// A rank reported a failure of its own (its error is the reason).
    #[error("rank {rank} of {world} failed, so the run stops on every rank: {reason}")]
    RankFailed {
        rank: usize,
        world: usize,
        reason: String,
    },
    /// Ranks did not reach a collective within the timeout: they died or hang.
    #[error(
        "rank(s) {} of {world} did not reach step synchronisation #{collective} within {seconds} s \
         (killed, hung or crashed); the run stops. Resume from the last save with --resume",
        list(missing)
    )]
    Timeout {
        missing: Vec<usize>,
        world: usize,
        collective: u64,
        seconds: u64,
    },
    /// The ranks disagree about a collective's size: they run different configurations.
    #[error(
        "rank {rank} sent {got} values to step synchronisation #{collective} where rank 0 sent \
         {expected}: every rank must run the same configuration and adapters"
    )]
    Mismatch {
        rank: usize,
        collective: u64,
        got: usize,
        expected: usize,
    },
    /// The launcher's environment is incomplete or inconsistent.
    #[error("{variable} = {value:?}: {problem}")]
    Environment {
        variable: String,
        value: String,
        problem: String,
    },
    /// NCCL or the driver failed in a collective.
    #[error("{what}: {detail}")]
    Library { what: String, detail: String },
    /// The rendezvous (rank 0's id handed to the others) failed.
    #[error("rendezvous at {address}: {problem}")]
    Rendezvous { address: String, problem: String },
}

fn list(ranks: &[usize]) -> String {
    ranks
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

impl From<DistError> for Error {
    fn from(e: DistError) -> Error {
        let kind = match e {
            DistError::Environment { .. } => ErrorKind::BadInput,
            _ => ErrorKind::Failure,
        };
        Error::Layer(LayerError::new(kind, e))
    }
}
