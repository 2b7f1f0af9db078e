//! What the UNet trains on, computed once: the VAE latents of every image (and of its mirror
//! image under flip_aug), in host memory and optionally on disk keyed by the image's content,
//! and the text embeddings of every caption string met, in memory.
//!
//! Latents are a draw from the VAE posterior (as kohya caches them), with noise from a
//! generator seeded by the image's content hash: the same image gives the same latents in every
//! run, which keeps runs and resumes reproducible. They are kept as f32 on the host as the VAE
//! computed them (in f32 with `no_half_vae`), as sd-scripts keeps them, and put on the device
//! in its compute dtype batch by batch ([`stack_latents`]). Non-finite latents (SDXL 1.0's VAE
//! in f16 overflows) are refused, naming the image and the fix.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::backend::Backend;
use crate::data::{load_pixels, DataOptions, Item};
use crate::error::{Error, Result};
use crate::model::cond::TextCond;
use crate::model::family::Models;
use crate::model::layers::Ctx;
use crate::model::tokenizer::Tokenizer;
use crate::model::vae::Vae;
use crate::rng::Rng;
use crate::tensor::{DType, Tensor};

/// Where an image's pixels come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pixels {
    /// The image file, decoded, resized and cropped to its bucket (training).
    Files,
    /// Zeros of the bucket's size (`plan` on the memory meter: the same buffers, no files).
    Blank,
}

/// Which latent: an image of the training set (or of the validation set), mirrored or not.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LatentKey {
    pub index: usize,
    pub validation: bool,
    pub flipped: bool,
}

/// Latents by [`LatentKey`], host f32 tensors.
pub struct LatentCache {
    map: HashMap<LatentKey, Tensor>,
    disk: Option<PathBuf>,
    /// The data options the pixels are made with (flip and random crop are decided here).
    opts: DataOptions,
    pixels: Pixels,
}

impl LatentCache {
    /// `disk`: a folder for latent files (cache_latents_to_disk), or None for memory only.
    pub fn new(disk: Option<PathBuf>, opts: &DataOptions, pixels: Pixels) -> Result<Self> {
        if let Some(d) = &disk {
            std::fs::create_dir_all(d)
                .map_err(|e| Error::io(d, "create the latent cache folder", e))?;
        }
        Ok(LatentCache {
            map: HashMap::new(),
            disk,
            opts: opts.clone(),
            pixels,
        })
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The latents [1, 4, h, w] of `item` (the image `key` names, host f32), encoding it if
    /// needed.
    pub fn get_or_encode(
        &mut self,
        be: &dyn Backend,
        vae: Option<&Vae>,
        key: LatentKey,
        item: &Item,
    ) -> Result<Tensor> {
        if let Some(t) = self.map.get(&key) {
            return Ok(t.clone());
        }
        let flipped = key.flipped;
        let file = self.disk.as_ref().map(|d| {
            d.join(format!(
                "{:016x}{}.latent",
                item.content_hash(),
                if flipped { "-flip" } else { "" }
            ))
        });
        if let Some(t) = file.as_deref().and_then(read_latent) {
            self.map.insert(key, t.clone());
            return Ok(t);
        }
        // The crop is centred (a random crop is drawn per step: `encode_cropped`); only the
        // flip is chosen.
        // (No draw is made for a centred, unmirrored crop: the generator is the noise's.)
        let mut rng = Rng::for_site(self.opts.seed, &[item.content_hash(), flipped as u64]);
        let latents = self.encode(be, vae, item, flipped, false, &mut rng)?;
        if let Some(f) = &file {
            write_latent(f, &latents)?;
        }
        self.map.insert(key, latents.clone());
        Ok(latents)
    }

    /// Fresh latents of `item` with a random crop drawn from `rng` (kohya's `random_crop`,
    /// which sd-scripts cannot cache: lorafuse encodes such images at every step), mirrored
    /// when `flipped`; the posterior's noise from `rng` too. Not cached.
    pub fn encode_cropped(
        &self,
        be: &dyn Backend,
        vae: Option<&Vae>,
        item: &Item,
        flipped: bool,
        rng: &mut Rng,
    ) -> Result<Tensor> {
        self.encode(be, vae, item, flipped, true, rng)
    }

    /// The VAE latents of `item`'s pixels (cropped at random with `random_crop`, else
    /// centred; mirrored when `flipped`), a posterior draw (host f32, finite); the draws from
    /// `rng`.
    fn encode(
        &self,
        be: &dyn Backend,
        vae: Option<&Vae>,
        item: &Item,
        flipped: bool,
        random_crop: bool,
        rng: &mut Rng,
    ) -> Result<Tensor> {
        let vae = vae.ok_or_else(|| Error::BadValue {
            op: "latent cache",
            name: "image",
            value: item.path.display().to_string(),
            expected: "latents cached before the VAE was released".into(),
        })?;
        let cx = Ctx::new(be, None);
        let opts = DataOptions {
            flip_aug: false,
            random_crop,
            ..self.opts.clone()
        };
        let mut pixels = match self.pixels {
            Pixels::Files => load_pixels(item, item.bucket, rng, &opts)?,
            Pixels::Blank => Tensor::zeros([3, item.bucket.1, item.bucket.0], DType::F32),
        };
        if flipped {
            pixels = flip_width(&pixels)?;
        }
        let (c, h, w) = (pixels.dims()[0], pixels.dims()[1], pixels.dims()[2]);
        let image = be.tensor_from_f32(&[1, c, h, w], &pixels.to_f32_vec(), vae.dtype())?;
        let post = vae.encode(&cx, &image)?;
        let eps: Vec<f32> = (0..post.mean.numel())
            .map(|_| rng.normal() as f32)
            .collect();
        let eps = be.tensor_from_f32(post.mean.dims(), &eps, post.mean.dtype())?;
        let latents = vae.latents(&cx, &post, Some(&eps))?;
        let host = be.to_f32_vec(&latents)?;
        if let Some(bad) = host.iter().find(|x| !x.is_finite()) {
            return Err(non_finite(item, *bad, vae.dtype()));
        }
        Tensor::from_f32(latents.dims(), host)
    }
}

/// The refusal of an image whose latents are not finite, with the fix: in f16, the VAE's
/// overflow (SDXL 1.0's VAE); in f32, the image or the model.
fn non_finite(item: &Item, value: f32, dtype: DType) -> Error {
    let expected = if dtype == DType::F16 {
        "finite latents: the VAE overflowed in f16, as SDXL 1.0's VAE does; set \
         `no_half_vae: true` (the VAE in f32), or use a checkpoint carrying the fp16-fix VAE \
         (madebyollin/sdxl-vae-fp16-fix), or `mixed_precision: no`"
    } else {
        "finite latents; the VAE computed in f32, so the image or the model's VAE is damaged"
    };
    Error::BadValue {
        op: "latent cache",
        name: "latents of image",
        value: format!("{} ({value} in {dtype})", item.path.display()),
        expected: expected.into(),
    }
}

/// Host latents [1, C, h, w] of one shape stacked into [N, C, h, w] on `be`, in its compute
/// dtype (the UNet's).
pub fn stack_latents(be: &dyn Backend, parts: &[Tensor]) -> Result<Tensor> {
    let host = stack(&crate::backend::cpu::CpuBackend::new(), parts)?;
    be.tensor_from_f32(host.dims(), &host.to_f32_vec(), be.compute_dtype())
}

/// Mirrors [C, H, W] pixels left to right.
pub fn flip_width(x: &Tensor) -> Result<Tensor> {
    let w = x.dims()[2];
    let v = x.to_f32_vec();
    let out: Vec<f32> = v
        .chunks(w.max(1))
        .flat_map(|row| row.iter().rev().copied())
        .collect();
    Tensor::from_f32(x.shape().clone(), out)
}

/// A latent file: "LFLT", rank (u32), dims (u64 each), f32 data, little-endian.
fn write_latent(path: &Path, t: &Tensor) -> Result<()> {
    let mut b = b"LFLT".to_vec();
    b.extend((t.dims().len() as u32).to_le_bytes());
    for &d in t.dims() {
        b.extend((d as u64).to_le_bytes());
    }
    for x in t.to_f32_vec() {
        b.extend(x.to_le_bytes());
    }
    crate::atomic::write_file(path, &b)
}

/// Reads a latent file; None when it is absent or damaged (it is then encoded again).
fn read_latent(path: &Path) -> Option<Tensor> {
    let b = std::fs::read(path).ok()?;
    if b.get(..4)? != b"LFLT" {
        return None;
    }
    let rank = u32::from_le_bytes(b.get(4..8)?.try_into().ok()?) as usize;
    let mut at = 8;
    let mut dims = Vec::with_capacity(rank);
    for _ in 0..rank.min(8) {
        dims.push(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?) as usize);
        at += 8;
    }
    let n: usize = dims.iter().product();
    let data = b.get(at..at.checked_add(n.checked_mul(4)?)?)?;
    let v = data
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Tensor::from_f32(dims, v).ok()
}

/// Text conditionings by caption: the context [1, L, D] (L = 77, or kohya's 152 / 227 for long
/// captions) and, for SDXL, the pooled text [1, P].
#[derive(Default)]
pub struct TextCache {
    map: HashMap<String, TextCond>,
}

impl TextCache {
    /// The caption's conditioning, encoded by `m`'s frozen text encoder(s) the first time (an
    /// error once they are released).
    pub fn get_or_encode(
        &mut self,
        be: &dyn Backend,
        m: &Models,
        tokenizer: &Tokenizer,
        caption: &str,
        text: TextOptions,
    ) -> Result<TextCond> {
        if let Some(t) = self.map.get(caption) {
            return Ok(t.clone());
        }
        if m.text.is_none() {
            return Err(Error::BadValue {
                op: "text cache",
                name: "caption",
                value: caption.to_string(),
                expected: "a caption encoded before the text encoder was released".into(),
            });
        }
        let enc = tokenizer.encode_long(caption, text.max_token_length);
        let emb = m.encode_text(&Ctx::new(be, None), &enc.ids, 1, text.clip_skip)?;
        self.map.insert(caption.to_string(), emb.clone());
        Ok(emb)
    }
    pub fn len(&self) -> usize {
        self.map.len()
    }
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// Stacks text conditionings of one caption each into one of N.
pub fn stack_text(be: &dyn Backend, parts: &[TextCond]) -> Result<TextCond> {
    let contexts: Vec<&Tensor> = parts.iter().map(|p| &p.context).collect();
    let pooled: Option<Vec<&Tensor>> = parts.iter().map(|p| p.pooled.as_ref()).collect();
    Ok(TextCond {
        context: stack(be, &contexts)?,
        pooled: match pooled {
            Some(p) if !p.is_empty() => Some(stack(be, &p)?),
            _ => None,
        },
    })
}

/// How captions are encoded: kohya's `clip_skip` and `max_token_length`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TextOptions {
    pub clip_skip: usize,
    pub max_token_length: usize,
}

/// Stacks tensors [1, ...] of one shape into [N, ...].
pub fn stack<T: std::borrow::Borrow<Tensor>>(be: &dyn Backend, parts: &[T]) -> Result<Tensor> {
    let first = parts
        .first()
        .map(Borrow::borrow)
        .ok_or_else(|| Error::BadValue {
            op: "stack",
            name: "parts",
            value: "0 tensors".into(),
            expected: "at least one".into(),
        })?;
    let mut dims = first.dims().to_vec();
    dims[0] = parts.len();
    let mut v = Vec::with_capacity(first.numel() * parts.len());
    for p in parts {
        let p = p.borrow();
        if p.dims()[1..] != first.dims()[1..] {
            return Err(crate::backend::check::mismatch(
                "stack",
                "part",
                p,
                "first part",
                first,
                "all parts have one shape",
            ));
        }
        v.extend(be.to_f32_vec(p)?);
    }
    be.tensor_from_f32(&dims, &v, first.dtype())
}
