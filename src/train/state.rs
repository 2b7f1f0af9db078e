//! The resumable training state, one `.safetensors` file written atomically (`crate::atomic`
//! through `lora::write`), so an interruption (Ctrl-C, `kill -9`, a power cut) never leaves a
//! broken state behind: the file is the previous save or the new one, never half of either.
//!
//! Tensors, per optimizer group (`unet`, `text_encoder`): `<group>.params` (the adapters, flat),
//! `<group>.<name>` for every optimizer state tensor (AdamW: `m`, `v`; f32, or u8 for the
//! 8-bit optimizers' codes), and `<group>.best` (the
//! adapters at the best validation so far, for early stopping) when there is one. The rest is
//! JSON in the header's metadata: [`Progress`].

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::TrainConfig;
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use crate::train::scaler::LossScaler;
use crate::train::trainer::Run;

/// Everything but the tensors.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Optimizer steps taken (applied or skipped).
    pub step: u64,
    /// Epochs completed.
    pub epoch: u64,
    /// Micro-batches of the current epoch already consumed. Every random draw of a
    /// micro-batch (data order, flips, captions, noise, dropout) comes from a generator seeded
    /// by (seed, epoch, micro-batch), so these counters are all a resume needs to continue
    /// with the same draws.
    pub batch_in_epoch: u64,
    pub scaler: LossScaler,
    /// Steps each optimizer group applied (its bias corrections count these).
    pub optimizer_steps: u64,
    /// Best validation loss so far and the step it was seen at.
    pub best_validation: Option<(u64, f64)>,
    /// Validations since the best one (early stopping).
    pub validations_since_best: u64,
    /// (step, loss) of every optimizer step, and of every validation.
    pub train_losses: Vec<(u64, f64)>,
    pub validation_losses: Vec<(u64, f64)>,
    /// The effective configuration the run started with, to refuse a resume that changed it.
    pub config_fingerprint: String,
}

impl Progress {
    /// No step taken yet.
    pub fn fresh(cfg: &TrainConfig, scaler: LossScaler) -> Progress {
        Progress {
            step: 0,
            epoch: 0,
            batch_in_epoch: 0,
            scaler,
            optimizer_steps: 0,
            best_validation: None,
            validations_since_best: 0,
            train_losses: Vec::new(),
            validation_losses: Vec::new(),
            config_fingerprint: fingerprint(cfg, 1),
        }
    }
}

/// A fingerprint of everything that shapes the run's draws and updates: a resume with a
/// different one would not continue the same run. Where things are written, how often, and
/// how long the run is may change between a run and its resume. With `world` data-parallel
/// ranks, the accumulation recorded is the step's micro-batches on all ranks together
/// (dist/mod.rs), so a run saved on N ranks at A resumes on M ranks at A' when N·A = M·A'.
pub fn fingerprint(cfg: &TrainConfig, world: usize) -> String {
    let mut c = cfg.clone();
    if world > 1 {
        c.gradient_accumulation_steps = cfg.gradient_accumulation_steps.max(1) * world;
    }
    c.output_dir = std::path::PathBuf::new();
    c.logging_dir = std::path::PathBuf::new();
    c.save_every_n_epochs = None;
    c.save_every_n_steps = None;
    c.save_last_n_epochs = None;
    c.save_last_n_steps = None;
    c.save_last_n_epochs_state = None;
    c.save_last_n_steps_state = None;
    c.save_state = false;
    c.resume = None;
    c.sample_every_n_steps = 0;
    c.sample_every_n_epochs = 0;
    c.sample_at_first = false;
    c.sample_sampler = crate::sample::SamplerKind::Ddim;
    c.max_train_steps = None;
    c.epochs = 0;
    c.to_yaml()
}

/// Refuses a state saved under another configuration, naming the keys whose values differ.
///
/// Compared key by key: a key the saved fingerprint lacks (one a later lorafuse added) counts
/// as the same when this config leaves it at its default, since a new key's default keeps what
/// the run did before it existed; so a run saved by an earlier build resumes. A fingerprint
/// that is not a YAML mapping is compared as text.
pub fn check_fingerprint(
    path: &Path,
    saved: &Progress,
    cfg: &TrainConfig,
    world: usize,
) -> Result<()> {
    let now = fingerprint(cfg, world);
    if saved.config_fingerprint == now {
        return Ok(());
    }
    let differing = differing_keys(&saved.config_fingerprint, &now, &|k| {
        cfg.provenance.is_written(k)
    });
    match differing {
        Some(keys) if keys.is_empty() => Ok(()),
        found => Err(Error::BadValue {
            op: "train",
            name: "resume",
            value: path.display().to_string(),
            expected: format!(
                "a state saved with the same settings (this config changes what the run \
                 computes{}; start a new output_dir instead)",
                found.map_or(String::new(), |k| format!(": {}", k.join(", ")))
            ),
        }),
    }
}

/// The keys whose values differ between two fingerprints, a key missing from `saved` only
/// when `written(key)`; None when either is not a YAML mapping.
fn differing_keys(saved: &str, now: &str, written: &dyn Fn(&str) -> bool) -> Option<Vec<String>> {
    type Map = BTreeMap<String, yaml_serde::Value>;
    let saved: Map = yaml_serde::from_str(saved).ok()?;
    let now: Map = yaml_serde::from_str(now).ok()?;
    let mut keys: Vec<String> = now
        .iter()
        .filter(|(k, v)| match saved.get(*k) {
            Some(old) => old != *v,
            None => written(k),
        })
        .map(|(k, _)| k.clone())
        .collect();
    keys.extend(saved.keys().filter(|k| !now.contains_key(*k)).cloned());
    Some(keys)
}

const FORMAT: &str = "lorafuse-train-state-2";

/// The state's tensors by name, host copies.
pub type Tensors = BTreeMap<String, Tensor>;

/// Saves the state to `path` atomically.
pub fn save(path: &Path, progress: &Progress, tensors: &Tensors) -> Result<()> {
    let json = serde_json::to_string(progress)
        .map_err(|e| bad(path, format!("cannot encode the state: {e}")))?;
    let meta = BTreeMap::from([
        ("format".to_string(), FORMAT.to_string()),
        ("progress".to_string(), json),
    ]);
    let named: Vec<(String, &Tensor)> = tensors.iter().map(|(k, t)| (k.clone(), t)).collect();
    crate::lora::write::write_f32_safetensors(path, &named, &meta).map(|_| ())
}

/// Reads a state written by [`save`].
pub fn load(path: &Path) -> Result<(Progress, Tensors)> {
    let bytes = std::fs::read(path).map_err(|e| bad(path, format!("cannot read it: {e}")))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| bad(path, format!("not a training state: {e}")))?;
    let meta = header.metadata().clone().unwrap_or_default();
    if meta.get("format").map(String::as_str) != Some(FORMAT) {
        return Err(bad(
            path,
            format!(
                "not a training state of this lorafuse (expected format {FORMAT}); start a new \
                 output_dir or finish that run with the lorafuse that wrote it"
            ),
        ));
    }
    let progress: Progress =
        serde_json::from_str(meta.get("progress").map(String::as_str).unwrap_or(""))
            .map_err(|e| bad(path, format!("its progress record is damaged: {e}")))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| bad(path, format!("not a training state: {e}")))?;
    let mut tensors = Tensors::new();
    for (name, t) in st.tensors() {
        let tensor = match t.dtype() {
            safetensors::Dtype::F32 => Tensor::from_f32(
                t.shape(),
                t.data()
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            )?,
            safetensors::Dtype::U8 => Tensor::from_u8(t.shape(), t.data().to_vec())?,
            _ => return Err(bad(path, format!("tensor {name} is not f32 or u8"))),
        };
        tensors.insert(name, tensor);
    }
    Ok((progress, tensors))
}

/// The tensor `name` of a loaded state, or an error naming it.
pub fn take(path: &Path, tensors: &mut Tensors, name: &str) -> Result<Tensor> {
    tensors.remove(name).ok_or_else(|| {
        bad(
            path,
            format!("tensor {name} is missing: a state of other adapters"),
        )
    })
}

fn bad(path: &Path, why: String) -> Error {
    Error::BadValue {
        op: "training state",
        name: "file",
        value: path.display().to_string(),
        expected: why,
    }
}

/// How a run writes and reads its state.
impl Run<'_> {
    /// The state's tensors: every group's parameters, optimizer state and best parameters.
    pub fn state_tensors(&self) -> Result<Tensors> {
        let be = self.be;
        let mut t = Tensors::new();
        for (i, g) in self.trainable.groups.iter().enumerate() {
            // Host copies; u8 state (8-bit optimizers' codes) stays bytes.
            let host = |x: &Tensor| -> Result<Tensor> {
                let v = be.to_f32_vec(x)?;
                match x.dtype() {
                    crate::tensor::DType::U8 => {
                        Tensor::from_u8([x.numel()], v.iter().map(|&b| b as u8).collect())
                    }
                    _ => Tensor::from_f32([x.numel()], v),
                }
            };
            t.insert(format!("{}.params", g.name), host(&g.params)?);
            for (name, x) in g.optimizer.state() {
                t.insert(format!("{}.{name}", g.name), host(x)?);
            }
            if let Some(best) = &self.best {
                let b = crate::tensor::Tensor::from_f32([best[i].len()], best[i].clone())?;
                t.insert(format!("{}.best", g.name), b);
            }
        }
        Ok(t)
    }

    /// Continues from a state written by this configuration.
    pub fn resume(&mut self, path: &std::path::Path) -> Result<()> {
        let (progress, mut tensors) = load(path)?;
        check_fingerprint(path, &progress, self.cfg, self.comm.world())?;
        let be = self.be;
        let mut best = Vec::new();
        for g in &mut self.trainable.groups {
            let params = take(path, &mut tensors, &format!("{}.params", g.name))?;
            g.set_params(be, &params.to_f32_vec(), &mut self.trainable.lora)?;
            let name = g.name.clone();
            g.optimizer
                .restore(be, progress.optimizer_steps, &mut |s| {
                    take(path, &mut tensors, &format!("{name}.{s}"))
                })?;
            if let Ok(b) = take(path, &mut tensors, &format!("{name}.best")) {
                best.push(b.to_f32_vec());
            }
        }
        self.best = (best.len() == self.trainable.groups.len()).then_some(best);
        self.trainable.scaler = progress.scaler;
        self.progress = progress;
        Ok(())
    }

    /// Writes the state to `path` (atomically).
    pub fn save_state(&mut self, path: &std::path::Path) -> Result<()> {
        self.progress.scaler = self.trainable.scaler;
        self.progress.optimizer_steps = self
            .trainable
            .groups
            .first()
            .map_or(0, |g| g.optimizer.steps());
        save(path, &self.progress, &self.state_tensors()?)
    }
}

#[cfg(test)]
mod fingerprint_tests {
    use super::differing_keys;

    #[test]
    fn keys_compare_one_by_one_and_a_new_key_at_its_default_matches() {
        let saved = "a: 1\nb: x\n";
        let none = |_: &str| false;
        assert_eq!(differing_keys(saved, "a: 1\nb: x\n", &none), Some(vec![]));
        assert_eq!(
            differing_keys(saved, "a: 2\nb: x\n", &none),
            Some(vec!["a".to_string()])
        );
        // A key the saved state lacks: the same unless this config writes it.
        assert_eq!(
            differing_keys(saved, "a: 1\nb: x\nc: 0\n", &none),
            Some(vec![])
        );
        assert_eq!(
            differing_keys(saved, "a: 1\nb: x\nc: 0\n", &|k| k == "c"),
            Some(vec!["c".to_string()])
        );
        // A key this build no longer has differs.
        assert_eq!(
            differing_keys(saved, "a: 1\n", &none),
            Some(vec!["b".to_string()])
        );
        assert_eq!(differing_keys("not: [a mapping", "a: 1\n", &none), None);
    }
}
