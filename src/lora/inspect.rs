//! What is in a kohya-format LoRA file, without loading it as a model: module counts (UNet,
//! text encoder), the adapter kind of each module (LoRA on a linear or 1x1-conv layer, LoCon
//! on a k x k conv), ranks, alphas, dtypes, the parameter count, which kind of layers it targets,
//! NaN/inf values, whether `sshs_model_hash` still matches the tensors, and the metadata.
//! Tolerant: oddities (a missing `lora_up`, tensors that belong to no module) are listed in
//! the summary, not errors; only a file that is not safetensors or holds no kohya LoRA is.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::lora::export::{addnet_hashes_of_file, py_float};
use crate::lora::LayerKind;
use crate::lora::{blocks, provenance};
use crate::model::checkpoint::safetensors::{to_f32, SafetensorsFile};

use crate::lora::kohya::{module_of, ALPHA, DORA_SCALE, DOWN, HADA_W1_A, HADA_W1_B, UP};

/// Which UNet layers a LoRA adapts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetKind {
    /// Only linear and 1x1-conv layers of the Transformer2D blocks, not all of them
    /// attention projections: kohya's default (proj_in, proj_out, attention, feed-forward).
    Transformer,
    /// Only attention projections (to_q, to_k, to_v, to_out.0): diffusers' default.
    Attention,
    /// Layers outside the Transformer2D blocks too (LoCon's resnets, conv_in, …); a few
    /// module names as examples.
    Other { examples: Vec<String> },
    /// No UNet module.
    NoUnet,
}

impl fmt::Display for TargetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetKind::Transformer => f.write_str(
                "transformer blocks: proj_in/proj_out, attention, feed-forward (kohya's default)",
            ),
            TargetKind::Attention => f.write_str("attention only: to_q, to_k, to_v, to_out"),
            TargetKind::Other { examples } => {
                write!(
                    f,
                    "beyond the transformer blocks, e.g. {}",
                    examples.join(", ")
                )
            }
            TargetKind::NoUnet => f.write_str("no UNet layer"),
        }
    }
}

/// A LoRA file's contents, for `lorafuse inspect`.
#[derive(Clone, Debug)]
pub struct LoraSummary {
    pub path: PathBuf,
    pub file_size: u64,
    pub modules: usize,
    pub unet_modules: usize,
    pub text_encoder_modules: usize,
    /// Modules whose name starts with neither `lora_unet_` nor `lora_te`.
    pub other_modules: usize,
    /// Modules on 1x1 convs (stored [r, in, 1, 1]).
    pub conv_modules: usize,
    /// Adapter kind ([`adapter_kind`]) → number of modules.
    pub kinds: BTreeMap<String, usize>,
    /// Per module (sorted by name): name, adapter kind, rank, alpha (None: absent).
    pub per_module: Vec<ModuleInfo>,
    /// rank → number of modules.
    pub ranks: BTreeMap<usize, usize>,
    /// Distinct alphas (ascending) with their number of modules.
    pub alphas: Vec<(f64, usize)>,
    /// Modules without an `.alpha` (loaders then take alpha = rank).
    pub modules_without_alpha: usize,
    /// dtype name ("F16") → number of tensors.
    pub dtypes: BTreeMap<String, usize>,
    /// Elements of every lora_down and lora_up.
    pub parameters: usize,
    pub targets: TargetKind,
    /// NaN or infinite elements across all tensors.
    pub non_finite: usize,
    /// Tensors that are not part of a down/up/alpha triple (sorted).
    pub extra_tensors: Vec<String>,
    /// Malformed modules, one line each.
    pub problems: Vec<String>,
    /// Some(true) when `sshs_model_hash` equals the SHA-256 of the tensor bytes, Some(false)
    /// when it differs (the tensors changed after saving), None when absent.
    pub sshs_model_hash_matches: Option<bool>,
    pub metadata: BTreeMap<String, String>,
}

/// One module of the file.
#[derive(Clone, Debug, PartialEq)]
pub struct ModuleInfo {
    pub name: String,
    pub kind: String,
    pub rank: usize,
    pub alpha: Option<f64>,
}

/// What adapts a layer, from its lora_down shape: "LoRA linear", "LoRA 1x1 conv", "LoCon 3x3
/// conv", or "unknown" for a shape of none of these.
pub fn adapter_kind(down_shape: &[usize]) -> String {
    match LayerKind::of_kohya_down(down_shape) {
        Some(LayerKind::Linear) => "LoRA linear".into(),
        Some(LayerKind::Conv1x1) => "LoRA 1x1 conv".into(),
        Some(LayerKind::Conv { kernel: k }) => format!("LoCon {k}x{k} conv"),
        None => format!("unknown (down {down_shape:?})"),
    }
}

/// Attention projections, after `…_transformer_blocks_N_`.
const ATTENTION_SUFFIXES: [&str; 8] = [
    "_attn1_to_q",
    "_attn1_to_k",
    "_attn1_to_v",
    "_attn1_to_out_0",
    "_attn2_to_q",
    "_attn2_to_k",
    "_attn2_to_v",
    "_attn2_to_out_0",
];
/// The other linear / 1x1-conv layers of a Transformer2D block.
const TRANSFORMER_SUFFIXES: [&str; 4] = ["_proj_in", "_proj_out", "_ff_net_0_proj", "_ff_net_2"];

fn classify_unet(names: &[&str]) -> TargetKind {
    if names.is_empty() {
        return TargetKind::NoUnet;
    }
    let in_transformer = |n: &str| n.contains("_attentions_");
    let is_attention =
        |n: &str| in_transformer(n) && ATTENTION_SUFFIXES.iter().any(|s| n.ends_with(s));
    let is_transformer =
        |n: &str| in_transformer(n) && TRANSFORMER_SUFFIXES.iter().any(|s| n.ends_with(s));
    let others: Vec<String> = names
        .iter()
        .filter(|n| !is_attention(n) && !is_transformer(n))
        .take(3)
        .map(|n| n.to_string())
        .collect();
    if !others.is_empty() {
        TargetKind::Other { examples: others }
    } else if names.iter().all(|n| is_attention(n)) {
        TargetKind::Attention
    } else {
        TargetKind::Transformer
    }
}

/// Reads the summary of the kohya-format LoRA at `path`.
pub fn inspect(path: impl AsRef<Path>) -> Result<LoraSummary> {
    let path = path.as_ref();
    let file = SafetensorsFile::open(path)?;
    let mut names: Vec<&str> = file.names().collect();
    names.sort_unstable();
    let mut modules: Vec<&str> = names
        .iter()
        .filter_map(|k| k.strip_suffix(DOWN).or_else(|| k.strip_suffix(HADA_W1_A)))
        .collect();
    modules.sort_unstable();
    if modules.is_empty() {
        let hint = if names.iter().any(|k| k.contains(".lora.down.weight")) {
            "it is in diffusers' own LoRA format (`.lora.down.weight`), not kohya's"
        } else if names.iter().any(|k| k.contains(".lora_A.")) {
            "it is a PEFT LoRA (`.lora_A.` / `.lora_B.`), not kohya's format"
        } else {
            "no `*.lora_down.weight` tensor: this is not a kohya-format LoRA"
        };
        return Err(Error::Lora {
            path: path.to_path_buf(),
            detail: format!("{hint} ({} tensors)", names.len()),
        });
    }
    let file_size = std::fs::metadata(path)
        .map_err(|e| Error::io(path, "read its size", e))?
        .len();

    let mut s = LoraSummary {
        path: path.to_path_buf(),
        file_size,
        modules: modules.len(),
        unet_modules: 0,
        text_encoder_modules: 0,
        other_modules: 0,
        conv_modules: 0,
        kinds: BTreeMap::new(),
        per_module: Vec::new(),
        ranks: BTreeMap::new(),
        alphas: Vec::new(),
        modules_without_alpha: 0,
        dtypes: BTreeMap::new(),
        parameters: 0,
        targets: TargetKind::NoUnet,
        non_finite: 0,
        extra_tensors: Vec::new(),
        problems: Vec::new(),
        sshs_model_hash_matches: None,
        metadata: file.metadata().clone().into_iter().collect(),
    };
    let mut unet = Vec::new();
    let mut alphas: Vec<f64> = Vec::new();
    for &m in &modules {
        if m.starts_with("lora_unet_") {
            s.unet_modules += 1;
            unet.push(m);
        } else if m.starts_with("lora_te") {
            s.text_encoder_modules += 1;
        } else {
            s.other_modules += 1;
        }
        // LyCORIS's LoHa: w1_b [r, in·k·k] and w1_a [out, r] in the places of down and up.
        let loha = file.tensor_info(&format!("{m}{HADA_W1_A}")).is_some();
        let (dk, uk) = if loha {
            (HADA_W1_B, HADA_W1_A)
        } else {
            (DOWN, UP)
        };
        let down = file.tensor_info(&format!("{m}{dk}"));
        let up = file.tensor_info(&format!("{m}{uk}"));
        let (Some(down), Some(up)) = (down, up) else {
            s.problems
                .push(format!("{m}: {} without {}", &uk[1..], &dk[1..]));
            continue;
        };
        let rank = down.shape.first().copied().unwrap_or(0);
        if up.shape.get(1) != Some(&rank) {
            s.problems.push(format!(
                "{m}: lora_down {:?} and lora_up {:?} disagree on the rank",
                down.shape, up.shape
            ));
        }
        if LayerKind::of_kohya_down(&down.shape) == Some(LayerKind::Conv1x1) {
            s.conv_modules += 1;
        }
        // DoRA (LyCORIS's dora_wd): a LoRA's keys and `dora_scale`, one per output row.
        let dora = file.tensor_info(&format!("{m}{DORA_SCALE}"));
        let kind = match (loha, dora) {
            (true, _) => "LoHa".to_string(),
            (false, Some(_)) => format!("DoRA ({})", adapter_kind(&down.shape)),
            (false, None) => adapter_kind(&down.shape),
        };
        *s.kinds.entry(kind.clone()).or_default() += 1;
        *s.ranks.entry(rank).or_default() += 1;
        let pair = down.shape.iter().product::<usize>() + up.shape.iter().product::<usize>();
        let magnitude = dora.map_or(0, |d| d.shape.iter().product::<usize>());
        s.parameters += if loha { 2 * pair } else { pair + magnitude };
        let alpha = match file.tensor_info(&format!("{m}{ALPHA}")) {
            None => {
                s.modules_without_alpha += 1;
                None
            }
            Some(a) => match to_f32(a.dtype, file.bytes(a)).as_deref() {
                Some([alpha]) => {
                    alphas.push(*alpha as f64);
                    Some(*alpha as f64)
                }
                _ => {
                    s.problems.push(format!(
                        "{m}: alpha has shape {:?} and dtype {:?}, expected one float",
                        a.shape, a.dtype
                    ));
                    None
                }
            },
        };
        s.per_module.push(ModuleInfo {
            name: m.to_string(),
            kind,
            rank,
            alpha,
        });
    }
    alphas.sort_by(f64::total_cmp);
    for a in alphas {
        match s.alphas.last_mut() {
            Some((v, n)) if v.total_cmp(&a).is_eq() => *n += 1,
            _ => s.alphas.push((a, 1)),
        }
    }
    s.targets = classify_unet(&unet);

    let module_set: std::collections::HashSet<&str> = modules.iter().copied().collect();
    for &k in &names {
        let Some(info) = file.tensor_info(k) else {
            continue;
        };
        *s.dtypes.entry(format!("{:?}", info.dtype)).or_default() += 1;
        if let Some(values) = to_f32(info.dtype, file.bytes(info)) {
            s.non_finite += values.iter().filter(|x| !x.is_finite()).count();
        }
        if !module_of(k).is_some_and(|m| module_set.contains(m)) {
            s.extra_tensors.push(k.to_string());
        }
    }
    if let Some(stored) = s.metadata.get("sshs_model_hash") {
        let (actual, _) = addnet_hashes_of_file(path)?;
        s.sshs_model_hash_matches = Some(stored.eq_ignore_ascii_case(&actual));
    }
    Ok(s)
}

impl LoraSummary {
    /// The model family the metadata names (kohya's `ss_base_model_version`, else the model
    /// spec's architecture), in words.
    pub fn base_model(&self) -> Option<String> {
        let version = self.metadata.get("ss_base_model_version");
        let named = match version.map(String::as_str) {
            Some("sd_v1") => Some("Stable Diffusion 1.x"),
            Some("sd_v1_v") => Some("Stable Diffusion 1.x, v-prediction"),
            Some("sd_v2") => Some("Stable Diffusion 2.x, ε-prediction (512)"),
            Some("sd_v2_v") => Some("Stable Diffusion 2.x, v-prediction (768-v)"),
            Some(v) if v == crate::lora::export::SDXL_BASE_VERSION => Some("SDXL 1.0 base"),
            _ => None,
        };
        named
            .map(str::to_string)
            .or_else(|| version.cloned())
            .or_else(|| self.metadata.get("modelspec.architecture").cloned())
    }

    /// One line per module: name, adapter kind, rank, alpha.
    pub fn module_table(&self) -> String {
        let width = self
            .per_module
            .iter()
            .map(|m| m.name.len())
            .max()
            .unwrap_or(0);
        let mut out = String::new();
        for m in &self.per_module {
            let alpha = m
                .alpha
                .map_or("none".to_string(), crate::lora::export::py_float);
            out += &format!(
                "{:width$}  {:15}  rank {:4}  alpha {alpha}\n",
                m.name, m.kind, m.rank
            );
        }
        out
    }
}

/// "1,234,567".
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn counted<K: fmt::Display>(items: impl Iterator<Item = (K, usize)>, unit: &str) -> String {
    items
        .map(|(k, n)| format!("{k} ({n} {unit})"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl fmt::Display for LoraSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "LoRA {} ({} bytes)",
            self.path.display(),
            thousands(self.file_size)
        )?;
        write!(
            f,
            "  modules     {} (UNet {}, text encoder {}",
            self.modules, self.unet_modules, self.text_encoder_modules
        )?;
        if self.other_modules > 0 {
            write!(f, ", other {}", self.other_modules)?;
        }
        writeln!(f, ")")?;
        writeln!(
            f,
            "  adapters    {}",
            counted(self.kinds.iter().map(|(k, n)| (k, *n)), "modules")
        )?;
        writeln!(f, "  targets     {}", self.targets)?;
        if let Some(base) = self.base_model() {
            writeln!(f, "  base model  {base}")?;
        }
        writeln!(
            f,
            "  rank        {}",
            counted(self.ranks.iter().map(|(r, n)| (r, *n)), "modules")
        )?;
        let mut alpha = counted(
            self.alphas
                .iter()
                .map(|(a, n)| (crate::lora::export::py_float(*a), *n)),
            "modules",
        );
        if let ([(a, _)], [(r, _)]) = (
            self.alphas.as_slice(),
            self.ranks.iter().collect::<Vec<_>>().as_slice(),
        ) {
            if **r > 0 {
                alpha.push_str(&format!(", scale alpha/rank = {}", a / **r as f64));
            }
        }
        if self.modules_without_alpha > 0 {
            if !alpha.is_empty() {
                alpha.push_str("; ");
            }
            alpha.push_str(&format!(
                "{} modules without alpha (alpha = rank, scale 1)",
                self.modules_without_alpha
            ));
        }
        writeln!(f, "  alpha       {alpha}")?;
        let per_module = self
            .per_module
            .iter()
            .map(|m| (m.name.as_str(), m.rank, m.alpha));
        for (i, row) in blocks::rows(per_module).iter().enumerate() {
            let numbers = |v: Vec<String>| v.join(", ");
            writeln!(
                f,
                "  {:10}  {:5} {:4} modules  rank {}  alpha {}",
                if i == 0 { "per block" } else { "" },
                row.block,
                row.modules,
                numbers(row.ranks.iter().map(usize::to_string).collect()),
                numbers(row.alphas.iter().map(|&a| py_float(a)).collect()),
            )?;
        }
        writeln!(
            f,
            "  written by  {}",
            provenance::written_by(&self.metadata)
        )?;
        writeln!(
            f,
            "  dtype       {}",
            counted(self.dtypes.iter().map(|(d, n)| (d, *n)), "tensors")
        )?;
        writeln!(f, "  parameters  {}", thousands(self.parameters as u64))?;
        if self.non_finite > 0 {
            writeln!(
                f,
                "  WARNING     {} NaN or infinite values: this LoRA is broken",
                self.non_finite
            )?;
        }
        match self.sshs_model_hash_matches {
            Some(true) => writeln!(f, "  hash        sshs_model_hash matches the tensors")?,
            Some(false) => writeln!(
                f,
                "  hash        sshs_model_hash does NOT match the tensors (changed after saving)"
            )?,
            None => {}
        }
        for p in &self.problems {
            writeln!(f, "  problem     {p}")?;
        }
        if !self.extra_tensors.is_empty() {
            let shown: Vec<&str> = self
                .extra_tensors
                .iter()
                .take(5)
                .map(String::as_str)
                .collect();
            writeln!(
                f,
                "  other keys  {} not part of a down/up/alpha triple: {}{}",
                self.extra_tensors.len(),
                shown.join(", "),
                if self.extra_tensors.len() > 5 {
                    ", …"
                } else {
                    ""
                }
            )?;
        }
        if self.metadata.is_empty() {
            writeln!(
                f,
                "  metadata    none (A1111 then cannot tell which base model it is for)"
            )?;
        } else {
            writeln!(f, "  metadata    {} keys", self.metadata.len())?;
            let width = self
                .metadata
                .keys()
                .map(|k| k.chars().count())
                .max()
                .unwrap_or(0);
            for (k, v) in &self.metadata {
                let v = v.replace('\n', "\\n");
                let n = v.chars().count();
                let shown: String = if n > 100 {
                    let head: String = v.chars().take(97).collect();
                    format!("{head}… ({n} characters)")
                } else {
                    v.clone()
                };
                writeln!(f, "    {k:width$}  {shown}")?;
            }
        }
        Ok(())
    }
}
