//! Data-parallel training: several ranks (one per GPU, or threads over CPU backends) that
//! each take their share of every optimizer step's micro-batches and sum their gradients
//! before the one optimizer step that every rank takes identically.
//!
//!   comm.rs       the `Communicator` seam (rank, world, the sums) and `Solo` (one rank)
//!   threads.rs    ranks as threads of one process, summing in rank order (CI, CPU backends)
//!   launch.rs     who this process is: torchrun's and SLURM's environment, `--gpus`
//!   rendezvous.rs the small TCP exchange that hands rank 0's NCCL id to the others
//!   nccl.rs       the NCCL communicator (`--features cuda`)
//!   error.rs      what goes wrong between ranks, named by rank
//!
//! How a step is shared (train/trainer.rs, `Run::step`): with N ranks and
//! `gradient_accumulation_steps` A, a step takes N·A micro-batches of the single-device order
//! (each of `batch_size`, the per-rank batch as in kohya). They go out in rounds of N: in
//! round k, rank r runs micro-batch k·N + r with the noise and dropout that micro-batch's
//! index draws on a single device. After each round the ranks' gradients are summed in rank
//! order, rank 0 folding the running sum into its part first, so the sum is
//! (((g₀ + g₁) + g₂) + …) exactly as one device accumulating N·A micro-batches adds them. So
//! N ranks at accumulation A give the LoRA of one device at accumulation N·A bit for bit (with
//! the in-process communicator; NCCL's ring order is its own), and a run saved on N ranks
//! resumes on M ranks with M·A' = N·A. With A = 1 a step is one sum over one flat buffer.

pub mod comm;
pub mod error;
pub mod launch;
#[cfg(feature = "cuda")]
pub mod nccl;
pub mod rendezvous;
pub mod threads;

pub use comm::{Communicator, Solo};
pub use error::DistError;
pub use threads::InProcess;
