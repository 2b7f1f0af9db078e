//! The training configuration: parsing, defaults, overrides, every error message's shape
//! (file, key, value, what is allowed), path checks, the docs table, and no panics on
//! arbitrary input.

use crate::common;
use common::tools::TempDir;
use std::path::{Path, PathBuf};

use lorafuse::config::{
    ConfigError, Device, KeyHint, MixedPrecision, Origin, Resolution, SamplePrompts, SavePrecision,
    Schedule, TrainConfig, Warmup,
};
use lorafuse::lora::blocks::{LrCurve, SideWeights};
use lorafuse::lora::LoraTargets;
use lorafuse::rng::Rng;
use lorafuse::sample::SamplerKind;

const REQUIRED: &str =
    "train_data_dir: data\nbase_model: sd15.safetensors\noutput_dir: out/my_lora\n";
const NO_SET: &[&str] = &[];

fn load(text: &str) -> Result<TrainConfig, ConfigError> {
    TrainConfig::from_yaml(text, "config.yaml", NO_SET)
}

fn load_with(text: &str, sets: &[&str]) -> Result<TrainConfig, ConfigError> {
    TrainConfig::from_yaml(text, "config.yaml", sets)
}

/// The config made of the required keys plus `extra`.
fn with(extra: &str) -> Result<TrainConfig, ConfigError> {
    load(&format!("{REQUIRED}{extra}\n"))
}

fn err(r: Result<TrainConfig, ConfigError>) -> ConfigError {
    match r {
        Ok(cfg) => panic!("expected an error, got a config:\n{cfg}"),
        Err(e) => e,
    }
}

fn err_text(r: Result<TrainConfig, ConfigError>) -> String {
    err(r).to_string()
}

/// A fresh, empty folder under the system temp dir, removed when dropped.
fn temp_dir(name: &str) -> TempDir {
    TempDir::new(&format!("config-{name}"))
}

const FULL: &str = r#"
# every key, none at its default
train_data_dir: /data/dog
num_repeats: 3
class_tokens: sks dog
reg_data_dir: /data/reg
metadata_file: /data/meta_cap.json
prior_loss_weight: 0.5
base_model: /models/v1-5-pruned-emaonly.safetensors
output_dir: /out/dog_v1
output_name: sks_dog
save_precision: bf16
save_every_n_epochs: 2
save_every_n_steps: 500
save_last_n_epochs: 3
save_last_n_steps: 1500
save_last_n_epochs_state: 1
save_last_n_steps_state: 500
save_state: true
resume: /out/old-state.safetensors
logging_dir: /logs/dog
lora_rank: 16
lora_alpha: 8
lora_dropout: 0.1
rank_dropout: 0.05
module_dropout: 0.02
block_dims: [0, 2, 2, 2, 4, 4, 4, 4, 4, 4, 2, 2, 8, 2, 2, 2, 4, 4, 4, 4, 4, 4, 2, 2, 2]
block_alphas: "0,1,1,1,2,2,2,2,2,2,1,1,4,1,1,1,2,2,2,2,2,2,1,1,1"
conv_block_dims: "0,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1"
conv_block_alphas: "0,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1"
down_lr_weight: sine+0.5
mid_lr_weight: 0.5
up_lr_weight: [1, 1, 0.5]
block_lr_zero_threshold: 0.01
network_weights: /out/old.safetensors
dim_from_weights: true
conv_dim: 8
conv_alpha: 4
algo: lora
dora_wd: false
lora_targets: attention
train_text_encoder: false
train_unet: true
batch_size: 2
gradient_accumulation_steps: 4
epochs: 20
max_train_steps: 3000
optimizer_type: adamw
optimizer_args: ["eps=1e-7"]
learning_rate: 2e-4
unet_lr: 3.0e-4
text_encoder_lr: 5e-5
lr_scheduler: cosine_with_restarts
lr_scheduler_num_cycles: 3
lr_scheduler_power: 2
lr_scheduler_min_lr_ratio: 0.05
num_warmup_steps: 100
lr_decay_steps: 20
weight_decay: 0.05
adam_beta1: 0.85
adam_beta2: 0.99
adam_epsilon: 1e-6
max_grad_norm: 0
noise_offset: 0.05
min_snr_gamma: 5
mixed_precision: no
cpu_precision: f32
no_half_vae: true
gradient_checkpointing: true
device: cuda:1
seed: 1234
resolution: 512,768
caption_extension: .caption
enable_bucket: true
min_bucket_reso: 320
max_bucket_reso: 1280
bucket_reso_steps: 64
bucket_no_upscale: true
flip_aug: true
random_crop: true
shuffle_caption: true
keep_tokens: 1
caption_dropout_rate: 0.05
caption_tag_dropout_rate: 0.1
caption_dropout_every_n_epochs: 4
caption_prefix: "sks, "
caption_suffix: ", best quality"
keep_tokens_separator: "|||"
secondary_separator: ";;;"
enable_wildcard: true
cache_latents_to_disk: false
clip_skip: 2
max_token_length: 150
auto_crop: smart
auto_caption: /models/wd-vit-tagger-v3
auto_caption_threshold: 0.5
auto_caption_top: 3
v_parameterization: true
zero_terminal_snr: true
validation_split: 0.1
validate_every_n_steps: 200
early_stopping_patience: 5
early_stopping_min_delta: 0.001
sample_every_n_steps: 250
sample_every_n_epochs: 0
sample_at_first: true
sample_sampler: dpmsolver++_karras
sample_prompts:
  - a photo of sks dog --n blurry --w 512 --h 768 --d 42 --s 28 --l 7.5
  - sks dog on a beach
"#;

#[test]
fn a_full_config_parses_with_every_value() {
    let c = load(FULL).unwrap();
    assert_eq!(c.train_data_dir, Path::new("/data/dog"));
    assert_eq!(c.num_repeats, 3);
    assert_eq!(c.class_tokens.as_deref(), Some("sks dog"));
    assert_eq!(c.reg_data_dir.as_deref(), Some(Path::new("/data/reg")));
    assert_eq!(c.prior_loss_weight, 0.5);
    assert_eq!(
        c.base_model,
        Path::new("/models/v1-5-pruned-emaonly.safetensors")
    );
    assert_eq!(c.output_dir, Path::new("/out/dog_v1"));
    assert_eq!(c.output_name, "sks_dog");
    assert_eq!(c.save_precision, SavePrecision::Bf16);
    assert_eq!(c.save_every_n_epochs, Some(2));
    assert_eq!(c.save_every_n_steps, Some(500));
    assert_eq!(c.save_last_n_epochs, Some(3));
    assert_eq!(c.save_last_n_steps, Some(1500));
    assert_eq!(c.save_last_n_epochs_state, Some(1));
    assert_eq!(c.save_last_n_steps_state, Some(500));
    assert_eq!(c.logging_dir, Path::new("/logs/dog"));
    assert_eq!(c.lora_rank, 16);
    assert_eq!(c.lora_alpha, 8.0);
    assert_eq!(c.lora_dropout, 0.1);
    assert_eq!((c.rank_dropout, c.module_dropout), (0.05, 0.02));
    assert_eq!(
        c.block_dims.as_ref().map(|d| (d.len(), d[12])),
        Some((25, 8))
    );
    assert_eq!(c.block_alphas.as_ref().map(|a| a[12]), Some(4.0));
    assert_eq!(c.conv_block_dims.as_ref().map(|d| d[0]), Some(0));
    assert_eq!(c.mid_lr_weight, Some(vec![0.5]));
    assert_eq!(c.up_lr_weight, Some(SideWeights::List(vec![1.0, 1.0, 0.5])));
    assert_eq!(c.block_lr_zero_threshold, 0.01);
    assert_eq!((c.conv_dim, c.conv_alpha), (Some(8), Some(4.0)));
    assert_eq!(c.lora_targets, LoraTargets::Attention);
    assert!(!c.train_text_encoder);
    assert!(c.train_unet);
    assert_eq!(c.batch_size, 2);
    assert_eq!(c.gradient_accumulation_steps, 4);
    assert_eq!(c.epochs, 20);
    assert_eq!(c.max_train_steps, Some(3000));
    assert_eq!(
        c.optimizer_type,
        lorafuse::train::optim::OptimizerType::AdamW
    );
    assert_eq!(c.optimizer_args, vec!["eps=1e-7".to_string()]);
    assert_eq!(c.learning_rate, 2e-4);
    assert_eq!(c.unet_lr, 3e-4);
    assert_eq!(c.text_encoder_lr, 5e-5);
    assert_eq!(c.lr_scheduler, Schedule::CosineWithRestarts);
    assert_eq!(c.lr_scheduler_num_cycles, 3);
    assert_eq!(c.lr_scheduler_power, 2.0);
    assert_eq!(c.lr_scheduler_min_lr_ratio, Some(0.05));
    assert_eq!(c.num_warmup_steps, Warmup::Steps(100));
    assert_eq!(c.lr_decay_steps, Warmup::Steps(20));
    assert_eq!(c.weight_decay, 0.05);
    assert_eq!(c.adam_beta1, 0.85);
    assert_eq!(c.adam_beta2, 0.99);
    assert_eq!(c.adam_epsilon, 1e-6);
    assert_eq!(c.max_grad_norm, 0.0);
    assert_eq!(c.noise_offset, 0.05);
    assert_eq!(c.min_snr_gamma, Some(5.0));
    assert_eq!(c.cpu_precision, lorafuse::backend::cpu::CpuPrecision::F32);
    assert_eq!(c.mixed_precision, MixedPrecision::No);
    assert_eq!(c.no_half_vae, Some(true));
    assert!(c.gradient_checkpointing);
    assert_eq!(c.device, Device::Cuda(1));
    assert_eq!(c.seed, 1234);
    assert_eq!(
        c.resolution,
        Resolution {
            width: 512,
            height: 768
        }
    );
    assert_eq!(c.caption_extension, ".caption");
    assert!(c.enable_bucket);
    assert_eq!(
        (c.min_bucket_reso, c.max_bucket_reso, c.bucket_reso_steps),
        (320, 1280, 64)
    );
    assert!(c.bucket_no_upscale && c.flip_aug && c.random_crop && c.shuffle_caption);
    assert_eq!(c.keep_tokens, 1);
    assert_eq!(c.caption_dropout_rate, 0.05);
    assert!(!c.cache_latents_to_disk);
    assert_eq!(c.clip_skip, 2);
    assert_eq!(c.max_token_length, 150);
    assert_eq!(c.auto_crop, Some(lorafuse::prepare::CropMode::Smart));
    assert_eq!(
        c.auto_caption.as_deref(),
        Some(Path::new("/models/wd-vit-tagger-v3"))
    );
    assert_eq!((c.auto_caption_threshold, c.auto_caption_top), (0.5, 3));
    assert!(c.v_parameterization && c.zero_terminal_snr);
    assert_eq!(c.validation_split, 0.1);
    assert_eq!(c.validate_every_n_steps, Some(200));
    assert_eq!(c.early_stopping_patience, Some(5));
    assert_eq!(c.early_stopping_min_delta, 0.001);
    assert_eq!(c.sample_every_n_steps, 250);
    assert_eq!(c.sample_every_n_epochs, 0);
    assert!(c.sample_at_first);
    assert_eq!(c.sample_sampler, SamplerKind::DpmSolverPPKarras);
    assert_eq!(
        c.sample_prompts,
        SamplePrompts::List(vec![
            "a photo of sks dog --n blurry --w 512 --h 768 --d 42 --s 28 --l 7.5".into(),
            "sks dog on a beach".into()
        ])
    );
    // The full config sets every key: the test above and the key list agree. (dataset_config
    // names a file read from disk; tests/kohya_config.rs tests it.)
    for key in TrainConfig::key_names()
        .into_iter()
        .filter(|k| *k != "dataset_config")
    {
        assert!(c.provenance.is_written(key), "{key}");
    }
}

#[test]
fn defaults_when_omitted() {
    let c = load(REQUIRED).unwrap();
    assert_eq!(c.output_name, "my_lora", "last component of output_dir");
    assert_eq!(c.logging_dir, Path::new("out/my_lora/logs"));
    assert_eq!(c.save_precision, SavePrecision::Fp16);
    assert_eq!((c.save_every_n_epochs, c.save_every_n_steps), (None, None));
    assert_eq!((c.save_last_n_epochs, c.save_last_n_steps), (None, None));
    assert_eq!(
        (c.save_last_n_epochs_state, c.save_last_n_steps_state),
        (None, None)
    );
    assert_eq!(c.lora_rank, 32);
    assert_eq!(c.lora_alpha, 32.0, "lora_alpha defaults to lora_rank");
    assert_eq!(c.lora_dropout, 0.0);
    assert_eq!((c.conv_dim, c.conv_alpha), (None, None));
    assert_eq!(c.lora_targets, LoraTargets::Transformer);
    assert!(!c.train_text_encoder);
    assert_eq!(
        (c.batch_size, c.gradient_accumulation_steps, c.epochs),
        (1, 1, 10)
    );
    assert_eq!(c.max_train_steps, None);
    assert_eq!(c.learning_rate, 1e-4);
    assert_eq!((c.unet_lr, c.text_encoder_lr), (1e-4, 1e-4));
    assert_eq!(c.lr_scheduler, Schedule::Cosine);
    assert_eq!(c.lr_scheduler_num_cycles, 1);
    assert_eq!(c.num_warmup_steps, Warmup::Steps(0));
    assert_eq!(
        (c.weight_decay, c.adam_beta1, c.adam_beta2, c.adam_epsilon),
        (0.01, 0.9, 0.999, 1e-8)
    );
    assert_eq!(c.max_grad_norm, 1.0);
    assert_eq!((c.noise_offset, c.min_snr_gamma), (0.0, None));
    assert_eq!(c.mixed_precision, MixedPrecision::Fp16);
    assert_eq!(c.no_half_vae, None, "the family decides (SDXL: f32)");
    assert_eq!(c.device, Device::Auto);
    assert_eq!(c.seed, 42);
    assert_eq!(c.resolution, Resolution::square(512));
    assert_eq!(c.caption_extension, ".txt");
    assert!(!c.enable_bucket && !c.bucket_no_upscale);
    assert_eq!(
        (c.min_bucket_reso, c.max_bucket_reso, c.bucket_reso_steps),
        (256, 1024, 64)
    );
    assert!(!c.flip_aug && !c.random_crop && !c.shuffle_caption && !c.cache_latents_to_disk);
    assert_eq!((c.keep_tokens, c.caption_dropout_rate), (0, 0.0));
    assert_eq!((c.clip_skip, c.max_token_length), (1, 75));
    assert_eq!(c.validation_split, 0.0);
    assert_eq!(
        (c.validate_every_n_steps, c.early_stopping_patience),
        (None, None)
    );
    assert_eq!(c.early_stopping_min_delta, 0.0);
    assert_eq!(c.sample_every_n_steps, 0);
    assert_eq!(c.sample_prompts, SamplePrompts::List(vec![]));
    assert!(c.warnings().is_empty(), "{:?}", c.warnings());

    // Derived defaults follow the keys they derive from; an empty value is the default.
    let c = with("lora_rank: 8\nlearning_rate: 5e-4\nlora_alpha:\nunet_lr:").unwrap();
    assert_eq!(
        (c.lora_alpha, c.unet_lr, c.text_encoder_lr),
        (8.0, 5e-4, 5e-4)
    );
    let c = load("train_data_dir: d\nbase_model: m\noutput_dir: runs/cat/\n").unwrap();
    assert_eq!(c.output_name, "cat");
    // An output_dir with no last folder name cannot name the LoRA file.
    assert_eq!(
        err_text(load("train_data_dir: d\nbase_model: m\noutput_dir: /\n")),
        "config.yaml: output_dir = \"/\" has no last folder name to name the LoRA file after: set output_name"
    );
    load("train_data_dir: d\nbase_model: m\noutput_dir: /\noutput_name: x\n").unwrap();
}

#[test]
fn the_example_message_reads_as_documented() {
    assert_eq!(
        err_text(with("learning_rate: -1")),
        "config.yaml: learning_rate = -1 is out of range: must be > 0 and < 1 (typical LoRA values 1e-4 to 1e-3)"
    );
}

fn unknown_key(r: Result<TrainConfig, ConfigError>) -> (String, KeyHint, String) {
    let e = err(r);
    let text = e.to_string();
    match e {
        ConfigError::UnknownKey { key, hint, origin } => {
            assert_eq!(origin, Origin::File("config.yaml".into()));
            (key, hint, text)
        }
        other => panic!("expected UnknownKey, got {other:?}"),
    }
}

#[test]
fn kohya_names_are_read_as_ours_with_a_notice() {
    for (theirs, ours, value) in [
        ("network_dim: 32", "lora_rank", "32"),
        ("network_alpha: 16", "lora_alpha", "16.0"),
        ("max_train_epochs: 10", "epochs", "10"),
        ("lr_warmup_steps: 100", "num_warmup_steps", "100"),
        ("train_batch_size: 2", "batch_size", "2"),
        (
            "pretrained_model_name_or_path: x.safetensors",
            "base_model",
            "x.safetensors",
        ),
        ("network_dropout: 0.1", "lora_dropout", "0.1"),
        ("snr_gamma: 5", "min_snr_gamma", "5.0"),
        ("lr_restart_cycles: 3", "lr_scheduler_num_cycles", "3"),
    ] {
        let name = theirs.split(':').next().unwrap();
        // pretrained_model_name_or_path replaces the required base_model.
        let text = if ours == "base_model" {
            REQUIRED.replace("base_model: sd15.safetensors\n", &format!("{theirs}\n"))
        } else {
            format!("{REQUIRED}{theirs}\n")
        };
        let c = load(&text).unwrap_or_else(|e| panic!("{theirs}: {e}"));
        let w = c.warnings().join("\n");
        assert!(
            w.contains(&format!("{name}: lorafuse calls this `{ours}`")),
            "{theirs}: {w}"
        );
        let yaml = c.to_yaml();
        assert!(
            yaml.contains(&format!("\n{ours}: {value}\n")),
            "{theirs}: {yaml}"
        );
        assert!(c.provenance.is_written(ours), "{theirs}");
    }
    let w = with("network_alpha: 1").unwrap().warnings().join("\n");
    assert!(w.contains("kohya's is 1"), "{w}");
    // One notice per name, however often it is given.
    let c = load_with(&format!("{REQUIRED}network_dim: 8\n"), &["network_dim=16"]).unwrap();
    assert_eq!(c.lora_rank, 16);
    let w = c.warnings();
    assert_eq!(
        w.iter().filter(|l| l.contains("network_dim")).count(),
        1,
        "{w:?}"
    );
    // A bad value is named as written.
    assert_eq!(
        err_text(with("network_dim: 0")),
        "config.yaml: network_dim = 0 is out of range: must be a whole number from 1 to 1024 (typical 4 to 128)"
    );
    // Both names in one file: which one is meant?
    let text = err_text(with("network_dim: 8\nlora_rank: 16"));
    assert!(text.contains("gives `lora_rank` a second value"), "{text}");
}

#[test]
fn typos_get_the_nearest_key() {
    for (typo, want) in [
        ("learnig_rate", "learning_rate"),
        ("laerning_rate", "learning_rate"),
        ("Learning_Rate", "learning_rate"),
        ("learning-rate", "learning_rate"),
        ("lora_rnak", "lora_rank"),
        ("epoch", "epochs"),
        ("resolutoin", "resolution"),
        ("min_snr_gama", "min_snr_gamma"),
        ("sample_prompt", "sample_prompts"),
        ("network_dims", "lora_rank"),
        ("train_data_directory", "train_data_dir"),
    ] {
        let (key, hint, text) = unknown_key(with(&format!("{typo}: 1")));
        assert_eq!(key, typo);
        assert_eq!(hint, KeyHint::DidYouMean(want), "{typo}");
        assert!(text.ends_with(&format!("did you mean `{want}`?")), "{text}");
    }
    assert_eq!(
        err_text(with("learnig_rate: 1e-4")),
        "config.yaml: unknown key `learnig_rate`: did you mean `learning_rate`?"
    );
    let (_, hint, text) = unknown_key(with("completely_unrelated: 1"));
    assert_eq!(hint, KeyHint::None);
    assert!(text.contains("README.md"), "{text}");
}

/// kohya's `network_args` read into lorafuse's keys with kohya's defaults (conv_alpha 1),
/// ignored where sd-scripts ignores them, refused where they ask for what lorafuse lacks.
#[test]
fn network_args_are_read_as_kohya_reads_them() {
    let c = with(
        "network_args: [\"conv_dim=8\", \"rank_dropout=0.1\", \"module_dropout= 0.2\", \"verbose=True\"]",
    )
    .unwrap();
    assert_eq!(c.conv_dim, Some(8));
    assert_eq!(c.conv_alpha, Some(1.0), "sd-scripts' conv_alpha default");
    assert_eq!((c.rank_dropout, c.module_dropout), (0.1, 0.2));
    let c = with("network_args: [\"conv_dim=8\", \"conv_alpha=4\", \"dropout=0.1\"]").unwrap();
    assert_eq!((c.conv_dim, c.conv_alpha), (Some(8), Some(4.0)));
    assert_eq!(c.lora_dropout, 0.0, "networks.lora does not read `dropout`");
    let w = c.warnings().join("\n");
    assert!(w.contains("dropout=0.1 is ignored"), "{w}");
    // Block-wise ranks and learning rates: the texts as sd-scripts reads them.
    let dims = ["4"; 25].join(",");
    let c = with(&format!(
        "network_args: [\"block_dims={dims}\", \"down_lr_weight=cosine+0.5\", \
         \"mid_lr_weight=2\", \"up_lr_weight=1,,0.5\", \"block_lr_zero_threshold=0.1\"]"
    ))
    .unwrap();
    assert_eq!(c.block_dims, Some(vec![4; 25]));
    assert_eq!(c.mid_lr_weight, Some(vec![2.0]));
    assert_eq!(c.up_lr_weight, Some(SideWeights::List(vec![1.0, 0.0, 0.5])));
    assert_eq!(
        c.down_lr_weight,
        Some(SideWeights::Curve {
            curve: LrCurve::Cosine,
            base: 0.5
        })
    );
    assert_eq!(c.block_lr_zero_threshold, 0.1);
    // What kohya ignores is ignored with a notice.
    let c = with("block_alphas: \"1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1\"").unwrap();
    let w = c.warnings().join("\n");
    assert!(w.contains("block_alphas has no effect"), "{w}");
    for (line, want) in [
        ("network_args: [\"conv_dim=8\"]\nconv_dim: 4", "given twice"),
        ("network_args: [\"conv_dim=many\"]", "conv_dim"),
        ("network_args: [\"rank_dropout=1.5\"]", "rank_dropout"),
        ("network_args: [\"block_dims=2,4\"]", "must be 25 ranks"),
        ("network_args: [\"down_lr_weight=0.5\"]", "curve"),
        ("network_args: [\"up_lr_weight=cosine+x\"]", "not a number"),
        ("network_args: [\"loraplus_lr_ratio=16\"]", "LoRA+"),
        ("network_args: [\"conv_dim\"]", "not name=value"),
        (
            "network_args: [\"algo=loha\"]",
            "network_module = \"lycoris.kohya\"",
        ),
        ("network_args: 4", "list"),
    ] {
        let e = err_text(with(line));
        assert!(e.contains(want), "{line}: {e}");
        assert!(
            [
                "network_args",
                "conv_dim",
                "rank_dropout",
                "block_dims",
                "lr_weight"
            ]
            .iter()
            .any(|k| e.contains(k)),
            "{line}: {e}"
        );
    }
}

#[test]
fn lycoris_network_args_are_read_as_lycoris_reads_them() {
    use lorafuse::lora::AlgoKind;
    let lyc = "network_module: lycoris.kohya\nlora_rank: 8\nlora_alpha: 4\n";
    let c = with(&format!(
        "{lyc}network_args: [\"algo=loha\", \"dora_wd=False\"]"
    ))
    .unwrap();
    assert_eq!(c.algo, AlgoKind::Loha);
    assert_eq!(
        (c.conv_dim, c.conv_alpha),
        (Some(8), Some(4.0)),
        "LyCORIS: conv_dim/conv_alpha default to network_dim/network_alpha"
    );
    let c = with(&format!(
        "{lyc}network_args: [\"algo=locon\", \"conv_dim=2\"]"
    ))
    .unwrap();
    assert_eq!(
        (c.algo, c.conv_dim, c.conv_alpha),
        (AlgoKind::Lora, Some(2), Some(4.0))
    );
    let c = with("network_module: networks.lora\nnetwork_args: [\"conv_dim=2\"]").unwrap();
    assert_eq!((c.algo, c.conv_alpha), (AlgoKind::Lora, Some(1.0)));
    // DoRA: LyCORIS's dora_wd is the key dora_wd; networks.lora has no such argument.
    let c = with(&format!(
        "{lyc}network_args: [\"algo=lora\", \"dora_wd=True\"]"
    ))
    .unwrap();
    assert!(c.dora_wd && c.algo == AlgoKind::Lora);
    let e = err_text(with(
        "network_module: networks.lora\nnetwork_args: [\"dora_wd=True\"]",
    ));
    assert!(
        e.contains("lycoris.kohya") && e.contains("dora_wd: True"),
        "{e}"
    );
    for (args, want) in [
        ("algo=lokr", "lokr is not supported"),
        ("algo=loha\", \"dora_wd=True", "algo: loha"),
        ("wd_on_output=False", "input axis"),
        ("use_tucker=True", "Tucker"),
        ("preset=attn-only", "preset"),
        ("dropout=0.1", "network_dropout"),
    ] {
        let e = err_text(with(&format!("{lyc}network_args: [\"{args}\"]")));
        assert!(e.contains(want), "{args}: {e}");
    }
    // LoHa and DoRA draw no dropout masks.
    let e = err_text(with("algo: loha\nrank_dropout: 0.1"));
    assert!(e.contains("rank_dropout") && e.contains("loha"), "{e}");
    let e = err_text(with("dora_wd: true\nlora_dropout: 0.1"));
    assert!(e.contains("lora_dropout") && e.contains("dora_wd"), "{e}");
}

#[test]
fn kohya_options_we_lack_are_refused_with_the_reason() {
    for (line, reason) in [
        ("use_8bit_adam: true", "optimizer_type"),
        ("sdxl: maybe", "must be true or false"),
        ("network_module: networks.dylora", "DyLoRA"),
        ("save_model_as: ckpt", ".safetensors"),
        (
            "network_train_text_encoder_only: maybe",
            "must be true or false",
        ),
        ("xformers: sometimes", "must be true or false"),
    ] {
        let e = err(with(line));
        let text = e.to_string();
        let key = line.split(':').next().unwrap();
        assert!(
            matches!(&e, ConfigError::BadValue { key: k, .. } if k == key),
            "{line}: {e:?}"
        );
        assert!(text.contains(reason), "{line}: {text}");
    }
    let (_, hint, text) = unknown_key(with("config_file: other.toml"));
    assert!(matches!(hint, KeyHint::NotInLorafuse(_)), "{hint:?}");
    assert!(text.contains("lorafuse reads one file"), "{text}");
}

#[test]
fn kohya_options_asking_for_what_lorafuse_does_are_accepted_with_a_notice() {
    for (line, note) in [
        ("xformers: true", "memory-efficient attention"),
        ("sdpa: true", "memory-efficient attention"),
        ("v2: true", "reads the model family"),
        ("v2: false", "reads the model family"),
        (
            "network_module: networks.lora",
            "kohya's LoRA (networks.lora)",
        ),
        ("cache_latents: true", "cache_latents_to_disk"),
        ("save_model_as: safetensors", ".safetensors"),
        ("lowram: true", "the same way"),
        ("max_data_loader_n_workers: 8", "changes nothing"),
        ("persistent_data_loader_workers: true", "changes nothing"),
    ] {
        let c = with(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        let w = c.warnings().join("\n");
        let key = line.split(':').next().unwrap();
        assert!(w.contains(&format!("{key} = ")), "{line}: {w}");
        assert!(w.contains(note), "{line}: {w}");
        assert!(!TrainConfig::key_names().contains(&key));
    }
}

#[test]
fn sample_keys_as_kohya_has_them() {
    let c = with("").unwrap();
    assert_eq!(
        (c.sample_every_n_epochs, c.sample_at_first, c.sample_sampler),
        (0, false, SamplerKind::Ddim)
    );
    let c = with(
        "sample_prompts: [a cat]\nsample_every_n_epochs: 2\nsample_at_first: true\n\
         sample_sampler: K_Euler_A",
    )
    .unwrap();
    assert_eq!(
        (c.sample_every_n_epochs, c.sample_at_first, c.sample_sampler),
        (2, true, SamplerKind::EulerAncestral)
    );
    assert!(c.warnings().is_empty(), "{:?}", c.warnings());
    assert!(c.to_yaml().contains("sample_sampler: euler_a"));
    for (name, kind) in [
        ("dpmsolver++", SamplerKind::DpmSolverPP),
        ("dpmsolver", SamplerKind::DpmSolver),
        ("dpmsolver++_karras", SamplerKind::DpmSolverPPKarras),
        ("k_dpm_2m_karras", SamplerKind::DpmSolverPPKarras),
        ("euler", SamplerKind::Euler),
    ] {
        let c = with(&format!("sample_sampler: \"{name}\"")).unwrap();
        assert_eq!(c.sample_sampler, kind, "{name}");
    }
    // kohya's samplers lorafuse lacks: why, and which to use.
    let text = err_text(with("sample_sampler: heun"));
    assert!(
        text.contains("sample_sampler = \"heun\" is not supported: Heun")
            && text.contains("use dpmsolver++"),
        "{text}"
    );
    let text = err_text(with("sample_sampler: k_dpm_2_a"));
    assert!(text.contains("use euler_a"), "{text}");
    let text = err_text(with("sample_sampler: eulr"));
    assert!(
        text.contains(
            "must be one of ddim, euler, euler_a, dpmsolver, dpmsolver++, dpmsolver++_karras"
        ),
        "{text}"
    );
    // A prompt that does not parse, while samples are asked for.
    let text = err_text(with(
        "sample_prompts: [a cat, \"a dog --x 1\"]\nsample_at_first: true",
    ));
    assert!(
        text.contains("sample_prompts") && text.contains("unknown option --x"),
        "{text}"
    );
    assert!(
        with("sample_prompts: [\"a dog --x 1\"]").is_ok(),
        "not used, not read"
    );
    // Sampling asked for without prompts (a YAML file).
    for line in ["sample_every_n_epochs: 1", "sample_at_first: true"] {
        let text = err_text(with(line));
        let key = line.split(':').next().unwrap();
        assert!(
            text.contains(&format!("{key} = ")) && text.contains("needs sample_prompts"),
            "{text}"
        );
    }
    // Epochs decide, as in kohya: the step setting is not used, and that is said.
    let c = with("sample_prompts: [a cat]\nsample_every_n_epochs: 1\nsample_every_n_steps: 50")
        .unwrap();
    let w = c.warnings().join("\n");
    assert!(
        w.contains("sample_every_n_steps = 50 is not used: sample_every_n_epochs = 1"),
        "{w}"
    );
    let c = with("sample_prompts: [a cat]").unwrap();
    assert!(
        c.warnings()
            .join("\n")
            .contains("sample_prompts are not used"),
        "{:?}",
        c.warnings()
    );
}

#[test]
fn all_unknown_keys_are_reported_at_once() {
    let e = err(with("v2: maybe\nxformers: sometimes\nlearnig_rate: 1e-4"));
    let problems = e.problems();
    assert_eq!(problems.len(), 3, "{e}");
    assert_eq!(e.to_string().lines().count(), 3, "{e}");
}

/// One bad value: the message names the file, the key, the value as written and the rule.
fn assert_bad(line: &str, key: &str, value: &str, rule_part: &str) {
    let e = err(with(line));
    let text = e.to_string();
    match &e {
        ConfigError::BadValue {
            origin,
            key: k,
            value: v,
            ..
        } => {
            assert_eq!(origin, &Origin::File("config.yaml".into()), "{line}");
            assert_eq!(k, key, "{line}: {text}");
            assert_eq!(v, value, "{line}: {text}");
        }
        other => panic!("{line}: expected BadValue, got {other:?}"),
    }
    assert!(
        text.starts_with(&format!("config.yaml: {key} = {value} ")),
        "{line}: {text}"
    );
    assert!(text.contains(rule_part), "{line}: {text}");
}

#[test]
fn out_of_range_values_name_file_key_value_and_range() {
    let cases: &[(&str, &str, &str, &str)] = &[
        ("lora_rank: 0", "lora_rank", "0", "from 1 to 1024"),
        ("lora_rank: -4", "lora_rank", "-4", "is out of range"),
        ("lora_rank: 2048", "lora_rank", "2048", "from 1 to 1024"),
        ("lora_alpha: 0", "lora_alpha", "0", "> 0"),
        ("lora_dropout: 1", "lora_dropout", "1", "≥ 0 and < 1"),
        ("conv_dim: 0", "conv_dim", "0", "from 1 to 1024"),
        ("conv_alpha: 0", "conv_alpha", "0", "> 0"),
        ("lora_dropout: -0.1", "lora_dropout", "-0.1", "≥ 0 and < 1"),
        ("batch_size: 0", "batch_size", "0", "≥ 1"),
        ("gradient_accumulation_steps: 0", "gradient_accumulation_steps", "0", "≥ 1"),
        ("epochs: 0", "epochs", "0", "≥ 1"),
        ("max_train_steps: 0", "max_train_steps", "0", "≥ 1"),
        ("learning_rate: 0", "learning_rate", "0", "> 0 and < 1"),
        ("learning_rate: 1.0", "learning_rate", "1.0", "> 0 and < 1"),
        ("learning_rate: .nan", "learning_rate", ".nan", "out of range"),
        ("learning_rate: .inf", "learning_rate", ".inf", "out of range"),
        ("unet_lr: 2", "unet_lr", "2", "> 0 and < 1"),
        ("text_encoder_lr: -1e-5", "text_encoder_lr", "-1e-5", "> 0 and < 1"),
        ("lr_scheduler_num_cycles: 0", "lr_scheduler_num_cycles", "0", "≥ 1"),
        ("num_warmup_steps: -5", "num_warmup_steps", "-5", "fraction of the run"),
        ("num_warmup_steps: 1.5", "num_warmup_steps", "1.5", "fraction of the run"),
        ("weight_decay: 1", "weight_decay", "1", "≥ 0 and < 1"),
        ("adam_beta1: 1", "adam_beta1", "1", "≥ 0 and < 1"),
        ("adam_beta2: 1.5", "adam_beta2", "1.5", "≥ 0 and < 1"),
        ("adam_epsilon: 0", "adam_epsilon", "0", "> 0 and < 1"),
        ("max_grad_norm: -1", "max_grad_norm", "-1", "≥ 0"),
        ("noise_offset: 2", "noise_offset", "2", "≥ 0 and ≤ 1"),
        ("min_snr_gamma: 0", "min_snr_gamma", "0", "> 0"),
        ("seed: -1", "seed", "-1", "≥ 0"),
        ("caption_dropout_rate: 1", "caption_dropout_rate", "1", "≥ 0 and < 1"),
        ("validation_split: 1", "validation_split", "1", "≥ 0 and < 1"),
        ("validation_split: -0.5", "validation_split", "-0.5", "≥ 0 and < 1"),
        ("clip_skip: 0", "clip_skip", "0", "from 1 to 12"),
        ("clip_skip: 13", "clip_skip", "13", "from 1 to 12"),
        ("keep_tokens: -1", "keep_tokens", "-1", "≥ 0"),
        ("sample_every_n_steps: -1", "sample_every_n_steps", "-1", "≥ 0"),
        ("save_every_n_epochs: 0", "save_every_n_epochs", "0", "≥ 1"),
        ("save_every_n_steps: 0", "save_every_n_steps", "0", "≥ 1"),
        ("early_stopping_min_delta: -1", "early_stopping_min_delta", "-1", "≥ 0"),
        ("min_bucket_reso: 100", "min_bucket_reso", "100", "multiple of 64 from 64 to 4096 (SD1.x image sides are multiples of 64); nearest allowed: 128"),
        ("max_bucket_reso: 8192", "max_bucket_reso", "8192", "64 to 4096"),
        ("bucket_reso_steps: 32", "bucket_reso_steps", "32", "multiple of 64"),
        ("max_token_length: 100", "max_token_length", "100", "must be 75, 150 or 225"),
        ("resolution: 500", "resolution", "500", "nearest allowed: 512"),
        ("resolution: 0", "resolution", "0", "multiples of 64"),
        ("resolution: 8192", "resolution", "8192", "64 to 4096"),
        ("resolution: \"512,700\"", "resolution", "\"512,700\"", "nearest allowed: \"512,704\""),
    ];
    for (line, key, value, rule) in cases {
        assert_bad(line, key, value, rule);
    }
}

#[test]
fn wrong_types_and_words_are_named_with_the_choices() {
    assert_bad(
        "lora_rank: sixteen",
        "lora_rank",
        "\"sixteen\"",
        "is not valid: must be a whole number",
    );
    assert_bad("lora_rank: 16.5", "lora_rank", "16.5", "whole number");
    assert_bad("batch_size: [1, 2]", "batch_size", "[1, 2]", "is not valid");
    assert_bad("flip_aug: maybe", "flip_aug", "\"maybe\"", "true or false");
    assert_bad(
        "learning_rate: fast",
        "learning_rate",
        "\"fast\"",
        "is not valid",
    );
    assert_bad(
        "lr_scheduler: cosin",
        "lr_scheduler",
        "\"cosin\"",
        "constant, constant_with_warmup, linear, cosine, cosine_with_restarts, polynomial, cosine_with_min_lr, warmup_stable_decay, adafactor (did you mean `cosine`?)",
    );
    // `adafactor` is a schedule, refused without Adafactor: tests/optim_config.rs.
    assert_bad(
        "mixed_precision: fp8",
        "mixed_precision",
        "\"fp8\"",
        "no, fp16, bf16",
    );
    assert_bad(
        "save_precision: fp64",
        "save_precision",
        "\"fp64\"",
        "fp16, fp32, bf16",
    );
    assert_bad(
        "device: gpu",
        "device",
        "\"gpu\"",
        "auto, cpu, cuda, cuda:N",
    );
    assert_bad(
        "device: cuda:x",
        "device",
        "\"cuda:x\"",
        "auto, cpu, cuda, cuda:N",
    );
    assert_bad("device: gpu", "device", "\"gpu\"", "(did you mean `cuda`?)");
    assert_bad(
        "lora_targets: all",
        "lora_targets",
        "\"all\"",
        "transformer, attention",
    );
    assert_bad(
        "resolution: 512x768",
        "resolution",
        "\"512x768\"",
        "\"512,768\" or [512, 768]",
    );
    assert_bad(
        "resolution: [512, 768, 3]",
        "resolution",
        "[512, 768, 3]",
        "(width, height)",
    );
    assert_bad(
        "caption_extension: txt",
        "caption_extension",
        "\"txt\"",
        "(write \".txt\")",
    );
    assert_bad(
        "output_name: my_lora.safetensors",
        "output_name",
        "\"my_lora.safetensors\"",
        "leave out the extension",
    );
    assert_bad("output_name: a/b", "output_name", "\"a/b\"", "not a path");
    assert_bad(
        "sample_prompts: a photo of a dog",
        "sample_prompts",
        "\"a photo of a dog\"",
        "make a list",
    );
    assert_bad(
        "sample_prompts: prompts.toml",
        "sample_prompts",
        "\"prompts.toml\"",
        "only .txt",
    );
    assert_bad(
        "sample_prompts: [\"a dog\", \"  \"]",
        "sample_prompts",
        "[\"a dog\", \"  \"]",
        "a prompt is empty",
    );
    // The text encoder's adapters train now: accepted.
    assert!(with("train_text_encoder: true").unwrap().train_text_encoder);

    // Lenient readings a kohya or GUI user relies on.
    let c = with("mixed_precision: false\nflip_aug: yes\nlearning_rate: \"1e-4\"\nepochs: 10.0\nsave_precision: float\ndevice: CUDA\nlr_scheduler: Cosine").unwrap();
    assert_eq!(c.mixed_precision, MixedPrecision::No);
    assert!(c.flip_aug);
    assert_eq!((c.learning_rate, c.epochs), (1e-4, 10));
    assert_eq!(c.save_precision, SavePrecision::Fp32);
    assert_eq!(c.device, Device::Cuda(0));
    assert_eq!(c.lr_scheduler, Schedule::Cosine);
}

#[test]
fn rules_between_keys() {
    let text = err_text(with("validate_every_n_steps: 100"));
    assert!(text.contains("needs validation_split > 0"), "{text}");
    let text = err_text(with("early_stopping_patience: 3"));
    assert!(
        text.contains("early stopping watches the validation loss"),
        "{text}"
    );
    let text = err_text(with("sample_every_n_steps: 100"));
    assert!(
        text.starts_with("config.yaml: sample_every_n_steps = 100 needs sample_prompts"),
        "{text}"
    );
    // random_crop encodes its images at every step: the disk cache serves the rest.
    assert!(with("random_crop: true\ncache_latents_to_disk: true").is_ok());
    let text = err_text(with("max_train_steps: 50\nnum_warmup_steps: 100"));
    assert!(
        text.contains("longer than the run (max_train_steps = 50)"),
        "{text}"
    );

    // Buckets: the key the user wrote is blamed, the default shown as such.
    let text = err_text(with("max_bucket_reso: 192"));
    assert_eq!(
        text,
        "config.yaml: max_bucket_reso = 192 is out of range: min_bucket_reso (256) must be ≤ max_bucket_reso (192)"
    );
    let text = err_text(with("enable_bucket: true\nresolution: 1280"));
    assert!(
        text.contains("max_bucket_reso (1024) must be ≥ the larger side of resolution (1280)"),
        "{text}"
    );
    assert!(
        text.starts_with("config.yaml: resolution = 1280 "),
        "{text}"
    );
    let text = err_text(with("enable_bucket: true\nmin_bucket_reso: 576"));
    assert!(
        text.contains("must be ≤ the smaller side of resolution (512)"),
        "{text}"
    );
    let text = err_text(with(
        "enable_bucket: true\nbucket_reso_steps: 128\nresolution: 576",
    ));
    assert!(
        text.contains("multiples of bucket_reso_steps (128)"),
        "{text}"
    );
    with("enable_bucket: true\nresolution: 768\nmin_bucket_reso: 320\nmax_bucket_reso: 1536")
        .unwrap();

    // A field changed in code after loading is reported with its current value.
    let mut c = with("lora_rank: 16").unwrap();
    c.lora_rank = 0;
    assert_eq!(
        c.validate().unwrap_err().to_string(),
        "configuration: lora_rank = 0 is out of range: must be a whole number from 1 to 1024 (typical 4 to 128)"
    );
    c.lora_rank = 16;
    c.validate().unwrap();

    // Several problems come back together, each on its own line.
    let e = err(with("lora_rank: 0\nbatch_size: 0\nlearning_rate: 5"));
    assert_eq!(e.problems().len(), 3, "{e}");
}

#[test]
fn warnings_for_settings_that_do_nothing() {
    let c = with("lr_scheduler: constant\nnum_warmup_steps: 100\nkeep_tokens: 1\nlr_scheduler_num_cycles: 2\ndevice: cpu\nsample_prompts: [a dog]").unwrap();
    let w = c.warnings().join("\n");
    for part in [
        "num_warmup_steps = 100 has no effect with lr_scheduler = constant",
        "keep_tokens = 1 has no effect without shuffle_caption",
        "lr_scheduler_num_cycles = 2 has no effect",
        "the CPU computes in f32",
        "sample_prompts are not used",
    ] {
        assert!(w.contains(part), "{part}\n{w}");
    }
    let c = with("max_train_steps: 100\nepochs: 5").unwrap();
    assert!(c
        .warnings()
        .iter()
        .any(|w| w.contains("epochs = 5 is ignored")));
}

#[test]
fn saves_to_keep_and_kohya_state_keys() {
    // The state keys follow the LoRA ones unless written.
    let c = with("save_every_n_steps: 100\nsave_last_n_steps: 300\nsave_every_n_epochs: 1\nsave_last_n_epochs: 2").unwrap();
    assert_eq!(
        (c.save_last_n_steps, c.save_last_n_steps_state),
        (Some(300), Some(300))
    );
    assert_eq!(
        (c.save_last_n_epochs, c.save_last_n_epochs_state),
        (Some(2), Some(2))
    );
    assert!(c.warnings().is_empty(), "{:?}", c.warnings());
    let c = with("save_every_n_steps: 100\nsave_last_n_steps: 300\nsave_last_n_steps_state: 100")
        .unwrap();
    assert_eq!(
        (c.save_last_n_steps, c.save_last_n_steps_state),
        (Some(300), Some(100))
    );
    assert_eq!(c.save_last_n_epochs_state, None);

    assert_bad(
        "save_last_n_epochs: 0",
        "save_last_n_epochs",
        "0",
        "is out of range: must be a whole number ≥ 1",
    );
    assert_bad(
        "save_last_n_steps: -3",
        "save_last_n_steps",
        "-3",
        "is out of range",
    );
    assert_bad(
        "save_last_n_epochs_state: 0",
        "save_last_n_epochs_state",
        "0",
        "≥ 1",
    );
    assert_bad(
        "save_last_n_steps_state: x",
        "save_last_n_steps_state",
        "\"x\"",
        "is not valid: must be a whole number ≥ 1",
    );
    // One bad value is one error, not one more for the key that follows it.
    assert_eq!(err(with("save_last_n_epochs: 0")).problems().len(), 1);

    let w = with("save_last_n_epochs: 2\nsave_last_n_steps: 50")
        .unwrap()
        .warnings()
        .join("\n");
    assert!(
        w.contains("save_last_n_epochs = 2 has no effect without save_every_n_epochs"),
        "{w}"
    );
    assert!(
        w.contains("save_last_n_steps = 50 has no effect without save_every_n_steps"),
        "{w}"
    );

    // save_state_on_train_end asks for what lorafuse does anyway: accepted, with a notice.
    let c = with("save_state_on_train_end: true").unwrap();
    let w = c.warnings().join("\n");
    assert!(w.contains("always saves its training state"), "{w}");
    assert!(!c.to_yaml().contains("save_state_on_train_end"));
    // save_state is a key (each save point keeps its state); resume names a state file.
    assert!(with("save_state: true").unwrap().save_state);
    let text = err_text(with("save_state: sometimes"));
    assert_eq!(
        text,
        "config.yaml: save_state = \"sometimes\" is not valid: must be true or false"
    );
    let c = with("resume: out/demo-step00000010-state.safetensors").unwrap();
    assert_eq!(
        c.resume.as_deref(),
        Some(std::path::Path::new(
            "out/demo-step00000010-state.safetensors"
        ))
    );
    let text = c.check_paths().unwrap_err().to_string();
    assert!(
        text.contains("resume") && text.contains("does not exist"),
        "{text}"
    );
}

#[test]
fn resolution_forms() {
    let r = |v: &str| with(&format!("resolution: {v}")).unwrap().resolution;
    let square = Resolution::square(512);
    let wide = Resolution {
        width: 768,
        height: 512,
    };
    assert_eq!(r("512"), square);
    assert_eq!(r("\"512\""), square);
    assert_eq!(r("[512]"), square);
    assert_eq!(r("768,512"), wide, "unquoted W,H is text to YAML");
    assert_eq!(r("\"768, 512\""), wide);
    assert_eq!(r("[768, 512]"), wide);
    assert_eq!(r("1024"), Resolution::square(1024));
    let c = load_with(REQUIRED, &["resolution=768,512"]).unwrap();
    assert_eq!(c.resolution, wide);
    let c = load_with(REQUIRED, &["resolution=[768, 512]"]).unwrap();
    assert_eq!(c.resolution, wide);
}

#[test]
fn warmup_as_steps_or_a_fraction_of_the_run() {
    let w = |v: &str| with(&format!("num_warmup_steps: {v}")).unwrap();
    let c = w("0.05");
    assert_eq!(c.num_warmup_steps, Warmup::Fraction(0.05));
    assert_eq!(c.warmup_steps(1000), 50);
    assert_eq!(c.warmup_steps(30), 1, "rounded down");
    let c = w("100");
    assert_eq!(c.num_warmup_steps, Warmup::Steps(100));
    assert_eq!(c.warmup_steps(1000), 100);
    assert_eq!(c.warmup_steps(40), 40, "never longer than the run");
    assert_eq!(w("100.0").num_warmup_steps, Warmup::Steps(100));
    assert_eq!(w("0").num_warmup_steps, Warmup::Steps(0));
    assert_eq!(w("0.0").num_warmup_steps, Warmup::Steps(0));

    // Total steps: epochs × ceil(micro-batches / accumulation), or max_train_steps.
    let c = with("epochs: 3\ngradient_accumulation_steps: 4").unwrap();
    assert_eq!(c.steps_per_epoch(10), 3);
    assert_eq!(c.total_steps(10), 9);
    let c = with("epochs: 3\nmax_train_steps: 7").unwrap();
    assert_eq!(c.total_steps(10), 7);
}

#[test]
fn overrides_replace_file_values_and_name_themselves_in_errors() {
    let c = load_with(
        FULL,
        &[
            "learning_rate=3e-4",
            "lora_rank = 8",
            "max_train_steps=",
            "sample_prompts=[a dog, a cat]",
            "output_name=v2: final",
            "mixed_precision=no",
            "device=cpu",
        ],
    )
    .unwrap();
    assert_eq!(c.learning_rate, 3e-4);
    assert_eq!(c.lora_rank, 8);
    assert_eq!(c.max_train_steps, None, "an empty override unsets");
    assert_eq!(
        c.sample_prompts,
        SamplePrompts::List(vec!["a dog".into(), "a cat".into()])
    );
    assert_eq!(c.output_name, "v2: final", "names are taken as written");
    assert_eq!(c.mixed_precision, MixedPrecision::No);
    assert_eq!(c.device, Device::Cpu);
    assert_eq!(
        c.provenance.origin("lora_rank"),
        Origin::Override("lora_rank = 8".into())
    );

    // Derived defaults follow an overridden key.
    let c = load_with(REQUIRED, &["output_dir=runs/cat", "lora_rank=4"]).unwrap();
    assert_eq!((c.output_name.as_str(), c.lora_alpha), ("cat", 4.0));
    assert_eq!(c.logging_dir, Path::new("runs/cat/logs"));

    // Later overrides win.
    let c = load_with(REQUIRED, &["seed=1", "seed=2"]).unwrap();
    assert_eq!(c.seed, 2);

    assert_eq!(
        err_text(load_with(REQUIRED, &["lora_rank=abc"])),
        "--set lora_rank=abc: lora_rank = \"abc\" is not valid: must be a whole number from 1 to 1024 (typical 4 to 128)"
    );
    assert_eq!(
        err_text(load_with(REQUIRED, &["learning_rate=-1"])),
        "--set learning_rate=-1: learning_rate = -1 is out of range: must be > 0 and < 1 (typical LoRA values 1e-4 to 1e-3)"
    );
    let text = err_text(load_with(REQUIRED, &["learnig_rate=1e-4"]));
    assert_eq!(
        text,
        "--set learnig_rate=1e-4: unknown key `learnig_rate`: did you mean `learning_rate`?"
    );
    let c = load_with(REQUIRED, &["network_dim=16"]).unwrap();
    assert_eq!(c.lora_rank, 16);
    let w = c.warnings().join("\n");
    assert!(w.contains("lorafuse calls this `lora_rank`"), "{w}");
    let text = err_text(load_with(REQUIRED, &["learning_rate"]));
    assert_eq!(
        text,
        "--set learning_rate: expected key=value, for example --set learning_rate=2e-4"
    );
    let text = err_text(load_with(REQUIRED, &["=3"]));
    assert!(text.contains("the key before `=` is empty"), "{text}");
    let text = err_text(load_with(REQUIRED, &["sample_prompts=[a, b"]));
    assert!(
        text.starts_with("--set sample_prompts=[a, b: YAML syntax error"),
        "{text}"
    );

    // A file that would fail is fixed by an override, and the reverse.
    load_with(
        "train_data_dir: d\nbase_model: m\noutput_dir: o\nlora_rank: 0\n",
        &["lora_rank=4"],
    )
    .unwrap();

    // A config from overrides alone.
    let c =
        TrainConfig::from_overrides(&["train_data_dir=d", "base_model=m", "output_dir=o"]).unwrap();
    assert_eq!(c.output_name, "o");
    let text = err_text(TrainConfig::from_overrides(&["train_data_dir=d"]));
    assert!(
        text.starts_with("configuration: missing required key `base_model`"),
        "{text}"
    );
}

#[test]
fn missing_required_keys_are_named() {
    let e = err(load("lora_rank: 16\n"));
    let missing: Vec<&str> = e
        .problems()
        .iter()
        .map(|p| match p {
            ConfigError::Missing { key, .. } => *key,
            other => panic!("expected Missing, got {other:?}"),
        })
        .collect();
    assert_eq!(missing, ["train_data_dir", "base_model", "output_dir"]);
    let text = err_text(load("train_data_dir: d\noutput_dir: o\n"));
    assert_eq!(
        text,
        "config.yaml: missing required key `base_model`: the Stable Diffusion 1.x model to train on (a .safetensors file or a diffusers folder)"
    );
    // An empty value is no value.
    let text = err_text(load("train_data_dir: d\nbase_model:\noutput_dir: o\n"));
    assert!(text.contains("missing required key `base_model`"), "{text}");
    // An empty file has every required key missing.
    assert_eq!(err(load("")).problems().len(), 3);
    assert_eq!(err(load("# nothing yet\n")).problems().len(), 3);
}

#[test]
fn yaml_syntax_errors_give_the_position() {
    let e = err(load(
        "train_data_dir: d\nresolution: [512, 768\nbase_model: m\n",
    ));
    let text = e.to_string();
    match e {
        ConfigError::Syntax { line, column, .. } => {
            assert_eq!(line, Some(3), "{text}");
            assert!(column.is_some(), "{text}");
        }
        other => panic!("expected Syntax, got {other:?}"),
    }
    assert!(text.starts_with("config.yaml:3:"), "{text}");
    assert!(text.contains("YAML syntax error"), "{text}");

    let text = err_text(load("train_data_dir: d\nbase_model: m\n\toutput_dir: o\n"));
    assert!(text.contains("tabs"), "{text}");
    let text = err_text(load("a: 1\na: 2\n"));
    assert!(text.contains("duplicate"), "{text}");
    assert!(text.starts_with("config.yaml:"), "{text}");

    let text = err_text(load("- train_data_dir: d\n- base_model: m\n"));
    assert!(
        text.contains("mapping of `key: value` lines, but this is a list"),
        "{text}"
    );
    let text = err_text(load("[general]\nnetwork_dim = 32\nlearning_rate = 1e-4\n"));
    assert!(text.contains("looks like TOML"), "{text}");
}

#[test]
fn read_errors_name_the_file() {
    let dir = temp_dir("read");
    let text = TrainConfig::load(dir.join("nope.yaml"), NO_SET)
        .unwrap_err()
        .to_string();
    assert!(text.starts_with("cannot read the config file "), "{text}");
    assert!(text.contains("nope.yaml"), "{text}");
    let text = TrainConfig::load(&dir, NO_SET).unwrap_err().to_string();
    assert!(text.contains("it is a folder"), "{text}");
    let bin = dir.join("model.safetensors");
    std::fs::write(&bin, [0u8, 159, 146, 150, 0xff]).unwrap();
    let text = TrainConfig::load(&bin, NO_SET).unwrap_err().to_string();
    assert!(text.contains("not UTF-8 text"), "{text}");

    let file = dir.join("config.yaml");
    std::fs::write(&file, format!("\u{feff}{REQUIRED}lora_rank: 0\n")).unwrap();
    let text = TrainConfig::load(&file, NO_SET).unwrap_err().to_string();
    assert!(
        text.starts_with(&format!(
            "{}: lora_rank = 0 is out of range",
            file.display()
        )),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_effective_config_loads_back_to_the_same_values() {
    for text in [FULL.to_string(), REQUIRED.to_string(), format!("{REQUIRED}num_warmup_steps: 0.1\nresolution: [640, 448]\noutput_name: \"2024\"\nsample_prompts: p.txt\ncaption_extension: .no\n")] {
        let c = load(&text).unwrap();
        let yaml = c.to_yaml();
        let back = TrainConfig::from_yaml(&yaml, "config.effective.yaml", NO_SET)
            .unwrap_or_else(|e| panic!("{e}\n{yaml}"));
        assert_eq!(back, c, "{yaml}");
        assert_eq!(c.to_string(), yaml);
    }
    let yaml = load(REQUIRED).unwrap().to_yaml();
    // Every key is written, in the documented order.
    let keys: Vec<&str> = yaml
        .lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with(' ') && !l.starts_with('-'))
        .filter_map(|l| l.split(':').next())
        .collect();
    assert_eq!(keys, TrainConfig::key_names(), "{yaml}");
}

#[test]
fn path_checks() {
    let dir = temp_dir("paths");
    let data = dir.join("data");
    std::fs::create_dir_all(data.join("10_dog")).unwrap();
    let model = dir.join("sd15.safetensors");
    std::fs::write(&model, b"not really a model").unwrap();
    let cfg = |data: &Path, model: &Path, out: &Path| {
        TrainConfig::from_yaml(
            &format!(
                "train_data_dir: {:?}\nbase_model: {:?}\noutput_dir: {:?}\n",
                data.to_string_lossy(),
                model.to_string_lossy(),
                out.to_string_lossy()
            ),
            "config.yaml",
            NO_SET,
        )
        .unwrap()
    };

    // All good, and nothing is created (serve checks at every edit): the folders do not
    // exist yet, and the probe file left nothing in their existing parent.
    let out = dir.join("out/run1");
    let c = cfg(&data, &model, &out);
    let before = std::fs::read_dir(&dir).unwrap().count();
    c.check_paths().unwrap();
    assert!(!dir.join("out").exists());
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), before);
    // An existing output folder is probed inside, and left as it was.
    std::fs::create_dir_all(out.join("logs")).unwrap();
    c.check_paths().unwrap();
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 1, "only logs/");
    let written = c.write_effective().unwrap();
    assert_eq!(written, out.join("config.effective.yaml"));
    assert_eq!(TrainConfig::load(&written, NO_SET).unwrap(), c);

    // A diffusers folder is a base model too.
    cfg(&data, &dir, &out).check_paths().unwrap();

    let e = cfg(&dir.join("no_such_data"), &model, &out)
        .check_paths()
        .unwrap_err();
    let text = e.to_string();
    assert!(
        text.starts_with("config.yaml: train_data_dir = \""),
        "{text}"
    );
    assert!(text.ends_with("no_such_data\" does not exist"), "{text}");

    let text = cfg(&model, &model, &out)
        .check_paths()
        .unwrap_err()
        .to_string();
    assert!(text.contains("is a file, not a folder"), "{text}");

    let mut c = cfg(&data, &model, &out);
    c.reg_data_dir = Some(dir.join("no_such_reg"));
    let text = c.check_paths().unwrap_err().to_string();
    assert!(text.contains("reg_data_dir = "), "{text}");
    assert!(
        text.contains("no_such_reg") && text.contains("does not exist"),
        "{text}"
    );

    let text = cfg(&data, &dir.join("v1-5.safetensors"), &out)
        .check_paths()
        .unwrap_err()
        .to_string();
    assert!(text.starts_with("config.yaml: base_model = \""), "{text}");
    assert!(
        text.ends_with("v1-5.safetensors\" does not exist"),
        "{text}"
    );

    // An output folder under a regular file cannot be created.
    let blocked = model.join("out");
    let e = cfg(&data, &model, &blocked).check_paths().unwrap_err();
    let text = e.to_string();
    assert_eq!(
        e.problems().len(),
        1,
        "logs/ under it is not reported again: {text}"
    );
    assert!(text.starts_with("config.yaml: output_dir = \""), "{text}");
    assert!(text.contains("cannot be created"), "{text}");
    assert!(
        text.contains("sd15.safetensors is a file, not a folder"),
        "{text}"
    );

    // Several path problems at once, each named.
    let e = cfg(&dir.join("nodata"), &dir.join("nomodel"), &blocked)
        .check_paths()
        .unwrap_err();
    assert_eq!(e.problems().len(), 3, "{e}");

    // A relative path that is missing says where relative paths start.
    let c = TrainConfig::from_yaml(
        &format!(
            "train_data_dir: surely/not/here\nbase_model: {:?}\noutput_dir: {:?}\n",
            model.to_string_lossy(),
            out.to_string_lossy()
        ),
        "config.yaml",
        NO_SET,
    )
    .unwrap();
    let text = c.check_paths().unwrap_err().to_string();
    assert!(
        text.contains("relative paths start from the folder lorafuse runs in"),
        "{text}"
    );

    // A prompt file: read, comments skipped; missing or empty when sampling is refused.
    let prompts = dir.join("prompts.txt");
    std::fs::write(
        &prompts,
        "# samples\na photo of sks dog --w 512 --h 512\n\n  sks dog, oil painting  \n",
    )
    .unwrap();
    let with_prompts = |extra: &str| {
        TrainConfig::from_yaml(
            &format!(
                "train_data_dir: {:?}\nbase_model: {:?}\noutput_dir: {:?}\n{extra}",
                data.to_string_lossy(),
                model.to_string_lossy(),
                out.to_string_lossy()
            ),
            "config.yaml",
            NO_SET,
        )
        .unwrap()
    };
    let c = with_prompts(&format!(
        "sample_every_n_steps: 100\nsample_prompts: {:?}\n",
        prompts.to_string_lossy()
    ));
    c.check_paths().unwrap();
    assert_eq!(
        c.sample_prompt_lines().unwrap(),
        [
            "a photo of sks dog --w 512 --h 512",
            "sks dog, oil painting"
        ]
    );
    let c = with_prompts(&format!(
        "sample_prompts: {:?}\n",
        dir.join("none.txt").to_string_lossy()
    ));
    let text = c.check_paths().unwrap_err().to_string();
    assert!(text.contains("none.txt\" does not exist"), "{text}");
    assert!(c.sample_prompt_lines().is_err());
    let empty = dir.join("empty.txt");
    std::fs::write(&empty, "# nothing\n\n").unwrap();
    let c = with_prompts(&format!(
        "sample_every_n_steps: 10\nsample_prompts: {:?}\n",
        empty.to_string_lossy()
    ));
    let text = c.check_paths().unwrap_err().to_string();
    assert!(text.contains("has no prompts"), "{text}");
    // A prompt line that does not parse is found before training.
    let bad = dir.join("bad.txt");
    std::fs::write(&bad, "a cat\na dog --ss heun\n").unwrap();
    let c = with_prompts(&format!(
        "sample_every_n_epochs: 1\nsample_prompts: {:?}\n",
        bad.to_string_lossy()
    ));
    let text = c.check_paths().unwrap_err().to_string();
    assert!(
        text.contains("sample_prompts")
            && text.contains("\"a dog --ss heun\"")
            && text.contains("use dpmsolver++"),
        "{text}"
    );

    let _ = std::fs::remove_dir_all(&dir);
}

/// The markers around README.md's table of keys.
const TABLE_BEGIN: &str = "<!-- config keys: made from src/config/keys.rs by TrainConfig::markdown_table(); LORAFUSE_BLESS=1 cargo test --test frontend config::the_readme_table rewrites it -->\n";
const TABLE_END: &str = "<!-- end of config keys -->";

/// README.md, and the byte range of its table of keys (between the markers).
fn readme_table() -> (PathBuf, String, std::ops::Range<usize>) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
    let text = std::fs::read_to_string(&path).expect("README.md");
    let start = text
        .find(TABLE_BEGIN)
        .expect("README.md has the table's begin marker")
        + TABLE_BEGIN.len();
    let end = start
        + text[start..]
            .find(TABLE_END)
            .expect("README.md has the table's end marker");
    (path, text, start..end)
}

/// The rows of a markdown table: (key, type, default, meaning).
fn table_rows(table: &str) -> Vec<[String; 4]> {
    table
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            let cells: Vec<String> = l
                .trim()
                .trim_matches('|')
                .split(" | ")
                .map(|c| c.trim().to_string())
                .collect();
            assert_eq!(cells.len(), 4, "a row of 4 cells: {l}");
            let key = cells[0].trim_matches('`').to_string();
            [key, cells[1].clone(), cells[2].clone(), cells[3].clone()]
        })
        .collect()
}

#[test]
fn the_readme_table_is_the_one_the_declarations_make() {
    let table = TrainConfig::markdown_table();
    let (path, text, range) = readme_table();
    if text[range.clone()] != table {
        if std::env::var("LORAFUSE_BLESS").is_ok_and(|v| v == "1") {
            let mut new = text.clone();
            new.replace_range(range, &table);
            std::fs::write(&path, new).expect("rewrite README.md");
            eprintln!("README.md: the table of configuration keys was rewritten");
        } else {
            panic!(
                "README.md's table of configuration keys differs from the declarations in src/config/keys.rs; \
                 run `LORAFUSE_BLESS=1 cargo test --test frontend config::the_readme_table` to rewrite it, and review the diff.\n\
                 --- README.md:\n{}\n--- declared:\n{table}",
                &text[range]
            );
        }
    }

    // The table lists exactly the keys the code knows and TrainConfig's fields, in order,
    // every cell filled.
    let rows = table_rows(&table);
    let documented: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    let known = TrainConfig::key_names();
    let c = load(REQUIRED).unwrap();
    let fields: Vec<String> = match yaml_serde::to_value(&c).unwrap() {
        yaml_serde::Value::Mapping(m) => {
            m.keys().map(|k| k.as_str().unwrap().to_string()).collect()
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(fields, known, "TrainConfig's fields vs its keys");
    assert_eq!(documented, known, "the table vs TrainConfig");
    for row in &rows {
        assert!(
            row.iter().all(|c| !c.is_empty()),
            "every column filled: {row:?}"
        );
    }
    // Defaults are shown as a config writes them.
    let row = |key: &str| rows.iter().find(|r| r[0] == key).unwrap().clone();
    assert_eq!(row("learning_rate")[2], "`1e-4`");
    assert_eq!(row("lora_rank")[2], "`32`");
    assert_eq!(row("lora_alpha")[2], "`lora_rank`");
    assert_eq!(row("lr_scheduler")[2], "`cosine`");
    assert_eq!(row("train_data_dir")[2], "required");
    assert!(
        row("lora_rank")[3].contains("`network_dim`"),
        "{:?}",
        row("lora_rank")
    );
}

/// Draws from YAML's punctuation, key fragments and values, so that random text reaches past
/// the parser into the key and value checks.
fn random_yamlish(rng: &mut Rng) -> String {
    const PIECES: &[&str] = &[
        "\n",
        "\n",
        "\n",
        ": ",
        ":",
        " ",
        "  ",
        "- ",
        "[",
        "]",
        "{",
        "}",
        ",",
        "\"",
        "'",
        "#",
        "&a ",
        "*a",
        "!tag ",
        "|",
        ">",
        "? ",
        "---\n",
        "...\n",
        "\t",
        "~",
        "=",
        "%",
        "@",
        "\\",
        "\u{feff}",
        "é",
        "🐕",
        "0",
        "1",
        "-1",
        "1e-4",
        "0.5",
        "1e999",
        ".nan",
        ".inf",
        "true",
        "no",
        "null",
        "512,768",
        "[512, 768]",
        "cuda:1",
        "cuda:99999999999999999999",
        "lora_rank",
        "learning_rate",
        "resolution",
        "num_warmup_steps",
        "train_data_dir",
        "base_model",
        "output_dir",
        "sample_prompts",
        "lr_scheduler",
        "device",
        "network_dim",
        "learnig_rate",
        "a",
        "x.txt",
        "18446744073709551616",
        "-9223372036854775809",
        "<<: *a",
    ];
    let n = rng.below(40) as usize;
    (0..n)
        .map(|_| PIECES[rng.below(PIECES.len() as u64) as usize])
        .collect()
}

#[test]
fn no_panics_on_random_yamlish_input() {
    let mut rng = Rng::new(7);
    let mut outcomes = [0usize; 2];
    for i in 0..3000 {
        let text = random_yamlish(&mut rng);
        // Half the cases start from the required keys, so values reach validation.
        let text = if i % 2 == 0 {
            format!("{REQUIRED}{text}")
        } else {
            text
        };
        let r = std::panic::catch_unwind(|| load(&text).map(|c| (c.to_yaml(), c.warnings())));
        match r {
            Ok(Ok(_)) => outcomes[0] += 1,
            Ok(Err(e)) => {
                outcomes[1] += 1;
                assert!(!e.to_string().is_empty());
            }
            Err(_) => panic!("panic on input {text:?}"),
        }
        let set = format!(
            "{}={}",
            [
                "lora_rank",
                "resolution",
                "sample_prompts",
                "device",
                "num_warmup_steps",
                "x"
            ][i % 6],
            random_yamlish(&mut rng)
        );
        let r =
            std::panic::catch_unwind(|| load_with(REQUIRED, &[set.as_str()]).map(|c| c.to_yaml()));
        assert!(r.is_ok(), "panic on --set {set:?}");
    }
    // The generator reaches both outcomes.
    assert!(outcomes[0] > 0 && outcomes[1] > 0, "{outcomes:?}");

    // Mutations of a valid config: deleted, duplicated and swapped bytes.
    let base = FULL.as_bytes();
    for _ in 0..1500 {
        let mut bytes = base.to_vec();
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(bytes.len() as u64) as usize;
            match rng.below(3) {
                0 => {
                    bytes.remove(at);
                }
                1 => bytes.insert(at, base[rng.below(base.len() as u64) as usize]),
                _ => {
                    let other = rng.below(bytes.len() as u64) as usize;
                    bytes.swap(at, other);
                }
            }
        }
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let r = std::panic::catch_unwind(|| load(&text).map(|c| c.to_yaml()));
        assert!(r.is_ok(), "panic on input {text:?}");
    }
}

#[test]
fn deep_nesting_is_an_error_not_a_crash() {
    let deep = format!(
        "{REQUIRED}sample_prompts: {}{}\n",
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    assert!(load(&deep).is_err());
    let deep = format!("{REQUIRED}resolution: {}\n", "- ".repeat(5_000));
    assert!(load(&deep).is_err());
}

#[test]
fn conv_alpha_without_conv_dim_is_a_warning() {
    let w = with("conv_alpha: 4").unwrap().warnings().join("\n");
    assert!(
        w.contains("conv_alpha = 4 has no effect without conv_dim"),
        "{w}"
    );
    let c = with("conv_alpha: 4\nconv_dim: 8").unwrap();
    assert!(c.warnings().is_empty(), "{:?}", c.warnings());
}

#[test]
fn auto_keys_are_checked() {
    let text = err_text(with("auto_crop: edges"));
    assert!(
        text.contains("auto_crop = \"edges\"") && text.contains("center, smart, none"),
        "{text}"
    );
    let text = err_text(with("auto_caption_threshold: 1.5"));
    assert!(text.contains("auto_caption_threshold"), "{text}");
    let c = with("auto_caption: /nowhere/tagger").unwrap();
    let text = c.check_paths().unwrap_err().to_string();
    assert!(
        text.contains("auto_caption") && text.contains("does not exist"),
        "{text}"
    );
}

#[test]
fn cpu_precision_is_f32_unless_asked_and_refused_where_the_cpu_lacks_bf16() {
    use lorafuse::backend::cpu::{gemm_bf16, CpuPrecision};
    assert_eq!(with("").unwrap().cpu_precision, CpuPrecision::F32);
    let e = err(with("cpu_precision: fp8")).to_string();
    assert!(
        e.contains("cpu_precision") && e.contains("f32, bf16"),
        "{e}"
    );
    let bf16 = with("cpu_precision: bf16\ndevice: cpu");
    if gemm_bf16::available() {
        assert_eq!(bf16.unwrap().cpu_precision, CpuPrecision::Bf16);
    } else {
        println!("this CPU has no AVX512_BF16: checking the refusal");
        let e = err(bf16).to_string();
        assert!(
            e.contains("AVX512_BF16") && e.contains("cpu_precision: f32"),
            "{e}"
        );
    }
    // A run on a GPU does not use it: never refused there.
    assert!(with("cpu_precision: bf16\ndevice: cuda").is_ok());
}
