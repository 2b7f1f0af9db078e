//! kohya-format configs: the TOML of sd-scripts' `--config_file` and lora-scripts read as
//! they are (sections flattened, kohya's flag names, kohya's meanings and defaults),
//! lora-scripts' own two configs and sd-scripts' documented examples (tests/fixtures/kohya/),
//! and sd-scripts' `dataset_config` files.

use crate::common;
use common::tools::TempDir;
use std::path::{Path, PathBuf};
use std::process::Command;

use lorafuse::config::{
    ConfigError, Format, MixedPrecision, Resolution, SavePrecision, Schedule, TrainConfig, Warmup,
};
use lorafuse::sample::SamplerKind;
use lorafuse::train::optim::OptimizerType;

const NO_SET: &[&str] = &[];

/// A fresh, empty folder under the system temp dir, removed when dropped.
fn temp_dir(name: &str) -> TempDir {
    TempDir::new(&format!("kohya-{name}"))
}

fn toml(text: &str) -> Result<TrainConfig, ConfigError> {
    TrainConfig::from_text(text, "config.toml", Format::Kohya, NO_SET)
}

fn err_text(r: Result<TrainConfig, ConfigError>) -> String {
    match r {
        Ok(cfg) => panic!("expected an error, got a config:\n{cfg}"),
        Err(e) => e.to_string(),
    }
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/kohya")
        .join(name)
}

const REQUIRED: &str = r#"
[model_arguments]
pretrained_model_name_or_path = "sd15.safetensors"

[dataset_arguments]
train_data_dir = "data"

[saving_arguments]
output_dir = "out"
output_name = "my_lora"
"#;

#[test]
fn sections_are_flattened_as_sd_scripts_does() {
    let c = toml(&format!(
        "{REQUIRED}\n[training_arguments]\nnetwork_dim = 16\nresolution = \"512,768\"\nlearning_rate = 1e-4\n\n[whatever_name]\nseed = 7\n"
    ))
    .unwrap();
    assert_eq!(c.base_model, Path::new("sd15.safetensors"));
    assert_eq!(c.train_data_dir, Path::new("data"));
    assert_eq!(c.output_dir, Path::new("out"));
    assert_eq!(c.output_name, "my_lora");
    assert_eq!(c.lora_rank, 16);
    assert_eq!(
        c.resolution,
        Resolution {
            width: 512,
            height: 768
        }
    );
    assert_eq!(c.learning_rate, 1e-4);
    assert_eq!(c.seed, 7);
    assert_eq!(c.provenance.format(), Format::Kohya);
    // kohya's names in a kohya-format file: no notice.
    assert!(c.warnings().is_empty(), "{:?}", c.warnings());

    // Keys outside any section are keys too; lorafuse's own names work as well.
    let c = toml("pretrained_model_name_or_path = \"m.safetensors\"\ntrain_data_dir = \"d\"\noutput_dir = \"o\"\nlora_rank = 8\n").unwrap();
    assert_eq!(c.lora_rank, 8);

    // Two sections give one key: the later value, as sd-scripts, with a notice when they differ.
    let c = toml(&format!(
        "{REQUIRED}\n[a]\nseed = 1\n[b]\nseed = 2\n[c]\nclip_skip = 2\n[d]\nclip_skip = 2\n"
    ))
    .unwrap();
    assert_eq!(c.seed, 2);
    let w = c.warnings().join("\n");
    assert!(
        w.contains("seed is given in [a] (1) and in [b] (2); the later value is used"),
        "{w}"
    );
    assert!(!w.contains("clip_skip"), "{w}");
}

#[test]
fn toml_syntax_errors_name_the_file_and_line() {
    let e = toml(&format!(
        "{REQUIRED}\n[training_arguments]\nnetwork_dim = = 4\n"
    ))
    .unwrap_err();
    let text = e.to_string();
    match &e {
        ConfigError::Syntax { line, .. } => assert_eq!(*line, Some(13), "{text}"),
        other => panic!("{other:?}"),
    }
    assert!(text.starts_with("config.toml:13:"), "{text}");
    assert!(text.contains("TOML syntax error"), "{text}");
    assert_eq!(text.lines().count(), 1, "{text}");

    // On the command line: exit 2, the file and the line.
    let dir = temp_dir("syntax");
    let path = dir.join("broken.toml");
    std::fs::write(&path, "[model]\nv2 = false\nnetwork_dim = \"16\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_lorafuse"))
        .arg("train")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("{}:3:", path.display())),
        "{stderr}"
    );
    assert!(stderr.contains("TOML syntax error"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn the_format_comes_from_the_extension_or_the_content() {
    let dir = temp_dir("format");
    let body = format!("{REQUIRED}\n[x]\nnetwork_dim = 8\n");
    for name in ["a.toml", "a.TOML", "a.conf", "a"] {
        let path = dir.join(name);
        std::fs::write(&path, &body).unwrap();
        let c = TrainConfig::load(&path, NO_SET).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(c.lora_rank, 8, "{name}");
        assert_eq!(c.provenance.format(), Format::Kohya, "{name}");
    }
    // A .yaml file is YAML whatever it holds; a TOML body gets the hint.
    let path = dir.join("a.yaml");
    std::fs::write(&path, &body).unwrap();
    let text = TrainConfig::load(&path, NO_SET).unwrap_err().to_string();
    assert!(text.contains("looks like TOML"), "{text}");
    assert!(text.contains("name the file .toml"), "{text}");
    // A YAML body without extension is YAML.
    let path = dir.join("b");
    std::fs::write(
        &path,
        "# comment\ntrain_data_dir: d\nbase_model: m.safetensors\noutput_dir: o\n",
    )
    .unwrap();
    let c = TrainConfig::load(&path, NO_SET).unwrap();
    assert_eq!(c.provenance.format(), Format::Yaml);
}

#[test]
fn no_half_vae_keeps_kohyas_meaning() {
    let c = toml(&format!(
        "{REQUIRED}\n[training_arguments]\nno_half_vae = true\n"
    ))
    .unwrap();
    assert_eq!(c.no_half_vae, Some(true));
    let c = toml(&format!(
        "{REQUIRED}\n[training_arguments]\nno_half_vae = false\n"
    ))
    .unwrap();
    assert_eq!(c.no_half_vae, Some(false));
}

#[test]
fn kohya_defaults_hold_for_keys_a_kohya_file_leaves_out() {
    let c = toml(REQUIRED).unwrap();
    assert_eq!(c.lora_rank, 4, "networks.lora's default network_dim");
    assert_eq!(c.lora_alpha, 1.0, "kohya's network_alpha default");
    assert_eq!(c.caption_extension, ".caption");
    assert_eq!(c.learning_rate, 2e-6);
    assert_eq!(c.unet_lr, 2e-6, "unet_lr follows learning_rate");
    assert_eq!(c.lr_scheduler, Schedule::Constant);
    assert_eq!(c.mixed_precision, MixedPrecision::No);
    assert_eq!(
        c.no_half_vae,
        Some(false),
        "kohya's VAE runs at mixed_precision"
    );
    assert_eq!(c.save_precision, SavePrecision::Fp32);
    assert!(c.train_text_encoder, "kohya trains the text encoder too");
    assert_eq!(c.max_train_steps, Some(1600), "kohya's default length");
    // Defaults are not "written": messages show them as defaults.
    assert!(!c.provenance.is_written("lora_alpha"));
    assert!(!c.provenance.is_written("max_train_steps"));

    // Without output_name the file is kohya's "last".
    let c = toml("pretrained_model_name_or_path = \"m.safetensors\"\ntrain_data_dir = \"d\"\noutput_dir = \"o/run\"\n").unwrap();
    assert_eq!(c.output_name, "last");

    // network_alpha left out is 1 whatever network_dim says; written, it is used.
    let c = toml(&format!("{REQUIRED}network_dim = 32\n")).unwrap();
    assert_eq!((c.lora_rank, c.lora_alpha), (32, 1.0));
    let c = toml(&format!("{REQUIRED}network_dim = 32\nnetwork_alpha = 16\n")).unwrap();
    assert_eq!(c.lora_alpha, 16.0);

    // The same keys in lorafuse's YAML keep lorafuse's defaults.
    let c = TrainConfig::from_yaml(
        "pretrained_model_name_or_path: m.safetensors\ntrain_data_dir: d\noutput_dir: o\nnetwork_dim: 32\n",
        "config.yaml",
        NO_SET,
    )
    .unwrap();
    assert_eq!((c.lora_rank, c.lora_alpha), (32, 32.0));
    assert_eq!(c.caption_extension, ".txt");
    assert_eq!(c.max_train_steps, None);
    assert!(!c.train_text_encoder);
    assert_eq!(c.provenance.format(), Format::Yaml);
}

#[test]
fn max_train_epochs_decides_the_length_over_max_train_steps() {
    let c = toml(&format!(
        "{REQUIRED}max_train_epochs = 3\nmax_train_steps = 500\n"
    ))
    .unwrap();
    assert_eq!((c.epochs, c.max_train_steps), (3, None));
    let w = c.warnings().join("\n");
    assert!(
        w.contains("max_train_epochs = 3 decides the length of the run, as in kohya; max_train_steps = 500 is ignored"),
        "{w}"
    );
    let c = toml(&format!("{REQUIRED}max_train_steps = 500\n")).unwrap();
    assert_eq!(c.max_train_steps, Some(500));
    let c = toml(&format!("{REQUIRED}epochs = 2\n")).unwrap();
    assert_eq!((c.epochs, c.max_train_steps), (2, None));
    // lorafuse's YAML: max_train_steps decides.
    let c = TrainConfig::from_yaml(
        "base_model: m.safetensors\ntrain_data_dir: d\noutput_dir: o\nmax_train_epochs: 3\nmax_train_steps: 500\n",
        "config.yaml",
        NO_SET,
    )
    .unwrap();
    assert_eq!((c.epochs, c.max_train_steps), (3, Some(500)));
}

#[test]
fn text_encoder_switches_as_kohya_means_them() {
    let c = toml(&format!("{REQUIRED}network_train_unet_only = true\n")).unwrap();
    assert!(!c.train_text_encoder);
    let c = toml(&format!("{REQUIRED}network_train_unet_only = false\n")).unwrap();
    assert!(c.train_text_encoder);
    // A learning rate of 0 freezes that part, as in kohya.
    let c = toml(&format!("{REQUIRED}text_encoder_lr = 0\nunet_lr = 1e-4\n")).unwrap();
    assert!(!c.train_text_encoder);
    assert_eq!(c.unet_lr, 1e-4);
    // unet_lr = 0 and network_train_text_encoder_only freeze the UNet: the text encoder alone
    // trains (kohya's default in a kohya file).
    for line in ["unet_lr = 0", "network_train_text_encoder_only = true"] {
        let c = toml(&format!("{REQUIRED}{line}\n")).unwrap();
        assert!(!c.train_unet && c.train_text_encoder, "{line}");
    }
    let c = toml(&format!(
        "{REQUIRED}network_train_text_encoder_only = false\n"
    ))
    .unwrap();
    assert!(c.train_unet);
    // Nothing left to train, or a switch that is not a flag: errors naming the key.
    for (text, want) in [
        (
            "network_train_text_encoder_only = true\nnetwork_train_unet_only = true\n",
            "train_unet = false leaves nothing to train",
        ),
        (
            "unet_lr = 0\ntext_encoder_lr = 0\n",
            "train_unet = false leaves nothing to train",
        ),
        (
            "network_train_text_encoder_only = 'maybe'\n",
            "network_train_text_encoder_only = \"maybe\" is not valid: must be true or false",
        ),
    ] {
        let e = err_text(toml(&format!("{REQUIRED}{text}")));
        assert!(e.contains(want), "{text}: {e}");
    }
    // In YAML, the same, with the lorafuse name in a notice.
    let c = TrainConfig::from_yaml(
        "base_model: m.safetensors\ntrain_data_dir: d\noutput_dir: o\ntrain_text_encoder: true\ntext_encoder_lr: 0\n",
        "config.yaml",
        NO_SET,
    )
    .unwrap();
    assert!(!c.train_text_encoder);
    assert!(c
        .warnings()
        .join("\n")
        .contains("train_text_encoder: false"));
    let c = TrainConfig::from_yaml(
        "base_model: m.safetensors\ntrain_data_dir: d\noutput_dir: o\nnetwork_train_unet_only: false\n",
        "config.yaml",
        NO_SET,
    )
    .unwrap();
    assert!(c.train_text_encoder);
    let w = c.warnings().join("\n");
    assert!(
        w.contains(
            "network_train_unet_only = false: lorafuse calls this `train_text_encoder: true`"
        ),
        "{w}"
    );
    let text = err_text(TrainConfig::from_yaml(
        "base_model: m.safetensors\ntrain_data_dir: d\noutput_dir: o\nnetwork_train_unet_only: true\ntrain_text_encoder: true\n",
        "config.yaml",
        NO_SET,
    ));
    assert!(text.contains("contradicts train_text_encoder"), "{text}");
    let c = TrainConfig::from_yaml(
        "base_model: m.safetensors\ntrain_data_dir: d\noutput_dir: o\ntrain_text_encoder: true\nnetwork_train_text_encoder_only: true\n",
        "config.yaml",
        NO_SET,
    )
    .unwrap();
    assert!(!c.train_unet);
    let w = c.warnings().join("\n");
    assert!(
        w.contains(
            "network_train_text_encoder_only = true: lorafuse calls this `train_unet: false`"
        ),
        "{w}"
    );
}

#[test]
fn refused_kohya_values_say_why_and_what_instead() {
    for (line, want) in [
        ("token_warmup_step = 100", "token warmup (kohya's: each caption starts with its first token_warmup_min tags"),
        ("optimizer_type = \"PagedAdamW8bit\"", "config.toml: optimizer_type = \"PagedAdamW8bit\" is not valid: must be one of AdamW, AdamW8bit"),
        ("sdxl = 2", "must be true or false"),
        ("v2 = 2", "must be true or false"),
        ("network_module = \"networks.dylora\"", "DyLoRA"),
        ("save_model_as = \"ckpt\"", ".safetensors"),
        ("log_with = \"wandb\"", "TensorBoard"),
        ("model_train_type = \"flux-lora\"", "Stable Diffusion 1.x, 2.x and SDXL"),
        ("positive_prompts = \"1girl\"", "set sample_prompts"),
    ] {
        let text = err_text(toml(&format!("{REQUIRED}{line}\n")));
        assert!(text.contains(want), "{line}: {text}");
        assert_eq!(text.lines().count(), 1, "{line}: {text}");
    }
    // A misspelt kohya option gets its name.
    let text = err_text(toml(&format!("{REQUIRED}xformer = true\n")));
    assert!(
        text.contains("unknown key `xformer`: did you mean `xformers`?"),
        "{text}"
    );
    // The optimizers lorafuse has, kohya's names in any case, are read silently.
    for name in ["adamw", "Lion", "prodigy", "SGDNesterov"] {
        let c = toml(&format!(
            "{REQUIRED}optimizer_type = \"{name}\"\nlearning_rate = 1e-4\n"
        ))
        .unwrap();
        assert!(c.warnings().is_empty(), "{name}: {:?}", c.warnings());
    }
}

#[test]
fn accepted_kohya_flags_are_silent_in_a_kohya_file() {
    let c = toml(&format!(
        "{REQUIRED}xformers = true\nsdpa = true\ncache_latents = true\ncache_latents_to_disk = true\nlowram = false\n\
         max_data_loader_n_workers = 8\npersistent_data_loader_workers = true\nv2 = false\n\
         save_model_as = \"safetensors\"\nnetwork_module = \"networks.lora\"\nsave_state = false\n\
         reg_data_dir = \"\"\nprior_loss_weight = 1\nnetwork_args = []\nlog_prefix = \"x\"\n\
         sample_sampler = \"euler_a\"\nsample_every_n_epochs = 1\nsave_n_epoch_ratio = 0\n\
         model_train_type = \"sd-lora\"\nprompt_file = \"\"\nsample_width = 512\n"
    ))
    .unwrap();
    assert!(c.cache_latents_to_disk);
    assert!(c.warnings().is_empty(), "{:?}", c.warnings());
    // lora-scripts' SDXL run: the family comes from the checkpoint.
    let c = toml(&format!(
        "{REQUIRED}sdxl = true\nmodel_train_type = \"sdxl-lora\"\n"
    ))
    .unwrap();
    assert!(c.warnings().is_empty(), "{:?}", c.warnings());
    // gradient_checkpointing is a lorafuse key of the same name and meaning.
    let c = toml(&format!("{REQUIRED}gradient_checkpointing = true\n")).unwrap();
    assert!(c.gradient_checkpointing);
    assert!(c.warnings().is_empty(), "{:?}", c.warnings());
}

#[test]
fn kohya_sample_keys_read_with_kohya_meaning() {
    // lora-scripts writes sample_every_n_epochs and sample_sampler with prompt fields of its
    // own: without sample_prompts, no samples and no complaint.
    let c = toml(&format!(
        "{REQUIRED}sample_every_n_epochs = 2\nsample_at_first = true\nsample_sampler = \"k_euler_a\"\n"
    ))
    .unwrap();
    assert_eq!(c.sample_every_n_epochs, 2);
    assert_eq!(c.sample_sampler, SamplerKind::EulerAncestral);
    assert!(!c.samples_asked());
    assert!(c.warnings().is_empty(), "{:?}", c.warnings());
    // With prompts they are honoured.
    let c = toml(&format!(
        "{REQUIRED}sample_every_n_epochs = 2\nsample_prompts = [\"a cat --ss dpmsolver++\"]\n"
    ))
    .unwrap();
    assert!(c.samples_asked());
    // A kohya sampler lorafuse lacks is refused, with the one to use.
    let e = toml(&format!("{REQUIRED}sample_sampler = \"dpmsingle\"\n"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("sample_sampler") && e.contains("use dpmsolver++"),
        "{e}"
    );
}

/// lora-scripts' own config, as its repository has it (paths aside).
fn lora_scripts(name: &str, sets: &[&str]) -> Result<TrainConfig, ConfigError> {
    TrainConfig::load(fixture(name), sets)
}

#[test]
fn lora_scripts_configs_are_read_as_they_are() {
    for name in ["lora-scripts-default.toml", "lora-scripts-lora.toml"] {
        // Read as they are: their AdamW8bit and 225-token captions included.
        let c = lora_scripts(name, NO_SET).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(c.optimizer_type, OptimizerType::AdamW8bit, "{name}");
        assert_eq!(c.max_token_length, 225);
        assert_eq!(c.base_model, Path::new("./sd-models/model.ckpt"));
        assert_eq!(c.lora_rank, 32);
        assert_eq!(c.lora_alpha, 16.0);
        assert_eq!(c.unet_lr, 1e-4);
        assert_eq!(c.text_encoder_lr, 1e-5);
        assert!(c.train_text_encoder, "network_train_unet_only = false");
        assert_eq!(c.lr_scheduler, Schedule::CosineWithRestarts);
        assert_eq!(c.lr_scheduler_num_cycles, 1);
        assert_eq!(c.num_warmup_steps, Warmup::Steps(0));
        assert_eq!(c.batch_size, 1);
        assert_eq!((c.epochs, c.max_train_steps), (10, None));
        assert_eq!(c.resolution, Resolution::square(512));
        assert_eq!(c.clip_skip, 2);
        assert_eq!(c.mixed_precision, MixedPrecision::Fp16);
        assert_eq!(c.save_precision, SavePrecision::Fp16);
        assert_eq!(c.output_name, "output_name");
        assert_eq!(c.output_dir, Path::new("./output"));
        assert_eq!(c.logging_dir, Path::new("./logs"));
        assert_eq!(c.save_every_n_epochs, Some(1));
        assert_eq!(c.caption_extension, ".txt");
        assert_eq!(c.seed, 1337);
        assert!(c.enable_bucket && c.shuffle_caption);
        assert_eq!((c.min_bucket_reso, c.max_bucket_reso), (256, 1024));
        assert_eq!(c.noise_offset, 0.0);
        assert_eq!(c.keep_tokens, 0);
        // Nothing to say about a kohya file read as kohya means it.
        assert!(c.warnings().is_empty(), "{name}: {:?}", c.warnings());
    }
    let c = lora_scripts("lora-scripts-default.toml", &["optimizer_type=AdamW"]).unwrap();
    assert_eq!(c.save_last_n_epochs, Some(499));
    assert_eq!(c.train_data_dir, Path::new("./train/input"));
}

#[test]
fn the_same_keys_in_yaml_get_the_lorafuse_names() {
    let c = TrainConfig::from_yaml(
        "pretrained_model_name_or_path: m.safetensors\ntrain_data_dir: d\noutput_dir: o\n\
         network_dim: 32\ntrain_batch_size: 2\nmax_train_epochs: 4\nxformers: true\n",
        "config.yaml",
        NO_SET,
    )
    .unwrap();
    assert_eq!((c.lora_rank, c.batch_size, c.epochs), (32, 2, 4));
    let w = c.warnings();
    for want in [
        "pretrained_model_name_or_path: lorafuse calls this `base_model`",
        "network_dim: lorafuse calls this `lora_rank`",
        "train_batch_size: lorafuse calls this `batch_size`",
        "max_train_epochs: lorafuse calls this `epochs`",
        "xformers = true: lorafuse always uses its own memory-efficient attention",
    ] {
        assert!(w.iter().any(|l| l == want), "{want}: {w:?}");
    }
}

// --- sd-scripts' dataset_config

/// Writes `name` in `dir` and returns its path.
fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// A main config that sets `dataset_config` to `dataset`, with the rest required.
fn with_dataset(dataset: &Path, main_extra: &str) -> Result<TrainConfig, ConfigError> {
    let dataset = dataset.display().to_string().replace('\\', "\\\\");
    toml(&format!(
        "pretrained_model_name_or_path = \"m.safetensors\"\noutput_dir = \"o\"\ndataset_config = \"{dataset}\"\n{main_extra}"
    ))
}

#[test]
fn a_one_subset_dataset_config_maps_to_the_data_keys() {
    let dir = temp_dir("dataset-one");
    let ds = write(
        &dir,
        "my_dataset_config.toml",
        r#"
[general]
shuffle_caption = true
caption_extension = '.txt'
keep_tokens = 1
flip_aug = true
resolution = 768

[[datasets]]
resolution = [512, 640]
batch_size = 4
enable_bucket = true
min_bucket_reso = 256
max_bucket_reso = 1024
keep_tokens = 2

  [[datasets.subsets]]
  image_dir = '/data/sks'
  class_tokens = 'sks dog'
  num_repeats = 10
  keep_tokens = 3
  random_crop = false
  caption_dropout_rate = 0.05
"#,
    );
    // The main config's values are replaced by the dataset file's (sd-scripts gives it
    // priority), and its train_data_dir is not used.
    let c = with_dataset(
        &ds,
        "train_data_dir = \"elsewhere\"\ntrain_batch_size = 1\nkeep_tokens = 7\n",
    )
    .unwrap();
    assert_eq!(c.train_data_dir, Path::new("/data/sks"));
    assert_eq!(c.class_tokens.as_deref(), Some("sks dog"));
    assert_eq!(c.num_repeats, 10);
    assert_eq!(c.keep_tokens, 3, "the subset's own value first");
    assert_eq!(c.batch_size, 4, "the dataset's");
    assert_eq!(
        c.resolution,
        Resolution {
            width: 512,
            height: 640
        },
        "the dataset's over [general]'s"
    );
    assert!(
        c.shuffle_caption && c.flip_aug && c.enable_bucket,
        "[general]'s"
    );
    assert_eq!(c.caption_extension, ".txt");
    assert_eq!(c.caption_dropout_rate, 0.05);
    assert_eq!(c.dataset_config.as_deref(), Some(ds.as_path()));
    let w = c.warnings().join("\n");
    assert!(
        w.contains("train_data_dir = \"elsewhere\" is not used: dataset_config's image_dir = \"/data/sks\" is the image folder"),
        "{w}"
    );
    // --set still has the last word.
    let dataset = ds.display().to_string();
    let c = TrainConfig::from_text(
        &format!("pretrained_model_name_or_path = \"m.safetensors\"\noutput_dir = \"o\"\ndataset_config = {dataset:?}\n"),
        "config.toml",
        Format::Kohya,
        &["batch_size=2"],
    )
    .unwrap();
    assert_eq!(c.batch_size, 2);

    // JSON, from lorafuse's YAML: the same.
    let json = write(
        &dir,
        "ds.json",
        r#"{"general": {"shuffle_caption": true},
            "datasets": [{"batch_size": 2, "subsets": [{"image_dir": "/data/cat", "num_repeats": 5}]}]}"#,
    );
    let c = TrainConfig::from_yaml(
        &format!(
            "base_model: m.safetensors\noutput_dir: o\ndataset_config: {}\n",
            json.display()
        ),
        "config.yaml",
        NO_SET,
    )
    .unwrap();
    assert_eq!(c.train_data_dir, Path::new("/data/cat"));
    assert_eq!((c.num_repeats, c.batch_size), (5, 2));
    assert!(c.shuffle_caption);
    // The dataset file speaks kohya: no notices for its names.
    assert!(c.warnings().is_empty(), "{:?}", c.warnings());
}

#[test]
fn the_basic_sd_scripts_example_reads_as_documented() {
    let dir = temp_dir("sd-scripts-basic");
    let ds = write(
        &dir,
        "my_dataset_config.toml",
        "[general]\ncaption_extension = '.txt'\n[[datasets]]\nresolution = 512\nbatch_size = 2\n[[datasets.subsets]]\nimage_dir = 'train/10_sks'\nnum_repeats = 10\nclass_tokens = 'sks dog'\n",
    );
    let config = fixture("sd-scripts-train_network.toml");
    let dataset_config = format!("dataset_config={}", ds.display());
    let c = TrainConfig::load(&config, &[dataset_config.as_str()]).unwrap();
    assert_eq!(c.optimizer_type, OptimizerType::AdamW8bit);
    assert_eq!((c.lora_rank, c.lora_alpha), (16, 1.0));
    assert_eq!(c.learning_rate, 1e-4);
    assert_eq!(c.lr_scheduler, Schedule::Constant);
    assert_eq!((c.epochs, c.max_train_steps), (10, None));
    assert_eq!(c.save_every_n_epochs, Some(1));
    assert_eq!(c.mixed_precision, MixedPrecision::Fp16);
    assert_eq!(c.output_name, "my_lora");
    assert!(
        c.train_text_encoder,
        "kohya trains the text encoder unless told not to"
    );
    assert_eq!(c.train_data_dir, Path::new("train/10_sks"));
    assert_eq!((c.num_repeats, c.batch_size), (10, 2));
    // Its gradient_checkpointing is honoured, without a word.
    assert!(c.gradient_checkpointing);
    assert!(c.warnings().is_empty(), "{:?}", c.warnings());
}

#[test]
fn sd_scripts_dataset_examples_read_with_their_precedence_or_name_each_refused_key() {
    // The first example, as it is: two datasets, a regularisation subset and a fine-tuning
    // subset (metadata_file; its folder is read when training starts).
    let ds = fixture("sd-scripts-dataset-example.toml");
    let c = with_dataset(&ds, "").unwrap();
    assert_eq!(c.subsets.len(), 4);
    let fine = &c.subsets[3];
    assert_eq!((fine.dataset, fine.is_reg), (1, false));
    assert_eq!(
        fine.config.metadata_file.as_deref(),
        Some(Path::new("C:\\piyo\\piyo_md.json"))
    );
    assert_eq!(fine.config.train_data_dir, Path::new("C:\\piyo"));
    assert_eq!(
        (
            fine.config.batch_size,
            fine.config.resolution.width,
            fine.config.keep_tokens
        ),
        (2, 768, 1)
    );
    // Its DreamBooth dataset, as it is: three subsets, each option its own, else its
    // dataset's, else [general]'s (sd-scripts' precedence).
    let body = std::fs::read_to_string(&ds).unwrap();
    let first = &body[..body.find("# This is a fine-tuning dataset").unwrap()];
    let dir = temp_dir("dataset-example-first");
    let c = with_dataset(&write(&dir, "first.toml", first), "train_batch_size = 1\n").unwrap();
    type Row = (usize, bool, String, usize, usize, bool, Option<String>);
    let got: Vec<Row> = c
        .subsets
        .iter()
        .map(|s| {
            let k = &s.config;
            (
                s.dataset,
                s.is_reg,
                k.train_data_dir.display().to_string(),
                k.keep_tokens,
                k.batch_size,
                k.shuffle_caption,
                k.class_tokens.clone(),
            )
        })
        .collect();
    let row = |dir: &str, reg: bool, keep: usize, class: &str| {
        (
            0,
            reg,
            dir.to_string(),
            keep,
            4,
            true,
            Some(class.to_string()),
        )
    };
    assert_eq!(
        got,
        [
            row("C:\\hoge", false, 2, "hoge girl"),
            row("C:\\fuga", false, 3, "fuga boy"),
            row("C:\\reg", true, 1, "human"),
        ]
    );
    // The main configuration is the first training subset's.
    assert_eq!(c.train_data_dir, Path::new("C:\\hoge"));
    assert_eq!((c.batch_size, c.resolution.width), (4, 512));
    // Two datasets, each with its resolution and batch size.
    let two = format!(
        "{first}[[datasets]]\nresolution = [768, 640]\nbatch_size = 2\n[[datasets.subsets]]\nimage_dir = 'C:\\piyo'\n"
    );
    let c = with_dataset(&write(&dir, "two.toml", &two), "").unwrap();
    let last = &c.subsets[3];
    assert_eq!(last.dataset, 1);
    let k = &last.config;
    assert_eq!(
        (
            k.batch_size,
            k.resolution.width,
            k.resolution.height,
            k.keep_tokens
        ),
        (2, 768, 640, 1)
    );
    // A dataset file of regularisation subsets only has nothing to balance them against.
    let text = err_text(with_dataset(
        &write(
            &dir,
            "reg-only.toml",
            "[[datasets]]\n[[datasets.subsets]]\nimage_dir = 'r'\nis_reg = true\n",
        ),
        "",
    ));
    assert!(text.contains("has only regularisation subsets"), "{text}");
}

/// sd-scripts' separators example reads as it is, and its captions come out as sd-scripts
/// makes them: the prefix's tags before `|||` stay in front, the suffix's after `|||` at the
/// end, `;;;` joins words into one tag, then becomes a comma.
#[test]
fn dataset_config_separators_example_reads_as_sd_scripts_means_it() {
    use lorafuse::data::process_caption;
    use lorafuse::train::inputs::data_options;
    let ds = fixture("sd-scripts-dataset-separators.toml");
    let c = with_dataset(&ds, "").unwrap();
    assert_eq!(c.keep_tokens_separator.as_deref(), Some("|||"));
    assert_eq!(c.secondary_separator.as_deref(), Some(";;;"));
    assert!(c.enable_wildcard && c.shuffle_caption);
    assert_eq!(c.caption_tag_dropout_rate, 0.1);
    let o = data_options(&c);
    let mut rng = lorafuse::rng::Rng::new(7);
    for _ in 0..50 {
        let cap = process_caption("smile, {sky|sea}, long;;;hair", &o, 1, &mut rng);
        assert!(cap.starts_with("1girl, hatsune miku, vocaloid, "), "{cap}");
        assert!(cap.ends_with(", masterpiece, rating: general"), "{cap}");
        assert!(
            !cap.contains("|||") && !cap.contains(";;;") && !cap.contains('{'),
            "{cap}"
        );
        assert!(
            !(cap.contains("sky") && cap.contains("sea")),
            "one choice: {cap}"
        );
    }
}

#[test]
fn dataset_config_mistakes_name_the_key_and_file() {
    let dir = temp_dir("dataset-bad");
    let cases: &[(&str, &str)] = &[
        (
            "[[datasets]]\nbatch_size = 1\n",
            "datasets[0].subsets is missing",
        ),
        ("[general]\nbatch_size = 1\n", "datasets is missing"),
        (
            "[[datasets]]\n[[datasets.subsets]]\nnum_repeats = 2\n",
            "datasets[0].subsets[0].image_dir is missing",
        ),
        (
            "[[datasets]]\n[[datasets.subsets]]\nimage_dir = 'a'\nbatch_size = 2\n",
            "batch_size = 2 is an option of a dataset",
        ),
        (
            "[general]\nimage_dir = 'a'\n[[datasets]]\n[[datasets.subsets]]\nimage_dir = 'a'\n",
            "image_dir = \"a\" is an option of [[datasets.subsets]]",
        ),
        (
            "[[datasets]]\n[[datasets.subsets]]\nimage_dir = 'a'\nlearning_rate = 1e-4\n",
            "learning_rate = 1e-4 is not a dataset config option",
        ),
        (
            "[[datasets]]\n[[datasets.subsets]]\nimage_dir = 'a'\nnum_repeats = 0\n",
            "num_repeats = 0 is out of range",
        ),
        (
            "[[datasets]]\n[[datasets.subsets]]\nimage_dir = 'a'\nis_reg = 'maybe'\n",
            "is_reg = \"maybe\" is not valid",
        ),
        ("[[datasets]\n", "TOML syntax error"),
    ];
    for (i, (body, want)) in cases.iter().enumerate() {
        let ds = write(&dir, &format!("d{i}.toml"), body);
        let text = err_text(with_dataset(&ds, ""));
        assert!(text.contains(want), "{body}: {text}");
        assert!(
            text.starts_with(&ds.display().to_string()),
            "{body}: names the dataset file: {text}"
        );
    }
    let ds = write(&dir, "broken.json", "{\"datasets\": [}");
    let text = err_text(with_dataset(&ds, ""));
    assert!(text.contains("JSON syntax error"), "{text}");
    assert!(text.starts_with(&format!("{}:1:", ds.display())), "{text}");

    // A dataset file that is not there: the key that names it.
    let text = err_text(with_dataset(&dir.join("missing.toml"), ""));
    assert!(text.starts_with("config.toml: dataset_config = "), "{text}");
    assert!(text.contains("cannot be read"), "{text}");

    // A subset folder that does not exist: the path check names image_dir in the dataset file.
    let ds = write(
        &dir,
        "nofolder.toml",
        &format!(
            "[[datasets]]\n[[datasets.subsets]]\nimage_dir = '{}'\n",
            dir.join("nope").display()
        ),
    );
    let c = toml(&format!(
        "pretrained_model_name_or_path = 'm.safetensors'\noutput_dir = '{}'\ndataset_config = '{}'\n",
        dir.join("out").display(),
        ds.display()
    ));
    let text = match c {
        Ok(c) => c.check_paths().unwrap_err().to_string(),
        Err(e) => panic!("{e}"),
    };
    let line = text
        .lines()
        .find(|l| l.contains("image_dir"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(line.starts_with(&ds.display().to_string()), "{line}");
    assert!(line.contains("does not exist"), "{line}");
}

/// Random TOML-ish text (sections, arrays of tables, keys, values of every kind, broken
/// lines) never panics, as a main config or as a dataset_config.
#[test]
fn no_panics_on_random_tomlish_input() {
    let mut rng = lorafuse::rng::Rng::new(13);
    let pieces = [
        "[model]",
        "[[datasets]]",
        "[[datasets.subsets]]",
        "[general]",
        "[a.b]",
        "network_dim = ",
        "image_dir = ",
        "is_reg = ",
        "resolution = ",
        "optimizer_type = ",
        "max_train_epochs = ",
        "dataset_config = ",
        "train_data_dir = ",
        "\"x\"",
        "'C:\\a'",
        "1",
        "-3",
        "1e-4",
        "nan",
        "true",
        "[1, 2]",
        "{ a = 1 }",
        "[]",
        "\"AdamW8bit\"",
        "= =",
        "[",
        "\"\"\"",
        "1979-05-27",
        "\u{feff}",
        "é",
        "\n",
        "\n",
        "\n",
        " ",
    ];
    let dir = temp_dir("fuzz");
    for i in 0..400 {
        let n = 1 + (rng.next_u64() % 24) as usize;
        let text: String = (0..n)
            .map(|_| pieces[(rng.next_u64() % pieces.len() as u64) as usize])
            .collect();
        let _ = toml(&text);
        let ds = write(&dir, &format!("d{}.toml", i % 4), &text);
        let _ = with_dataset(&ds, "");
    }
}

/// README.md's table of kohya options is the one src/config/foreign.rs makes;
/// `LORAFUSE_BLESS=1` rewrites it.
#[test]
fn the_readme_kohya_options_table_is_the_one_the_code_makes() {
    let readme = Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
    let text = std::fs::read_to_string(&readme).unwrap();
    let start_marker = "<!-- kohya options:";
    let end_marker = "<!-- end of kohya options -->";
    let start = text
        .find(start_marker)
        .expect("README.md has the kohya options marker");
    let body_start = start + text[start..].find('\n').unwrap() + 1;
    let end = text.find(end_marker).expect("README.md has the end marker");
    let want = TrainConfig::kohya_options_table();
    if std::env::var_os("LORAFUSE_BLESS").is_some() {
        let new = format!("{}{want}{}", &text[..body_start], &text[end..]);
        std::fs::write(&readme, new).unwrap();
        return;
    }
    assert!(
        text[body_start..end] == want,
        "README.md's table of kohya options differs from src/config/foreign.rs; run `LORAFUSE_BLESS=1 cargo test --test frontend kohya_config::the_readme` to rewrite it, and review the diff"
    );
    for name in ["xformers", "use_8bit_adam", "color_aug", "v2"] {
        assert!(want.contains(&format!("| `{name}` |")), "{name}");
    }
}

/// `lorafuse train CONFIG --set device=cpu`: its exit status, stderr and stdout.
fn train_on_cpu(config: &Path) -> (std::process::Output, String, String) {
    let run = Command::new(env!("CARGO_BIN_EXE_lorafuse"))
        .args(["train"])
        .arg(config)
        .args(["--set", "device=cpu"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
    let stdout = String::from_utf8_lossy(&run.stdout).into_owned();
    (run, stderr, stdout)
}

/// A lora-scripts-style TOML with an sd-scripts dataset_config trains the demo model from the
/// command line, and config.effective.yaml records what kohya's names meant.
#[test]
fn a_kohya_toml_with_a_dataset_config_trains() {
    let dir = temp_dir("train");
    let demo = lorafuse::demo::prepare(&dir.join("demo"), 2).unwrap();
    let folder = std::fs::read_dir(&demo.data)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_dir())
        .expect("the demo data has an N_name folder");
    let ds = write(
        &dir,
        "dataset.toml",
        &format!(
            "[general]\ncaption_extension = '.txt'\nshuffle_caption = false\n\n[[datasets]]\nresolution = 64\nbatch_size = 4\n\n  [[datasets.subsets]]\n  image_dir = '{}'\n  num_repeats = 1\n",
            folder.display()
        ),
    );
    let out = dir.join("out");
    let config = write(
        &dir,
        "lora.toml",
        &format!(
            "[model_arguments]\nv2 = false\npretrained_model_name_or_path = '{model}'\n\n\
             [dataset_arguments]\ndataset_config = '{ds}'\nreg_data_dir = ''\nprior_loss_weight = 1\n\n\
             [additional_network_arguments]\nnetwork_dim = 4\nnetwork_alpha = 2\nnetwork_module = 'networks.lora'\nnetwork_train_unet_only = true\n\n\
             [optimizer_arguments]\nunet_lr = 2e-3\noptimizer_type = 'AdamW'\nlr_scheduler = 'constant'\n\n\
             [training_arguments]\nmax_train_steps = 2\nxformers = true\nmixed_precision = 'no'\ncache_latents = true\nseed = 3\n\n\
             [saving_arguments]\noutput_dir = '{out}'\noutput_name = 'kohya_run'\nsave_model_as = 'safetensors'\nsave_precision = 'fp16'\n",
            model = demo.model.display(),
            ds = ds.display(),
            out = out.display(),
        ),
    );
    let (run, stderr, _) = train_on_cpu(&config);
    assert_eq!(run.status.code(), Some(0), "{stderr}");
    assert!(out.join("kohya_run.safetensors").is_file(), "{stderr}");
    let effective = std::fs::read_to_string(out.join("config.effective.yaml")).unwrap();
    for line in [
        "lora_rank: 4",
        "lora_alpha: 2.0",
        "train_text_encoder: false",
        "batch_size: 4",
        "max_train_steps: 2",
        "lr_scheduler: constant",
    ] {
        assert!(
            effective.contains(&format!("\n{line}\n")),
            "{line}:\n{effective}"
        );
    }
    assert!(
        effective.contains(&format!("\ntrain_data_dir: {}\n", folder.display())),
        "{effective}"
    );
    // The effective config loads back as lorafuse YAML with the same values.
    let again = TrainConfig::load(out.join("config.effective.yaml"), NO_SET).unwrap();
    let first = TrainConfig::load(&config, &["device=cpu"]).unwrap();
    assert_eq!(again, first);
}

/// An sd-scripts dataset_config with a regularisation subset trains the demo model: the reg
/// images (captioned by their class tokens) are balanced against the training images, and
/// the metadata records them and prior_loss_weight as sd-scripts does.
#[test]
fn a_dataset_config_with_a_regularisation_subset_trains() {
    use lorafuse::model::checkpoint::safetensors::SafetensorsFile;
    let dir = temp_dir("train-reg");
    let demo = lorafuse::demo::prepare(&dir.join("demo"), 2).unwrap();
    let folder = std::fs::read_dir(&demo.data)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_dir())
        .expect("the demo data has an N_name folder");
    // Three of the demo images, without captions, as regularisation images.
    let reg = dir.join("reg");
    std::fs::create_dir_all(&reg).unwrap();
    let mut images: Vec<PathBuf> = std::fs::read_dir(&folder)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    images.sort();
    for p in &images[..3] {
        std::fs::copy(p, reg.join(p.file_name().unwrap())).unwrap();
    }
    let ds = write(
        &dir,
        "dataset.toml",
        &format!(
            "[general]\ncaption_extension = '.txt'\n\n[[datasets]]\nresolution = 64\nbatch_size = 2\n\n  [[datasets.subsets]]\n  image_dir = '{}'\n  num_repeats = 1\n\n  [[datasets.subsets]]\n  is_reg = true\n  image_dir = '{}'\n  class_tokens = 'shape'\n  num_repeats = 2\n",
            folder.display(),
            reg.display()
        ),
    );
    let out = dir.join("out");
    let config = write(
        &dir,
        "lora.toml",
        &format!(
            "pretrained_model_name_or_path = '{model}'\ndataset_config = '{ds}'\nprior_loss_weight = 0.5\n\
             network_dim = 4\nnetwork_alpha = 2\nnetwork_train_unet_only = true\nunet_lr = 2e-3\n\
             optimizer_type = 'AdamW'\nmax_train_steps = 2\nmixed_precision = 'no'\nseed = 3\n\
             output_dir = '{out}'\noutput_name = 'reg_run'\n",
            model = demo.model.display(),
            ds = ds.display(),
            out = out.display(),
        ),
    );
    let (run, stderr, stdout) = train_on_cpu(&config);
    assert_eq!(run.status.code(), Some(0), "{stderr}");
    let n = images.len();
    // kohya's counts: the training samples, the reg samples found (3 images × 2 repeats),
    // balanced to the training samples.
    let line = format!(
        "{n} train images with repeats, 6 reg images with repeats (balanced to {} per epoch",
        n.max(6)
    );
    assert!(
        stderr.contains(&line) || stdout.contains(&line),
        "{line}\n{stderr}\n{stdout}"
    );
    let file = SafetensorsFile::open(&out.join("reg_run.safetensors")).unwrap();
    let meta = file.metadata();
    assert_eq!(meta["ss_num_reg_images"], "6");
    assert_eq!(meta["ss_num_train_images"], n.to_string());
    assert_eq!(meta["ss_prior_loss_weight"], "0.5");
}

/// lora-scripts' two default configs train end to end as they are (AdamW8bit, 225-token
/// captions, the text encoder trained, cosine_with_restarts, clip_skip 2): only the paths are
/// replaced, and the size of the run (the demo's tiny model and 64-pixel images, 3 steps), and
/// the LoRA's metadata says what was done.
#[test]
fn lora_scripts_default_configs_train_end_to_end() {
    use lorafuse::model::checkpoint::safetensors::SafetensorsFile;
    let dir = temp_dir("lora-scripts-e2e");
    let demo = lorafuse::demo::prepare(&dir.join("demo"), 2).unwrap();
    for name in ["lora-scripts-default.toml", "lora-scripts-lora.toml"] {
        let out = dir.join(name).join("out");
        let set = |kv: String| ["--set".to_string(), kv];
        let args: Vec<String> = [
            // Paths.
            format!("pretrained_model_name_or_path={}", demo.model.display()),
            format!("train_data_dir={}", demo.data.display()),
            format!("output_dir={}", out.display()),
            format!("logging_dir={}", dir.join(name).join("logs").display()),
            // The size of the run.
            "resolution=64".into(),
            "min_bucket_reso=64".into(),
            "max_bucket_reso=128".into(),
            "max_train_epochs=".into(),
            "max_train_steps=3".into(),
            "device=cpu".into(),
        ]
        .into_iter()
        .flat_map(set)
        .collect();
        let run = Command::new(env!("CARGO_BIN_EXE_lorafuse"))
            .arg("train")
            .arg(fixture(name))
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert_eq!(run.status.code(), Some(0), "{name}: {stderr}");
        let file = SafetensorsFile::open(&out.join("output_name.safetensors")).unwrap();
        let meta = file.metadata();
        let get = |k: &str| meta.get(k).map(String::as_str).unwrap_or("");
        assert!(
            get("ss_optimizer").starts_with("AdamW8bit("),
            "{name}: {meta:?}"
        );
        for (key, want) in [
            ("ss_max_token_length", "225"),
            ("ss_clip_skip", "2"),
            ("ss_network_dim", "32"),
            ("ss_network_alpha", "16.0"),
            ("ss_lr_scheduler", "cosine_with_restarts"),
            ("ss_max_train_steps", "3"),
        ] {
            assert_eq!(get(key), want, "{name}: {key} in {meta:?}");
        }
        // The text encoder was trained too (network_train_unet_only = false).
        assert!(
            file.names().any(|n| n.starts_with("lora_te_")),
            "{name}: no text-encoder adapters"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn mixed_precision_bf16_means_bf16_products_on_a_cpu_that_has_them() {
    use lorafuse::backend::cpu::{gemm_bf16, CpuPrecision};
    let c = toml(&format!(
        "{REQUIRED}\n[training_arguments]\nmixed_precision = \"bf16\"\n"
    ))
    .unwrap();
    assert_eq!(c.mixed_precision, MixedPrecision::Bf16);
    if gemm_bf16::available() {
        assert_eq!(c.cpu_precision, CpuPrecision::Bf16);
    } else {
        println!("this CPU has no AVX512_BF16: checking the f32 fallback and its notice");
        assert_eq!(c.cpu_precision, CpuPrecision::F32);
        let w = c.warnings().join("\n");
        assert!(
            w.contains("computes in f32") && w.contains("AVX512_BF16"),
            "{w}"
        );
    }
    // Written, cpu_precision wins; other mixed precisions leave the CPU in f32.
    let c = toml(&format!(
        "{REQUIRED}\n[training_arguments]\nmixed_precision = \"bf16\"\ncpu_precision = \"f32\"\n"
    ))
    .unwrap();
    assert_eq!(c.cpu_precision, CpuPrecision::F32);
    let c = toml(&format!(
        "{REQUIRED}\n[training_arguments]\nmixed_precision = \"fp16\"\n"
    ))
    .unwrap();
    assert_eq!(c.cpu_precision, CpuPrecision::F32);
}
