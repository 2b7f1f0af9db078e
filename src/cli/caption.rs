//! `lorafuse caption`: read the flags into [`CaptionOptions`], load the tagger or the CLIP
//! model on the chosen backend, show progress, print the report.

use std::path::PathBuf;

use lorafuse::backend::cpu::CpuPrecision;
use lorafuse::caption::{
    caption, CaptionOptions, ClipModel, Existing, Interrogator, Labeler, Tagger, Thresholds,
    Vocabulary, DEFAULT_THRESHOLDS,
};
use lorafuse::config::{Device, MixedPrecision};
use lorafuse::prepare::tags::{split, Pattern};

use super::prepare::Meter;
use super::{backend, parse_device, CliError, Out, Outcome};

/// The flags of `lorafuse caption`.
#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("model").required(true).args(["tagger", "clip"])))]
pub struct CaptionArgs {
    /// The folder of pictures (subfolders included).
    pub dir: PathBuf,
    /// The WD14 tagger: the folder of a ViT v3 tagger as downloaded from its hub page
    /// (model.safetensors, config.json, selected_tags.csv), e.g. SmilingWolf/wd-vit-tagger-v3.
    #[arg(long, value_name = "PATH")]
    pub tagger: Option<PathBuf>,
    /// CLIP interrogation: a transformers CLIPModel folder (config.json, model.safetensors,
    /// preprocessor_config.json) or its model.safetensors, e.g. openai/clip-vit-large-patch14.
    #[arg(long, value_name = "PATH")]
    pub clip: Option<PathBuf>,
    /// With --clip: a file of candidate phrases, one a line (repeatable; each file is one
    /// list). Without it, lorafuse's own lists of mediums, styles, subjects, lighting,
    /// colours and composition.
    #[arg(long, value_name = "FILE", requires = "clip")]
    pub vocab: Vec<PathBuf>,
    /// With --clip: the phrases kept from each vocabulary list, best first.
    #[arg(long, value_name = "K", default_value_t = 1, requires = "clip")]
    pub top: usize,
    /// With --clip: where the phrase embeddings are cached (default: $XDG_CACHE_HOME/lorafuse
    /// or ~/.cache/lorafuse).
    #[arg(long, value_name = "DIR", requires = "clip")]
    pub cache_dir: Option<PathBuf>,
    /// Write the captions into this CSV (file_name,text, as the data loader reads a
    /// metadata.csv) instead of .txt sidecars; an existing file is merged into.
    #[arg(long, value_name = "FILE")]
    pub metadata_csv: Option<PathBuf>,
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
            metadata_csv: self.metadata_csv.clone(),
        })
    }
}

/// The cache folder of `--clip`'s phrase embeddings: --cache-dir, else the user's cache.
fn cache_dir(args: &CaptionArgs) -> Option<PathBuf> {
    if let Some(d) = &args.cache_dir {
        return Some(d.clone());
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("lorafuse"))
}

pub fn caption_cmd(args: &CaptionArgs) -> Outcome {
    let o = args.options()?;
    if args.top == 0 {
        return Err(CliError::Usage(
            "--top 0: expected at least 1 phrase".into(),
        ));
    }
    let be = backend(args.device, MixedPrecision::No, CpuPrecision::F32)?;
    let labeler: Box<dyn Labeler> = match (&args.tagger, &args.clip) {
        (Some(tagger), _) => Box::new(Tagger::load(tagger, be.as_ref())?),
        (None, Some(clip)) => {
            let vocabularies = if args.vocab.is_empty() {
                Vocabulary::defaults()
            } else {
                args.vocab
                    .iter()
                    .map(|p| Vocabulary::read(p))
                    .collect::<Result<_, _>>()?
            };
            let model = ClipModel::load(clip, be.as_ref())?;
            let cache = cache_dir(args);
            if cache.is_none() {
                eprintln!(
                    "note: no HOME or XDG_CACHE_HOME: the phrase embeddings are not cached \
                     (give --cache-dir)"
                );
            }
            let meter = Meter::counting("clip vocabulary", "phrases");
            Box::new(Interrogator::new(
                model,
                vocabularies,
                args.top,
                be.as_ref(),
                cache.as_deref(),
                &mut |done, total| meter.show(done, total),
            )?)
        }
        (None, None) => return Err(CliError::Usage("give --tagger PATH or --clip PATH".into())),
    };
    let meter = Meter::new("caption");
    let report = caption(&o, labeler.as_ref(), be.as_ref(), &mut |done, total| {
        meter.show(done, total)
    })?;
    let mut out = Out::new();
    for (path, text) in &report.captions {
        out.line(format_args!("{}: {text}", path.display()))?;
    }
    out.text(&report.to_string())
}
