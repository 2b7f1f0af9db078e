//! Training end to end and its parts: runs, adapters, optimizers and their state, checkpoints and
//! resuming, data and preparation, captions, data-parallel ranks, TensorBoard.
//!
//! One test binary for these files (Cargo.toml lists the binaries, `autotests = false`): the
//! shared helpers (tests/common/) and the link are built once, not once per file. Run one file's
//! tests with its module path as the filter, e.g. `cargo test --release --test training
//! train_e2e::`.

mod common;

mod caption;
mod checkpoint;
mod crash_resume;
mod data;
mod data_parallel;
mod lora_dropout;
mod optim_config;
mod optim_reference;
mod optim_resume;
mod prepare;
mod sdxl_e2e;
mod tensorboard;
mod train_e2e;
mod train_locon;
mod train_parts;
