//! TensorBoard event files, written by hand: no protobuf or TensorFlow dependency.
//!
//! A file `events.out.tfevents.<unix secs>.<hostname>.<pid>.lorafuse` in the log folder is a
//! sequence of TFRecords, each
//!
//!   u64 length (LE) | u32 masked CRC32C of those 8 bytes (LE) | data | u32 masked CRC32C of data
//!
//! with mask(c) = ((c >> 15) | (c << 17)) + 0xa282ead8 (tensorflow/core/lib/hash/crc32c.h),
//! and each record's data a serialised `tensorflow.Event` (tensorboard/compat/proto/event.proto,
//! summary.proto):
//!
//!   Event   { double wall_time = 1; int64 step = 2; string file_version = 3;
//!             Summary summary = 5; }
//!   Summary { repeated Value value = 1; }
//!   Value   { string tag = 1; float simple_value = 2; Image image = 4;
//!             SummaryMetadata metadata = 9; }
//!   Image   { int32 height = 1; int32 width = 2; int32 colorspace = 3;
//!             bytes encoded_image_string = 4; }          (colorspace 3: RGB)
//!   SummaryMetadata { string summary_description = 3; }
//!
//! The first record is the file-version event ("brain.Event:2"); then one event per scalar
//! or image. An image is TensorBoard's legacy image summary (what `tf.summary.image` wrote
//! in TF 1), which TensorBoard shows in its Images tab; its description is shown beside it.
//! Protobuf wire format: a field is a varint key (number << 3 | wire type), then a varint
//! (type 0), 8 little-endian bytes (type 1), a varint length and the bytes (type 2), or 4
//! little-endian bytes (type 5).

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

// ---------------------------------------------------------------------------------------------
// CRC32C (Castagnoli): reflected polynomial 0x82F63B78, initial and final XOR 0xFFFFFFFF.

const fn crc32c_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0x82F6_3B78
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
}

static CRC32C_TABLE: [u32; 256] = crc32c_table();

/// CRC-32C of `data`.
pub fn crc32c(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c = CRC32C_TABLE[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

/// TFRecord's masked CRC.
pub fn masked_crc32c(data: &[u8]) -> u32 {
    let c = crc32c(data);
    c.rotate_right(15).wrapping_add(0xa282_ead8)
}

// ---------------------------------------------------------------------------------------------
// Protobuf encoding

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn key(out: &mut Vec<u8>, field: u32, wire_type: u8) {
    varint(out, (u64::from(field) << 3) | u64::from(wire_type));
}

fn bytes_field(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    key(out, field, 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// An `Event` with wall_time and step, plus the given already-encoded fields.
fn event(wall_time: f64, step: i64, rest: &[u8]) -> Vec<u8> {
    let mut e = Vec::with_capacity(rest.len() + 24);
    key(&mut e, 1, 1);
    e.extend_from_slice(&wall_time.to_le_bytes());
    if step != 0 {
        key(&mut e, 2, 0);
        // int64: negative values are 10-byte two's complement varints.
        varint(&mut e, step as u64);
    }
    e.extend_from_slice(rest);
    e
}

/// The serialised file-version event.
pub fn file_version_event(wall_time: f64) -> Vec<u8> {
    let mut rest = Vec::new();
    bytes_field(&mut rest, 3, b"brain.Event:2");
    event(wall_time, 0, &rest)
}

fn int32_field(out: &mut Vec<u8>, field: u32, v: i32) {
    key(out, field, 0);
    // int32: negative values are 10-byte two's complement varints, as int64's.
    varint(out, i64::from(v) as u64);
}

/// An `Event` at `step` whose summary holds the one encoded `Value` `value`.
fn summary_event(value: &[u8], step: i64, wall_time: f64) -> Vec<u8> {
    let mut summary = Vec::with_capacity(value.len() + 4);
    bytes_field(&mut summary, 1, value);
    let mut rest = Vec::with_capacity(summary.len() + 4);
    bytes_field(&mut rest, 5, &summary);
    event(wall_time, step, &rest)
}

/// The serialised `Event { wall_time, step, summary { value { tag, simple_value } } }`.
pub fn scalar_event(tag: &str, step: i64, value: f32, wall_time: f64) -> Vec<u8> {
    let mut v = Vec::with_capacity(tag.len() + 8);
    bytes_field(&mut v, 1, tag.as_bytes());
    key(&mut v, 2, 5);
    v.extend_from_slice(&value.to_le_bytes());
    summary_event(&v, step, wall_time)
}

/// An encoded image for [`image_event`].
pub struct EncodedImage<'a> {
    /// PNG bytes.
    pub png: &'a [u8],
    pub width: u32,
    pub height: u32,
}

/// The serialised `Event { wall_time, step, summary { value { tag, image { height, width,
/// colorspace: RGB, encoded_image_string }, metadata { summary_description } } } }`; an empty
/// description is left out.
pub fn image_event(
    tag: &str,
    step: i64,
    image: &EncodedImage,
    description: &str,
    wall_time: f64,
) -> Vec<u8> {
    let clamp = |n: u32| i32::try_from(n).unwrap_or(i32::MAX);
    let mut img = Vec::with_capacity(image.png.len() + 24);
    int32_field(&mut img, 1, clamp(image.height));
    int32_field(&mut img, 2, clamp(image.width));
    int32_field(&mut img, 3, 3);
    bytes_field(&mut img, 4, image.png);
    let mut v = Vec::with_capacity(img.len() + tag.len() + description.len() + 16);
    bytes_field(&mut v, 1, tag.as_bytes());
    bytes_field(&mut v, 4, &img);
    if !description.is_empty() {
        let mut meta = Vec::with_capacity(description.len() + 4);
        bytes_field(&mut meta, 3, description.as_bytes());
        bytes_field(&mut v, 9, &meta);
    }
    summary_event(&v, step, wall_time)
}

/// One TFRecord around `data`.
pub fn tfrecord(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut r = Vec::with_capacity(data.len() + 16);
    r.extend_from_slice(&len);
    r.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
    r.extend_from_slice(data);
    r.extend_from_slice(&masked_crc32c(data).to_le_bytes());
    r
}

/// Seconds since the Unix epoch, now.
pub fn wall_time_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// This machine's name for the file name, reduced to [A-Za-z0-9._-]; "localhost" if unknown.
fn hostname() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .unwrap_or_default();
    let clean: String = raw
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if clean.is_empty() {
        "localhost".into()
    } else {
        clean
    }
}

/// Appends events to a new event file in a log folder.
pub struct EventWriter {
    path: PathBuf,
    out: BufWriter<File>,
}

impl EventWriter {
    /// Creates `logdir` (and its parents) if needed and a new event file in it, starting with
    /// the file-version event. Never overwrites a file: two writers started in the same
    /// second by one process get `.lorafuse`, `.lorafuse.1`, …
    pub fn create(logdir: impl AsRef<Path>) -> Result<EventWriter> {
        let logdir = logdir.as_ref();
        std::fs::create_dir_all(logdir)
            .map_err(|e| Error::io(logdir, "create the TensorBoard log folder", e))?;
        let now = wall_time_now();
        let base = format!(
            "events.out.tfevents.{}.{}.{}.lorafuse",
            now.floor() as u64,
            hostname(),
            std::process::id()
        );
        let mut last = None;
        for n in 0..1000 {
            let name = if n == 0 {
                base.clone()
            } else {
                format!("{base}.{n}")
            };
            let path = logdir.join(name);
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => {
                    let mut w = EventWriter {
                        path,
                        out: BufWriter::new(file),
                    };
                    w.write_record(&file_version_event(now))?;
                    w.flush()?;
                    return Ok(w);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
                Err(e) => return Err(Error::io(&path, "create the TensorBoard event file", e)),
            }
        }
        Err(Error::io(
            &logdir.join(base),
            "create the TensorBoard event file",
            last.unwrap_or_else(|| std::io::Error::other("no free file name")),
        ))
    }

    /// The event file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write_record(&mut self, data: &[u8]) -> Result<()> {
        self.out
            .write_all(&tfrecord(data))
            .map_err(|e| Error::io(&self.path, "write a TensorBoard event", e))
    }

    /// Logs `value` under `tag` ("loss/train") at `step`, `wall_time` in Unix seconds
    /// ([`wall_time_now`]). Buffered: [`EventWriter::flush`] makes it visible to TensorBoard.
    pub fn add_scalar(&mut self, tag: &str, step: u64, value: f32, wall_time: f64) -> Result<()> {
        let step = i64::try_from(step).unwrap_or(i64::MAX);
        self.write_record(&scalar_event(tag, step, value, wall_time))
    }

    /// Logs a PNG image under `tag` ("samples/00") at `step`, with `description` (the prompt)
    /// shown beside it. Buffered, as [`EventWriter::add_scalar`].
    pub fn add_image(
        &mut self,
        tag: &str,
        step: u64,
        image: &EncodedImage,
        description: &str,
        wall_time: f64,
    ) -> Result<()> {
        let step = i64::try_from(step).unwrap_or(i64::MAX);
        self.write_record(&image_event(tag, step, image, description, wall_time))
    }

    /// Hands buffered events to the operating system.
    pub fn flush(&mut self) -> Result<()> {
        self.out
            .flush()
            .map_err(|e| Error::io(&self.path, "write TensorBoard events", e))
    }
}

impl Drop for EventWriter {
    fn drop(&mut self) {
        let _ = self.out.flush();
    }
}
