//! The key names: lorafuse's own (with the rule each value must follow, as error messages say
//! it), other trainers' names for them, the kohya options lorafuse does not have, and the
//! nearest-name suggestion for typing mistakes.

use super::error::KeyHint;

/// One lorafuse key.
pub(crate) struct Key {
    pub name: &'static str,
    /// What a valid value is, in the words of an error message ("must be ...").
    pub rule: &'static str,
    /// A `--set` value for this key is taken as written (paths and names), not read as YAML.
    pub verbatim: bool,
}

const fn key(name: &'static str, rule: &'static str) -> Key {
    Key {
        name,
        rule,
        verbatim: false,
    }
}

const fn text_key(name: &'static str, rule: &'static str) -> Key {
    Key {
        name,
        rule,
        verbatim: true,
    }
}

const WHOLE_GE1: &str = "must be a whole number ≥ 1";
const FLAG: &str = "must be true or false";
const LR: &str = "must be > 0 and < 1 (typical LoRA values 1e-4 to 1e-3)";

/// Every key, in the order of `TrainConfig`'s fields and of README.md.
pub(crate) const KEYS: &[Key] = &[
    text_key(
        "train_data_dir",
        "must be an existing folder of training images (with .txt captions, optionally in kohya's N_name subfolders)",
    ),
    text_key(
        "base_model",
        "must be a Stable Diffusion 1.x model: a single .safetensors file or a diffusers folder",
    ),
    text_key("output_dir", "must be a folder path lorafuse can create and write to"),
    text_key(
        "output_name",
        "must be a file name without folder or extension (lorafuse adds .safetensors)",
    ),
    key("save_precision", "must be one of fp16, fp32, bf16"),
    key(
        "save_every_n_epochs",
        "must be a whole number ≥ 1, or empty to save only at the end",
    ),
    key(
        "save_every_n_steps",
        "must be a whole number ≥ 1, or empty to save only at the end",
    ),
    text_key("logging_dir", "must be a folder path lorafuse can create and write to"),
    key(
        "lora_rank",
        "must be a whole number from 1 to 1024 (typical 4 to 128)",
    ),
    key(
        "lora_alpha",
        "must be a number > 0 (the adapter scale is lora_alpha / lora_rank)",
    ),
    key("lora_dropout", "must be ≥ 0 and < 1"),
    key("lora_targets", "must be one of transformer, attention"),
    key("train_text_encoder", FLAG),
    key("batch_size", WHOLE_GE1),
    key("gradient_accumulation_steps", WHOLE_GE1),
    key("epochs", WHOLE_GE1),
    key(
        "max_train_steps",
        "must be a whole number ≥ 1, or empty to train for `epochs`",
    ),
    key("learning_rate", LR),
    key("unet_lr", LR),
    key("text_encoder_lr", LR),
    key(
        "lr_scheduler",
        "must be one of constant, constant_with_warmup, linear, cosine, cosine_with_restarts",
    ),
    key("lr_scheduler_num_cycles", WHOLE_GE1),
    key(
        "num_warmup_steps",
        "must be a whole number of steps ≥ 0, or a fraction of the run between 0 and 1 (0.05 = the first 5% of the steps)",
    ),
    key("weight_decay", "must be ≥ 0 and < 1 (typical 0.01 to 0.1)"),
    key("adam_beta1", "must be ≥ 0 and < 1 (typical 0.9)"),
    key("adam_beta2", "must be ≥ 0 and < 1 (typical 0.999)"),
    key("adam_epsilon", "must be > 0 and < 1 (typical 1e-8)"),
    key(
        "max_grad_norm",
        "must be ≥ 0 (0 turns gradient clipping off; typical 1.0)",
    ),
    key("noise_offset", "must be ≥ 0 and ≤ 1 (typical 0.05 to 0.1)"),
    key("min_snr_gamma", "must be > 0 (typical 5), or empty for off"),
    key("mixed_precision", "must be one of no, fp16, bf16"),
    key("device", "must be one of auto, cpu, cuda, cuda:N"),
    key("seed", "must be a whole number ≥ 0"),
    key(
        "resolution",
        "must be a size in pixels, a multiple of 64 from 64 to 4096: 512, \"512,768\" or [512, 768] (width, height)",
    ),
    text_key(
        "caption_extension",
        "must be a file extension starting with a dot, such as .txt",
    ),
    key("enable_bucket", FLAG),
    key("min_bucket_reso", "must be a multiple of 64 from 64 to 4096"),
    key("max_bucket_reso", "must be a multiple of 64 from 64 to 4096"),
    key(
        "bucket_reso_steps",
        "must be a multiple of 64 from 64 to 4096",
    ),
    key("bucket_no_upscale", FLAG),
    key("flip_aug", FLAG),
    key("random_crop", FLAG),
    key("shuffle_caption", FLAG),
    key("keep_tokens", "must be a whole number ≥ 0"),
    key("caption_dropout_rate", "must be ≥ 0 and < 1"),
    key("cache_latents_to_disk", FLAG),
    key(
        "clip_skip",
        "must be a whole number from 1 to 12 (1 = the last CLIP layer; 2 is common for anime models)",
    ),
    key(
        "max_token_length",
        "must be 75 (kohya's 150 and 225 are not supported yet)",
    ),
    key(
        "validation_split",
        "must be ≥ 0 and < 1 (0.1 holds out 10% of the images)",
    ),
    key(
        "validate_every_n_steps",
        "must be a whole number ≥ 1, or empty to validate at the end of each epoch",
    ),
    key(
        "early_stopping_patience",
        "must be a whole number ≥ 1 (validations without improvement), or empty for off",
    ),
    key("early_stopping_min_delta", "must be ≥ 0"),
    key("sample_every_n_steps", "must be a whole number ≥ 0 (0 = never)"),
    key(
        "sample_prompts",
        "must be a list of prompts, or the path of a .txt file with one prompt per line",
    ),
];

/// The keys without a default, and what each is (for "missing required key").
pub(crate) const REQUIRED: &[(&str, &str)] = &[
    (
        "train_data_dir",
        "the folder of training images and their .txt captions",
    ),
    (
        "base_model",
        "the Stable Diffusion 1.x model to train on (a .safetensors file or a diffusers folder)",
    ),
    (
        "output_dir",
        "the folder the LoRA files, logs and config.effective.yaml are written to",
    ),
];

pub(crate) fn find(name: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.name == name)
}

/// The rule text of a key (empty for a name that is not a key, which the code never asks).
pub(crate) fn rule(name: &str) -> &'static str {
    find(name).map_or("", |k| k.rule)
}

enum Foreign {
    Renamed(&'static str, &'static str),
    Absent(&'static str),
}
use Foreign::{Absent, Renamed};

const GENERIC: &str =
    "kohya has this option, lorafuse does not; remove it (README.md lists every key)";
const ATTENTION: &str =
    "not needed: lorafuse always uses its own memory-efficient attention; remove it";
const OPTIMIZER: &str = "lorafuse trains with AdamW only (f32 moments); tune it with weight_decay, adam_beta1, adam_beta2 and adam_epsilon, and remove this key";
const SD1_ONLY: &str =
    "lorafuse trains Stable Diffusion 1.x (epsilon prediction) only; remove this key";
const F32_LORA: &str = "LoRA weights always train in f32 in lorafuse; mixed_precision sets the frozen model's precision; remove this key";
const REG: &str = "regularisation images are not supported; remove this key";
const LOSS: &str = "lorafuse trains with the mean squared error, optionally min-SNR weighted (min_snr_gamma); remove this key";
const RESUME: &str = "resuming a run is not supported yet; remove this key";

/// Other trainers' keys: kohya sd-scripts (and its GUIs), diffusers' LoRA scripts, OneTrainer
/// and SimpleTuner names for lorafuse keys, then kohya options lorafuse does not have.
const FOREIGN: &[(&str, Foreign)] = &[
    ("network_dim", Renamed("lora_rank", "")),
    ("rank", Renamed("lora_rank", "")),
    (
        "network_alpha",
        Renamed(
            "lora_alpha",
            " (lorafuse's default is lora_rank, a scale of 1; kohya's is 1)",
        ),
    ),
    ("network_dropout", Renamed("lora_dropout", "")),
    ("max_train_epochs", Renamed("epochs", "")),
    ("num_train_epochs", Renamed("epochs", "")),
    (
        "lr_warmup_steps",
        Renamed(
            "num_warmup_steps",
            " (steps, or a fraction of the run below 1, as in kohya)",
        ),
    ),
    ("warmup_steps", Renamed("num_warmup_steps", "")),
    ("train_batch_size", Renamed("batch_size", "")),
    ("pretrained_model_name_or_path", Renamed("base_model", "")),
    ("instance_data_dir", Renamed("train_data_dir", "")),
    ("lr_num_cycles", Renamed("lr_scheduler_num_cycles", "")),
    ("lr_scheduler_type", Renamed("lr_scheduler", "")),
    ("snr_gamma", Renamed("min_snr_gamma", "")),
    ("random_flip", Renamed("flip_aug", "")),
    ("adam_weight_decay", Renamed("weight_decay", "")),
    ("caption_dropout_probability", Renamed("caption_dropout_rate", "")),
    ("xformers", Absent(ATTENTION)),
    ("sdpa", Absent(ATTENTION)),
    ("mem_eff_attn", Absent(ATTENTION)),
    ("enable_xformers_memory_efficient_attention", Absent(ATTENTION)),
    (
        "gradient_checkpointing",
        Absent("lorafuse has no gradient checkpointing yet; remove this key"),
    ),
    ("optimizer_type", Absent(OPTIMIZER)),
    ("optimizer_args", Absent(OPTIMIZER)),
    ("use_8bit_adam", Absent(OPTIMIZER)),
    (
        "network_module",
        Absent("lorafuse trains plain LoRA (kohya's networks.lora) only; remove this key"),
    ),
    (
        "network_args",
        Absent("network arguments (conv_dim, LoCon, block-wise dims) are not supported; lora_targets chooses the adapted layers"),
    ),
    (
        "network_weights",
        Absent("starting from an existing LoRA file is not supported yet; remove this key"),
    ),
    (
        "network_train_unet_only",
        Absent("lorafuse trains the UNet only unless train_text_encoder: true; remove this key"),
    ),
    (
        "network_train_text_encoder_only",
        Absent("training the text encoder alone is not supported; remove this key"),
    ),
    ("v2", Absent(SD1_ONLY)),
    ("v_parameterization", Absent(SD1_ONLY)),
    ("zero_terminal_snr", Absent(SD1_ONLY)),
    ("sdxl", Absent(SD1_ONLY)),
    ("full_fp16", Absent(F32_LORA)),
    ("full_bf16", Absent(F32_LORA)),
    ("fp8_base", Absent(F32_LORA)),
    (
        "save_model_as",
        Absent("lorafuse always saves .safetensors in kohya's LoRA format; remove this key"),
    ),
    ("save_state", Absent(RESUME)),
    ("resume", Absent(RESUME)),
    (
        "dataset_config",
        Absent("lorafuse has no separate dataset file: set train_data_dir, resolution, enable_bucket and the caption keys in this file"),
    ),
    ("reg_data_dir", Absent(REG)),
    ("prior_loss_weight", Absent(REG)),
    (
        "color_aug",
        Absent("not supported; lorafuse's augmentations are flip_aug and random_crop"),
    ),
    (
        "face_crop_aug_range",
        Absent("not supported; lorafuse's augmentations are flip_aug and random_crop"),
    ),
    (
        "cache_latents",
        Absent("lorafuse decides latent caching itself; cache_latents_to_disk: true keeps the cache on disk; remove this key"),
    ),
    (
        "sample_every_n_epochs",
        Absent("lorafuse samples by steps: use sample_every_n_steps"),
    ),
    (
        "lr_scheduler_power",
        Absent("the polynomial scheduler is not available (lr_scheduler: constant, constant_with_warmup, linear, cosine or cosine_with_restarts); remove this key"),
    ),
    ("loss_type", Absent(LOSS)),
    ("huber_c", Absent(LOSS)),
    ("debiased_estimation_loss", Absent(LOSS)),
    (
        "vae",
        Absent("a separate VAE is not supported: the VAE comes from base_model; remove this key"),
    ),
    (
        "config_file",
        Absent("this file is the configuration; lorafuse reads one file; remove this key"),
    ),
    ("output_config", Absent(GENERIC)),
    ("no_half_vae", Absent(GENERIC)),
    ("cache_text_encoder_outputs", Absent(GENERIC)),
    ("cache_text_encoder_outputs_to_disk", Absent(GENERIC)),
    ("max_data_loader_n_workers", Absent(GENERIC)),
    ("persistent_data_loader_workers", Absent(GENERIC)),
    ("log_with", Absent(GENERIC)),
    ("log_prefix", Absent(GENERIC)),
    ("report_to", Absent(GENERIC)),
    ("sample_sampler", Absent(GENERIC)),
    ("sample_at_first", Absent(GENERIC)),
    ("save_last_n_epochs", Absent(GENERIC)),
    ("save_n_epoch_ratio", Absent(GENERIC)),
    ("caption_prefix", Absent(GENERIC)),
    ("caption_suffix", Absent(GENERIC)),
    ("caption_separator", Absent(GENERIC)),
    ("keep_tokens_separator", Absent(GENERIC)),
    ("weighted_captions", Absent(GENERIC)),
    ("caption_tag_dropout_rate", Absent(GENERIC)),
    ("caption_dropout_every_n_epochs", Absent(GENERIC)),
    ("noise_offset_random_strength", Absent(GENERIC)),
    ("adaptive_noise_scale", Absent(GENERIC)),
    ("multires_noise_iterations", Absent(GENERIC)),
    ("multires_noise_discount", Absent(GENERIC)),
    ("ip_noise_gamma", Absent(GENERIC)),
    ("min_timestep", Absent(GENERIC)),
    ("max_timestep", Absent(GENERIC)),
    ("scale_weight_norms", Absent(GENERIC)),
    ("loraplus_lr_ratio", Absent(GENERIC)),
    ("down_lr_weight", Absent(GENERIC)),
    ("mid_lr_weight", Absent(GENERIC)),
    ("up_lr_weight", Absent(GENERIC)),
    ("block_lr_zero_threshold", Absent(GENERIC)),
    ("max_validation_steps", Absent(GENERIC)),
    ("validate_every_n_epochs", Absent(GENERIC)),
    ("validation_seed", Absent(GENERIC)),
    ("vae_batch_size", Absent(GENERIC)),
    ("lowram", Absent(GENERIC)),
    ("highvram", Absent(GENERIC)),
    ("training_comment", Absent(GENERIC)),
    ("in_json", Absent(GENERIC)),
    ("dataset_repeats", Absent(GENERIC)),
    ("enable_wildcard", Absent(GENERIC)),
];

/// What an unknown key probably meant: another trainer's name, a kohya option lorafuse lacks,
/// or the nearest key name (lorafuse's or another trainer's) within a few edits.
pub(crate) fn hint(unknown: &str) -> KeyHint {
    let normal = unknown.trim().to_ascii_lowercase().replace('-', "_");
    for (name, foreign) in FOREIGN {
        if *name == normal {
            return match foreign {
                Renamed(ours, note) => KeyHint::Renamed { ours, note },
                Absent(why) => KeyHint::NotInLorafuse(why),
            };
        }
    }
    if let Some(k) = find(&normal) {
        return KeyHint::DidYouMean(k.name);
    }
    let budget = match normal.chars().count() {
        0..=3 => 1,
        4..=8 => 2,
        _ => 3,
    };
    let mut best: Option<(usize, &'static str)> = None;
    let renamed = FOREIGN.iter().filter_map(|(name, f)| match f {
        Renamed(ours, _) => Some((*name, *ours)),
        Absent(_) => None,
    });
    let candidates = KEYS.iter().map(|k| (k.name, k.name)).chain(renamed);
    for (name, ours) in candidates {
        let d = edit_distance(&normal, name);
        if d <= budget && best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, ours));
        }
    }
    if let Some((_, ours)) = best {
        return KeyHint::DidYouMean(ours);
    }
    // A key with something added or cut at the end: `train_data_directory`,
    // `base_model_path`, `output_dir_name`.
    KEYS.iter()
        .map(|k| k.name)
        .filter(|k| {
            let (short, long) = if k.len() <= normal.len() {
                (*k, normal.as_str())
            } else {
                (normal.as_str(), *k)
            };
            short.len() >= 6 && long.starts_with(short)
        })
        .max_by_key(|k| k.len())
        .map_or(KeyHint::None, KeyHint::DidYouMean)
}

/// Optimal-string-alignment distance: insertions, deletions, substitutions and swaps of two
/// neighbouring characters each cost 1 (`learnig_rate` → `learning_rate` is 1,
/// `laerning_rate` is 1). Inputs are short key names; long ones are cut at 64 characters.
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().take(64).collect();
    let b: Vec<char> = b.chars().take(64).collect();
    let w = b.len() + 1;
    let mut d = vec![0usize; (a.len() + 1) * w];
    for i in 0..=a.len() {
        d[i * w] = i;
    }
    for (j, cell) in d.iter_mut().enumerate().take(w) {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[(i - 1) * w + j] + 1)
                .min(d[i * w + j - 1] + 1)
                .min(d[(i - 1) * w + j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[(i - 2) * w + j - 2] + 1);
            }
            d[i * w + j] = v;
        }
    }
    d[a.len() * w + b.len()]
}

/// The choice nearest to a mistyped one, if it is within two edits (`cosin` → `cosine`).
pub(crate) fn nearest_choice(word: &str, choices: &[&'static str]) -> Option<&'static str> {
    let word = word.to_ascii_lowercase();
    choices
        .iter()
        .map(|c| (edit_distance(&word, c), *c))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}
