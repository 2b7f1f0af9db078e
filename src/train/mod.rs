//! Training: the objective's noise and weights, learning-rate schedules, the optimizer seam,
//! the resumable state, and the run of phases that ties them to the data and the models.
//!
//!   trainer.rs    `Run` (the phases) and `train` (the loop, one screen)
//!   loop_io.rs    what the loop writes and reports: logs, validation, save points, the end
//!   inputs.rs     data set + caches -> one micro-batch's latents and captions
//!   trainable.rs  adapters, gradients, optimizer groups, loss scaler: micro-batch, step
//!   step.rs       the denoising objective's forward/backward of one micro-batch
//!   eval.rs       fixed-noise evaluation sets and their loss
//!   saves.rs      file names of save points and their pruning
//!   metadata.rs   the LoRA's kohya metadata, filled from the run
//!   samples.rs    sample images during training
//!   ranks.rs      a data-parallel run on threads of this process (dist/ has the seam)
//!   state.rs      the resumable state file
//!   optim/        the `Optimizer` trait, parameter groups, AdamW
//!   scaler.rs, lr.rs, noise.rs, cache.rs, events.rs

pub mod cache;
pub mod eval;
pub mod events;
pub mod fits;
pub mod inputs;
pub mod loop_io;
pub mod lr;
pub mod metadata;
pub mod noise;
pub mod optim;
pub mod ranks;
pub mod samples;
pub mod saves;
pub mod scaler;
pub mod start;
pub mod state;
pub mod step;
pub mod trainable;
pub mod trainer;
