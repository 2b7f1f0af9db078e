//! Reading LoRA files in kohya's format (sd15-formats.md §2.1–2.4), the format AUTOMATIC1111,
//! ComfyUI and diffusers load:
//!   <name>.lora_down.weight  [r, in], [r, in, 1, 1] (1x1 conv layers) or [r, in, k, k]
//!                            (LoCon on a k x k conv)
//!   <name>.lora_up.weight    [out, r] or [out, r, 1, 1]
//!   <name>.alpha             0-d; missing means alpha = r (scale 1)
//! and LyCORIS's LoHa (`algo=loha`, lycoris/modules/loha.py without Tucker):
//!   <name>.hada_w1_a, .hada_w2_a  [out, r]
//!   <name>.hada_w1_b, .hada_w2_b  [r, in·k·k] (2-D on a conv too), and `.alpha`.
//! and DoRA (LyCORIS's `dora_wd=True`, lora/dora.rs): a LoRA's keys plus
//!   <name>.dora_scale             [out, 1] (linear) or [out, 1, 1, 1] (conv, 1x1 included)
//! A LoHa file does not say a conv's kernel (w1_b is [r, in·k·k] for every layer): its
//! modules load as [`LayerKind::Linear`], and the model's layer decides (training's
//! `network_weights` takes the run's kind; `merge` reshapes ΔW to the checkpoint's weight).

use std::path::Path;

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::lora::{Algo, LayerKind, LoraModule, LoraSet};
use crate::model::checkpoint::Weights;
use crate::tensor::DType;

pub const DOWN: &str = ".lora_down.weight";
pub const UP: &str = ".lora_up.weight";
pub const ALPHA: &str = ".alpha";
pub const HADA_W1_A: &str = ".hada_w1_a";
pub const HADA_W1_B: &str = ".hada_w1_b";
pub const HADA_W2_A: &str = ".hada_w2_a";
pub const HADA_W2_B: &str = ".hada_w2_b";
pub const DORA_SCALE: &str = ".dora_scale";

/// The module a key of a kohya or LyCORIS file belongs to (`<module>.lora_down.weight`,
/// `.lora_up.weight`, `.alpha`, `.hada_w1_a`, `.dora_scale`, ...), None for any other key.
pub fn module_of(key: &str) -> Option<&str> {
    [
        DOWN, UP, ALPHA, HADA_W1_A, HADA_W1_B, HADA_W2_A, HADA_W2_B, DORA_SCALE,
    ]
    .iter()
    .find_map(|suffix| key.strip_suffix(suffix))
}

/// All adapters in a kohya-format `.safetensors` file, as `dtype` tensors on `be` (f32 for
/// training; f64 for gradient checks), sorted by name.
pub fn load(path: impl AsRef<Path>, be: &dyn Backend, dtype: DType) -> Result<LoraSet> {
    let path = path.as_ref();
    if !path.exists() {
        return Err(Error::Lora {
            path: path.to_path_buf(),
            detail: "no such file; expected a LoRA in kohya's format (.safetensors)".into(),
        });
    }
    let w = Weights::open(path)?;
    let bad = |key: &str, why: String| Error::BadValue {
        op: "lora file",
        name: "tensor",
        value: format!("{key} in {}", path.display()),
        expected: why,
    };
    let mut names: Vec<String> = w
        .keys()
        .filter_map(|k| {
            k.strip_suffix(DOWN)
                .or_else(|| k.strip_suffix(HADA_W1_A))
                .map(str::to_string)
        })
        .collect();
    names.sort();
    if names.is_empty() {
        return Err(bad(
            "(none)",
            format!(
                "at least one `*{DOWN}` (or LyCORIS's LoHa `*{HADA_W1_A}`): this is not a \
                 kohya-format LoRA"
            ),
        ));
    }
    let alpha_of = |name: &str, r: usize| -> Result<f64> {
        let alpha_key = format!("{name}{ALPHA}");
        let alpha = if w.contains(&alpha_key) {
            w.get(&alpha_key, Vec::<usize>::new())?.to_f64_vec()[0]
        } else {
            r as f64
        };
        Ok(if alpha == 0.0 { r as f64 } else { alpha })
    };
    let mut modules = Vec::with_capacity(names.len());
    for name in names {
        if w.contains(&format!("{name}{HADA_W1_A}")) {
            let key = |s: &str| format!("{name}{s}");
            let shape = |k: &str| w.shape(&key(k)).map(<[usize]>::to_vec);
            let shapes = [HADA_W1_A, HADA_W1_B, HADA_W2_A, HADA_W2_B].map(shape);
            let (a, b) = (shapes[0].clone().unwrap_or_default(), shapes[1].clone());
            let fits = matches!((&a[..], b.as_deref()), ([_, r], Some([r2, _])) if r == r2 && *r > 0)
                && shapes[2].as_ref() == Some(&a)
                && shapes[3] == b;
            if !fits {
                return Err(bad(
                    &name,
                    format!(
                        "LoHa's hada_w1_a and hada_w2_a [out, r], hada_w1_b and hada_w2_b \
                         [r, in] with one r (Tucker's hada_t1/hada_t2 are not supported); \
                         found {:?}",
                        shapes
                    ),
                ));
            }
            let get = |k: &str, s: &[usize]| -> Result<crate::tensor::Tensor> {
                let t = w.get(&key(k), s.to_vec())?;
                be.tensor_from_f32(s, &t.to_f32_vec(), dtype)
            };
            let b = b.unwrap_or_default();
            modules.push(LoraModule {
                name: name.clone(),
                down: get(HADA_W1_B, &b)?,
                up: get(HADA_W1_A, &a)?,
                alpha: alpha_of(&name, a[1])?,
                kind: LayerKind::Linear,
                algo: Algo::Loha {
                    w2_a: get(HADA_W2_A, &a)?,
                    w2_b: get(HADA_W2_B, &b)?,
                },
            });
            continue;
        }
        let down_key = format!("{name}{DOWN}");
        let up_key = format!("{name}{UP}");
        let ds = w
            .shape(&down_key)
            .map(<[usize]>::to_vec)
            .unwrap_or_default();
        let us = w
            .shape(&up_key)
            .map(<[usize]>::to_vec)
            .ok_or_else(|| bad(&up_key, format!("present beside {down_key}")))?;
        let kind = LayerKind::of_kohya_down(&ds);
        let up_ok = us.len() == 2 || (us.len() == 4 && us[2] == 1 && us[3] == 1);
        let (Some(kind), true) = (kind, up_ok && us.get(1) == ds.first()) else {
            return Err(bad(
                &name,
                format!(
                    "down [r, in], [r, in, 1, 1] or [r, in, k, k] and up [out, r] or \
                     [out, r, 1, 1]; found {ds:?} and {us:?}"
                ),
            ));
        };
        let (r, i, o) = (ds[0], ds[1], us[0]);
        let (dm, um) = kind.shapes(r, i, o);
        let down = w.get(&down_key, ds.clone())?;
        let up = w.get(&up_key, us.clone())?;
        let alpha = alpha_of(&name, r)?;
        let scale_key = format!("{name}{DORA_SCALE}");
        let algo = match w.shape(&scale_key).map(<[usize]>::to_vec) {
            None => Algo::Lora,
            Some(s) => {
                let want = super::dora::magnitude_shape(kind, o);
                if s != want {
                    return Err(bad(
                        &scale_key,
                        format!("{want:?}, one magnitude per output row of {name}; found {s:?}"),
                    ));
                }
                let m = w.get(&scale_key, s.clone())?;
                Algo::Dora {
                    magnitude: be.tensor_from_f32(&s, &m.to_f32_vec(), dtype)?,
                }
            }
        };
        modules.push(LoraModule {
            name,
            down: be.tensor_from_f32(&dm, &down.to_f32_vec(), dtype)?,
            up: be.tensor_from_f32(&um, &up.to_f32_vec(), dtype)?,
            alpha,
            kind,
            algo,
        });
    }
    Ok(LoraSet::new(modules))
}
