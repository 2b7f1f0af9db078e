//! What training changes: the adapters, their gradients, the optimizer groups over them and
//! the loss scaler, with the two things done to them: a micro-batch (forward with tape, loss,
//! backward into the gradients) and an optimizer step (clip, unscale, update).
//!
//! What each micro-batch saves and why: the UNet's tape (every adapter's input and hidden,
//! the norm statistics and attention LSE the adapter gradients need, see model/unet), and
//! with text-encoder training the text encoder's tape; both are consumed by the backward of
//! the same micro-batch. Nothing else outlives a micro-batch but the gradients.

use crate::backend::{Accum, Backend};
use crate::config::TrainConfig;
use crate::error::{Error, Result};
use crate::lora::blocks::{BlockLayout, BlockRankArgs, LrWeightArgs};
use crate::lora::{LoraDropout, LoraGrads, LoraModule, LoraSet, TargetLayer};
use crate::model::cond::Cond;
use crate::model::family::Models;
use crate::model::layers::Ctx;
use crate::rng::Rng;
use crate::tensor::Tensor;
use crate::train::inputs::{Draw, Inputs};
use crate::train::lr::Schedule;
use crate::train::optim::{clip_coefficient, KeyDefaults, OptimizerKind, ParamGroup};
use crate::train::scaler::LossScaler;
use crate::train::start::{start_from, Started};
use crate::train::step::{denoise_micro_batch, MicroBatch, MicroOut, Objective};

/// Where a micro-batch sits in the run: its draws (data order aside) come from generators
/// seeded by (seed, epoch, index), so a resume repeats them exactly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Site {
    pub epoch: u64,
    /// The micro-batch's index in its epoch.
    pub index: u64,
    /// How many micro-batches the optimizer step sums (on every rank together).
    pub of: usize,
}

/// The adapters and everything that updates them.
pub struct Trainable {
    pub lora: LoraSet,
    pub grads: LoraGrads,
    /// One group per learning rate: the UNet's adapters (unless frozen), then the text
    /// encoder's when trained.
    pub groups: Vec<ParamGroup>,
    pub scaler: LossScaler,
    pub objective: Objective,
    /// What starting from `network_weights` did.
    pub started: Option<Started>,
    train_text: bool,
    dropout: f64,
    /// kohya's rank_dropout and module_dropout (see lora/dropout.rs).
    rank_dropout: f64,
    module_dropout: f64,
    /// Gradient checkpointing: the UNet recomputes each layer in the backward.
    checkpointing: bool,
    seed: u64,
    max_grad_norm: f64,
}

/// The optimizer a configuration asks for (`optimizer_type`, `optimizer_args` and the
/// AdamW keys; src/train/optim/kind.rs).
pub fn optimizer_kind(cfg: &TrainConfig) -> Result<OptimizerKind> {
    let keys = KeyDefaults {
        adam_beta1: cfg.adam_beta1,
        adam_beta2: cfg.adam_beta2,
        adam_epsilon: cfg.adam_epsilon,
        weight_decay: cfg.weight_decay,
        weight_decay_written: cfg.provenance.is_written("weight_decay"),
    };
    OptimizerKind::from_config(cfg.optimizer_type, &cfg.optimizer_args, &keys).map_err(|e| {
        Error::BadValue {
            op: "config",
            name: "optimizer_args",
            value: format!("{:?}", cfg.optimizer_args),
            expected: e,
        }
    })
}

/// Whether the run's optimizer is Adafactor with relative_step, which finds its own rate:
/// the learning rates and the schedule are then not used (kohya's get_optimizer).
pub fn adafactor_relative_step(cfg: &TrainConfig) -> bool {
    matches!(optimizer_kind(cfg), Ok(OptimizerKind::Adafactor(s)) if s.relative_step)
}

/// The schedule the run follows: `lr_scheduler`, or `adafactor` for Adafactor with
/// relative_step, which kohya puts in place of any other.
pub fn lr_scheduler(cfg: &TrainConfig) -> Schedule {
    if adafactor_relative_step(cfg) {
        Schedule::Adafactor
    } else {
        cfg.lr_scheduler
    }
}

/// The text encoder's optimizer group (its name in the state file).
pub const TEXT_ENCODER_GROUP: &str = "text_encoder";

/// The UNet's optimizer groups over its first `n_unet` adapters: one ("unet"), or with lr
/// weights one per block at its weight ("unet_block<i>", kohya's groups), blocks in order;
/// adapters in a block of weight 0 (from `network_weights`) are not trained, as kohya
/// leaves a group of rate 0 out.
fn unet_groups(
    be: &dyn Backend,
    lora: &LoraSet,
    n_unet: usize,
    lr_weights: Option<(BlockLayout, &[f64])>,
    kind: &OptimizerKind,
) -> Result<Vec<ParamGroup>> {
    let Some((layout, weights)) = lr_weights else {
        return Ok(vec![ParamGroup::new(be, "unet", lora, 0..n_unet, kind)?]);
    };
    let mut groups = Vec::new();
    for (b, &w) in weights.iter().enumerate().filter(|(_, &w)| w > 0.0) {
        let modules: Vec<usize> = (0..n_unet)
            .filter(|&i| layout.index(&lora.modules()[i].name) == Some(b))
            .collect();
        if modules.is_empty() {
            continue;
        }
        let mut g = ParamGroup::new(be, &format!("unet_block{b}"), lora, modules, kind)?;
        g.lr_weight = w;
        groups.push(g);
    }
    Ok(groups)
}

impl Trainable {
    /// Fresh adapters on the targets `cfg` names (B = 0: training starts from the base model),
    /// or with `network_weights` those of the file (src/train/start.rs), their optimizer
    /// groups and gradient buffers.
    pub fn new(be: &dyn Backend, m: &Models, cfg: &TrainConfig) -> Result<Trainable> {
        let (targets, n_unet) = m.adapter_targets(cfg.lora_targets, cfg.train_text_encoder);
        // Each UNet adapter's rank and alpha: its block's (lora/blocks.rs), which are
        // lora_rank / lora_alpha (conv_dim / conv_alpha) everywhere unless block-wise ranks or
        // lr weights are given; a rank of 0 leaves the layer without an adapter.
        let layout = BlockLayout::of(m.family.generation());
        let lr_weights = LrWeightArgs::of(cfg).resolve(layout);
        let ranks = BlockRankArgs::of(cfg).resolve(layout, lr_weights.as_deref());
        let linear_rank = |l: &TargetLayer| ranks.linear_of(&l.name);
        let lora = LoraSet::init_algo(
            be,
            cfg.algo,
            &targets,
            linear_rank,
            &mut Rng::for_site(cfg.seed, &[1]),
        )?;
        let n_unet = targets[..n_unet]
            .iter()
            .filter(|&l| linear_rank(l).rank > 0)
            .count();
        // LoCon (`conv_dim` or `conv_block_dims`), as sd-scripts: the UNet's 3x3 convs at their
        // own rank and alpha, and the ResNets' time_emb_proj and 1x1 conv_shortcut at the
        // linear ones, after the UNet's other adapters, each drawn from its own stream (the
        // others init as without).
        let (lora, n_unet) = match &ranks.conv {
            None => (lora, n_unet),
            Some(_) => {
                let convs = m.unet.conv_targets();
                let conv_rank = |l: &TargetLayer| ranks.conv_of(&l.name);
                let rng = &mut Rng::for_site(cfg.seed, &[1, 1]);
                let conv = LoraSet::init_algo(be, cfg.algo, &convs, conv_rank, rng)?;
                let extra = m.unet.resnet_linear_targets();
                let rng = &mut Rng::for_site(cfg.seed, &[1, 2]);
                let linear = LoraSet::init_algo(be, cfg.algo, &extra, linear_rank, rng)?;
                let n = conv.len() + linear.len();
                let lora = lora
                    .with_inserted(n_unet, conv)
                    .with_inserted(n_unet, linear);
                (lora, n_unet + n)
            }
        };
        // DoRA: every adapter's magnitude from its frozen weight's row norms (lora/dora.rs).
        let lora = if cfg.dora_wd {
            lora.with_dora(be, |name| m.adaptable_weight(name))?
        } else {
            lora
        };
        let n_all = lora.len();
        let (lora, n_unet, n_all, started) = match &cfg.network_weights {
            None => (lora, n_unet, n_all, None),
            Some(file) => {
                let (lora, started) = start_from(be, lora, file, cfg.dim_from_weights)?;
                let n_unet = lora
                    .modules()
                    .iter()
                    .take_while(|m| m.name.starts_with("lora_unet_"))
                    .count();
                let n_all = lora.len();
                (lora, n_unet, n_all, Some(started))
            }
        };
        let kind = optimizer_kind(cfg)?;
        // A part not trained keeps its adapters as they start, without an optimizer group.
        let mut groups = Vec::new();
        if cfg.train_unet {
            groups.extend(unet_groups(
                be,
                &lora,
                n_unet,
                lr_weights.as_deref().map(|w| (layout, w)),
                &kind,
            )?);
        }
        if cfg.train_text_encoder {
            groups.push(ParamGroup::new(
                be,
                TEXT_ENCODER_GROUP,
                &lora,
                n_unet..n_all,
                &kind,
            )?);
        }
        let grads = lora.zero_grads(be)?;
        Ok(Trainable {
            lora,
            grads,
            groups,
            scaler: LossScaler::for_compute(be.compute_dtype()),
            objective: Objective {
                schedule: if cfg.zero_terminal_snr {
                    m.family.noise_schedule().with_zero_terminal_snr()
                } else {
                    m.family.noise_schedule()
                },
                prediction: m.prediction,
                noise_offset: cfg.noise_offset,
                min_snr_gamma: cfg.min_snr_gamma,
            },
            started,
            train_text: cfg.train_text_encoder,
            dropout: cfg.lora_dropout,
            rank_dropout: cfg.rank_dropout,
            module_dropout: cfg.module_dropout,
            checkpointing: cfg.gradient_checkpointing,
            seed: cfg.seed,
            max_grad_norm: cfg.max_grad_norm,
        })
    }

    /// Bytes on the device: (adapters, gradient accumulators, optimizer groups with their
    /// flat parameters, gradients and state).
    pub fn bytes(&self) -> (usize, usize, usize) {
        let lora = self
            .lora
            .modules()
            .iter()
            .flat_map(LoraModule::tensors)
            .map(Tensor::size_in_bytes)
            .sum();
        let grads = self.grads.all().map(Tensor::size_in_bytes).sum();
        let groups = self
            .groups
            .iter()
            .map(|g| {
                g.params.size_in_bytes()
                    + g.grads.size_in_bytes()
                    + g.optimizer
                        .state()
                        .iter()
                        .map(|(_, t)| t.size_in_bytes())
                        .sum::<usize>()
                    + g.optimizer.workspace_bytes()
            })
            .sum();
        (lora, grads, groups)
    }

    /// One micro-batch of the images `idx`: its latents and captions (flip, caption
    /// shuffle and dropout drawn first), the text conditioning (through the trained text
    /// encoder, or from the cache), the UNet's forward, loss and backward, then the text
    /// encoder's backward. The gradients are this micro-batch's alone (assigned); the step
    /// sums them on the host with [`Trainable::host_grads`].
    pub fn micro_batch(
        &mut self,
        be: &dyn Backend,
        m: &Models,
        inputs: &mut Inputs,
        idx: &[usize],
        site: Site,
    ) -> Result<MicroOut> {
        let mut rng = Rng::for_site(self.seed, &[3, site.epoch, site.index]);
        let b = inputs.batch(be, m, Draw::Train { epoch: site.epoch }, idx, &mut rng)?;
        self.grads.accum = Accum::Assign;
        let dropout = LoraDropout::for_site(self.dropout, self.seed, &[4, site.epoch, site.index])?
            .with_rank_and_module(self.rank_dropout, self.module_dropout)?;
        let cx = Ctx::new(be, Some(&self.lora))
            .with_dropout(Some(&dropout))
            .with_checkpointing(self.checkpointing);
        let text_cx = (self.train_text && m.text.is_some()).then_some(&cx);
        let (text, text_tape) = inputs.condition(be, m, text_cx, &b.captions, true)?;
        let cond = Cond::with_sizes(be, text, &b.sizes)?;
        let loss_weights = inputs.loss_weights(idx);
        let batch = MicroBatch {
            loss_weights: loss_weights.as_deref(),
            latents: &b.latents,
            cond: &cond,
            grad_scale: self.scaler.scale / site.of as f64,
            want_text_grad: text_tape.is_some(),
        };
        let mut out = denoise_micro_batch(
            &cx,
            &m.unet,
            &self.objective,
            &batch,
            &mut self.grads,
            &mut rng,
        )?;
        drop(cond);
        if let (Some(tape), Some(d)) = (text_tape, out.d_text.take()) {
            m.text_backward(&cx, &d, tape, &mut self.grads)?;
        }
        Ok(out)
    }

    /// The last micro-batch's gradients, one flat host buffer per optimizer group (what the
    /// step sums over micro-batches and ranks).
    pub fn host_grads(&self, be: &dyn Backend) -> Result<Vec<Vec<f32>>> {
        self.groups
            .iter()
            .map(|g| g.host_grads(be, &self.grads))
            .collect()
    }

    /// The optimizer step on the summed gradients `sums` (per group, from
    /// [`Trainable::host_grads`]): the norm over every group (kohya clips the UNet's and the
    /// text encoder's together), the loss scaler's verdict, and each group's update at its
    /// learning rate `lrs[i]`. Returns whether the step was applied (false: an f16 overflow,
    /// skipped).
    pub fn optimizer_step(
        &mut self,
        be: &dyn Backend,
        sums: &[Vec<f32>],
        lrs: &[f64],
    ) -> Result<bool> {
        let mut sq = 0.0;
        for (g, sum) in self.groups.iter_mut().zip(sums) {
            g.set_grads(be, sum)?;
            sq += g.grad_sum_squares(be)?;
        }
        let norm = sq.sqrt() / self.scaler.scale;
        let apply = self.scaler.update(norm.is_finite());
        if apply {
            let coef = clip_coefficient(norm, self.max_grad_norm) / self.scaler.scale;
            for (g, &lr) in self.groups.iter_mut().zip(lrs) {
                g.update(be, lr, coef, &mut self.lora)?;
            }
        }
        Ok(apply)
    }

    /// Every group's flat parameters (early stopping keeps the best ones).
    pub fn params(&self, be: &dyn Backend) -> Result<Vec<Vec<f32>>> {
        self.groups
            .iter()
            .map(|g| be.to_f32_vec(&g.params))
            .collect()
    }

    /// Puts parameters from [`Trainable::params`] back.
    pub fn set_params(&mut self, be: &dyn Backend, params: &[Vec<f32>]) -> Result<()> {
        for (g, p) in self.groups.iter_mut().zip(params) {
            g.set_params(be, p, &mut self.lora)?;
        }
        Ok(())
    }
}
