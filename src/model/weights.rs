//! Where a model's frozen weights come from, and a loader that walks a model's name tree.
//!
//! Names are diffusers' (`down_blocks.0.resnets.1.conv1.weight`), below a per-model prefix
//! (`unet.`); checkpoint readers map other layouts onto them.

use crate::backend::Backend;
use crate::error::Result;
use crate::rng::Rng;
use crate::tensor::Tensor;

/// A source of named f32 host tensors of known shape.
pub trait WeightSource {
    /// The tensor called `name`, checked to have `shape`; errors name the key and the source.
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor>;
    /// Whether a tensor called `name` exists.
    fn contains(&self, name: &str) -> bool;
    /// Whether only the shapes matter: loaders then ask the backend for zeros instead of
    /// reading values (the memory planner loads the full model this way, with no host copy).
    fn shape_only(&self) -> bool {
        false
    }
}

/// Reads weights below a name prefix and puts them on a backend in its compute dtype.
#[derive(Clone)]
pub struct Loader<'a> {
    pub src: &'a dyn WeightSource,
    pub be: &'a dyn Backend,
    /// Dotted path of the current module, without a trailing dot ("" at the root).
    pub path: String,
    /// How a module's LoRA name is made from its path: kohya's rule on the diffusers path
    /// (`model::layers::kohya_name`) unless set (SDXL's UNet names its modules in SGM's layout).
    pub naming: Option<&'a dyn Fn(&str) -> String>,
}

impl<'a> Loader<'a> {
    pub fn new(src: &'a dyn WeightSource, be: &'a dyn Backend, root: &str) -> Self {
        Loader {
            src,
            be,
            path: root.to_string(),
            naming: None,
        }
    }
    /// The same loader with LoRA names made by `naming` from the module path.
    pub fn with_naming(self, naming: &'a dyn Fn(&str) -> String) -> Self {
        Loader {
            naming: Some(naming),
            ..self
        }
    }
    /// The LoRA module name of the current module (`lora_unet_…`).
    pub fn module_name(&self) -> String {
        match self.naming {
            Some(f) => f(&self.path),
            None => crate::model::layers::kohya_name(&self.path),
        }
    }
    /// The loader of a child module.
    pub fn at(&self, child: &str) -> Loader<'a> {
        Loader {
            src: self.src,
            be: self.be,
            path: self.join(child),
            naming: self.naming,
        }
    }
    /// `path.child`.
    pub fn join(&self, child: &str) -> String {
        if self.path.is_empty() {
            child.to_string()
        } else {
            format!("{}.{child}", self.path)
        }
    }
    /// The tensor `path.name` on the backend.
    pub fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        if self.src.shape_only() {
            return self.be.zeros(shape, self.be.compute_dtype());
        }
        let host = self.src.tensor(&self.join(name), shape)?;
        self.be
            .tensor_from_f32(shape, &host.to_f32_vec(), self.be.compute_dtype())
    }
    pub fn contains(&self, name: &str) -> bool {
        self.src.contains(&self.join(name))
    }
}

/// Deterministic random weights for any model: each tensor is drawn from a stream seeded by
/// its name, so the same name gets the same values whatever order a model loads in. Matrices
/// and kernels ~ N(0, 1/fan_in); 1-D "weight"s (norm scales) ~ 1 + 0.1·N(0, 1); 1-D biases
/// ~ 0.1·N(0, 1). Used for benches and tests of full-size models, where the arithmetic is
/// what matters, not the values.
#[derive(Clone, Copy, Debug)]
pub struct RandomWeights {
    pub seed: u64,
}

impl WeightSource for RandomWeights {
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        // FNV-1a of the name, mixed with the seed.
        let h = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
        });
        let mut rng = Rng::new(h ^ self.seed);
        let n: usize = shape.iter().product();
        let v: Vec<f32> = if shape.len() >= 2 {
            let fan_in: usize = shape[1..].iter().product();
            let s = 1.0 / (fan_in.max(1) as f64).sqrt();
            (0..n).map(|_| (rng.normal() * s) as f32).collect()
        } else if name.ends_with("weight") {
            (0..n).map(|_| (1.0 + 0.1 * rng.normal()) as f32).collect()
        } else {
            (0..n).map(|_| (0.1 * rng.normal()) as f32).collect()
        };
        Tensor::from_f32(shape, v)
    }
    fn contains(&self, _name: &str) -> bool {
        true
    }
}

/// Every tensor exists and is zero; loaders make it on the backend directly
/// ([`WeightSource::shape_only`]). For the memory planner, where values never matter.
#[derive(Clone, Copy, Debug)]
pub struct ShapeOnly;

impl WeightSource for ShapeOnly {
    fn tensor(&self, _name: &str, shape: &[usize]) -> Result<Tensor> {
        Tensor::from_f32(shape, vec![0.0; shape.iter().product()])
    }
    fn contains(&self, _name: &str) -> bool {
        true
    }
    fn shape_only(&self) -> bool {
        true
    }
}

impl WeightSource for crate::model::checkpoint::Weights {
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.get(name, shape)
    }
    fn contains(&self, name: &str) -> bool {
        crate::model::checkpoint::Weights::contains(self, name)
    }
}
