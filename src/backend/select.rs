//! Which backend a run uses: `device: auto` takes CUDA when this build has the CUDA backend
//! and the machine a usable device (driver present, compute capability 7.5+, 8.0+ for bf16,
//! our PTX loads), else the CPU, and says which and why; `device: cuda[:N]` insists and
//! reports what is missing; `device: cpu` is the CPU.

use crate::backend::cpu::{CpuBackend, CpuPrecision};
use crate::backend::Backend;
use crate::config::{Device, MixedPrecision};
use crate::error::{Error, Result};
use crate::tensor::DType;

/// What `device: auto` and `device: cuda` say in a build without the CUDA backend.
pub const NO_CUDA_BUILD: &str = "this build of lorafuse has no CUDA backend; rebuild with \
     `cargo build --release --features cuda`, which needs the NVIDIA driver at run time only";

/// The chosen backend and a line saying what was chosen (for the log).
pub struct Selected {
    pub backend: Box<dyn Backend>,
    pub note: String,
}

/// The activation dtype on a GPU for a `mixed_precision` setting (bf16 needs compute
/// capability 8.0+: `DeviceLimits::bf16_refused`).
pub fn gpu_dtype(mp: MixedPrecision) -> DType {
    match mp {
        MixedPrecision::No => DType::F32,
        MixedPrecision::Fp16 => DType::F16,
        MixedPrecision::Bf16 => DType::BF16,
    }
}

/// Opens the backend for `device`; on the CPU, its products with frozen weights in `cpu`
/// (an error naming the missing CPU feature where this CPU cannot).
pub fn select(device: Device, mp: MixedPrecision, cpu: CpuPrecision) -> Result<Selected> {
    let cpu = |why: String| -> Result<Selected> {
        Ok(Selected {
            backend: Box::new(CpuBackend::with_precision(cpu)?),
            note: match cpu {
                CpuPrecision::F32 => why,
                p => format!("{why}, products with frozen weights in {}", p.name()),
            },
        })
    };
    match device {
        Device::Cpu => cpu("device: cpu".into()),
        // Nothing was tried, so nothing "was asked for": say that there is no GPU path.
        Device::Auto if !cfg!(feature = "cuda") => {
            cpu(format!("device: auto -> cpu ({NO_CUDA_BUILD})"))
        }
        Device::Auto => match open_cuda(0, mp) {
            Ok(s) => Ok(Selected {
                note: format!("device: auto -> {}", s.note),
                ..s
            }),
            // A GPU that cannot take the configured precision is a setting to change, not a
            // reason to train on the CPU.
            Err(e @ Error::BadValue { .. }) => Err(e),
            Err(e) => cpu(format!("device: auto -> cpu ({e})")),
        },
        Device::Cuda(n) => open_cuda(n, mp),
    }
}

#[cfg(feature = "cuda")]
fn open_cuda(ordinal: usize, mp: MixedPrecision) -> Result<Selected> {
    use crate::backend::cuda::{CudaBackend, Device as Dev};
    let dev = Dev::gpu(ordinal)?;
    let dtype = gpu_dtype(mp);
    if dtype == DType::BF16 {
        if let Some(why) = dev.limits().bf16_refused() {
            return Err(bf16_refused(why));
        }
    }
    let note = format!("cuda:{ordinal}: {}, activations in {dtype}", dev.describe());
    Ok(Selected {
        backend: Box::new(CudaBackend::new(dev, dtype)?),
        note,
    })
}

/// The refusal of `mixed_precision: bf16` on a card below compute capability 8.0 (`why`
/// names the card and the alternatives).
pub fn bf16_refused(why: String) -> Error {
    Error::BadValue {
        op: "device selection",
        name: "mixed_precision",
        value: "bf16".into(),
        expected: why,
    }
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(ordinal: usize, _mp: MixedPrecision) -> Result<Selected> {
    Err(Error::CudaUnavailable(format!(
        "cuda:{ordinal} was asked for, but {NO_CUDA_BUILD}, or set `device: cpu`"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_is_always_available_and_auto_falls_back_to_it_with_a_reason() {
        let s = select(Device::Cpu, MixedPrecision::No, CpuPrecision::F32).unwrap();
        assert_eq!(s.backend.name(), "cpu");
        let s = select(Device::Auto, MixedPrecision::Fp16, CpuPrecision::F32).unwrap();
        if s.backend.name() == "cpu" {
            assert!(s.note.starts_with("device: auto -> cpu ("), "{}", s.note);
        } else {
            assert_eq!(s.backend.compute_dtype(), DType::F16);
        }
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn auto_without_the_cuda_build_says_so_and_asks_for_nothing() {
        let s = select(Device::Auto, MixedPrecision::No, CpuPrecision::F32).unwrap();
        assert_eq!(s.backend.name(), "cpu");
        assert!(s.note.contains("no CUDA backend"), "{}", s.note);
        assert!(!s.note.contains("was asked for"), "{}", s.note);
    }

    #[test]
    fn asking_for_cuda_without_it_says_what_is_missing() {
        match select(Device::Cuda(3), MixedPrecision::No, CpuPrecision::F32) {
            Ok(s) => assert_ne!(s.backend.name(), "cpu"),
            Err(e) => {
                let m = e.to_string();
                assert!(m.contains("cuda") || m.contains("CUDA"), "{m}");
                assert!(m.contains("device") || m.contains("features cuda"), "{m}");
            }
        }
    }

    #[test]
    fn each_precision_computes_in_its_dtype_and_bf16_is_refused_on_turing() {
        assert_eq!(gpu_dtype(MixedPrecision::Bf16), DType::BF16);
        assert_eq!(gpu_dtype(MixedPrecision::Fp16), DType::F16);
        assert_eq!(gpu_dtype(MixedPrecision::No), DType::F32);
        let t4 = crate::backend::cuda::DeviceLimits::profile("T4").unwrap();
        let e = bf16_refused(t4.bf16_refused().unwrap());
        assert_eq!(e.kind(), crate::error::ErrorKind::BadInput);
        let m = e.to_string();
        for part in [
            "mixed_precision",
            "bf16",
            "T4",
            "8.0",
            "mixed_precision: fp16",
        ] {
            assert!(m.contains(part), "{part} missing from: {m}");
        }
        let a100 = crate::backend::cuda::DeviceLimits::profile("A100").unwrap();
        assert!(a100.bf16_refused().is_none());
    }
}
