//! [`Weights`]: one model component's tensors under their diffusers-style names
//! (`unet.down_blocks.0.resnets.0.conv1.weight`), whatever file layout they came from, read
//! from memory-mapped safetensors files only when asked for.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;

use crate::error::Result;
use crate::tensor::{Shape, Tensor};

use super::error::CheckpointError;
use super::safetensors::{self as st, SafetensorsFile};

/// Where one named tensor lives.
#[derive(Clone, Debug)]
struct Entry {
    /// Index into `Weights::files`.
    file: usize,
    /// Its name in that file (an LDM name for single-file checkpoints).
    stored: String,
    /// Its shape under the diffusers name (differs from the stored one only for the VAE
    /// attention's 1x1-conv weights, see `ldm::logical_shape`, and for a part).
    shape: Vec<usize>,
    /// `(i, n)`: the i-th of n equal parts along the stored tensor's first axis (OpenCLIP's
    /// fused `in_proj_weight` holds q, k and v as parts 0, 1, 2 of 3); None: all of it.
    part: Option<(usize, usize)>,
    /// A matrix stored transposed (OpenCLIP's `text_projection`): `shape` is the stored one
    /// reversed, and the getters transpose the data.
    transposed: bool,
}

/// Diffusers-style names to tensors in one or more mapped files. Cheap to clone (the maps are
/// shared); every getter copies the elements out, so no view into a map outlives it.
#[derive(Clone, Debug, Default)]
pub struct Weights {
    files: Vec<Arc<SafetensorsFile>>,
    entries: BTreeMap<String, Entry>,
}

impl Weights {
    pub fn new() -> Weights {
        Weights::default()
    }

    /// Every tensor of one safetensors file under its stored name (for files that are not a
    /// whole model: a LoRA, a lone component). Pickle, truncated and foreign files are refused
    /// as by `load_sd15`.
    pub fn open(path: impl AsRef<Path>) -> Result<Weights> {
        let file = Arc::new(SafetensorsFile::open(path.as_ref())?);
        let mut weights = Weights::new();
        let mut names: Vec<&str> = file.names().collect();
        names.sort_unstable();
        for name in names {
            if let Some(info) = file.tensor_info(name) {
                weights.insert(name.to_string(), &file, name, info.shape.clone());
            }
        }
        Ok(weights)
    }

    /// Adds `name` for the tensor `stored` of `file` (which must hold it), seen with `shape`.
    /// The first insertion of a name wins.
    pub(crate) fn insert(
        &mut self,
        name: String,
        file: &Arc<SafetensorsFile>,
        stored: &str,
        shape: Vec<usize>,
    ) {
        self.insert_entry(name, file, stored, shape, (None, false));
    }

    /// Adds `name` for the transpose of the 2-D tensor `stored` of `file` (ignored when it is
    /// not 2-D: the name is then missing, and the loader says so).
    pub(crate) fn insert_transposed(
        &mut self,
        name: String,
        file: &Arc<SafetensorsFile>,
        stored: &str,
    ) {
        let Some(&[r, c]) = file.tensor_info(stored).map(|i| i.shape.as_slice()) else {
            return;
        };
        self.insert_entry(name, file, stored, vec![c, r], (None, true));
    }

    /// Adds `name` for the `i`-th of `n` equal parts of the tensor `stored` along its first
    /// axis (whose length `n` must divide); its shape is the stored one with that axis / n.
    pub(crate) fn insert_part(
        &mut self,
        name: String,
        file: &Arc<SafetensorsFile>,
        stored: &str,
        (i, n): (usize, usize),
    ) {
        let Some(info) = file.tensor_info(stored) else {
            return;
        };
        let mut shape = info.shape.clone();
        if let Some(first) = shape.first_mut() {
            *first /= n.max(1);
        }
        self.insert_entry(name, file, stored, shape, (Some((i, n)), false));
    }

    fn insert_entry(
        &mut self,
        name: String,
        file: &Arc<SafetensorsFile>,
        stored: &str,
        shape: Vec<usize>,
        (part, transposed): (Option<(usize, usize)>, bool),
    ) {
        let idx = match self.files.iter().position(|f| Arc::ptr_eq(f, file)) {
            Some(i) => i,
            None => {
                self.files.push(Arc::clone(file));
                self.files.len() - 1
            }
        };
        self.entries.entry(name).or_insert(Entry {
            file: idx,
            stored: stored.to_string(),
            shape,
            part,
            transposed,
        });
    }

    /// The tensor `name` as f32, checked to have `expected` shape.
    pub fn get(&self, name: &str, expected: impl Into<Shape>) -> Result<Tensor> {
        let (entry, raw, file) = self.locate(name, expected.into())?;
        let data = st::to_f32(raw.dtype, Self::bytes(entry, raw, file))
            .ok_or_else(|| self.bad_dtype(name, entry, raw))?;
        Tensor::from_f32(entry.shape.clone(), Self::oriented(entry, data))
    }

    /// The tensor `name` as f16 (f32 and bf16 weights rounded to nearest), checked to have
    /// `expected` shape.
    pub fn get_f16(&self, name: &str, expected: impl Into<Shape>) -> Result<Tensor> {
        let (entry, raw, file) = self.locate(name, expected.into())?;
        let data = st::to_f16(raw.dtype, Self::bytes(entry, raw, file))
            .ok_or_else(|| self.bad_dtype(name, entry, raw))?;
        Tensor::from_f16(entry.shape.clone(), Self::oriented(entry, data))
    }

    /// The elements in `entry`'s orientation: transposed back where it is stored transposed.
    fn oriented<T: Copy>(entry: &Entry, data: Vec<T>) -> Vec<T> {
        match (entry.transposed, entry.shape.as_slice()) {
            (true, &[rows, cols]) => (0..rows * cols)
                .map(|k| data[(k % cols) * rows + k / cols])
                .collect(),
            _ => data,
        }
    }

    /// The stored bytes of `entry`: the whole tensor, or its part.
    fn bytes<'f>(entry: &Entry, raw: &st::RawTensor, file: &'f SafetensorsFile) -> &'f [u8] {
        let all = file.bytes(raw);
        match entry.part {
            Some((i, n)) if n > 0 => {
                let len = all.len() / n;
                &all[i * len..(i + 1) * len]
            }
            _ => all,
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// The shape of `name` (as `get` returns it), without reading the data.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.entries.get(name).map(|e| e.shape.as_slice())
    }

    /// Every name, sorted.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// The names that start with `prefix`, sorted.
    pub fn keys_with_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = &'a str> {
        self.entries
            .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
            .map(|(k, _)| k.as_str())
            .take_while(move |k| k.starts_with(prefix))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The files these weights come from.
    pub fn files(&self) -> impl Iterator<Item = &Path> {
        self.files.iter().map(|f| f.path())
    }

    /// Where `name` is stored: the file and the name inside it.
    pub fn source_of(&self, name: &str) -> Option<(&Path, &str)> {
        let e = self.entries.get(name)?;
        Some((self.files[e.file].path(), e.stored.as_str()))
    }

    /// The shape of `name`, or the missing-tensor error that names it and the files.
    pub fn require_shape(&self, name: &str) -> std::result::Result<&[usize], CheckpointError> {
        self.shape(name).ok_or_else(|| self.missing(name))
    }

    /// The files, for messages: "a.safetensors" or "a.safetensors, b.safetensors".
    pub fn describe_files(&self) -> String {
        if self.files.is_empty() {
            return "these weights (no file holds them)".into();
        }
        let names: Vec<String> = self.files().map(|p| p.display().to_string()).collect();
        names.join(", ")
    }

    fn missing(&self, name: &str) -> CheckpointError {
        CheckpointError::MissingTensor {
            key: name.to_string(),
            stored: None,
            file: self.describe_files(),
        }
    }

    fn stored_note(name: &str, entry: &Entry) -> Option<String> {
        (entry.stored != name).then(|| entry.stored.clone())
    }

    fn locate(
        &self,
        name: &str,
        expected: Shape,
    ) -> std::result::Result<(&Entry, &st::RawTensor, &SafetensorsFile), CheckpointError> {
        let entry = self.entries.get(name).ok_or_else(|| self.missing(name))?;
        let file = &self.files[entry.file];
        let raw =
            file.tensor_info(&entry.stored)
                .ok_or_else(|| CheckpointError::MissingTensor {
                    key: name.to_string(),
                    stored: Self::stored_note(name, entry),
                    file: file.path().display().to_string(),
                })?;
        let split_evenly = match entry.part {
            Some((i, n)) => i < n && raw.shape.first().is_some_and(|d| d % n == 0),
            None => true,
        };
        if !split_evenly || entry.shape.as_slice() != expected.dims() {
            return Err(CheckpointError::WrongShape {
                key: name.to_string(),
                stored: Self::stored_note(name, entry),
                file: file.path().display().to_string(),
                got: Shape::new(if split_evenly {
                    entry.shape.clone()
                } else {
                    raw.shape.clone()
                }),
                expected,
            });
        }
        Ok((entry, raw, file))
    }

    fn bad_dtype(&self, name: &str, entry: &Entry, raw: &st::RawTensor) -> crate::Error {
        CheckpointError::UnsupportedDtype {
            key: name.to_string(),
            stored: Self::stored_note(name, entry),
            file: self.files[entry.file].path().display().to_string(),
            dtype: format!("{:?}", raw.dtype),
        }
        .into()
    }
}
