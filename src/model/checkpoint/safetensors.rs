//! One memory-mapped `.safetensors` file: the header parsed with the `safetensors` crate, the
//! tensor bytes left in the map until a tensor is requested, then converted (F32, F16, BF16
//! or F64 on disk) into an owned f32 or f16 [`Tensor`](crate::Tensor).
//!
//! Memory mapping: nothing is read until asked for, so opening a 4 GB checkpoint costs its
//! header. A view into the map ([`SafetensorsFile::bytes`]) borrows it, so the map must
//! outlive the view (the borrow checker holds us to that); [`super::Weights::get`] and
//! `get_f16` convert with [`to_f32`] / [`to_f16`] into an owned `Tensor`, and the file stays
//! mapped for as long as a `Weights` holds it (an `Arc`).
//!
//! The format: 8 bytes little-endian header length N, N bytes of JSON
//! (`{"name": {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}`), then
//! the tensor bytes, little-endian, offsets relative to the end of the header, contiguous.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use memmap2::Mmap;
use safetensors::tensor::{Dtype, Metadata, SafeTensorError, SafeTensors};

use super::detect;
use super::error::CheckpointError;

/// The safetensors crate's limit on the JSON header (100 MB).
const MAX_HEADER_BYTES: u64 = 100_000_000;

/// Where one tensor lies in the map.
#[derive(Clone, Debug)]
pub struct RawTensor {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// Byte range in the whole file (header included), checked to lie inside it.
    pub start: usize,
    pub end: usize,
}

/// An open, validated safetensors file.
#[derive(Debug)]
pub struct SafetensorsFile {
    path: PathBuf,
    map: Mmap,
    tensors: HashMap<String, RawTensor>,
    metadata: HashMap<String, String>,
}

impl SafetensorsFile {
    /// Maps the file and checks its header; refuses pickle files, truncated files and
    /// anything else that is not safetensors, naming the file.
    pub fn open(path: &Path) -> Result<SafetensorsFile, CheckpointError> {
        let io = |action, source| CheckpointError::Io {
            path: path.to_path_buf(),
            action,
            source,
        };
        let file = File::open(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => CheckpointError::NotFound {
                path: path.to_path_buf(),
            },
            _ => io("open the file", e),
        })?;
        let meta = file.metadata().map_err(|e| io("read the file's size", e))?;
        if meta.is_dir() {
            // Opening a folder succeeds on Unix; mapping it fails with "No such device".
            return Err(CheckpointError::NotSafetensors {
                path: path.to_path_buf(),
                detail: "it is a folder; pass the .safetensors file itself".into(),
            });
        }
        let len = meta.len();
        if len == 0 {
            return Err(CheckpointError::Truncated {
                path: path.to_path_buf(),
                detail: "it is empty (0 bytes)".into(),
            });
        }
        // SAFETY: the map is read-only and owned by this value, and every access is a
        // bounds-checked slice of it. What `Mmap::map` cannot promise is that the file stays
        // as it is: like every reader of memory-mapped files, we assume no other process
        // truncates or rewrites a checkpoint while lorafuse has it open.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| io("memory-map the file", e))?;
        let (tensors, metadata) = parse(path, &map)?;
        Ok(SafetensorsFile {
            path: path.to_path_buf(),
            map,
            tensors,
            metadata,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every tensor name in the file, in no particular order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    pub fn tensor_info(&self, name: &str) -> Option<&RawTensor> {
        self.tensors.get(name)
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// The header's `__metadata__` (string to string), empty when absent.
    pub fn metadata(&self) -> &HashMap<String, String> {
        &self.metadata
    }

    /// The raw little-endian bytes of a tensor, borrowed from the map.
    pub fn bytes(&self, raw: &RawTensor) -> &[u8] {
        &self.map[raw.start..raw.end]
    }
}

/// Converts stored elements to f32. None for a dtype lorafuse does not read.
pub fn to_f32(dtype: Dtype, bytes: &[u8]) -> Option<Vec<f32>> {
    Some(match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        // bf16 is the upper half of an f32: exact, NaN payloads included.
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|b| f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16))
            .collect(),
        Dtype::F64 => bytes
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as f32)
            .collect(),
        _ => return None,
    })
}

/// Converts stored elements to f16: F16 as is; F32, F64 and BF16 rounded to nearest even
/// (values beyond ±65504 become ±inf, as in PyTorch's `.half()`).
pub fn to_f16(dtype: Dtype, bytes: &[u8]) -> Option<Vec<f16>> {
    Some(match dtype {
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|b| f16::from_le_bytes([b[0], b[1]]))
            .collect(),
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|b| f16::from_f32(f32::from_le_bytes([b[0], b[1], b[2], b[3]])))
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|b| f16::from_f32(bf16::from_le_bytes([b[0], b[1]]).to_f32()))
            .collect(),
        Dtype::F64 => bytes
            .chunks_exact(8)
            .map(|b| f16::from_f64(f64::from_le_bytes(b.try_into().unwrap_or([0; 8]))))
            .collect(),
        _ => return None,
    })
}

type Parsed = (HashMap<String, RawTensor>, HashMap<String, String>);

/// Checks the framing first, so that the common failures get their own message (a pickle, a
/// truncated download, some other file), then lets the safetensors crate validate the header.
fn parse(path: &Path, buf: &[u8]) -> Result<Parsed, CheckpointError> {
    let len = buf.len() as u64;
    let not_st = |detail: String| CheckpointError::NotSafetensors {
        path: path.to_path_buf(),
        detail,
    };
    let truncated = |detail: String| CheckpointError::Truncated {
        path: path.to_path_buf(),
        detail,
    };
    detect::refuse_pickle(path, buf)?;
    if len < 8 {
        return Err(truncated(format!(
            "it has {len} bytes, fewer than the 8-byte header length that starts every \
             safetensors file"
        )));
    }
    let n = u64::from_le_bytes(buf[..8].try_into().unwrap_or([0xff; 8]));
    if n > MAX_HEADER_BYTES {
        return Err(not_st(format!(
            "its first 8 bytes give a header length of {n} bytes, more than the format allows \
             ({MAX_HEADER_BYTES})"
        )));
    }
    if len > 8 && buf[8] != b'{' {
        return Err(not_st(format!(
            "its header should be JSON starting with '{{' at byte 8, found byte 0x{:02x}",
            buf[8]
        )));
    }
    if 8 + n > len {
        return Err(truncated(format!(
            "its first 8 bytes say the JSON header is {n} bytes long, but only {} bytes follow",
            len - 8
        )));
    }
    let metadata = match SafeTensors::read_metadata(buf) {
        Ok((_, metadata)) => metadata,
        Err(SafeTensorError::MetadataIncompleteBuffer) => {
            // The header is valid but the data does not end where the file ends: re-read
            // the header on its own to say by how much.
            let header = &buf[8..8 + n as usize];
            let need = serde_json::from_slice::<Metadata>(header)
                .map(|m| 8 + n + m.data_len() as u64)
                .map_err(|e| not_st(format!("invalid header: {e}")))?;
            return Err(if need > len {
                truncated(format!(
                    "its header describes {need} bytes but the file has {len} ({} bytes \
                     missing)",
                    need - len
                ))
            } else {
                not_st(format!(
                    "{} unexpected bytes follow the last tensor (the header describes {need} \
                     bytes, the file has {len})",
                    len - need
                ))
            });
        }
        Err(SafeTensorError::InvalidOffset(name)) => {
            return Err(not_st(format!(
                "tensor `{name}` has data_offsets that do not follow the previous tensor's \
                 (they must tile the data section in order)"
            )))
        }
        Err(e) => return Err(not_st(format!("invalid header: {e}"))),
    };
    let base = 8 + n as usize;
    let tensors = metadata
        .tensors()
        .into_iter()
        .map(|(name, info)| {
            let (s, e) = info.data_offsets;
            let raw = RawTensor {
                dtype: info.dtype,
                shape: info.shape.clone(),
                start: base + s,
                end: base + e,
            };
            (name, raw)
        })
        .collect::<HashMap<_, _>>();
    // read_metadata checked that the offsets tile exactly [0, file end - base).
    debug_assert!(tensors.values().all(|t| t.end <= buf.len()));
    let meta = metadata.metadata().clone().unwrap_or_default();
    Ok((tensors, meta.into_iter().collect()))
}
