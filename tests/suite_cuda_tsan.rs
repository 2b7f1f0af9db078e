//! The simple kernels' files of the `cuda` binary (tests/suite_cuda.rs), again in a binary of
//! their own for CI's ThreadSanitizer step: the emulator built with `LORAFUSE_EMU_TSAN=1`,
//! `LORAFUSE_SIMPLE_KERNELS=all`, the `fast_` tests skipped (.ci/run). Rebuilding only these
//! under TSan, not all of the cuda binary, keeps that step short; the whole list, fast kernels
//! included, runs under TSan by hand (DEVELOPERS.md).

mod common;

mod cuda_activation;
mod cuda_attention_wide;
mod cuda_conv;
mod cuda_diffusion;
mod cuda_elementwise;
mod cuda_linear;
mod cuda_norm;
mod cuda_selftest;
