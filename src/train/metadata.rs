//! What a run writes into its LoRA's metadata: [`TrainingInfo`] filled from the run as
//! sd-scripts' `train_network.py` fills its metadata dict (tests/kohya_metadata.rs compares
//! the result key by key with what sd-scripts writes for the same run).

use std::collections::BTreeMap;

use crate::data::summary::bucket_counts;
use crate::data::Dataset;
use crate::error::Result;
use crate::lora::export::{
    BaseModelInfo, Bucket, BucketSettings, CaptionSettings, DatasetDir, TrainingInfo,
};
use crate::model::checkpoint::Generation;
use crate::model::family::Prediction;
use crate::monitor::tensorboard::wall_time_now;
use crate::train::saves::SavePoint;
use crate::train::trainer::Run;

/// What stays the same for every save of one run.
#[derive(Clone, Debug)]
pub struct RunIdentity {
    /// kohya's `ss_session_id`: a random integer in [0, 2^32] shared by the saves of one run
    /// (a resumed run is a new session, as in kohya).
    pub session_id: u64,
    /// Unix seconds.
    pub started: f64,
    /// The base model's name and hashes (read once, at the start).
    pub base_model: BaseModelInfo,
}

impl RunIdentity {
    /// A new session: its id from the clock and the process id, the base model hashed.
    pub fn new(base_model: &std::path::Path) -> Result<RunIdentity> {
        let started = wall_time_now();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let mut key = nanos.to_le_bytes().to_vec();
        key.extend_from_slice(&std::process::id().to_le_bytes());
        Ok(RunIdentity {
            session_id: crate::data::hash::xxh64(&key, 0) % (1u64 << 32),
            started,
            base_model: BaseModelInfo::from_path(base_model)?,
        })
    }
}

/// Which save: a save point, or the end of the run.
#[derive(Clone, Copy, Debug)]
pub enum SaveKind {
    Point(SavePoint),
    Final,
}

/// kohya's `ss_dataset_dirs`, `ss_reg_dataset_dirs` and `ss_tag_frequency`.
pub struct DatasetDirs {
    pub dirs: Vec<DatasetDir>,
    pub reg: Vec<DatasetDir>,
    /// Folder name → tag → captions.
    pub tags: BTreeMap<String, BTreeMap<String, u64>>,
}

/// The [`DatasetDirs`] of `ds`. Tags of one folder name add up within a dataset; across
/// datasets the first dataset's counts are kept, as sd-scripts merges them.
pub fn dataset_dirs(ds: &Dataset) -> DatasetDirs {
    let (mut dirs, mut reg) = (Vec::new(), Vec::new());
    let mut tags: BTreeMap<String, (usize, BTreeMap<String, u64>)> = BTreeMap::new();
    for f in &ds.folders {
        let dir = DatasetDir {
            name: f.name.clone(),
            n_repeats: f.n_repeats as u64,
            img_count: f.img_count as u64,
        };
        if f.is_reg {
            reg.push(dir);
        } else {
            dirs.push(dir);
        }
        let (dataset, counts) = tags
            .entry(f.name.clone())
            .or_insert_with(|| (f.dataset, BTreeMap::new()));
        if *dataset == f.dataset {
            for (t, n) in &f.tags {
                *counts.entry(t.clone()).or_insert(0) += n;
            }
        }
    }
    DatasetDirs {
        dirs,
        reg,
        tags: tags.into_iter().map(|(k, (_, v))| (k, v)).collect(),
    }
}

/// The run's metadata for a save of `kind`.
pub fn training_info(run: &Run, id: &RunIdentity, kind: SaveKind) -> TrainingInfo {
    let cfg = run.cfg;
    let ds = &run.inputs.ds;
    let total = run.lengths.total;
    let num_epochs = total.div_ceil(run.lengths.steps_per_epoch.max(1));
    let dirs = dataset_dirs(ds);
    let (buckets, mean_ar_error) = bucket_counts(ds);
    TrainingInfo {
        output_name: cfg.output_name.clone(),
        session_id: id.session_id,
        training_started_at: id.started,
        training_finished_at: wall_time_now(),
        steps: run.progress.step,
        // kohya's epoch of a save: the current epoch (0-based) at a step save point, the
        // epochs done at an epoch save point, all of them at the end.
        epoch: match kind {
            SaveKind::Point(SavePoint::Epoch(e)) => e,
            SaveKind::Point(SavePoint::Step(_)) => run.progress.epoch,
            SaveKind::Final => num_epochs,
        },
        base_model: id.base_model.clone(),
        v2: run.models.family.generation() == Generation::Sd2,
        v_parameterization: run.models.prediction == Prediction::V,
        sdxl: run.models.family.generation() == Generation::Sdxl,
        lora_rank: cfg.lora_rank,
        lora_alpha: cfg.lora_alpha,
        targets: cfg.lora_targets,
        train_text_encoder: cfg.train_text_encoder,
        network_dropout: (cfg.lora_dropout > 0.0).then_some(cfg.lora_dropout),
        rank_dropout: (cfg.rank_dropout > 0.0).then_some(cfg.rank_dropout),
        module_dropout: (cfg.module_dropout > 0.0).then_some(cfg.module_dropout),
        block_args: crate::lora::blocks::network_args(cfg),
        text_encoder_lr: cfg.train_text_encoder.then_some(cfg.text_encoder_lr),
        learning_rate: cfg.learning_rate,
        // A frozen UNet trains at 0 (kohya's unet_lr = 0).
        unet_lr: Some(if cfg.train_unet { cfg.unet_lr } else { 0.0 }),
        lr_scheduler: cfg.lr_scheduler.to_string(),
        lr_warmup_steps: cfg.warmup_steps(total as usize) as u64,
        max_train_steps: total,
        num_epochs,
        num_batches_per_epoch: ds.batches_per_epoch(cfg.batch_size) as u64,
        batch_size: cfg.batch_size,
        // kohya's ss_optimizer text: the optimizer's name and arguments, as it trained.
        optimizer: run.trainable.groups.first().map_or_else(
            || cfg.optimizer_type.name().to_string(),
            |g| g.optimizer.describe(),
        ),
        gradient_accumulation_steps: cfg.gradient_accumulation_steps,
        gradient_checkpointing: cfg.gradient_checkpointing,
        max_grad_norm: cfg.max_grad_norm,
        mixed_precision: cfg.mixed_precision.to_string(),
        // Images cropped at random are encoded at every step (sd-scripts cannot cache them).
        cache_latents: !run.inputs.crops_per_step(),
        seed: cfg.seed,
        resolution: (cfg.resolution.width, cfg.resolution.height),
        clip_skip: Some(cfg.clip_skip as u32),
        noise_offset: (cfg.noise_offset != 0.0).then_some(cfg.noise_offset),
        min_snr_gamma: cfg.min_snr_gamma,
        flip_aug: cfg.flip_aug,
        random_crop: run.inputs.crops_per_step(),
        caption: CaptionSettings {
            shuffle_caption: cfg.shuffle_caption,
            keep_tokens: cfg.keep_tokens,
            caption_dropout_rate: cfg.caption_dropout_rate,
            caption_dropout_every_n_epochs: cfg.caption_dropout_every_n_epochs as u64,
            caption_tag_dropout_rate: cfg.caption_tag_dropout_rate,
        },
        buckets: BucketSettings {
            enable_bucket: cfg.enable_bucket,
            min_bucket_reso: cfg.min_bucket_reso,
            max_bucket_reso: cfg.max_bucket_reso,
            bucket_no_upscale: cfg.bucket_no_upscale,
            buckets: buckets
                .into_iter()
                .map(|((w, h), count)| Bucket {
                    width: w as u32,
                    height: h as u32,
                    count,
                })
                .collect(),
            // kohya writes it only when bucketing.
            mean_img_ar_error: cfg.enable_bucket.then_some(mean_ar_error),
        },
        dataset_dirs: dirs.dirs,
        reg_dataset_dirs: dirs.reg,
        tag_frequency: dirs.tags,
        num_train_images: ds.train_samples_per_epoch() as u64,
        num_reg_images: ds.num_reg_images as u64,
        max_token_length: (cfg.max_token_length != 75).then_some(cfg.max_token_length as u32),
        prior_loss_weight: cfg.prior_loss_weight,
        num_validation_images: ds.validation.len() as u64,
        validation_split: cfg.validation_split,
        validate_every_n_steps: cfg.validate_every_n_steps.map(|n| n as u64),
        ..TrainingInfo::default()
    }
}
