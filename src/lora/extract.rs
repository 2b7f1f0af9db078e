//! `lorafuse extract`: a LoRA from the difference of two checkpoints of one family (SD1.x,
//! SD2.x or SDXL; a fine-tune and its base), as sd-scripts' extract_lora_from_models.py does.
//! Two checkpoints of different families are refused, naming both.
//!
//! Modules: the layers kohya's LoRA network targets (the UNet's Transformer2D linears and
//! 1x1 convs; each text encoder's q/k/v/out_proj and fc1/fc2), and with a conv rank also the
//! layers of its ResNet, Down- and Upsample blocks (3x3 convs at the conv rank; time_emb_proj
//! and conv_shortcut at the linear rank), selected from the weight names ([`targets`]; a test
//! checks them against the model's own target lists), named as the trainer names them: SD1.x
//! and SD2.x by diffusers paths and `lora_te_`, SDXL's UNet by SGM paths
//! (`lora_unet_input_blocks_…`) and its encoders `lora_te1_` / `lora_te2_`. A single file's
//! fused OpenCLIP `in_proj` (SD2.x's encoder, SDXL's second) gives its q, k and v modules from
//! its thirds. The text encoders are skipped, with a note, when no weight of them differs by
//! more than `min_diff` (the largest |difference|, over both of SDXL's, as sd-scripts does).
//!
//! Per module, in f64: D = tuned − original ([out, in·k²] for a conv), its top `rank` = min(the
//! rank asked, out, in) singular triplets ([`crate::linalg::truncated_svd`]: randomized,
//! within the error documented there, exact below the oversampling), up = U·S, down = Vᵀ,
//! both clamped to ±(the `clamp_quantile` quantile of all their entries) unless disabled, and
//! alpha = rank (scale 1). Metadata: kohya's minimum (`ss_network_dim` = the rank asked,
//! `ss_network_alpha` as a float, `ss_network_args` with conv_dim/conv_alpha, `ss_v2`,
//! `ss_base_model_version`, `ss_network_module`) and the SAI model spec, the family's as the
//! trainer writes them. Modules run in parallel; every checkpoint is memory-mapped, so memory
//! is a few weights per thread.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::linalg::{truncated_svd, Mat, Randomized};
use crate::lora::export::{py_float, save_kohya, training_metadata, SavePrecision, TrainingInfo};
use crate::lora::factors::module_from_svd;
use crate::lora::{LayerKind, LoraModule, LoraSet};
use crate::model::checkpoint::sdxl::load_sdxl_with;
use crate::model::checkpoint::{load_sd15_with, ConfigHints, Generation, Weights};
use crate::model::config::UnetConfig;
use crate::model::family::{family_of, ModelFamily, Prediction};
use crate::model::layers::{kohya_name_as, TE_LORA};
use crate::model::sdxl_text::{TE1_LORA, TE2_LORA};
use crate::model::unet::lora_module_name;

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
    /// Metadata for a v-prediction model (kohya's `--v_parameterization`) where the
    /// checkpoint does not say it (a single file never does).
    pub v_parameterization: bool,
    /// What single files' shapes cannot tell (none for the real models).
    pub hints: ConfigHints,
}

/// One layer to extract: its weight's name in both checkpoints and its kohya module name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub key: String,
    pub module: String,
    /// The index of its text encoder in [`Parts::text`]; None for the UNet's.
    pub text_encoder: Option<usize>,
}

/// A checkpoint as extract reads it: its family and its networks' weights under diffusers
/// names (memory-mapped).
pub struct Parts {
    pub family: &'static dyn ModelFamily,
    /// What it predicts where it says (a diffusers folder's scheduler config).
    pub prediction: Option<Prediction>,
    pub unet: (UnetConfig, Weights),
    /// Each text encoder's weights and kohya's prefix of its modules: `lora_te` (SD1.x,
    /// SD2.x), `lora_te1` and `lora_te2` (SDXL).
    pub text: Vec<(Weights, &'static str)>,
}

impl Parts {
    /// The checkpoint (single file or diffusers folder) at `path`, of the family detected;
    /// `hints`: what a single file's shapes cannot tell (the real models' values when None).
    pub fn load(path: &Path, hints: &ConfigHints) -> Result<Parts> {
        Parts::load_as(path, family_of(path)?, hints)
    }

    fn load_as(
        path: &Path,
        family: &'static dyn ModelFamily,
        hints: &ConfigHints,
    ) -> Result<Parts> {
        if family.generation() == Generation::Sdxl {
            let ck = load_sdxl_with(path, hints)?;
            return Ok(Parts {
                family,
                prediction: ck.prediction,
                unet: ck.unet,
                text: vec![
                    (ck.text_encoder.1, TE1_LORA),
                    (ck.text_encoder_2.1, TE2_LORA),
                ],
            });
        }
        let ck = load_sd15_with(path, hints)?;
        Ok(Parts {
            family,
            prediction: ck.prediction,
            unet: ck.unet,
            text: vec![(ck.text_encoder.1, TE_LORA)],
        })
    }
}

/// What `extract` did.
#[derive(Clone, Debug)]
pub struct ExtractReport {
    pub output: PathBuf,
    pub unet_modules: usize,
    pub text_encoder_modules: usize,
    /// The largest |difference| of the text encoders' targeted weights.
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

/// The layers kohya's LoRA network adapts in the UNet and the text encoders of `model`
/// (weights named as [`Weights`] names them), with `conv` the ResNet/sampler blocks too; sorted
/// by module name.
pub fn targets(model: &Parts, conv: bool) -> Vec<Target> {
    let weight_of = |k: &str, w: &Weights| {
        k.strip_suffix(".weight")
            .filter(|_| w.shape(k).is_some_and(|s| s.len() >= 2))
            .map(str::to_string)
    };
    let (config, unet) = &model.unet;
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
                module: lora_module_name(config, "unet", &path),
                text_encoder: None,
            });
        }
    }
    for (i, (text, lora_prefix)) in model.text.iter().enumerate() {
        for key in text.keys() {
            let Some(path) = weight_of(key, text) else {
                continue;
            };
            if key.contains(".encoder.layers.") {
                out.push(Target {
                    key: key.to_string(),
                    module: kohya_name_as(&path, lora_prefix),
                    text_encoder: Some(i),
                });
            }
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
    let families = (family_of(args.original)?, family_of(args.tuned)?);
    if families.0.id() != families.1.id() {
        return Err(Error::Lora {
            path: args.tuned.to_path_buf(),
            detail: format!(
                "the tuned model is a {} model but the original {} is a {} model: extract \
                 takes two checkpoints of one family (a fine-tune and the base it was tuned \
                 from); nothing was written",
                families.1.display_name(),
                args.original.display(),
                families.0.display_name()
            ),
        });
    }
    let orig = Parts::load_as(args.original, families.0, &args.hints)?;
    let tuned = Parts::load_as(args.tuned, families.1, &args.hints)?;
    let paths = (args.original, args.tuned);
    if args.v_parameterization && orig.prediction == Some(Prediction::Epsilon) {
        return Err(bad(format!(
            "--v-parameterization: {} says it predicts epsilon (scheduler/scheduler_config.json); \
             leave the flag out",
            args.original.display()
        )));
    }
    let mut list = targets(&orig, args.conv_dim.is_some());
    let pair = |t: &Target| match t.text_encoder {
        Some(i) => (&orig.text[i].0, &tuned.text[i].0),
        None => (&orig.unet.1, &tuned.unet.1),
    };

    // The text encoders first: is any of them different at all?
    let te_max = list
        .par_iter()
        .filter(|t| t.text_encoder.is_some())
        .map(|t| {
            let (d, _) = difference(t, pair(t), paths)?;
            Ok::<f64, Error>(d.data.iter().fold(0.0f64, |m, x| m.max(x.abs())))
        })
        .try_reduce(|| 0.0, |a, b| Ok(a.max(b)))?;
    let te_skipped = te_max <= args.min_diff;
    if te_skipped {
        list.retain(|t| t.text_encoder.is_none());
    }

    let total = list.len();
    let done = Mutex::new(0usize);
    let how = Randomized::default();
    let modules: Vec<LoraModule> = list
        .par_iter()
        .map(|t| {
            let (d, kind) = difference(t, pair(t), paths)?;
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
    let te_modules = list.iter().filter(|t| t.text_encoder.is_some()).count();
    let set = LoraSet::new(modules);

    let mut meta = BTreeMap::new();
    let mut net_args = serde_json::Map::new();
    if let Some(c) = args.conv_dim {
        net_args.insert("conv_dim".into(), c.to_string().into());
        net_args.insert("conv_alpha".into(), py_float(c as f64).into());
    }
    meta.insert("ss_network_module".into(), "networks.lora".into());
    meta.insert("ss_network_dim".into(), args.dim.to_string());
    meta.insert("ss_network_alpha".into(), py_float(args.dim as f64));
    meta.insert(
        "ss_network_args".into(),
        serde_json::Value::Object(net_args).to_string(),
    );
    let v = args.v_parameterization || orig.prediction == Some(Prediction::V);
    meta.extend(family_metadata(args.output, orig.family, v));
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

/// The family's keys of an extracted LoRA, as sd-scripts' extract_lora_from_models.py writes
/// them (`ss_v2`, `ss_base_model_version`, and its `build_metadata` for a LoRA): the training
/// writer's, with the file's name as the title, the family's resolution (SD2.x's v model:
/// 768) and no `encoder_layer` (the clip skip the model was tuned with is not known).
fn family_metadata(
    output: &Path,
    family: &dyn ModelFamily,
    v_parameterization: bool,
) -> impl Iterator<Item = (String, String)> {
    let title = output
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let (v2, sdxl) = match family.generation() {
        Generation::Sd1 => (false, false),
        Generation::Sd2 => (true, false),
        Generation::Sdxl => (false, true),
    };
    let side = if v2 && v_parameterization {
        768
    } else {
        family.default_resolution() as u32
    };
    let info = TrainingInfo {
        output_name: title,
        training_finished_at: crate::monitor::tensorboard::wall_time_now(),
        resolution: (side, side),
        v2,
        sdxl,
        v_parameterization,
        ..TrainingInfo::default()
    };
    training_metadata(&info).into_iter().filter(|(k, _)| {
        (k.starts_with("modelspec.") && k != "modelspec.encoder_layer")
            || k == "ss_v2"
            || k == "ss_base_model_version"
    })
}
