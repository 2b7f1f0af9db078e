//! Every configuration key, declared once: its field, type, default, range, rule, README.md
//! line and other trainers' names (decl.rs says how an entry reads). The struct
//! [`TrainConfig`], its reader, its range checks, `config.effective.yaml` and README.md's
//! table are made from this table; rules between keys are validate.rs's.
//!
//! Adding a key is one entry here (in the place README.md should list it), plus the code that
//! honours it; `LORAFUSE_BLESS=1 cargo test --test frontend config::the_readme_table` then rewrites README.md's table.

use std::path::PathBuf;

use super::decl::{config_keys, holds, KeyDecl};
use super::error::Origin;
use super::parse::{self, Reader};
use super::validate::{finite_in, open_unit, unit, Check};
use super::values::{
    choice_names, Choice, Device, MixedPrecision, Resolution, SamplePrompts, Warmup, YamlValue,
};
use super::{DataSubset, Provenance};
use crate::backend::cpu::CpuPrecision;
use crate::lora::blocks::{BlockLayout, SideWeights, SIDE_BLOCKS};
use crate::lora::export::SavePrecision;
use crate::lora::{AlgoKind, LoraTargets};
use crate::prepare::CropMode;
use crate::sample::SamplerKind;
use crate::train::lr::Schedule;
use crate::train::optim::OptimizerType;

const WHOLE_GE1: &str = "must be a whole number ≥ 1";
const FLAG: &str = "must be true or false";
pub(super) const LR: &str = "must be > 0 and < 1 (typical LoRA values 1e-4 to 1e-3)";
const SIDE: &str = "must be a multiple of 64 from 64 to 4096";
const FOLDER_OUT: &str = "must be a folder path lorafuse can create and write to";

/// "must be one of a, b, c" for a choice.
fn choice_rule<C: Choice>() -> String {
    format!("must be one of {}", choice_names::<C>().join(", "))
}

/// "`a`, `b`, `c`" for README's type column.
fn choice_doc<C: Choice>() -> String {
    backticked(&choice_names::<C>())
}

fn backticked(words: &[impl AsRef<str>]) -> String {
    words
        .iter()
        .map(|w| format!("`{}`", w.as_ref()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A learning rate's own range: > 0 (validate.rs adds < 1 but for Prodigy).
fn positive(lr: f64) -> bool {
    lr.is_finite() && lr > 0.0
}

/// `n` ≥ 1 when set.
fn some_ge1(n: &Option<usize>) -> bool {
    n.is_none_or(|n| n >= 1)
}

config_keys! {
    // --- what to train on, and where the results go

    /// Folder of training images, each with a caption file of the same name (`cat.png` +
    /// `cat.txt`); kohya's `N_name` subfolders (N = repeats) work too.
    train_data_dir: PathBuf = required("the folder of training images and their .txt captions"),
        read parse::path,
        doc_type "path",
        rule "must be an existing folder of training images (with .txt captions, optionally in kohya's N_name subfolders)",
        aliases ["instance_data_dir", "image_dir": " (a dataset_config subset's image folder)"],
        verbatim: true,

    /// Folder of regularisation images in kohya's `N_<class tokens>` subfolders (images
    /// directly in it count once and need captions); balanced against the training images
    /// as sd-scripts does, their loss weighted by `prior_loss_weight`.
    reg_data_dir: Option<PathBuf> = optional("unset (none)"),
        read parse::path,
        doc_type "path",
        rule "must be a folder of regularisation images (in kohya's N_<class tokens> subfolders)",
        verbatim: true,

    /// The weight of a regularisation image's loss (kohya's `prior_loss_weight`).
    prior_loss_weight: f64 = fixed(1.0),
        read parse::float,
        check |w| w.is_finite() && *w >= 0.0,
        doc_type "number ≥ 0",
        rule "must be a number ≥ 0 (1 weighs regularisation images as training images)",

    /// sd-scripts' dataset file (`--dataset_config`, TOML or JSON: `[general]`,
    /// `[[datasets]]`, `[[datasets.subsets]]`, `is_reg` subsets included); its values take
    /// precedence over this file's; each subset's `image_dir` is its folder, the first
    /// training subset's is `train_data_dir`, and `reg_data_dir` is not used.
    dataset_config: Option<PathBuf> = optional("unset"),
        read parse::path,
        doc_type "path",
        rule "must be the path of an sd-scripts dataset config (.toml or .json)",
        verbatim: true,

    /// Times each image directly in `train_data_dir` counts per epoch (kohya's dataset_config
    /// `num_repeats`); images in kohya's `N_name` subfolders count N times.
    num_repeats: usize = fixed(1),
        read parse::count,
        check |n| *n >= 1,
        doc_type "whole number ≥ 1",
        rule WHOLE_GE1,

    /// The caption of an image directly in `train_data_dir` without a caption file (kohya's
    /// `class_tokens`; in an `N_<class tokens>` subfolder the folder name gives it, as in
    /// kohya); unset: such an image is an error.
    class_tokens: Option<String> = optional("unset"),
        read parse::text,
        doc_type "text",
        rule "must be text, the caption of images without a caption file",
        verbatim: true,

    /// kohya's fine-tuning metadata (`merge_captions_to_metadata.py`'s JSON, `{"image":
    /// {"caption", "tags"}}`, or JSONL): the images it lists, in `train_data_dir`, captioned
    /// "caption,tags", instead of the folder's files and caption files.
    metadata_file: Option<PathBuf> = optional("unset"),
        read parse::path,
        doc_type "path",
        rule "must be the path of kohya's fine-tuning metadata (.json or .jsonl)",
        aliases ["in_json"],
        verbatim: true,

    /// The Stable Diffusion 1.x model to train on: a single `.safetensors` checkpoint or a
    /// diffusers folder.
    base_model: PathBuf = required("the Stable Diffusion 1.x model to train on (a .safetensors file or a diffusers folder)"),
        read parse::path,
        doc_type "path",
        rule "must be a Stable Diffusion 1.x model: a single .safetensors file or a diffusers folder",
        aliases ["pretrained_model_name_or_path"],
        verbatim: true,

    /// Folder for the LoRA files, the logs, the training state and `config.effective.yaml`;
    /// created if missing.
    output_dir: PathBuf = required("the folder the LoRA files, logs and config.effective.yaml are written to"),
        read parse::path,
        doc_type "path",
        rule FOLDER_OUT,
        verbatim: true,

    /// LoRA file name without extension; lorafuse saves `<output_name>.safetensors`.
    output_name: String = follows("last folder name of `output_dir`", parse::last_folder_name(&output_dir)),
        read parse::text,
        doc_type "text",
        rule "must be a file name without folder or extension (lorafuse adds .safetensors)",
        kohya "last",
        verbatim: true,

    /// Precision of the tensors in the saved LoRA file (kohya's `float` is `fp32`).
    save_precision: SavePrecision = fixed(SavePrecision::Fp16),
        read parse::choice::<SavePrecision>,
        doc_type choice_doc::<SavePrecision>(),
        rule choice_rule::<SavePrecision>(),
        kohya "float",

    /// Also save a LoRA (and the training state) every N epochs, as
    /// `<output_name>-<epoch>.safetensors`.
    save_every_n_epochs: Option<usize> = optional("unset (end only)"),
        read parse::count,
        check |n| *n >= 1,
        doc_type "whole number ≥ 1",
        rule "must be a whole number ≥ 1, or empty to save only at the end",

    /// Also save a LoRA (and the training state) every N optimizer steps.
    save_every_n_steps: Option<usize> = optional("unset (end only)"),
        read parse::count,
        check |n| *n >= 1,
        doc_type "whole number ≥ 1",
        rule "must be a whole number ≥ 1, or empty to save only at the end",

    /// Keep only the LoRA files of the last N epoch saves (`save_every_n_epochs`) and delete
    /// older ones, as kohya does; the final LoRA is always kept.
    save_last_n_epochs: Option<usize> = optional("unset (keep all)"),
        read parse::count,
        check |n| *n >= 1,
        doc_type "whole number ≥ 1",
        rule "must be a whole number ≥ 1 (epoch saves to keep), or empty to keep every one",

    /// Keep the step-save LoRA files (`save_every_n_steps`) of the last N optimizer steps and
    /// delete older ones, as kohya does: N counts steps, not files (saving every 100 steps
    /// with N = 300, step 500 keeps the saves of steps 200 to 500); the final LoRA is always
    /// kept.
    save_last_n_steps: Option<usize> = optional("unset (keep all)"),
        read parse::count,
        check |n| *n >= 1,
        doc_type "whole number ≥ 1",
        rule "must be a whole number ≥ 1 (steps whose saves are kept), or empty to keep every one",

    /// Keep each save point's own training state beside its LoRA
    /// (`<output_name>-<epoch>-state.safetensors`, `<output_name>-step<step>-state.safetensors`),
    /// as kohya's `save_state` keeps a state folder per save point; pruned by
    /// `save_last_n_*_state`. Without it a save point keeps its own state only when a
    /// `save_last_n_*_state` asks; `output_dir/state.safetensors` (the newest) is always written.
    save_state: bool = fixed(false),
        read parse::flag,
        doc_type "true/false",
        rule FLAG,

    /// Continue a run from a state file lorafuse saved: a save point's
    /// `…-state.safetensors`, `state.safetensors`, or the output folder holding it (kohya's
    /// `resume` names a state folder; `lorafuse train CONFIG --resume` is the same with this
    /// run's output_dir).
    resume: Option<PathBuf> = optional("unset (a new run)"),
        read parse::path,
        doc_type "path",
        rule "must be the path of a lorafuse state file (or of the output folder holding state.safetensors)",
        verbatim: true,

    /// As `save_last_n_epochs`, for the training-state files saved with the epoch LoRAs; the
    /// newest state is always kept.
    save_last_n_epochs_state: Option<usize> = follows("`save_last_n_epochs`", save_last_n_epochs),
        read parse::some_count,
        check some_ge1,
        doc_type "whole number ≥ 1",
        rule "must be a whole number ≥ 1 (epoch states to keep), or empty to keep as many as save_last_n_epochs",

    /// As `save_last_n_steps`, for the training-state files saved with the step LoRAs; the
    /// newest state is always kept.
    save_last_n_steps_state: Option<usize> = follows("`save_last_n_steps`", save_last_n_steps),
        read parse::some_count,
        check some_ge1,
        doc_type "whole number ≥ 1",
        rule "must be a whole number ≥ 1 (steps whose states are kept), or empty to keep as many as save_last_n_steps",

    /// Where the training logs are written.
    logging_dir: PathBuf = follows("`output_dir/logs`", output_dir.join("logs")),
        read parse::path,
        doc_type "path",
        rule FOLDER_OUT,
        verbatim: true,

    // --- the adapters

    /// Rank of every adapter: bigger learns more detail and makes a bigger file.
    lora_rank: usize = fixed(32),
        read parse::count,
        check |r| (1..=1024).contains(r),
        doc_type "whole number 1–1024",
        rule "must be a whole number from 1 to 1024 (typical 4 to 128)",
        aliases ["network_dim", "rank"],
        kohya "4",

    /// Scales the adapters by `lora_alpha / lora_rank`.
    lora_alpha: f64 = follows("`lora_rank`", lora_rank as f64),
        read parse::float,
        check |a| a.is_finite() && *a > 0.0,
        doc_type "number > 0",
        rule "must be a number > 0 (the adapter scale is lora_alpha / lora_rank)",
        aliases ["network_alpha": " (lorafuse's default is lora_rank, a scale of 1; kohya's is 1)"],
        kohya "1",

    /// LoCon: the rank of adapters on the UNet's 3x3 convs too (every ResNet's conv1 and
    /// conv2, the down- and up-samplers' convs: sd-scripts' `network_args = ["conv_dim=N"]`);
    /// `lora_rank` stays the rank of the linear layers' adapters.
    conv_dim: Option<usize> = optional("unset (no conv adapters)"),
        read parse::count,
        check |r| (1..=1024).contains(r),
        doc_type "whole number 1–1024",
        rule "must be a whole number from 1 to 1024 (typical 4 to 32), or empty for no conv adapters",

    /// Scales the conv adapters by `conv_alpha / conv_dim` (used only with `conv_dim`).
    conv_alpha: Option<f64> = optional("`conv_dim` (a scale of 1; kohya's default is 1)"),
        read parse::float,
        check |a| a.is_finite() && *a > 0.0,
        doc_type "number > 0",
        rule "must be a number > 0 (the conv adapters' scale is conv_alpha / conv_dim)",

    /// The adapter kind: `lora` (LoRA; LoCon with `conv_dim`) or `loha` (LyCORIS's LoHa:
    /// ΔW = (w1_a·w1_b) ⊙ (w2_a·w2_b) at `lora_rank` / `conv_dim`; kohya's
    /// `network_module = "lycoris.kohya"` with `network_args = ["algo=loha"]`).
    algo: AlgoKind = fixed(AlgoKind::Lora),
        read parse::choice::<AlgoKind>,
        doc_type choice_doc::<AlgoKind>(),
        rule choice_rule::<AlgoKind>(),

    /// DoRA (weight-decomposed LoRA, LyCORIS's `dora_wd=True`): with `algo: lora`, each
    /// adapted layer runs (W + ΔW) rescaled row by row to a trained magnitude `dora_scale`,
    /// which starts at the frozen weight's row norms.
    dora_wd: bool = fixed(false),
        read parse::flag,
        doc_type "true/false",
        rule FLAG,

    /// Start from an existing kohya-format LoRA (kohya's `network_weights`): its adapters
    /// replace the new ones of the same name (alpha included); a shape that differs is an
    /// error; adapters it lacks start fresh, its others are not used.
    network_weights: Option<PathBuf> = optional("unset (new adapters)"),
        read parse::path,
        doc_type "path",
        rule "must be the path of a kohya-format LoRA .safetensors file",
        verbatim: true,

    /// With `network_weights`: train exactly its adapters, each at its own rank and alpha
    /// (kohya's `dim_from_weights`); `lora_rank`/`lora_alpha` (and `conv_dim`) are not used.
    dim_from_weights: bool = fixed(false),
        read parse::flag,
        doc_type "true/false",
        rule FLAG,

    /// Dropout on the adapters while training.
    lora_dropout: f64 = fixed(0.0),
        read parse::float,
        check |p| unit(*p),
        doc_type "number in [0, 1)",
        rule "must be ≥ 0 and < 1",
        aliases ["network_dropout"],

    /// Dropout of whole ranks of an adapter, per sample, while training; kept ranks are scaled
    /// up to keep the expected output (kohya's `network_args = ["rank_dropout=P"]`).
    rank_dropout: f64 = fixed(0.0),
        read parse::float,
        check |p| unit(*p),
        doc_type "number in [0, 1)",
        rule "must be ≥ 0 and < 1",

    /// Chance that an adapter sits out a whole training step (kohya's
    /// `network_args = ["module_dropout=P"]`).
    module_dropout: f64 = fixed(0.0),
        read parse::float,
        check |p| unit(*p),
        doc_type "number in [0, 1)",
        rule "must be ≥ 0 and < 1",

    /// Block-wise ranks: the rank of the UNet adapters of each block, as sd-scripts numbers
    /// them: 25 on SD1.x/SD2.x (IN00–IN11, MID, OUT00–OUT11), 23 on SDXL (the embeddings,
    /// input_blocks 0–8, middle_block 0–2, output_blocks 0–8, out); a list or "2,4,4,...";
    /// 0 leaves a block without adapters (sd-scripts' `network_args = ["block_dims=..."]`).
    /// The count is checked against the model's family when it is loaded.
    block_dims: Option<Vec<usize>> = optional("unset (`lora_rank` everywhere)"),
        read parse::count_list,
        check |d| block_count(d.len()) && d.iter().all(|r| *r <= 1024),
        doc_type "25 (SDXL: 23) whole numbers 0–1024",
        rule "must be 25 ranks from 0 to 1024 (SDXL: 23), one per UNet block (a list or comma-separated text)",

    /// Block-wise alphas of the UNet adapters, one per block as `block_dims` (0: alpha =
    /// rank); used with `block_dims` or an lr weight.
    block_alphas: Option<Vec<f64>> = optional("unset (`lora_alpha` everywhere)"),
        read parse::float_list,
        check |a| block_count(a.len()) && a.iter().all(|x| *x >= 0.0),
        doc_type "25 (SDXL: 23) numbers ≥ 0",
        rule "must be 25 numbers ≥ 0 (SDXL: 23), one per UNet block (0 means alpha = rank)",

    /// Block-wise ranks of the 3x3 conv adapters (LoCon), one per block as `block_dims`.
    conv_block_dims: Option<Vec<usize>> = optional("unset (`conv_dim` everywhere)"),
        read parse::count_list,
        check |d| block_count(d.len()) && d.iter().all(|r| *r <= 1024),
        doc_type "25 (SDXL: 23) whole numbers 0–1024",
        rule "must be 25 ranks from 0 to 1024 (SDXL: 23), one per UNet block (a list or comma-separated text)",

    /// Block-wise alphas of the 3x3 conv adapters, one per block (0: alpha = rank); used with
    /// `conv_block_dims`.
    conv_block_alphas: Option<Vec<f64>> = optional("unset (`conv_alpha` everywhere)"),
        read parse::float_list,
        check |a| block_count(a.len()) && a.iter().all(|x| *x >= 0.0),
        doc_type "25 (SDXL: 23) numbers ≥ 0",
        rule "must be 25 numbers ≥ 0 (SDXL: 23), one per UNet block (0 means alpha = rank)",

    /// Learning-rate weights of the down blocks (kohya's block-wise learning rate): up to one
    /// per block of the side, IN00–IN11 (SDXL: 9, input_blocks 0–8; missing ones are 1), or a
    /// curve over them, `cosine`, `sine`, `linear`, `reverse_linear`, `zeros`, optionally
    /// `+base`; a block of weight 0 gets no adapters.
    down_lr_weight: Option<SideWeights> = optional("unset (1 everywhere)"),
        read parse::side_weights,
        check side_ok,
        doc_type "up to 12 (SDXL: 9) numbers, or a curve",
        rule "must be up to 12 weights (SDXL: 9; a list or \"1,1,0.5,...\") or a curve: cosine, sine, linear, reverse_linear, zeros, optionally +base (\"cosine+0.5\")",

    /// Learning-rate weight of the mid block (one number in a list, or "0.5"; SDXL: up to 3,
    /// middle_block 0–2).
    mid_lr_weight: Option<Vec<f64>> = optional("unset (1)"),
        read parse::float_list,
        check |w| BlockLayout::ALL.iter().any(|l| w.len() <= l.mid()),
        doc_type "one number (SDXL: up to 3)",
        rule "must be one weight (SDXL: up to 3, one per middle block)",

    /// Learning-rate weights of the up blocks OUT00–OUT11 (SDXL: output_blocks 0–8), as
    /// `down_lr_weight`.
    up_lr_weight: Option<SideWeights> = optional("unset (1 everywhere)"),
        read parse::side_weights,
        check side_ok,
        doc_type "up to 12 (SDXL: 9) numbers, or a curve",
        rule "must be up to 12 weights (SDXL: 9; a list or \"1,1,0.5,...\") or a curve: cosine, sine, linear, reverse_linear, zeros, optionally +base (\"cosine+0.5\")",

    /// Block lr weights at or below this are 0 (the block is not trained).
    block_lr_zero_threshold: f64 = fixed(0.0),
        read parse::float,
        doc_type "number",
        rule "must be a number (lr weights at or below it count as 0)",

    /// Which UNet layers get adapters: `transformer` = every linear layer of the transformer
    /// blocks, kohya's 192 modules; `attention` = only the attention projections to_q, to_k,
    /// to_v, to_out (128 modules).
    lora_targets: LoraTargets = fixed(LoraTargets::Transformer),
        read parse::choice::<LoraTargets>,
        doc_type choice_doc::<LoraTargets>(),
        rule choice_rule::<LoraTargets>(),

    /// Train text-encoder adapters too (kohya's 72 modules on SD1.5: q/k/v/out_proj, fc1, fc2
    /// of every CLIP layer), at `text_encoder_lr`. The text embeddings are then computed every
    /// step instead of cached.
    train_text_encoder: bool = fixed(false),
        read parse::flag,
        doc_type "true/false",
        rule FLAG,
        kohya "true",

    /// Train the UNet adapters (at `unet_lr`). false: they are frozen as they start (fresh,
    /// they change nothing; from `network_weights`, the file's) and only the text encoder
    /// trains (kohya's `network_train_text_encoder_only`, or `unet_lr = 0`).
    train_unet: bool = fixed(true),
        read parse::flag,
        doc_type "true/false",
        rule FLAG,

    // --- length of the run

    /// Images per forward pass.
    batch_size: usize = fixed(1),
        read parse::count,
        check |n| *n >= 1,
        doc_type "whole number ≥ 1",
        rule WHOLE_GE1,
        aliases ["train_batch_size"],

    /// Forward passes per optimizer step: the effective batch is `batch_size` × this.
    gradient_accumulation_steps: usize = fixed(1),
        read parse::count,
        check |n| *n >= 1,
        doc_type "whole number ≥ 1",
        rule WHOLE_GE1,

    /// Passes over the training images.
    epochs: usize = fixed(10),
        read parse::count,
        check |n| *n >= 1,
        doc_type "whole number ≥ 1",
        rule WHOLE_GE1,
        aliases ["max_train_epochs", "num_train_epochs"],

    /// Stop after this many optimizer steps; when set it decides the length instead of
    /// `epochs`.
    max_train_steps: Option<usize> = optional("unset"),
        read parse::count,
        check |n| *n >= 1,
        doc_type "whole number ≥ 1",
        rule "must be a whole number ≥ 1, or empty to train for `epochs`",

    // --- optimizer and learning-rate schedule

    /// The optimizer, by kohya's name (any case): `AdamW`, `AdamW8bit` (bitsandbytes'
    /// 8-bit state), `Lion` (lion-pytorch), `Lion8bit`, `SGDNesterov`, `Prodigy` (prodigyopt)
    /// or `DAdaptAdam` (dadaptation); these two find their own step size: set
    /// `learning_rate: 1`.
    optimizer_type: OptimizerType = fixed(OptimizerType::AdamW),
        read parse::choice::<OptimizerType>,
        doc_type choice_doc::<OptimizerType>(),
        rule choice_rule::<OptimizerType>(),

    /// The optimizer's arguments as kohya writes them, a list of `name=value` texts
    /// (`["weight_decay=0.1", "betas=0.9,0.99", "d_coef=2"]`); they override `weight_decay`
    /// and the `adam_*` keys.
    optimizer_args: Vec<String> = fixed(Vec::new()),
        read |v| match v {
            yaml_serde::Value::Sequence(items) => items.iter().map(parse::text).collect(),
            // kohya's command line form: one text, arguments separated by spaces.
            yaml_serde::Value::String(s) => Ok(s.split_whitespace().map(String::from).collect()),
            _ => Err(parse::Bad::Type),
        },
        doc_type "list of texts",
        rule "must be a list of name=value texts, for example [\"weight_decay=0.1\", \"betas=0.9,0.99\"]",

    /// Learning rate (typical for LoRA with AdamW: 1e-4 to 1e-3; with Prodigy or DAdaptAdam: 1).
    learning_rate: f64 = fixed(1e-4),
        read parse::float,
        check |lr| positive(*lr),
        doc_type "number > 0 (< 1 but with Prodigy, DAdaptAdam)",
        rule LR,
        kohya "2e-6",

    /// Learning rate of the UNet adapters.
    unet_lr: f64 = follows("`learning_rate`", learning_rate),
        read parse::float,
        check |lr| positive(*lr),
        doc_type "number > 0 (< 1 but with Prodigy, DAdaptAdam)",
        rule LR,

    /// Learning rate of the text-encoder adapters (with `train_text_encoder`).
    text_encoder_lr: f64 = follows("`learning_rate`", learning_rate),
        read parse::float,
        check |lr| positive(*lr),
        doc_type "number > 0 (< 1 but with Prodigy, DAdaptAdam)",
        rule LR,

    /// How the learning rate changes over the run, after the warmup.
    lr_scheduler: Schedule = fixed(Schedule::Cosine),
        read parse::choice::<Schedule>,
        doc_type choice_doc::<Schedule>(),
        rule choice_rule::<Schedule>(),
        aliases ["lr_scheduler_type"],
        kohya "constant",

    /// Number of cosine cycles for `cosine_with_restarts` (and half-waves for
    /// `cosine_with_min_lr` and the decay of `warmup_stable_decay`, as kohya passes it).
    lr_scheduler_num_cycles: usize = fixed(1),
        read parse::count,
        check |n| *n >= 1,
        doc_type "whole number ≥ 1",
        rule WHOLE_GE1,
        aliases ["lr_num_cycles", "lr_restart_cycles"],

    /// Exponent of the `polynomial` schedule (1 = a straight line).
    lr_scheduler_power: f64 = fixed(1.0),
        read parse::float,
        check |x| x.is_finite() && *x > 0.0 && *x <= 100.0,
        doc_type "number in (0, 100]",
        rule "must be > 0 and ≤ 100 (1 is a straight line; typical 0.5 to 2)",

    /// The rate `cosine_with_min_lr` and `warmup_stable_decay` end at, as a fraction of the
    /// learning rate (kohya's meaning: it applies to those schedules only). Needed by
    /// `cosine_with_min_lr`; `warmup_stable_decay` takes 0 without it, as kohya.
    lr_scheduler_min_lr_ratio: Option<f64> = optional("unset (needed by cosine_with_min_lr)"),
        read parse::float,
        check |r| (0.0..=1.0).contains(r),
        doc_type "number in [0, 1]",
        rule "must be ≥ 0 and ≤ 1 (typical 0.05 to 0.1)",

    /// Linear warmup from 0 at the start: a number of optimizer steps, or, as in kohya, a
    /// fraction of the run below 1 (`0.05` = the first 5% of the steps, rounded down).
    num_warmup_steps: Warmup = fixed(Warmup::Steps(0)),
        read parse::warmup,
        check |w| match w {
            Warmup::Fraction(f) => open_unit(*f),
            Warmup::Steps(_) => true,
        },
        doc_type "whole number ≥ 0, or a fraction in (0, 1)",
        rule "must be a whole number of steps ≥ 0, or a fraction of the run between 0 and 1 (0.05 = the first 5% of the steps)",
        aliases [
            "lr_warmup_steps": " (steps, or a fraction of the run below 1, as in kohya)",
            "warmup_steps",
        ],

    /// The decay at the end of `warmup_stable_decay`: a number of optimizer steps, or, as in
    /// kohya, a fraction of the run below 1 (`0.2` = the last 20% of the steps, rounded down).
    lr_decay_steps: Warmup = fixed(Warmup::Steps(0)),
        read parse::warmup,
        check |w| match w {
            Warmup::Fraction(f) => open_unit(*f),
            Warmup::Steps(_) => true,
        },
        doc_type "whole number ≥ 0, or a fraction in (0, 1)",
        rule "must be a whole number of steps ≥ 0, or a fraction of the run between 0 and 1 (0.2 = the last 20% of the steps)",

    /// AdamW's weight decay.
    weight_decay: f64 = fixed(0.01),
        read parse::float,
        check |x| unit(*x),
        doc_type "number in [0, 1)",
        rule "must be ≥ 0 and < 1 (typical 0.01 to 0.1)",
        aliases ["adam_weight_decay"],

    /// AdamW's β1 (momentum).
    adam_beta1: f64 = fixed(0.9),
        read parse::float,
        check |x| unit(*x),
        doc_type "number in [0, 1)",
        rule "must be ≥ 0 and < 1 (typical 0.9)",

    /// AdamW's β2.
    adam_beta2: f64 = fixed(0.999),
        read parse::float,
        check |x| unit(*x),
        doc_type "number in [0, 1)",
        rule "must be ≥ 0 and < 1 (typical 0.999)",

    /// AdamW's ε.
    adam_epsilon: f64 = fixed(1e-8),
        read parse::float,
        check |x| open_unit(*x),
        doc_type "number in (0, 1)",
        rule "must be > 0 and < 1 (typical 1e-8)",

    /// Clip the gradient norm to this; `0` turns clipping off.
    max_grad_norm: f64 = fixed(1.0),
        read parse::float,
        check |x| x.is_finite() && *x >= 0.0,
        doc_type "number ≥ 0",
        rule "must be ≥ 0 (0 turns gradient clipping off; typical 1.0)",

    // --- the diffusion loss

    /// Offset noise strength (typical 0.05–0.1): helps very dark and very bright images.
    noise_offset: f64 = fixed(0.0),
        read parse::float,
        check |x| finite_in(*x, 0.0, true, 1.0, true),
        doc_type "number in [0, 1]",
        rule "must be ≥ 0 and ≤ 1 (typical 0.05 to 0.1)",

    /// Min-SNR loss weighting with this γ (typical 5).
    min_snr_gamma: Option<f64> = optional("unset (off)"),
        read parse::float,
        check |g| g.is_finite() && *g > 0.0,
        doc_type "number > 0",
        rule "must be > 0 (typical 5), or empty for off",
        aliases ["snr_gamma"],

    /// Train the denoiser to predict v = √ᾱ·ε − √(1−ᾱ)·x₀ instead of the noise ε: for
    /// v-prediction models (SD2.x 768-v). A single-file checkpoint does not say which it is;
    /// a diffusers folder's scheduler config does and must agree. Samples are drawn with the
    /// same prediction.
    v_parameterization: bool = fixed(false),
        read parse::flag,
        doc_type "true/false",
        rule FLAG,

    /// Rescale the noise schedule to zero terminal SNR (Lin et al. 2023, kohya's option):
    /// the last timestep is pure noise. Meant with `v_parameterization` (ε cannot be
    /// predicted from pure noise); training only, samples use the model's own schedule.
    zero_terminal_snr: bool = fixed(false),
        read parse::flag,
        doc_type "true/false",
        rule FLAG,

    // --- compute

    /// Precision of the frozen model's activations on a GPU (`fp16`: f16 storage, f32
    /// accumulation, dynamic loss scaling; `bf16`: bf16 storage, f32 accumulation, no loss
    /// scaling, compute capability 8.0+ only, refused on Turing). The CPU's is
    /// `cpu_precision`. LoRA weights and optimizer state are always f32.
    mixed_precision: MixedPrecision = fixed(MixedPrecision::Fp16),
        read parse::mixed_precision,
        doc_type choice_doc::<MixedPrecision>(),
        rule choice_rule::<MixedPrecision>(),
        kohya "no",

    /// Precision of the CPU's products with frozen weights (linear and convolution, forward
    /// and input gradient): `bf16` rounds both operands to bf16 and sums in f32 (PyTorch's
    /// CPU autocast; needs AVX512_BF16), everything else stays f32. A kohya config's
    /// `mixed_precision = "bf16"` means `bf16` here where the CPU has it.
    cpu_precision: CpuPrecision = fixed(CpuPrecision::F32),
        read parse::choice::<CpuPrecision>,
        doc_type choice_doc::<CpuPrecision>(),
        rule choice_rule::<CpuPrecision>(),

    /// Keep the VAE in f32 on a GPU while the rest computes in f16 (kohya's `no_half_vae`):
    /// its weights, the latents' encoding and the samples' decoding. SDXL 1.0's VAE overflows
    /// in f16 (its latents come out inf/NaN, and training refuses them); the fp16-fix VAE
    /// does not. Costs the VAE's memory twice over while it runs.
    no_half_vae: Option<bool> = optional("unset: true for SDXL, false for SD1.x/SD2.x"),
        read parse::flag,
        doc_type "true/false",
        rule FLAG,
        kohya "false",

    /// Keep only each UNet layer's input in the training forward and compute the layer again
    /// in the backward (per resnet+attention pair): less memory for the activations, about a
    /// third more compute per step, the same gradients.
    gradient_checkpointing: bool = fixed(false),
        read parse::flag,
        doc_type "true/false",
        rule FLAG,

    /// Where to train; `auto` takes the first CUDA GPU if this build and machine have one,
    /// else the CPU.
    device: Device = fixed(Device::Auto),
        read parse::device,
        doc_type backticked(Device::CHOICES),
        rule format!("must be one of {}", Device::CHOICES.join(", ")),

    /// Seed for every random choice (adapter init, noise, timesteps, shuffling), so a run can
    /// be repeated.
    seed: u64 = fixed(42),
        read parse::whole,
        doc_type "whole number ≥ 0",
        rule "must be a whole number ≥ 0",

    // --- data

    /// Training size, width,height; each side a multiple of 64 from 64 to 4096. With buckets
    /// it is the largest area an image is trained at. Unset, the size the model was trained
    /// at: 1024 for SDXL, else 512 (an SD2.x 768-v model needs `768`); sd-scripts requires it.
    resolution: Resolution = fixed(Resolution::square(512), "`512`; `1024` for SDXL"),
        read parse::resolution,
        doc_type "`512`, `\"512,768\"` or `[512, 768]`",
        rule "must be a size in pixels, a multiple of 64 from 64 to 4096: 512, \"512,768\" or [512, 768] (width, height)",

    /// Extension of the caption files next to the images (kohya's own default is `.caption`).
    caption_extension: String = fixed(".txt".to_string()),
        read parse::text,
        doc_type "text starting with `.`",
        rule "must be a file extension starting with a dot, such as .txt",
        kohya ".caption",
        verbatim: true,

    /// Aspect-ratio bucketing: train each image near its own shape instead of cropping it to
    /// `resolution`.
    enable_bucket: bool = fixed(false),
        read parse::flag,
        doc_type "true/false",
        rule FLAG,

    /// Smallest bucket side.
    min_bucket_reso: u32 = fixed(256),
        read parse::pixels,
        doc_type "multiple of 64",
        rule SIDE,

    /// Largest bucket side.
    max_bucket_reso: u32 = fixed(1024),
        read parse::pixels,
        doc_type "multiple of 64",
        rule SIDE,

    /// Step between bucket sides.
    bucket_reso_steps: u32 = fixed(64),
        read parse::pixels,
        doc_type "multiple of 64",
        rule SIDE,

    /// Never enlarge a small image to fit a bucket.
    bucket_no_upscale: bool = fixed(false),
        read parse::flag,
        doc_type "true/false",
        rule FLAG,

    /// Randomly mirror images left-right (don't use for asymmetric subjects or text).
    flip_aug: bool = fixed(false),
        read parse::flag,
        doc_type "true/false",
        rule FLAG,
        aliases ["random_flip"],

    /// Crop at random places instead of the center, a new crop for every training sample:
    /// such images are encoded by the VAE at every step (a cached latent would fix the crop;
    /// sd-scripts refuses random_crop with cache_latents), so the VAE stays loaded and each
    /// sample costs a VAE encode.
    random_crop: bool = fixed(false),
        read parse::flag,
        doc_type "true/false",
        rule FLAG,

    /// Shuffle the comma-separated tags of each caption every time it is used.
    shuffle_caption: bool = fixed(false),
        read parse::flag,
        doc_type "true/false",
        rule FLAG,

    /// Keep the first N tags in place when shuffling (for a trigger word).
    keep_tokens: usize = fixed(0),
        read parse::count,
        doc_type "whole number ≥ 0",
        rule "must be a whole number ≥ 0",

    /// Chance of training an image with an empty caption.
    caption_dropout_rate: f64 = fixed(0.0),
        read parse::float,
        check |p| unit(*p),
        doc_type "number in [0, 1)",
        rule "must be ≥ 0 and < 1",
        aliases ["caption_dropout_probability"],

    /// Chance of dropping each tag not kept in front (kohya's `caption_tag_dropout_rate`),
    /// after shuffling.
    caption_tag_dropout_rate: f64 = fixed(0.0),
        read parse::float,
        check |p| unit(*p),
        doc_type "number in [0, 1)",
        rule "must be ≥ 0 and < 1",

    /// Train with empty captions in every N-th epoch (epochs counted from 1, as kohya's
    /// `caption_dropout_every_n_epochs`); `0` = never.
    caption_dropout_every_n_epochs: usize = fixed(0),
        read parse::count,
        doc_type "whole number ≥ 0",
        rule "must be a whole number ≥ 0 (0 = never)",

    /// Text put before every caption, with a space (kohya's `caption_prefix`).
    caption_prefix: Option<String> = optional("unset"),
        read parse::text,
        doc_type "text",
        rule "must be text",
        verbatim: true,

    /// Text put after every caption, with a space (kohya's `caption_suffix`).
    caption_suffix: Option<String> = optional("unset"),
        read parse::text,
        doc_type "text",
        rule "must be text",
        verbatim: true,

    /// With shuffling or tag dropout, the tags before this separator stay in front (and,
    /// with a second one, the tags after it stay at the end), as kohya's
    /// `keep_tokens_separator` (e.g. `|||`); it replaces keep_tokens where a caption has it.
    keep_tokens_separator: Option<String> = optional("unset"),
        read parse::text,
        doc_type "text",
        rule "must be text, e.g. \"|||\"",
        verbatim: true,

    /// Joins words into one tag for shuffling and dropout, then becomes a comma (kohya's
    /// `secondary_separator`, e.g. `;;;`).
    secondary_separator: Option<String> = optional("unset"),
        read parse::text,
        doc_type "text",
        rule "must be text, e.g. \";;;\"",
        verbatim: true,

    /// kohya's wildcards: `{a|b|c}` in a caption is one of a, b, c at random each time, and
    /// a caption file of several lines gives one line at random (`{{`, `}}` are braces).
    enable_wildcard: bool = fixed(false),
        read parse::flag,
        doc_type "true/false",
        rule FLAG,

    /// Keep the encoded images (latents) on disk in `output_dir/cache/latents/<model>/`, keyed
    /// by each image's content and, by folder, by the base model (its path, size and time) and
    /// the VAE's precision (f16 or f32), so later runs on the same model skip the VAE and a run
    /// on another model (another VAE, SDXL's latent scale) does not read them.
    cache_latents_to_disk: bool = fixed(false),
        read parse::flag,
        doc_type "true/false",
        rule FLAG,

    /// Use the text encoder's output this many layers from the end (`2` is common for anime
    /// models).
    clip_skip: usize = fixed(1),
        read parse::count,
        check |n| (1..=super::validate::CLIP_LAYERS).contains(n),
        doc_type "whole number 1–12",
        rule "must be a whole number from 1 to 12 (1 = the last CLIP layer; 2 is common for anime models)",

    /// Caption length in tokens; longer captions are cut. 150 and 225 encode the caption in
    /// windows of 75 tokens, each through the text encoder alone, joined as sd-scripts does
    /// (the UNet reads 152 or 227 states); in training, caching and sampling.
    max_token_length: usize = fixed(75),
        read parse::count,
        check |n| [75, 150, 225].contains(n),
        doc_type "`75`, `150` or `225`",
        rule "must be 75, 150 or 225 (kohya's choices: one, two or three windows of 75 tokens)",

    /// Before training, crop and resize `train_data_dir`'s pictures as `lorafuse prepare`
    /// does (`center`, `smart` or `none` as its `--crop`), to `resolution` or, with
    /// `enable_bucket`, to their buckets, into `<output_dir>/auto/prepared`, which is then
    /// trained on; redone only when the pictures or these settings change.
    auto_crop: Option<CropMode> = optional("unset (train on the folder as it is)"),
        read parse::choice,
        doc_type choice_doc::<CropMode>(),
        rule choice_rule::<CropMode>(),

    /// Before training, caption the pictures without a caption as `lorafuse caption` does:
    /// a WD14 tagger folder (`--tagger`) or a CLIP model (`--clip`, lorafuse's vocabularies);
    /// existing captions are kept; redone only when the pictures or the settings change.
    auto_caption: Option<PathBuf> = optional("unset (captions as they are)"),
        read parse::path,
        doc_type "path",
        rule "must be a WD14 tagger folder (with selected_tags.csv) or a CLIP model (folder or model.safetensors)",
        verbatim: true,

    /// `auto_caption` with a tagger: general tags above this probability are kept.
    auto_caption_threshold: f64 = fixed(0.35),
        read parse::float,
        check |p| finite_in(*p, 0.0, true, 1.0, true),
        doc_type "number 0–1",
        rule "must be a probability from 0 to 1",

    /// `auto_caption` with a CLIP model: the phrases kept from each vocabulary list.
    auto_caption_top: usize = fixed(1),
        read parse::count,
        check |n| *n >= 1,
        doc_type "whole number ≥ 1",
        rule WHOLE_GE1,

    // --- validation and early stopping

    /// Share of the images held out to measure a validation loss (`0.1` = 10%); `0` = no
    /// validation.
    validation_split: f64 = fixed(0.0),
        read parse::float,
        check |p| unit(*p),
        doc_type "number in [0, 1)",
        rule "must be ≥ 0 and < 1 (0.1 holds out 10% of the images)",

    /// Measure the validation loss every N optimizer steps; needs `validation_split`.
    validate_every_n_steps: Option<usize> = optional("unset (each epoch)"),
        read parse::count,
        check |n| *n >= 1,
        doc_type "whole number ≥ 1",
        rule "must be a whole number ≥ 1, or empty to validate at the end of each epoch",

    /// Stop when the validation loss has not improved for this many validations; needs
    /// `validation_split`.
    early_stopping_patience: Option<usize> = optional("unset (off)"),
        read parse::count,
        check |n| *n >= 1,
        doc_type "whole number ≥ 1",
        rule "must be a whole number ≥ 1 (validations without improvement), or empty for off",

    /// Smallest drop of the validation loss that counts as an improvement.
    early_stopping_min_delta: f64 = fixed(0.0),
        read parse::float,
        check |x| x.is_finite() && *x >= 0.0,
        doc_type "number ≥ 0",
        rule "must be ≥ 0",

    // --- sample images

    /// Generate sample images every N optimizer steps; needs `sample_prompts`.
    sample_every_n_steps: usize = fixed(0, "`0` (never)"),
        read parse::count,
        doc_type "whole number ≥ 0",
        rule "must be a whole number ≥ 0 (0 = never)",

    /// Generate sample images at the end of every N epochs (a last, partial epoch counts),
    /// named `<output_name>_e<epoch:06>_NN.png`; when set, `sample_every_n_steps` is not
    /// used (as in kohya); needs `sample_prompts`.
    sample_every_n_epochs: usize = fixed(0, "`0` (never)"),
        read parse::count,
        doc_type "whole number ≥ 0",
        rule "must be a whole number ≥ 0 (0 = never)",

    /// Also generate sample images before the first step (`<output_name>_e000000_NN.png`, as
    /// kohya names them; not when resuming); needs `sample_prompts`.
    sample_at_first: bool = fixed(false),
        read parse::flag,
        doc_type "true/false",
        rule FLAG,

    /// The sampler of the sample prompts that name none with `--ss`: kohya's names
    /// (`k_euler`, `k_euler_a` too), and `dpmsolver++_karras`, lorafuse's for DPM++ 2M with
    /// Karras σ (A1111's "DPM++ 2M Karras").
    sample_sampler: SamplerKind = fixed(SamplerKind::Ddim),
        read parse::sampler,
        doc_type choice_doc::<SamplerKind>(),
        rule choice_rule::<SamplerKind>(),

    /// Prompts for the sample images, in kohya's prompt-line syntax (`a photo of sks dog --n
    /// blurry --w 512 --h 768 --d 42 --s 28 --l 7.5`), or a `.txt` file with one per line
    /// (`#` lines skipped).
    sample_prompts: SamplePrompts = fixed(SamplePrompts::default(), "none"),
        read parse::sample_prompts,
        doc_type "list of texts, or a `.txt` path",
        rule "must be a list of prompts, or the path of a .txt file with one prompt per line",
}

/// The declaration of a key.
pub(crate) fn find(name: &str) -> Option<&'static KeyDecl> {
    KEYS.iter().find(|k| k.name == name)
}

/// The rule text of a key (empty for a name that is not a key, which the code never asks).
pub(crate) fn rule(name: &str) -> &'static str {
    find(name).map_or("", |k| k.rule.as_str())
}

/// Whether a per-block list of `len` values fits some family ([`BlockLayout`]); the model's
/// own is checked when it is loaded (`lora::blocks::check_lengths`).
fn block_count(len: usize) -> bool {
    BlockLayout::ALL.iter().any(|l| l.blocks() == len)
}

/// `down_lr_weight` / `up_lr_weight`: at most one weight per block of the side (the longer
/// side of the families; the model's is checked when it is loaded).
fn side_ok(w: &SideWeights) -> bool {
    match w {
        SideWeights::List(w) => w.len() <= SIDE_BLOCKS,
        SideWeights::Curve { .. } => true,
    }
}
