//! What the loop reads: the scanned data set, its latent and caption caches, and the tokenizer.
//! One micro-batch's latents and captions come from [`Inputs::batch`], with the random choices
//! (flip, caption shuffle and dropout) drawn from the micro-batch's generator.

use crate::backend::Backend;
use crate::config::TrainConfig;
use crate::data::{plain_caption, process_caption, DataOptions, Dataset, Item, SizeCond, Source};
use crate::error::Result;
use crate::model::cond::TextCond;
use crate::model::family::Models;
use crate::model::layers::Ctx;
use crate::model::tokenizer::Tokenizer;
use crate::rng::Rng;
use crate::tensor::{DType, Tensor};
use crate::train::cache::{
    stack_latents, stack_text, LatentCache, LatentKey, Pixels, TextCache, TextOptions,
};

/// Which images a batch is drawn from, and whether with the run's random choices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Draw {
    /// Training images with the configured augmentations, in this epoch (0-based, as the
    /// run counts it).
    Train { epoch: u64 },
    /// Training images as they are (fixed-noise evaluation).
    TrainPlain,
    /// Validation images, as they are.
    Validation,
}

/// The data set and its caches.
pub struct Inputs {
    pub ds: Dataset,
    pub opts: DataOptions,
    pub latents: LatentCache,
    pub texts: TextCache,
    pub tokenizer: Tokenizer,
    text: TextOptions,
    prior_loss_weight: f64,
}

impl Inputs {
    /// Empty caches over `ds`; latents also on disk with `cache_latents_to_disk`, in a folder
    /// of the model's and of the dtype the VAE computes in (`vae`).
    pub fn new(cfg: &TrainConfig, ds: Dataset, pixels: Pixels, vae: DType) -> Result<Inputs> {
        let opts = data_options(cfg);
        let disk = cfg.cache_latents_to_disk.then(|| {
            let model = latent_folder(&cfg.base_model, vae);
            cfg.output_dir.join("cache").join("latents").join(model)
        });
        Ok(Inputs {
            latents: LatentCache::new(disk, &opts, pixels)?,
            ds,
            opts,
            texts: TextCache::default(),
            tokenizer: Tokenizer::new()?,
            text: TextOptions {
                clip_skip: cfg.clip_skip,
                max_token_length: cfg.max_token_length,
            },
            prior_loss_weight: cfg.prior_loss_weight,
        })
    }

    /// The options `item` was scanned with (its subset's; the run's for a data set made
    /// without sources).
    fn options_of(&self, item: &Item) -> &DataOptions {
        self.ds
            .sources
            .get(item.source)
            .map_or(&self.opts, |s| &s.opts)
    }

    /// Whether a training image is cropped at random, so encoded at every step (the VAE
    /// stays loaded).
    pub fn crops_per_step(&self) -> bool {
        self.ds.items.iter().any(|i| self.options_of(i).random_crop)
    }

    /// The loss weight of each training image of `idx` (see [`Dataset::loss_weights`]).
    pub fn loss_weights(&self, idx: &[usize]) -> Option<Vec<f64>> {
        self.ds.loss_weights(idx, self.prior_loss_weight)
    }

    /// Encodes every latent the run will read (both orientations under flip_aug, validation
    /// images too) and, when `captions` is set, every caption's embedding.
    pub fn fill(&mut self, be: &dyn Backend, m: &Models, captions: bool) -> Result<()> {
        for (i, item) in self.ds.items.iter().enumerate() {
            let flips: &[bool] = if self.options_of(item).flip_aug {
                &[false, true]
            } else {
                &[false]
            };
            for &flipped in flips {
                let key = LatentKey {
                    index: i,
                    validation: false,
                    flipped,
                };
                self.latents.get_or_encode(be, m.vae.as_ref(), key, item)?;
            }
        }
        for (i, item) in self.ds.validation.iter().enumerate() {
            let key = LatentKey {
                index: i,
                validation: true,
                flipped: false,
            };
            self.latents.get_or_encode(be, m.vae.as_ref(), key, item)?;
        }
        if captions {
            for item in self.ds.items.iter().chain(&self.ds.validation) {
                let caption = plain_caption(&item.caption, self.options_of(item));
                self.texts
                    .get_or_encode(be, m, &self.tokenizer, &caption, self.text)?;
            }
        }
        Ok(())
    }

    /// Latents [N, 4, h, w], captions and size/crop ids (SDXL's conditioning) of the images
    /// `idx`, random choices from `rng`.
    pub fn batch(
        &mut self,
        be: &dyn Backend,
        m: &Models,
        draw: Draw,
        idx: &[usize],
        rng: &mut Rng,
    ) -> Result<Batch> {
        let validation = draw == Draw::Validation;
        let epoch = match draw {
            Draw::Train { epoch } => Some(epoch),
            _ => None,
        };
        let augment = epoch.is_some();
        let mut lat = Vec::with_capacity(idx.len());
        let mut captions = Vec::with_capacity(idx.len());
        let mut sizes = Vec::with_capacity(idx.len());
        for &i in idx {
            let item = if validation {
                &self.ds.validation[i]
            } else {
                &self.ds.items[i]
            };
            let opts = self.options_of(item);
            let flipped = augment && opts.flip_aug && rng.uniform() < 0.5;
            sizes.push(SizeCond::of(
                item.size,
                item.bucket,
                flipped,
                opts.enable_bucket,
            ));
            let key = LatentKey {
                index: i,
                validation,
                flipped,
            };
            // kohya counts epochs from 1 (caption_dropout_every_n_epochs).
            let caption = match epoch {
                Some(e) => process_caption(&item.caption, opts, e + 1, rng),
                None => plain_caption(&item.caption, opts),
            };
            // A random crop is drawn for every training sample, so its latents are encoded
            // now (the cache holds the centred crop, for the evaluations).
            lat.push(if augment && opts.random_crop {
                self.latents
                    .encode_cropped(be, m.vae.as_ref(), item, flipped, rng)?
            } else {
                self.latents.get_or_encode(be, m.vae.as_ref(), key, item)?
            });
            captions.push(caption);
        }
        Ok(Batch {
            latents: stack_latents(be, &lat)?,
            captions,
            sizes,
        })
    }

    /// The frozen text encoder's conditioning of `captions` ([N, 77, D] and SDXL's pooled),
    /// from the cache.
    pub fn contexts(
        &mut self,
        be: &dyn Backend,
        m: &Models,
        captions: &[String],
    ) -> Result<TextCond> {
        let mut parts = Vec::with_capacity(captions.len());
        for c in captions {
            parts.push(
                self.texts
                    .get_or_encode(be, m, &self.tokenizer, c, self.text)?,
            );
        }
        stack_text(be, &parts)
    }

    /// The token ids of captions: 77 per caption, or rows of 77 per window of kohya's long
    /// captions (`max_token_length` 150 or 225).
    pub fn ids(&self, captions: &[String]) -> Vec<u32> {
        captions
            .iter()
            .flat_map(|c| {
                self.tokenizer
                    .encode_long(c, self.text.max_token_length)
                    .ids
            })
            .collect()
    }

    /// `batch` captions' token ids through the text encoder with the adapters of `cx`.
    pub fn encode(
        &self,
        m: &Models,
        cx: &Ctx,
        ids: &[u32],
        batch: usize,
    ) -> Result<(TextCond, Option<crate::model::family::TextTape>)> {
        m.encode_text_train(cx, ids, batch, self.text.clip_skip, false)
    }

    /// The conditioning of `captions`: from the cache, or through the text encoder (with its
    /// adapters, and a tape when `save`) when it is trained.
    pub fn condition(
        &mut self,
        be: &dyn Backend,
        m: &Models,
        cx: Option<&Ctx>,
        captions: &[String],
        save: bool,
    ) -> Result<(TextCond, Option<crate::model::family::TextTape>)> {
        match cx {
            Some(cx) => m.encode_text_train(
                cx,
                &self.ids(captions),
                captions.len(),
                self.text.clip_skip,
                save,
            ),
            None => Ok((self.contexts(be, m, captions)?, None)),
        }
    }
}

/// The latent cache's folder name for the model at `path` whose VAE computes in `vae`: the
/// model's key and the dtype (f16 and f32 latents differ, and f16 ones may have overflowed).
fn latent_folder(path: &std::path::Path, vae: DType) -> String {
    format!("{:016x}-vae-{vae}", model_key(path))
}

/// A key of the model at `path` for the latent cache's folder: its path, size and modification
/// time (a model replaced in place gets a new key; the VAE's weights are not read for it).
fn model_key(path: &std::path::Path) -> u64 {
    let meta = std::fs::metadata(path).ok();
    let size = meta.as_ref().map_or(0, |m| m.len());
    let time = meta
        .and_then(|m| m.modified().ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let key = format!("{}\n{size}\n{time}", path.display());
    crate::data::hash::xxh64(key.as_bytes(), 0)
}

/// One batch's images as the UNet takes them.
pub struct Batch {
    /// Clean latents [N, 4, h, w].
    pub latents: Tensor,
    /// The captions after shuffling and dropout.
    pub captions: Vec<String>,
    /// Each sample's size/crop ids (read by SDXL's UNet only).
    pub sizes: Vec<SizeCond>,
}

/// What the data pipeline needs from the configuration.
pub fn data_options(cfg: &TrainConfig) -> DataOptions {
    DataOptions {
        train_data_dir: cfg.train_data_dir.clone(),
        caption_extension: cfg.caption_extension.clone(),
        resolution: (
            cfg.resolution.width as usize,
            cfg.resolution.height as usize,
        ),
        enable_bucket: cfg.enable_bucket,
        min_bucket_reso: cfg.min_bucket_reso as usize,
        max_bucket_reso: cfg.max_bucket_reso as usize,
        bucket_reso_steps: cfg.bucket_reso_steps as usize,
        bucket_no_upscale: cfg.bucket_no_upscale,
        flip_aug: cfg.flip_aug,
        random_crop: cfg.random_crop,
        shuffle_caption: cfg.shuffle_caption,
        keep_tokens: cfg.keep_tokens,
        caption_dropout_rate: cfg.caption_dropout_rate,
        caption_tag_dropout_rate: cfg.caption_tag_dropout_rate,
        caption_dropout_every_n_epochs: cfg.caption_dropout_every_n_epochs,
        caption_prefix: cfg.caption_prefix.clone(),
        caption_suffix: cfg.caption_suffix.clone(),
        keep_tokens_separator: cfg.keep_tokens_separator.clone(),
        secondary_separator: cfg.secondary_separator.clone(),
        enable_wildcard: cfg.enable_wildcard,
        validation_split: cfg.validation_split,
        num_repeats: cfg.num_repeats,
        class_tokens: cfg.class_tokens.clone(),
        metadata_file: cfg.metadata_file.clone(),
        batch_size: cfg.batch_size,
        seed: cfg.seed,
    }
}

/// The folders a configuration trains on: each `dataset_config` subset with its own options;
/// without one, `train_data_dir` (with its N_name folders) and `reg_data_dir`'s N_name folders
/// as regularisation images, as sd-scripts reads them.
pub fn data_sources(cfg: &TrainConfig) -> Vec<Source> {
    if !cfg.subsets.is_empty() {
        return cfg
            .subsets
            .iter()
            .map(|s| Source {
                opts: data_options(&s.config),
                is_reg: s.is_reg,
                dataset: s.dataset,
            })
            .collect();
    }
    let train = data_options(cfg);
    let mut sources = vec![Source {
        opts: train.clone(),
        is_reg: false,
        dataset: 0,
    }];
    if let Some(dir) = &cfg.reg_data_dir {
        sources.push(Source {
            opts: DataOptions {
                train_data_dir: dir.clone(),
                num_repeats: 1,
                class_tokens: None,
                ..train
            },
            is_reg: true,
            dataset: 0,
        });
    }
    sources
}

/// The images (training and validation, each once) whose caption as written (with its
/// prefix and suffix) has more tokens than `max_tokens`, which cuts it: their count, and the first one's path and token count.
pub fn long_captions<'d>(
    ds: &'d Dataset,
    tokenizer: &Tokenizer,
    max_tokens: usize,
) -> (usize, Option<(&'d std::path::Path, usize)>) {
    let mut count = 0;
    let mut first = None;
    for item in ds.items.iter().chain(&ds.validation) {
        let caption = match ds.sources.get(item.source) {
            Some(s) => plain_caption(&item.caption, &s.opts),
            None => item.caption.clone(),
        };
        let n = tokenizer.tokenize(&caption).len();
        if n > max_tokens {
            count += 1;
            first.get_or_insert((item.path.as_path(), n));
        }
    }
    (count, first)
}

#[cfg(test)]
mod tests {
    use super::{latent_folder, model_key};
    use crate::tensor::DType;

    #[test]
    fn the_latent_cache_folder_changes_with_the_model() {
        let dir = std::env::temp_dir().join(format!("lorafuse-modelkey-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b) = (dir.join("a.safetensors"), dir.join("b.safetensors"));
        std::fs::write(&a, b"one").unwrap();
        std::fs::write(&b, b"one").unwrap();
        let ka = model_key(&a);
        assert_eq!(ka, model_key(&a));
        assert_ne!(ka, model_key(&b), "another path");
        std::fs::write(&a, b"longer").unwrap();
        assert_ne!(ka, model_key(&a), "replaced in place");
        let (f16, f32) = (latent_folder(&a, DType::F16), latent_folder(&a, DType::F32));
        assert_ne!(f16, f32, "the VAE's dtype");
        assert!(f32.ends_with("-vae-f32"), "{f32}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
