//! The models against their references: the diffusers/PyTorch goldens of SD1.x, SD2.x and SDXL,
//! loading errors, LoRA files in diffusers, gradient checkpointing, sampling.
//!
//! One test binary for these files (Cargo.toml lists the binaries, `autotests = false`): the
//! shared helpers (tests/common/) and the link are built once, not once per file. Run one file's
//! tests with its module path as the filter, e.g. `cargo test --release --test models golden::`.

mod common;

mod diffusers_lora;
mod golden;
mod model_errors;
mod sample;
mod sdxl_model;
mod sdxl_text;
mod sdxl_unet;
mod unet_checkpointing;
