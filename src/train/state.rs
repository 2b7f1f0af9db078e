//! The resumable training state: the adapters, both AdamW moments, the step counters, every
//! RNG's state and the loss scale, in one `.safetensors` file (tensors `params`, `m`, `v`; the
//! rest as JSON in the header's metadata), written atomically (`crate::atomic`) so an
//! interruption never leaves a broken state behind.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Everything but the three flat buffers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Optimizer steps taken.
    pub step: u64,
    /// Epochs completed.
    pub epoch: u64,
    /// Micro-batches of the current epoch already consumed. Every random draw of a
    /// micro-batch (data order, flips, captions, noise) comes from a generator seeded by
    /// (seed, epoch, micro-batch), so these counters are all a resume needs to continue with
    /// the same draws.
    pub batch_in_epoch: u64,
    pub loss_scale: f64,
    pub loss_scale_good_steps: u32,
    pub skipped_steps: u64,
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

const FORMAT: &str = "lorafuse-train-state-1";

/// Saves the state to `path` atomically.
pub fn save(
    path: &Path,
    progress: &Progress,
    params: &Tensor,
    m: &Tensor,
    v: &Tensor,
) -> Result<()> {
    let json = serde_json::to_string(progress)
        .map_err(|e| bad(path, format!("cannot encode the state: {e}")))?;
    let meta = BTreeMap::from([
        ("format".to_string(), FORMAT.to_string()),
        ("progress".to_string(), json),
    ]);
    let tensors = [
        ("params".to_string(), params),
        ("m".to_string(), m),
        ("v".to_string(), v),
    ];
    crate::lora::write::write_f32_safetensors(path, &tensors, &meta).map(|_| ())
}

/// The saved state: progress and the three flat f32 buffers.
pub struct Saved {
    pub progress: Progress,
    pub params: Tensor,
    pub m: Tensor,
    pub v: Tensor,
}

/// Reads a state written by [`save`].
pub fn load(path: &Path) -> Result<Saved> {
    let bytes = std::fs::read(path).map_err(|e| bad(path, format!("cannot read it: {e}")))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| bad(path, format!("not a training state: {e}")))?;
    let meta = header.metadata().clone().unwrap_or_default();
    if meta.get("format").map(String::as_str) != Some(FORMAT) {
        return Err(bad(
            path,
            format!("not a lorafuse training state (expected format {FORMAT})"),
        ));
    }
    let progress: Progress =
        serde_json::from_str(meta.get("progress").map(String::as_str).unwrap_or(""))
            .map_err(|e| bad(path, format!("its progress record is damaged: {e}")))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| bad(path, format!("not a training state: {e}")))?;
    let get = |name: &str| -> Result<Tensor> {
        let t = st
            .tensor(name)
            .map_err(|e| bad(path, format!("tensor {name} missing: {e}")))?;
        if t.dtype() != safetensors::Dtype::F32 {
            return Err(bad(path, format!("tensor {name} is not f32")));
        }
        let v: Vec<f32> = t
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Tensor::from_f32(t.shape(), v)
    };
    Ok(Saved {
        progress,
        params: get("params")?,
        m: get("m")?,
        v: get("v")?,
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
