//! Writing safetensors files (a LoRA, a merged checkpoint) through [`AtomicFile`], streamed
//! tensor by tensor so that a 4 GB checkpoint never has to sit in memory.
//!
//! The file is what the `safetensors` crate's `serialize` writes, byte for byte apart from the
//! order of the header's JSON keys: u64 header length N, N bytes of JSON padded with spaces
//! to a multiple of 8, then the tensors' bytes in the crate's order (descending dtype, then
//! name; `prepare` in safetensors/src/tensor.rs), which is also the order Python's
//! `safetensors.torch.save` produces. The header is assembled from the crate's own
//! [`Metadata`] (which checks that the offsets tile the data and match dtype × shape) and
//! [`TensorInfo`], but with its keys in sorted order, so that the same LoRA always gives the
//! same bytes (the crate writes `__metadata__` from a `HashMap`, in random order). Readers
//! do not care about the order; kohya's hashes depend only on the header's length and the
//! tensor bytes, not on the key order.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use safetensors::tensor::{Dtype, Metadata, TensorInfo};

use crate::atomic::AtomicFile;
use crate::error::{Error, Result};

/// The safetensors crate's limit on the header (100 MB).
const MAX_HEADER_BYTES: usize = 100_000_000;

/// A tensor's bytes (little-endian, row-major).
pub(crate) enum Data<'a> {
    /// Bytes that exist already (a slice of a memory-mapped input).
    Borrowed(&'a [u8]),
    Owned(Vec<u8>),
    /// Computed when the tensor's turn comes, so that only one such tensor is in memory.
    Lazy(Box<dyn FnOnce() -> Result<Vec<u8>> + 'a>),
}

pub(crate) struct OutTensor<'a> {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Data<'a>,
}

impl OutTensor<'_> {
    /// dtype × shape in bytes, None on overflow or for sub-byte sizes.
    pub fn byte_len(&self) -> Option<usize> {
        let n = self
            .shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))?;
        let bits = n.checked_mul(self.dtype.bitsize())?;
        (bits % 8 == 0).then_some(bits / 8)
    }
}

/// The safetensors crate's serialisation order: descending dtype, then name.
pub(crate) fn sort_canonical(tensors: &mut [OutTensor<'_>]) {
    tensors.sort_by(|a, b| b.dtype.cmp(&a.dtype).then_with(|| a.name.cmp(&b.name)));
}

/// The first 8 + N bytes of the file for `tensors` in this order, with `metadata` as
/// `__metadata__` (omitted when empty, like the crate with `None`). `path` names the file in
/// errors.
pub(crate) fn header_bytes(
    path: &Path,
    tensors: &[OutTensor<'_>],
    metadata: &BTreeMap<String, String>,
) -> Result<Vec<u8>> {
    let bad = |detail: String| Error::Lora {
        path: path.to_path_buf(),
        detail,
    };
    let mut seen = HashSet::with_capacity(tensors.len());
    let mut infos = Vec::with_capacity(tensors.len());
    let mut offset = 0usize;
    for t in tensors {
        if !seen.insert(t.name.as_str()) {
            return Err(bad(format!("two tensors are named `{}`", t.name)));
        }
        let len = t.byte_len().ok_or_else(|| {
            bad(format!(
                "tensor `{}` of shape {:?} and dtype {:?} has no whole byte size",
                t.name, t.shape, t.dtype
            ))
        })?;
        let end = offset
            .checked_add(len)
            .ok_or_else(|| bad("the tensors' total size overflows".into()))?;
        let info = TensorInfo {
            dtype: t.dtype,
            shape: t.shape.clone(),
            data_offsets: (offset, end),
        };
        infos.push((t.name.clone(), info));
        offset = end;
    }
    // The crate's own validation of what its reader will see.
    Metadata::new(None, infos.clone())
        .map_err(|e| bad(format!("the safetensors header would be invalid: {e}")))?;

    let json_err = |e: serde_json::Error| bad(format!("cannot encode the header as JSON: {e}"));
    let mut map = serde_json::Map::new();
    if !metadata.is_empty() {
        map.insert(
            "__metadata__".into(),
            serde_json::to_value(metadata).map_err(json_err)?,
        );
    }
    for (name, info) in infos {
        map.insert(name, serde_json::to_value(&info).map_err(json_err)?);
    }
    let mut json = serde_json::to_vec(&map).map_err(json_err)?;
    json.resize(json.len().next_multiple_of(8), b' ');
    if json.len() > MAX_HEADER_BYTES {
        return Err(bad(format!(
            "the header would be {} bytes, more than the 100 MB safetensors allows (is the \
             metadata that large?)",
            json.len()
        )));
    }
    let mut out = Vec::with_capacity(8 + json.len());
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    Ok(out)
}

/// Writes `tensors` (sorted here into the canonical order) and `metadata` to `path`
/// atomically. Returns the file's size.
pub(crate) fn write_safetensors(
    path: &Path,
    mut tensors: Vec<OutTensor<'_>>,
    metadata: &BTreeMap<String, String>,
) -> Result<u64> {
    sort_canonical(&mut tensors);
    let header = header_bytes(path, &tensors, metadata)?;
    let mut file = AtomicFile::create(path)?;
    file.write_bytes(&header)?;
    let mut size = header.len() as u64;
    for t in tensors {
        let want = t.byte_len().unwrap_or(0);
        let name = t.name;
        let bytes = match t.data {
            Data::Borrowed(b) => std::borrow::Cow::Borrowed(b),
            Data::Owned(v) => std::borrow::Cow::Owned(v),
            Data::Lazy(f) => std::borrow::Cow::Owned(f()?),
        };
        if bytes.len() != want {
            return Err(Error::io(
                path,
                "write it",
                std::io::Error::other(format!(
                    "internal error: tensor `{name}` has {} bytes, its header says {want}",
                    bytes.len()
                )),
            ));
        }
        file.write_bytes(&bytes)?;
        size += want as u64;
    }
    file.commit()?;
    Ok(size)
}

/// Writes tensors as f32 (u8 tensors as bytes) and `metadata` to `path` atomically (the
/// training state, the demo's model files).
pub(crate) fn write_f32_safetensors(
    path: &Path,
    tensors: &[(String, &crate::tensor::Tensor)],
    metadata: &BTreeMap<String, String>,
) -> Result<u64> {
    let out = tensors
        .iter()
        .map(|(name, t)| {
            let values = t.to_f32_vec();
            let (dtype, data) = if t.dtype() == crate::tensor::DType::U8 {
                (Dtype::U8, values.iter().map(|&x| x as u8).collect())
            } else {
                (
                    Dtype::F32,
                    values.iter().flat_map(|x| x.to_le_bytes()).collect(),
                )
            };
            OutTensor {
                name: name.clone(),
                dtype,
                shape: t.dims().to_vec(),
                data: Data::Owned(data),
            }
        })
        .collect();
    write_safetensors(path, out, metadata)
}
