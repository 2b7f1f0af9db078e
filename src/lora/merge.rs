//! Merging LoRAs into a single-file SD1.x, SD2.x or SDXL checkpoint (LDM key names, SGM's for
//! SDXL, `.safetensors`), so that the result is a plain model with the LoRAs baked in. A fused
//! OpenCLIP `attn.in_proj_weight` (SD2.x's text encoder, SDXL's second) takes its q, k and v
//! modules in its thirds.
//!
//! For every weight `<module>.weight` of the checkpoint whose module has the kohya name of a
//! LoRA module ([`modules_of`]: SD1.x/SD2.x by the diffusers path, `ldm_to_diffusers` then
//! `kohya_name`, sd15-formats.md §2.1, §2.8; SDXL as sd-scripts names its modules, which is
//! SGM's own path for the UNet, `lora_unet_input_blocks_4_1_proj_in`, and transformers' for
//! the encoders, `lora_te1_…` for `conditioner.embedders.0.transformer.*` and `lora_te2_…`
//! for `conditioner.embedders.1.model.*` renamed as `ldm::open_clip_as` does):
//!
//!   W' = W + Σ_loras ratio · (alpha / r) · up · down
//!
//! with up [out, r], down [r, in], and the product reshaped to W's [out, in] or
//! [out, in, 1, 1] (the 1x1 convs proj_in/proj_out), as kohya's `merge_lora.py`, A1111 and
//! ComfyUI do (§2.3). A LoCon module on a k x k conv (down [r, in, k, k], up [out, r, 1, 1])
//! is the same product with down flattened to [r, in·k²], reshaped to W's [out, in, k, k]:
//! the conv by down then the 1x1 conv by up is one conv by that kernel. A LoHa module adds
//! ΔW = (alpha / r)·(w1_a·w1_b) ⊙ (w2_a·w2_b), reshaped to W's shape (as ComfyUI and A1111
//! bake it), computed as the same product at rank r² (lora/loha.rs). W is read in its stored dtype (f16, bf16, f32 or f64), the sum is
//! computed in f64 and rounded once, to W's dtype or to `precision` when given. Every other
//! tensor, the skipped keys (`alphas_cumprod`, `model_ema.*`, `position_ids`) included, is
//! copied byte for byte — or, with `precision`, every floating-point tensor is converted to
//! it (integer tensors stay as they are), as kohya's `--save_precision` does. The header's
//! `__metadata__` is kept, less the hashes it would now contradict (`sshs_*`,
//! `modelspec.hash_sha256`).
//!
//! A diffusers folder as the base is refused, with what to pass instead: writing a single file
//! from one would need the diffusers → LDM mapping of every key, which lorafuse does not have.
//!
//! A LoRA module that matches no weight is an error, listing the modules: a LoRA for another
//! model silently merging into nothing is the classic complaint. So is a module whose shape
//! does not fit its weight. Everything is checked before the output file is created.
//!
//! Memory: the checkpoint is memory-mapped (its pages are the kernel's page cache, dropped
//! under pressure, not the process's heap), unchanged tensors are copied from the map to the
//! output through an 8 MiB buffer, and a merged or converted tensor is built in memory one
//! at a time. Peak heap is the largest such tensor in the output dtype (SD1.5 in fp16: the
//! 49408×768 token embedding, 76 MB, when converting; the largest merged weight,
//! ff.net.0.proj at 1280 channels, 26 MB) plus the LoRAs in f64 for one weight.
//! The output is written atomically (`crate::atomic`).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use safetensors::tensor::Dtype;

use crate::error::{Error, Result};
use crate::lora::export::{push_elem, SavePrecision};
use crate::lora::write::{self, Data, OutTensor};
use crate::lora::{LoraModule, LoraSet};
use crate::model::checkpoint::ldm::{
    open_clip, open_clip_as, open_clip_blocks, open_clip_blocks_at, text_encoder_at, OpenClipName,
    OpenClipTarget,
};
use crate::model::checkpoint::safetensors::{RawTensor, SafetensorsFile};
use crate::model::checkpoint::sdxl_text::{TE1_SGM_PREFIX, TE2_SGM_PREFIX};
use crate::model::checkpoint::{
    detect_family, ldm_to_diffusers, CheckpointError, Family, LdmLayout, OPEN_CLIP_PREFIX,
    UNET_PREFIX,
};
use crate::model::layers::{kohya_name, kohya_name_as};
use crate::model::sdxl_text::{TE1_LORA, TE1_PREFIX, TE2_LORA, TE2_PREFIX};

/// One weight of the checkpoint that LoRAs changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MergedWeight {
    /// The key in the checkpoint (LDM name).
    pub key: String,
    /// The kohya module name it matched.
    pub module: String,
    /// Which LoRAs (indices into the `loras` argument) changed it.
    pub loras: Vec<usize>,
}

/// What a merge did.
#[derive(Clone, Debug)]
pub struct MergeReport {
    pub output: PathBuf,
    pub bytes_written: u64,
    /// Tensors in the output (as many as in the base).
    pub tensors: usize,
    /// Every weight changed, sorted by key.
    pub merged: Vec<MergedWeight>,
    /// Per LoRA, its number of modules (every one of them matched a weight).
    pub modules_per_lora: Vec<usize>,
    /// Unchanged tensors converted to `precision`.
    pub converted: usize,
    pub precision: Option<SavePrecision>,
}

impl fmt::Display for MergeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unet = self
            .merged
            .iter()
            .filter(|m| m.module.starts_with("lora_unet_"))
            .count();
        writeln!(
            f,
            "merged {} LoRA{} ({} modules) into {} weights (UNet {unet}, text encoder {})",
            self.modules_per_lora.len(),
            if self.modules_per_lora.len() == 1 {
                ""
            } else {
                "s"
            },
            self.modules_per_lora
                .iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(" + "),
            self.merged.len(),
            self.merged.len() - unet,
        )?;
        match self.precision {
            Some(p) => writeln!(
                f,
                "{} other floating-point tensors converted to {p}",
                self.converted
            )?,
            None => writeln!(
                f,
                "{} other tensors copied unchanged",
                self.tensors - self.merged.len()
            )?,
        }
        write!(
            f,
            "wrote {} ({} tensors, {} bytes)",
            self.output.display(),
            self.tensors,
            self.bytes_written
        )
    }
}

fn is_float(d: Dtype) -> bool {
    matches!(d, Dtype::F16 | Dtype::BF16 | Dtype::F32 | Dtype::F64)
}

/// Element `i` of little-endian `bytes` of a float dtype, as f64 (exact).
fn elem(bytes: &[u8], i: usize, dtype: Dtype) -> f64 {
    let at = |n: usize| &bytes[i * n..i * n + n];
    match dtype {
        Dtype::F16 => {
            let b = at(2);
            half::f16::from_le_bytes([b[0], b[1]]).to_f64()
        }
        Dtype::BF16 => {
            let b = at(2);
            half::bf16::from_le_bytes([b[0], b[1]]).to_f64()
        }
        Dtype::F32 => {
            let b = at(4);
            f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64
        }
        _ => {
            let b = at(8);
            f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
        }
    }
}

fn elem_size(d: Dtype) -> usize {
    d.bitsize() / 8
}

/// `bytes` of float dtype `from` as `to`, each element rounded once.
fn convert(bytes: &[u8], from: Dtype, to: Dtype) -> Vec<u8> {
    let n = bytes.len() / elem_size(from);
    let mut out = Vec::with_capacity(n * elem_size(to));
    for i in 0..n {
        push_elem(&mut out, elem(bytes, i, from), to);
    }
    out
}

/// One LoRA's contribution to a weight: coef = ratio · alpha / r, up [out, r], down [r, in].
struct Delta {
    coef: f64,
    rank: usize,
    up: Vec<f64>,
    down: Vec<f64>,
    /// DoRA (lora/dora.rs): the row magnitudes (None for the rows outside a fused weight's
    /// part) and the ratio; `coef` is then alpha/rank alone.
    decompose: Option<(Vec<Option<f64>>, f64)>,
}

impl Delta {
    /// row += coef · up[o] · down.
    fn add_to(&self, row: &mut [f64], o: usize) {
        let in_f = row.len();
        for k in 0..self.rank {
            let c = self.coef * self.up[o * self.rank + k];
            if c == 0.0 {
                continue;
            }
            for (x, a) in row.iter_mut().zip(&self.down[k * in_f..(k + 1) * in_f]) {
                *x += c * a;
            }
        }
    }

    /// Row `o` of the weight with this delta baked in: W + coef·up·down, or for DoRA
    /// W + ratio·(V − W) with V = W' ⊙ m / (‖W'‖ + eps), W' = W + coef·up·down (A1111's and
    /// ComfyUI's strength; V itself at ratio 1, as LyCORIS merges).
    fn apply(&self, row: &mut [f64], o: usize) {
        let Some((magnitude, ratio)) = &self.decompose else {
            return self.add_to(row, o);
        };
        let Some(m) = magnitude[o] else {
            return;
        };
        let mut adapted = row.to_vec();
        self.add_to(&mut adapted, o);
        let norm = adapted.iter().map(|x| x * x).sum::<f64>().sqrt();
        let f = m / (norm + super::dora::EPS);
        for (x, a) in row.iter_mut().zip(&adapted) {
            *x += ratio * (a * f - *x);
        }
    }
}

/// W + Σ coef · up · down, row by row in parallel, into `to`. Err(row) when a result is not
/// finite although W's element was.
fn merged_bytes(
    w: &[u8],
    from: Dtype,
    to: Dtype,
    out_f: usize,
    in_f: usize,
    deltas: &[Delta],
) -> std::result::Result<Vec<u8>, usize> {
    let (es_in, es_out) = (elem_size(from), elem_size(to));
    let mut out = vec![0u8; out_f * in_f * es_out];
    if in_f == 0 {
        return Ok(out);
    }
    out.par_chunks_mut(in_f * es_out)
        .enumerate()
        .try_for_each(|(o, chunk)| {
            let src = &w[o * in_f * es_in..(o + 1) * in_f * es_in];
            let mut row: Vec<f64> = (0..in_f).map(|i| elem(src, i, from)).collect();
            let finite_before = row.iter().all(|x| x.is_finite());
            for d in deltas {
                d.apply(&mut row, o);
            }
            let mut buf = Vec::with_capacity(chunk.len());
            for &x in &row {
                push_elem(&mut buf, x, to);
            }
            // Check after rounding: f16 overflows to inf.
            if finite_before && (0..in_f).any(|i| !elem(&buf, i, to).is_finite()) {
                return Err(o);
            }
            chunk.copy_from_slice(&buf);
            Ok(())
        })?;
    Ok(out)
}

/// (index of the LoRA, index of the module in it).
type Hit = (usize, usize);

/// A weight's merge: the kohya module name(s) it matched and each LoRA module on it.
type Planned = (String, Vec<(Hit, Part)>);

/// Which third of a fused OpenCLIP `in_proj_weight` a module adapts (q, k, v: 0, 1, 2), or
/// None for a whole weight.
type Part = Option<usize>;

/// How a checkpoint's keys name modules: SD1.x/SD2.x's LDM file (with its OpenCLIP blocks,
/// none for SD1.x), or SDXL's SGM file (with te2's blocks).
enum Naming {
    Ldm {
        layout: LdmLayout,
        blocks: usize,
    },
    Sgm {
        layout: LdmLayout,
        te2_blocks: usize,
    },
}

impl Naming {
    fn of(file: &SafetensorsFile, sdxl: bool) -> Naming {
        let layout = LdmLayout::infer(file.names());
        if sdxl {
            let te2_blocks = open_clip_blocks_at(file.names(), TE2_SGM_PREFIX);
            Naming::Sgm { layout, te2_blocks }
        } else {
            let blocks = open_clip_blocks(file.names());
            Naming::Ldm { layout, blocks }
        }
    }
}

/// The kohya module name(s) of the weight `key` stores: one, or for a fused OpenCLIP
/// `attn.in_proj_weight` the q, k and v projections as its thirds (`ldm::open_clip_as`).
fn modules_of(key: &str, naming: &Naming) -> Vec<(String, Part)> {
    let module = |n: &str| n.strip_suffix(".weight").map(str::to_string);
    let from_open_clip = |name: Option<OpenClipName>, lora_prefix: Option<&str>| {
        let named = |n: &str| {
            module(n).map(|m| lora_prefix.map_or_else(|| kohya_name(&m), |p| kohya_name_as(&m, p)))
        };
        match name {
            Some(OpenClipName::One(n)) => named(&n).map(|m| (m, None)).into_iter().collect(),
            Some(OpenClipName::Fused(names)) => names
                .iter()
                .enumerate()
                .filter_map(|(i, n)| named(n).map(|m| (m, Some(i))))
                .collect(),
            // sd-scripts targets no text_projection (SD2.x's mapping keeps none).
            Some(OpenClipName::Transposed(_)) | None => Vec::new(),
        }
    };
    match naming {
        Naming::Ldm { layout, blocks } => {
            if let Some(rest) = key.strip_prefix(OPEN_CLIP_PREFIX) {
                return from_open_clip(open_clip(rest, *blocks), None);
            }
            ldm_to_diffusers(key, layout)
                .and_then(|n| module(&n))
                .map(|m| (kohya_name(&m), None))
                .into_iter()
                .collect()
        }
        Naming::Sgm { layout, te2_blocks } => {
            if let Some(rest) = key.strip_prefix(TE1_SGM_PREFIX) {
                let path = text_encoder_at(TE1_PREFIX, rest).and_then(|n| module(&n));
                return path
                    .map(|m| (kohya_name_as(&m, TE1_LORA), None))
                    .into_iter()
                    .collect();
            }
            if let Some(rest) = key.strip_prefix(TE2_SGM_PREFIX) {
                let target = OpenClipTarget {
                    prefix: TE2_PREFIX,
                    layers: *te2_blocks,
                    projection: true,
                };
                return from_open_clip(open_clip_as(rest, &target), Some(TE2_LORA));
            }
            // The UNet's modules are named by their SGM paths, which the file stores.
            let sgm = key.strip_prefix(UNET_PREFIX).and_then(module);
            match (sgm, ldm_to_diffusers(key, layout)) {
                (Some(m), Some(_)) => vec![(kohya_name(&format!("unet.{m}")), None)],
                _ => Vec::new(),
            }
        }
    }
}

/// The stored tensor as one part sees it: a third of the rows for a fused weight.
fn part_of(raw: &RawTensor, part: Part) -> RawTensor {
    let mut r = raw.clone();
    if part.is_some() {
        if let Some(rows) = r.shape.first_mut() {
            *rows /= 3;
        }
    }
    r
}

/// A part's up [out/3, r] placed in its rows of a zero [out, r] (the whole up for None);
/// also DoRA's magnitudes (r = 1, `None` outside the part).
fn placed_up<T: Copy + Default>(up: Vec<T>, part: Part, out_f: usize, rank: usize) -> Vec<T> {
    let Some(i) = part else {
        return up;
    };
    let mut full = vec![T::default(); out_f * rank];
    let start = i * (out_f / 3) * rank;
    full[start..start + up.len()].copy_from_slice(&up);
    full
}

/// Why the modules of a LoRA may match nothing, from their names and whether the checkpoint
/// is SDXL's.
fn mismatch_hint(names: &[&str], sdxl: bool) -> &'static str {
    let sd1_names = names
        .iter()
        .any(|n| n.starts_with("lora_te_") || n.starts_with("lora_unet_down_blocks_"));
    if sdxl && sd1_names {
        "its names are SD1.x/SD2.x's (lora_te_, diffusers paths such as down_blocks), not \
         kohya's SDXL names (lora_te1_/lora_te2_, SGM paths: input_blocks, middle_block, \
         output_blocks): a LoRA for SD1.x/SD2.x, or an SDXL LoRA named by diffusers' paths, \
         which lorafuse does not map"
    } else if sdxl {
        "the LoRA was made for another model, or names its modules in a way lorafuse does not \
         know; `lorafuse inspect` lists its module names"
    } else if names
        .iter()
        .any(|n| n.starts_with("lora_te1_") || n.starts_with("lora_te2_"))
    {
        "the lora_te1_/lora_te2_ prefixes are SDXL's two text encoders: this LoRA is for SDXL, \
         not SD1.x"
    } else if names.iter().any(|n| {
        n.contains("input_blocks") || n.contains("output_blocks") || n.contains("middle_block")
    }) {
        "its names follow the LDM layout (input_blocks, middle_block, output_blocks) instead \
         of the diffusers module paths kohya's format uses; convert it to kohya's naming first"
    } else {
        "the LoRA was made for another model, or names its modules in a way lorafuse does not \
         know; `lorafuse inspect` lists its module names"
    }
}

/// Merges `loras` (each with its ratio, A1111's weight) into the single-file SD1.x, SD2.x or
/// SDXL checkpoint `base` and writes the result to `out`. See the module documentation for the arithmetic,
/// the errors and the memory used.
pub fn merge_into_checkpoint(
    base: &Path,
    loras: &[(&LoraSet, f64)],
    out: &Path,
    precision: Option<SavePrecision>,
) -> Result<MergeReport> {
    let fail = |detail: String| Error::Lora {
        path: base.to_path_buf(),
        detail: format!("{detail}; nothing was written"),
    };
    for (i, (_, ratio)) in loras.iter().enumerate() {
        if !ratio.is_finite() {
            return Err(fail(format!("LoRA #{i} has ratio {ratio}")));
        }
    }
    if let (Ok(a), Ok(b)) = (base.canonicalize(), out.canonicalize()) {
        if a == b {
            return Err(fail(format!(
                "the output {} is the base checkpoint itself; write the merge to a new file",
                out.display()
            )));
        }
    }
    if base.is_dir() {
        return Err(fail(format!(
            "{} is a folder (a diffusers model?); merge reads and writes a single-file \
             checkpoint (LDM or SGM key names, as A1111 and civitai ship them): pass the \
             model's single-file .safetensors as --model, or convert the folder first with \
             diffusers' scripts/convert_diffusers_to_original_stable_diffusion.py \
             --use_safetensors (for SDXL convert_diffusers_to_original_sdxl.py); `lorafuse \
             sample` and training read diffusers folders directly",
            base.display()
        )));
    }
    let sdxl = match detect_family(base)? {
        Family::Sd1 | Family::Sd2 { .. } => false,
        Family::Sdxl { .. } => true,
        Family::Unsupported { family, evidence } => {
            return Err(CheckpointError::UnsupportedModel {
                path: base.to_path_buf(),
                family,
                evidence,
                takes: crate::model::checkpoint::error::TRAINS,
            }
            .into())
        }
        Family::Other { detail } => {
            return Err(CheckpointError::NotAModel {
                path: base.to_path_buf(),
                detail,
            }
            .into())
        }
    };
    let file = SafetensorsFile::open(base)?;
    let naming = Naming::of(&file, sdxl);

    // kohya module name → (lora, module index) for every LoRA.
    let mut by_name: HashMap<&str, Vec<Hit>> = HashMap::new();
    for (li, (set, _)) in loras.iter().enumerate() {
        for (mi, m) in set.modules().iter().enumerate() {
            by_name.entry(m.name.as_str()).or_default().push((li, mi));
        }
    }

    // Plan: which stored key gets which modules, checked before anything is written.
    let mut keys: Vec<&str> = file.names().collect();
    keys.sort_unstable();
    let mut plan: BTreeMap<&str, Planned> = BTreeMap::new();
    let mut used: Vec<Vec<bool>> = loras.iter().map(|(s, _)| vec![false; s.len()]).collect();
    for &key in &keys {
        for (module, part) in modules_of(key, &naming) {
            let Some(hits) = by_name.get(module.as_str()) else {
                continue;
            };
            for &(li, mi) in hits {
                used[li][mi] = true;
            }
            let entry = plan
                .entry(key)
                .or_insert_with(|| (module.clone(), Vec::new()));
            if entry.0 != module {
                entry.0 = format!("{}, {module}", entry.0);
            }
            entry.1.extend(hits.iter().map(|&h| (h, part)));
        }
    }
    for (li, (set, ratio)) in loras.iter().enumerate() {
        let unmatched: Vec<&str> = set
            .modules()
            .iter()
            .zip(&used[li])
            .filter(|(_, &u)| !u)
            .map(|(m, _)| m.name.as_str())
            .collect();
        if !unmatched.is_empty() {
            let shown: Vec<String> = unmatched.iter().take(8).map(|n| format!("`{n}`")).collect();
            return Err(fail(format!(
                "{} of the {} modules of LoRA #{li} (ratio {ratio}) match no weight of this \
                 checkpoint: {}{}. {}",
                unmatched.len(),
                set.len(),
                shown.join(", "),
                if unmatched.len() > shown.len() {
                    ", …"
                } else {
                    ""
                },
                mismatch_hint(&unmatched, sdxl)
            )));
        }
    }

    let mut tensors = Vec::with_capacity(keys.len());
    let mut merged = Vec::with_capacity(plan.len());
    let mut converted = 0;
    for &key in &keys {
        let Some(raw) = file.tensor_info(key) else {
            continue;
        };
        let stored = file.bytes(raw);
        let target_dtype = match precision {
            Some(p) if is_float(raw.dtype) => p.dtype(),
            _ => raw.dtype,
        };
        let data = if let Some((module, hits)) = plan.get(key) {
            let modules: Vec<(&LoraModule, f64)> = hits
                .iter()
                .map(|&((li, mi), _)| (&loras[li].0.modules()[mi], loras[li].1))
                .collect();
            let parts: Vec<Part> = hits.iter().map(|&(_, p)| p).collect();
            for part in [None, Some(0), Some(1), Some(2)] {
                let of_part: Vec<(&LoraModule, f64)> = modules
                    .iter()
                    .zip(&parts)
                    .filter(|(_, &p)| p == part)
                    .map(|(m, _)| *m)
                    .collect();
                if !of_part.is_empty() {
                    check_fit(base, key, &part_of(raw, part), &of_part)?;
                }
            }
            merged.push(MergedWeight {
                key: key.to_string(),
                module: module.clone(),
                loras: hits.iter().map(|&((li, _), _)| li).collect(),
            });
            // A k x k conv's weight is [out, in·k²] row-major, as its down is [r, in·k²].
            let (out_f, in_f) = (raw.shape[0], raw.shape[1..].iter().product());
            let from = raw.dtype;
            let key_owned = key.to_string();
            let base_owned = base.to_path_buf();
            Data::Lazy(Box::new(move || {
                let deltas: Vec<Delta> = modules
                    .iter()
                    .zip(&parts)
                    .map(|((m, ratio), part)| {
                        // LoHa: its ΔW as a rank-r² product (lora/loha.rs).
                        let (rank, up, down) = match m.hada() {
                            Some(h) => h.as_product(),
                            None => (m.rank(), m.up.to_f64_vec(), m.down.to_f64_vec()),
                        };
                        // DoRA: its magnitudes placed as up's rows are.
                        let decompose = m.dora().map(|d| {
                            let rows = d.magnitude.to_f64_vec().into_iter().map(Some);
                            let placed = placed_up(rows.collect(), *part, out_f, 1);
                            (placed, *ratio)
                        });
                        let coef = if decompose.is_some() { 1.0 } else { *ratio };
                        Delta {
                            coef: coef * m.scale(),
                            rank,
                            up: placed_up(up, *part, out_f, rank),
                            down,
                            decompose,
                        }
                    })
                    .collect();
                merged_bytes(stored, from, target_dtype, out_f, in_f, &deltas).map_err(|row| {
                    Error::Lora {
                        path: base_owned,
                        detail: format!(
                            "merging into `{key_owned}` gives infinite or NaN values (row \
                             {row}) in {target_dtype:?}: the ratio is too high or the LoRA is \
                             broken; the output was not written"
                        ),
                    }
                })
            }))
        } else if target_dtype != raw.dtype {
            converted += 1;
            let from = raw.dtype;
            Data::Lazy(Box::new(move || Ok(convert(stored, from, target_dtype))))
        } else {
            Data::Borrowed(stored)
        };
        tensors.push(OutTensor {
            name: key.to_string(),
            dtype: target_dtype,
            shape: raw.shape.clone(),
            data,
        });
    }

    let stale = [
        "sshs_model_hash",
        "sshs_legacy_hash",
        "modelspec.hash_sha256",
    ];
    let metadata: BTreeMap<String, String> = file
        .metadata()
        .iter()
        .filter(|(k, _)| !stale.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let n_tensors = tensors.len();
    let bytes_written = write::write_safetensors(out, tensors, &metadata)?;
    Ok(MergeReport {
        output: out.to_path_buf(),
        bytes_written,
        tensors: n_tensors,
        merged,
        modules_per_lora: loras.iter().map(|(s, _)| s.len()).collect(),
        converted,
        precision,
    })
}

/// The weight must be a float [out, in] or [out, in, 1, 1] with each LoRA's up [out, r] and
/// down [r, in], or for a LoCon module a [out, in, k, k] conv with up [out, r, 1, 1] and down
/// [r, in, k, k].
fn check_fit(
    base: &Path,
    key: &str,
    raw: &RawTensor,
    modules: &[(&LoraModule, f64)],
) -> Result<()> {
    let s = &raw.shape;
    for (m, _) in modules {
        let (u, d) = (m.up.dims(), m.down.dims());
        // A k x k conv (LoCon): up [out, r, 1, 1], down [r, in, k, k], W [out, in, k, k].
        let (shape_ok, down_ok) = match m.kind {
            // LoHa: up [out, r], down [r, in·k·k] whatever the layer (lora/kohya.rs).
            _ if m.hada().is_some() => (
                s.len() >= 2,
                d.len() == 2 && d[1] == s[1..].iter().product::<usize>(),
            ),
            crate::lora::LayerKind::Conv { kernel } => (
                s.len() == 4 && s[2] == kernel && s[3] == kernel,
                d.len() == 4 && s.len() == 4 && d[1] == s[1] && d[2..] == s[2..],
            ),
            _ => (
                s.len() == 2 || (s.len() == 4 && s[2] == 1 && s[3] == 1),
                d.len() == 2 && s.len() >= 2 && d[1] == s[1],
            ),
        };
        let fits = shape_ok && down_ok && u[1] == d[0] && u[0] == s[0];
        if !fits {
            return Err(Error::Lora {
                path: base.to_path_buf(),
                detail: format!(
                    "LoRA module `{}` (up {:?}, down {:?}) does not fit the checkpoint's \
                     `{key}` of shape {:?}: the LoRA was trained on a model of another size \
                     (an SD2.x or SDXL LoRA?); nothing was written",
                    m.name, u, d, s
                ),
            });
        }
    }
    if !is_float(raw.dtype) {
        return Err(Error::Lora {
            path: base.to_path_buf(),
            detail: format!(
                "`{key}` has dtype {:?}; lorafuse merges into F16, BF16, F32 or F64 weights; \
                 nothing was written",
                raw.dtype
            ),
        });
    }
    Ok(())
}
