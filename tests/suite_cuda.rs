//! The CUDA backend: every kernel family and the whole models on a GPU, or in the kernel emulator
//! (`--features cuda-emu`) against the CPU backend; the memory meter, the card profiles, and the
//! probe of a `--features cuda` build.
//!
//! One test binary for these files (Cargo.toml lists the binaries, `autotests = false`): the
//! shared helpers (tests/common/) and the link are built once, not once per file. Run one file's
//! tests with its module path as the filter, e.g. `cargo test --release --test cuda
//! cuda_activation::`.

mod common;

mod cuda_activation;
mod cuda_attention;
mod cuda_attention_wide;
mod cuda_caption;
mod cuda_checkpointing;
mod cuda_conv;
mod cuda_diffusion;
mod cuda_dora;
mod cuda_elementwise;
mod cuda_layout;
mod cuda_linear;
mod cuda_locon;
mod cuda_meter;
mod cuda_model;
mod cuda_norm;
mod cuda_optim;
mod cuda_profiles;
mod cuda_sdxl_text;
mod cuda_sdxl_unet;
mod cuda_selftest;
mod cuda_vae_precision;
