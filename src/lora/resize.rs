//! `lorafuse resize`: a LoRA to a lower (or per-module, dynamic) rank, as sd-scripts'
//! resize_lora.py does. Per module, in f64: the exact SVD of up·down (the conv's down
//! flattened to [r, in·k²]; [`crate::linalg::svd_of_product`], never forming the product), the
//! new rank by the rule of [`crate::lora::rank`], up = U·S and down = Vᵀ of that rank, alpha =
//! old alpha/old rank · new rank so the scale and so the product's best approximation are kept.
//! A rank beyond what the product has (its min(out, old rank, in·k²)) would only add zero
//! singular values: it is capped there (resize_lora.py writes torch's noise-level vectors).
//!
//! Metadata as resize_lora.py updates it: `ss_training_comment` prefixed with what was done,
//! `ss_network_dim` / `ss_network_alpha` the new rank and (the last module's) alpha, or
//! "Dynamic" for a dynamic method; the hashes recomputed; `ss_network_args`' conv_dim and
//! conv_alpha made to match the conv modules (lorafuse's export does that for every file).
//! Tensors other than the modules' (none in files kohya or lorafuse write) are not carried over
//! (resize_lora.py copies them, unchanged, beside factors they no longer fit); the report
//! lists them.
//!
//! A DoRA module (lora/dora.rs) is resized the same way and keeps its `dora_scale`: the
//! magnitudes are a property of the adapted weight's rows, not of the factors, so the resized
//! file is DoRA with the best rank-r approximation of s·up·down inside the normalised
//! direction (resize_lora.py has no DoRA: it would drop `dora_scale`). A LoHa has no up·down
//! to take the SVD of and is refused, naming the module.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::linalg::{svd_of_product, Mat};
use crate::lora::export::{py_float, save_kohya, SavePrecision};
use crate::lora::factors::module_from_svd;
use crate::lora::rank::{choose_rank, DynamicMethod, RankChoice, RankRule};
use crate::lora::{kohya, LayerKind, LoraModule, LoraSet};
use crate::model::checkpoint::safetensors::SafetensorsFile;
use crate::tensor::DType;
use crate::CpuBackend;

/// What `resize` is asked to do.
#[derive(Clone, Debug)]
pub struct ResizeArgs<'a> {
    pub input: &'a Path,
    pub output: &'a Path,
    /// The new rank, or with a dynamic method the largest.
    pub rank: usize,
    /// The rank of the 3x3 conv modules (LoCon); None: `rank`.
    pub conv_rank: Option<usize>,
    pub dynamic: Option<(DynamicMethod, f64)>,
    /// None: fp32 (resize_lora.py's `float`).
    pub precision: Option<SavePrecision>,
}

/// One module's resize.
#[derive(Clone, Debug)]
pub struct ModuleResize {
    pub name: String,
    pub kind: LayerKind,
    pub old_rank: usize,
    pub old_alpha: f64,
    pub new_alpha: f64,
    pub choice: RankChoice,
}

/// What `resize` did: per module, and the file written.
#[derive(Clone, Debug)]
pub struct ResizeReport {
    pub output: PathBuf,
    pub modules: Vec<ModuleResize>,
    /// Tensors of the input that belong to no module: not carried over. (A LoHa module is
    /// refused before this, naming it; a DoRA module's `dora_scale` is carried.)
    pub dropped: Vec<String>,
}

impl ResizeReport {
    /// Mean and (population) standard deviation of the retained Frobenius shares.
    pub fn fro_mean_std(&self) -> (f64, f64) {
        let v: Vec<f64> = self
            .modules
            .iter()
            .map(|m| m.choice.fro_retained)
            .filter(|x| !x.is_nan())
            .collect();
        let n = v.len().max(1) as f64;
        let mean = v.iter().sum::<f64>() / n;
        let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
        (mean, var.sqrt())
    }

    /// resize_lora.py's `--verbose` table: per module the retained shares and max(S) ratio,
    /// and with a dynamic method the chosen rank and alpha.
    pub fn verbose(&self, dynamic: bool) -> String {
        let mut s = String::new();
        for m in &self.modules {
            s += &format!(
                "{:75} | sum(S) retained: {:.1}%, fro retained: {:.1}%, max(S) ratio: {:.1}",
                m.name,
                100.0 * m.choice.sum_retained,
                100.0 * m.choice.fro_retained,
                m.choice.max_ratio
            );
            if dynamic {
                s += &format!(
                    ", dynamic | dim: {}, alpha: {}",
                    m.choice.rank,
                    py_float(m.new_alpha)
                );
            }
            s.push('\n');
        }
        s
    }
}

impl fmt::Display for ResizeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (mean, std) = self.fro_mean_std();
        let ranks: std::collections::BTreeSet<usize> =
            self.modules.iter().map(|m| m.choice.rank).collect();
        let ranks: Vec<String> = ranks.iter().map(usize::to_string).collect();
        writeln!(
            f,
            "resized {} modules; new ranks: {}",
            self.modules.len(),
            ranks.join(", ")
        )?;
        writeln!(
            f,
            "Average Frobenius norm retention: {:.2}% | std: {std:.3}",
            100.0 * mean
        )?;
        write!(f, "wrote {}", self.output.display())
    }
}

/// The rows and columns of a module's weight: out, in·taps.
fn weight_dims(m: &LoraModule) -> (usize, usize) {
    let o = m.up.dims()[0];
    (o, m.down.numel() / m.rank())
}

/// `up` [o, r] and `down` [r, in·taps] of a module as matrices.
pub fn factors(m: &LoraModule) -> (Mat, Mat) {
    let (o, n) = weight_dims(m);
    let r = m.rank();
    (
        Mat::from_vec(o, r, m.up.to_f64_vec()),
        Mat::from_vec(r, n, m.down.to_f64_vec()),
    )
}

/// Resizes one module.
fn resize_module(m: &LoraModule, rule: &RankRule) -> Result<(LoraModule, ModuleResize)> {
    let (up, down) = factors(m);
    let svd = svd_of_product(&up, &down);
    let (o, n) = weight_dims(m);
    let mut s = svd.s.clone();
    s.resize(o.min(n), 0.0);
    let choice = choose_rank(&s, rule);
    let kept = choice.rank.min(svd.s.len()).max(1);
    let choice = RankChoice {
        rank: kept,
        ..choice
    };
    let new_alpha = m.scale() * kept as f64;
    let module = LoraModule {
        // DoRA: the magnitudes are kept; the direction's W + s·up·down gets the new factors.
        algo: m.algo.clone(),
        ..module_from_svd(&m.name, m.kind, &svd.truncate(kept), new_alpha, None)?
    };
    Ok((
        module,
        ModuleResize {
            name: m.name.clone(),
            kind: m.kind,
            old_rank: m.rank(),
            old_alpha: m.alpha,
            new_alpha,
            choice,
        },
    ))
}

/// Resizes the LoRA `args.input` and writes `args.output` (atomically).
pub fn resize(args: &ResizeArgs) -> Result<ResizeReport> {
    let bad = |detail: String| Error::Lora {
        path: args.input.to_path_buf(),
        detail: format!("{detail}; nothing was written"),
    };
    if args.rank == 0 || args.conv_rank == Some(0) {
        return Err(bad(
            "the new rank must be at least 1 (--new-rank, --new-conv-rank)".into(),
        ));
    }
    if let Some((method, param)) = args.dynamic {
        method
            .check_param(param)
            .map_err(|e| bad(format!("--dynamic-param {e}")))?;
    }
    if let (Ok(a), Ok(b)) = (args.input.canonicalize(), args.output.canonicalize()) {
        if a == b {
            return Err(bad(format!(
                "the output {} is the input itself; write the resized LoRA to a new file",
                args.output.display()
            )));
        }
    }
    let set = kohya::load(args.input, &CpuBackend::new(), DType::F64)?;
    set.require_up_down(
        args.input,
        "resize takes the SVD of up·down, which a LoHa does not have",
    )?;
    let file = SafetensorsFile::open(args.input)?;
    let metadata = file.metadata().clone();
    let mut dropped: Vec<String> = file
        .names()
        .filter(|k| kohya::module_of(k).is_none_or(|m| set.find(m).is_none()))
        .map(str::to_string)
        .collect();
    dropped.sort();
    let rule_of = |m: &LoraModule| RankRule {
        rank: match m.kind {
            LayerKind::Conv { .. } => args.conv_rank.unwrap_or(args.rank),
            _ => args.rank,
        },
        dynamic: args.dynamic,
    };
    let done: Vec<(LoraModule, ModuleResize)> = set
        .modules()
        .par_iter()
        .map(|m| resize_module(m, &rule_of(m)))
        .collect::<Result<_>>()?;
    let (modules, stats): (Vec<_>, Vec<_>) = done.into_iter().unzip();
    let out = LoraSet::new(modules);

    let old_dim = set
        .modules()
        .iter()
        .map(LoraModule::rank)
        .max()
        .unwrap_or(0);
    let mut meta: BTreeMap<String, String> = metadata.into_iter().collect();
    let comment = meta.get("ss_training_comment").cloned().unwrap_or_default();
    match args.dynamic {
        None => {
            let conv_rank = args.conv_rank.unwrap_or(args.rank);
            let conv_desc = if conv_rank == args.rank {
                String::new()
            } else {
                format!(" (conv: {conv_rank})")
            };
            meta.insert(
                "ss_training_comment".into(),
                format!(
                    "dimension is resized from {old_dim} to {}{conv_desc}; {comment}",
                    args.rank
                ),
            );
            meta.insert("ss_network_dim".into(), args.rank.to_string());
            let last_alpha = stats.last().map_or(0.0, |s: &ModuleResize| s.new_alpha);
            meta.insert("ss_network_alpha".into(), py_float(last_alpha));
        }
        Some((method, param)) => {
            meta.insert(
                "ss_training_comment".into(),
                format!(
                    "Dynamic resize with {method}: {} from {old_dim}; {comment}",
                    py_float(param)
                ),
            );
            meta.insert("ss_network_dim".into(), "Dynamic".into());
            meta.insert("ss_network_alpha".into(), "Dynamic".into());
        }
    }
    save_kohya(
        args.output,
        &out,
        args.precision.unwrap_or(SavePrecision::Fp32),
        &meta,
    )?;
    Ok(ResizeReport {
        output: args.output.to_path_buf(),
        modules: stats,
        dropped,
    })
}
