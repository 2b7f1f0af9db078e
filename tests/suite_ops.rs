//! The op-level tests: every CPU op against f64 and finite differences (ops_*), the CPU GEMM,
//! flash attention, bf16 and exp kernels (cpu_*), linear algebra, the RNG, the tokenizer, and
//! gradient checks through CLIP and the UNet.
//!
//! One test binary for these files (Cargo.toml lists the binaries, `autotests = false`): the
//! shared helpers (tests/common/) and the link are built once, not once per file. Run one file's
//! tests with its module path as the filter, e.g. `cargo test --release --test ops
//! ops_activation::`.

mod common;

mod clip_backward;
mod cpu_alloc;
mod cpu_bf16;
mod cpu_flash;
mod cpu_gemm;
mod cpu_gemm_bf16;
mod cpu_profile;
mod cpu_vact;
mod cpu_vexp;
mod linalg;
mod ops_activation;
mod ops_attention;
mod ops_conv;
mod ops_diffusion;
mod ops_dora;
mod ops_elementwise;
mod ops_layout;
mod ops_linear;
mod ops_locon;
mod ops_norm;
mod ops_optim;
mod rng;
mod tokenizer;
mod unet_gradcheck;
mod unet_locon;
