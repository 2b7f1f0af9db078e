//! The limits of a device that decide how kernels are launched (shared memory a block may
//! opt in to, the number of SMs a grid should fill, ...), read from the GPU when there is one,
//! and for the kernel emulator and the memory meter taken from a table of the cards lorafuse's
//! users train on, so that tests and `lorafuse plan --gpu "RTX 3060"` see the launch choices
//! and memory of that card.
//!
//! The figures are NVIDIA's published per-architecture limits (CUDA C Programming Guide,
//! "Technical Specifications per Compute Capability") and each card's SM count and memory.

use std::fmt;

/// What a device allows a launch, and how big it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceLimits {
    /// The card ("NVIDIA GeForce RTX 3060"), or the profile's name.
    pub name: String,
    pub compute_capability: (u32, u32),
    /// Shared memory one block may use, static and dynamic together, after opting in.
    pub smem_per_block: u32,
    /// Shared memory of one SM (what co-resident blocks share).
    pub smem_per_sm: u32,
    /// 32-bit registers of one SM.
    pub regs_per_sm: u32,
    /// Threads one SM keeps resident.
    pub threads_per_sm: u32,
    /// Streaming multiprocessors: the blocks a grid needs to fill the device once.
    pub sm_count: u32,
    /// Device memory in bytes.
    pub memory: usize,
}

impl fmt::Display for DeviceLimits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (sm_{}{}, {} SMs, {} KiB shared memory per block, {:.0} GiB)",
            self.name,
            self.compute_capability.0,
            self.compute_capability.1,
            self.sm_count,
            self.smem_per_block / 1024,
            self.memory as f64 / (1u64 << 30) as f64
        )
    }
}

/// Per compute capability: (shared memory per block opt-in, per SM, registers per SM,
/// threads per SM).
const fn arch(cc: (u32, u32)) -> (u32, u32, u32, u32) {
    match cc {
        (7, 5) => (64 * 1024, 64 * 1024, 65536, 1024),
        (8, 0) => (163 * 1024, 164 * 1024, 65536, 2048),
        (8, 6) | (8, 9) => (99 * 1024, 100 * 1024, 65536, 1536),
        (9, 0) => (227 * 1024, 228 * 1024, 65536, 2048),
        _ => (48 * 1024, 48 * 1024, 65536, 1024),
    }
}

/// A named card: (name, compute capability, SMs, memory in GiB).
type Card = (&'static str, (u32, u32), u32, usize);

/// The card most SD1.5 LoRAs are trained on (issue 17's survey): what serve's memory plan
/// shows first.
pub const USUAL_CARD: &str = "RTX 3060";

/// The cards `--gpu NAME` and the tests know, oldest first.
const CARDS: &[Card] = &[
    ("T4", (7, 5), 40, 15),
    ("RTX 2070", (7, 5), 36, 8),
    ("RTX 2080 Ti", (7, 5), 68, 11),
    ("RTX 3060", (8, 6), 28, 12),
    ("RTX 3070 Laptop", (8, 6), 40, 8),
    ("RTX 3090", (8, 6), 82, 24),
    ("RTX 4060", (8, 9), 24, 8),
    ("RTX 4090", (8, 9), 128, 24),
    ("A100", (8, 0), 108, 40),
    ("H100", (9, 0), 132, 80),
];

impl DeviceLimits {
    /// The limits of a device of compute capability `cc` with `sm_count` SMs and `memory`
    /// bytes, as its architecture sets them.
    pub fn of_architecture(
        name: &str,
        cc: (u32, u32),
        sm_count: u32,
        memory: usize,
    ) -> DeviceLimits {
        let (smem_per_block, smem_per_sm, regs_per_sm, threads_per_sm) = arch(cc);
        DeviceLimits {
            name: name.to_string(),
            compute_capability: cc,
            smem_per_block,
            smem_per_sm,
            regs_per_sm,
            threads_per_sm,
            sm_count,
            memory,
        }
    }

    /// A named card of the table ("RTX 3060", "rtx3060", "GeForce RTX 3060" and "NVIDIA A100"
    /// all name one), or None.
    pub fn profile(name: &str) -> Option<DeviceLimits> {
        let key = squash(name);
        CARDS
            .iter()
            .find(|c| squash(c.0) == key)
            .map(|&(n, cc, sms, gib)| DeviceLimits::of_architecture(n, cc, sms, gib << 30))
    }

    /// Every card of the table.
    pub fn profiles() -> Vec<DeviceLimits> {
        CARDS
            .iter()
            .map(|&(n, cc, sms, gib)| DeviceLimits::of_architecture(n, cc, sms, gib << 30))
            .collect()
    }

    /// The names `--gpu` takes, for messages.
    pub fn profile_names() -> String {
        CARDS.iter().map(|c| c.0).collect::<Vec<_>>().join(", ")
    }

    /// What the emulator and the memory meter hold launches to unless told otherwise: an
    /// A100 (sm_80; the other cards are tested through their profiles, tests/cuda_profiles.rs
    /// and tests/cuda_turing.rs).
    pub fn default_target() -> DeviceLimits {
        DeviceLimits::profile("A100").expect("the table has the A100")
    }

    /// Whether lorafuse's kernels run on this device: compute capability 7.5 (Turing: PTX for
    /// sm_75, whose tensor-core kernels use mma.sync m16n8k8 and synchronous copies) and newer.
    pub fn supported(&self) -> bool {
        self.compute_capability >= (7, 5)
    }

    /// Why lorafuse's kernels cannot run on this device, when they cannot: the one text the
    /// GPU's opening, the emulator's backend and `plan --gpu` give.
    pub fn unsupported(&self) -> Option<String> {
        (!self.supported()).then(|| {
            format!(
                "{self}: lorafuse's CUDA kernels need compute capability 7.5 or newer (Turing: \
                 RTX 20xx, GTX 16xx, T4; and later). Older GPUs (Volta, Pascal) lack the \
                 ldmatrix instruction the tensor-core kernels use, and the simple kernels have \
                 never been tested there, so lorafuse does not build PTX for them"
            )
        })
    }

    /// Why this device cannot compute in bf16 (`mixed_precision: bf16`), or None: bf16 needs
    /// compute capability 8.0 or newer (Ampere: RTX 30xx, A100; and later), where the tensor
    /// cores take bf16 and the conversions are native. Said at start, never mid-step.
    pub fn bf16_refused(&self) -> Option<String> {
        (self.compute_capability < (8, 0)).then(|| {
            format!(
                "{self}: mixed_precision: bf16 needs compute capability 8.0 or newer (RTX 30xx, \
                 A100 and later); this card has no bf16 tensor cores. Use `mixed_precision: \
                 fp16` (f16 with dynamic loss scaling) or `mixed_precision: no` (f32)"
            )
        })
    }
}

/// A card name without case, spaces, dashes or the vendor's words.
fn squash(name: &str) -> String {
    let lower = name.to_ascii_lowercase();
    let words: Vec<&str> = lower
        .split(|c: char| c.is_whitespace() || c == '-' || c == '_')
        .filter(|w| !w.is_empty() && !matches!(*w, "nvidia" | "geforce" | "tesla"))
        .collect();
    words.concat()
}

#[cfg(test)]
mod tests {
    use super::DeviceLimits;

    #[test]
    fn profiles_are_found_by_their_usual_names() {
        for name in ["RTX 3060", "rtx3060", "NVIDIA GeForce RTX 3060", "rtx-3060"] {
            let p = DeviceLimits::profile(name).unwrap_or_else(|| panic!("{name}"));
            assert_eq!(p.name, "RTX 3060");
            assert_eq!(p.compute_capability, (8, 6));
            assert_eq!(p.smem_per_block, 99 * 1024);
            assert_eq!(p.memory, 12 << 30);
        }
        assert_eq!(DeviceLimits::profile("NVIDIA A100").unwrap().sm_count, 108);
        assert!(DeviceLimits::profile("RTX 9999").is_none());
        let t4 = DeviceLimits::profile("T4").unwrap();
        assert!(t4.supported() && t4.unsupported().is_none());
        assert_eq!(t4.compute_capability, (7, 5));
        assert_eq!((t4.smem_per_block, t4.smem_per_sm), (64 * 1024, 64 * 1024));
        let a100 = DeviceLimits::profile("A100").unwrap();
        assert!(a100.supported());
        assert!(DeviceLimits::profile("RTX 4090").unwrap().supported());
        let v100 = DeviceLimits::of_architecture("V100", (7, 0), 80, 16 << 30);
        assert!(!v100.supported());
        let why = v100.unsupported().unwrap();
        assert!(
            why.contains("sm_70") && why.contains("7.5 or newer"),
            "{why}"
        );
    }

    #[test]
    fn every_profile_has_its_architectures_limits() {
        for p in DeviceLimits::profiles() {
            assert!(p.smem_per_block <= p.smem_per_sm, "{p}");
            assert!(p.smem_per_block >= 64 * 1024, "{p}");
            assert!(p.sm_count > 0 && p.memory >= 8 << 30, "{p}");
        }
    }
}
