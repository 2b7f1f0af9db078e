//! Sample images during training: every line of `sample_prompts` (kohya's prompt-line syntax)
//! generated with the current adapters at the training size by default, with the
//! `sample_sampler` unless a line names its own (`--ss`). [`SampleAt`] is when, as kohya's
//! `sample_images_common` decides it; [`generate_all`] makes the images (`plan` measures them
//! on the memory meter); [`write_samples`] writes them as PNG files, named as kohya names them,
//! and into the TensorBoard log.

use std::path::PathBuf;

use crate::config::TrainConfig;
use crate::error::{Error, Result};
use crate::model::family::Models;
use crate::model::layers::Ctx;
use crate::model::tokenizer::Tokenizer;
use crate::monitor::tensorboard::{wall_time_now, EncodedImage, EventWriter};
use crate::sample::image::RgbImage;
use crate::sample::{
    encode_png, generate, parse_prompt_line, LongPrompts, Pipeline, PromptDefaults,
};

fn bad(value: String, why: &dyn std::fmt::Display) -> Error {
    Error::BadValue {
        op: "train",
        name: "sample_prompts",
        value,
        expected: why.to_string(),
    }
}

/// When a set of sample images is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SampleAt {
    /// Before the first step (`sample_at_first`); kohya calls it epoch 0.
    First,
    /// After optimizer step N (`sample_every_n_steps`).
    Step(u64),
    /// At the end of epoch N, counted from 1 (`sample_every_n_epochs`).
    Epoch(u64),
}

impl SampleAt {
    /// Whether `cfg` asks for samples here. As kohya: when `sample_every_n_epochs` is set,
    /// `sample_every_n_steps` is not used.
    pub fn due(self, cfg: &TrainConfig) -> bool {
        let every = |n: usize, at: u64| n > 0 && at.is_multiple_of(n as u64);
        cfg.samples_asked()
            && match self {
                SampleAt::First => cfg.sample_at_first,
                SampleAt::Step(step) => {
                    cfg.sample_every_n_epochs == 0 && every(cfg.sample_every_n_steps, step)
                }
                SampleAt::Epoch(epoch) => every(cfg.sample_every_n_epochs, epoch),
            }
    }

    /// The middle of kohya's file name: `000500` for step 500, `e000002` for epoch 2,
    /// `e000000` before the first step.
    pub fn label(self) -> String {
        match self {
            SampleAt::First => "e000000".into(),
            SampleAt::Step(step) => format!("{step:06}"),
            SampleAt::Epoch(epoch) => format!("e{epoch:06}"),
        }
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
        sampler: cfg.sample_sampler,
        ..PromptDefaults::default()
    };
    let prompts = LongPrompts {
        tokenizer,
        max_tokens: cfg.max_token_length,
    };
    let mut pipe = Pipeline::new(&m.unet, vae, te, &prompts);
    pipe.schedule = m.family.noise_schedule();
    pipe.prediction = m.prediction;
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

/// What the sample images are made with and written to.
pub struct SampleRun<'a> {
    pub cx: &'a Ctx<'a>,
    pub models: &'a Models,
    pub tokenizer: &'a Tokenizer,
    pub cfg: &'a TrainConfig,
}

/// The sample images of `at`: output_dir/samples/`<output_name>_<label>_<NN>.png` (kohya's
/// name without its time stamp and seed; kohya's folder is `sample/`) and, in the TensorBoard log at optimizer
/// step `step`, one image per prompt tagged `samples/<NN>` with the prompt line as its
/// description. Returns the files written.
pub fn write_samples(
    run: &SampleRun,
    tb: &mut EventWriter,
    at: SampleAt,
    step: u64,
) -> Result<Vec<PathBuf>> {
    let cfg = run.cfg;
    let lines = prompt_lines(cfg)?;
    let images = generate_all(run.cx, run.models, run.tokenizer, cfg, &lines)?;
    let dir = cfg.output_dir.join("samples");
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, "create the samples folder", e))?;
    let mut written = Vec::new();
    let wall = wall_time_now();
    for (i, (img, line)) in images.iter().zip(&lines).enumerate() {
        let path = dir.join(format!("{}_{}_{i:02}.png", cfg.output_name, at.label()));
        let png = encode_png(&path, img)?;
        crate::atomic::write_file(&path, &png)?;
        let encoded = EncodedImage {
            png: &png,
            width: img.width as u32,
            height: img.height as u32,
        };
        tb.add_image(&format!("samples/{i:02}"), step, &encoded, line, wall)?;
        written.push(path);
    }
    tb.flush()?;
    Ok(written)
}
