//! `no_half_vae` on the emulated CUDA backend: beside an f16 backend, the VAE's weights, its
//! encoding (through the latent cache, as training caches) and its decoding (as sampling
//! decodes) are f32 and give the f32 backend's bits; a VAE whose activations overflow f16
//! (a tiny VAE with its input convolutions scaled up, standing in for SDXL 1.0's) gives
//! finite latents with it and a refusal naming the fix without it; the family's default
//! (SDXL: f32) and the latent cache's disk files read back onto the device.
#![cfg(feature = "cuda-emu")]

use crate::common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use lorafuse::backend::cuda::{CudaBackend, Device, KernelChoice};
use lorafuse::backend::prelude::*;
use lorafuse::config::TrainConfig;
use lorafuse::data::Item;
use lorafuse::model::config::{VaeConfig, VaeDownBlockType, VaeUpBlockType};
use lorafuse::model::family::{sd1::Sd1, sdxl::Sdxl, vae_dtype};
use lorafuse::model::layers::Ctx;
use lorafuse::model::vae::Vae;
use lorafuse::model::weights::{RandomWeights, WeightSource};
use lorafuse::train::cache::{stack_latents, LatentCache, LatentKey, Pixels};
use lorafuse::train::inputs::data_options;
use lorafuse::train::loop_io::scan_data;
use lorafuse::{CpuBackend, DType, Result, Tensor};

/// Random weights with both input convolutions (weight and bias) multiplied by
/// `factor`: their outputs outgrow f16's 65504 while every later GroupNorm brings f32 back to
/// unit scale.
struct Scaled {
    factor: f32,
}

impl WeightSource for Scaled {
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = RandomWeights { seed: 5 }.tensor(name, shape)?;
        if name.starts_with("vae.encoder.conv_in.") || name.starts_with("vae.decoder.conv_in.") {
            let v = t.to_f32_vec().iter().map(|x| x * self.factor).collect();
            return Tensor::from_f32(shape, v);
        }
        Ok(t)
    }
    fn contains(&self, _name: &str) -> bool {
        true
    }
}

/// A fresh folder, removed when dropped.
fn temp(name: &str) -> common::tools::TempDir {
    common::tools::TempDir::new(&format!("vae-precision-{name}"))
}

/// A two-level VAE of SD's architecture, 32 channels: latents half the image's size.
fn tiny_vae() -> VaeConfig {
    VaeConfig {
        block_out_channels: vec![32, 32],
        down_block_types: vec![VaeDownBlockType::DownEncoderBlock2D; 2],
        up_block_types: vec![VaeUpBlockType::UpDecoderBlock2D; 2],
        layers_per_block: 1,
        sample_size: 32,
        ..VaeConfig::sd15()
    }
}

/// One 64x64 picture of the demo's data set, and the configuration that trains on it.
fn demo_data(dir: &Path) -> (TrainConfig, Vec<Item>) {
    let data = lorafuse::demo::data::write_dataset(&dir.join("data"), 1, 64, 11).unwrap();
    let yaml = format!(
        "train_data_dir: {}\nbase_model: {}\noutput_dir: {}\nresolution: 64\n",
        data.display(),
        dir.join("model").display(),
        dir.join("out").display()
    );
    std::fs::write(dir.join("train.yaml"), yaml).unwrap();
    let cfg = TrainConfig::load(dir.join("train.yaml"), &[] as &[&str]).unwrap();
    let ds = scan_data(&cfg).unwrap();
    (cfg, ds.items)
}

/// The latents of `item` through a fresh latent cache (on disk in `disk` when given), host f32.
fn cached(
    be: &dyn Backend,
    vae: &Vae,
    cfg: &TrainConfig,
    item: &Item,
    disk: Option<PathBuf>,
) -> Result<Tensor> {
    let mut cache = LatentCache::new(disk, &data_options(cfg), Pixels::Files)?;
    let key = LatentKey {
        index: 0,
        validation: false,
        flipped: false,
    };
    cache.get_or_encode(be, Some(vae), key, item)
}

/// Asserts that `got` and `want` hold the same bits, else says where and by how much not.
fn same_bits(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let differ: Vec<usize> = (0..got.len())
        .filter(|&i| got[i].to_bits() != want[i].to_bits())
        .collect();
    if let Some(&i) = differ.first() {
        let worst = differ
            .iter()
            .map(|&j| (got[j] - want[j]).abs())
            .fold(0.0f32, f32::max);
        panic!(
            "{what}: {} of {} values differ; first at {i}: {} vs {}; worst by {worst}",
            differ.len(),
            got.len(),
            got[i],
            want[i]
        );
    }
}

/// An f16 and an f32 backend on one emulated device; the f16 one with the simple kernels (the
/// emulated tensor-core kernels take seconds per VAE pass; f32 never takes them).
fn backends() -> (CudaBackend, CudaBackend) {
    let dev = Device::emulator();
    (
        CudaBackend::new(Arc::clone(&dev), DType::F16)
            .unwrap()
            .with_kernels(KernelChoice::simple()),
        CudaBackend::new(dev, DType::F32).unwrap(),
    )
}

#[test]
fn the_vae_computes_in_f32_where_no_half_vae_or_the_family_asks() {
    let (f16, f32) = backends();
    let cpu = CpuBackend::new();
    // Unset: SDXL's VAE overflows in f16, SD1.x's does not.
    assert_eq!(vae_dtype(&Sdxl, &f16, None), DType::F32);
    assert_eq!(vae_dtype(&Sd1, &f16, None), DType::F16);
    // Set: kohya's meaning, whatever the family.
    assert_eq!(vae_dtype(&Sd1, &f16, Some(true)), DType::F32);
    assert_eq!(vae_dtype(&Sdxl, &f16, Some(false)), DType::F16);
    // A backend already in f32 (mixed_precision: no, the CPU) keeps its own.
    assert_eq!(vae_dtype(&Sdxl, &f32, Some(false)), DType::F32);
    assert_eq!(vae_dtype(&Sdxl, &cpu, None), DType::F32);
    // The CPU cannot compute in f16, so it has no f16 twin to put a VAE on: a clear error.
    let e = Vae::load_in(
        &tiny_vae(),
        &RandomWeights { seed: 5 },
        &cpu,
        "vae",
        DType::F16,
    )
    .err()
    .expect("an f16 VAE on the CPU")
    .to_string();
    assert!(e.contains("f32") && e.contains("cpu"), "{e}");
}

#[test]
fn no_half_vae_encodes_and_decodes_the_f32_backends_bits() {
    let dir = temp("bits");
    let (cfg, items) = demo_data(&dir);
    let (f16, f32) = backends();
    let src = RandomWeights { seed: 5 };
    let vc = tiny_vae();
    let up = Vae::load_in(&vc, &src, &f16, "vae", DType::F32).unwrap();
    let half = Vae::load(&vc, &src, &f16, "vae").unwrap();
    let full = Vae::load(&vc, &src, &f32, "vae").unwrap();
    assert_eq!((up.dtype(), half.dtype()), (DType::F32, DType::F16));

    // Encoding, through the latent cache (the same image, crop and posterior noise).
    let item = &items[0];
    let want = cached(&f32, &full, &cfg, item, None).unwrap().to_f32_vec();
    let disk = dir.join("latents");
    let got = cached(&f16, &up, &cfg, item, Some(disk.clone())).unwrap();
    same_bits(&got.to_f32_vec(), &want, "latents");
    let f16_latents = cached(&f16, &half, &cfg, item, None).unwrap().to_f32_vec();
    assert!(f16_latents != want, "the f16 VAE rounds");
    let worst = f16_latents
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(
        worst < 0.05,
        "the f16 VAE's latents are the f32 ones rounded: {worst}"
    );

    // A second cache reads the file, and its latents go onto the f16 device for the UNet.
    let again = cached(&f16, &half, &cfg, item, Some(disk)).unwrap();
    same_bits(&again.to_f32_vec(), &want, "read back from disk");
    let batch = stack_latents(&f16, &[again.clone(), again]).unwrap();
    assert_eq!(batch.dtype(), DType::F16);
    assert_eq!(batch.dims()[0], 2);
    let rounded: Vec<f32> = want
        .iter()
        .map(|&x| half::f16::from_f32(x).to_f32())
        .collect();
    same_bits(
        &f16.to_f32_vec(&batch).unwrap()[..want.len()],
        &rounded,
        "on the device",
    );

    // Decoding the f16 latents a sampler on the f16 backend ends with.
    let dims = got.dims().to_vec();
    let z16 = f16.tensor_from_f32(&dims, &rounded, DType::F16).unwrap();
    let z32 = f32.tensor_from_f32(&dims, &rounded, DType::F32).unwrap();
    let img_up = up.decode(&Ctx::new(&f16, None), &z16).unwrap();
    let img_full = full.decode(&Ctx::new(&f32, None), &z32).unwrap();
    assert_eq!(img_up.dtype(), DType::F32);
    same_bits(
        &f16.to_f32_vec(&img_up).unwrap(),
        &f32.to_f32_vec(&img_full).unwrap(),
        "decoded image",
    );
}

#[test]
fn an_overflowing_vae_is_finite_with_no_half_vae_and_refused_without() {
    let dir = temp("overflow");
    let (cfg, items) = demo_data(&dir);
    let (f16, f32) = backends();
    let src = Scaled { factor: 1e6 };
    let vc = tiny_vae();
    let up = Vae::load_in(&vc, &src, &f16, "vae", DType::F32).unwrap();
    let half = Vae::load(&vc, &src, &f16, "vae").unwrap();
    let full = Vae::load(&vc, &src, &f32, "vae").unwrap();
    let item = &items[0];

    // In f32 the activations reach ~1e6 and the latents stay finite, bit for bit the f32
    // backend's.
    let want = cached(&f32, &full, &cfg, item, None).unwrap().to_f32_vec();
    assert!(want.iter().all(|x| x.is_finite()));
    let got = cached(&f16, &up, &cfg, item, None).unwrap().to_f32_vec();
    same_bits(&got, &want, "latents");

    // In f16 they overflow: the cache refuses the image, naming it and the fixes.
    let e = cached(&f16, &half, &cfg, item, None).expect_err("non-finite latents are refused");
    assert_eq!(e.kind(), lorafuse::error::ErrorKind::BadInput, "{e}");
    let m = e.to_string();
    for needle in [
        &item.path.display().to_string()[..],
        "in f16",
        "no_half_vae: true",
        "sdxl-vae-fp16-fix",
        "mixed_precision: no",
    ] {
        assert!(m.contains(needle), "{needle:?} missing from: {m}");
    }

    // Decoding: f32 gives a finite image, the f32 backend's; f16 overflows.
    let dims = [1, 4, 8, 8];
    // Values f16 holds exactly, so that both sides decode the same latents.
    let z: Vec<f32> = (0..256)
        .map(|i| ((i * 37 % 101) as f32 / 64.0) - 0.75)
        .collect();
    let z16 = f16.tensor_from_f32(&dims, &z, DType::F16).unwrap();
    let z32 = f32.tensor_from_f32(&dims, &z, DType::F32).unwrap();
    let img_up = f16
        .to_f32_vec(&up.decode(&Ctx::new(&f16, None), &z16).unwrap())
        .unwrap();
    let img_full = f32
        .to_f32_vec(&full.decode(&Ctx::new(&f32, None), &z32).unwrap())
        .unwrap();
    assert!(img_up.iter().all(|x| x.is_finite()));
    same_bits(&img_up, &img_full, "decoded image");
    let img_half = f16
        .to_f32_vec(&half.decode(&Ctx::new(&f16, None), &z16).unwrap())
        .unwrap();
    assert!(img_half.iter().any(|x| !x.is_finite()), "f16 overflows");
}
