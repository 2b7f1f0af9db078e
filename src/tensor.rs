//! Tensors: a shape, a dtype and a buffer on one device. No autograd lives here: gradients
//! are computed by the hand-written backward passes, op by op.
//!
//! Layouts used across the crate: images and feature maps are NCHW, token sequences are
//! [batch, length, channels], all row-major and contiguous.

use std::any::Any;
use std::fmt;
use std::sync::{Arc, Mutex};

use half::{bf16, f16};

use crate::error::{Error, Result};

/// Element type of a tensor. `F64` exists on the CPU backend only: it runs the same code in
/// double precision so that finite-difference gradient checks are exact enough to trust.
/// `BF16` (bfloat16: f32's 8 exponent bits, 8 significant bits) is the CUDA backend's compute
/// dtype for `mixed_precision: bf16` on compute capability 8.0+; on the host it only holds
/// and converts values (round to nearest even), no CPU op computes in it.
/// `U8` holds the 8-bit optimizers' quantised state (one code per parameter); no arithmetic
/// op takes it, and it converts to and from f32 exactly (the values 0 to 255).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F16,
    BF16,
    F32,
    F64,
    U8,
}

impl DType {
    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::F16 | DType::BF16 => 2,
            DType::F32 => 4,
            DType::F64 => 8,
            DType::U8 => 1,
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::U8 => "u8",
        })
    }
}

/// The dimensions of a tensor, outermost first.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Shape(Vec<usize>);

impl Shape {
    pub fn new(dims: impl Into<Vec<usize>>) -> Self {
        Shape(dims.into())
    }
    pub fn dims(&self) -> &[usize] {
        &self.0
    }
    pub fn rank(&self) -> usize {
        self.0.len()
    }
    pub fn numel(&self) -> usize {
        self.0.iter().product()
    }
    /// The last dimension (1 for a scalar).
    pub fn last(&self) -> usize {
        self.0.last().copied().unwrap_or(1)
    }
    /// Product of all dimensions but the last: the number of rows of a row-major matrix view.
    pub fn rows(&self) -> usize {
        self.numel() / self.last().max(1)
    }
    /// The same dimensions with the last one replaced.
    pub fn with_last(&self, last: usize) -> Shape {
        let mut d = self.0.clone();
        match d.last_mut() {
            Some(l) => *l = last,
            None => d.push(last),
        }
        Shape(d)
    }
}

impl From<&[usize]> for Shape {
    fn from(d: &[usize]) -> Self {
        Shape(d.to_vec())
    }
}
impl<const N: usize> From<[usize; N]> for Shape {
    fn from(d: [usize; N]) -> Self {
        Shape(d.to_vec())
    }
}
impl From<Vec<usize>> for Shape {
    fn from(d: Vec<usize>) -> Self {
        Shape(d)
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[")?;
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "{d}")?;
        }
        write!(f, "]")
    }
}
impl fmt::Debug for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Host memory holding a tensor's elements.
#[derive(Clone, Debug)]
pub enum CpuData {
    F16(Vec<f16>),
    BF16(Vec<bf16>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    U8(Vec<u8>),
}

impl CpuData {
    fn len(&self) -> usize {
        match self {
            CpuData::F16(v) => v.len(),
            CpuData::BF16(v) => v.len(),
            CpuData::F32(v) => v.len(),
            CpuData::F64(v) => v.len(),
            CpuData::U8(v) => v.len(),
        }
    }
    fn dtype(&self) -> DType {
        match self {
            CpuData::F16(_) => DType::F16,
            CpuData::BF16(_) => DType::BF16,
            CpuData::F32(_) => DType::F32,
            CpuData::F64(_) => DType::F64,
            CpuData::U8(_) => DType::U8,
        }
    }
}

/// Where a tensor's elements live. The CUDA backend adds its device buffers here.
#[derive(Clone, Debug)]
pub enum Storage {
    Cpu(CpuData),
    /// On a CUDA device, in the kernel emulator, or in the memory meter (no elements).
    Device(crate::backend::cuda::DeviceBuffer),
}

impl Storage {
    pub fn device_name(&self) -> &'static str {
        match self {
            Storage::Cpu(_) => "cpu",
            Storage::Device(b) => b.device().name(),
        }
    }
}

/// A contiguous, row-major tensor that owns its buffer. `clone` copies the data (and not
/// its [`Derived`] values).
#[derive(Clone, Debug)]
pub struct Tensor {
    shape: Shape,
    storage: Storage,
    derived: Derived,
}

/// Values computed from a tensor's elements and kept with them, so that they are computed
/// once: the CPU backend's bf16 panels of a frozen weight (src/backend/cpu/gemm_bf16.rs),
/// which every forward and input-gradient product would otherwise build again.
///
/// They cannot go stale. They live inside the `Tensor` value, not in a table keyed by the
/// buffer's address (which a freed tensor's successor may reuse); the only ways to change a
/// tensor's elements, `storage_mut` and `reshape`, drop them first; a clone starts with none.
/// Each entry is a key (any type; compared by value and type) and its value.
#[derive(Default)]
struct Derived(Mutex<Vec<DerivedEntry>>);

type DerivedEntry = (Box<dyn Any + Send + Sync>, Arc<dyn Any + Send + Sync>);

impl Clone for Derived {
    /// Empty: the clone's elements can change independently of the original's.
    fn clone(&self) -> Self {
        Derived::default()
    }
}

impl fmt::Debug for Derived {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.lock().map(|v| v.len()).unwrap_or(0);
        write!(f, "Derived({n} values)")
    }
}

impl Tensor {
    /// A host tensor from raw data; fails when the length does not match the shape.
    pub fn from_cpu(shape: impl Into<Shape>, data: CpuData) -> Result<Tensor> {
        let shape = shape.into();
        if data.len() != shape.numel() {
            return Err(Error::DataLength {
                len: data.len(),
                shape: shape.clone(),
                expected: shape.numel(),
            });
        }
        Ok(Tensor {
            shape,
            storage: Storage::Cpu(data),
            derived: Derived::default(),
        })
    }
    pub fn from_f32(shape: impl Into<Shape>, data: Vec<f32>) -> Result<Tensor> {
        Self::from_cpu(shape, CpuData::F32(data))
    }
    pub fn from_f64(shape: impl Into<Shape>, data: Vec<f64>) -> Result<Tensor> {
        Self::from_cpu(shape, CpuData::F64(data))
    }
    pub fn from_f16(shape: impl Into<Shape>, data: Vec<f16>) -> Result<Tensor> {
        Self::from_cpu(shape, CpuData::F16(data))
    }
    pub fn from_u8(shape: impl Into<Shape>, data: Vec<u8>) -> Result<Tensor> {
        Self::from_cpu(shape, CpuData::U8(data))
    }
    /// A host tensor of zeros.
    pub fn zeros(shape: impl Into<Shape>, dtype: DType) -> Tensor {
        let shape = shape.into();
        let n = shape.numel();
        let data = match dtype {
            DType::F16 => CpuData::F16(vec![f16::ZERO; n]),
            DType::BF16 => CpuData::BF16(vec![bf16::ZERO; n]),
            DType::F32 => CpuData::F32(vec![0.0; n]),
            DType::F64 => CpuData::F64(vec![0.0; n]),
            DType::U8 => CpuData::U8(vec![0; n]),
        };
        Tensor {
            shape,
            storage: Storage::Cpu(data),
            derived: Derived::default(),
        }
    }

    pub fn shape(&self) -> &Shape {
        &self.shape
    }
    pub fn dims(&self) -> &[usize] {
        self.shape.dims()
    }
    pub fn numel(&self) -> usize {
        self.shape.numel()
    }
    /// Bytes of its elements.
    pub fn size_in_bytes(&self) -> usize {
        self.numel() * self.dtype().size_in_bytes()
    }
    pub fn dtype(&self) -> DType {
        match &self.storage {
            Storage::Cpu(d) => d.dtype(),
            Storage::Device(b) => b.dtype(),
        }
    }
    /// A tensor over a device buffer; fails when the buffer's length does not match the shape.
    pub fn from_device(
        shape: impl Into<Shape>,
        buf: crate::backend::cuda::DeviceBuffer,
    ) -> Result<Tensor> {
        let shape = shape.into();
        if buf.len() != shape.numel() {
            return Err(Error::DataLength {
                len: buf.len(),
                shape: shape.clone(),
                expected: shape.numel(),
            });
        }
        Ok(Tensor {
            shape,
            storage: Storage::Device(buf),
            derived: Derived::default(),
        })
    }
    pub fn storage(&self) -> &Storage {
        &self.storage
    }
    /// The elements, to change: drops every [`Derived`] value first.
    pub fn storage_mut(&mut self) -> &mut Storage {
        self.derived = Derived::default();
        &mut self.storage
    }

    /// The value `make` computes from this tensor's elements, computed on the first call with
    /// `key` and kept with the tensor until its elements change (see [`Derived`]). `make` runs
    /// without a lock held (it may use rayon's threads, which may run another op on this
    /// tensor meanwhile); two first calls at once may both compute it, and the first stored
    /// is kept.
    pub fn derived<K, V>(&self, key: K, make: impl FnOnce() -> V) -> Arc<V>
    where
        K: Any + PartialEq + Send + Sync,
        V: Any + Send + Sync,
    {
        let find = |entries: &[DerivedEntry]| {
            entries.iter().find_map(|(k, v)| {
                (k.downcast_ref::<K>() == Some(&key))
                    .then(|| v.clone().downcast::<V>().ok())
                    .flatten()
            })
        };
        // A panic while the lock was held cannot leave a half-written entry (pushes are
        // whole), so a poisoned lock's list is still good.
        let lock = || self.derived.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(v) = find(&lock()) {
            return v;
        }
        let made = Arc::new(make());
        let mut entries = lock();
        if let Some(v) = find(&entries) {
            return v;
        }
        entries.push((Box::new(key), made.clone()));
        made
    }

    /// How many [`Derived`] values this tensor holds (tests check when they are dropped).
    pub fn derived_count(&self) -> usize {
        self.derived.0.lock().map(|v| v.len()).unwrap_or(0)
    }

    /// The same elements under another shape with as many elements (no copy; the
    /// [`Derived`] values, computed for the old shape, are dropped).
    pub fn reshape(self, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        if shape.numel() != self.shape.numel() {
            return Err(Error::ShapeMismatch {
                op: "reshape",
                lhs_name: "tensor",
                lhs: self.shape,
                rhs_name: "new shape",
                rhs: shape,
                rule: "a reshape must keep the number of elements".into(),
            });
        }
        Ok(Tensor {
            shape,
            storage: self.storage,
            derived: Derived::default(),
        })
    }

    /// Copies the elements to a host `Vec<f32>` (f16 and bf16 widened, f64 rounded). A device tensor
    /// is downloaded; a device that fails at that point has failed for good, and this panics
    /// with the driver's message (code that can report it uses `Backend::to_f32_vec`).
    pub fn to_f32_vec(&self) -> Vec<f32> {
        match &self.storage {
            Storage::Cpu(CpuData::F16(v)) => v.iter().map(|x| x.to_f32()).collect(),
            Storage::Cpu(CpuData::BF16(v)) => v.iter().map(|x| x.to_f32()).collect(),
            Storage::Cpu(CpuData::F32(v)) => v.clone(),
            Storage::Cpu(CpuData::F64(v)) => v.iter().map(|&x| x as f32).collect(),
            Storage::Cpu(CpuData::U8(v)) => v.iter().map(|&x| x as f32).collect(),
            Storage::Device(b) => b
                .to_f32_vec()
                .unwrap_or_else(|e| panic!("reading a device tensor failed: {e}")),
        }
    }
    /// Copies the elements to a host `Vec<f64>`.
    pub fn to_f64_vec(&self) -> Vec<f64> {
        match &self.storage {
            Storage::Cpu(CpuData::F16(v)) => v.iter().map(|x| x.to_f64()).collect(),
            Storage::Cpu(CpuData::BF16(v)) => v.iter().map(|x| x.to_f64()).collect(),
            Storage::Cpu(CpuData::F32(v)) => v.iter().map(|&x| x as f64).collect(),
            Storage::Cpu(CpuData::F64(v)) => v.clone(),
            Storage::Cpu(CpuData::U8(v)) => v.iter().map(|&x| x as f64).collect(),
            Storage::Device(_) => self.to_f32_vec().into_iter().map(f64::from).collect(),
        }
    }
}
