//! Data-parallel training on threads of one process (src/dist, src/train/ranks.rs): N ranks at
//! accumulation A give one device's LoRA at accumulation N·A bit for bit, with validation and
//! a partial last round on the way; a run saved on 2 ranks resumes on 4; a rank that fails or
//! vanishes ends the run on every rank with its name.

use crate::common;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use lorafuse::backend::Backend;
use lorafuse::config::TrainConfig;
use lorafuse::dist::{Communicator, DistError, InProcess};
use lorafuse::train::events::{Event, Observer, Quiet, TrainReport};
use lorafuse::train::ranks::{train_threads, Ranks};
use lorafuse::train::trainer::train_rank;
use lorafuse::CpuBackend;

/// The demo's model and data, made once for every test of this binary.
fn demo() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = common::tools::process_dir("dp");
        lorafuse::demo::prepare(&d, 4).unwrap();
        d
    })
}

/// The demo at batch 1 (9 training images: an epoch's last step is short), `steps` steps,
/// accumulation `accum`, a validation every 2 steps, writing into `out`.
fn config(out: &str, steps: usize, accum: usize) -> TrainConfig {
    let d = demo();
    let sets = [
        format!("output_dir={}", d.join(out).display()),
        "batch_size=1".into(),
        format!("max_train_steps={steps}"),
        format!("gradient_accumulation_steps={accum}"),
        "validate_every_n_steps=2".into(),
        "sample_every_n_steps=0".into(),
        "save_precision=fp32".into(),
    ];
    TrainConfig::load(d.join("demo.yaml"), &sets).unwrap()
}

fn cpu(_rank: usize) -> lorafuse::Result<Box<dyn Backend>> {
    Ok(Box::new(CpuBackend::new()))
}

/// Stops the run after step `at` (a Ctrl-C seen on rank 0 only), and keeps the losses.
struct StopAt<'s> {
    at: u64,
    stop: &'s AtomicBool,
    losses: Vec<f64>,
    validations: Vec<f64>,
}

impl Observer for StopAt<'_> {
    fn on(&mut self, e: Event) {
        match e {
            Event::Step { step, loss, .. } => {
                self.losses.push(loss);
                if step == self.at {
                    self.stop.store(true, Ordering::SeqCst);
                }
            }
            Event::Validation { loss, .. } => self.validations.push(loss),
            _ => {}
        }
    }
}

struct Trained {
    report: TrainReport,
    losses: Vec<f64>,
    validations: Vec<f64>,
}

/// Trains `cfg` on `world` thread ranks (resuming when asked), stopping after step `stop_at`.
fn run(cfg: &TrainConfig, world: usize, resume: bool, stop_at: u64) -> Trained {
    let stop = AtomicBool::new(false);
    let mut obs = StopAt {
        at: stop_at,
        stop: &stop,
        losses: Vec::new(),
        validations: Vec::new(),
    };
    let ranks = Ranks {
        world,
        timeout: Duration::from_secs(120),
    };
    let report = train_threads(cfg, ranks, &cpu, resume, &stop, &mut obs).unwrap();
    Trained {
        report,
        losses: obs.losses,
        validations: obs.validations,
    }
}

/// Every tensor of a LoRA file, by name, as raw bytes.
fn tensors(path: &Path) -> Vec<(String, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<(String, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.data().to_vec()))
        .collect();
    out.sort();
    out
}

fn same_run(a: &Trained, b: &Trained, what: &str) {
    assert_eq!(a.report.steps, b.report.steps, "{what}");
    let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&a.losses), bits(&b.losses), "{what}: step losses");
    assert_eq!(
        bits(&a.validations),
        bits(&b.validations),
        "{what}: validations"
    );
    assert!(!a.validations.is_empty());
    assert_eq!(
        a.report.train_loss_after.to_bits(),
        b.report.train_loss_after.to_bits(),
        "{what}"
    );
    let (ta, tb) = (tensors(&a.report.lora_path), tensors(&b.report.lora_path));
    assert_eq!(ta.len(), tb.len());
    for ((na, va), (nb, vb)) in ta.iter().zip(&tb) {
        assert_eq!(na, nb);
        assert!(va == vb, "{what}: {na} differs");
    }
}

#[test]
fn ranks_give_one_devices_lora_bit_for_bit() {
    // 5 steps over 9 micro-batches per epoch: the second epoch begins inside the run, and
    // with 2 ranks an epoch's last round has one micro-batch (rank 1 sits it out).
    let one = run(&config("one-a2", 5, 2), 1, false, 0);
    let two = run(&config("two-a1", 5, 1), 2, false, 0);
    same_run(&two, &one, "2 ranks × accumulation 1 against 1 device × 2");
    assert!(one.losses.iter().all(|l| l.is_finite()));
    assert!(one.report.train_loss_after < one.report.train_loss_before);

    let one = run(&config("one-a4", 3, 4), 1, false, 0);
    let four = run(&config("four-a1", 3, 1), 4, false, 0);
    let two = run(&config("two-a2", 3, 2), 2, false, 0);
    same_run(&four, &one, "4 ranks × 1 against 1 device × 4");
    same_run(&two, &one, "2 ranks × accumulation 2 against 1 device × 4");
    // Only rank 0 writes: one LoRA, one state, one event file.
    let logs = std::fs::read_dir(demo().join("four-a1").join("logs"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert!(logs <= 1, "{logs} TensorBoard files");
}

#[test]
fn a_run_saved_on_two_ranks_resumes_on_four() {
    let whole = run(&config("whole-a4", 4, 4), 1, false, 0);
    let cut = run(&config("cut", 4, 2), 2, false, 2);
    assert!(
        cut.report.interrupted && cut.report.steps == 2,
        "{:?}",
        cut.report
    );
    let rest = run(&config("cut", 4, 1), 4, true, 0);
    assert_eq!(rest.report.steps, 4);
    let (a, b) = (
        tensors(&rest.report.lora_path),
        tensors(&whole.report.lora_path),
    );
    assert!(
        a == b,
        "the resumed LoRA differs from the uninterrupted one"
    );
    let mut losses = cut.losses.clone();
    losses.extend(&rest.losses);
    assert_eq!(losses, whole.losses);
}

/// A rank that goes quiet after `after` synchronisations: it neither answers nor tells
/// anyone (a killed process).
struct Vanishing {
    inner: InProcess,
    after: usize,
    seen: std::sync::atomic::AtomicUsize,
}

impl Vanishing {
    fn gone(&self) -> Result<(), DistError> {
        if self.seen.fetch_add(1, Ordering::SeqCst) >= self.after {
            // Killed: no answer ever comes; the thread ends without a word.
            return Err(DistError::Rendezvous {
                address: "killed".into(),
                problem: "this rank was killed".into(),
            });
        }
        Ok(())
    }
}

impl Communicator for Vanishing {
    fn rank(&self) -> usize {
        self.inner.rank()
    }
    fn world(&self) -> usize {
        self.inner.world()
    }
    fn all_reduce_sum(&self, buf: &mut [f32], contributes: bool) -> Result<(), DistError> {
        self.gone()?;
        self.inner.all_reduce_sum(buf, contributes)
    }
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<(), DistError> {
        self.gone()?;
        self.inner.all_reduce_sum_f64(buf)
    }
    fn abort(&self, _why: &str) {}
}

#[test]
fn a_killed_rank_ends_the_run_with_its_name_within_the_timeout() {
    let cfg = config("killed", 6, 1);
    let timeout = Duration::from_secs(3);
    let mut group = InProcess::group(2, timeout);
    let second = Vanishing {
        inner: group.pop().unwrap(),
        after: 4,
        seen: Default::default(),
    };
    let first = group.pop().unwrap();
    let stop = AtomicBool::new(false);
    let (err, waited) = std::thread::scope(|s| {
        let h = s.spawn(|| {
            let be = CpuBackend::new();
            let _ = train_rank(&cfg, &be, &second, false, &stop, &mut Quiet);
        });
        let be = CpuBackend::new();
        let t0 = Instant::now();
        let r = train_rank(&cfg, &be, &first, false, &stop, &mut Quiet);
        let waited = t0.elapsed();
        h.join().unwrap();
        (r.unwrap_err().to_string(), waited)
    });
    assert!(err.contains("rank(s) 1 of 2"), "{err}");
    assert!(err.contains("within 3 s"), "{err}");
    assert!(waited < Duration::from_secs(60), "{waited:?}");
}

#[test]
fn a_failing_rank_stops_the_others_with_its_error() {
    let cfg = config("failing", 3, 1);
    let stop = AtomicBool::new(false);
    let ranks = Ranks {
        world: 3,
        timeout: Duration::from_secs(120),
    };
    let backend = |rank: usize| -> lorafuse::Result<Box<dyn Backend>> {
        if rank == 2 {
            return Err(lorafuse::Error::CudaUnavailable(
                "device 2 is not there".into(),
            ));
        }
        cpu(rank)
    };
    let t0 = Instant::now();
    let err = train_threads(&cfg, ranks, &backend, false, &stop, &mut Quiet).unwrap_err();
    assert!(err.to_string().contains("device 2 is not there"), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(60));
}

fn lorafuse(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_lorafuse"));
    c.args(args);
    for v in [
        "RANK",
        "WORLD_SIZE",
        "LOCAL_RANK",
        "SLURM_PROCID",
        "SLURM_NTASKS",
    ] {
        c.env_remove(v);
    }
    c.envs(env.iter().copied());
    let out = c.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_gpus_launcher_and_launcher_environments() {
    let cfg = demo().join("demo.yaml");
    let cfg = cfg.to_str().unwrap();
    // Two workers start; without NCCL on GPUs (this build, or this machine) each refuses,
    // and the launcher ends as its first failed worker did.
    let (code, err) = lorafuse(&["train", cfg, "--gpus", "0,1"], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("starting 2 workers on GPUs 0,1"), "{err}");
    assert!(err.contains("CUDA"), "{err}");
    assert!(err.contains("ended with exit code 2"), "{err}");
    let (code, err) = lorafuse(&["train", cfg, "--gpus", "0,0"], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("each GPU at most once"), "{err}");
    // A torchrun-style environment missing its rendezvous address.
    let (code, err) = lorafuse(&["train", cfg], &[("WORLD_SIZE", "2"), ("RANK", "1")]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("MASTER_ADDR"), "{err}");
}
