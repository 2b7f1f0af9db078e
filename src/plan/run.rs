//! One metered run of the trainer's phases (`train::trainer::Run`) on the CUDA backend over
//! the memory meter, with shape-only weights and blank pixels: the pool's peak of each phase
//! and what stays resident.

use std::sync::Arc;

use super::{MemoryPlan, PlanData, PlanInput, CONTEXT_BYTES};
use crate::backend::cuda::{CudaBackend, Device};
use crate::data::{Dataset, Item};
use crate::error::{Error, Result};
use crate::model::family::{family_by_id, WeightsFrom};
use crate::tensor::DType;
use crate::train::cache::Pixels;
use crate::train::trainer::{Phase, PhaseHook, Run};

/// Records the pool at phase boundaries.
struct Meter<'d> {
    dev: &'d Device,
    /// Bytes each network took as it loaded.
    weights: Vec<(&'static str, usize)>,
    last: usize,
    /// (phase, in use at its start, in use at its end, its peak).
    phases: Vec<(Phase, usize, usize, usize)>,
    begun: usize,
}

impl Meter<'_> {
    fn in_use(&self) -> usize {
        self.dev.pool_stats().in_use
    }
    fn phase(&self, p: Phase) -> Option<(usize, usize, usize)> {
        self.phases
            .iter()
            .filter(|x| x.0 == p)
            .map(|x| (x.1, x.2, x.3))
            .next_back()
    }
    fn peak(&self, p: Phase) -> usize {
        self.phase(p).map_or(0, |x| x.2)
    }
    /// Runs `f` as phase `p`.
    fn measure<T>(&mut self, p: Phase, f: impl FnOnce() -> Result<T>) -> Result<T> {
        self.begin(p);
        let out = f()?;
        self.end(p);
        Ok(out)
    }
}

impl PhaseHook for Meter<'_> {
    fn begin(&mut self, _: Phase) {
        self.dev.reset_peak();
        self.begun = self.in_use();
        self.last = self.begun;
    }
    fn end(&mut self, p: Phase) {
        let now = self.in_use();
        self.phases
            .push((p, self.begun, now, self.dev.pool_stats().peak_in_use));
    }
    fn loaded(&mut self, network: &'static str) {
        let now = self.in_use();
        self.weights.push((network, now - self.last));
        self.last = now;
    }
}

/// Measures `input`'s device memory: see the module documentation.
pub fn plan(input: &PlanInput) -> Result<MemoryPlan> {
    check(input)?;
    let cfg = &input.cfg;
    let dev: Arc<Device> = Device::meter_for(input.device.clone());
    let be = CudaBackend::new(dev.clone(), input.dtype())?;
    let ds = match &input.data {
        PlanData::Scanned(ds) => ds.clone(),
        PlanData::Images { train, validation } => synthetic(input, *train, *validation),
    };
    let mut meter = Meter {
        dev: &dev,
        weights: Vec::new(),
        last: 0,
        phases: Vec::new(),
        begun: 0,
    };
    let base = cfg.base_model.exists().then_some(cfg.base_model.as_path());
    let reference = family_by_id(input.family).ok_or_else(|| Error::BadValue {
        op: "plan",
        name: "family",
        value: input.family.to_string(),
        expected: "sd1, sd2 or sdxl".into(),
    })?;
    let from = match base {
        Some(p) => WeightsFrom::Shapes(Some(p)),
        None => WeightsFrom::Reference(reference),
    };
    let mut run = Run::prepare(cfg, &be, ds, from, Pixels::Blank, &mut meter)?;
    // The step of the largest batch (a dataset's batch_size may be larger than the run's).
    run.largest_batch_first();
    let done = meter.measure(Phase::Step, || run.step())?;
    if !run.val_set.is_empty() {
        meter.measure(Phase::Validation, || run.eval_loss(false))?;
    }
    let sampling_peak = if cfg.samples_asked() && run.models.vae.is_some() {
        let lines = crate::train::samples::prompt_lines(cfg)
            .ok()
            .filter(|l| !l.is_empty())
            .unwrap_or_else(|| vec!["a sample".to_string()]);
        meter.measure(Phase::Sampling, || run.sample_images(&lines))?;
        Some(meter.peak(Phase::Sampling))
    } else {
        None
    };

    let kept = |name: &str| match name {
        "vae" => run.models.vae.is_some(),
        "text_encoder" => run.models.text.is_some(),
        _ => true,
    };
    let weights = meter
        .weights
        .iter()
        .map(|&(n, b)| (n, b, kept(n)))
        .collect::<Vec<_>>();
    let released: usize = weights.iter().filter(|w| !w.2).map(|w| w.1).sum();
    let caches = meter
        .phase(Phase::Caching)
        .map_or(0, |(begin, end, _)| end + released - begin);
    let eval_sets = meter
        .phase(Phase::Evaluation)
        .map_or(0, |(begin, end, _)| end - begin);
    let (lora, grads, optimizer) = run.trainable.bytes();
    Ok(MemoryPlan {
        input: input.clone(),
        family: match (base, input.family) {
            (None, "sd1") => "SD1.5".to_string(),
            (None, _) => format!("{} (reference shapes)", run.models.family.display_name()),
            _ => run.models.family.display_name().to_string(),
        },
        cached: (run.inputs.latents.len(), run.inputs.texts.len()),
        weights,
        lora,
        optimizer,
        grads,
        caches,
        eval_sets,
        tape: done.tape_by_block,
        caching_peak: meter.peak(Phase::Caching).max(meter.peak(Phase::Models)),
        training_peak: meter.peak(Phase::Step),
        evaluation_peak: meter
            .peak(Phase::Evaluation)
            .max(meter.peak(Phase::Validation)),
        sampling_peak,
        reserved_peak: dev.pool_stats().peak_reserved,
        context: CONTEXT_BYTES,
    })
}

/// `train` images and `validation` images at the configured resolution, each with its own
/// caption (so every caption is cached, as distinct captions are).
fn synthetic(input: &PlanInput, train: usize, validation: usize) -> Dataset {
    let bucket = (input.width(), input.height());
    let item = |i: usize| Item::synthetic(i, bucket);
    Dataset {
        train_data_dir: input.cfg.train_data_dir.clone(),
        sources: Vec::new(),
        items: (0..train).map(item).collect(),
        validation: (train..train + validation).map(item).collect(),
        buckets: vec![bucket],
        warnings: Vec::new(),
        num_reg_images: 0,
        folders: Vec::new(),
    }
}

/// The sizes the models accept: a multiple of 64 pixels (8 latent pixels, through three
/// stride-2 downsamplers) and a batch of at least 1.
fn check(input: &PlanInput) -> Result<()> {
    let bad = |name: &'static str, value: String, expected: &str| {
        Err(Error::BadValue {
            op: "plan",
            name,
            value,
            expected: expected.into(),
        })
    };
    let (w, h) = (input.width(), input.height());
    if input.batch() == 0 {
        return bad("batch_size", "0".into(), "at least 1");
    }
    if w < 64 || h < 64 || w % 64 != 0 || h % 64 != 0 {
        return bad(
            "resolution",
            format!("{w}x{h}"),
            "multiples of 64 pixels, at least 64",
        );
    }
    if input.dtype() == DType::F64 {
        return bad("mixed_precision", "f64".into(), "fp16, bf16 or no (f32)");
    }
    if input.dtype() == DType::BF16 {
        if let Some(why) = input.device.bf16_refused() {
            return Err(crate::backend::select::bf16_refused(why));
        }
    }
    Ok(())
}
