//! Gradient checkpointing on the CUDA backend in f16, as GPU training runs (the kernel emulator
//! in CI; the f32 kernels take the same recompute path): the LoRA gradients with and without
//! it are bit-identical and the checkpointed tape holds far less (tests/common/checkpointing.rs;
//! the CPU backends in tests/unet_checkpointing.rs).
#![cfg(feature = "cuda-emu")]

use crate::common::checkpointing::{assert_same, pass};
use lorafuse::backend::cuda::{CudaBackend, Device};
use lorafuse::DType;

#[test]
fn checkpointed_gradients_are_bit_identical_on_the_emulated_cuda_backend() {
    let be = CudaBackend::new(Device::emulator(), DType::F16).unwrap();
    assert_same(
        "cuda-emu f16",
        &pass(&be, false, false),
        &pass(&be, true, false),
    );
}
