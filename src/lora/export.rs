//! Saving a [`LoraSet`] in kohya's format (sd15-formats.md §2.1–2.6), the file AUTOMATIC1111,
//! ComfyUI and diffusers load, and the header metadata kohya's `train_network.py` writes.
//!
//! Tensors, per module `<name>` (all in one dtype, [`SavePrecision`]):
//!   `<name>.lora_down.weight`  [r, in]   or [r, in, 1, 1] for a 1x1-conv layer (`LayerKind::Conv1x1`),
//!                              [r, in, 3, 3] for LoCon on a 3x3 conv (`LayerKind::Conv`)
//!   `<name>.lora_up.weight`    [out, r]  or [out, r, 1, 1]
//!   `<name>.alpha`             []  (0-d), the module's alpha, in the same dtype
//! Rounding to fp16/bf16 is to nearest, ties to even, as PyTorch's `.to(dtype)`.
//!
//! Metadata (`__metadata__`, every value a string): what the caller passes, usually
//! [`training_metadata`], plus `sshs_model_hash` and `sshs_legacy_hash` computed here exactly
//! as kohya's `train_util.precalculate_safetensors_hashes` does: serialise the tensors with
//! only the `ss_*` metadata, then take sd-webui-additional-networks' hashes of those bytes —
//! the SHA-256 of everything after the header (the tensor bytes, which do not depend on the
//! metadata, so the hash equals that of the file as written) and the legacy hash (64 KiB at
//! 1 MiB, 8 hex digits, which does depend on the header's length). A1111 takes
//! `sshs_model_hash` as the LoRA's hash instead of reading the file.
//!
//! The file is written atomically (`crate::atomic`): a temporary file in the same folder,
//! fsync'ed, renamed over the target. A crash or an error never leaves a partial file, and an
//! existing file is replaced only by a complete new one.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use half::{bf16, f16};
use safetensors::tensor::Dtype;

use crate::error::{Error, Result};
use crate::lora::hash::{self, Sha256, LEGACY_LEN, LEGACY_OFFSET};
use crate::lora::write::{self, Data, OutTensor};
use crate::lora::{dora, kohya, Algo, LayerKind, LoraModule, LoraSet, LoraTargets};
use crate::tensor::{CpuData, Storage, Tensor};

pub use crate::lora::hash::{model_hash_legacy, sha256_file};

/// The dtype a LoRA (or a merged checkpoint) is saved in: kohya's `--save_precision`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SavePrecision {
    /// IEEE half: what the GUIs default to, half the size of fp32.
    Fp16,
    /// Single precision: the weights exactly as trained.
    Fp32,
    /// bfloat16: fp32's range with 8 bits of mantissa.
    Bf16,
}

impl SavePrecision {
    /// Every precision, in the order messages list them.
    pub const ALL: [SavePrecision; 3] = [
        SavePrecision::Fp16,
        SavePrecision::Fp32,
        SavePrecision::Bf16,
    ];

    pub fn dtype(self) -> Dtype {
        match self {
            SavePrecision::Fp16 => Dtype::F16,
            SavePrecision::Fp32 => Dtype::F32,
            SavePrecision::Bf16 => Dtype::BF16,
        }
    }
}

impl fmt::Display for SavePrecision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SavePrecision::Fp16 => "fp16",
            SavePrecision::Fp32 => "fp32",
            SavePrecision::Bf16 => "bf16",
        })
    }
}

impl FromStr for SavePrecision {
    type Err = Error;
    /// kohya's names (`fp16`, `bf16`, `float`) and the usual aliases.
    fn from_str(s: &str) -> Result<SavePrecision> {
        match s.to_ascii_lowercase().as_str() {
            "fp16" | "f16" | "float16" | "half" => Ok(SavePrecision::Fp16),
            "fp32" | "f32" | "float32" | "float" => Ok(SavePrecision::Fp32),
            "bf16" | "bfloat16" => Ok(SavePrecision::Bf16),
            _ => Err(Error::BadValue {
                op: "save precision",
                name: "precision",
                value: s.to_string(),
                expected: "one of fp16, fp32 (or float), bf16".into(),
            }),
        }
    }
}

/// Largest finite fp16.
const F16_MAX: f64 = 65504.0;

/// Appends `x` in `dtype` (F16, BF16, F32 or F64), rounded to nearest even.
pub(crate) fn push_elem(out: &mut Vec<u8>, x: f64, dtype: Dtype) {
    match dtype {
        Dtype::F16 => out.extend_from_slice(&f16::from_f64(x).to_le_bytes()),
        Dtype::BF16 => out.extend_from_slice(&bf16::from_f64(x).to_le_bytes()),
        Dtype::F64 => out.extend_from_slice(&x.to_le_bytes()),
        _ => out.extend_from_slice(&(x as f32).to_le_bytes()),
    }
}

/// A host tensor's elements as f64 (exact for every dtype a tensor can have).
fn values(t: &Tensor) -> Vec<f64> {
    match t.storage() {
        Storage::Cpu(CpuData::F64(v)) => v.clone(),
        _ => t.to_f64_vec(),
    }
}

/// The module's tensors in kohya's layout (LoRA) or LyCORIS's (LoHa: `hada_w1_a`
/// [out, r], `hada_w1_b` [r, in·k·k], `hada_w2_a`, `hada_w2_b`, `alpha`) and `precision`;
/// checks shapes and values.
fn module_tensors(
    path: &Path,
    m: &LoraModule,
    precision: SavePrecision,
) -> Result<Vec<OutTensor<'static>>> {
    let bad = |detail: String| Error::Lora {
        path: path.to_path_buf(),
        detail: format!("LoRA module `{}`: {detail}; nothing was written", m.name),
    };
    let (d, u) = (m.down.dims(), m.up.dims());
    let (r, i, o) = (
        d.first().copied().unwrap_or(0),
        d.get(1).copied().unwrap_or(0),
        u.first().copied().unwrap_or(0),
    );
    let (dm, um) = match m.algo {
        Algo::Lora | Algo::Dora { .. } => m.kind.shapes(r, i, o),
        // LyCORIS's layout on every layer: [out, r] and [r, in·k·k], twice.
        Algo::Loha { .. } => (vec![r, i], vec![o, r]),
    };
    let same = |t: &Tensor, s: &[usize]| t.dims() == s;
    let second_ok = match &m.algo {
        Algo::Lora => true,
        Algo::Loha { w2_a, w2_b } => same(w2_a, &um) && same(w2_b, &dm),
        Algo::Dora { magnitude } => same(magnitude, &dora::magnitude_shape(m.kind, o)),
    };
    if let (Algo::Dora { magnitude }, false) = (&m.algo, second_ok) {
        return Err(bad(format!(
            "DoRA's dora_scale must be {:?} (one magnitude per output row); it is {:?}",
            dora::magnitude_shape(m.kind, o),
            magnitude.dims()
        )));
    }
    if let (Algo::Loha { .. }, false) = (&m.algo, second_ok && d == dm.as_slice()) {
        return Err(bad(format!(
            "LoHa's hada_w1_a, hada_w2_a must be [out, rank] and hada_w1_b, hada_w2_b \
             [rank, in·k·k] with one rank ≥ 1; they are {:?}, {:?}, {:?}, {:?}",
            u,
            m.algo.extra()[0].dims(),
            d,
            m.algo.extra()[1].dims()
        )));
    }
    if r == 0 || d != dm.as_slice() || u != um.as_slice() {
        return Err(bad(format!(
            "down must be {} and up {} with the same rank ≥ 1 ({:?}); they are {:?} and {:?}",
            "[rank, in] (a k x k conv: [rank, in, k, k])",
            "[out, rank] (a k x k conv: [out, rank, 1, 1])",
            m.kind,
            d,
            u
        )));
    }
    if !m.alpha.is_finite() {
        return Err(bad(format!("alpha is {}", m.alpha)));
    }
    let dtype = precision.dtype();
    let encode = |what: &str, v: &[f64]| -> Result<Vec<u8>> {
        if let Some(x) = v.iter().find(|x| !x.is_finite()) {
            return Err(bad(format!(
                "{what} holds {x}: training diverged (lower the learning rate, or train in \
                 fp32/bf16); a LoRA with NaN or infinite weights would break every image, so \
                 it is not saved"
            )));
        }
        if precision == SavePrecision::Fp16 {
            if let Some(x) = v.iter().find(|x| x.abs() > F16_MAX) {
                return Err(bad(format!(
                    "{what} holds {x}, beyond fp16's range (±65504); save in fp32 or bf16"
                )));
            }
        }
        let mut out = Vec::with_capacity(v.len() * dtype.bitsize() / 8);
        for &x in v {
            push_elem(&mut out, x, dtype);
        }
        Ok(out)
    };
    let tensor = |suffix: &str, shape: &[usize], bytes: Vec<u8>| OutTensor {
        name: format!("{}{suffix}", m.name),
        dtype,
        shape: shape.to_vec(),
        data: Data::Owned(bytes),
    };
    let alpha = tensor(kohya::ALPHA, &[], encode("alpha", &[m.alpha])?);
    let t = |key: &str, shape: &[usize], v: &Tensor| -> Result<OutTensor<'static>> {
        Ok(tensor(key, shape, encode(&key[1..], &values(v))?))
    };
    match &m.algo {
        Algo::Lora => {
            let (ds, us) = m.kind.kohya_shapes(r, i, o);
            Ok(vec![
                t(kohya::DOWN, &ds, &m.down)?,
                t(kohya::UP, &us, &m.up)?,
                alpha,
            ])
        }
        // LyCORIS's key order: dora_scale, alpha, up, down (the file sorts them anyway).
        Algo::Dora { magnitude } => {
            let (ds, us) = m.kind.kohya_shapes(r, i, o);
            Ok(vec![
                t(kohya::DOWN, &ds, &m.down)?,
                t(kohya::UP, &us, &m.up)?,
                t(kohya::DORA_SCALE, magnitude.dims(), magnitude)?,
                alpha,
            ])
        }
        Algo::Loha { w2_a, w2_b } => Ok(vec![
            t(kohya::HADA_W1_A, u, &m.up)?,
            t(kohya::HADA_W1_B, d, &m.down)?,
            t(kohya::HADA_W2_A, u, w2_a)?,
            t(kohya::HADA_W2_B, d, w2_b)?,
            alpha,
        ]),
    }
}

/// The tensors of `set` as kohya writes them, in the file's order.
fn kohya_tensors(
    path: &Path,
    set: &LoraSet,
    precision: SavePrecision,
) -> Result<Vec<OutTensor<'static>>> {
    if set.is_empty() {
        return Err(Error::Lora {
            path: path.to_path_buf(),
            detail: "the LoRA has no modules; nothing was written".into(),
        });
    }
    let mut tensors = Vec::with_capacity(3 * set.len());
    for m in set.modules() {
        if m.name.is_empty() {
            return Err(Error::Lora {
                path: path.to_path_buf(),
                detail: "a LoRA module has an empty name; nothing was written".into(),
            });
        }
        tensors.extend(module_tensors(path, m, precision)?);
    }
    write::sort_canonical(&mut tensors);
    Ok(tensors)
}

/// sd-webui-additional-networks' (model hash, legacy hash) of the file `tensors` (in order)
/// and `metadata` would make: SHA-256 of the bytes after the header, and the legacy hash of
/// the whole file.
fn addnet_hashes(
    path: &Path,
    tensors: &[OutTensor<'_>],
    metadata: &BTreeMap<String, String>,
) -> Result<(String, String)> {
    let header = write::header_bytes(path, tensors, metadata)?;
    let mut data_hash = Sha256::new();
    let mut window = Vec::with_capacity(LEGACY_LEN as usize);
    let (lo, hi) = (
        LEGACY_OFFSET as usize,
        (LEGACY_OFFSET + LEGACY_LEN) as usize,
    );
    let mut at = 0usize;
    let mut take_window = |bytes: &[u8], at: usize| {
        let (s, e) = (lo.max(at), hi.min(at + bytes.len()));
        if s < e {
            window.extend_from_slice(&bytes[s - at..e - at]);
        }
    };
    take_window(&header, at);
    at += header.len();
    for t in tensors {
        let bytes: &[u8] = match &t.data {
            Data::Owned(v) => v,
            Data::Borrowed(b) => b,
            Data::Lazy(_) => &[],
        };
        data_hash.update(bytes);
        take_window(bytes, at);
        at += bytes.len();
    }
    Ok((
        data_hash.finalize_hex(),
        hash::legacy_hash_of_window(&window),
    ))
}

/// Saves `set` to `path` (a `.safetensors` file) in kohya's format, every tensor in
/// `precision`, with `metadata` plus `sshs_model_hash`/`sshs_legacy_hash` (replacing any
/// given). Atomic: on error nothing is written and an existing file is untouched.
///
/// Refused, naming the module: shapes that are not down [r, in] / up [out, r]; NaN or
/// infinite weights or alpha; in fp16, weights beyond ±65504.
pub fn save_kohya(
    path: impl AsRef<Path>,
    set: &LoraSet,
    precision: SavePrecision,
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let path = path.as_ref();
    let tensors = kohya_tensors(path, set, precision)?;
    let metadata = &with_conv_args(metadata, set);
    let ss_only: BTreeMap<String, String> = metadata
        .iter()
        .filter(|(k, _)| k.starts_with("ss_"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let (model_hash, legacy_hash) = addnet_hashes(path, &tensors, &ss_only)?;
    let mut metadata = metadata.clone();
    metadata.insert("sshs_model_hash".into(), model_hash);
    metadata.insert("sshs_legacy_hash".into(), legacy_hash);
    write::write_safetensors(path, tensors, &metadata)?;
    Ok(())
}

/// Training metadata (one with `ss_network_args` or `ss_network_module`) for a set with LoCon
/// adapters names their
/// rank and alpha there as sd-scripts does (`{"conv_dim": "8", "conv_alpha": "4.0"}`), taken
/// from the first conv module, so the file says what its tensors hold; for LoHa adapters
/// `ss_network_module` is `lycoris.kohya` and the args hold `"algo": "loha"`, for DoRA
/// `"algo": "lora", "dora_wd": "True"`, as LyCORIS's.
fn with_conv_args(metadata: &BTreeMap<String, String>, set: &LoraSet) -> BTreeMap<String, String> {
    let mut out = metadata.clone();
    let conv = set
        .modules()
        .iter()
        .find(|m| matches!(m.kind, LayerKind::Conv { .. }));
    // Metadata of kohya's kind (it names the network module) gets the key when it lacks it.
    let args = match metadata.get("ss_network_args") {
        Some(a) => a.as_str(),
        None if metadata.contains_key("ss_network_module") => "{}",
        None => return out,
    };
    let Ok(serde_json::Value::Object(mut map)) = serde_json::from_str(args) else {
        return out;
    };
    // LoHa, DoRA: LyCORIS's network module, with its `algo` and `dora_wd` (as
    // lycoris.kohya's files say them: DoRA is algo lora with dora_wd=True).
    let loha = set.modules().iter().find(|m| !m.is_lora());
    if let Some(m) = loha {
        out.insert("ss_network_module".into(), "lycoris.kohya".into());
        match m.algo {
            Algo::Dora { .. } => {
                map.insert("algo".into(), "lora".into());
                map.insert("dora_wd".into(), "True".into());
            }
            _ => {
                map.insert("algo".into(), m.algo.name().into());
            }
        }
    }
    if let Some(m) = conv {
        map.insert("conv_dim".into(), m.rank().to_string().into());
        map.insert("conv_alpha".into(), py_float(m.alpha).into());
    } else if loha.is_none() {
        return out;
    }
    out.insert(
        "ss_network_args".into(),
        json(&serde_json::Value::Object(map)),
    );
    out
}

/// sd-webui-additional-networks' hashes of an existing safetensors file: (SHA-256 of the
/// bytes after the header, legacy hash of the file). For a LoRA written by kohya or
/// lorafuse, the first equals its `sshs_model_hash`.
pub fn addnet_hashes_of_file(path: &Path) -> Result<(String, String)> {
    use std::io::{Read, Seek, SeekFrom};
    let legacy = model_hash_legacy(path)?;
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, "open it to hash it", e))?;
    let mut n = [0u8; 8];
    f.read_exact(&mut n)
        .map_err(|e| Error::io(path, "read its header length", e))?;
    f.seek(SeekFrom::Start(8u64.saturating_add(u64::from_le_bytes(n))))
        .map_err(|e| Error::io(path, "seek past its header", e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let k = f
            .read(&mut buf)
            .map_err(|e| Error::io(path, "read it to hash it", e))?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
    }
    Ok((h.finalize_hex(), legacy))
}

// ---------------------------------------------------------------------------------------------
// Training metadata

/// kohya's `SS_METADATA_MINIMUM_KEYS`: what `--no_metadata` keeps (with `modelspec.*` and the
/// hashes).
pub const SS_METADATA_MINIMUM_KEYS: [&str; 6] = [
    "ss_v2",
    "ss_base_model_version",
    "ss_network_module",
    "ss_network_dim",
    "ss_network_alpha",
    "ss_network_args",
];

/// The model a LoRA was trained on (or the VAE it used), as kohya records it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BaseModelInfo {
    /// The file's name without its folder (`v1-5-pruned-emaonly.safetensors`), or a hub id.
    pub name: String,
    /// A1111's old hash, 8 hex digits ([`model_hash_legacy`]).
    pub legacy_hash: Option<String>,
    /// The full-file SHA-256, 64 hex digits ([`sha256_file`]).
    pub sha256: Option<String>,
}

impl BaseModelInfo {
    /// Name and both hashes of a model file. Reads the whole file (about 30 s for 4 GB); for
    /// a folder (diffusers layout) only the name is recorded, as kohya does.
    pub fn from_path(path: &Path) -> Result<BaseModelInfo> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        if path.is_dir() {
            return Ok(BaseModelInfo {
                name,
                ..Default::default()
            });
        }
        Ok(BaseModelInfo {
            name,
            legacy_hash: Some(model_hash_legacy(path)?),
            sha256: Some(sha256_file(path)?),
        })
    }
}

/// One training folder: kohya's `ss_dataset_dirs` entry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DatasetDir {
    /// The folder's name without its parents (`10_mychar`).
    pub name: String,
    pub n_repeats: u64,
    pub img_count: u64,
}

/// One aspect-ratio bucket: kohya's `ss_bucket_info` entry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    pub width: u32,
    pub height: u32,
    /// Images in it (repeats included).
    pub count: u64,
}

/// How captions were used.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CaptionSettings {
    pub shuffle_caption: bool,
    /// Leading tokens kept in place when shuffling.
    pub keep_tokens: usize,
    pub caption_dropout_rate: f64,
    pub caption_dropout_every_n_epochs: u64,
    pub caption_tag_dropout_rate: f64,
}

/// Aspect-ratio bucketing.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BucketSettings {
    pub enable_bucket: bool,
    pub min_bucket_reso: u32,
    pub max_bucket_reso: u32,
    pub bucket_no_upscale: bool,
    pub buckets: Vec<Bucket>,
    /// Mean |aspect ratio of the image − that of its bucket|.
    pub mean_img_ar_error: Option<f64>,
}

/// kohya's `ss_base_model_version` of an SDXL LoRA (sdxl_model_util.MODEL_VERSION_SDXL_BASE_V1_0).
pub const SDXL_BASE_VERSION: &str = "sdxl_base_v1-0";

/// Everything about a training run that goes into a LoRA's metadata. Times are Unix seconds.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainingInfo {
    /// The file's stem, shown by A1111 as the LoRA's alias.
    pub output_name: String,
    /// `modelspec.title`; `output_name` when None.
    pub title: Option<String>,
    pub training_comment: Option<String>,
    pub author: Option<String>,
    pub description: Option<String>,
    pub license: Option<String>,
    /// Comma-separated.
    pub tags: Option<String>,
    pub trigger_phrase: Option<String>,
    /// A random number shared by every save of one run.
    pub session_id: u64,
    pub training_started_at: f64,
    /// When this file is saved.
    pub training_finished_at: f64,
    /// Optimizer steps and epochs done when this file is saved.
    pub steps: u64,
    pub epoch: u64,

    pub base_model: BaseModelInfo,
    pub vae: Option<BaseModelInfo>,
    /// The base model is SD2.x (kohya's `ss_v2`, base version `sd_v2`, the v2 model spec).
    pub v2: bool,
    /// The run trained v-prediction (kohya's `v_parameterization`: `sd_v2_v`, prediction "v").
    pub v_parameterization: bool,
    /// The base model is SDXL (base version `sdxl_base_v1-0`, the SDXL model spec; `v2` is
    /// then false).
    pub sdxl: bool,

    pub lora_rank: usize,
    pub lora_alpha: f64,
    pub network_dropout: Option<f64>,
    pub rank_dropout: Option<f64>,
    pub module_dropout: Option<f64>,
    /// Block-wise ranks and lr weights as network_args texts (`block_dims` = "2,4,..."), in
    /// `ss_network_args` as kohya writes what it was given.
    pub block_args: Vec<(&'static str, String)>,
    pub targets: LoraTargets,
    pub train_text_encoder: bool,

    pub learning_rate: f64,
    pub unet_lr: Option<f64>,
    pub text_encoder_lr: Option<f64>,
    /// "AdamW".
    pub optimizer: String,
    /// `(name, value)` as kohya prints them in `ss_optimizer`: `weight_decay=0.01`.
    pub optimizer_args: Vec<(String, String)>,
    /// diffusers' scheduler name: "constant", "cosine", "constant_with_warmup", …
    pub lr_scheduler: String,
    pub lr_warmup_steps: u64,
    pub max_train_steps: u64,
    pub num_epochs: u64,
    pub num_batches_per_epoch: u64,
    pub batch_size: usize,
    pub gradient_accumulation_steps: usize,
    pub gradient_checkpointing: bool,
    pub max_grad_norm: f64,
    /// "fp16", "bf16" or "no".
    pub mixed_precision: String,
    pub cache_latents: bool,
    pub seed: u64,
    /// (width, height).
    pub resolution: (u32, u32),
    pub clip_skip: Option<u32>,
    pub max_token_length: Option<u32>,
    pub noise_offset: Option<f64>,
    pub min_snr_gamma: Option<f64>,
    pub flip_aug: bool,
    pub color_aug: bool,
    pub random_crop: bool,
    pub caption: CaptionSettings,
    pub buckets: BucketSettings,

    pub dataset_dirs: Vec<DatasetDir>,
    pub reg_dataset_dirs: Vec<DatasetDir>,
    /// Per folder name, tag → number of captions that have it.
    pub tag_frequency: BTreeMap<String, BTreeMap<String, u64>>,
    /// Images × repeats, as kohya counts them.
    pub num_train_images: u64,
    pub num_reg_images: u64,
    /// The loss weight of regularisation images.
    pub prior_loss_weight: f64,
    pub num_validation_images: u64,
    pub validation_split: f64,
    pub validation_seed: Option<u64>,
    pub validate_every_n_steps: Option<u64>,
    pub validate_every_n_epochs: Option<u64>,
    pub max_validation_steps: Option<u64>,
}

impl Default for TrainingInfo {
    /// kohya's defaults where it has them (rank 4, alpha 1, 512×512, constant LR).
    fn default() -> Self {
        TrainingInfo {
            output_name: "last".into(),
            title: None,
            training_comment: None,
            author: None,
            description: None,
            license: None,
            tags: None,
            trigger_phrase: None,
            session_id: 0,
            training_started_at: 0.0,
            training_finished_at: 0.0,
            steps: 0,
            epoch: 0,
            base_model: BaseModelInfo::default(),
            vae: None,
            v2: false,
            v_parameterization: false,
            sdxl: false,
            lora_rank: 4,
            lora_alpha: 1.0,
            network_dropout: None,
            rank_dropout: None,
            module_dropout: None,
            block_args: Vec::new(),
            targets: LoraTargets::Transformer,
            train_text_encoder: false,
            learning_rate: 1e-4,
            unet_lr: None,
            text_encoder_lr: None,
            optimizer: "AdamW".into(),
            optimizer_args: Vec::new(),
            lr_scheduler: "constant".into(),
            lr_warmup_steps: 0,
            max_train_steps: 1600,
            num_epochs: 1,
            num_batches_per_epoch: 0,
            batch_size: 1,
            gradient_accumulation_steps: 1,
            gradient_checkpointing: false,
            max_grad_norm: 1.0,
            mixed_precision: "fp16".into(),
            cache_latents: true,
            seed: 0,
            resolution: (512, 512),
            clip_skip: None,
            max_token_length: None,
            noise_offset: None,
            min_snr_gamma: None,
            flip_aug: false,
            color_aug: false,
            random_crop: false,
            caption: CaptionSettings::default(),
            buckets: BucketSettings::default(),
            dataset_dirs: Vec::new(),
            reg_dataset_dirs: Vec::new(),
            tag_frequency: BTreeMap::new(),
            num_train_images: 0,
            num_reg_images: 0,
            prior_loss_weight: 1.0,
            num_validation_images: 0,
            validation_split: 0.0,
            validation_seed: None,
            validate_every_n_steps: None,
            validate_every_n_epochs: None,
            max_validation_steps: None,
        }
    }
}

/// A float as Python's `str()` writes it, which is what kohya stores: the shortest digits
/// that read back exactly, positional for 1e-4 ≤ |x| < 1e16 ("0.0001", "2.0"), else
/// scientific with a signed two-digit exponent ("5e-05", "1e+16"); "inf", "nan".
pub fn py_float(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf" } else { "-inf" }.into();
    }
    if x == 0.0 {
        return if x.is_sign_negative() { "-0.0" } else { "0.0" }.into();
    }
    let sci = format!("{x:e}"); // shortest round-trip digits: "5e-5", "1.25e2"
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if (-4..16).contains(&exp) {
        let s = format!("{x}");
        if s.contains('.') {
            s
        } else {
            format!("{s}.0")
        }
    } else {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.unsigned_abs())
    }
}

fn py_bool(b: bool) -> String {
    if b { "True" } else { "False" }.into()
}

fn py_opt<T>(v: Option<T>, f: impl Fn(T) -> String) -> String {
    v.map(f).unwrap_or_else(|| "None".into())
}

/// Unix seconds as ISO 8601 in UTC with the offset written out: `2024-05-01T12:34:56+00:00`
/// (Python's `datetime.fromisoformat` reads it).
pub fn iso8601_utc(unix_seconds: f64) -> String {
    let secs = if unix_seconds.is_finite() {
        unix_seconds.floor() as i64
    } else {
        0
    };
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Days since 1970-01-01 to a civil date (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}+00:00",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn json(v: &serde_json::Value) -> String {
    v.to_string()
}

/// `{dir: {"n_repeats": n, "img_count": c}}`; a name seen twice becomes "name (2)", as kohya
/// does.
fn dataset_dirs_json(dirs: &[DatasetDir]) -> String {
    let mut map = serde_json::Map::new();
    for d in dirs {
        let mut key = d.name.clone();
        let mut i = 2;
        while map.contains_key(&key) {
            key = format!("{} ({i})", d.name);
            i += 1;
        }
        map.insert(
            key,
            serde_json::json!({"n_repeats": d.n_repeats, "img_count": d.img_count}),
        );
    }
    json(&serde_json::Value::Object(map))
}

/// kohya's `bucket_info`: `{"buckets": {"0": {"resolution": [w, h], "count": n}, …},
/// "mean_img_ar_error": e}`.
/// Without bucketing kohya has no bucket information: `null`.
fn bucket_info_json(b: &BucketSettings) -> String {
    if !b.enable_bucket {
        return "null".into();
    }
    let mut buckets = serde_json::Map::new();
    for (i, bucket) in b.buckets.iter().enumerate() {
        buckets.insert(
            i.to_string(),
            serde_json::json!({"resolution": [bucket.width, bucket.height], "count": bucket.count}),
        );
    }
    let mut info = serde_json::Map::new();
    info.insert("buckets".into(), serde_json::Value::Object(buckets));
    if let Some(e) = b.mean_img_ar_error.filter(|e| e.is_finite()) {
        info.insert("mean_img_ar_error".into(), serde_json::json!(e));
    }
    json(&serde_json::Value::Object(info))
}

/// The header metadata kohya's `train_network.py` writes for an SD1.x LoRA (the flat form,
/// without `--dataset_config`), plus the SAI model spec and two `lorafuse.*` keys. Values are
/// strings as Python's `str()` makes them ("True", "None", "0.0001", "(512, 512)"); JSON
/// where kohya uses JSON (`ss_network_args`, `ss_dataset_dirs`, `ss_reg_dataset_dirs`,
/// `ss_tag_frequency`, `ss_bucket_info`). `sshs_*` are added by [`save_kohya`].
pub fn training_metadata(info: &TrainingInfo) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    let mut put = |k: &str, v: String| {
        m.insert(k.to_string(), v);
    };
    let (w, h) = info.resolution;

    // Network: the minimum set A1111 needs to classify and name the LoRA.
    put("ss_network_module", "networks.lora".into());
    put("ss_network_dim", info.lora_rank.to_string());
    put("ss_network_alpha", py_float(info.lora_alpha));
    put("ss_network_dropout", py_opt(info.network_dropout, py_float));
    let mut net_args = serde_json::Map::new();
    if let Some(p) = info.rank_dropout {
        net_args.insert("rank_dropout".into(), py_float(p).into());
    }
    if let Some(p) = info.module_dropout {
        net_args.insert("module_dropout".into(), py_float(p).into());
    }
    for (k, v) in &info.block_args {
        net_args.insert(k.to_string(), v.clone().into());
    }
    // kohya writes the key only when the run has network arguments.
    if !net_args.is_empty() {
        put(
            "ss_network_args",
            json(&serde_json::Value::Object(net_args)),
        );
    }
    put("ss_v2", py_bool(info.v2));
    // sd-scripts' get_model_version_str_for_sd1_sd2: sd_v1 / sd_v2, "_v" for v-prediction;
    // sdxl_model_util.MODEL_VERSION_SDXL_BASE_V1_0 for SDXL.
    let version = if info.sdxl {
        SDXL_BASE_VERSION.to_string()
    } else {
        format!(
            "sd_v{}{}",
            if info.v2 { 2 } else { 1 },
            if info.v_parameterization { "_v" } else { "" }
        )
    };
    put("ss_base_model_version", version);
    put("ss_output_name", info.output_name.clone());

    // Run.
    put("ss_session_id", info.session_id.to_string());
    put("ss_training_started_at", py_float(info.training_started_at));
    put(
        "ss_training_finished_at",
        py_float(info.training_finished_at),
    );
    put("ss_steps", info.steps.to_string());
    put("ss_epoch", info.epoch.to_string());
    put("ss_seed", info.seed.to_string());
    put(
        "ss_training_comment",
        py_opt(info.training_comment.clone(), |s| s),
    );

    // Base model.
    put("ss_sd_model_name", info.base_model.name.clone());
    if let Some(hash) = &info.base_model.legacy_hash {
        put("ss_sd_model_hash", hash.clone());
    }
    if let Some(hash) = &info.base_model.sha256 {
        put("ss_new_sd_model_hash", hash.clone());
    }
    if let Some(vae) = &info.vae {
        put("ss_vae_name", vae.name.clone());
        if let Some(hash) = &vae.legacy_hash {
            put("ss_vae_hash", hash.clone());
        }
        if let Some(hash) = &vae.sha256 {
            put("ss_new_vae_hash", hash.clone());
        }
    }
    put("ss_clip_skip", py_opt(info.clip_skip, |c| c.to_string()));
    put(
        "ss_max_token_length",
        py_opt(info.max_token_length, |c| c.to_string()),
    );

    // Optimisation.
    put("ss_learning_rate", py_float(info.learning_rate));
    put("ss_unet_lr", py_opt(info.unet_lr, py_float));
    put("ss_text_encoder_lr", py_opt(info.text_encoder_lr, py_float));
    let optimizer = if info.optimizer_args.is_empty() {
        info.optimizer.clone()
    } else {
        let args: Vec<String> = info
            .optimizer_args
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        format!("{}({})", info.optimizer, args.join(","))
    };
    put("ss_optimizer", optimizer);
    put("ss_lr_scheduler", info.lr_scheduler.clone());
    put("ss_lr_warmup_steps", info.lr_warmup_steps.to_string());
    put("ss_max_train_steps", info.max_train_steps.to_string());
    put("ss_num_epochs", info.num_epochs.to_string());
    put(
        "ss_num_batches_per_epoch",
        info.num_batches_per_epoch.to_string(),
    );
    put(
        "ss_gradient_accumulation_steps",
        info.gradient_accumulation_steps.to_string(),
    );
    put(
        "ss_gradient_checkpointing",
        py_bool(info.gradient_checkpointing),
    );
    put("ss_max_grad_norm", py_float(info.max_grad_norm));
    put("ss_mixed_precision", info.mixed_precision.clone());
    put("ss_full_fp16", py_bool(false));
    put("ss_fp8_base", py_bool(false));
    put("ss_lowram", py_bool(false));
    put("ss_cache_latents", py_bool(info.cache_latents));

    // Loss and noise: MSE on ε, with what lorafuse offers.
    put("ss_noise_offset", py_opt(info.noise_offset, py_float));
    put("ss_min_snr_gamma", py_opt(info.min_snr_gamma, py_float));
    put("ss_loss_type", "l2".into());
    put("ss_zero_terminal_snr", py_bool(false));
    put("ss_debiased_estimation", py_bool(false));
    put("ss_prior_loss_weight", py_float(info.prior_loss_weight));
    // sd-scripts' options lorafuse does not have, as sd-scripts writes them when they are off
    // (the Huber settings are its defaults, unused by the l2 loss).
    for (key, value) in [
        ("ss_adaptive_noise_scale", "None"),
        ("ss_multires_noise_iterations", "None"),
        ("ss_multires_noise_discount", "0.3"),
        ("ss_noise_offset_random_strength", "False"),
        ("ss_ip_noise_gamma", "None"),
        ("ss_ip_noise_gamma_random_strength", "False"),
        ("ss_huber_schedule", "snr"),
        ("ss_huber_c", "0.1"),
        ("ss_huber_scale", "1.0"),
        ("ss_face_crop_aug_range", "None"),
        ("ss_scale_weight_norms", "None"),
        ("ss_fp8_base_unet", "False"),
        ("ss_resize_interpolation", "None"),
    ] {
        put(key, value.into());
    }

    // Data.
    put("ss_num_train_images", info.num_train_images.to_string());
    put("ss_num_reg_images", info.num_reg_images.to_string());
    put(
        "ss_num_validation_images",
        info.num_validation_images.to_string(),
    );
    put("ss_batch_size_per_device", info.batch_size.to_string());
    put(
        "ss_total_batch_size",
        (info.batch_size * info.gradient_accumulation_steps).to_string(),
    );
    put("ss_resolution", format!("({w}, {h})"));
    put("ss_flip_aug", py_bool(info.flip_aug));
    put("ss_color_aug", py_bool(info.color_aug));
    put("ss_random_crop", py_bool(info.random_crop));
    let c = &info.caption;
    put("ss_shuffle_caption", py_bool(c.shuffle_caption));
    put("ss_keep_tokens", c.keep_tokens.to_string());
    put("ss_caption_dropout_rate", py_float(c.caption_dropout_rate));
    put(
        "ss_caption_dropout_every_n_epochs",
        c.caption_dropout_every_n_epochs.to_string(),
    );
    put(
        "ss_caption_tag_dropout_rate",
        py_float(c.caption_tag_dropout_rate),
    );
    let b = &info.buckets;
    put("ss_enable_bucket", py_bool(b.enable_bucket));
    put("ss_bucket_no_upscale", py_bool(b.bucket_no_upscale));
    put("ss_min_bucket_reso", b.min_bucket_reso.to_string());
    put("ss_max_bucket_reso", b.max_bucket_reso.to_string());
    put("ss_bucket_info", bucket_info_json(b));
    put("ss_dataset_dirs", dataset_dirs_json(&info.dataset_dirs));
    put(
        "ss_reg_dataset_dirs",
        dataset_dirs_json(&info.reg_dataset_dirs),
    );
    put(
        "ss_tag_frequency",
        serde_json::to_string(&info.tag_frequency).unwrap_or_else(|_| "{}".into()),
    );

    // Validation.
    put("ss_validation_split", py_float(info.validation_split));
    put(
        "ss_validation_seed",
        py_opt(info.validation_seed, |s| s.to_string()),
    );
    put(
        "ss_validate_every_n_steps",
        py_opt(info.validate_every_n_steps, |s| s.to_string()),
    );
    put(
        "ss_validate_every_n_epochs",
        py_opt(info.validate_every_n_epochs, |s| s.to_string()),
    );
    put(
        "ss_max_validation_steps",
        py_opt(info.max_validation_steps, |s| s.to_string()),
    );

    // SAI model spec (kohya's library/sai_model_spec.py for an SD1 LoRA).
    put("modelspec.sai_model_spec", "1.0.1".into());
    // sai_model_spec.determine_architecture for SD1.x/SD2.x, with the LoRA suffix.
    let architecture = match (info.sdxl, info.v2, info.v_parameterization) {
        (true, _, _) => "stable-diffusion-xl-v1-base",
        (false, false, _) => "stable-diffusion-v1",
        (false, true, false) => "stable-diffusion-v2-512",
        (false, true, true) => "stable-diffusion-v2-768-v",
    };
    put("modelspec.architecture", format!("{architecture}/lora"));
    // sai_model_spec.determine_implementation: an SDXL LoRA names Stability AI's code.
    let implementation = if info.sdxl {
        "https://github.com/Stability-AI/generative-models"
    } else {
        "diffusers"
    };
    put("modelspec.implementation", implementation.into());
    put(
        "modelspec.implementation_version",
        format!("lorafuse/{}", env!("CARGO_PKG_VERSION")),
    );
    put(
        "modelspec.title",
        info.title
            .clone()
            .unwrap_or_else(|| info.output_name.clone()),
    );
    put("modelspec.resolution", format!("{w}x{h}"));
    put("modelspec.date", iso8601_utc(info.training_finished_at));
    put(
        "modelspec.prediction_type",
        if info.v_parameterization {
            "v"
        } else {
            "epsilon"
        }
        .into(),
    );
    put(
        "modelspec.encoder_layer",
        info.clip_skip.unwrap_or(1).to_string(),
    );
    for (key, value) in [
        ("modelspec.author", &info.author),
        ("modelspec.description", &info.description),
        ("modelspec.license", &info.license),
        ("modelspec.tags", &info.tags),
        ("modelspec.trigger_phrase", &info.trigger_phrase),
    ] {
        if let Some(v) = value {
            put(key, v.clone());
        }
    }

    put(
        "lorafuse.targets",
        match info.targets {
            LoraTargets::Transformer => "transformer",
            LoraTargets::Attention => "attention",
        }
        .into(),
    );
    put(
        "lorafuse.train_text_encoder",
        py_bool(info.train_text_encoder),
    );
    m
}

/// What kohya's `--no_metadata` keeps: [`SS_METADATA_MINIMUM_KEYS`] and `modelspec.*`.
pub fn minimum_metadata(full: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    full.iter()
        .filter(|(k, _)| {
            SS_METADATA_MINIMUM_KEYS.contains(&k.as_str()) || k.starts_with("modelspec.")
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_float_strings() {
        for (x, want) in [
            (1e-4, "0.0001"),
            (5e-5, "5e-05"),
            (2.0, "2.0"),
            (0.1, "0.1"),
            (1.5e-7, "1.5e-07"),
            (1e16, "1e+16"),
            (123456.0, "123456.0"),
            (0.0, "0.0"),
            (-3.25, "-3.25"),
            (f64::NAN, "nan"),
            (1700000000.123456, "1700000000.123456"),
        ] {
            assert_eq!(py_float(x), want, "{x}");
        }
    }

    #[test]
    fn iso_dates() {
        assert_eq!(iso8601_utc(0.0), "1970-01-01T00:00:00+00:00");
        assert_eq!(iso8601_utc(951_782_400.0), "2000-02-29T00:00:00+00:00");
        assert_eq!(iso8601_utc(1_700_000_000.9), "2023-11-14T22:13:20+00:00");
        assert_eq!(iso8601_utc(-1.0), "1969-12-31T23:59:59+00:00");
    }
}
