//! Data-parallel training from the command line.
//!
//! `lorafuse train CONFIG --gpus 0,1,2,3` is a launcher: it starts one worker process per GPU
//! (this same binary and command line, with torchrun's variables set: RANK, WORLD_SIZE,
//! LOCAL_RANK, MASTER_ADDR=127.0.0.1, a free MASTER_PORT, and CUDA_VISIBLE_DEVICES to the
//! GPUs listed) and waits for them. A process started with those variables, by this launcher,
//! torchrun or SLURM (`srun`), is a worker: rank LOCAL_RANK's GPU, NCCL through the
//! rendezvous (src/dist), rank 0 printing progress and writing every file.

use std::ffi::OsString;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use lorafuse::config::{Device, TrainConfig};
use lorafuse::dist::launch::WorldEnv;
use lorafuse::train::trainer::TrainReport;

use crate::cli::error::{CliError, EXIT_INTERRUPTED};

/// How long the launcher lets the other workers stop on their own after one failed (they
/// notice within seconds through the rendezvous's connections) before it kills them.
const GRACE: Duration = Duration::from_secs(60);

/// Starts one worker per GPU of `gpus` and waits for them all.
pub fn launch(gpus: &[usize]) -> Result<(), CliError> {
    let exe = std::env::current_exe()
        .map_err(|e| CliError::Usage(format!("cannot find this program to start workers: {e}")))?;
    let args = without_gpus(std::env::args_os().skip(1).collect());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| CliError::Usage(format!("no free local port for the rendezvous: {e}")))?
        .port();
    let visible: Vec<String> = gpus.iter().map(ToString::to_string).collect();
    let world = gpus.len();
    eprintln!(
        "starting {world} workers on GPUs {} (rank r on the r-th; rank 0 reports)",
        visible.join(",")
    );
    let mut children = Vec::new();
    for rank in 0..world {
        let child = Command::new(&exe)
            .args(&args)
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("WORLD_SIZE", world.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .env("CUDA_VISIBLE_DEVICES", visible.join(","))
            .spawn()
            .map_err(|e| CliError::Usage(format!("cannot start worker {rank}: {e}")))?;
        children.push(Some(child));
    }
    wait_all(&mut children)
}

/// Waits for every worker; after the first failure, gives the rest [`GRACE`] to stop, then
/// kills them. The launcher ends as its first failed worker did.
fn wait_all(children: &mut [Option<Child>]) -> Result<(), CliError> {
    let mut first_failure: Option<(usize, i32)> = None;
    let mut failed_at: Option<Instant> = None;
    while children.iter().any(Option::is_some) {
        for (rank, slot) in children.iter_mut().enumerate() {
            let Some(child) = slot else { continue };
            if let Ok(Some(status)) = child.try_wait() {
                let code = status.code().unwrap_or(1);
                if code != 0 && first_failure.is_none() {
                    first_failure = Some((rank, code));
                    failed_at = Some(Instant::now());
                }
                *slot = None;
            }
        }
        if failed_at.is_some_and(|t| t.elapsed() > GRACE) {
            for (rank, slot) in children.iter_mut().enumerate() {
                if let Some(mut c) = slot.take() {
                    eprintln!("worker {rank} did not stop after the failure; killing it");
                    let _ = c.kill();
                    let _ = c.wait();
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    match first_failure {
        None => Ok(()),
        Some((_, code)) if code == i32::from(EXIT_INTERRUPTED) => Err(CliError::Interrupted),
        Some((rank, code)) => Err(CliError::Worker { rank, code }),
    }
}

/// The command line without `--gpus LIST` / `--gpus=LIST`.
fn without_gpus(args: Vec<OsString>) -> Vec<OsString> {
    let mut out = Vec::new();
    let mut skip = false;
    for a in args {
        if skip {
            skip = false;
            continue;
        }
        match a.to_str() {
            Some("--gpus") => skip = true,
            Some(s) if s.starts_with("--gpus=") => {}
            _ => out.push(a),
        }
    }
    out
}

/// A worker: this process is rank `env.rank` of a run a launcher started.
pub fn worker(
    cfg: &TrainConfig,
    env: &WorldEnv,
    resume: bool,
) -> Result<Option<TrainReport>, CliError> {
    if cfg.device == Device::Cpu {
        return Err(CliError::Usage(format!(
            "WORLD_SIZE = {} makes this rank {} of a multi-process run, but device: cpu has no \
             communicator between processes (multi-process runs use NCCL on GPUs); unset \
             WORLD_SIZE/RANK to train on one CPU",
            env.world, env.rank
        )));
    }
    run_worker(cfg, env, resume)
}

#[cfg(feature = "cuda")]
fn run_worker(
    cfg: &TrainConfig,
    env: &WorldEnv,
    resume: bool,
) -> Result<Option<TrainReport>, CliError> {
    use lorafuse::dist::nccl::Nccl;
    use lorafuse::train::events::Quiet;
    use lorafuse::train::ranks::DEFAULT_TIMEOUT;
    let be = crate::cli::backend(
        Device::Cuda(env.local_rank),
        cfg.mixed_precision,
        lorafuse::backend::cpu::CpuPrecision::F32,
    )?;
    let comm = Nccl::join(env, env.local_rank, DEFAULT_TIMEOUT).map_err(lorafuse::Error::from)?;
    crate::cli::interrupt::install();
    let stop = &crate::cli::interrupt::STOP;
    let report = if env.rank == 0 {
        let mut obs = crate::cli::progress::Progress::new();
        lorafuse::train::trainer::train_rank(cfg, be.as_ref(), &comm, resume, stop, &mut obs)?
    } else {
        lorafuse::train::trainer::train_rank(cfg, be.as_ref(), &comm, resume, stop, &mut Quiet)?
    };
    comm.finish();
    Ok((env.rank == 0).then_some(report))
}

#[cfg(not(feature = "cuda"))]
fn run_worker(
    _cfg: &TrainConfig,
    env: &WorldEnv,
    _resume: bool,
) -> Result<Option<TrainReport>, CliError> {
    Err(CliError::Lib(lorafuse::Error::CudaUnavailable(format!(
        "WORLD_SIZE = {} makes this rank {} of a multi-GPU run, which needs NCCL on GPUs, but {}",
        env.world,
        env.rank,
        lorafuse::backend::select::NO_CUDA_BUILD
    ))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_workers_command_line_drops_gpus() {
        let a = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(
            without_gpus(a(&["train", "c.yaml", "--gpus", "0,1", "--set", "x=1"])),
            a(&["train", "c.yaml", "--set", "x=1"])
        );
        assert_eq!(
            without_gpus(a(&["train", "--gpus=2,3", "c.yaml"])),
            a(&["train", "c.yaml"])
        );
    }
}
