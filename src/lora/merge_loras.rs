//! `lorafuse merge` without `--model`: several LoRAs, each at a ratio, into one LoRA.
//!
//! - Ranks kept (the default; sd-scripts' merge_lora.py `--concat`): for every module name,
//!   the modules of the LoRAs that have it are stacked ([`LoraSet::combine`]): down = [A₁; A₂],
//!   up = [w₁s₁B₁, w₂s₂B₂], alpha = the stacked rank (scale 1), so the merged delta is
//!   Σ ratioᵢ·scaleᵢ·upᵢ·downᵢ exactly, what applying the LoRAs together at those weights
//!   gives. (merge_lora.py keeps the first LoRA's alpha and multiplies both factors by
//!   ratio·sqrt(alphaᵢ/alpha₁), so its delta scales with ratio², and its default mode adds
//!   the factors themselves, which is not the sum of the products; lorafuse does neither.)
//! - `new_rank` (sd-scripts' svd_merge_lora.py): the same sum, then per module its best
//!   approximation of rank min(new_rank, out, in·k²) (3x3 convs: `new_conv_rank`, default
//!   `new_rank`), by the exact SVD of the stacked product ([`crate::linalg::svd_of_product`];
//!   a rank beyond what the sum has is capped there), up = U·S and down = Vᵀ clamped at the
//!   `clamp_quantile` quantile (svd_merge_lora.py: 0.99), alpha = rank.
//!
//! The LoRAs must be of one model family (`lora::family`: SD1.x, SD2.x, SDXL, from their
//! metadata or module names), else the merge is refused naming both: an SDXL LoRA and an SD1.x
//! one share no module, and their stack would be a file for neither.
//!
//! Metadata: kohya's minimum (`ss_network_module`, `ss_network_dim`/`ss_network_alpha`, the
//! common value or "Dynamic", `ss_v2` and `ss_base_model_version` from the first LoRA that has
//! them, else SDXL's when the names say SDXL, `ss_network_args` with conv_dim/conv_alpha for
//! `new_conv_rank`), hashes recomputed.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::linalg::svd_of_product;
use crate::lora::export::{py_float, save_kohya, SavePrecision, SDXL_BASE_VERSION};
use crate::lora::factors::module_from_svd;
use crate::lora::family::{lora_family, LoraFamily};
use crate::lora::resize::factors;
use crate::lora::{kohya, LayerKind, LoraModule, LoraSet};
use crate::model::checkpoint::safetensors::SafetensorsFile;
use crate::tensor::DType;
use crate::CpuBackend;

/// What the merge is asked to do.
#[derive(Clone, Debug)]
pub struct LoraMergeArgs<'a> {
    /// Each LoRA file and its ratio.
    pub loras: &'a [(PathBuf, f64)],
    pub output: &'a Path,
    /// None: ranks concatenated.
    pub new_rank: Option<usize>,
    pub new_conv_rank: Option<usize>,
    /// With `new_rank`; None: no clamping.
    pub clamp_quantile: Option<f64>,
    /// None: fp32.
    pub precision: Option<SavePrecision>,
}

/// What the merge did.
#[derive(Clone, Debug)]
pub struct LoraMergeReport {
    pub output: PathBuf,
    /// Modules per input LoRA.
    pub modules_per_lora: Vec<usize>,
    /// Modules in the output.
    pub modules: usize,
    /// The ranks of the output's modules.
    pub ranks: BTreeSet<usize>,
}

impl fmt::Display for LoraMergeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let per: Vec<String> = self.modules_per_lora.iter().map(usize::to_string).collect();
        let ranks: Vec<String> = self.ranks.iter().map(usize::to_string).collect();
        write!(
            f,
            "merged {} LoRAs ({} modules) into {} modules of rank {}: {}",
            self.modules_per_lora.len(),
            per.join(" + "),
            self.modules,
            ranks.join(", "),
            self.output.display()
        )
    }
}

/// The layer a module adapts: its kind, out features and in features (·k²).
fn layer_of(m: &LoraModule) -> (LayerKind, usize, usize) {
    (m.kind, m.up.dims()[0], m.down.numel() / m.rank().max(1))
}

/// Merges the LoRAs of `args` and writes `args.output` (atomically).
pub fn merge_loras(args: &LoraMergeArgs) -> Result<LoraMergeReport> {
    let bad = |path: &Path, detail: String| Error::Lora {
        path: path.to_path_buf(),
        detail: format!("{detail}; nothing was written"),
    };
    if args.new_rank == Some(0) || args.new_conv_rank == Some(0) {
        return Err(bad(
            args.output,
            "the new rank must be at least 1 (--new-rank, --new-conv-rank)".into(),
        ));
    }
    for (p, ratio) in args.loras {
        if !ratio.is_finite() {
            return Err(bad(p, format!("ratio {ratio}: give a finite number")));
        }
        if let (Ok(a), Ok(b)) = (p.canonicalize(), args.output.canonicalize()) {
            if a == b {
                return Err(bad(
                    p,
                    "the output is one of the LoRAs merged; write the merge to a new file".into(),
                ));
            }
        }
    }
    let be = CpuBackend::new();
    let sets: Vec<LoraSet> = args
        .loras
        .iter()
        .map(|(p, _)| {
            let set = kohya::load(p, &be, DType::F64)?;
            set.require_lora(p, "merging LoRAs into one stacks or factors up·down")?;
            Ok(set)
        })
        .collect::<Result<_>>()?;
    let family = one_family(args.loras)?;
    // Every module must adapt a layer of the same size in every LoRA that has it.
    let mut seen: BTreeMap<&str, (usize, (LayerKind, usize, usize))> = BTreeMap::new();
    for (i, set) in sets.iter().enumerate() {
        for m in set.modules() {
            let layer = layer_of(m);
            let (j, first) = *seen.entry(m.name.as_str()).or_insert((i, layer));
            if first != layer {
                return Err(bad(
                    &args.loras[i].0,
                    format!(
                        "module `{}` adapts a {:?} layer of {} outputs and {} inputs here but \
                         a {:?} layer of {} and {} in {}: the LoRAs are for different models",
                        m.name,
                        layer.0,
                        layer.1,
                        layer.2,
                        first.0,
                        first.1,
                        first.2,
                        args.loras[j].0.display()
                    ),
                ));
            }
        }
    }
    let weighted: Vec<(&LoraSet, f64)> = sets
        .iter()
        .zip(args.loras)
        .map(|(s, (_, r))| (s, *r))
        .collect();
    let stacked = LoraSet::combine(&be, &weighted)?;
    let merged = match args.new_rank {
        None => stacked,
        Some(rank) => {
            let modules: Vec<LoraModule> = stacked
                .modules()
                .par_iter()
                .map(|m| {
                    let asked = match m.kind {
                        LayerKind::Conv { .. } => args.new_conv_rank.unwrap_or(rank),
                        _ => rank,
                    };
                    let (up, down) = factors(m);
                    let svd = svd_of_product(&up, &down);
                    // As svd_merge_lora.py: at most out and in channels; and what the sum has.
                    let channels = down.cols / m.kind.taps();
                    let k = asked.min(channels).min(svd.s.len()).max(1);
                    module_from_svd(
                        &m.name,
                        m.kind,
                        &svd.truncate(k),
                        k as f64,
                        args.clamp_quantile,
                    )
                })
                .collect::<Result<_>>()?;
            LoraSet::new(modules)
        }
    };

    let first_meta = |key: &str| -> Result<Option<String>> {
        for (p, _) in args.loras {
            if let Some(v) = SafetensorsFile::open(p)?.metadata().get(key) {
                return Ok(Some(v.clone()));
            }
        }
        Ok(None)
    };
    let common = |values: BTreeSet<String>| -> String {
        if values.len() == 1 {
            values.into_iter().next().unwrap_or_default()
        } else {
            "Dynamic".into()
        }
    };
    let mut meta = BTreeMap::new();
    meta.insert("ss_network_module".to_string(), "networks.lora".to_string());
    match args.new_rank {
        None => {
            let m = merged.modules();
            meta.insert(
                "ss_network_dim".into(),
                common(m.iter().map(|m| m.rank().to_string()).collect()),
            );
            meta.insert(
                "ss_network_alpha".into(),
                common(m.iter().map(|m| py_float(m.alpha)).collect()),
            );
        }
        Some(rank) => {
            meta.insert("ss_network_dim".into(), rank.to_string());
            meta.insert("ss_network_alpha".into(), rank.to_string());
            if let Some(c) = args.new_conv_rank {
                let mut net = serde_json::Map::new();
                net.insert("conv_dim".into(), c.into());
                net.insert("conv_alpha".into(), c.into());
                meta.insert(
                    "ss_network_args".into(),
                    serde_json::Value::Object(net).to_string(),
                );
            }
        }
    }
    for key in ["ss_v2", "ss_base_model_version", "modelspec.architecture"] {
        if let Some(v) = first_meta(key)? {
            meta.insert(key.into(), v);
        }
    }
    if family.is_some_and(|f| f.fits == ["sdxl"]) && !meta.contains_key("ss_base_model_version") {
        meta.insert("ss_v2".into(), "False".into());
        meta.insert("ss_base_model_version".into(), SDXL_BASE_VERSION.into());
    }
    save_kohya(
        args.output,
        &merged,
        args.precision.unwrap_or(SavePrecision::Fp32),
        &meta,
    )?;
    Ok(LoraMergeReport {
        output: args.output.to_path_buf(),
        modules_per_lora: sets.iter().map(LoraSet::len).collect(),
        modules: merged.len(),
        ranks: merged.modules().iter().map(LoraModule::rank).collect(),
    })
}

/// The model family the LoRAs share (the most specific one named; None when no file says),
/// or a refusal naming two files of different families.
fn one_family(loras: &[(PathBuf, f64)]) -> Result<Option<LoraFamily>> {
    let mut found: Option<(&Path, LoraFamily)> = None;
    for (p, _) in loras {
        let file = SafetensorsFile::open(p)?;
        let Some(f) = lora_family(file.metadata(), file.names()) else {
            continue;
        };
        match &found {
            Some((q, g)) if !g.fits.iter().any(|id| f.fits.contains(id)) => {
                return Err(Error::Lora {
                    path: p.clone(),
                    detail: format!(
                        "this is a LoRA for {} ({}), but {} is a LoRA for {} ({}): merge LoRAs \
                         made for one model family; nothing was written",
                        f.name,
                        f.evidence,
                        q.display(),
                        g.name,
                        g.evidence
                    ),
                })
            }
            Some((_, g)) if g.fits.len() <= f.fits.len() => {}
            _ => found = Some((p, f)),
        }
    }
    Ok(found.map(|(_, f)| f))
}
