//! LoRA adapters: the set of trainable (down, up, alpha) triples attached to a frozen model by
//! kohya module name, and their gradients.
//!
//! A module `lora_unet_<diffusers path, dots as underscores>` adds scale·(x·Aᵀ)·Bᵀ to the output
//! of the layer at that path, with A = down [rank, in], B = up [out, rank], scale = alpha/rank
//! (kohya's convention; sd15-formats.md §2.3); on a 3x3 conv (LoCon) A is [rank, in, 3, 3], run
//! with the conv's stride and padding, and B [out, rank, 1, 1]. The frozen model looks its layers up here by
//! name, so any set whose names match can be applied: freshly initialised, or loaded from a file.

pub mod blocks;
pub mod dora;
pub mod dropout;
pub mod export;
pub mod extract;
pub mod factors;
pub mod family;
pub mod hash;
pub mod inspect;
pub mod kohya;
pub mod loha;
pub mod merge;
pub mod merge_loras;
pub mod provenance;
pub mod rank;
pub mod resize;
pub(crate) mod write;

use std::collections::HashMap;

pub use dropout::LoraDropout;

use blocks::RankAlpha;

use crate::backend::{Accum, Backend, Lora};
use crate::error::Result;
use crate::rng::Rng;
use crate::tensor::{DType, Tensor};

/// Which layers of the UNet get an adapter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoraTargets {
    /// Every linear and 1x1 conv inside the Transformer2D blocks: kohya's default, 192
    /// modules on SD1.5 (proj_in, proj_out, attn1/attn2 to_q/to_k/to_v/to_out.0,
    /// ff.net.0.proj, ff.net.2).
    Transformer,
    /// to_q, to_k, to_v and to_out.0 of every attention only (diffusers' default): 128 modules.
    Attention,
}

/// The shape of a layer that carries an adapter, as the checkpoint stores its weight (and
/// kohya its adapter).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerKind {
    /// A linear layer, weight [out, in]; its LoRA: down [r, in], up [out, r].
    Linear,
    /// A 1x1 conv run on tokens as a linear layer (the UNet's proj_in, proj_out), weight
    /// [out, in, 1, 1]; kohya stores its LoRA as down [r, in, 1, 1], up [out, r, 1, 1].
    Conv1x1,
    /// A k x k conv run as a conv (LoCon: the ResNets' conv1/conv2 and the samplers' convs,
    /// k = 3), weight [out, in, k, k]; its LoRA: down [r, in, k, k] (run with the layer's
    /// stride and padding), up [out, r, 1, 1], in memory as in the file.
    Conv { kernel: usize },
}

impl LayerKind {
    /// The shapes of (lora_down, lora_up) in a kohya file, for rank `r`, `i` in and `o` out
    /// features.
    pub fn kohya_shapes(self, r: usize, i: usize, o: usize) -> (Vec<usize>, Vec<usize>) {
        match self {
            LayerKind::Linear => (vec![r, i], vec![o, r]),
            LayerKind::Conv1x1 => (vec![r, i, 1, 1], vec![o, r, 1, 1]),
            LayerKind::Conv { kernel: k } => (vec![r, i, k, k], vec![o, r, 1, 1]),
        }
    }
    /// The shapes of (down, up) in a [`LoraModule`] (what the backend takes): [r, in] and
    /// [out, r] for the layers run as linear ones, the file's shapes for a conv.
    pub fn shapes(self, r: usize, i: usize, o: usize) -> (Vec<usize>, Vec<usize>) {
        match self {
            LayerKind::Linear | LayerKind::Conv1x1 => (vec![r, i], vec![o, r]),
            LayerKind::Conv { .. } => self.kohya_shapes(r, i, o),
        }
    }
    /// The kind a kohya file's lora_down shape says: [r, in] linear, [r, in, 1, 1] a 1x1
    /// conv, [r, in, k, k] a k x k conv; `None` for any other shape.
    pub fn of_kohya_down(down: &[usize]) -> Option<LayerKind> {
        match *down {
            [_, _] => Some(LayerKind::Linear),
            [_, _, 1, 1] => Some(LayerKind::Conv1x1),
            [_, _, k, l] if k == l && k > 1 => Some(LayerKind::Conv { kernel: k }),
            _ => None,
        }
    }
    /// Weights per input feature of the down matrix (k² for a k x k conv): its fan-in is
    /// in·this.
    pub fn taps(self) -> usize {
        match self {
            LayerKind::Linear | LayerKind::Conv1x1 => 1,
            LayerKind::Conv { kernel: k } => k * k,
        }
    }
}

/// What a layer that can carry an adapter does in its block: what target selection
/// ([`LoraTargets`]) picks by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerRole {
    /// An attention's to_q, to_k, to_v or to_out.0 (CLIP: q_proj, k_proj, v_proj, out_proj).
    Attention,
    /// A feed-forward layer: the UNet's ff.net.0.proj and ff.net.2, CLIP's mlp fc1 and fc2.
    FeedForward,
    /// A Transformer2D's proj_in or proj_out.
    Projection,
    /// A ResNet block's 3x3 conv1 or conv2 (LoCon).
    ResnetConv,
    /// A ResNet block's time_emb_proj (adapted at the linear rank with LoCon, as sd-scripts).
    TimeProjection,
    /// A ResNet block's 1x1 conv_shortcut (adapted at the linear rank with LoCon).
    Shortcut,
    /// A down-sampler's or up-sampler's 3x3 conv (LoCon).
    SamplerConv,
}

/// A layer that can carry an adapter: its kohya name, its sizes, shape and role.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetLayer {
    pub name: String,
    pub in_features: usize,
    pub out_features: usize,
    pub kind: LayerKind,
    pub role: LayerRole,
}

/// One adapter.
#[derive(Clone, Debug)]
pub struct LoraModule {
    pub name: String,
    /// A, [rank, in] ([rank, in, k, k] on a k x k conv: [`LayerKind::shapes`]). LoHa:
    /// `hada_w1_b`, [rank, in·k·k] on every layer (LyCORIS's layout).
    pub down: Tensor,
    /// B, [out, rank] ([out, rank, 1, 1] on a k x k conv). LoHa: `hada_w1_a`, [out, rank].
    pub up: Tensor,
    pub alpha: f64,
    /// The shape of the layer it adapts (how kohya stores it).
    pub kind: LayerKind,
    /// The adapter kind, with the tensors beyond (down, up) it has.
    pub algo: Algo,
}

/// The adapter kind a run trains (the `algo` key; LyCORIS's `algo` in network_args).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AlgoKind {
    /// LoRA (LoCon with `conv_dim`): kohya's networks.lora, LyCORIS's `lora`/`locon`.
    Lora,
    /// LyCORIS's LoHa (lora/loha.rs).
    Loha,
}

/// The kind of an adapter (LyCORIS's `algo`) and its tensors beyond (down, up).
#[derive(Clone, Debug, Default)]
pub enum Algo {
    /// ΔW = up·down (LoCon on a k x k conv).
    #[default]
    Lora,
    /// LyCORIS's LoHa: ΔW = (w1_a·w1_b) ⊙ (w2_a·w2_b), with w1_a = up and w1_b = down, the
    /// second pair here: `hada_w2_a` [out, rank], `hada_w2_b` [rank, in·k·k] (lora/loha.rs).
    Loha { w2_a: Tensor, w2_b: Tensor },
    /// DoRA (lora/dora.rs): W' = W + s·up·down, the layer runs W' ⊙ m / ‖W'‖ row by row, with
    /// `dora_scale` = m, one per output row, [out, 1] on a linear layer and [out, 1, 1, 1] on
    /// a conv (1x1 included), as LyCORIS stores it.
    Dora { magnitude: Tensor },
}

impl Algo {
    /// LyCORIS's name for it (`algo=` in network_args; also what inspect shows).
    pub fn name(&self) -> &'static str {
        match self {
            Algo::Lora => "lora",
            Algo::Loha { .. } => "loha",
            Algo::Dora { .. } => "dora",
        }
    }
    /// Its tensors beyond (down, up), in the order of the optimizer buffer and the gradients.
    pub fn extra(&self) -> Vec<&Tensor> {
        match self {
            Algo::Lora => vec![],
            Algo::Loha { w2_a, w2_b } => vec![w2_a, w2_b],
            Algo::Dora { magnitude } => vec![magnitude],
        }
    }
    fn extra_mut(&mut self) -> Vec<&mut Tensor> {
        match self {
            Algo::Lora => vec![],
            Algo::Loha { w2_a, w2_b } => vec![w2_a, w2_b],
            Algo::Dora { magnitude } => vec![magnitude],
        }
    }
}

impl LoraModule {
    /// A plain LoRA (LoCon on a conv).
    pub fn lora(name: String, down: Tensor, up: Tensor, alpha: f64, kind: LayerKind) -> Self {
        LoraModule {
            name,
            down,
            up,
            alpha,
            kind,
            algo: Algo::Lora,
        }
    }
    /// Every trainable tensor: down, up, then the kind's others ([`Algo::extra`]); the order
    /// of the optimizer's flat buffer and of [`LoraGrads::of`].
    pub fn tensors(&self) -> Vec<&Tensor> {
        let mut t = vec![&self.down, &self.up];
        t.extend(self.algo.extra());
        t
    }
    /// [`LoraModule::tensors`], mutable.
    pub fn tensors_mut(&mut self) -> Vec<&mut Tensor> {
        let mut t = vec![&mut self.down, &mut self.up];
        t.extend(self.algo.extra_mut());
        t
    }
    /// Whether it is a plain LoRA (the tools that factor up·down need one).
    pub fn is_lora(&self) -> bool {
        matches!(self.algo, Algo::Lora)
    }
    pub fn rank(&self) -> usize {
        self.down.dims()[0]
    }
    /// alpha / rank.
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank() as f64
    }
    /// The adapter as the backend takes it (inside [`crate::backend::Adapter::Lora`]),
    /// without dropout.
    pub fn as_lora(&self) -> Lora<'_> {
        Lora {
            down: &self.down,
            up: &self.up,
            scale: self.scale(),
            dropout: None,
        }
    }
}

/// The adapters of one model, in a fixed order (the order of the flat optimizer buffer).
#[derive(Clone, Debug, Default)]
pub struct LoraSet {
    modules: Vec<LoraModule>,
    index: HashMap<String, usize>,
}

impl LoraSet {
    pub fn new(modules: Vec<LoraModule>) -> Self {
        let index = modules
            .iter()
            .enumerate()
            .map(|(i, m)| (m.name.clone(), i))
            .collect();
        LoraSet { modules, index }
    }

    /// Fresh adapters on `layers` as kohya initialises them: A kaiming-uniform
    /// (bound 1/sqrt(fan-in), PyTorch's default for a Linear or Conv2d; the fan-in is in·k²
    /// for a k x k conv), B zero, so training starts from the base model exactly.
    pub fn init(
        be: &dyn Backend,
        layers: &[TargetLayer],
        rank: usize,
        alpha: f64,
        rng: &mut Rng,
    ) -> Result<LoraSet> {
        LoraSet::init_each(be, layers, |_| RankAlpha { rank, alpha }, rng)
    }

    /// [`LoraSet::init`] with each layer's rank and alpha from `rank_of` (block-wise ranks,
    /// lora/blocks.rs); a layer of rank 0 gets no adapter. The draws are [`LoraSet::init`]'s
    /// when every rank is the same.
    pub fn init_each(
        be: &dyn Backend,
        layers: &[TargetLayer],
        rank_of: impl Fn(&TargetLayer) -> RankAlpha,
        rng: &mut Rng,
    ) -> Result<LoraSet> {
        let mut modules = Vec::with_capacity(layers.len());
        for l in layers {
            let RankAlpha { rank, alpha } = rank_of(l);
            if rank == 0 {
                continue;
            }
            let fan_in = l.in_features * l.kind.taps();
            let bound = 1.0 / (fan_in as f64).sqrt();
            let a: Vec<f32> = (0..rank * fan_in)
                .map(|_| rng.uniform_in(-bound, bound) as f32)
                .collect();
            let (ds, us) = l.kind.shapes(rank, l.in_features, l.out_features);
            modules.push(LoraModule::lora(
                l.name.clone(),
                be.tensor_from_f32(&ds, &a, DType::F32)?,
                be.zeros(&us, DType::F32)?,
                alpha,
                l.kind,
            ));
        }
        Ok(LoraSet::new(modules))
    }

    /// The set with `other`'s modules inserted before module `at` (the order is the flat
    /// optimizer buffer's: the UNet's LoCon adapters go after its linear ones).
    pub fn with_inserted(self, at: usize, other: LoraSet) -> LoraSet {
        let mut modules = self.modules;
        let tail = modules.split_off(at.min(modules.len()));
        modules.extend(other.modules);
        modules.extend(tail);
        LoraSet::new(modules)
    }
    pub fn modules(&self) -> &[LoraModule] {
        &self.modules
    }
    pub fn modules_mut(&mut self) -> &mut [LoraModule] {
        &mut self.modules
    }
    pub fn len(&self) -> usize {
        self.modules.len()
    }
    pub fn is_empty(&self) -> bool {
        self.modules.is_empty()
    }
    /// The index of the adapter named `name`, if there is one.
    pub fn find(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }
    /// An error naming `path` and the first module that is not a plain LoRA (LoCon), for the
    /// tools whose maths factors up·down (`what` says which and why).
    pub fn require_lora(&self, path: &std::path::Path, what: &str) -> Result<()> {
        self.require(path, what, LoraModule::is_lora)
    }
    /// As [`LoraSet::require_lora`], DoRA allowed: every module's ΔW is s·up·down.
    pub fn require_up_down(&self, path: &std::path::Path, what: &str) -> Result<()> {
        self.require(path, what, |m| m.is_lora() || m.dora().is_some())
    }
    fn require(
        &self,
        path: &std::path::Path,
        what: &str,
        ok: impl Fn(&LoraModule) -> bool,
    ) -> Result<()> {
        match self.modules.iter().find(|m| !ok(m)) {
            None => Ok(()),
            Some(m) => Err(crate::error::Error::Lora {
                path: path.to_path_buf(),
                detail: format!(
                    "module `{}` is a {} adapter (LyCORIS), not a LoRA: {what}; bake it into \
                     a checkpoint with `lorafuse merge` instead",
                    m.name,
                    m.algo.name()
                ),
            }),
        }
    }
    /// Gradient buffers of the right shapes, zeroed.
    pub fn zero_grads(&self, be: &dyn Backend) -> Result<LoraGrads> {
        let mut down = Vec::with_capacity(self.len());
        let mut up = Vec::with_capacity(self.len());
        let mut extra = Vec::with_capacity(self.len());
        for m in &self.modules {
            down.push(be.zeros(m.down.dims(), m.down.dtype())?);
            up.push(be.zeros(m.up.dims(), m.up.dtype())?);
            let e = m.algo.extra().into_iter();
            extra.push(
                e.map(|t| be.zeros(t.dims(), t.dtype()))
                    .collect::<Result<_>>()?,
            );
        }
        Ok(LoraGrads {
            down,
            up,
            extra,
            accum: Accum::Assign,
        })
    }
    /// Number of trainable scalars.
    pub fn num_params(&self) -> usize {
        self.modules
            .iter()
            .flat_map(|m| m.tensors())
            .map(Tensor::numel)
            .sum()
    }
}

impl LoraSet {
    /// Fresh adapters of kind `algo` on `layers`, each at the rank and alpha `rank_of` gives
    /// (none at rank 0): [`LoraSet::init_each`], or LoHa's ([`loha::init`]).
    pub fn init_algo(
        be: &dyn Backend,
        algo: AlgoKind,
        layers: &[TargetLayer],
        rank_of: impl Fn(&TargetLayer) -> RankAlpha,
        rng: &mut Rng,
    ) -> Result<LoraSet> {
        match algo {
            AlgoKind::Lora => LoraSet::init_each(be, layers, rank_of, rng),
            AlgoKind::Loha => {
                let mut modules = Vec::with_capacity(layers.len());
                for l in layers {
                    let RankAlpha { rank, alpha } = rank_of(l);
                    if rank > 0 {
                        modules.push(loha::init(be, l, rank, alpha, rng)?);
                    }
                }
                Ok(LoraSet::new(modules))
            }
        }
    }

    /// Several sets applied together, each at a weight (A1111's `<lora:name:0.7>`), as one set:
    /// where sets share a layer their ranks are stacked, A = [A₁; A₂], B = [w₁s₁B₁, w₂s₂B₂]
    /// with alpha = the stacked rank (scale 1), so B·A = Σ wᵢ·sᵢ·Bᵢ·Aᵢ exactly. A LoHa or DoRA
    /// module alone on its layer is kept as it is (a LoHa's alpha times its weight: its ΔW is
    /// linear in alpha); a DoRA module only at weight 1, since A1111's and ComfyUI's strength w
    /// blends W + w·(V − W), which the layer does not compute (`lorafuse merge` does).
    pub fn combine(be: &dyn Backend, sets: &[(&LoraSet, f64)]) -> Result<LoraSet> {
        let refuse = |m: &LoraModule, why: String| crate::error::Error::BadValue {
            op: "apply LoRAs",
            name: "adapter",
            value: m.name.clone(),
            expected: format!(
                "{why}: bake it into the checkpoint with `lorafuse merge --model` (which takes a \
                 ratio per file) and sample from that"
            ),
        };
        let mut names: Vec<&str> = sets
            .iter()
            .flat_map(|(s, _)| s.modules.iter().map(|m| m.name.as_str()))
            .collect();
        names.sort_unstable();
        names.dedup();
        let mut modules = Vec::with_capacity(names.len());
        for name in names {
            let parts: Vec<(&LoraModule, f64)> = sets
                .iter()
                .filter_map(|(s, w)| s.find(name).map(|i| (&s.modules[i], *w)))
                .collect();
            let first = parts[0].0;
            if let Some((m, _)) = parts.iter().find(|(m, _)| !m.is_lora()) {
                let kind = m.algo.name();
                match (parts.as_slice(), &m.algo) {
                    ([(_, w)], Algo::Loha { .. }) => {
                        modules.push(LoraModule {
                            alpha: m.alpha * w,
                            ..(*m).clone()
                        });
                        continue;
                    }
                    ([(_, w)], Algo::Dora { .. }) if *w == 1.0 => {
                        modules.push((*m).clone());
                        continue;
                    }
                    ([(_, w)], _) => {
                        return Err(refuse(
                            m,
                            format!(
                                "a {kind} adapter is applied at weight 1 only (this one at {w})"
                            ),
                        ))
                    }
                    _ => {
                        return Err(refuse(
                            m,
                            format!("a {kind} adapter cannot share its layer with another file's"),
                        ))
                    }
                }
            }
            let (in_f, out_f) = (first.down.dims()[1], first.up.dims()[0]);
            let rank: usize = parts.iter().map(|(m, _)| m.rank()).sum();
            // A row of down: in·k² weights for a k x k conv.
            let row = first.down.numel() / first.rank().max(1);
            let (mut a, mut b) = (Vec::with_capacity(rank * row), vec![0f32; out_f * rank]);
            let mut at = 0;
            for (m, w) in &parts {
                if m.kind != first.kind
                    || m.down.dims()[1..] != first.down.dims()[1..]
                    || m.up.dims()[0] != out_f
                {
                    return Err(crate::backend::check::mismatch(
                        "combine",
                        "adapter",
                        &m.down,
                        "first adapter of the layer",
                        &first.down,
                        format!("LoRAs on {name} must agree on its sizes"),
                    ));
                }
                a.extend(be.to_f32_vec(&m.down)?);
                let s = (w * m.scale()) as f32;
                let (r, up) = (m.rank(), be.to_f32_vec(&m.up)?);
                for o in 0..out_f {
                    for j in 0..r {
                        b[o * rank + at + j] = s * up[o * r + j];
                    }
                }
                at += r;
            }
            let (ds, us) = first.kind.shapes(rank, in_f, out_f);
            modules.push(LoraModule::lora(
                name.to_string(),
                be.tensor_from_f32(&ds, &a, DType::F32)?,
                be.tensor_from_f32(&us, &b, DType::F32)?,
                rank as f64,
                first.kind,
            ));
        }
        Ok(LoraSet::new(modules))
    }
}

/// dA and dB of every adapter, in the set's order (and the gradients of a kind's other
/// tensors, [`Algo::extra`]). `accum` says whether the next backward overwrites them (the
/// first micro-batch of an optimizer step) or adds to them.
#[derive(Clone, Debug)]
pub struct LoraGrads {
    pub down: Vec<Tensor>,
    pub up: Vec<Tensor>,
    /// Per module, the gradients of [`Algo::extra`]'s tensors (empty for a LoRA).
    pub extra: Vec<Vec<Tensor>>,
    pub accum: Accum,
}

impl LoraGrads {
    /// Module `i`'s gradients in [`LoraModule::tensors`]' order.
    pub fn of(&self, i: usize) -> Vec<&Tensor> {
        let mut t = vec![&self.down[i], &self.up[i]];
        t.extend(&self.extra[i]);
        t
    }
    /// [`LoraGrads::of`], mutable.
    pub fn of_mut(&mut self, i: usize) -> Vec<&mut Tensor> {
        let mut t = vec![&mut self.down[i], &mut self.up[i]];
        t.extend(&mut self.extra[i]);
        t
    }
    /// Every gradient tensor, module by module.
    pub fn all(&self) -> impl Iterator<Item = &Tensor> {
        (0..self.down.len()).flat_map(|i| self.of(i))
    }
}
