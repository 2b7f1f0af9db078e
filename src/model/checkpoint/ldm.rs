//! Single-file (LDM / CompVis) key names to diffusers-style names, after sd15-formats.md §2.8
//! (the sources: kohya-ss/sd-scripts `library/model_util.py`, ostris/ai-toolkit's SD1 key map).
//!
//! The result is the diffusers module path with the component as prefix: `unet.…`, `vae.…`,
//! `text_encoder.…`; None for keys lorafuse ignores (`alphas_cumprod`, `betas`, the other
//! scheduler buffers, `model_ema.*`, `text_model.embeddings.position_ids`, anything unknown).
//!
//! UNet (i = level, j = layer in the level, P = layers_per_block + 1 = 3 for SD1.x):
//!   input_blocks.0.0                 conv_in
//!   input_blocks.{P·i+j+1}.0         down_blocks.i.resnets.j           (j < P-1)
//!   input_blocks.{P·i+j+1}.1         down_blocks.i.attentions.j
//!   input_blocks.{P·(i+1)}.0.op      down_blocks.i.downsamplers.0.conv
//!   middle_block.0 / .1 / .2         mid_block.resnets.0 / attentions.0 / resnets.1
//!   output_blocks.{P·i+j}.0          up_blocks.i.resnets.j             (j < P)
//!   output_blocks.{P·i+j}.1          up_blocks.i.attentions.j          (when it is not `.conv`)
//!   output_blocks.{P·i+P-1}.{1|2}.conv  up_blocks.i.upsamplers.0.conv  (2 when the block has
//!                                    an attention, so 1 only on SD1.x's up_blocks.0)
//!   time_embed.0/.2, out.0/.2        time_embedding.linear_1/_2, conv_norm_out/conv_out
//!   label_emb.0.0/.2                 add_embedding.linear_1/_2 (SDXL's text-time embedding)
//!   resnet in_layers.0, in_layers.2, emb_layers.1, out_layers.0, out_layers.3, skip_connection
//!       → norm1, conv1, time_emb_proj, norm2, conv2, conv_shortcut; attention internals keep
//!       their names.
//! VAE (L = number of levels, 4):
//!   encoder.down.i.block.j / .downsample.conv   encoder.down_blocks.i.resnets.j / .downsamplers.0.conv
//!   decoder.up.k.block.j / .upsample.conv       decoder.up_blocks.{L-1-k}.…  (reversed)
//!   mid.block_1/_2, mid.attn_1.{norm,q,k,v,proj_out}
//!       → mid_block.resnets.0/1, mid_block.attentions.0.{group_norm,to_q,to_k,to_v,to_out.0}
//!   nin_shortcut, norm_out → conv_shortcut, conv_norm_out; conv_in, conv_out, quant_conv,
//!   post_quant_conv unchanged. The mid-attention q/k/v/proj_out weights are [C, C, 1, 1]
//!   convolutions in LDM files and [C, C] Linear weights in diffusers: see [`logical_shape`].
//! Text encoder: `cond_stage_model.transformer.` + the HF CLIPTextModel name, with `text_model.`
//! inserted when a file omits it. SD2.x's OpenCLIP text tower (`cond_stage_model.model.`):
//! see [`open_clip`].

use super::detect::{OPEN_CLIP_PREFIX, TEXT_ENCODER_PREFIX, UNET_PREFIX, VAE_PREFIX};

/// What the index arithmetic above depends on, read from the file's own keys so that small
/// models of the same topology map too.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LdmLayout {
    pub unet_layers_per_block: usize,
    pub unet_levels: usize,
    pub vae_levels: usize,
}

impl LdmLayout {
    /// SD1.x: 4 UNet levels of 2 layers, 4 VAE levels.
    pub const SD15: LdmLayout = LdmLayout {
        unet_layers_per_block: 2,
        unet_levels: 4,
        vae_levels: 4,
    };

    /// From the positions of the downsamplers (`input_blocks.{P·(i+1)}.0.op`) and the number of
    /// VAE decoder levels; SD1.5's values for what the keys do not show.
    pub fn infer<'a>(keys: impl IntoIterator<Item = &'a str>) -> LdmLayout {
        let mut ops = Vec::new();
        let mut max_input = 0;
        let mut vae_max = None::<usize>;
        for k in keys {
            if let Some(rest) = k.strip_prefix(UNET_PREFIX) {
                if let Some((idx, tail)) = index_after(rest, "input_blocks.") {
                    max_input = max_input.max(idx);
                    if tail.starts_with("0.op.") {
                        ops.push(idx);
                    }
                }
            } else if let Some(rest) = k.strip_prefix(VAE_PREFIX) {
                let idx = index_after(rest, "decoder.up.").or(index_after(rest, "encoder.down."));
                if let Some((idx, _)) = idx {
                    vae_max = Some(vae_max.map_or(idx, |m| m.max(idx)));
                }
            }
        }
        ops.sort_unstable();
        ops.dedup();
        let (lpb, levels) = match ops.first() {
            Some(&first) if first >= 2 => (first - 1, ops.len() + 1),
            Some(_) => (Self::SD15.unet_layers_per_block, Self::SD15.unet_levels),
            None if max_input > 0 => (max_input, 1),
            None => (Self::SD15.unet_layers_per_block, Self::SD15.unet_levels),
        };
        LdmLayout {
            unet_layers_per_block: lpb,
            unet_levels: levels,
            vae_levels: vae_max.map_or(Self::SD15.vae_levels, |m| m + 1),
        }
    }
}

/// The diffusers-style name of an LDM key, or None when lorafuse ignores it.
pub fn ldm_to_diffusers(key: &str, layout: &LdmLayout) -> Option<String> {
    if let Some(rest) = key.strip_prefix(UNET_PREFIX) {
        return unet(rest, layout).map(|n| format!("unet.{n}"));
    }
    if let Some(rest) = key.strip_prefix(VAE_PREFIX) {
        return vae(rest, layout.vae_levels).map(|n| format!("vae.{n}"));
    }
    if let Some(rest) = key.strip_prefix(TEXT_ENCODER_PREFIX) {
        return text_encoder(rest);
    }
    None
}

/// A CLIPTextModel state-dict name (with or without `text_model.`) to `text_encoder.text_model.…`;
/// None for the `position_ids` buffer.
pub fn text_encoder(rest: &str) -> Option<String> {
    text_encoder_at("text_encoder", rest)
}

/// [`text_encoder`] under another component prefix (SDXL's `text_encoder_2`).
pub fn text_encoder_at(prefix: &str, rest: &str) -> Option<String> {
    let rest = rest.strip_prefix("text_model.").unwrap_or(rest);
    if rest == "embeddings.position_ids" {
        return None;
    }
    let known = ["embeddings.", "encoder.layers.", "final_layer_norm."];
    known
        .iter()
        .any(|p| rest.starts_with(p))
        .then(|| format!("{prefix}.text_model.{rest}"))
}

/// What an OpenCLIP text-tower tensor becomes in the CLIPTextModel layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpenClipName {
    /// One tensor under this name.
    One(String),
    /// The fused attention input projection `attn.in_proj_{weight,bias}` [3·D, …]: its thirds
    /// along the first axis are q_proj, k_proj and v_proj, named in that order.
    Fused([String; 3]),
    /// A matrix stored transposed: OpenCLIP's `text_projection` [width, projection], used as
    /// `x @ P`, is CLIPTextModelWithProjection's Linear weight Pᵀ.
    Transposed(String),
}

impl OpenClipName {
    /// Adds the stored tensor `stored` of `file` to `w` under this name (or names).
    pub(crate) fn insert_into(
        self,
        w: &mut super::Weights,
        file: &std::sync::Arc<super::safetensors::SafetensorsFile>,
        stored: &str,
    ) {
        match self {
            OpenClipName::One(name) => {
                let shape = file.tensor_info(stored).map(|i| i.shape.clone());
                w.insert(name, file, stored, shape.unwrap_or_default());
            }
            OpenClipName::Fused(parts) => {
                for (i, name) in parts.into_iter().enumerate() {
                    w.insert_part(name, file, stored, (i, 3));
                }
            }
            OpenClipName::Transposed(name) => w.insert_transposed(name, file, stored),
        }
    }
}

/// Which CLIPTextModel an OpenCLIP text tower becomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenClipTarget<'a> {
    /// The names' component prefix ("text_encoder").
    pub prefix: &'a str,
    /// How many of the file's residual blocks are layers (the rest is dropped).
    pub layers: usize,
    /// Whether `text_projection` is kept, as CLIPTextModelWithProjection's.
    pub projection: bool,
}

impl OpenClipTarget<'static> {
    /// SD2.x: `text_encoder.…`, the last of the file's `blocks` dropped, no projection.
    pub fn sd2(blocks: usize) -> Self {
        OpenClipTarget {
            prefix: "text_encoder",
            layers: blocks.saturating_sub(1),
            projection: false,
        }
    }
}

/// The number of OpenCLIP residual blocks a single file holds (`transformer.resblocks.{i}.`).
pub fn open_clip_blocks<'a>(keys: impl IntoIterator<Item = &'a str>) -> usize {
    open_clip_blocks_at(keys, OPEN_CLIP_PREFIX)
}

/// [`open_clip_blocks`] of a tower under another prefix (SDXL's
/// `conditioner.embedders.1.model.`).
pub fn open_clip_blocks_at<'a>(keys: impl IntoIterator<Item = &'a str>, prefix: &str) -> usize {
    keys.into_iter()
        .filter_map(|k| k.strip_prefix(prefix))
        .filter_map(|r| index_after(r, "transformer.resblocks."))
        .map(|(i, _)| i + 1)
        .max()
        .unwrap_or(0)
}

/// An SD2.x text-encoder key (OpenCLIP ViT-H/14's text tower under `cond_stage_model.model.`)
/// as `text_encoder.text_model.…` names of transformers' CLIPTextModel, as diffusers'
/// `convert_open_clip_checkpoint` and sd-scripts' `convert_ldm_clip_checkpoint_v2` map it:
///   token_embedding.weight                  embeddings.token_embedding.weight
///   positional_embedding                    embeddings.position_embedding.weight
///   transformer.resblocks.i.ln_1 / ln_2     encoder.layers.i.layer_norm1 / layer_norm2
///   transformer.resblocks.i.attn.in_proj_*  encoder.layers.i.self_attn.{q,k,v}_proj.* (thirds)
///   transformer.resblocks.i.attn.out_proj   encoder.layers.i.self_attn.out_proj
///   transformer.resblocks.i.mlp.c_fc / c_proj  encoder.layers.i.mlp.fc1 / fc2
///   ln_final                                final_layer_norm
/// SD2.x conditions on the penultimate block's output through `ln_final` (LDM's
/// `FrozenOpenCLIPEmbedder` with `layer="penultimate"`), so the last of the file's `blocks`
/// residual blocks is dropped (None) and the remaining ones are the whole encoder, as in
/// diffusers' SD2 `text_encoder` (23 layers of ViT-H's 24): its last hidden state is what SD2
/// reads. `text_projection`, `logit_scale` and `attn_mask` are unused (None).
pub fn open_clip(rest: &str, blocks: usize) -> Option<OpenClipName> {
    open_clip_as(rest, &OpenClipTarget::sd2(blocks))
}

/// [`open_clip`] for any [`OpenClipTarget`]: SDXL's second encoder keeps every block (its
/// pooled output reads the last) and its `text_projection` ([`OpenClipName::Transposed`]:
/// `{prefix}.text_projection.weight`), under `text_encoder_2.…`.
pub fn open_clip_as(rest: &str, target: &OpenClipTarget) -> Option<OpenClipName> {
    let te = |n: &str| format!("{}.text_model.{n}", target.prefix);
    if rest == "text_projection" {
        return target.projection.then(|| {
            OpenClipName::Transposed(format!("{}.text_projection.weight", target.prefix))
        });
    }
    if rest == "positional_embedding" {
        return Some(OpenClipName::One(te(
            "embeddings.position_embedding.weight",
        )));
    }
    if rest == "token_embedding.weight" {
        return Some(OpenClipName::One(te("embeddings.token_embedding.weight")));
    }
    if let Some(t) = rest.strip_prefix("ln_final.") {
        return Some(OpenClipName::One(te(&format!("final_layer_norm.{t}"))));
    }
    let (i, t) = index_after(rest, "transformer.resblocks.")?;
    if i >= target.layers {
        return None;
    }
    let layer = format!("encoder.layers.{i}");
    if let Some(kind) = t.strip_prefix("attn.in_proj_") {
        if kind != "weight" && kind != "bias" {
            return None;
        }
        return Some(OpenClipName::Fused(
            ["q_proj", "k_proj", "v_proj"].map(|p| te(&format!("{layer}.self_attn.{p}.{kind}"))),
        ));
    }
    const NAMES: [(&str, &str); 5] = [
        ("ln_1.", "layer_norm1."),
        ("ln_2.", "layer_norm2."),
        ("attn.out_proj.", "self_attn.out_proj."),
        ("mlp.c_fc.", "mlp.fc1."),
        ("mlp.c_proj.", "mlp.fc2."),
    ];
    NAMES.iter().find_map(|(open, hf)| {
        t.strip_prefix(open)
            .map(|w| OpenClipName::One(te(&format!("{layer}.{hf}{w}"))))
    })
}

/// The shape a tensor has under its diffusers name: the VAE mid-attention's q/k/v/out weights
/// are 1x1 convolutions [C, C, 1, 1] in LDM files (and some old diffusers files) but Linear
/// [C, C] in diffusers. Every other tensor keeps its stored shape.
pub fn logical_shape(name: &str, stored: &[usize]) -> Vec<usize> {
    let is_vae_attn_linear = name.starts_with("vae.")
        && name.contains(".mid_block.attentions.0.")
        && [
            ".to_q.weight",
            ".to_k.weight",
            ".to_v.weight",
            ".to_out.0.weight",
        ]
        .iter()
        .any(|s| name.ends_with(s));
    match stored {
        [a, b, 1, 1] if is_vae_attn_linear => vec![*a, *b],
        _ => stored.to_vec(),
    }
}

/// `prefix` then a decimal index then '.': the index and what follows the dot.
fn index_after<'a>(s: &'a str, prefix: &str) -> Option<(usize, &'a str)> {
    let rest = s.strip_prefix(prefix)?;
    let (num, tail) = rest.split_once('.')?;
    if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((num.parse().ok()?, tail))
}

fn unet(rest: &str, layout: &LdmLayout) -> Option<String> {
    let per = layout.unet_layers_per_block + 1;
    let lpb = layout.unet_layers_per_block;
    let levels = layout.unet_levels;
    if let Some(n) = UNET_TOP
        .iter()
        .find_map(|(ldm, diffusers)| swap_prefix(rest, ldm, diffusers))
    {
        return Some(n);
    }
    if let Some((k, tail)) = index_after(rest, "input_blocks.") {
        let (sub, t) = index_after(tail, "")?;
        if k == 0 {
            return (sub == 0).then(|| format!("conv_in.{t}"));
        }
        let (i, j) = ((k - 1) / per, (k - 1) % per);
        if i >= levels {
            return None;
        }
        return match (j < lpb, sub) {
            (true, 0) => Some(format!("down_blocks.{i}.resnets.{j}.{}", resnet(t)?)),
            (true, 1) => Some(format!("down_blocks.{i}.attentions.{j}.{t}")),
            (false, 0) => {
                let t = t.strip_prefix("op.")?;
                Some(format!("down_blocks.{i}.downsamplers.0.conv.{t}"))
            }
            _ => None,
        };
    }
    if let Some((k, t)) = index_after(rest, "middle_block.") {
        return match k {
            0 => Some(format!("mid_block.resnets.0.{}", resnet(t)?)),
            1 => Some(format!("mid_block.attentions.0.{t}")),
            2 => Some(format!("mid_block.resnets.1.{}", resnet(t)?)),
            _ => None,
        };
    }
    if let Some((k, tail)) = index_after(rest, "output_blocks.") {
        let (sub, t) = index_after(tail, "")?;
        let (i, j) = (k / per, k % per);
        if i >= levels {
            return None;
        }
        if sub == 0 {
            return Some(format!("up_blocks.{i}.resnets.{j}.{}", resnet(t)?));
        }
        if let Some(t) = t.strip_prefix("conv.") {
            // The upsampler comes after the resnet and, where there is one, the attention.
            return (j == lpb && i + 1 < levels)
                .then(|| format!("up_blocks.{i}.upsamplers.0.conv.{t}"));
        }
        return (sub == 1).then(|| format!("up_blocks.{i}.attentions.{j}.{t}"));
    }
    None
}

/// The UNet's modules outside the levels, (LDM, diffusers); conv_in is `input_blocks.0.0`.
const UNET_TOP: [(&str, &str); 6] = [
    ("time_embed.0", "time_embedding.linear_1"),
    ("time_embed.2", "time_embedding.linear_2"),
    ("label_emb.0.0", "add_embedding.linear_1"),
    ("label_emb.0.2", "add_embedding.linear_2"),
    ("out.0", "conv_norm_out"),
    ("out.2", "conv_out"),
];

/// A UNet resnet's sub-modules, (LDM, diffusers).
const RESNET: [(&str, &str); 6] = [
    ("in_layers.0", "norm1"),
    ("in_layers.2", "conv1"),
    ("emb_layers.1", "time_emb_proj"),
    ("out_layers.0", "norm2"),
    ("out_layers.3", "conv2"),
    ("skip_connection", "conv_shortcut"),
];

/// `name` with its leading module `from` (the whole name, or followed by '.') replaced by `to`.
fn swap_prefix(name: &str, from: &str, to: &str) -> Option<String> {
    let rest = name.strip_prefix(from)?;
    (rest.is_empty() || rest.starts_with('.')).then(|| format!("{to}{rest}"))
}

/// A UNet resnet's LDM sub-module name to diffusers'.
fn resnet(t: &str) -> Option<String> {
    RESNET
        .iter()
        .find_map(|(ldm, diffusers)| swap_prefix(t, ldm, diffusers))
}

/// The LDM/SGM name of a diffusers UNet module or tensor name (without `unet.`): the inverse of
/// [`ldm_to_diffusers`]'s UNet part, for kohya's SDXL LoRA names, which sd-scripts takes from
/// its SGM-layout UNet (`down_blocks.1.attentions.0.proj_in` is
/// `input_blocks.4.1.proj_in`). `up_attention[i]`: whether up level i has attentions (its
/// upsampler is then the third module of its last output block, else the second). None for a
/// name that is not a UNet module's.
pub fn diffusers_to_ldm_unet(
    name: &str,
    layout: &LdmLayout,
    up_attention: &[bool],
) -> Option<String> {
    let lpb = layout.unet_layers_per_block;
    let per = lpb + 1;
    if let Some(n) = swap_prefix(name, "conv_in", "input_blocks.0.0") {
        return Some(n);
    }
    if let Some(n) = UNET_TOP
        .iter()
        .find_map(|(ldm, diffusers)| swap_prefix(name, diffusers, ldm))
    {
        return Some(n);
    }
    let resnet = |t: &str| {
        RESNET
            .iter()
            .find_map(|(ldm, diffusers)| swap_prefix(t, diffusers, ldm))
    };
    if let Some((i, t)) = index_after(name, "down_blocks.") {
        if let Some(t) = t.strip_prefix("downsamplers.0.conv") {
            return Some(format!("input_blocks.{}.0.op{t}", per * (i + 1)));
        }
        if let Some((j, t)) = index_after(t, "resnets.") {
            return Some(format!("input_blocks.{}.0.{}", per * i + j + 1, resnet(t)?));
        }
        let (j, t) = index_after(t, "attentions.")?;
        return Some(format!("input_blocks.{}.1.{t}", per * i + j + 1));
    }
    if let Some(t) = name.strip_prefix("mid_block.") {
        return match (index_after(t, "resnets."), index_after(t, "attentions.")) {
            (Some((k @ 0..=1, t)), _) => Some(format!("middle_block.{}.{}", 2 * k, resnet(t)?)),
            (_, Some((0, t))) => Some(format!("middle_block.1.{t}")),
            _ => None,
        };
    }
    let (i, t) = index_after(name, "up_blocks.")?;
    if let Some(t) = t.strip_prefix("upsamplers.0.conv") {
        let sub = if *up_attention.get(i)? { 2 } else { 1 };
        return Some(format!("output_blocks.{}.{sub}.conv{t}", per * i + lpb));
    }
    if let Some((j, t)) = index_after(t, "resnets.") {
        return Some(format!("output_blocks.{}.0.{}", per * i + j, resnet(t)?));
    }
    let (j, t) = index_after(t, "attentions.")?;
    Some(format!("output_blocks.{}.1.{t}", per * i + j))
}

fn vae(rest: &str, levels: usize) -> Option<String> {
    for same in ["quant_conv.", "post_quant_conv."] {
        if rest.starts_with(same) {
            return Some(rest.to_string());
        }
    }
    let (side, t) = if let Some(t) = rest.strip_prefix("encoder.") {
        ("encoder", t)
    } else {
        ("decoder", rest.strip_prefix("decoder.")?)
    };
    let inner = vae_inner(side, t, levels)?;
    Some(format!("{side}.{inner}"))
}

fn vae_inner(side: &str, t: &str, levels: usize) -> Option<String> {
    for same in ["conv_in.", "conv_out."] {
        if t.starts_with(same) {
            return Some(t.to_string());
        }
    }
    if let Some(r) = t.strip_prefix("norm_out.") {
        return Some(format!("conv_norm_out.{r}"));
    }
    if let Some(r) = t.strip_prefix("mid.block_1.") {
        return Some(format!("mid_block.resnets.0.{}", vae_resnet(r)));
    }
    if let Some(r) = t.strip_prefix("mid.block_2.") {
        return Some(format!("mid_block.resnets.1.{}", vae_resnet(r)));
    }
    if let Some(r) = t.strip_prefix("mid.attn_1.") {
        const NAMES: [(&str, &str); 5] = [
            ("norm.", "group_norm."),
            ("q.", "to_q."),
            ("k.", "to_k."),
            ("v.", "to_v."),
            ("proj_out.", "to_out.0."),
        ];
        return NAMES.iter().find_map(|(ldm, diffusers)| {
            r.strip_prefix(ldm)
                .map(|w| format!("mid_block.attentions.0.{diffusers}{w}"))
        });
    }
    let (blocks, level_of) = match side {
        "encoder" => ("down", None),
        _ => ("up", Some(levels)),
    };
    let (k, r) = index_after(t, &format!("{blocks}."))?;
    let level = match level_of {
        None => k,
        Some(levels) => levels.checked_sub(1)?.checked_sub(k)?,
    };
    let diffusers_blocks = format!("{blocks}_blocks.{level}");
    if let Some((j, w)) = index_after(r, "block.") {
        return Some(format!("{diffusers_blocks}.resnets.{j}.{}", vae_resnet(w)));
    }
    let sampler = if blocks == "down" {
        "downsample"
    } else {
        "upsample"
    };
    let w = r.strip_prefix(&format!("{sampler}.conv."))?;
    Some(format!("{diffusers_blocks}.{sampler}rs.0.conv.{w}"))
}

/// A VAE resnet's LDM sub-module name to diffusers': only the shortcut differs.
fn vae_resnet(t: &str) -> String {
    match t.strip_prefix("nin_shortcut.") {
        Some(r) => format!("conv_shortcut.{r}"),
        None => t.to_string(),
    }
}
