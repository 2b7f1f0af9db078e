//! `lorafuse extract`: a LoRA from the difference of two SD1.x checkpoints (a fine-tune and
//! its base), as sd-scripts' extract_lora_from_models.py does.
//!
//! Modules: the layers kohya's LoRA network targets (the UNet's Transformer2D linears and
//! 1x1 convs; the text encoder's q/k/v/out_proj and fc1/fc2), and with a conv rank also the
//! layers of its ResNet, Down- and Upsample blocks (3x3 convs at the conv rank; time_emb_proj
//! and conv_shortcut at the linear rank), selected from the weight names ([`targets`]; a test
//! checks them against the model's own target lists). The text encoder is skipped, with a
//! note, when no weight of it differs by more than `min_diff` (the largest |difference|).
//!
//! Per module, in f64: D = tuned − original ([out, in·k²] for a conv), its top `rank` = min(the
//! rank asked, out, in) singular triplets ([`crate::linalg::truncated_svd`]: randomized,
//! within the error documented there, exact below the oversampling), up = U·S, down = Vᵀ,
//! both clamped to ±(the `clamp_quantile` quantile of all their entries) unless disabled, and
//! alpha = rank (scale 1). Metadata: kohya's minimum (`ss_network_dim` = the rank asked,
//! `ss_network_alpha` as a float, `ss_network_args` with conv_dim/conv_alpha, `ss_v2`,
//! `ss_base_model_version`, `ss_network_module`). Modules run in parallel; every checkpoint
//! is memory-mapped, so memory is a few weights per thread.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::linalg::{truncated_svd, Mat, Randomized};
use crate::lora::export::{py_float, save_kohya, training_metadata, SavePrecision, TrainingInfo};
use crate::lora::factors::module_from_svd;
use crate::lora::{LayerKind, LoraModule, LoraSet};
use crate::model::checkpoint::{load_sd15, Weights};
use crate::model::layers::kohya_name;

/// What `extract` is asked to do.
#[derive(Clone, Debug)]
pub struct ExtractArgs<'a> {
    pub original: &'a Path,
    pub tuned: &'a Path,
    pub output: &'a Path,
    /// Rank of the linear and 1x1 modules.
    pub dim: usize,
    /// Rank of the 3x3 convs; None: no ResNet/sampler modules (kohya's default).
    pub conv_dim: Option<usize>,
    /// None: no clamping.
    pub clamp_quantile: Option<f64>,
    pub min_diff: f64,
    pub precision: Option<SavePrecision>,
}

/// One layer to extract: its weight's name in both checkpoints and its kohya module name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub key: String,
    pub module: String,
    pub text_encoder: bool,
}

/// What `extract` did.
#[derive(Clone, Debug)]
pub struct ExtractReport {
    pub output: PathBuf,
    pub unet_modules: usize,
    pub text_encoder_modules: usize,
    /// The largest |difference| of the text encoder's targeted weights.
    pub text_encoder_max_diff: f64,
    pub text_encoder_skipped: bool,
}

impl std::fmt::Display for ExtractReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "extracted {} modules (UNet {}, text encoder {}) to {}",
            self.unet_modules + self.text_encoder_modules,
            self.unet_modules,
            self.text_encoder_modules,
            self.output.display()
        )
    }
}

/// Which block holds a UNet weight, from its name.
fn in_block(key: &str, blocks: &[&str]) -> bool {
    blocks.iter().any(|b| key.contains(b))
}

/// The layers kohya's LoRA network adapts in an SD1.x UNet and text encoder (weights named as
/// [`Weights`] names them), with `conv` the ResNet/sampler blocks too; sorted by module name.
pub fn targets(unet: &Weights, text: &Weights, conv: bool) -> Vec<Target> {
    let weight_of = |k: &str, w: &Weights| {
        k.strip_suffix(".weight")
            .filter(|_| w.shape(k).is_some_and(|s| s.len() >= 2))
            .map(str::to_string)
    };
    let mut out = Vec::new();
    for key in unet.keys() {
        let Some(path) = weight_of(key, unet) else {
            continue;
        };
        let picked = in_block(key, &[".attentions."])
            || (conv && in_block(key, &[".resnets.", ".downsamplers.", ".upsamplers."]));
        if picked {
            out.push(Target {
                key: key.to_string(),
                module: kohya_name(&path),
                text_encoder: false,
            });
        }
    }
    for key in text.keys() {
        let Some(path) = weight_of(key, text) else {
            continue;
        };
        if key.contains(".encoder.layers.") {
            out.push(Target {
                key: key.to_string(),
                module: kohya_name(&path),
                text_encoder: true,
            });
        }
    }
    out.sort_by(|a, b| a.module.cmp(&b.module));
    out
}

/// tuned − original of one weight, [out, in·k²] in f64, and its layer kind.
fn difference(
    t: &Target,
    (orig, tuned): (&Weights, &Weights),
    paths: (&Path, &Path),
) -> Result<(Mat, LayerKind)> {
    let shape = orig
        .shape(&t.key)
        .map(<[usize]>::to_vec)
        .unwrap_or_default();
    let other = tuned.shape(&t.key).map(<[usize]>::to_vec);
    if other.as_deref() != Some(shape.as_slice()) {
        return Err(Error::Lora {
            path: paths.1.to_path_buf(),
            detail: format!(
                "`{}` is {shape:?} in the original {} but {} in the tuned model: the two \
                 checkpoints are not the same model (another size or family); nothing was \
                 written",
                t.key,
                paths.0.display(),
                other.map_or("missing".to_string(), |s| format!("{s:?}"))
            ),
        });
    }
    let kind = LayerKind::of_kohya_down(&shape).ok_or_else(|| Error::Lora {
        path: paths.0.to_path_buf(),
        detail: format!(
            "`{}` has shape {shape:?}, not a linear or conv weight",
            t.key
        ),
    })?;
    let a = orig.get(&t.key, shape.clone())?.to_f64_vec();
    let b = tuned.get(&t.key, shape.clone())?.to_f64_vec();
    let rows = shape[0];
    let cols = a.len() / rows.max(1);
    let d: Vec<f64> = b.iter().zip(&a).map(|(x, y)| x - y).collect();
    Ok((Mat::from_vec(rows, cols, d), kind))
}

/// Extracts the LoRA and writes `args.output` (atomically); `progress(done, total)` after each
/// module.
pub fn extract(
    args: &ExtractArgs,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<ExtractReport> {
    let bad = |detail: String| Error::Lora {
        path: args.output.to_path_buf(),
        detail: format!("{detail}; nothing was written"),
    };
    if args.dim == 0 || args.conv_dim == Some(0) {
        return Err(bad("the rank must be at least 1 (--dim, --conv-dim)".into()));
    }
    if let Some(q) = args.clamp_quantile {
        if !(q > 0.0 && q <= 1.0) {
            return Err(bad(format!(
                "--clamp-quantile {q}: give a quantile in (0, 1]"
            )));
        }
    }
    if args.min_diff.is_nan() || args.min_diff < 0.0 {
        return Err(bad(format!(
            "--min-diff {}: give a difference ≥ 0",
            args.min_diff
        )));
    }
    let orig = load_sd15(args.original)?;
    let tuned = load_sd15(args.tuned)?;
    let paths = (args.original, args.tuned);
    let mut list = targets(&orig.unet.1, &orig.text_encoder.1, args.conv_dim.is_some());

    // The text encoder first: is it different at all?
    let te_pair = (&orig.text_encoder.1, &tuned.text_encoder.1);
    let te_max = list
        .par_iter()
        .filter(|t| t.text_encoder)
        .map(|t| {
            let (d, _) = difference(t, te_pair, paths)?;
            Ok::<f64, Error>(d.data.iter().fold(0.0f64, |m, x| m.max(x.abs())))
        })
        .try_reduce(|| 0.0, |a, b| Ok(a.max(b)))?;
    let te_skipped = te_max <= args.min_diff;
    if te_skipped {
        list.retain(|t| !t.text_encoder);
    }

    let total = list.len();
    let done = Mutex::new(0usize);
    let how = Randomized::default();
    let modules: Vec<LoraModule> = list
        .par_iter()
        .map(|t| {
            let pair = if t.text_encoder {
                te_pair
            } else {
                (&orig.unet.1, &tuned.unet.1)
            };
            let (d, kind) = difference(t, pair, paths)?;
            let asked = match kind {
                LayerKind::Conv { .. } => args.conv_dim.unwrap_or(args.dim),
                _ => args.dim,
            };
            // As kohya: at most the layer's out and in channels (not in·k²).
            let rank = asked.min(d.rows).min(d.cols / kind.taps());
            let svd = truncated_svd(&d, rank, &how);
            let m = module_from_svd(&t.module, kind, &svd, rank as f64, args.clamp_quantile)?;
            // Counted and reported under the lock, so reports arrive in order.
            let mut n = done.lock().unwrap_or_else(|e| e.into_inner());
            *n += 1;
            progress(*n, total);
            Ok(m)
        })
        .collect::<Result<_>>()?;
    let te_modules = list.iter().filter(|t| t.text_encoder).count();
    let set = LoraSet::new(modules);

    let mut meta = BTreeMap::new();
    let mut net_args = serde_json::Map::new();
    if let Some(c) = args.conv_dim {
        net_args.insert("conv_dim".into(), c.to_string().into());
        net_args.insert("conv_alpha".into(), py_float(c as f64).into());
    }
    meta.insert("ss_v2".to_string(), "False".to_string());
    meta.insert("ss_base_model_version".into(), "sd_v1".into());
    meta.insert("ss_network_module".into(), "networks.lora".into());
    meta.insert("ss_network_dim".into(), args.dim.to_string());
    meta.insert("ss_network_alpha".into(), py_float(args.dim as f64));
    meta.insert(
        "ss_network_args".into(),
        serde_json::Value::Object(net_args).to_string(),
    );
    meta.extend(modelspec(args.output));
    save_kohya(
        args.output,
        &set,
        args.precision.unwrap_or(SavePrecision::Fp32),
        &meta,
    )?;
    Ok(ExtractReport {
        output: args.output.to_path_buf(),
        unet_modules: total - te_modules,
        text_encoder_modules: te_modules,
        text_encoder_max_diff: te_max,
        text_encoder_skipped: te_skipped,
    })
}

/// The SAI model spec of an extracted LoRA, as sd-scripts' extract_lora_from_models.py writes
/// it (its `build_metadata` for a LoRA): the training writer's `modelspec.*` keys with the
/// file's name as the title, SD1's 512x512, and no `encoder_layer` (the clip skip the model
/// was tuned with is not known).
fn modelspec(output: &Path) -> impl Iterator<Item = (String, String)> {
    let title = output
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let info = TrainingInfo {
        output_name: title,
        training_finished_at: crate::monitor::tensorboard::wall_time_now(),
        resolution: (512, 512),
        ..TrainingInfo::default()
    };
    training_metadata(&info)
        .into_iter()
        .filter(|(k, _)| k.starts_with("modelspec.") && k != "modelspec.encoder_layer")
}
