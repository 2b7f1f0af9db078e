//! `lorafuse demo`: a tiny model, a small synthetic captioned data set, a real config, and a
//! LoRA trained on them on the CPU in about a minute.

pub mod data;
pub mod model;

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Where the demo put things.
pub struct DemoFiles {
    pub model: PathBuf,
    pub data: PathBuf,
    pub config: PathBuf,
    pub output: PathBuf,
}

/// Writes the model, the data and `demo.yaml` under `dir`; `steps` optimizer steps.
pub fn prepare(dir: &Path, steps: usize) -> Result<DemoFiles> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, "create the demo folder", e))?;
    let model = model::write_tiny_model(&dir.join("model"), 7)?;
    let data = data::write_dataset(&dir.join("data"), 12, 64, 11)?;
    let output = dir.join("output");
    let config = dir.join("demo.yaml");
    let yaml = format!(
        "# lorafuse demo: written by `lorafuse demo`; train it again with\n\
         #   lorafuse train {config}\n\
         train_data_dir: {data}\n\
         base_model: {model}\n\
         output_dir: {output}\n\
         output_name: demo-shapes\n\
         resolution: 64\n\
         lora_rank: 8\n\
         lora_alpha: 8\n\
         batch_size: 4\n\
         max_train_steps: {steps}\n\
         learning_rate: 0.002\n\
         lr_scheduler: cosine\n\
         num_warmup_steps: {warmup}\n\
         mixed_precision: \"no\"\n\
         save_precision: fp16\n\
         validation_split: 0.25\n\
         validate_every_n_steps: 25\n\
         sample_every_n_steps: {steps}\n\
         sample_prompts:\n\
         \x20 - a red circle on a grey background --w 64 --h 64 --s 12 --l 4 --d 1\n\
         seed: 42\n",
        warmup = steps / 10,
        config = config.display(),
        data = data.display(),
        model = model.display(),
        output = output.display(),
    );
    crate::atomic::write_file(&config, yaml.as_bytes())?;
    Ok(DemoFiles {
        model,
        data,
        config,
        output,
    })
}
