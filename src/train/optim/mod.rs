//! The optimizer seam. Every adapter parameter a run trains lives in one flat f32 buffer per
//! learning-rate group ([`ParamGroup`]: the UNet's adapters, the text encoder's), with its
//! gradient beside it, so that clipping and the update are each one op over one buffer. An
//! [`Optimizer`] updates such a buffer and owns its own state (AdamW: two moments), which it
//! names for the resumable state file.
//!
//! A new optimizer is a new file here implementing [`Optimizer`] plus one arm in
//! [`OptimizerKind::build`]; the trainer, the state file and `plan` need no change.
//!
//! - `adamw.rs`: AdamW (PyTorch's decoupled weight decay), the default.
//! - `lion.rs`: Lion (lion-pytorch).
//! - `eightbit.rs`: AdamW8bit and Lion8bit (bitsandbytes' blockwise 8-bit state).
//! - `sgd.rs`: SGD with Nesterov momentum (kohya's `SGDNesterov`).
//! - `prodigy.rs`: Prodigy (prodigyopt), which estimates its own step size.
//! - `dadapt.rs`: DAdaptAdam (dadaptation), which does too.
//! - `adafactor.rs`: Adafactor (transformers), whose factored moments need each tensor's
//!   shape: a group's [`Layout`].
//! - `kind.rs`: kohya's `optimizer_type` and `optimizer_args`, read into an [`OptimizerKind`].

mod adafactor;
mod adamw;
mod dadapt;
mod eightbit;
mod kind;
mod lion;
mod prodigy;
mod sgd;

pub use adafactor::{Adafactor, AdafactorSettings};
pub use adamw::{AdamW, AdamWSettings};
pub use dadapt::{DAdaptAdam, DAdaptSettings};
pub use eightbit::{AdamW8bit, Lion8bit, QuantState};
pub use kind::{KeyDefaults, OptimizerType};
pub use lion::{Lion, LionSettings};
pub use prodigy::{Prodigy, ProdigySettings};
pub use sgd::{SgdNesterov, SgdSettings};

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::lora::{LoraGrads, LoraModule, LoraSet};
use crate::tensor::{DType, Tensor};

/// An update rule over one flat f32 parameter buffer.
pub trait Optimizer: Send {
    /// kohya's `optimizer_type` name ("AdamW"), for metadata and messages.
    fn name(&self) -> &'static str;
    /// kohya's `ss_optimizer` text: the name and the non-default arguments.
    fn describe(&self) -> String;
    /// One step, in place: `params` from `grads`, every gradient multiplied by `grad_scale`
    /// (1/loss scale times the clipping coefficient), at learning rate `lr`.
    fn step(
        &mut self,
        be: &dyn Backend,
        params: &mut Tensor,
        grads: &Tensor,
        lr: f64,
        grad_scale: f64,
    ) -> Result<()>;
    /// Steps applied so far (skipped steps do not count).
    fn steps(&self) -> u64;
    /// The rate the step at scheduled rate `lr` moves by, as kohya logs it: `lr`, or d·lr for
    /// an optimizer that estimates its step size d (Prodigy).
    fn effective_lr(&self, lr: f64) -> f64 {
        lr
    }
    /// The state the next step depends on, by name ("m", "v"), as saved in the state file.
    fn state(&self) -> Vec<(&'static str, &Tensor)>;
    /// Device bytes the optimizer holds besides its state (a scratch buffer), for `plan`.
    fn workspace_bytes(&self) -> usize {
        0
    }
    /// Restores what [`Optimizer::state`] gave and the step count; `get` returns the saved
    /// tensor of a name (an error when it is missing or has another length).
    fn restore(
        &mut self,
        be: &dyn Backend,
        steps: u64,
        get: &mut dyn FnMut(&'static str) -> Result<Tensor>,
    ) -> Result<()>;
}

/// Which optimizer a run uses, with its settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum OptimizerKind {
    AdamW(AdamWSettings),
    AdamW8bit(AdamWSettings),
    Lion(LionSettings),
    Lion8bit(LionSettings),
    SgdNesterov(SgdSettings),
    Prodigy(ProdigySettings),
    DAdaptAdam(DAdaptSettings),
    Adafactor(AdafactorSettings),
}

/// The tensors a flat parameter buffer holds, end to end: each one's shape (the adapters'
/// down and up, as kohya stores them). Only an optimizer with per-tensor state (Adafactor)
/// looks past the total.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    shapes: Vec<Vec<usize>>,
}

impl Layout {
    pub fn new(shapes: Vec<Vec<usize>>) -> Layout {
        Layout { shapes }
    }
    /// One 1-D tensor of `n` values.
    pub fn flat(n: usize) -> Layout {
        Layout::new(vec![vec![n]])
    }
    pub fn shapes(&self) -> &[Vec<usize>] {
        &self.shapes
    }
    /// The values of all tensors.
    pub fn numel(&self) -> usize {
        self.shapes
            .iter()
            .map(|d| d.iter().product::<usize>())
            .sum()
    }
}

impl OptimizerKind {
    /// A fresh optimizer for the tensors of `layout` on `be`.
    pub fn build(&self, be: &dyn Backend, layout: &Layout) -> Result<Box<dyn Optimizer>> {
        let n = layout.numel();
        Ok(match *self {
            OptimizerKind::AdamW(s) => Box::new(AdamW::new(be, n, s)?),
            OptimizerKind::AdamW8bit(s) => Box::new(AdamW8bit::new(be, n, s)?),
            OptimizerKind::Lion(s) => Box::new(Lion::new(be, n, s)?),
            OptimizerKind::Lion8bit(s) => Box::new(Lion8bit::new(be, n, s)?),
            OptimizerKind::SgdNesterov(s) => Box::new(SgdNesterov::new(be, n, s)?),
            OptimizerKind::Prodigy(s) => Box::new(Prodigy::new(be, n, s)?),
            OptimizerKind::DAdaptAdam(s) => Box::new(DAdaptAdam::new(be, n, s)?),
            OptimizerKind::Adafactor(s) => Box::new(Adafactor::new(be, layout, s)?),
        })
    }
}

/// The adapters of one learning rate: their modules in the set, the flat parameters and
/// gradients, and the optimizer that updates them.
pub struct ParamGroup {
    /// "unet", "text_encoder", or with block-wise learning rates "unet_block<i>" (kohya's
    /// block number, lora/blocks.rs): the prefix of this group's tensors in the state file.
    pub name: String,
    /// The modules of the `LoraSet` this group owns, in order: module i's down, up, then
    /// the next module's.
    pub modules: Vec<usize>,
    /// What the group's learning rate is multiplied by (kohya's block lr weight; else 1).
    pub lr_weight: f64,
    pub params: Tensor,
    pub grads: Tensor,
    pub optimizer: Box<dyn Optimizer>,
}

impl ParamGroup {
    /// A group for the modules `modules` of `lora` (their indices), updated by a fresh
    /// `kind`, at learning-rate weight 1.
    pub fn new(
        be: &dyn Backend,
        name: &str,
        lora: &LoraSet,
        modules: impl IntoIterator<Item = usize>,
        kind: &OptimizerKind,
    ) -> Result<ParamGroup> {
        let modules: Vec<usize> = modules.into_iter().collect();
        let tensors = || {
            modules
                .iter()
                .map(|&i| &lora.modules()[i])
                .flat_map(LoraModule::tensors)
        };
        let params = gather(be, tensors())?;
        let layout = Layout::new(tensors().map(|t| t.dims().to_vec()).collect());
        let n = params.numel();
        Ok(ParamGroup {
            name: name.to_string(),
            modules,
            lr_weight: 1.0,
            params,
            grads: be.zeros(&[n], DType::F32)?,
            optimizer: kind.build(be, &layout)?,
        })
    }

    pub fn len(&self) -> usize {
        self.params.numel()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Copies the accumulated gradients of this group's modules into the flat buffer.
    pub fn load_grads(&mut self, be: &dyn Backend, grads: &LoraGrads) -> Result<()> {
        let flat = self.host_grads(be, grads)?;
        self.set_grads(be, &flat)
    }

    /// This group's gradients in `grads`, as one flat host buffer.
    pub fn host_grads(&self, be: &dyn Backend, grads: &LoraGrads) -> Result<Vec<f32>> {
        host_flat(be, self.modules.iter().flat_map(|&i| grads.of(i)))
    }

    /// Sets the flat gradient (summed over micro-batches and ranks).
    pub fn set_grads(&mut self, be: &dyn Backend, flat: &[f32]) -> Result<()> {
        self.grads = be.tensor_from_f32(&[flat.len()], flat, DType::F32)?;
        Ok(())
    }

    /// ‖g‖² of the flat gradient (not finite after an f16 overflow).
    pub fn grad_sum_squares(&self, be: &dyn Backend) -> Result<f64> {
        be.sum_squares(&self.grads)
    }

    /// One optimizer step at `lr`, then the new parameters written back into `lora`.
    pub fn update(
        &mut self,
        be: &dyn Backend,
        lr: f64,
        grad_scale: f64,
        lora: &mut LoraSet,
    ) -> Result<()> {
        self.optimizer
            .step(be, &mut self.params, &self.grads, lr, grad_scale)?;
        self.store(be, lora)
    }

    /// Replaces the flat parameters (a resume, or early stopping's best adapters) and writes
    /// them into `lora`.
    pub fn set_params(&mut self, be: &dyn Backend, flat: &[f32], lora: &mut LoraSet) -> Result<()> {
        if flat.len() != self.len() {
            return Err(Error::BadValue {
                op: "optimizer",
                name: "parameters",
                value: format!("{} parameters for group {}", flat.len(), self.name),
                expected: format!("{} parameters: the same adapters", self.len()),
            });
        }
        self.params = be.tensor_from_f32(&[flat.len()], flat, DType::F32)?;
        self.store(be, lora)
    }

    /// Writes the flat parameters back into the adapters the model reads.
    fn store(&self, be: &dyn Backend, lora: &mut LoraSet) -> Result<()> {
        let flat = be.to_f32_vec(&self.params)?;
        let mut at = 0;
        for &i in &self.modules {
            let m = &mut lora.modules_mut()[i];
            for t in m.tensors_mut() {
                let n = t.numel();
                *t = be.tensor_from_f32(t.dims(), &flat[at..at + n], t.dtype())?;
                at += n;
            }
        }
        Ok(())
    }
}

/// Restores an optimizer's state tensors by name (what [`Optimizer::restore`]'s `get` gives)
/// into `slots`, each uploaded to `be` in its slot's dtype; a saved tensor of another length
/// is an error naming it.
fn restore_named(
    be: &dyn Backend,
    get: &mut dyn FnMut(&'static str) -> Result<Tensor>,
    slots: &mut [(&'static str, &mut Tensor)],
) -> Result<()> {
    for (name, slot) in slots.iter_mut() {
        let saved = get(name)?;
        if saved.numel() != slot.numel() {
            return Err(Error::BadValue {
                op: "optimizer",
                name,
                value: format!("{} values", saved.numel()),
                expected: format!("{} values: the same adapters and optimizer", slot.numel()),
            });
        }
        **slot = be.tensor_from_f32(slot.dims(), &saved.to_f32_vec(), slot.dtype())?;
    }
    Ok(())
}

/// An optimizer's f64 scalars as the f32 tensor the state file saves (each as an exact
/// triple, [`split`]).
fn scalars_tensor(be: &dyn Backend, xs: &[f64]) -> Result<Tensor> {
    let parts = split(xs);
    be.tensor_from_f32(&[parts.len()], &parts, DType::F32)
}

/// The `N` scalars [`scalars_tensor`] saved under "scalars"; `what` names them for the error
/// ("Prodigy's d, d_max, numerator and k").
fn restore_scalars<const N: usize>(
    get: &mut dyn FnMut(&'static str) -> Result<Tensor>,
    what: &str,
) -> Result<[f64; N]> {
    let parts = get("scalars")?.to_f32_vec();
    let wrong = || Error::BadValue {
        op: "optimizer",
        name: "scalars",
        value: format!("{} values", parts.len()),
        expected: format!("{} values: {what}", 3 * N),
    };
    if parts.len() != 3 * N {
        return Err(wrong());
    }
    join(&parts).try_into().map_err(|_| wrong())
}

/// Tensors laid end to end in one flat f32 tensor.
fn gather<'a>(be: &dyn Backend, parts: impl Iterator<Item = &'a Tensor>) -> Result<Tensor> {
    let flat = host_flat(be, parts)?;
    be.tensor_from_f32(&[flat.len()], &flat, DType::F32)
}

/// Tensors laid end to end in one host buffer.
fn host_flat<'a>(be: &dyn Backend, parts: impl Iterator<Item = &'a Tensor>) -> Result<Vec<f32>> {
    let parts: Vec<&Tensor> = parts.collect();
    let mut flat = Vec::with_capacity(parts.iter().map(|t| t.numel()).sum());
    for t in parts {
        flat.extend(be.to_f32_vec(t)?);
    }
    Ok(flat)
}

/// The clipping coefficient for gradient norm `norm` and limit `max_norm` (0 = no clipping),
/// as torch's clip_grad_norm_: min(1, max_norm/(norm + 1e-6)).
pub fn clip_coefficient(norm: f64, max_norm: f64) -> f64 {
    if max_norm <= 0.0 {
        1.0
    } else {
        (max_norm / (norm + 1e-6)).min(1.0)
    }
}

/// f64 values as exact f32 triples (hi, mid, lo with hi + mid + lo = x): an optimizer's
/// scalars (Prodigy's, DAdaptAdam's d and sums) in the state file, restored bit for bit.
pub(super) fn split(xs: &[f64]) -> Vec<f32> {
    let mut out = Vec::with_capacity(3 * xs.len());
    for &x in xs {
        let hi = x as f32;
        let r = x - hi as f64;
        let mid = r as f32;
        let lo = (r - mid as f64) as f32;
        out.extend([hi, mid, lo]);
    }
    out
}

/// The inverse of [`split`].
pub(super) fn join(parts: &[f32]) -> Vec<f64> {
    parts
        .chunks(3)
        .map(|c| c[0] as f64 + c[1] as f64 + c[2] as f64)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{join, restore_scalars, scalars_tensor, split};
    use crate::tensor::Tensor;
    use crate::CpuBackend;

    #[test]
    fn scalars_round_trip_exactly() {
        for x in [
            0.0,
            1e-6,
            1.0 / 3.0,
            std::f64::consts::PI * 1e-9,
            123456789.125 + 1e-8,
            -2.5e-17,
            4096.0,
        ] {
            assert_eq!(join(&split(&[x]))[0].to_bits(), x.to_bits(), "{x}");
        }
    }

    #[test]
    fn saved_scalars_restore_and_a_wrong_count_is_an_error() {
        let be = CpuBackend::new();
        let saved = scalars_tensor(&be, &[0.1, 7.0]).unwrap();
        let got: [f64; 2] = restore_scalars(&mut |_| Ok(saved.clone()), "two").unwrap();
        assert_eq!(got, [0.1, 7.0]);
        // 3 values per scalar are expected; 4 (not a multiple of 3) or 6 for 3 are refused.
        for n in [4, 6] {
            let bad = Tensor::from_f32([n], vec![0.0; n]).unwrap();
            let e = restore_scalars::<3>(&mut |_| Ok(bad.clone()), "three")
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("scalars") && e.contains("9 values: three"),
                "{e}"
            );
        }
    }
}
