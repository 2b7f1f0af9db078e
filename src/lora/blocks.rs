//! Block-wise ranks, alphas and learning rates, as sd-scripts' `networks.lora` defines them
//! (`block_dims`, `block_alphas`, `conv_block_dims`, `conv_block_alphas`, `down_lr_weight`,
//! `mid_lr_weight`, `up_lr_weight`, `block_lr_zero_threshold`), for each family's
//! [`BlockLayout`].
//!
//! SD1.x/SD2.x: the UNet is cut into [`BLOCKS`] = 25 blocks, numbered as kohya numbers them
//! (and as the A1111 "LoRA block weight" presets name them IN00–IN11, MID, OUT00–OUT11):
//! block 1 + 3i + j is down block i's j-th ResNet/attention pair (its down-sampler is j = 2),
//! block 12 the mid block, block 13 + 3i + j up block i's j-th pair (its up-sampler shares
//! j = 2). Block 0 (conv_in) holds no adapter.
//!
//! SDXL: [`SDXL_BLOCKS`] = 23 blocks in SGM's order (`get_block_index` with `is_sdxl`): 0 the
//! embeddings, 1–9 `input_blocks` 0–8, 10–12 `middle_block` 0–2, 13–21 `output_blocks` 0–8,
//! 22 `out`; 9 lr weights a side and 3 for the middle, the list framed by 1.0 for blocks 0
//! and 22, as sd-scripts frames it.
//!
//! The text encoders' adapters are outside the blocks.
//!
//! What kohya does with them, and so lorafuse:
//! - with `block_dims` or any lr weight, every UNet adapter takes its block's rank and alpha
//!   (`block_dims` / `block_alphas`, else `lora_rank` / `lora_alpha` everywhere); the 3x3 conv
//!   adapters take `conv_block_dims` / `conv_block_alphas` (else `conv_dim` / `conv_alpha`);
//!   a rank of 0 leaves the layer without an adapter; an alpha of 0 means alpha = rank;
//! - the lr weights multiply the UNet's learning rate block by block (one optimizer group per
//!   block); a weight ≤ `block_lr_zero_threshold` is 0, and a block of weight 0 gets no
//!   adapters at all;
//! - `down_lr_weight` / `up_lr_weight` are one weight per block of the side (12; SDXL 9;
//!   fewer are filled with 1.0) or a curve over them: `cosine`, `sine`, `linear`,
//!   `reverse_linear`, `zeros`, each optionally `+base` (added to every weight);
//!   `mid_lr_weight` is one weight (SDXL: up to 3).
//!
//! The lengths a configuration may give are checked against the model's layout before any
//! work ([`check_lengths`]), since the family is known only once the model is.

use std::fmt;

use crate::config::TrainConfig;
use crate::error::Error;
use crate::model::checkpoint::Generation;

/// Blocks of an SD1.x/SD2.x UNet in kohya's numbering: IN00–IN11, MID, OUT00–OUT11.
pub const BLOCKS: usize = 25;
/// Weights in `down_lr_weight` (and `up_lr_weight`): one per down (up) block, IN00–IN11.
pub const SIDE_BLOCKS: usize = 12;
/// kohya's index of the mid block.
pub const MID: usize = SIDE_BLOCKS;
/// Weights in an SDXL side: input_blocks (output_blocks) 0–8.
const SDXL_SIDE_BLOCKS: usize = 9;
/// Weights of SDXL's middle: middle_block 0–2.
const SDXL_MID_BLOCKS: usize = 3;

/// How a family's UNet is cut into sd-scripts' blocks: see the module documentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockLayout {
    /// SD1.x and SD2.x: 25 blocks, 12 a side, one mid block.
    Sd,
    /// SDXL: 23 blocks, 9 a side, 3 in the middle.
    Sdxl,
}

impl BlockLayout {
    pub const ALL: [BlockLayout; 2] = [BlockLayout::Sd, BlockLayout::Sdxl];

    /// The layout of a model generation.
    pub fn of(generation: Generation) -> BlockLayout {
        match generation {
            Generation::Sdxl => BlockLayout::Sdxl,
            _ => BlockLayout::Sd,
        }
    }
    /// Entries in `block_dims` and the other per-block lists.
    pub fn blocks(self) -> usize {
        match self {
            BlockLayout::Sd => BLOCKS,
            BlockLayout::Sdxl => SDXL_BLOCKS,
        }
    }
    /// Weights in `down_lr_weight` (and `up_lr_weight`), at most.
    pub fn side(self) -> usize {
        match self {
            BlockLayout::Sd => SIDE_BLOCKS,
            BlockLayout::Sdxl => SDXL_SIDE_BLOCKS,
        }
    }
    /// Weights in `mid_lr_weight`, at most.
    pub fn mid(self) -> usize {
        match self {
            BlockLayout::Sd => 1,
            BlockLayout::Sdxl => SDXL_MID_BLOCKS,
        }
    }
    /// The block of the UNet adapter `name`; `None` outside the blocks (a text encoder's).
    pub fn index(self, name: &str) -> Option<usize> {
        match self {
            BlockLayout::Sd => block_index(name),
            BlockLayout::Sdxl => sdxl_block_index(name),
        }
    }
    /// The families the layout serves, for messages.
    pub fn families(self) -> &'static str {
        match self {
            BlockLayout::Sd => "SD1.x/SD2.x",
            BlockLayout::Sdxl => "SDXL",
        }
    }
    /// The blocks of a per-block list, for messages.
    fn list_names(self) -> &'static str {
        match self {
            BlockLayout::Sd => "IN00–IN11, MID, OUT00–OUT11",
            BlockLayout::Sdxl => {
                "the embeddings, input_blocks 0–8, middle_block 0–2, output_blocks 0–8, out"
            }
        }
    }
}

/// Refuses per-block lists of `cfg` whose lengths do not fit `layout` (the model's), naming
/// the key, its length and what the family takes.
pub fn check_lengths(cfg: &TrainConfig, layout: BlockLayout) -> crate::error::Result<()> {
    let bad = |key: &'static str, len: usize, takes: String| Error::BadValue {
        op: "config",
        name: key,
        value: format!(
            "{len} values, with the {} model {}",
            layout.families(),
            cfg.base_model.display()
        ),
        expected: takes,
    };
    let n = layout.blocks();
    let lists = [
        ("block_dims", cfg.block_dims.as_ref().map(Vec::len)),
        ("block_alphas", cfg.block_alphas.as_ref().map(Vec::len)),
        (
            "conv_block_dims",
            cfg.conv_block_dims.as_ref().map(Vec::len),
        ),
        (
            "conv_block_alphas",
            cfg.conv_block_alphas.as_ref().map(Vec::len),
        ),
    ];
    for (key, len) in lists {
        if let Some(len) = len.filter(|&l| l != n) {
            let takes = format!(
                "{n} values on {}, one per block ({}), as sd-scripts numbers them",
                layout.families(),
                layout.list_names()
            );
            return Err(bad(key, len, takes));
        }
    }
    let sides = [
        ("down_lr_weight", &cfg.down_lr_weight),
        ("up_lr_weight", &cfg.up_lr_weight),
    ];
    for (key, w) in sides {
        if let Some(SideWeights::List(w)) = w {
            if w.len() > layout.side() {
                let takes = format!(
                    "at most {} weights on {} (one per block of the side; missing ones are 1),                      or a curve",
                    layout.side(),
                    layout.families()
                );
                return Err(bad(key, w.len(), takes));
            }
        }
    }
    if let Some(m) = cfg
        .mid_lr_weight
        .as_ref()
        .filter(|m| m.len() > layout.mid())
    {
        let takes = format!(
            "at most {} on {} (its middle blocks)",
            layout.mid(),
            layout.families()
        );
        return Err(bad("mid_lr_weight", m.len(), takes));
    }
    Ok(())
}

/// kohya's block of a UNet adapter named `lora_unet_<diffusers path>`; `None` for a name
/// outside the down, mid and up blocks (the text encoder's).
pub fn block_index(name: &str) -> Option<usize> {
    let rest = name.strip_prefix("lora_unet_")?;
    if rest.starts_with("mid_block_") {
        return Some(MID);
    }
    let (first, rest) = if let Some(r) = rest.strip_prefix("down_blocks_") {
        (1, r)
    } else if let Some(r) = rest.strip_prefix("up_blocks_") {
        (MID + 1, r)
    } else {
        return None;
    };
    let mut parts = rest.split('_');
    let i: usize = parts.next()?.parse().ok()?;
    let within = match parts.next()? {
        "resnets" | "attentions" => parts.next()?.parse::<usize>().ok()?,
        "downsamplers" | "upsamplers" => 2,
        _ => return None,
    };
    let at = first + 3 * i + within;
    (at < BLOCKS).then_some(at)
}

/// Blocks of an SDXL UNet in sd-scripts' numbering (networks/lora.py `get_block_index` with
/// `is_sdxl`): 0 the time and label embeddings, 1–9 `input_blocks` 0–8, 10–12 `middle_block`
/// 0–2, 13–21 `output_blocks` 0–8, 22 `out`; adapters sit in 1–21.
pub const SDXL_BLOCKS: usize = 23;

/// sd-scripts' block of an SDXL UNet adapter named `lora_unet_<SGM path>`; `None` for a name
/// outside the input, middle and output blocks.
pub fn sdxl_block_index(name: &str) -> Option<usize> {
    let rest = name.strip_prefix("lora_unet_")?;
    let (first, rest) = [
        ("input_blocks_", 1),
        ("middle_block_", 10),
        ("output_blocks_", 13),
    ]
    .iter()
    .find_map(|(p, first)| rest.strip_prefix(p).map(|r| (*first, r)))?;
    let i: usize = rest.split('_').next()?.parse().ok()?;
    let at = first + i;
    (at < SDXL_BLOCKS - 1).then_some(at)
}

/// The name of SDXL block `i` (SGM's block numbers: IN00–IN08, MID, OUT00–OUT08, as the
/// SDXL block-weight presets name them; BASE and OUT the two without adapters).
pub fn sdxl_block_name(i: usize) -> String {
    match i {
        0 => "BASE".into(),
        1..=9 => format!("IN{:02}", i - 1),
        10..=12 => "MID".into(),
        13..=21 => format!("OUT{:02}", i - 13),
        _ => "OUT".into(),
    }
}

/// The name of block `i` as the block-weight presets write it (IN00, MID, OUT11).
pub fn block_name(i: usize) -> String {
    match i {
        _ if i < MID => format!("IN{i:02}"),
        MID => "MID".into(),
        _ => format!("OUT{:02}", i - MID - 1),
    }
}

/// kohya's lr-weight curves over the 12 blocks of one side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LrCurve {
    /// sin(π/2 · (11 − i)/11) for block i of the side: 1 at the shallowest, 0 at the deepest.
    Cosine,
    /// sin(π/2 · i/11): 0 at the shallowest, 1 at the deepest.
    Sine,
    /// i/11.
    Linear,
    /// (11 − i)/11.
    ReverseLinear,
    /// 0 (with +base: base everywhere).
    Zeros,
}

impl LrCurve {
    pub const ALL: [LrCurve; 5] = [
        LrCurve::Cosine,
        LrCurve::Sine,
        LrCurve::Linear,
        LrCurve::ReverseLinear,
        LrCurve::Zeros,
    ];
    pub fn name(self) -> &'static str {
        match self {
            LrCurve::Cosine => "cosine",
            LrCurve::Sine => "sine",
            LrCurve::Linear => "linear",
            LrCurve::ReverseLinear => "reverse_linear",
            LrCurve::Zeros => "zeros",
        }
    }
    /// The `n` weights of a side, shallowest block first, each + `base`.
    fn weights(self, base: f64, n: usize) -> Vec<f64> {
        let last = (n - 1) as f64;
        let sine = |i: usize| (std::f64::consts::FRAC_PI_2 * i as f64 / last).sin();
        (0..n)
            .map(|i| {
                base + match self {
                    LrCurve::Cosine => sine(n - 1 - i),
                    LrCurve::Sine => sine(i),
                    LrCurve::Linear => i as f64 / last,
                    LrCurve::ReverseLinear => (n - 1 - i) as f64 / last,
                    LrCurve::Zeros => 0.0,
                }
            })
            .collect()
    }
}

/// `down_lr_weight` or `up_lr_weight`: weights, or a curve with its base.
#[derive(Clone, Debug, PartialEq)]
pub enum SideWeights {
    /// Up to one weight per block of the side, shallowest first; missing ones are 1.0.
    List(Vec<f64>),
    Curve {
        curve: LrCurve,
        base: f64,
    },
}

impl SideWeights {
    /// Reads kohya's text: comma-separated weights (an empty one is 0, as kohya reads it) or
    /// `curve[+base]`.
    pub fn parse(text: &str) -> Result<SideWeights, String> {
        let t = text.trim();
        if t.contains(',') {
            return parse_weights(t).map(SideWeights::List);
        }
        let (name, base) = match t.split_once('+') {
            Some((n, b)) => (
                n.trim(),
                b.trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|b| b.is_finite())
                    .ok_or_else(|| format!("\"{b}\" after + is not a number"))?,
            ),
            None => (t, 0.0),
        };
        match LrCurve::ALL.into_iter().find(|c| c.name() == name) {
            Some(curve) => Ok(SideWeights::Curve { curve, base }),
            None => Err(format!(
                "\"{t}\" is neither comma-separated weights (\"1,1,0.5,...\", one per block; \
                 kohya reads a lone number as a curve name it does not know) nor a curve \
                 ({}, optionally +base, e.g. \"cosine+0.5\")",
                LrCurve::ALL.map(LrCurve::name).join(", ")
            )),
        }
    }

    /// The `n` weights of a side, shallowest block first.
    fn resolve(&self, n: usize) -> Vec<f64> {
        match self {
            SideWeights::List(w) => pad(w, n),
            SideWeights::Curve { curve, base } => curve.weights(*base, n),
        }
    }
}

impl fmt::Display for SideWeights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SideWeights::List(w) => f.write_str(&join(w)),
            SideWeights::Curve { curve, base } if *base == 0.0 => f.write_str(curve.name()),
            SideWeights::Curve { curve, base } => write!(f, "{}+{base}", curve.name()),
        }
    }
}

/// Comma-separated numbers; an empty item is 0 (kohya's reading).
pub fn parse_weights(text: &str) -> Result<Vec<f64>, String> {
    text.split(',')
        .map(|s| {
            let s = s.trim();
            if s.is_empty() {
                return Ok(0.0);
            }
            s.parse::<f64>()
                .ok()
                .filter(|x| x.is_finite())
                .ok_or_else(|| format!("\"{s}\" is not a number"))
        })
        .collect()
}

/// Numbers as comma-separated text.
pub fn join(w: &[f64]) -> String {
    w.iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// `w` filled with 1.0 up to `n`.
fn pad(w: &[f64], n: usize) -> Vec<f64> {
    let mut out = w.to_vec();
    out.resize(n.max(w.len()), 1.0);
    out
}

/// The lr weights a configuration gives, before resolving.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LrWeightArgs {
    pub down: Option<SideWeights>,
    pub mid: Option<Vec<f64>>,
    pub up: Option<SideWeights>,
    pub zero_threshold: f64,
}

impl LrWeightArgs {
    /// Whether any lr weight is given (else one UNet group, kohya's default).
    pub fn given(&self) -> bool {
        self.down.is_some() || self.mid.is_some() || self.up.is_some()
    }

    /// One weight per block of `layout` (25, or SDXL's 23: its blocks 0 and 22 at 1.0, as
    /// sd-scripts frames the list), or `None` when no weight is given.
    pub fn resolve(&self, layout: BlockLayout) -> Option<Vec<f64>> {
        if !self.given() {
            return None;
        }
        let n = layout.side();
        let side =
            |s: &Option<SideWeights>| s.as_ref().map_or_else(|| vec![1.0; n], |w| w.resolve(n));
        let mid = self
            .mid
            .as_deref()
            .map_or_else(|| vec![1.0; layout.mid()], |m| pad(m, layout.mid()));
        let zero = |w: f64| if w > self.zero_threshold { w } else { 0.0 };
        let weights = side(&self.down)
            .into_iter()
            .chain(mid)
            .chain(side(&self.up))
            .map(zero);
        Some(match layout {
            BlockLayout::Sd => weights.collect(),
            BlockLayout::Sdxl => std::iter::once(1.0)
                .chain(weights)
                .chain(std::iter::once(1.0))
                .collect(),
        })
    }
}

/// One adapter's rank and alpha.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RankAlpha {
    pub rank: usize,
    pub alpha: f64,
}

impl RankAlpha {
    /// kohya's alpha of 0 (or none) is the rank: a scale of 1.
    fn new(rank: usize, alpha: f64) -> RankAlpha {
        let alpha = if alpha == 0.0 { rank as f64 } else { alpha };
        RankAlpha { rank, alpha }
    }
}

/// The rank and alpha of each block, for the linear (and 1x1) adapters and the 3x3 conv ones.
#[derive(Clone, Debug, PartialEq)]
pub struct BlockRanks {
    pub layout: BlockLayout,
    pub linear: Vec<RankAlpha>,
    /// `None`: no conv adapters.
    pub conv: Option<Vec<RankAlpha>>,
    /// The rank and alpha of a linear adapter outside the blocks (the text encoder's).
    pub outside: RankAlpha,
}

impl BlockRanks {
    /// The rank and alpha of the linear (or 1x1) adapter named `name`.
    pub fn linear_of(&self, name: &str) -> RankAlpha {
        self.layout
            .index(name)
            .map_or(self.outside, |b| self.linear[b])
    }
    /// The rank and alpha of the 3x3 conv adapter named `name`: rank 0 (none) without conv
    /// adapters or outside the blocks.
    pub fn conv_of(&self, name: &str) -> RankAlpha {
        let none = RankAlpha {
            rank: 0,
            alpha: 0.0,
        };
        match (&self.conv, self.layout.index(name)) {
            (Some(c), Some(b)) => c[b],
            _ => none,
        }
    }
}

/// What a configuration says about ranks (the keys, as given).
#[derive(Clone, Debug, Default)]
pub struct BlockRankArgs<'a> {
    pub rank: usize,
    pub alpha: f64,
    pub conv_dim: Option<usize>,
    /// `conv_alpha`; `None` is a scale of 1.
    pub conv_alpha: Option<f64>,
    pub block_dims: Option<&'a [usize]>,
    pub block_alphas: Option<&'a [f64]>,
    pub conv_block_dims: Option<&'a [usize]>,
    pub conv_block_alphas: Option<&'a [f64]>,
}

impl BlockRankArgs<'_> {
    /// The ranks per block of `layout`; blocks of lr weight 0 (`lr`) get rank 0, as kohya
    /// removes them. Lengths are checked before ([`check_lengths`]); a list too short would
    /// leave its last blocks at the whole-model rank and alpha.
    pub fn resolve(&self, layout: BlockLayout, lr: Option<&[f64]>) -> BlockRanks {
        let each = |dims: Option<&[usize]>, alphas: Option<&[f64]>, rank: usize, alpha: f64| {
            (0..layout.blocks())
                .map(|i| {
                    let r = dims.and_then(|d| d.get(i).copied()).unwrap_or(rank);
                    let a = alphas.and_then(|a| a.get(i).copied()).unwrap_or(alpha);
                    let off = lr.is_some_and(|w| w.get(i) == Some(&0.0));
                    RankAlpha::new(if off { 0 } else { r }, a)
                })
                .collect::<Vec<_>>()
        };
        // As sd-scripts: the block keys count only with block_dims or lr weights, and
        // conv_block_alphas only with conv_block_dims.
        let block_mode = self.block_dims.is_some() || lr.is_some();
        let linear = each(
            self.block_dims,
            self.block_alphas.filter(|_| block_mode),
            self.rank,
            self.alpha,
        );
        let conv_dims = self.conv_block_dims.filter(|_| block_mode);
        let conv = match (conv_dims, self.conv_dim) {
            (None, None) => None,
            (dims, dim) => {
                let dim = dim.unwrap_or(0);
                let alpha = self.conv_alpha.unwrap_or(0.0);
                let alphas = self.conv_block_alphas.filter(|_| dims.is_some());
                Some(each(dims, alphas, dim, alpha))
            }
        };
        BlockRanks {
            layout,
            linear,
            conv,
            outside: RankAlpha::new(self.rank, self.alpha),
        }
    }
}

impl LrWeightArgs {
    /// The lr-weight keys of a configuration.
    pub fn of(cfg: &TrainConfig) -> LrWeightArgs {
        LrWeightArgs {
            down: cfg.down_lr_weight.clone(),
            mid: cfg.mid_lr_weight.clone(),
            up: cfg.up_lr_weight.clone(),
            zero_threshold: cfg.block_lr_zero_threshold,
        }
    }
}

impl BlockRankArgs<'_> {
    /// The rank keys of a configuration.
    pub fn of(cfg: &TrainConfig) -> BlockRankArgs<'_> {
        BlockRankArgs {
            rank: cfg.lora_rank,
            alpha: cfg.lora_alpha,
            conv_dim: cfg.conv_dim,
            conv_alpha: cfg.conv_alpha,
            block_dims: cfg.block_dims.as_deref(),
            block_alphas: cfg.block_alphas.as_deref(),
            conv_block_dims: cfg.conv_block_dims.as_deref(),
            conv_block_alphas: cfg.conv_block_alphas.as_deref(),
        }
    }
}

/// The block-wise keys a configuration gives, as sd-scripts' network_args texts (for
/// `ss_network_args`): comma-separated numbers, or a curve's name.
pub fn network_args(cfg: &TrainConfig) -> Vec<(&'static str, String)> {
    let whole = |d: &[usize]| d.iter().map(usize::to_string).collect::<Vec<_>>().join(",");
    let mut out = Vec::new();
    let mut put = |k: &'static str, v: Option<String>| out.extend(v.map(|v| (k, v)));
    put("block_dims", cfg.block_dims.as_deref().map(whole));
    put("block_alphas", cfg.block_alphas.as_deref().map(join));
    put("conv_block_dims", cfg.conv_block_dims.as_deref().map(whole));
    put(
        "conv_block_alphas",
        cfg.conv_block_alphas.as_deref().map(join),
    );
    put(
        "down_lr_weight",
        cfg.down_lr_weight.as_ref().map(|w| w.to_string()),
    );
    put("mid_lr_weight", cfg.mid_lr_weight.as_deref().map(join));
    put(
        "up_lr_weight",
        cfg.up_lr_weight.as_ref().map(|w| w.to_string()),
    );
    let weighted = LrWeightArgs::of(cfg).given();
    if weighted && cfg.block_lr_zero_threshold != 0.0 {
        put(
            "block_lr_zero_threshold",
            Some(cfg.block_lr_zero_threshold.to_string()),
        );
    }
    out
}

/// The adapters of one block as a file holds them (`inspect`): the block's name (IN01…OUT11;
/// `TE` for the text encoder's, `other` for names outside both), its module count, and its
/// distinct ranks and alphas (a module without alpha counts as alpha = rank, as loaders read
/// it), ascending.
#[derive(Clone, Debug, PartialEq)]
pub struct BlockRow {
    pub block: String,
    pub modules: usize,
    pub ranks: Vec<usize>,
    pub alphas: Vec<f64>,
}

/// [`BlockRow`]s of (module name, rank, alpha) triples: the UNet's blocks in order (SD1.x/
/// SD2.x's 25 or SDXL's), then the text encoders' (TE; SDXL's TE1 and TE2), then others.
pub fn rows<'a>(modules: impl IntoIterator<Item = (&'a str, usize, Option<f64>)>) -> Vec<BlockRow> {
    let mut by: std::collections::BTreeMap<(usize, String), BlockRow> = Default::default();
    for (name, rank, alpha) in modules {
        let key = match (block_index(name), sdxl_block_index(name)) {
            (Some(b), _) => (b, block_name(b)),
            (None, Some(b)) => (b, sdxl_block_name(b)),
            _ => match ["lora_te1_", "lora_te2_", "lora_te_"]
                .iter()
                .position(|p| name.starts_with(p))
            {
                Some(i) => (BLOCKS + i, ["TE1", "TE2", "TE"][i].to_string()),
                None => (BLOCKS + 3, "other".to_string()),
            },
        };
        let row = by.entry(key.clone()).or_insert_with(|| BlockRow {
            block: key.1,
            modules: 0,
            ranks: Vec::new(),
            alphas: Vec::new(),
        });
        row.modules += 1;
        row.ranks.push(rank);
        row.alphas.push(alpha.unwrap_or(rank as f64));
    }
    by.into_values()
        .map(|mut r| {
            r.ranks.sort_unstable();
            r.ranks.dedup();
            r.alphas.sort_by(f64::total_cmp);
            r.alphas.dedup();
            r
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sdxl_block_numbers_are_sd_scripts() {
        let at = |n: &str| sdxl_block_index(&format!("lora_unet_{n}"));
        assert_eq!(at("input_blocks_4_1_proj_in"), Some(5));
        assert_eq!(
            at("input_blocks_8_1_transformer_blocks_9_ff_net_2"),
            Some(9)
        );
        assert_eq!(at("middle_block_1_proj_out"), Some(11));
        assert_eq!(
            at("output_blocks_0_1_transformer_blocks_0_attn1_to_q"),
            Some(13)
        );
        assert_eq!(at("output_blocks_8_0_in_layers_2"), Some(21));
        assert_eq!(at("output_blocks_9_0_in_layers_2"), None);
        assert_eq!(at("down_blocks_0_resnets_0_conv1"), None);
        assert_eq!(
            sdxl_block_index("lora_te1_text_model_encoder_layers_0_mlp_fc1"),
            None
        );
        let names: Vec<String> = [5, 9, 10, 12, 13, 21].map(sdxl_block_name).into();
        assert_eq!(names, ["IN04", "IN08", "MID", "MID", "OUT00", "OUT08"]);
        let rows = rows([
            ("lora_unet_output_blocks_2_1_proj_in", 8, Some(4.0)),
            ("lora_te2_text_model_encoder_layers_0_mlp_fc1", 4, None),
            ("lora_unet_input_blocks_4_1_proj_in", 8, Some(4.0)),
            ("lora_te1_text_model_encoder_layers_0_mlp_fc1", 4, None),
        ]);
        let order: Vec<&str> = rows.iter().map(|r| r.block.as_str()).collect();
        assert_eq!(order, ["IN04", "OUT02", "TE1", "TE2"]);
    }

    #[test]
    fn kohya_block_numbers() {
        let at = |n: &str| block_index(&format!("lora_unet_{n}"));
        assert_eq!(
            at("down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"),
            Some(1)
        );
        assert_eq!(at("down_blocks_0_resnets_1_conv1"), Some(2));
        assert_eq!(at("down_blocks_0_downsamplers_0_conv"), Some(3));
        assert_eq!(at("down_blocks_3_resnets_1_conv2"), Some(11));
        assert_eq!(at("mid_block_attentions_0_proj_in"), Some(12));
        assert_eq!(at("up_blocks_0_resnets_0_conv1"), Some(13));
        assert_eq!(at("up_blocks_0_upsamplers_0_conv"), Some(15));
        assert_eq!(at("up_blocks_3_attentions_2_proj_out"), Some(24));
        assert_eq!(
            block_index("lora_te_text_model_encoder_layers_0_mlp_fc1"),
            None
        );
        assert_eq!(block_name(0), "IN00");
        assert_eq!(block_name(12), "MID");
        assert_eq!(block_name(24), "OUT11");
    }

    #[test]
    fn curves_as_kohya_computes_them() {
        // sd-scripts: cosine = [sin(pi*(i/11)/2) + base for i in reversed(range(12))].
        let c = LrCurve::Cosine.weights(0.5, 12);
        assert!((c[0] - 1.5).abs() < 1e-12 && (c[11] - 0.5).abs() < 1e-12);
        let s = LrCurve::Sine.weights(0.0, 12);
        assert!((s[0]).abs() < 1e-12 && (s[11] - 1.0).abs() < 1e-12);
        let expected = (std::f64::consts::FRAC_PI_2 * 3.0 / 11.0).sin();
        assert!((s[3] - expected).abs() < 1e-12);
        assert_eq!(LrCurve::Linear.weights(0.0, 12)[11], 1.0);
        assert_eq!(LrCurve::ReverseLinear.weights(0.0, 12)[0], 1.0);
        assert_eq!(LrCurve::Zeros.weights(0.25, 12), vec![0.25; 12]);
    }

    #[test]
    fn side_weights_read_as_kohya_reads_them() {
        assert_eq!(
            SideWeights::parse("1,,0.5").unwrap(),
            SideWeights::List(vec![1.0, 0.0, 0.5])
        );
        assert_eq!(
            SideWeights::parse("cosine+0.25").unwrap(),
            SideWeights::Curve {
                curve: LrCurve::Cosine,
                base: 0.25
            }
        );
        let e = SideWeights::parse("0.5").unwrap_err();
        assert!(e.contains("one per block"), "{e}");
        assert!(SideWeights::parse("cosine+x").is_err());
        assert!(SideWeights::parse("1,a").is_err());
    }

    #[test]
    fn lr_weights_fill_and_zero_as_kohya() {
        let none = LrWeightArgs::default();
        assert_eq!(none.resolve(BlockLayout::Sd), None);
        let args = LrWeightArgs {
            down: Some(SideWeights::List(vec![0.0, 0.5, 0.05])),
            mid: None,
            up: None,
            zero_threshold: 0.1,
        };
        let w = args.resolve(BlockLayout::Sd).unwrap();
        assert_eq!(w.len(), BLOCKS);
        assert_eq!(&w[..4], &[0.0, 0.5, 0.0, 1.0]);
        assert_eq!(w[MID], 1.0);
        assert!(w[MID + 1..].iter().all(|&x| x == 1.0));
    }

    /// SDXL's list as sd-scripts frames it: 1.0 for the embeddings, 9 down weights, 3 mid,
    /// 9 up, 1.0 for `out`; curves over 9 blocks; the zero threshold on the given weights.
    #[test]
    fn sdxl_lr_weights_as_sd_scripts() {
        let args = LrWeightArgs {
            down: Some(SideWeights::Curve {
                curve: LrCurve::Cosine,
                base: 0.0,
            }),
            mid: Some(vec![0.5, 0.05]),
            up: Some(SideWeights::List(vec![0.2])),
            zero_threshold: 0.1,
        };
        let w = args.resolve(BlockLayout::Sdxl).unwrap();
        assert_eq!(w.len(), SDXL_BLOCKS);
        assert_eq!((w[0], w[22]), (1.0, 1.0));
        // cosine over 9: sin(π/2 · (8 − i)/8) for input block i; the last is 0.
        let expected = (std::f64::consts::FRAC_PI_2 * 5.0 / 8.0).sin();
        assert!((w[1] - 1.0).abs() < 1e-12 && (w[4] - expected).abs() < 1e-12);
        assert_eq!(w[9], 0.0);
        assert_eq!(&w[10..13], &[0.5, 0.0, 1.0]);
        assert_eq!(w[13], 0.2);
        assert!(w[14..22].iter().all(|&x| x == 1.0));
        assert_eq!(
            (0..SDXL_BLOCKS).map(sdxl_block_name).collect::<Vec<_>>()[..2],
            ["BASE", "IN00"]
        );
        // Ranks resolve over the 23 blocks, by SGM's names.
        let dims: Vec<usize> = (0..SDXL_BLOCKS).collect();
        let r = BlockRankArgs {
            rank: 8,
            alpha: 4.0,
            block_dims: Some(&dims),
            ..Default::default()
        }
        .resolve(BlockLayout::Sdxl, Some(&w));
        assert_eq!(r.linear.len(), SDXL_BLOCKS);
        assert_eq!(r.linear_of("lora_unet_middle_block_2_in_layers_2").rank, 12);
        assert_eq!(r.linear_of("lora_unet_middle_block_1_proj_in").rank, 0);
        assert_eq!(
            r.linear_of("lora_te2_text_model_encoder_layers_0_mlp_fc1")
                .rank,
            8
        );
    }

    #[test]
    fn rows_group_a_file_by_block() {
        let r = rows([
            ("lora_unet_up_blocks_0_resnets_0_conv1", 4, Some(1.0)),
            ("lora_unet_down_blocks_0_attentions_0_proj_in", 8, None),
            (
                "lora_unet_down_blocks_0_attentions_0_proj_out",
                4,
                Some(2.0),
            ),
            ("lora_te_text_model_encoder_layers_0_mlp_fc1", 8, Some(8.0)),
        ]);
        let names: Vec<&str> = r.iter().map(|b| b.block.as_str()).collect();
        assert_eq!(names, ["IN01", "OUT00", "TE"]);
        assert_eq!((r[0].modules, &r[0].ranks[..]), (2, &[4, 8][..]));
        assert_eq!(r[0].alphas, vec![2.0, 8.0]);
    }

    #[test]
    fn ranks_per_block() {
        let dims: Vec<usize> = (0..BLOCKS).collect();
        let mut lr = vec![1.0; BLOCKS];
        lr[5] = 0.0;
        let args = BlockRankArgs {
            rank: 8,
            alpha: 4.0,
            block_dims: Some(&dims),
            ..Default::default()
        };
        let r = args.resolve(BlockLayout::Sd, Some(&lr));
        assert_eq!(
            r.linear[3],
            RankAlpha {
                rank: 3,
                alpha: 4.0
            }
        );
        assert_eq!(r.linear[5].rank, 0);
        assert!(r.conv.is_none());
        // conv_dim without conv_block_dims: every block at conv_dim; alpha 0 is the rank.
        let args = BlockRankArgs {
            rank: 8,
            alpha: 0.0,
            conv_dim: Some(4),
            ..Default::default()
        };
        let r = args.resolve(BlockLayout::Sd, None);
        assert_eq!(
            r.linear[1],
            RankAlpha {
                rank: 8,
                alpha: 8.0
            }
        );
        assert_eq!(
            r.conv.unwrap()[20],
            RankAlpha {
                rank: 4,
                alpha: 4.0
            }
        );
    }
}
