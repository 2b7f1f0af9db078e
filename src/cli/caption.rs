//! `lorafuse caption`: read the flags into [`CaptionOptions`], load the tagger on the chosen
//! backend, show progress, print the report.

use std::path::PathBuf;

use lorafuse::caption::{
    caption, CaptionOptions, Existing, Tagger, Thresholds, DEFAULT_THRESHOLDS,
};
use lorafuse::config::{Device, MixedPrecision};
use lorafuse::prepare::tags::{split, Pattern};

use super::prepare::Meter;
use super::{backend, parse_device, CliError, Out, Outcome};

/// The flags of `lorafuse caption`.
#[derive(clap::Args)]
pub struct CaptionArgs {
    /// The folder of pictures (subfolders included).
    pub dir: PathBuf,
    /// The WD14 tagger: the folder of a ViT v3 tagger as downloaded from its hub page
    /// (model.safetensors, config.json, selected_tags.csv), e.g. SmilingWolf/wd-vit-tagger-v3.
    #[arg(long, value_name = "PATH")]
    pub tagger: PathBuf,
    /// General tags above this probability are kept.
    #[arg(long, default_value_t = DEFAULT_THRESHOLDS.general)]
    pub threshold: f32,
    /// Character tags above this probability are kept.
    #[arg(long, default_value_t = DEFAULT_THRESHOLDS.character)]
    pub character_threshold: f32,
    /// Tags never written (comma-separated names or * patterns; case and _ vs space ignored),
    /// e.g. --undesired-tags "simple background,*_focus" (repeatable).
    #[arg(long, value_name = "TAGS")]
    pub undesired_tags: Vec<String>,
    /// Put these tags first in every caption (comma-separated), e.g. --trigger "sks style".
    #[arg(long, value_name = "TAGS")]
    pub trigger: Option<String>,
    /// Add the tags an existing caption lacks to it (by default it is kept as it is).
    #[arg(long, conflicts_with = "overwrite")]
    pub append: bool,
    /// Replace existing captions.
    #[arg(long)]
    pub overwrite: bool,
    /// Keep the tagger's underscores (long_hair); by default they become spaces (long hair),
    /// except in kaomoji such as ^_^.
    #[arg(long)]
    pub underscores: bool,
    /// The caption files' extension.
    #[arg(long, default_value = ".txt")]
    pub caption_extension: String,
    /// Where to compute: auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto", value_parser = parse_device)]
    pub device: Device,
}

fn threshold(name: &'static str, v: f32) -> Result<f32, CliError> {
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(CliError::Usage(format!(
            "--{name} {v}: expected a probability between 0 and 1"
        )))
    }
}

impl CaptionArgs {
    fn options(&self) -> Result<CaptionOptions, CliError> {
        let ext = self.caption_extension.trim().trim_start_matches('.');
        if ext.is_empty() || ext.contains(['/', '\\']) {
            return Err(CliError::Usage(format!(
                "--caption-extension {}: expected an extension like .txt",
                self.caption_extension
            )));
        }
        Ok(CaptionOptions {
            dir: self.dir.clone(),
            thresholds: Thresholds {
                general: threshold("threshold", self.threshold)?,
                character: threshold("character-threshold", self.character_threshold)?,
            },
            undesired: self
                .undesired_tags
                .iter()
                .flat_map(|t| split(t))
                .map(|t| Pattern::new(&t))
                .collect(),
            trigger: self.trigger.as_deref().map(split).unwrap_or_default(),
            existing: match (self.append, self.overwrite) {
                (true, _) => Existing::Append,
                (_, true) => Existing::Overwrite,
                _ => Existing::Keep,
            },
            keep_underscores: self.underscores,
            extension: format!(".{ext}"),
        })
    }
}

pub fn caption_cmd(args: &CaptionArgs) -> Outcome {
    let o = args.options()?;
    let be = backend(args.device, MixedPrecision::No)?;
    let tagger = Tagger::load(&args.tagger, be.as_ref())?;
    let meter = Meter::new("caption");
    let report = caption(&o, &tagger, be.as_ref(), &mut |done, total| {
        meter.show(done, total)
    })?;
    let mut out = Out::new();
    for (path, text) in &report.captions {
        out.line(format_args!("{}: {text}", path.display()))?;
    }
    out.text(&report.to_string())
}
