//! Starting from an existing LoRA (kohya's `network_weights`): the file's adapters replace
//! the new ones of the same kohya module name, as sd-scripts' `load_weights` (a non-strict
//! `load_state_dict`: the file's alpha too; a shape that differs is an error; adapters the
//! file lacks keep their fresh start; the file's others are not used). With
//! `dim_from_weights`, the run trains exactly the file's adapters that the model has, each at
//! its own rank and alpha, as `create_network_from_weights`.

use std::path::Path;

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::lora::{kohya, LayerKind, LoraModule, LoraSet};

/// What starting from the file did, for a notice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Started {
    /// Adapters taken from the file.
    pub loaded: usize,
    /// The file's adapters the run has no layer for (not used).
    pub unused: usize,
    /// The run's adapters the file lacks (fresh; with dim_from_weights, left out).
    pub missing: usize,
}

/// The config keys that train adapters of kind `algo`.
fn keys_for(algo: &crate::lora::Algo) -> &'static str {
    match algo {
        crate::lora::Algo::Lora => "algo: lora, dora_wd: false",
        crate::lora::Algo::Loha { .. } => "algo: loha, dora_wd: false",
        crate::lora::Algo::Dora { .. } => "algo: lora, dora_wd: true",
    }
}

/// `fresh` with the adapters of `file` in place (see the module documentation).
pub fn start_from(
    be: &dyn Backend,
    fresh: LoraSet,
    file: &Path,
    dim_from_weights: bool,
) -> Result<(LoraSet, Started)> {
    let dtype = fresh
        .modules()
        .first()
        .map_or(crate::tensor::DType::F32, |m| m.down.dtype());
    let from = kohya::load(file, be, dtype)?;
    let mut modules = Vec::with_capacity(fresh.len());
    let mut missing = 0;
    for m in fresh.modules() {
        match from.find(&m.name).map(|i| &from.modules()[i]) {
            Some(f) => {
                if f.algo.name() != m.algo.name() {
                    return Err(Error::BadValue {
                        op: "network_weights",
                        name: "adapter",
                        value: format!("{} in {}", m.name, file.display()),
                        expected: format!(
                            "an adapter of the kind this run trains, {} (the `algo` and `dora_wd` keys); the file's is {}: set {}",
                            m.algo.name(),
                            f.algo.name(),
                            keys_for(&f.algo)
                        ),
                    });
                }
                // A LoHa file does not say the layer's kernel (lora/kohya.rs): the model's. A 1x1
                // conv's adapter and a Linear layer's are the same matrices (SD2.x's projections
                // are 1x1 convs in earlier lorafuse files and Linear in kohya's): the model's
                // kind.
                let pointwise = |k: LayerKind| matches!(k, LayerKind::Linear | LayerKind::Conv1x1);
                let same_math = pointwise(f.kind) && pointwise(m.kind);
                let f = &LoraModule {
                    kind: if f.is_lora() && !same_math {
                        f.kind
                    } else {
                        m.kind
                    },
                    ..f.clone()
                };
                let shapes = |m: &LoraModule| -> Vec<Vec<usize>> {
                    m.tensors().iter().map(|t| t.dims().to_vec()).collect()
                };
                let same = shapes(f) == shapes(m);
                if !same && !dim_from_weights {
                    return Err(Error::BadValue {
                        op: "network_weights",
                        name: "adapter",
                        value: format!("{} in {}", m.name, file.display()),
                        expected: format!(
                            "the shapes this run trains, down {:?} and up {:?} (rank {}); the file has down {:?} and up {:?} (rank {}): set lora_rank (conv_dim for a 3x3 conv) to the file's rank, or dim_from_weights: true",
                            m.down.dims(),
                            m.up.dims(),
                            m.rank(),
                            f.down.dims(),
                            f.up.dims(),
                            f.rank()
                        ),
                    });
                }
                if f.kind != m.kind {
                    return Err(Error::BadValue {
                        op: "network_weights",
                        name: "adapter",
                        value: format!("{} in {}", m.name, file.display()),
                        expected: format!(
                            "an adapter of a {:?} layer, as the model's; the file's is for a {:?}",
                            m.kind, f.kind
                        ),
                    });
                }
                modules.push(f.clone());
            }
            None => {
                missing += 1;
                if !dim_from_weights {
                    modules.push(m.clone());
                }
            }
        }
    }
    let loaded = modules.len() - if dim_from_weights { 0 } else { missing };
    let started = Started {
        loaded,
        unused: from.len() - loaded,
        missing,
    };
    if loaded == 0 {
        return Err(Error::BadValue {
            op: "network_weights",
            name: "file",
            value: file.display().to_string(),
            expected: "a LoRA with adapters for this model's layers (its module names match none of the layers this run trains: another model, or lora_targets / train_text_encoder differ)".into(),
        });
    }
    Ok((LoraSet::new(modules), started))
}
