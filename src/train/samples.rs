//! Sample images during training: every line of `sample_prompts` (kohya's prompt-line syntax)
//! generated with the current adapters at the training size by default. [`generate_all`] makes
//! the images (the trainer writes them; `plan` measures them on the memory meter).

use std::path::PathBuf;

use crate::config::TrainConfig;
use crate::error::{Error, Result};
use crate::model::family::Models;
use crate::model::layers::Ctx;
use crate::model::tokenizer::Tokenizer;
use crate::sample::image::RgbImage;
use crate::sample::{generate, parse_prompt_line, save_png, LongPrompts, Pipeline, PromptDefaults};

fn bad(value: String, why: &dyn std::fmt::Display) -> Error {
    Error::BadValue {
        op: "train",
        name: "sample_prompts",
        value,
        expected: why.to_string(),
    }
}

/// One image per line of `lines`; none when the VAE or text encoder was released.
pub fn generate_all(
    cx: &Ctx,
    m: &Models,
    tokenizer: &Tokenizer,
    cfg: &TrainConfig,
    lines: &[String],
) -> Result<Vec<RgbImage>> {
    let (Some(vae), Some(te)) = (m.vae.as_ref(), m.text.as_ref()) else {
        return Ok(Vec::new());
    };
    let defaults = PromptDefaults {
        width: cfg.resolution.width as usize,
        height: cfg.resolution.height as usize,
        seed: Some(cfg.seed),
        ..PromptDefaults::default()
    };
    let prompts = LongPrompts {
        tokenizer,
        max_tokens: cfg.max_token_length,
    };
    let pipe = Pipeline::new(&m.unet, vae, te, &prompts);
    let mut images = Vec::with_capacity(lines.len());
    for line in lines {
        let spec = parse_prompt_line(line, &defaults).map_err(|e| bad(line.clone(), &e))?;
        let img =
            generate(&pipe, cx, &spec, cfg.clip_skip, None).map_err(|e| bad(line.clone(), &e))?;
        images.push(img.image);
    }
    Ok(images)
}

/// The prompt lines of the configuration.
pub fn prompt_lines(cfg: &TrainConfig) -> Result<Vec<String>> {
    cfg.sample_prompt_lines()
        .map_err(|e| bad(String::new(), &e))
}

/// Sample images of step `step` written to output_dir/samples/.
pub fn write_samples(
    cx: &Ctx,
    m: &Models,
    tokenizer: &Tokenizer,
    cfg: &TrainConfig,
    step: u64,
) -> Result<Vec<PathBuf>> {
    let lines = prompt_lines(cfg)?;
    let images = generate_all(cx, m, tokenizer, cfg, &lines)?;
    let dir = cfg.output_dir.join("samples");
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, "create the samples folder", e))?;
    let mut written = Vec::new();
    for (i, img) in images.iter().enumerate() {
        let path = dir.join(format!("{}_{step:06}_{i:02}.png", cfg.output_name));
        save_png(&path, img).map_err(|e| bad(path.display().to_string(), &e))?;
        written.push(path);
    }
    Ok(written)
}
