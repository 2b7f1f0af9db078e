//! The memory meter (what `lorafuse plan` runs on) allocates exactly what the CUDA backend
//! does: a short demo training run on the kernel emulator and the same run on the meter leave
//! the pool with the same figures (peak in use, peak reserved, driver allocations). One step in
//! f32: the emulated run is the slow half, and the f16 tensor-core kernels take minutes to
//! emulate through a whole run; the buffers are asked for by the same Rust code either way.
#![cfg(feature = "cuda-emu")]

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use lorafuse::backend::cuda::{CudaBackend, Device, PoolStats};
use lorafuse::config::TrainConfig;
use lorafuse::train::trainer::{train, Event, Observer};
use lorafuse::DType;

struct Quiet;
impl Observer for Quiet {
    fn on(&mut self, _: Event) {}
}

fn run(dev: Arc<Device>, dtype: DType, dir: &Path) -> PoolStats {
    lorafuse::demo::prepare(dir, 1).unwrap();
    let sets = ["sample_every_n_steps=0", "save_precision=fp32"];
    let cfg = TrainConfig::load(dir.join("demo.yaml"), &sets).unwrap();
    let be = CudaBackend::new(dev.clone(), dtype).unwrap();
    train(&cfg, &be, false, &AtomicBool::new(false), &mut Quiet).unwrap();
    dev.pool_stats()
}

#[test]
fn the_meter_allocates_as_the_emulator_does() {
    let base = std::env::temp_dir().join(format!("lorafuse-meter-{}", std::process::id()));
    let dtype = DType::F32;
    let emu = run(
        Device::emulator(),
        dtype,
        &base.join(format!("emu-{dtype}")),
    );
    let meter = run(Device::meter(), dtype, &base.join(format!("meter-{dtype}")));
    println!("{dtype}: emulator {emu:?}, meter {meter:?}");
    assert!(emu.driver_allocs > 100, "{emu:?}");
    assert_eq!(
        meter, emu,
        "{dtype}: the meter's pool differs from the emulator's"
    );
    let _ = std::fs::remove_dir_all(&base);
}
