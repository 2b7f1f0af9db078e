//! The WD14 tagger v3 with a ViT backbone, from the folder its hub page gives
//! (SmilingWolf/wd-vit-tagger-v3, wd-vit-large-tagger-v3):
//!
//! - `config.json`: timm's `architecture` (`vit_<size>_patch<p>_<img>`, giving the defaults),
//!   `model_args` (what the tagger changes: img_size 448, no class token, average pooling, no
//!   fc_norm, `gelu_tanh`), `num_classes`, `pretrained_cfg` (input size, mean, std, bicubic
//!   interpolation, crop_pct).
//! - `model.safetensors`: the weights under timm's names (src/model/vit.rs).
//! - `selected_tags.csv`: one row per output, with `name` and `category` columns; category 9
//!   is a rating, 0 a general tag, 4 a character.
//!
//! Preprocessing, as the taggers' reference code does it (neggles' wdv3-timm, the timm path
//! SmilingWolf's model card points to): alpha over white, padded to a square on white, timm's
//! eval transform (PIL bicubic resize of the square to floor(size / crop_pct), centre crop to
//! the size, v/255, (v − mean)/std in f32), channels RGB -> BGR. Then sigmoid of the logits.
//! Where lorafuse differs from it: EXIF orientation is applied (training sees the picture
//! that way: src/data/pixels.rs), grey+alpha pictures are composited on white (PIL's
//! `convert("RGB")` drops their alpha), and JPEGs are decoded by the `image` crate, whose
//! IDCT can differ from libjpeg's by a level here and there.
//!
//! Tags: general ones above the general threshold and characters above the character
//! threshold, ratings left out, sorted by probability (highest first; ties in file order).

use std::fs;
use std::path::{Path, PathBuf};

use image::DynamicImage;
use serde_json::Value;

use super::error::CaptionError;
use super::pil;
use crate::backend::{Activation, Backend};
use crate::data::metadata::parse_csv;
use crate::error::Result;
use crate::model::checkpoint::Weights;
use crate::model::vit::{Pool, Vit, VitConfig};

/// The three files of a tagger folder.
pub const TAGGER_FILES: [&str; 3] = ["model.safetensors", "config.json", "selected_tags.csv"];

/// selected_tags.csv's category of a tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Category {
    Rating,
    General,
    Character,
    /// Any other number (left out of captions).
    Other(i64),
}

impl Category {
    fn of(code: i64) -> Category {
        match code {
            9 => Category::Rating,
            0 => Category::General,
            4 => Category::Character,
            n => Category::Other(n),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Label {
    pub name: String,
    pub category: Category,
}

/// The input transform of `pretrained_cfg`.
#[derive(Clone, Debug, PartialEq)]
pub struct Preprocess {
    /// The model's input side.
    pub size: u32,
    /// The square's side before the centre crop: floor(size / crop_pct).
    pub scale_size: u32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Preprocess {
    /// The model's input for a decoded picture: [3, size, size] f32 in BGR order.
    pub fn pixels(&self, img: &DynamicImage) -> Vec<f32> {
        let rgb = if img.color().has_alpha() {
            pil::on_white(&img.to_rgba8())
        } else {
            img.to_rgb8()
        };
        let square = pil::pad_square(&rgb);
        let scaled = pil::resize_bicubic(&square, self.scale_size, self.scale_size);
        // torchvision's CenterCrop: offset round((scaled − size) / 2), ties to even.
        let off = (f64::from(self.scale_size - self.size) / 2.0).round_ties_even() as u32;
        let s = self.size as usize;
        let mut out = vec![0f32; 3 * s * s];
        for y in 0..self.size {
            for x in 0..self.size {
                let p = scaled.get_pixel(x + off, y + off).0;
                for (c, &v) in p.iter().enumerate() {
                    let t = (f32::from(v) / 255.0 - self.mean[c]) / self.std[c];
                    // RGB -> BGR: red goes to channel 2.
                    out[(2 - c) * s * s + y as usize * s + x as usize] = t;
                }
            }
        }
        out
    }
}

/// A loaded tagger.
pub struct Tagger {
    pub vit: Vit,
    pub labels: Vec<Label>,
    pub preprocess: Preprocess,
    pub dir: PathBuf,
}

/// What selects tags from the probabilities.
#[derive(Clone, Copy, Debug)]
pub struct Thresholds {
    pub general: f32,
    pub character: f32,
}

fn bad(path: &Path, problem: impl Into<String>) -> CaptionError {
    CaptionError::Tagger {
        path: path.to_path_buf(),
        problem: problem.into(),
    }
}

/// timm's ViT sizes: (embed_dim, depth, num_heads).
fn vit_size(name: &str) -> Option<(usize, usize, usize)> {
    Some(match name {
        "tiny" => (192, 12, 3),
        "small" => (384, 12, 6),
        "base" => (768, 12, 12),
        "large" => (1024, 24, 16),
        "huge" => (1280, 32, 16),
        _ => return None,
    })
}

/// `vit_base_patch16_224[.tag]` -> (embed_dim, depth, heads, patch, img).
fn parse_architecture(arch: &str) -> Option<(usize, usize, usize, usize, usize)> {
    let base = arch.split('.').next()?;
    let rest = base.strip_prefix("vit_")?;
    let (size, rest) = rest.split_once("_patch")?;
    let (patch, img) = rest.split_once('_')?;
    let (d, depth, heads) = vit_size(size)?;
    Some((d, depth, heads, patch.parse().ok()?, img.parse().ok()?))
}

fn as_usize(path: &Path, key: &str, v: &Value) -> std::result::Result<usize, CaptionError> {
    v.as_u64().map(|n| n as usize).ok_or_else(|| {
        bad(
            path,
            format!("model_args.{key} is {v}, expected a whole number"),
        )
    })
}

/// The model's shape and input transform from config.json (`path`, already parsed).
pub fn read_config(
    path: &Path,
    json: &Value,
) -> std::result::Result<(VitConfig, Preprocess), CaptionError> {
    let arch = json
        .get("architecture")
        .and_then(Value::as_str)
        .ok_or_else(|| bad(path, "no \"architecture\" (timm's model name)"))?;
    let (embed_dim, depth, num_heads, patch_size, img) = parse_architecture(arch).ok_or_else(|| {
        bad(
            path,
            format!(
                "architecture {arch:?} is not a timm ViT (vit_<tiny|small|base|large|huge>_patch<N>_<size>); \
                 only the ViT taggers are supported (not SwinV2, ConvNeXt or EVA02)"
            ),
        )
    })?;
    let mut c = VitConfig {
        img_size: img,
        patch_size,
        embed_dim,
        depth,
        num_heads,
        mlp_hidden: 4 * embed_dim,
        class_token: true,
        qkv_bias: true,
        pool: Pool::Token,
        fc_norm: false,
        act: Activation::Gelu,
        num_classes: 0,
    };
    let mut mlp_ratio = 4.0;
    let mut global_pool = json
        .get("global_pool")
        .and_then(Value::as_str)
        .unwrap_or("token")
        .to_string();
    let mut fc_norm: Option<bool> = None;
    let empty = serde_json::Map::new();
    let args = match json.get("model_args") {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(m)) => m,
        Some(other) => {
            return Err(bad(
                path,
                format!("model_args is {other}, expected an object"),
            ))
        }
    };
    for (key, v) in args {
        match key.as_str() {
            "img_size" => c.img_size = as_usize(path, key, v)?,
            "patch_size" => c.patch_size = as_usize(path, key, v)?,
            "embed_dim" => c.embed_dim = as_usize(path, key, v)?,
            "depth" => c.depth = as_usize(path, key, v)?,
            "num_heads" => c.num_heads = as_usize(path, key, v)?,
            "mlp_ratio" => {
                mlp_ratio = v
                    .as_f64()
                    .ok_or_else(|| bad(path, format!("model_args.mlp_ratio is {v}")))?
            }
            "class_token" | "qkv_bias" => {
                let b = v.as_bool().ok_or_else(|| {
                    bad(
                        path,
                        format!("model_args.{key} is {v}, expected true or false"),
                    )
                })?;
                if key == "class_token" {
                    c.class_token = b;
                } else {
                    c.qkv_bias = b;
                }
            }
            "global_pool" => {
                global_pool = v
                    .as_str()
                    .ok_or_else(|| bad(path, format!("model_args.global_pool is {v}")))?
                    .to_string()
            }
            "fc_norm" => fc_norm = v.as_bool(),
            "act_layer" => {
                c.act = match v.as_str() {
                    Some("gelu") => Activation::Gelu,
                    Some("gelu_tanh") => Activation::GeluTanh,
                    Some("quick_gelu") => Activation::QuickGelu,
                    _ => {
                        return Err(bad(
                            path,
                            format!(
                        "model_args.act_layer {v} is not supported (gelu, gelu_tanh, quick_gelu)"
                    ),
                        ))
                    }
                }
            }
            // Training-only settings: no effect at inference.
            k if k.ends_with("drop_rate") || k == "drop_path_rate" => {}
            // Options whose default is the plain ViT: accepted only at that default.
            "no_embed_class" | "pre_norm" | "qk_norm" | "dynamic_img_size" | "reg_tokens"
            | "init_values"
                if matches!(v, Value::Null | Value::Bool(false)) || v.as_u64() == Some(0) => {}
            other => {
                return Err(bad(
                    path,
                    format!("model_args.{other} = {v} is not supported by lorafuse's ViT"),
                ))
            }
        }
    }
    c.mlp_hidden = (c.embed_dim as f64 * mlp_ratio) as usize;
    c.pool = match global_pool.as_str() {
        "avg" => Pool::Avg,
        "token" => Pool::Token,
        other => {
            return Err(bad(
                path,
                format!("global_pool {other:?} is not supported (avg or token)"),
            ))
        }
    };
    if c.pool == Pool::Token && !c.class_token {
        return Err(bad(path, "global_pool \"token\" needs class_token"));
    }
    // timm: fc_norm defaults to true for average pooling.
    c.fc_norm = fc_norm.unwrap_or(c.pool == Pool::Avg);
    if c.patch_size == 0 || !c.img_size.is_multiple_of(c.patch_size) {
        return Err(bad(
            path,
            format!(
                "img_size {} is not a multiple of patch_size {}",
                c.img_size, c.patch_size
            ),
        ));
    }
    if let Some(n) = json.get("num_classes") {
        c.num_classes = as_usize(path, "num_classes", n)?;
    }
    let pre = read_pretrained_cfg(path, json.get("pretrained_cfg"), c.img_size)?;
    Ok((c, pre))
}

fn read_pretrained_cfg(
    path: &Path,
    cfg: Option<&Value>,
    img_size: usize,
) -> std::result::Result<Preprocess, CaptionError> {
    let get = |k: &str| cfg.and_then(|c| c.get(k));
    if let Some(size) = get("input_size").and_then(Value::as_array) {
        let dims: Vec<u64> = size.iter().filter_map(Value::as_u64).collect();
        if dims != [3, img_size as u64, img_size as u64] {
            return Err(bad(
                path,
                format!("pretrained_cfg.input_size {size:?} differs from the model's [3, {img_size}, {img_size}]"),
            ));
        }
    }
    if let Some(i) = get("interpolation").and_then(Value::as_str) {
        if i != "bicubic" {
            return Err(bad(
                path,
                format!("pretrained_cfg.interpolation {i:?}: only bicubic is supported"),
            ));
        }
    }
    if let Some(m) = get("crop_mode").and_then(Value::as_str) {
        if m != "center" {
            return Err(bad(
                path,
                format!("pretrained_cfg.crop_mode {m:?}: only center is supported"),
            ));
        }
    }
    let triple = |k: &str, default: f32| -> std::result::Result<[f32; 3], CaptionError> {
        match get(k) {
            None => Ok([default; 3]),
            Some(v) => three_numbers(v).ok_or_else(|| {
                bad(
                    path,
                    format!("pretrained_cfg.{k} is {v}, expected 3 numbers"),
                )
            }),
        }
    };
    // timm's DEFAULT_CROP_PCT when the config has none.
    let crop_pct = get("crop_pct").and_then(Value::as_f64).unwrap_or(0.875);
    let scale_size = (img_size as f64 / crop_pct).floor() as u32;
    if !(crop_pct > 0.0 && crop_pct <= 1.0) {
        return Err(bad(
            path,
            format!("pretrained_cfg.crop_pct {crop_pct} is not in (0, 1]"),
        ));
    }
    let std = triple("std", 0.5)?;
    if std.iter().any(|&s| s <= 0.0) {
        return Err(bad(
            path,
            format!("pretrained_cfg.std {std:?} must be positive"),
        ));
    }
    Ok(Preprocess {
        size: img_size as u32,
        scale_size,
        mean: triple("mean", 0.5)?,
        std,
    })
}

/// A JSON array of exactly three numbers (a per-channel mean or std).
pub(super) fn three_numbers(v: &Value) -> Option<[f32; 3]> {
    let xs: Vec<f32> = v
        .as_array()?
        .iter()
        .map(|x| x.as_f64().map(|x| x as f32))
        .collect::<Option<_>>()?;
    <[f32; 3]>::try_from(xs.as_slice()).ok()
}

/// selected_tags.csv: the `name` and `category` of each row.
pub fn read_labels(path: &Path, text: &str) -> std::result::Result<Vec<Label>, CaptionError> {
    let records = parse_csv(text.trim_start_matches('\u{feff}'))
        .map_err(|(line, why)| bad(path, format!("line {line}: {why}")))?;
    let mut rows = records
        .into_iter()
        .filter(|r| r.fields.iter().any(|f| !f.is_empty()));
    let header = rows.next().ok_or_else(|| bad(path, "empty file"))?;
    let col = |name: &str| {
        header
            .fields
            .iter()
            .position(|f| f.trim() == name)
            .ok_or_else(|| {
                bad(
                    path,
                    format!("no {name:?} column in the header {:?}", header.fields),
                )
            })
    };
    let (name_col, cat_col) = (col("name")?, col("category")?);
    rows.map(|r| {
        let field = |i: usize| r.fields.get(i).map(|s| s.trim()).unwrap_or("");
        let code: i64 = field(cat_col).parse().map_err(|_| {
            bad(
                path,
                format!(
                    "line {}: category {:?} is not a number",
                    r.line,
                    field(cat_col)
                ),
            )
        })?;
        Ok(Label {
            name: field(name_col).to_string(),
            category: Category::of(code),
        })
    })
    .collect()
}

impl Tagger {
    /// The tagger in `path`: its folder, or any of its three files.
    pub fn load(path: &Path, be: &dyn Backend) -> Result<Tagger> {
        let dir = if path.is_file() {
            path.parent().unwrap_or(Path::new(".")).to_path_buf()
        } else {
            path.to_path_buf()
        };
        if !dir.is_dir() {
            return Err(bad(path, "no such folder").into());
        }
        let file = |name: &str| -> std::result::Result<(PathBuf, String), CaptionError> {
            let p = dir.join(name);
            if !p.is_file() {
                return Err(bad(&p, "missing"));
            }
            let text = if name.ends_with(".safetensors") {
                String::new()
            } else {
                fs::read_to_string(&p).map_err(|e| bad(&p, format!("cannot read it: {e}")))?
            };
            Ok((p, text))
        };
        let (cfg_path, cfg_text) = file(TAGGER_FILES[1])?;
        let json: Value = serde_json::from_str(&cfg_text)
            .map_err(|e| bad(&cfg_path, format!("not valid JSON: {e}")))?;
        let (mut config, preprocess) = read_config(&cfg_path, &json)?;
        let (tags_path, tags_text) = file(TAGGER_FILES[2])?;
        let labels = read_labels(&tags_path, &tags_text)?;
        let (model_path, _) = file(TAGGER_FILES[0])?;
        let weights = Weights::open(&model_path)?;
        let head = weights.require_shape("head.weight")?;
        if config.num_classes == 0 {
            config.num_classes = head[0];
        }
        if labels.len() != config.num_classes {
            return Err(bad(
                &tags_path,
                format!(
                    "{} tag rows, but the model has {} outputs ({}); the csv and the model \
                     must come from the same tagger",
                    labels.len(),
                    config.num_classes,
                    model_path.display()
                ),
            )
            .into());
        }
        let vit = Vit::load(&weights, be, config)?;
        Ok(Tagger {
            vit,
            labels,
            preprocess,
            dir,
        })
    }

    /// The probability of every label for one picture.
    pub fn probabilities(&self, be: &dyn Backend, img: &DynamicImage) -> Result<Vec<f32>> {
        let logits = self.vit.logits(be, &self.preprocess.pixels(img))?;
        Ok(logits.iter().map(|&z| 1.0 / (1.0 + (-z).exp())).collect())
    }

    /// The caption's tags with their probabilities, highest first.
    pub fn select(&self, probs: &[f32], t: Thresholds) -> Vec<(String, f32)> {
        let mut out: Vec<(String, f32)> = self
            .labels
            .iter()
            .zip(probs)
            .filter(|(l, &p)| match l.category {
                Category::General => p > t.general,
                Category::Character => p > t.character,
                _ => false,
            })
            .map(|(l, &p)| (l.name.clone(), p))
            .collect();
        out.sort_by(|a, b| b.1.total_cmp(&a.1));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn architecture_names() {
        assert_eq!(
            parse_architecture("vit_base_patch16_224"),
            Some((768, 12, 12, 16, 224))
        );
        assert_eq!(
            parse_architecture("vit_large_patch16_448.augreg"),
            Some((1024, 24, 16, 16, 448))
        );
        assert_eq!(parse_architecture("swinv2_base_window8_256"), None);
        assert_eq!(parse_architecture("vit_giant_patch14_224"), None);
    }

    #[test]
    fn the_v3_config_reads_as_the_tagger_uses_it() {
        // config.json of SmilingWolf/wd-vit-tagger-v3, as its hub page has it.
        let json: Value = serde_json::from_str(
            r#"{"architecture": "vit_base_patch16_224", "num_classes": 10861,
                "num_features": 768, "global_pool": "avg",
                "model_args": {"img_size": 448, "class_token": false, "global_pool": "avg",
                               "fc_norm": false, "act_layer": "gelu_tanh"},
                "pretrained_cfg": {"custom_load": false, "input_size": [3, 448, 448],
                    "fixed_input_size": false, "interpolation": "bicubic", "crop_pct": 1.0,
                    "crop_mode": "center", "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
                    "num_classes": 10861}}"#,
        )
        .unwrap();
        let (c, p) = read_config(Path::new("config.json"), &json).unwrap();
        assert_eq!((c.img_size, c.patch_size, c.embed_dim), (448, 16, 768));
        assert_eq!((c.depth, c.num_heads, c.mlp_hidden), (12, 12, 3072));
        assert!(!c.class_token && !c.fc_norm && c.qkv_bias);
        assert_eq!(
            (c.pool, c.act, c.num_classes),
            (Pool::Avg, Activation::GeluTanh, 10861)
        );
        assert_eq!(c.tokens(), 784);
        assert_eq!(
            (p.size, p.scale_size, p.mean, p.std),
            (448, 448, [0.5; 3], [0.5; 3])
        );
    }

    #[test]
    fn unsupported_options_are_named() {
        let json: Value = serde_json::from_str(
            r#"{"architecture": "vit_base_patch16_224", "model_args": {"reg_tokens": 4}}"#,
        )
        .unwrap();
        let e = read_config(Path::new("x/config.json"), &json)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("x/config.json") && e.contains("reg_tokens"),
            "{e}"
        );
        let json: Value =
            serde_json::from_str(r#"{"architecture": "eva02_large_patch14_448"}"#).unwrap();
        let e = read_config(Path::new("c.json"), &json)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("eva02_large_patch14_448") && e.contains("not a timm ViT"),
            "{e}"
        );
    }

    #[test]
    fn labels_by_header_name() {
        let l = read_labels(
            Path::new("t.csv"),
            "tag_id,name,category,count\n1,general,9,5\n2,\"a,b\",0,3\n3,miku,4,1\n",
        )
        .unwrap();
        assert_eq!(l.len(), 3);
        assert_eq!(
            (l[1].name.as_str(), l[1].category),
            ("a,b", Category::General)
        );
        assert_eq!(l[2].category, Category::Character);
        let e = read_labels(Path::new("t.csv"), "id,tag\n1,x\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"name\""), "{e}");
    }
}
