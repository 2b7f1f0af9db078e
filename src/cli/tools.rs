//! The LoRA tools' commands, `resize` and `extract`: parse what the library does not see, call
//! it, print its report.

use std::path::Path;

use lorafuse::lora::export::SavePrecision;
use lorafuse::lora::extract::{extract, ExtractArgs};
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
