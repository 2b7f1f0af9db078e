//! Which implementation each kernel family runs: the fast kernels (tensor cores through
//! mma.sync, f16 or bf16 storage, f32 accumulation) or their simple twins (the first, plain
//! kernels, kept as the GPU's own reference). Fast kernels serve f16 backends, and bf16 ones on
//! compute capability 8.0+ (`CudaBackend::fast16`); an f32 backend always runs the simple ones.
//!
//! `LORAFUSE_SIMPLE_KERNELS` switches families back to the simple twins without rebuilding:
//! `all`, or a comma-separated list of `gemm`, `conv`, `attention`, `norm`. A fast kernel that
//! misbehaves on some GPU can be turned off this way while the rest of the GPU path stays.

use crate::error::{Error, Result};

/// The environment variable read by [`KernelChoice::from_env`].
pub const SIMPLE_KERNELS_VAR: &str = "LORAFUSE_SIMPLE_KERNELS";

/// One family's implementation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Impl {
    Simple,
    Fast,
}

/// The implementation of each kernel family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelChoice {
    /// Linear layers with their fused LoRA term, forward and backward.
    pub gemm: Impl,
    /// Convolutions and their input gradient.
    pub conv: Impl,
    /// Attention forward and backward.
    pub attention: Impl,
    /// GroupNorm (+SiLU) and LayerNorm, forward and backward.
    pub norm: Impl,
}

/// The family names `LORAFUSE_SIMPLE_KERNELS` accepts, in the order of the fields.
pub const FAMILIES: [&str; 4] = ["gemm", "conv", "attention", "norm"];

impl KernelChoice {
    /// Every family fast (the default).
    pub fn fast() -> KernelChoice {
        KernelChoice::all(Impl::Fast)
    }
    /// Every family on its simple twin.
    pub fn simple() -> KernelChoice {
        KernelChoice::all(Impl::Simple)
    }
    fn all(i: Impl) -> KernelChoice {
        KernelChoice {
            gemm: i,
            conv: i,
            attention: i,
            norm: i,
        }
    }

    /// The choice `LORAFUSE_SIMPLE_KERNELS` asks for (unset or empty: every family fast).
    pub fn from_env() -> Result<KernelChoice> {
        match std::env::var(SIMPLE_KERNELS_VAR) {
            Ok(v) => KernelChoice::parse(&v),
            Err(std::env::VarError::NotPresent) => Ok(KernelChoice::fast()),
            Err(std::env::VarError::NotUnicode(v)) => Err(bad(&v.to_string_lossy())),
        }
    }

    /// Parses a `LORAFUSE_SIMPLE_KERNELS` value: the families to run simple.
    pub fn parse(value: &str) -> Result<KernelChoice> {
        let mut c = KernelChoice::fast();
        for name in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match name {
                "all" => c = KernelChoice::simple(),
                "gemm" => c.gemm = Impl::Simple,
                "conv" => c.conv = Impl::Simple,
                "attention" => c.attention = Impl::Simple,
                "norm" => c.norm = Impl::Simple,
                _ => return Err(bad(value)),
            }
        }
        Ok(c)
    }

    /// The families on their simple twins, for messages ("none" when all are fast).
    pub fn simple_families(&self) -> String {
        let v: Vec<&str> = [self.gemm, self.conv, self.attention, self.norm]
            .iter()
            .zip(FAMILIES)
            .filter(|(i, _)| **i == Impl::Simple)
            .map(|(_, n)| n)
            .collect();
        if v.is_empty() {
            "none".into()
        } else {
            v.join(",")
        }
    }
}

fn bad(value: &str) -> Error {
    Error::BadValue {
        op: "kernel choice",
        name: SIMPLE_KERNELS_VAR,
        value: value.to_string(),
        expected: format!(
            "`all` or a comma-separated list of {} (the families to run on their simple \
             kernels); unset it for the fast kernels",
            FAMILIES.join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_families_and_refuses_unknown_names() {
        assert_eq!(KernelChoice::parse("").unwrap(), KernelChoice::fast());
        assert_eq!(KernelChoice::parse("all").unwrap(), KernelChoice::simple());
        let c = KernelChoice::parse("attention, norm").unwrap();
        assert_eq!((c.gemm, c.conv), (Impl::Fast, Impl::Fast));
        assert_eq!((c.attention, c.norm), (Impl::Simple, Impl::Simple));
        assert_eq!(c.simple_families(), "attention,norm");
        let e = KernelChoice::parse("gemm,flash").unwrap_err().to_string();
        assert!(
            e.contains(SIMPLE_KERNELS_VAR) && e.contains("gemm,flash"),
            "{e}"
        );
    }
}
