//! The LoRA tools' commands, `resize`, `extract` and `merge` of LoRAs into a LoRA: parse what
//! the library does not see, call it, print its report.

use std::path::{Path, PathBuf};

use lorafuse::lora::export::SavePrecision;
use lorafuse::lora::extract::{extract, ExtractArgs};
use lorafuse::lora::merge_loras::{merge_loras, LoraMergeArgs};
use lorafuse::lora::rank::DynamicMethod;
use lorafuse::lora::resize::{resize, ResizeArgs};

use super::{CliError, Out, Outcome};

/// `--save-precision`: kohya's names.
pub fn parse_precision(flag: &str, p: Option<&str>) -> Result<Option<SavePrecision>, CliError> {
    p.map(|p| {
        p.parse::<SavePrecision>()
            .map_err(|e| CliError::Usage(format!("{flag} {p}: {e}")))
    })
    .transpose()
}

/// The arguments of `lorafuse resize` as typed.
pub struct ResizeCmd<'a> {
    pub input: &'a Path,
    pub output: &'a Path,
    pub new_rank: usize,
    pub new_conv_rank: Option<usize>,
    pub dynamic_method: Option<&'a str>,
    pub dynamic_param: Option<f64>,
    pub save_precision: Option<&'a str>,
    pub verbose: bool,
}

pub fn resize_cmd(c: &ResizeCmd) -> Outcome {
    let dynamic = match (c.dynamic_method, c.dynamic_param) {
        (None, None) => None,
        (Some(m), Some(x)) => Some((
            m.parse::<DynamicMethod>()
                .map_err(|e| CliError::Usage(format!("--dynamic-method {m}: {e}")))?,
            x,
        )),
        (Some(m), None) => {
            return Err(CliError::Usage(format!(
                "--dynamic-method {m} needs --dynamic-param (e.g. 0.9 for sv_fro)"
            )))
        }
        (None, Some(x)) => {
            return Err(CliError::Usage(format!(
                "--dynamic-param {x} without --dynamic-method ({})",
                DynamicMethod::NAMES.join(", ")
            )))
        }
    };
    let precision = parse_precision("--save-precision", c.save_precision)?;
    let report = resize(&ResizeArgs {
        input: c.input,
        output: c.output,
        rank: c.new_rank,
        conv_rank: c.new_conv_rank,
        dynamic,
        precision,
    })?;
    if c.verbose {
        eprint!("{}", report.verbose(dynamic.is_some()));
    }
    if !report.dropped.is_empty() {
        eprintln!(
            "note: {} tensors that are no LoRA module's down/up/alpha were not carried over: {}",
            report.dropped.len(),
            report.dropped.join(", ")
        );
    }
    Out::new().line(report)
}

/// The arguments of `lorafuse extract` as typed.
pub struct ExtractCmd<'a> {
    pub original: &'a Path,
    pub tuned: &'a Path,
    pub output: &'a Path,
    pub dim: usize,
    pub conv_dim: Option<usize>,
    pub clamp_quantile: f64,
    pub no_clamp: bool,
    pub min_diff: f64,
    pub save_precision: Option<&'a str>,
    pub v_parameterization: bool,
}

pub fn extract_cmd(c: &ExtractCmd) -> Outcome {
    let precision = parse_precision("--save-precision", c.save_precision)?;
    let progress = |done: usize, total: usize| {
        eprint!("\rextracting module {done}/{total}");
        if done == total {
            eprintln!();
        }
    };
    let report = extract(
        &ExtractArgs {
            original: c.original,
            tuned: c.tuned,
            output: c.output,
            dim: c.dim,
            conv_dim: c.conv_dim,
            clamp_quantile: (!c.no_clamp).then_some(c.clamp_quantile),
            min_diff: c.min_diff,
            precision,
            v_parameterization: c.v_parameterization,
            hints: Default::default(),
        },
        &progress,
    )?;
    if report.text_encoder_skipped {
        eprintln!(
            "note: the text encoder is the same (largest difference {:.3e} ≤ --min-diff {}): \
             UNet modules only",
            report.text_encoder_max_diff, c.min_diff
        );
    } else {
        eprintln!(
            "text encoder differs (largest difference {:.3e} > --min-diff {})",
            report.text_encoder_max_diff, c.min_diff
        );
    }
    Out::new().line(report)
}

/// The `--lora FILE[:RATIO]` arguments with `--ratios` (one per file, in order, when given;
/// then no file may carry its own ratio).
pub fn lora_ratios(loras: &[String], ratios: &[f64]) -> Result<Vec<(PathBuf, f64)>, CliError> {
    let pairs = loras
        .iter()
        .map(|a| super::path_and_weight(a))
        .collect::<Result<Vec<_>, _>>()?;
    if ratios.is_empty() {
        return Ok(pairs);
    }
    if ratios.len() != loras.len() {
        return Err(CliError::Usage(format!(
            "--ratios has {} values for {} --lora files: give one ratio per LoRA, in order",
            ratios.len(),
            loras.len()
        )));
    }
    if let Some(a) = loras
        .iter()
        .zip(&pairs)
        .find(|(a, (p, _))| p.as_os_str() != a.as_str())
        .map(|(a, _)| a)
    {
        return Err(CliError::Usage(format!(
            "--lora {a} has a ratio of its own and --ratios gives them all: use one or the other"
        )));
    }
    if let Some(r) = ratios.iter().find(|r| !r.is_finite()) {
        return Err(CliError::Usage(format!(
            "--ratios {r}: give finite numbers"
        )));
    }
    Ok(pairs
        .into_iter()
        .zip(ratios)
        .map(|((p, _), r)| (p, *r))
        .collect())
}

/// The arguments of `lorafuse merge` without `--model`.
pub struct MergeLorasCmd<'a> {
    pub loras: &'a [(PathBuf, f64)],
    pub out: &'a Path,
    pub precision: Option<&'a str>,
    pub new_rank: Option<usize>,
    pub new_conv_rank: Option<usize>,
    pub clamp_quantile: Option<f64>,
}

pub fn merge_loras_cmd(c: &MergeLorasCmd) -> Outcome {
    if c.new_rank.is_none() && c.new_conv_rank.is_some() {
        return Err(CliError::Usage(
            "--new-conv-rank needs --new-rank (without it the ranks are stacked)".into(),
        ));
    }
    let report = merge_loras(&LoraMergeArgs {
        loras: c.loras,
        output: c.out,
        new_rank: c.new_rank,
        new_conv_rank: c.new_conv_rank,
        clamp_quantile: c.clamp_quantile,
        precision: parse_precision("--precision", c.precision)?,
    })?;
    Out::new().line(report)
}
