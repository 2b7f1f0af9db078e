//! SHA-256 (FIPS 180-4) and the model hashes the Stable Diffusion tools compute with it:
//!
//! - AUTOMATIC1111's old model hash (`ss_sd_model_hash`, "legacy"): SHA-256 of the 64 KiB at
//!   offset 1 MiB of the file, first 8 hex digits ([`model_hash_legacy`]);
//! - the full-file SHA-256 (`ss_new_sd_model_hash`; A1111's "AutoV2" is its first 10 digits,
//!   [`sha256_file`]);
//! - sd-webui-additional-networks' hashes of a safetensors file, which kohya precomputes into
//!   `sshs_model_hash` (SHA-256 of everything after the header, the tensor bytes) and
//!   `sshs_legacy_hash` (the legacy hash of the file) — see `export.rs`.
//!
//! Written here rather than taken from a crate: it is 80 lines, checked against the FIPS
//! test vectors. Speed: about 150 MB/s on one core of the build machine, so about 30 s for
//! a 4 GB model (a SHA-NI implementation would be ~10x faster; hashing the base model happens
//! once per run).

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use crate::error::{Error, Result};

const K: [u32; 64] = [
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
];

const H0: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];

/// An incremental SHA-256.
#[derive(Clone, Debug)]
pub struct Sha256 {
    state: [u32; 8],
    block: [u8; 64],
    /// Bytes waiting in `block`.
    filled: usize,
    /// Bytes hashed so far (the message length, mod 2^64 bytes).
    len: u64,
}

impl Default for Sha256 {
    fn default() -> Self {
        Sha256::new()
    }
}

impl Sha256 {
    pub fn new() -> Sha256 {
        Sha256 {
            state: H0,
            block: [0; 64],
            filled: 0,
            len: 0,
        }
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.len = self.len.wrapping_add(data.len() as u64);
        if self.filled > 0 {
            let take = (64 - self.filled).min(data.len());
            self.block[self.filled..self.filled + take].copy_from_slice(&data[..take]);
            self.filled += take;
            data = &data[take..];
            if self.filled < 64 {
                return;
            }
            let block = self.block;
            compress(&mut self.state, &block);
            self.filled = 0;
        }
        let mut chunks = data.chunks_exact(64);
        for chunk in &mut chunks {
            let mut block = [0u8; 64];
            block.copy_from_slice(chunk);
            compress(&mut self.state, &block);
        }
        let rest = chunks.remainder();
        self.block[..rest.len()].copy_from_slice(rest);
        self.filled = rest.len();
    }

    /// The digest: pad with 0x80, zeros, and the bit length as a big-endian u64.
    pub fn finalize(mut self) -> [u8; 32] {
        let bits = self.len.wrapping_mul(8);
        let mut pad = [0u8; 72];
        pad[0] = 0x80;
        let zeros = (55usize.wrapping_sub(self.filled)) % 64;
        self.update(&pad[..1 + zeros]);
        self.update(&bits.to_be_bytes());
        debug_assert_eq!(self.filled, 0);
        let mut out = [0u8; 32];
        for (o, s) in out.chunks_exact_mut(4).zip(self.state) {
            o.copy_from_slice(&s.to_be_bytes());
        }
        out
    }

    /// The digest as 64 lowercase hex digits.
    pub fn finalize_hex(self) -> String {
        hex(&self.finalize())
    }
}

fn compress(state: &mut [u32; 8], block: &[u8; 64]) {
    let mut w = [0u32; 64];
    for (i, b) in block.chunks_exact(4).enumerate() {
        w[i] = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    }
    for t in 16..64 {
        let s0 = w[t - 15].rotate_right(7) ^ w[t - 15].rotate_right(18) ^ (w[t - 15] >> 3);
        let s1 = w[t - 2].rotate_right(17) ^ w[t - 2].rotate_right(19) ^ (w[t - 2] >> 10);
        w[t] = w[t - 16]
            .wrapping_add(s0)
            .wrapping_add(w[t - 7])
            .wrapping_add(s1);
    }
    let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut h] = *state;
    for t in 0..64 {
        let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
        let ch = (e & f) ^ (!e & g);
        let t1 = h
            .wrapping_add(s1)
            .wrapping_add(ch)
            .wrapping_add(K[t])
            .wrapping_add(w[t]);
        let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
        let maj = (a & b) ^ (a & c) ^ (b & c);
        let t2 = s0.wrapping_add(maj);
        h = g;
        g = f;
        f = e;
        e = d.wrapping_add(t1);
        d = c;
        c = b;
        b = a;
        a = t1.wrapping_add(t2);
    }
    for (s, v) in state.iter_mut().zip([a, b, c, d, e, f, g, h]) {
        *s = s.wrapping_add(v);
    }
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// SHA-256 of `bytes`, as hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(bytes);
    h.finalize_hex()
}

/// Where the legacy hash looks: 64 KiB at 1 MiB.
pub const LEGACY_OFFSET: u64 = 0x10_0000;
pub const LEGACY_LEN: u64 = 0x1_0000;

fn open(path: &Path) -> Result<std::fs::File> {
    std::fs::File::open(path).map_err(|e| Error::io(path, "open it to hash it", e))
}

/// The full-file SHA-256 as 64 hex digits (A1111's "new" model hash, kohya's
/// `ss_new_sd_model_hash`).
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| Error::io(path, "read it to hash it", e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize_hex())
}

/// A1111's old model hash (kohya's `ss_sd_model_hash`): the first 8 hex digits of the SHA-256
/// of the (up to) 64 KiB that start 1 MiB into the file. A file shorter than 1 MiB hashes the
/// empty string, as Python's `seek` + `read` do.
pub fn model_hash_legacy(path: &Path) -> Result<String> {
    let mut f = open(path)?;
    f.seek(SeekFrom::Start(LEGACY_OFFSET))
        .map_err(|e| Error::io(path, "seek in it to hash it", e))?;
    let mut buf = Vec::with_capacity(LEGACY_LEN as usize);
    f.take(LEGACY_LEN)
        .read_to_end(&mut buf)
        .map_err(|e| Error::io(path, "read it to hash it", e))?;
    Ok(legacy_hash_of_window(&buf))
}

/// The legacy hash of the bytes found at [`LEGACY_OFFSET`] (at most [`LEGACY_LEN`] of them).
pub fn legacy_hash_of_window(window: &[u8]) -> String {
    let mut hex = sha256_hex(window);
    hex.truncate(8);
    hex
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_boundaries_agree_with_one_shot() {
        // Lengths around the 55/56/64-byte padding edges, fed in pieces of every size.
        let data: Vec<u8> = (0..200u32).map(|i| (i * 7 + 3) as u8).collect();
        for len in [0, 1, 54, 55, 56, 57, 63, 64, 65, 119, 120, 128, 200] {
            let want = sha256_hex(&data[..len]);
            for piece in [1, 3, 63, 64, 65] {
                let mut h = Sha256::new();
                for c in data[..len].chunks(piece) {
                    h.update(c);
                }
                assert_eq!(h.finalize_hex(), want, "len {len} piece {piece}");
            }
        }
    }
}
