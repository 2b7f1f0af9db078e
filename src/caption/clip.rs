//! CLIP interrogation (`lorafuse caption --clip`): the phrases of some vocabularies whose CLIP
//! text embedding is nearest (cosine similarity) to the picture's CLIP image embedding.
//!
//! The model is a transformers `CLIPModel`, as its hub page has it (openai/clip-vit-large-
//! patch14: `config.json`, `model.safetensors`, `preprocessor_config.json`), or its
//! `model.safetensors` alone: then config.json and preprocessor_config.json are read from
//! beside it if there, else the configuration is read off the tensor shapes
//! (src/model/checkpoint/infer.rs) and the preprocessing is CLIP's default at the model's
//! image size.
//! - image_embeds: `get_image_features`, the vision tower of src/model/clip_vision.rs (a ViT
//!   run by src/model/vit.rs) and `visual_projection`.
//! - text_embeds: `get_text_features`, the SD1.x text encoder (src/model/clip.rs) with its
//!   pooled output (the first `<|endoftext|>`'s state) through `text_projection`; the ids
//!   from lorafuse's CLIP tokenizer (OpenAI's vocabulary, so `vocab_size` must be 49408).
//!   Each phrase is encoded up to its EOS only: the attention is causal, so the padding
//!   after it changes nothing.
//!
//! Preprocessing is transformers' `CLIPImageProcessor` (the PIL one): `convert("RGB")` (an
//! alpha channel is dropped, not composited), the shortest side resized to `size.shortest_edge`
//! and the other to int(edge · long / short) with PIL's bicubic (src/caption/pil.rs), a centre
//! crop at ((h − crop) // 2, (w − crop) // 2), v · rescale_factor in f64 then f32, then
//! (v − mean) / std in f32. As for the tagger, EXIF orientation is applied first (training sees
//! the picture that way) and JPEGs are decoded by the `image` crate.
//!
//! The caption: from each vocabulary (a file of phrases, one a line; lines starting with `#`
//! and empty lines skipped), its `top` phrases by similarity, as the usual interrogators take
//! the best medium, the best style, ... ; then all of them ordered by similarity, highest
//! first. Without `--vocab`, the lists of assets/clip-vocab/ (compiled in) are used.
//!
//! Phrase embeddings are computed once per model and vocabulary set and cached in a folder
//! (`clip-phrases-<key>.bin`, written atomically): the key is XXH64 over the model file's
//! bytes, the text tower's configuration and the phrases.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use image::DynamicImage;
use serde::Deserialize;
use serde_json::Value;

use super::error::CaptionError;
use super::wd14::three_numbers;
use super::{pil, CaptionOptions, Labeler};
use crate::atomic::write_file;
use crate::backend::Backend;
use crate::data::hash::xxh64;
use crate::error::{Error, Result};
use crate::model::checkpoint::{clip_text_at, clip_vision, Weights};
use crate::model::clip::ClipTextModel;
use crate::model::clip_vision::{self, ClipVisionConfig};
use crate::model::config::{ClipTextConfig, HiddenAct};
use crate::model::layers::{Ctx, Linear};
use crate::model::tokenizer::{Tokenizer, VOCAB_SIZE};
use crate::model::vit::Vit;

/// The files of a CLIPModel folder: weights, model config, image processor config.
pub const CLIP_FILES: [&str; 3] = [
    "model.safetensors",
    "config.json",
    "preprocessor_config.json",
];

/// OpenAI CLIP's normalisation (`OPENAI_CLIP_MEAN`, `OPENAI_CLIP_STD`), the image processor's
/// defaults.
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];

/// The default vocabularies (assets/clip-vocab/): (name, text).
pub const DEFAULT_VOCABULARIES: [(&str, &str); 6] = [
    (
        "mediums",
        include_str!("../../assets/clip-vocab/mediums.txt"),
    ),
    ("styles", include_str!("../../assets/clip-vocab/styles.txt")),
    (
        "subjects",
        include_str!("../../assets/clip-vocab/subjects.txt"),
    ),
    (
        "lighting",
        include_str!("../../assets/clip-vocab/lighting.txt"),
    ),
    (
        "colours",
        include_str!("../../assets/clip-vocab/colours.txt"),
    ),
    (
        "composition",
        include_str!("../../assets/clip-vocab/composition.txt"),
    ),
];

/// Phrases encoded together in one text-tower forward.
const TEXT_BATCH: usize = 32;
const CACHE_MAGIC: &[u8; 8] = b"LFCLIPE1";

fn bad(path: &Path, problem: impl Into<String>) -> CaptionError {
    CaptionError::Clip {
        path: path.to_path_buf(),
        problem: problem.into(),
    }
}

/// `CLIPImageProcessor`'s settings.
#[derive(Clone, Debug, PartialEq)]
pub struct ClipPreprocess {
    pub shortest_edge: u32,
    /// The square crop's side (the model's image size).
    pub crop: u32,
    pub rescale: f64,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl ClipPreprocess {
    /// CLIP's defaults at `size`.
    pub fn default_for(size: u32) -> ClipPreprocess {
        ClipPreprocess {
            shortest_edge: size,
            crop: size,
            rescale: 1.0 / 255.0,
            mean: CLIP_MEAN,
            std: CLIP_STD,
        }
    }

    /// preprocessor_config.json; every step must be the standard one.
    pub fn read(path: &Path, json: &Value, size: u32) -> std::result::Result<Self, CaptionError> {
        let mut p = ClipPreprocess::default_for(size);
        for flag in [
            "do_resize",
            "do_center_crop",
            "do_rescale",
            "do_normalize",
            "do_convert_rgb",
        ] {
            if json.get(flag).and_then(Value::as_bool) == Some(false) {
                return Err(bad(path, format!("{flag} false is not supported")));
            }
        }
        if let Some(r) = json.get("resample") {
            if r.as_u64() != Some(3) {
                return Err(bad(
                    path,
                    format!("resample {r}: only 3 (bicubic) is supported"),
                ));
            }
        }
        let side = |key: &str, field: &str| -> std::result::Result<Option<u32>, CaptionError> {
            match json.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v
                    .as_u64()
                    .or_else(|| v.get(field).and_then(Value::as_u64))
                    .map(|n| Some(n as u32))
                    .ok_or_else(|| {
                        bad(
                            path,
                            format!("{key} {v}: expected a number or {{\"{field}\": n}}"),
                        )
                    }),
            }
        };
        if let Some(s) = side("size", "shortest_edge")? {
            p.shortest_edge = s;
        }
        if let Some(c) = json.get("crop_size").and_then(|c| c.as_object()) {
            if c.get("height") != c.get("width") {
                return Err(bad(path, "crop_size is not square"));
            }
        }
        if let Some(c) = side("crop_size", "height")? {
            p.crop = c;
        }
        if p.crop != size || p.crop > p.shortest_edge {
            return Err(bad(
                path,
                format!(
                    "crop_size {} and size {} do not give the vision tower's {size}×{size} input",
                    p.crop, p.shortest_edge
                ),
            ));
        }
        if let Some(r) = json.get("rescale_factor") {
            p.rescale = r
                .as_f64()
                .ok_or_else(|| bad(path, format!("rescale_factor {r} is not a number")))?;
        }
        for (key, out) in [("image_mean", &mut p.mean), ("image_std", &mut p.std)] {
            if let Some(v) = json.get(key) {
                *out = three_numbers(v)
                    .ok_or_else(|| bad(path, format!("{key} {v}: expected 3 numbers")))?;
            }
        }
        if p.std.iter().any(|&s| s <= 0.0) {
            return Err(bad(path, format!("image_std {:?} must be positive", p.std)));
        }
        Ok(p)
    }

    /// The vision tower's input for a decoded picture: [3, crop, crop] f32, RGB.
    pub fn pixels(&self, img: &DynamicImage) -> Vec<f32> {
        let rgb = img.to_rgb8();
        let (w, h) = rgb.dimensions();
        let s = self.shortest_edge;
        let long = |l: u32, short: u32| (f64::from(s) * f64::from(l) / f64::from(short)) as u32;
        let (nw, nh) = if w <= h {
            (s, long(h, w))
        } else {
            (long(w, h), s)
        };
        let scaled = pil::resize_bicubic(&rgb, nw, nh);
        let c = self.crop;
        let (top, left) = ((nh - c) / 2, (nw - c) / 2);
        let n = c as usize;
        let mut out = vec![0f32; 3 * n * n];
        for y in 0..c {
            for x in 0..c {
                let p = scaled.get_pixel(x + left, y + top).0;
                for (ch, &v) in p.iter().enumerate() {
                    let r = (f64::from(v) * self.rescale) as f32;
                    out[ch * n * n + y as usize * n + x as usize] =
                        (r - self.mean[ch]) / self.std[ch];
                }
            }
        }
        out
    }
}

/// transformers' `CLIPTextConfig` as config.json's `text_config` has it (its defaults for
/// keys left out).
#[derive(Deserialize)]
#[serde(default)]
struct TextConfigJson {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    max_position_embeddings: usize,
    layer_norm_eps: f64,
    hidden_act: HiddenAct,
}

impl Default for TextConfigJson {
    fn default() -> Self {
        TextConfigJson {
            vocab_size: 49408,
            hidden_size: 512,
            intermediate_size: 2048,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 77,
            layer_norm_eps: 1e-5,
            hidden_act: HiddenAct::QuickGelu,
        }
    }
}

/// config.json of a CLIPModel: (text config, vision config, projection_dim).
fn read_model_config(
    path: &Path,
) -> std::result::Result<(ClipTextConfig, ClipVisionConfig, usize), CaptionError> {
    let text = fs::read_to_string(path).map_err(|e| bad(path, format!("cannot read it: {e}")))?;
    let json: Value =
        serde_json::from_str(&text).map_err(|e| bad(path, format!("not valid JSON: {e}")))?;
    let part = |key: &str| -> std::result::Result<Value, CaptionError> {
        match json.get(key) {
            Some(v @ Value::Object(_)) => Ok(v.clone()),
            None => Ok(Value::Object(Default::default())),
            Some(other) => Err(bad(path, format!("{key} is {other}, expected an object"))),
        }
    };
    if json.get("vision_config").is_none() {
        return Err(bad(
            path,
            "no vision_config: not the config of a CLIPModel (both towers)",
        ));
    }
    let t: TextConfigJson = serde_json::from_value(part("text_config")?)
        .map_err(|e| bad(path, format!("text_config: {e}")))?;
    let v: ClipVisionConfig = serde_json::from_value(part("vision_config")?)
        .map_err(|e| bad(path, format!("vision_config: {e}")))?;
    let projection_dim = match json.get("projection_dim") {
        None => 512,
        Some(p) => p
            .as_u64()
            .ok_or_else(|| bad(path, format!("projection_dim {p} is not a number")))?
            as usize,
    };
    let text = ClipTextConfig {
        vocab_size: t.vocab_size,
        hidden_size: t.hidden_size,
        intermediate_size: t.intermediate_size,
        num_hidden_layers: t.num_hidden_layers,
        num_attention_heads: t.num_attention_heads,
        max_position_embeddings: t.max_position_embeddings,
        layer_norm_eps: t.layer_norm_eps,
        hidden_act: t.hidden_act,
        // CLIPModel's text_projection is loaded beside the tower (`projection_dim` above).
        text_projection: None,
    };
    Ok((text, v, projection_dim))
}

/// A loaded CLIP model: both towers, their projections, the image preprocessing.
pub struct ClipModel {
    pub text: ClipTextModel,
    pub text_projection: Linear,
    pub vision: Vit,
    pub preprocess: ClipPreprocess,
    pub projection_dim: usize,
    /// The weights file.
    pub file: PathBuf,
    tokenizer: Tokenizer,
}

impl ClipModel {
    /// The model in `path`: a CLIPModel folder, or its model.safetensors.
    pub fn load(path: &Path, be: &dyn Backend) -> Result<ClipModel> {
        let (dir, file) = if path.is_dir() {
            (path.to_path_buf(), path.join(CLIP_FILES[0]))
        } else if path.is_file() {
            let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
            (dir, path.to_path_buf())
        } else {
            return Err(bad(path, "no such file or folder").into());
        };
        if !file.is_file() {
            return Err(bad(&file, "missing").into());
        }
        let weights = Weights::open(&file)?;
        let config = dir.join(CLIP_FILES[1]);
        let (text_cfg, vision_cfg, projection_dim) = if config.is_file() {
            read_model_config(&config)?
        } else {
            // OpenAI's CLIP models (and those trained like them) use quick_gelu.
            let text = clip_text_at(&file, &weights, "", HiddenAct::QuickGelu)?;
            let (vision, proj) = clip_vision(&file, &weights)?;
            (text, vision, proj)
        };
        if text_cfg.vocab_size != VOCAB_SIZE {
            return Err(bad(
                &file,
                format!(
                    "the text tower has {} tokens; lorafuse's CLIP tokenizer is OpenAI's, of \
                     {VOCAB_SIZE}",
                    text_cfg.vocab_size
                ),
            )
            .into());
        }
        let size = vision_cfg.image_size as u32;
        let pre_path = dir.join(CLIP_FILES[2]);
        let preprocess = if pre_path.is_file() {
            let text = fs::read_to_string(&pre_path)
                .map_err(|e| bad(&pre_path, format!("cannot read it: {e}")))?;
            let json: Value = serde_json::from_str(&text)
                .map_err(|e| bad(&pre_path, format!("not valid JSON: {e}")))?;
            ClipPreprocess::read(&pre_path, &json, size)?
        } else {
            ClipPreprocess::default_for(size)
        };
        let text = ClipTextModel::load(&text_cfg, &weights, be, "")?;
        let root = crate::model::weights::Loader::new(&weights, be, "");
        let text_projection = Linear::load(
            &root.at("text_projection"),
            text_cfg.hidden_size,
            projection_dim,
            false,
        )?;
        let vision = clip_vision::load(&weights, be, &vision_cfg, projection_dim)?;
        Ok(ClipModel {
            text,
            text_projection,
            vision,
            preprocess,
            projection_dim,
            file,
            tokenizer: Tokenizer::new()?,
        })
    }

    /// `get_image_features` of a preprocessed picture [3, S, S].
    pub fn image_embeds(&self, be: &dyn Backend, pixels: &[f32]) -> Result<Vec<f32>> {
        self.vision.logits(be, pixels)
    }

    /// The tokenizer's ids of a phrase, up to and including its first `<|endoftext|>`.
    pub fn ids(&self, phrase: &str) -> Vec<u32> {
        let e = self.tokenizer.encode(phrase);
        e.ids[..=e.eos_position].to_vec()
    }

    /// `get_text_features` of each phrase: [n · projection_dim], row-major;
    /// `progress(done, total)` after each batch.
    pub fn text_embeds(
        &self,
        be: &dyn Backend,
        phrases: &[String],
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Vec<f32>> {
        let cx = Ctx::new(be, None);
        let mut out = Vec::with_capacity(phrases.len() * self.projection_dim);
        for (i, chunk) in phrases.chunks(TEXT_BATCH).enumerate() {
            let rows: Vec<Vec<u32>> = chunk.iter().map(|p| self.ids(p)).collect();
            let len = rows.iter().map(Vec::len).max().unwrap_or(1);
            let mut ids = Vec::with_capacity(len * rows.len());
            let mut eos = Vec::with_capacity(rows.len());
            for r in &rows {
                eos.push(r.len() - 1);
                ids.extend(r);
                // Padding after the EOS: unseen by the EOS state (causal attention).
                ids.extend(std::iter::repeat_n(r[r.len() - 1], len - r.len()));
            }
            let pooled = self.text.pooled(&cx, &ids, rows.len(), &eos)?;
            let proj = self.text_projection.forward(&cx, &pooled)?.y;
            out.extend(be.to_f32_vec(&proj)?);
            progress(
                (i * TEXT_BATCH + chunk.len()).min(phrases.len()),
                phrases.len(),
            );
        }
        Ok(out)
    }
}

/// A list of candidate phrases.
#[derive(Clone, Debug, PartialEq)]
pub struct Vocabulary {
    /// The file's name, or the default list's.
    pub name: String,
    pub phrases: Vec<String>,
}

impl Vocabulary {
    /// One phrase a line; `#` comments and empty lines skipped, spaces trimmed.
    pub fn parse(name: &str, text: &str) -> Vocabulary {
        Vocabulary {
            name: name.to_string(),
            phrases: text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_string)
                .collect(),
        }
    }

    /// A vocabulary file; an unreadable or empty one is an error naming it.
    pub fn read(path: &Path) -> Result<Vocabulary> {
        let fail = |problem: String| CaptionError::Vocabulary {
            path: path.to_path_buf(),
            problem,
        };
        let bytes = fs::read(path).map_err(|e| fail(format!("cannot read it: {e}")))?;
        let text = String::from_utf8(bytes).map_err(|_| fail("not UTF-8 text".into()))?;
        let v = Vocabulary::parse(&path.display().to_string(), &text);
        if v.phrases.is_empty() {
            return Err(fail("no phrases in it".into()).into());
        }
        Ok(v)
    }

    /// The lists of assets/clip-vocab/.
    pub fn defaults() -> Vec<Vocabulary> {
        DEFAULT_VOCABULARIES
            .iter()
            .map(|(name, text)| Vocabulary::parse(name, text))
            .collect()
    }
}

/// XXH64 of a file's bytes, chained over 16 MiB chunks (each chunk's hash seeds the next).
fn file_key(path: &Path) -> Result<u64> {
    let mut f = fs::File::open(path).map_err(|e| Error::io(path, "open the model", e))?;
    let mut buf = vec![0u8; 16 << 20];
    let mut key = 0u64;
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| Error::io(path, "read the model", e))?;
        if n == 0 {
            return Ok(key);
        }
        key = xxh64(&buf[..n], key);
    }
}

/// The unit vector of `v` (zero stays zero).
fn normalized(v: &[f32]) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter()
        .map(|x| if norm > 0.0 { x / norm } else { 0.0 })
        .collect()
}

/// What `--clip` captions with: the model, the vocabularies and their phrase embeddings.
pub struct Interrogator {
    pub model: ClipModel,
    pub vocabularies: Vec<Vocabulary>,
    /// Phrases kept from each vocabulary.
    pub top: usize,
    /// Unit text embeddings of every phrase, vocabularies in order.
    embeds: Vec<Vec<f32>>,
}

impl Interrogator {
    /// Embeds the phrases, or reads them from `cache` (a folder, created if needed) when a
    /// run with the same model and phrases stored them there.
    pub fn new(
        model: ClipModel,
        vocabularies: Vec<Vocabulary>,
        top: usize,
        be: &dyn Backend,
        cache: Option<&Path>,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Interrogator> {
        let phrases: Vec<String> = vocabularies
            .iter()
            .flat_map(|v| v.phrases.iter().cloned())
            .collect();
        let d = model.projection_dim;
        let cache_file = match cache {
            Some(dir) => {
                let mut key = xxh64(
                    b"lorafuse clip phrase embeddings v1",
                    file_key(&model.file)?,
                );
                key = xxh64(format!("{:?}", model.text.config).as_bytes(), key);
                key = xxh64(phrases.join("\n").as_bytes(), key);
                Some(dir.join(format!("clip-phrases-{key:016x}.bin")))
            }
            None => None,
        };
        let flat = match cache_file
            .as_deref()
            .and_then(|f| read_cache(f, phrases.len(), d))
        {
            Some(flat) => flat,
            None => {
                let flat = model.text_embeds(be, &phrases, progress)?;
                if let Some(f) = &cache_file {
                    if let Some(dir) = f.parent() {
                        fs::create_dir_all(dir)
                            .map_err(|e| Error::io(dir, "create the cache folder", e))?;
                    }
                    write_file(f, &cache_bytes(&flat, phrases.len(), d))?;
                }
                flat
            }
        };
        Ok(Interrogator {
            model,
            vocabularies,
            top,
            embeds: flat.chunks(d.max(1)).map(normalized).collect(),
        })
    }

    /// The cosine similarity of the picture to every phrase, vocabularies in order.
    pub fn similarities(&self, be: &dyn Backend, img: &DynamicImage) -> Result<Vec<f32>> {
        let pixels = self.model.preprocess.pixels(img);
        let image = normalized(&self.model.image_embeds(be, &pixels)?);
        Ok(self
            .embeds
            .iter()
            .map(|t| t.iter().zip(&image).map(|(a, b)| a * b).sum())
            .collect())
    }

    /// The `top` best phrases of each vocabulary, all of them by similarity, highest first
    /// (ties in vocabulary order).
    pub fn select(&self, sims: &[f32]) -> Vec<(String, f32)> {
        let mut out = Vec::new();
        let mut start = 0;
        for v in &self.vocabularies {
            let end = start + v.phrases.len();
            let mut idx: Vec<usize> = (start..end).collect();
            idx.sort_by(|&a, &b| sims[b].total_cmp(&sims[a]));
            out.extend(
                idx.into_iter()
                    .take(self.top)
                    .map(|i| (v.phrases[i - start].clone(), sims[i])),
            );
            start = end;
        }
        out.sort_by(|a, b| b.1.total_cmp(&a.1));
        out
    }
}

impl Labeler for Interrogator {
    fn tags(
        &self,
        be: &dyn Backend,
        img: &DynamicImage,
        _: &CaptionOptions,
    ) -> Result<Vec<(String, f32)>> {
        Ok(self.select(&self.similarities(be, img)?))
    }
}

fn cache_bytes(flat: &[f32], n: usize, d: usize) -> Vec<u8> {
    let mut b = Vec::with_capacity(24 + flat.len() * 4);
    b.extend_from_slice(CACHE_MAGIC);
    b.extend_from_slice(&(n as u64).to_le_bytes());
    b.extend_from_slice(&(d as u64).to_le_bytes());
    for x in flat {
        b.extend_from_slice(&x.to_le_bytes());
    }
    b
}

/// The cached embeddings, or None when the file is missing or not what is expected (then
/// they are computed again and the file rewritten).
fn read_cache(path: &Path, n: usize, d: usize) -> Option<Vec<f32>> {
    let b = fs::read(path).ok()?;
    let header = cache_bytes(&[], n, d);
    if b.len() != header.len() + n * d * 4 || b[..header.len()] != header[..] {
        return None;
    }
    Some(
        b[header.len()..]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vocabularies_skip_comments_and_blank_lines() {
        let v = Vocabulary::parse("x", "# ours\n a cat \n\nred\r\n");
        assert_eq!(v.phrases, ["a cat", "red"]);
        for v in Vocabulary::defaults() {
            assert!(v.phrases.len() >= 10, "{}", v.name);
        }
    }

    #[test]
    fn preprocessor_sizes_and_refusals() {
        let json: Value = serde_json::from_str(
            r#"{"crop_size": {"height": 224, "width": 224}, "size": {"shortest_edge": 224},
                "resample": 3, "image_mean": [0.5, 0.5, 0.5]}"#,
        )
        .unwrap();
        let p = ClipPreprocess::read(Path::new("p.json"), &json, 224).unwrap();
        assert_eq!((p.shortest_edge, p.crop, p.mean), (224, 224, [0.5; 3]));
        assert_eq!(p.std, CLIP_STD);
        let json: Value = serde_json::from_str(r#"{"resample": 2}"#).unwrap();
        let e = ClipPreprocess::read(Path::new("p.json"), &json, 224)
            .unwrap_err()
            .to_string();
        assert!(e.contains("p.json") && e.contains("resample 2"), "{e}");
        let json: Value = serde_json::from_str(r#"{"crop_size": 336}"#).unwrap();
        assert!(ClipPreprocess::read(Path::new("p.json"), &json, 224).is_err());
    }

    #[test]
    fn cache_round_trip_and_mismatch() {
        let dir = std::env::temp_dir().join(format!("lf-clip-cache-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let f = dir.join("c.bin");
        write_file(&f, &cache_bytes(&[1.0, 2.0, 3.0, 4.0], 2, 2)).unwrap();
        assert_eq!(read_cache(&f, 2, 2), Some(vec![1.0, 2.0, 3.0, 4.0]));
        assert_eq!(read_cache(&f, 1, 4), None);
        fs::remove_dir_all(&dir).unwrap();
    }
}
