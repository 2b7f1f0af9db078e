//! Names that are not lorafuse keys: kohya sd-scripts / lora-scripts options lorafuse has no
//! key for. Each is judged by its value: a value that asks for what lorafuse does anyway (or
//! for nothing: `v2 = false`, `reg_data_dir = ""`) is accepted, silently in a kohya-format
//! file and with a one-line notice in a lorafuse YAML file; a value that asks for something
//! lorafuse does not do is refused with the reason and what to use instead. Also the hint for
//! an unknown key: another trainer's name for one of ours (declared with the key, keys.rs), or
//! the nearest key name for a typing mistake.

use yaml_serde::Value;

use super::error::KeyHint;
use super::keys::{find, KEYS};

/// The values of a kohya option that lorafuse accepts.
#[derive(Clone, Copy)]
enum Fits {
    /// Any value.
    Any,
    /// true or false.
    Flag,
    False,
    /// Empty: `""`, `[]`, `{}`, or no value.
    Empty,
    /// The number 0.
    Zero,
    /// A number ≥ 0.
    Number,
    /// One of these words (any case).
    Words(&'static [&'static str]),
}

/// A kohya option lorafuse has no key for.
struct Foreign {
    name: &'static str,
    /// The values accepted; none: refused whatever the value.
    fits: &'static [Fits],
    /// What lorafuse does, for an accepted value.
    note: &'static str,
    /// Why any other value is refused, and what to do instead.
    refused: &'static str,
}

/// Refused whatever the value.
const fn refused(name: &'static str, why: &'static str) -> Foreign {
    Foreign {
        name,
        fits: &[],
        note: "",
        refused: why,
    }
}

/// Accepted for the values `fits` allows, as lorafuse does that anyway (`note`).
const fn same(
    name: &'static str,
    fits: &'static [Fits],
    note: &'static str,
    refused: &'static str,
) -> Foreign {
    Foreign {
        name,
        fits,
        note,
        refused,
    }
}

use Fits::{Any, Empty, False, Flag, Number, Words, Zero};

const GENERIC: &str =
    "kohya has this option, lorafuse does not; remove it (README.md lists every key)";
const TOKEN_WARMUP: &str = "token warmup (kohya's: each caption starts with its first token_warmup_min tags and gains tags until step token_warmup_step) is not implemented in lorafuse, which uses every caption whole from the first step; remove the key (keep_tokens with shuffle_caption or caption_tag_dropout_rate vary the tags instead)";
const ATTENTION: &str = "lorafuse always uses its own memory-efficient attention";
const OPTIMIZER: &str = "write optimizer_type = \"AdamW8bit\" instead (kohya's own replacement for this deprecated key) and remove this key";
const SD1_ONLY: &str =
    "lorafuse trains Stable Diffusion 1.x, 2.x and SDXL (ε- or v-prediction, kohya's plain loss)";
const FAMILY_FROM_CHECKPOINT: &str =
    "lorafuse reads the model family (SD1.x, SD2.x or SDXL) from the checkpoint (true: `plan` without the checkpoint plans this family; a checkpoint of another is noted)";
const F32_LORA: &str = "LoRA weights always train in f32 in lorafuse; mixed_precision sets the frozen model's precision; remove this key";
const LOSS: &str = "lorafuse trains with the mean squared error (kohya's l2), optionally min-SNR weighted (min_snr_gamma); remove this key";
const SAVES_STATE: &str = "lorafuse always saves its training state (output_dir/state.safetensors: the LoRA weights, the optimizer moments and the counters) at every save point and at the end, so that `lorafuse train CONFIG --resume` can continue the run; this key changes nothing";
const WORKERS: &str = "lorafuse loads data without worker processes; this key changes nothing";
const UNUSED_HERE: &str = "only used by an option lorafuse does not have; this key changes nothing";
const LS_PROMPT: &str = "lora-scripts' prompt fields are not read: write the sample prompt in kohya's prompt-line syntax (a photo of sks dog --n negative --w 512 --h 512 --l 7 --s 24 --d 1) into a .txt file and set sample_prompts to it";
const LS_PROMPT_PART: &str =
    "lora-scripts builds a sample prompt with it from positive_prompts; alone it changes nothing";
const CAPTIONS: &str = "tags are separated by commas in lorafuse (secondary_separator joins words into one tag); remove this key";

/// kohya options lorafuse has no key for. (Other trainers' names for lorafuse keys are
/// declared with the keys, in keys.rs; `network_train_unet_only` and the kohya meanings of a
/// kohya-format file are kohya.rs's.)
const FOREIGN: &[Foreign] = &[
    same("xformers", &[Flag], ATTENTION, "must be true or false"),
    same("sdpa", &[Flag], ATTENTION, "must be true or false"),
    same("mem_eff_attn", &[Flag], ATTENTION, "must be true or false"),
    same("enable_xformers_memory_efficient_attention", &[Flag], ATTENTION, "must be true or false"),
    same("use_8bit_adam", &[False], "the optimizer is optimizer_type's", OPTIMIZER),
    same(
        "network_module",
        &[Words(&["networks.lora", "lycoris.kohya"])],
        "lorafuse trains kohya's LoRA (networks.lora) and LyCORIS's lora/locon and loha (lycoris.kohya, with network_args' algo)",
        "lorafuse trains kohya's networks.lora and LyCORIS's lycoris.kohya (algo lora, locon or loha); DyLoRA and the other network modules are not supported",
    ),
    same("v2", &[Flag], FAMILY_FROM_CHECKPOINT, "must be true or false"),
    same("sdxl", &[Flag], FAMILY_FROM_CHECKPOINT, "must be true or false"),
    same("full_fp16", &[False], "LoRA weights train in f32", F32_LORA),
    same("full_bf16", &[False], "LoRA weights train in f32", F32_LORA),
    same("fp8_base", &[False], "the frozen model is not stored in fp8", F32_LORA),
    same(
        "save_model_as",
        &[Words(&["safetensors"])],
        "lorafuse saves .safetensors in kohya's LoRA format",
        "lorafuse saves .safetensors (kohya's LoRA format) only; remove this key",
    ),
    same("save_state_on_train_end", &[Flag], SAVES_STATE, "must be true or false"),
    same("color_aug", &[False], "no colour augmentation", "not supported; lorafuse's augmentations are flip_aug and random_crop"),
    same("face_crop_aug_range", &[Empty], "no face-crop augmentation", "not supported; lorafuse's augmentations are flip_aug and random_crop"),
    same(
        "cache_latents",
        &[Flag],
        "lorafuse decides latent caching itself (cache_latents_to_disk: true keeps the cache on disk)",
        "must be true or false",
    ),
    same("lr_scheduler_args", &[Empty], "no scheduler arguments", GENERIC),
    same("loss_type", &[Words(&["l2"])], "lorafuse trains with the mean squared error (kohya's l2)", LOSS),
    same("huber_c", &[Number], "it is used by the huber losses only, which lorafuse does not have", LOSS),
    same("huber_schedule", &[Any], "it is used by the huber losses only, which lorafuse does not have", LOSS),
    same("debiased_estimation_loss", &[False], "no debiased estimation", LOSS),
    same("masked_loss", &[False], "no masked loss", GENERIC),
    same("alpha_mask", &[False], "no alpha mask", GENERIC),
    same("vae", &[Empty], "the VAE comes from base_model", "a separate VAE is not supported: the VAE comes from base_model; remove this key"),
    refused("config_file", "this file is the configuration; lorafuse reads one file; remove this key"),
    same("output_config", &[False], "no config is written instead of training", "lorafuse writes output_dir/config.effective.yaml at every run; remove this key"),
    same(
        "cache_text_encoder_outputs",
        &[False],
        "lorafuse caches the text encoder's outputs itself when train_text_encoder is false",
        "lorafuse caches the text encoder's outputs itself when train_text_encoder is false; remove this key",
    ),
    same("cache_text_encoder_outputs_to_disk", &[False], "the text encoder's outputs are not kept on disk", GENERIC),
    same("max_data_loader_n_workers", &[Number], WORKERS, "must be a whole number ≥ 0"),
    same("persistent_data_loader_workers", &[Flag], WORKERS, "must be true or false"),
    same("log_with", &[Words(&["tensorboard"])], "lorafuse writes TensorBoard logs into logging_dir", "lorafuse writes TensorBoard logs (into logging_dir) only; remove this key"),
    same("report_to", &[Words(&["tensorboard"])], "lorafuse writes TensorBoard logs into logging_dir", "lorafuse writes TensorBoard logs (into logging_dir) only; remove this key"),
    same("log_prefix", &[Any], "lorafuse writes its logs straight into logging_dir, without a prefixed subfolder", "must be text"),
    same("log_tracker_name", &[Any], "lorafuse writes its logs straight into logging_dir", "must be text"),
    same("save_n_epoch_ratio", &[Zero, Empty], "no saves by epoch ratio", "not supported; use save_every_n_epochs"),
    same("caption_separator", &[Words(&[","])], "tags are separated by commas", CAPTIONS),
    same("weighted_captions", &[False], "no weighted captions", GENERIC),
    same("noise_offset_random_strength", &[False], "noise_offset is used as it is", GENERIC),
    same("adaptive_noise_scale", &[Empty, Zero], "no adaptive noise scale", GENERIC),
    same("multires_noise_iterations", &[Empty, Zero], "no multi-resolution noise", GENERIC),
    same("multires_noise_discount", &[Number], UNUSED_HERE, GENERIC),
    same("ip_noise_gamma", &[Empty, Zero], "no input-perturbation noise", GENERIC),
    same("min_timestep", &[Empty, Zero], "timesteps are drawn from 0 to 999", GENERIC),
    same("max_timestep", &[Empty, Words(&["1000"])], "timesteps are drawn from 0 to 999", GENERIC),
    same("scale_weight_norms", &[Empty, Zero], "no max-norm regularisation", GENERIC),
    same("loraplus_lr_ratio", &[Empty], "no LoRA+ ratio", GENERIC),
    same("block_lr_zero_threshold", &[Empty, Zero], "no block-wise learning rates", GENERIC),
    same("max_validation_steps", &[Empty], "validation uses every held-out image", GENERIC),
    same("validate_every_n_epochs", &[Empty, Words(&["1"])], "validation runs at the end of each epoch (or every validate_every_n_steps)", GENERIC),
    same("validation_seed", &[Empty], "validation noise follows seed", GENERIC),
    same("vae_batch_size", &[Number], "lorafuse chooses how many images the VAE encodes at once", "must be a whole number ≥ 1"),
    same("lowram", &[Flag], "lorafuse loads the model the same way whatever this says", "must be true or false"),
    same("highvram", &[Flag], "lorafuse decides what stays on the GPU itself", "must be true or false"),
    same("training_comment", &[Empty], "no training comment", GENERIC),
    same("dataset_repeats", &[Empty, Words(&["1"])], UNUSED_HERE, "kohya's fine-tuning repeats are not read; use num_repeats, or kohya's N_name subfolders"),
    same("tokenizer_cache_dir", &[Any], "lorafuse's tokenizer comes with it", "must be a path"),
    same("no_metadata", &[False], "lorafuse writes kohya's training metadata into the LoRA", "lorafuse always writes kohya's training metadata into the LoRA; remove this key"),
    same("skip_until_initial_step", &[False], "the run starts at step 0 (or where --resume left it)", GENERIC),
    same("initial_epoch", &[Empty], "the run starts at epoch 1 (or where --resume left it)", GENERIC),
    same("initial_step", &[Empty], "the run starts at step 0 (or where --resume left it)", GENERIC),
    same("resize_interpolation", &[Empty], "images are resized with lorafuse's filter", GENERIC),
    same("cache_info", &[Flag], "lorafuse scans the data folder at every run", "must be true or false"),
    same("fused_backward_pass", &[False], "no fused backward pass", GENERIC),
    same("token_warmup_min", &[Empty, Words(&["1"])], "no token warmup", TOKEN_WARMUP),
    same("token_warmup_step", &[Empty, Zero], "no token warmup", TOKEN_WARMUP),
    same("custom_attributes", &[Empty], "no custom attributes", GENERIC),
    same("scale_v_pred_loss_like_noise_pred", &[False], SD1_ONLY, SD1_ONLY),
    same("v_pred_like_loss", &[Empty], SD1_ONLY, SD1_ONLY),
    // lora-scripts (SD-Trainer) GUI keys, found in its saved configs.
    same(
        "model_train_type",
        &[Words(&["sd-lora", "sdxl-lora"])],
        "lorafuse trains a LoRA for the checkpoint's family (lora-scripts' sd-lora and sdxl-lora)",
        SD1_ONLY,
    ),
    same("gpu_ids", &[Any], "lorafuse trains on one device: the device key chooses it", "must be a list of GPU ids"),
    same("prompt_file", &[Empty], "no prompt file", "set sample_prompts to this .txt file (lora-scripts copies prompt_file there)"),
    same("positive_prompts", &[Empty], "no prompt to build", LS_PROMPT),
    same("negative_prompts", &[Any], LS_PROMPT_PART, LS_PROMPT),
    same("sample_width", &[Any], LS_PROMPT_PART, LS_PROMPT),
    same("sample_height", &[Any], LS_PROMPT_PART, LS_PROMPT),
    same("sample_cfg", &[Any], LS_PROMPT_PART, LS_PROMPT),
    same("sample_seed", &[Any], LS_PROMPT_PART, LS_PROMPT),
    same("sample_steps", &[Any], LS_PROMPT_PART, LS_PROMPT),
    same("randomly_choice_prompt", &[False], "no random prompt", LS_PROMPT),
    same("enable_preview", &[Flag], "lorafuse samples every sample_every_n_steps steps with sample_prompts", "must be true or false"),
    same("wandb_api_key", &[Empty], "no wandb", "lorafuse writes TensorBoard logs (into logging_dir) only; remove this key"),
    same("ui_custom_params", &[Empty], "no custom parameters", GENERIC),
    refused(
        "general",
        "a dataset section belongs in a dataset_config file (sd-scripts' --dataset_config); move it there and set dataset_config to that file",
    ),
    refused(
        "datasets",
        "a dataset section belongs in a dataset_config file (sd-scripts' --dataset_config); move it there and set dataset_config to that file",
    ),
];

/// What is known of the rest of the configuration when a foreign value is judged.
pub(crate) struct Context {
    /// The file is a kohya-format (TOML) config: accepted values are silent.
    pub kohya_format: bool,
}

/// What becomes of a foreign option's value.
pub(crate) enum Verdict {
    /// Accepted; the notice to print, if any.
    Accepted(Option<String>),
    /// Refused whatever the value: an unknown key with this hint.
    NotHere(KeyHint),
    /// This value is refused: the problem, read on from "key = value".
    BadValue(String),
}

/// The model family a kohya file's options name (a family id): sd-scripts' `sdxl = true`
/// (lora-scripts' `model_train_type = "sdxl-lora"`) "sdxl", `v2 = true` "sd2"; `value(key)`
/// gives an option's value. lorafuse reads the family from the checkpoint; this serves
/// where there is none (`plan`'s reference shapes) and to note a checkpoint of another.
pub(crate) fn named_family<'v>(value: impl Fn(&str) -> Option<&'v Value>) -> Option<&'static str> {
    let on = |key: &str| value(key).is_some_and(|v| matches!(super::parse::flag(v), Ok(true)));
    let sdxl_lora = value("model_train_type")
        .and_then(Value::as_str)
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("sdxl-lora"));
    if on("sdxl") || sdxl_lora {
        Some("sdxl")
    } else if on("v2") {
        Some("sd2")
    } else {
        None
    }
}

/// Whether `key` is a kohya option lorafuse judges by its value (not an unknown key).
pub(crate) fn is_foreign(key: &str) -> bool {
    FOREIGN.iter().any(|f| f.name == key)
}

/// Judges the value of the foreign option `key` (one [`is_foreign`] says is one).
pub(crate) fn judge(key: &str, value: &Value, ctx: &Context) -> Verdict {
    let Some(f) = FOREIGN.iter().find(|f| f.name == key) else {
        return Verdict::NotHere(hint(key));
    };
    if f.fits.is_empty() {
        return Verdict::NotHere(KeyHint::NotInLorafuse(f.refused));
    }
    if value.is_null() {
        // Written without a value: kohya's default, which asks for nothing.
        return Verdict::Accepted(None);
    }
    if f.fits.iter().any(|fits| fits.allows(value)) {
        let notice = (!ctx.kohya_format)
            .then(|| format!("{key} = {}: {}", super::parse::render(value), f.note));
        return Verdict::Accepted(notice);
    }
    let problem = if f.refused.starts_with("must be") {
        format!("is not valid: {}", f.refused)
    } else {
        format!("is not supported: {}", f.refused)
    };
    Verdict::BadValue(problem)
}

impl Fits {
    /// The values, in README.md's words.
    fn describe(self) -> String {
        match self {
            Any => "any".into(),
            Flag => "`true`, `false`".into(),
            False => "`false`".into(),
            Empty => "empty (`\"\"`, `[]`)".into(),
            Zero => "`0`".into(),
            Number => "a number ≥ 0".into(),
            Words(words) => words
                .iter()
                .map(|w| format!("`{w}`"))
                .collect::<Vec<_>>()
                .join(", "),
        }
    }

    fn allows(self, v: &Value) -> bool {
        match self {
            Any => true,
            Flag => super::parse::flag(v).is_ok(),
            False => matches!(super::parse::flag(v), Ok(false)) || v.is_null(),
            Empty => match v {
                Value::Null => true,
                Value::String(s) => s.trim().is_empty(),
                Value::Sequence(items) => items.is_empty(),
                Value::Mapping(m) => m.is_empty(),
                _ => false,
            },
            Zero => super::parse::float(v).is_ok_and(|x| x == 0.0),
            Number => super::parse::float(v).is_ok_and(|x| x >= 0.0),
            Words(words) => {
                let text = match v {
                    Value::String(s) => s.trim().to_ascii_lowercase(),
                    Value::Number(n) => n.to_string(),
                    _ => return false,
                };
                words.contains(&text.as_str())
            }
        }
    }
}

/// Other trainers' names for lorafuse keys: (theirs, ours, what differs besides the name).
fn renamed() -> impl Iterator<Item = (&'static str, &'static str, &'static str)> {
    KEYS.iter().flat_map(|k| {
        k.aliases
            .iter()
            .map(move |(theirs, note)| (*theirs, k.name, *note))
    })
}

/// README.md's table of the kohya options lorafuse has no key for: the values accepted (as
/// they ask for what lorafuse does anyway), what lorafuse does, and why other values are
/// refused.
pub(crate) fn markdown_table() -> String {
    let mut out = String::from(
        "| kohya option | accepted values | what lorafuse does | any other value is refused: |\n|---|---|---|---|\n",
    );
    let mut sorted: Vec<&Foreign> = FOREIGN.iter().collect();
    sorted.sort_by_key(|f| f.name);
    for f in sorted {
        let accepted = if f.fits.is_empty() {
            "none".to_string()
        } else {
            f.fits
                .iter()
                .map(|fits| fits.describe())
                .collect::<Vec<_>>()
                .join(", or ")
        };
        let note = if f.fits.is_empty() { "" } else { f.note };
        out.push_str(&format!(
            "| `{}` | {} | {} | {} |\n",
            f.name,
            accepted,
            note.replace('|', "\\|"),
            f.refused.replace('|', "\\|")
        ));
    }
    out
}

/// The lorafuse key another trainer's `name` is, and what differs besides the name.
pub(crate) fn alias(name: &str) -> Option<(&'static str, &'static str)> {
    renamed().find_map(|(theirs, ours, note)| (theirs == name).then_some((ours, note)))
}

/// What an unknown key probably meant: another trainer's name, a kohya option lorafuse lacks,
/// or the nearest key name (lorafuse's or another trainer's) within a few edits.
pub(crate) fn hint(unknown: &str) -> KeyHint {
    let normal = unknown.trim().to_ascii_lowercase().replace('-', "_");
    if let Some((_, ours, note)) = renamed().find(|(theirs, _, _)| *theirs == normal) {
        return KeyHint::Renamed { ours, note };
    }
    if let Some(f) = FOREIGN.iter().find(|f| f.name == normal) {
        return KeyHint::NotInLorafuse(f.refused);
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
        .chain(renamed().map(|(theirs, ours, _)| (theirs, ours)))
        // A misspelt kohya option (`xformer`) is answered with its kohya name.
        .chain(FOREIGN.iter().map(|f| (f.name, f.name)));
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
