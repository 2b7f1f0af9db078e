//! `lorafuse plan`: the memory plan of a training config, and what fits a GPU.

use std::path::Path;

use lorafuse::backend::cuda::DeviceLimits;
use lorafuse::config::TrainConfig;
use lorafuse::plan::fit::fit;
use lorafuse::plan::report::{gib, table};
use lorafuse::plan::{plan, PlanInput};

use super::{CliError, Out, Outcome};

/// GPU memory sizes the table shows when no size is given and no GPU is found.
const SIZES_GIB: [usize; 7] = [4, 6, 8, 12, 16, 24, 80];

pub fn plan_cmd(
    config: &Path,
    gpu: Option<&str>,
    gpu_memory: Option<&str>,
    set: &[String],
    family: Option<&str>,
) -> Outcome {
    let card = gpu.map(card).transpose()?;
    let cfg = TrainConfig::load(config, set)?;
    // --family, else the family the kohya config names, else SD1.5.
    let family = family.or(cfg.provenance.named_family()).unwrap_or("sd1");
    let reference = lorafuse::model::family::family_by_id(family)
        .ok_or_else(|| CliError::Usage(format!("--family {family}: expected sd1, sd2 or sdxl")))?;
    // The planned family's defaults (SDXL: 1024) before the images are bucketed.
    let cfg = match cfg.base_model.exists() {
        true => lorafuse::train::fits::with_base_model_defaults(&cfg),
        false => lorafuse::train::fits::with_model_defaults(&cfg, reference),
    };
    let input = match lorafuse::train::trainer::scan_data(&cfg) {
        Ok(ds) => PlanInput::with_dataset(&cfg, ds),
        Err(e) => {
            eprintln!(
                "note: the data folder could not be read ({}); planning one batch of {}x{} images",
                first_line(&e.to_string()),
                cfg.resolution.width,
                cfg.resolution.height
            );
            PlanInput::from_config(&cfg, None)
        }
    };
    if !cfg.base_model.exists() {
        eprintln!(
            "note: {} not found; planning with {}'s reference shapes",
            cfg.base_model.display(),
            reference.display_name()
        );
    }
    let input = PlanInput {
        family: reference.id(),
        ..input
    };
    let (input, card_memory) = match card {
        Some(Card::Profile(limits)) => {
            eprintln!("GPU: {limits}");
            let memory = limits.memory;
            (input.on(limits), Some(memory))
        }
        Some(Card::Memory(bytes)) => (input, Some(bytes)),
        None => (input, None),
    };
    let budget = match gpu_memory {
        Some(s) => Some(parse_size(s)?),
        None => card_memory.or_else(gpu_total),
    };
    let p = plan(&input)?;
    let f = match budget {
        Some(b) => Some(fit(&input, b)?),
        None => None,
    };
    let mut out = Out::new();
    out.text(&table(&p, f.as_ref()))?;
    if budget.is_none() {
        let fits: Vec<String> = SIZES_GIB
            .iter()
            .map(|g| {
                let ok = p.peak() <= g << 30;
                format!("{g} GiB {}", if ok { "yes" } else { "no" })
            })
            .collect();
        out.line(format_args!("fits: {}", fits.join(", ")))?;
        out.line(format_args!(
            "(add --gpu-memory SIZE for the largest batch_size and resolution that fit; {} needed here)",
            gib(p.peak())
        ))?;
    }
    Ok(())
}

/// What `--gpu` names.
enum Card {
    Profile(DeviceLimits),
    Memory(usize),
}

/// A card of the profile table, or a memory size.
fn card(s: &str) -> Result<Card, CliError> {
    if let Some(limits) = DeviceLimits::profile(s) {
        if let Some(why) = limits.unsupported() {
            return Err(CliError::Usage(format!(
                "--gpu {s:?}: {why}. --gpu-memory SIZE plans the memory alone"
            )));
        }
        return Ok(Card::Profile(limits));
    }
    parse_size(s).map(Card::Memory).map_err(|_| {
        CliError::Usage(format!(
            "--gpu {s:?}: not a card lorafuse knows ({}) nor a memory size such as 12GiB",
            DeviceLimits::profile_names()
        ))
    })
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

/// The total memory of GPU 0, when this build has CUDA and one opens.
fn gpu_total() -> Option<usize> {
    #[cfg(feature = "cuda")]
    if let Ok(dev) = lorafuse::backend::cuda::Device::gpu(0) {
        if let Some((_, total)) = dev.mem_info() {
            eprintln!("GPU: {}", dev.describe());
            return Some(total);
        }
    }
    None
}

/// "8GiB", "8GB", "8g", "8" (GiB), "6144MiB", "6144M" -> bytes.
pub fn parse_size(s: &str) -> Result<usize, CliError> {
    let t = s.trim();
    let lower = t.to_ascii_lowercase();
    let split = lower
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(lower.len());
    let (num, unit) = lower.split_at(split);
    let unit_bytes: f64 = match unit.trim() {
        "" | "g" | "gb" | "gib" => (1u64 << 30) as f64,
        "m" | "mb" | "mib" => (1u64 << 20) as f64,
        "t" | "tb" | "tib" => (1u64 << 40) as f64,
        _ => f64::NAN,
    };
    match num.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() && unit_bytes.is_finite() => {
            Ok((v * unit_bytes) as usize)
        }
        _ => Err(CliError::Usage(format!(
            "--gpu-memory {t:?}: expected a size such as 8GiB, 12GB, 6144MiB or 24 (GiB)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_parse_in_binary_units() {
        assert_eq!(parse_size("8GiB").ok(), Some(8 << 30));
        assert_eq!(parse_size("8GB").ok(), Some(8 << 30));
        assert_eq!(parse_size(" 24 ").ok(), Some(24 << 30));
        assert_eq!(parse_size("6144MiB").ok(), Some(6 << 30));
        assert_eq!(parse_size("1.5g").ok(), Some(3 << 29));
        for bad in ["", "GiB", "-1", "8 bytes", "0"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
    }
}
