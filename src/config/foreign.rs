//! Names that are not lorafuse keys: kohya options lorafuse does not have (refused with what
//! to do instead), kohya flags that ask for what lorafuse does anyway (accepted with a
//! notice), and the hint for an unknown key: another trainer's name for one of ours (declared
//! with the key, keys.rs), or the nearest key name for a typing mistake.

use super::error::KeyHint;
use super::keys::{find, KEYS};

/// A key of another trainer that is not a lorafuse key.
enum Foreign {
    /// Refused: why, or what to do instead.
    Absent(&'static str),
    /// Accepted with a notice (a flag asking for what lorafuse does anyway), read as true or
    /// false; the notice says what lorafuse does.
    Accepted(&'static str),
}
use Foreign::{Absent, Accepted};

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
const SAVES_STATE: &str = "lorafuse always saves its training state (output_dir/state.safetensors: the LoRA weights, the optimizer moments and the counters) at every save point and at the end, so that `lorafuse train CONFIG --resume` can continue the run; this key changes nothing";

/// kohya options lorafuse does not have, and kohya flags lorafuse accepts because it does
/// what they ask anyway. (Other trainers' names for lorafuse keys are declared with the keys,
/// in keys.rs.)
const FOREIGN: &[(&str, Foreign)] = &[
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
        Absent("network arguments are not read: for LoCon set `conv_dim` and `conv_alpha` (lorafuse keys); block-wise dims are not supported, lora_targets chooses the linear layers"),
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
    ("save_state", Accepted(SAVES_STATE)),
    ("save_state_on_train_end", Accepted(SAVES_STATE)),
    (
        "resume",
        Absent("lorafuse resumes from the state it saved in output_dir: run `lorafuse train CONFIG --resume` (or `--resume DIR` with the output_dir of that run) and remove this key"),
    ),
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

/// What a key that is not a lorafuse key is: a kohya flag accepted with a notice, or not.
pub(crate) fn accepted(key: &str) -> Option<&'static str> {
    FOREIGN.iter().find_map(|(name, f)| match f {
        Accepted(notice) if *name == key => Some(*notice),
        _ => None,
    })
}

/// Other trainers' names for lorafuse keys: (theirs, ours, what differs besides the name).
fn renamed() -> impl Iterator<Item = (&'static str, &'static str, &'static str)> {
    KEYS.iter().flat_map(|k| {
        k.aliases
            .iter()
            .map(move |(theirs, note)| (*theirs, k.name, *note))
    })
}

/// What an unknown key probably meant: another trainer's name, a kohya option lorafuse lacks,
/// or the nearest key name (lorafuse's or another trainer's) within a few edits.
pub(crate) fn hint(unknown: &str) -> KeyHint {
    let normal = unknown.trim().to_ascii_lowercase().replace('-', "_");
    if let Some((_, ours, note)) = renamed().find(|(theirs, _, _)| *theirs == normal) {
        return KeyHint::Renamed { ours, note };
    }
    for (name, foreign) in FOREIGN {
        if *name == normal {
            if let Absent(why) = foreign {
                return KeyHint::NotInLorafuse(why);
            }
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
    let candidates = KEYS
        .iter()
        .map(|k| (k.name, k.name))
        .chain(renamed().map(|(theirs, ours, _)| (theirs, ours)));
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
pub(crate) fn nearest_choice(word: &str, choices: &[impl AsRef<str>]) -> Option<String> {
    let word = word.to_ascii_lowercase();
    choices
        .iter()
        .map(|c| (edit_distance(&word, c.as_ref()), c.as_ref()))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c.to_string())
}
