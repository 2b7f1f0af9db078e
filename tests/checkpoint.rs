//! Checkpoint loading: LDM → diffusers names, config inference from shapes, dtype
//! conversion, diffusers folders, and every error a user can meet, each naming the file (and
//! the key and both shapes where there are some). The test writes its own small safetensors
//! files (a "tiny SD1.5" of the real topology, generated here from the diffusers module
//! structure and sd15-formats.md §2.8 independently of the library's mapping) under the
//! system temp dir, and removes them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use half::{bf16, f16};
use lorafuse::error::ErrorKind;
use lorafuse::model::checkpoint::safetensors::{to_f16, to_f32};
use lorafuse::model::checkpoint::{
    ldm, ldm_to_diffusers, load_sd15, CheckpointError, LdmLayout, Sd15Checkpoint, Weights,
};
use lorafuse::model::config::{
    ClipTextConfig, DownBlockType, HiddenAct, PerLevel, UnetConfig, VaeConfig,
};
use lorafuse::rng::Rng;
use lorafuse::Result;
use safetensors::tensor::{Dtype, TensorView};

// ---------------------------------------------------------------------------------------------
// Temp files

/// A fresh folder under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "lorafuse-test-checkpoint-{}-{n}-{tag}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One tensor to write: name, dtype, shape, little-endian bytes.
struct Raw {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

fn serialize(tensors: &[Raw]) -> Vec<u8> {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|t| {
            let view = TensorView::new(t.dtype, t.shape.clone(), &t.bytes).unwrap();
            (t.name.clone(), view)
        })
        .collect();
    safetensors::serialize(views, None).unwrap()
}

fn write_safetensors(path: &Path, tensors: &[Raw]) {
    std::fs::write(path, serialize(tensors)).unwrap();
}

fn f16_bytes(values: impl IntoIterator<Item = f32>) -> Vec<u8> {
    values
        .into_iter()
        .flat_map(|v| f16::from_f32(v).to_le_bytes())
        .collect()
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn bf16_bytes(values: &[bf16]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// A tensor filled with one f16 value (the tensor's id, to check where it lands).
fn filled(name: &str, shape: &[usize], value: f32) -> Raw {
    let n = shape.iter().product();
    Raw {
        name: name.into(),
        dtype: Dtype::F16,
        shape: shape.to_vec(),
        bytes: f16_bytes(std::iter::repeat_n(value, n)),
    }
}

/// The message of an error, echoed so that `--nocapture` shows every message verbatim.
fn message<T: std::fmt::Debug>(r: Result<T>) -> String {
    let e = r.expect_err("expected an error");
    assert!(e.downcast_ref::<CheckpointError>().is_some(), "{e:?}");
    // A file or folder that is not a loadable SD1.x model is the user's to fix (exit code 2).
    assert_eq!(e.kind(), ErrorKind::BadInput, "{e:?}");
    let msg = e.to_string();
    eprintln!("---\n{msg}");
    msg
}

fn assert_has(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "message lacks {p:?}:\n{msg}");
    }
}

// ---------------------------------------------------------------------------------------------
// A synthetic SD1.x: the diffusers module structure, each tensor with its LDM and diffusers
// names and shapes, built forwards from sd15-formats.md §2.8 (the library parses backwards).

#[derive(Clone, Debug)]
struct Tensor2 {
    ldm: String,
    diffusers: String,
    ldm_shape: Vec<usize>,
    shape: Vec<usize>,
}

#[derive(Default)]
struct Gen {
    out: Vec<Tensor2>,
}

impl Gen {
    fn add(&mut self, ldm: String, diffusers: String, ldm_shape: &[usize], shape: &[usize]) {
        self.out.push(Tensor2 {
            ldm,
            diffusers,
            ldm_shape: ldm_shape.to_vec(),
            shape: shape.to_vec(),
        });
    }
    fn norm(&mut self, l: &str, d: &str, c: usize) {
        for p in ["weight", "bias"] {
            self.add(format!("{l}.{p}"), format!("{d}.{p}"), &[c], &[c]);
        }
    }
    fn linear(&mut self, l: &str, d: &str, out: usize, inp: usize, bias: bool) {
        self.add(
            format!("{l}.weight"),
            format!("{d}.weight"),
            &[out, inp],
            &[out, inp],
        );
        if bias {
            self.add(format!("{l}.bias"), format!("{d}.bias"), &[out], &[out]);
        }
    }
    fn conv(&mut self, l: &str, d: &str, out: usize, inp: usize, k: usize) {
        let w = [out, inp, k, k];
        self.add(format!("{l}.weight"), format!("{d}.weight"), &w, &w);
        self.add(format!("{l}.bias"), format!("{d}.bias"), &[out], &[out]);
    }
}

struct UnetSpec {
    channels: Vec<usize>,
    layers_per_block: usize,
    in_channels: usize,
    out_channels: usize,
    cross: usize,
}

const U: &str = "model.diffusion_model.";

fn unet_resnet(g: &mut Gen, l: &str, d: &str, cin: usize, cout: usize, temb: usize) {
    g.norm(
        &format!("{U}{l}.in_layers.0"),
        &format!("unet.{d}.norm1"),
        cin,
    );
    g.conv(
        &format!("{U}{l}.in_layers.2"),
        &format!("unet.{d}.conv1"),
        cout,
        cin,
        3,
    );
    g.linear(
        &format!("{U}{l}.emb_layers.1"),
        &format!("unet.{d}.time_emb_proj"),
        cout,
        temb,
        true,
    );
    g.norm(
        &format!("{U}{l}.out_layers.0"),
        &format!("unet.{d}.norm2"),
        cout,
    );
    g.conv(
        &format!("{U}{l}.out_layers.3"),
        &format!("unet.{d}.conv2"),
        cout,
        cout,
        3,
    );
    if cin != cout {
        g.conv(
            &format!("{U}{l}.skip_connection"),
            &format!("unet.{d}.conv_shortcut"),
            cout,
            cin,
            1,
        );
    }
}

/// Transformer2DModel: identical names in both layouts.
fn unet_attention(g: &mut Gen, l: &str, d: &str, c: usize, cross: usize) {
    let (l, d) = (format!("{U}{l}"), format!("unet.{d}"));
    g.norm(&format!("{l}.norm"), &format!("{d}.norm"), c);
    g.conv(&format!("{l}.proj_in"), &format!("{d}.proj_in"), c, c, 1);
    let (l, d) = (
        format!("{l}.transformer_blocks.0"),
        format!("{d}.transformer_blocks.0"),
    );
    let same = |s: &str| (format!("{l}.{s}"), format!("{d}.{s}"));
    for (n, inp) in [("attn1", c), ("attn2", cross)] {
        let (a, b) = same(&format!("{n}.to_q"));
        g.linear(&a, &b, c, c, false);
        for kv in ["to_k", "to_v"] {
            let (a, b) = same(&format!("{n}.{kv}"));
            g.linear(&a, &b, c, inp, false);
        }
        let (a, b) = same(&format!("{n}.to_out.0"));
        g.linear(&a, &b, c, c, true);
    }
    for n in ["norm1", "norm2", "norm3"] {
        let (a, b) = same(n);
        g.norm(&a, &b, c);
    }
    let (a, b) = same("ff.net.0.proj");
    g.linear(&a, &b, 8 * c, c, true);
    let (a, b) = same("ff.net.2");
    g.linear(&a, &b, c, 4 * c, true);
    let (l, d) = (
        l.trim_end_matches(".transformer_blocks.0"),
        d.trim_end_matches(".transformer_blocks.0"),
    );
    g.conv(&format!("{l}.proj_out"), &format!("{d}.proj_out"), c, c, 1);
}

/// UNet2DConditionModel with SD1.x's block types: attention on every down level but the
/// last and every up level but the first.
fn unet_tensors(s: &UnetSpec) -> Vec<Tensor2> {
    let mut g = Gen::default();
    let ch = &s.channels;
    let levels = ch.len();
    let lpb = s.layers_per_block;
    let per = lpb + 1;
    let temb = 4 * ch[0];
    g.conv(
        &format!("{U}input_blocks.0.0"),
        "unet.conv_in",
        ch[0],
        s.in_channels,
        3,
    );
    g.linear(
        &format!("{U}time_embed.0"),
        "unet.time_embedding.linear_1",
        temb,
        ch[0],
        true,
    );
    g.linear(
        &format!("{U}time_embed.2"),
        "unet.time_embedding.linear_2",
        temb,
        temb,
        true,
    );
    for i in 0..levels {
        let out = ch[i];
        let inp = if i == 0 { ch[0] } else { ch[i - 1] };
        for j in 0..lpb {
            let k = per * i + j + 1;
            let cin = if j == 0 { inp } else { out };
            let d = format!("down_blocks.{i}.resnets.{j}");
            unet_resnet(&mut g, &format!("input_blocks.{k}.0"), &d, cin, out, temb);
            if i + 1 < levels {
                let d = format!("down_blocks.{i}.attentions.{j}");
                unet_attention(&mut g, &format!("input_blocks.{k}.1"), &d, out, s.cross);
            }
        }
        if i + 1 < levels {
            g.conv(
                &format!("{U}input_blocks.{}.0.op", per * (i + 1)),
                &format!("unet.down_blocks.{i}.downsamplers.0.conv"),
                out,
                out,
                3,
            );
        }
    }
    let c = ch[levels - 1];
    unet_resnet(&mut g, "middle_block.0", "mid_block.resnets.0", c, c, temb);
    unet_attention(
        &mut g,
        "middle_block.1",
        "mid_block.attentions.0",
        c,
        s.cross,
    );
    unet_resnet(&mut g, "middle_block.2", "mid_block.resnets.1", c, c, temb);
    let rev: Vec<usize> = ch.iter().rev().copied().collect();
    for i in 0..levels {
        let out = rev[i];
        let prev = if i == 0 { rev[0] } else { rev[i - 1] };
        let skip_in = rev[(i + 1).min(levels - 1)];
        for j in 0..per {
            let k = per * i + j;
            let skip = if j == lpb { skip_in } else { out };
            let cin = if j == 0 { prev } else { out };
            let d = format!("up_blocks.{i}.resnets.{j}");
            let l = format!("output_blocks.{k}.0");
            unet_resnet(&mut g, &l, &d, cin + skip, out, temb);
            if i > 0 {
                let d = format!("up_blocks.{i}.attentions.{j}");
                unet_attention(&mut g, &format!("output_blocks.{k}.1"), &d, out, s.cross);
            }
        }
        if i + 1 < levels {
            let sub = if i == 0 { 1 } else { 2 };
            g.conv(
                &format!("{U}output_blocks.{}.{sub}.conv", per * i + lpb),
                &format!("unet.up_blocks.{i}.upsamplers.0.conv"),
                out,
                out,
                3,
            );
        }
    }
    g.norm(&format!("{U}out.0"), "unet.conv_norm_out", ch[0]);
    g.conv(
        &format!("{U}out.2"),
        "unet.conv_out",
        s.out_channels,
        ch[0],
        3,
    );
    g.out
}

const V: &str = "first_stage_model.";

fn vae_resnet(g: &mut Gen, l: &str, d: &str, cin: usize, cout: usize) {
    g.norm(&format!("{V}{l}.norm1"), &format!("vae.{d}.norm1"), cin);
    g.conv(
        &format!("{V}{l}.conv1"),
        &format!("vae.{d}.conv1"),
        cout,
        cin,
        3,
    );
    g.norm(&format!("{V}{l}.norm2"), &format!("vae.{d}.norm2"), cout);
    g.conv(
        &format!("{V}{l}.conv2"),
        &format!("vae.{d}.conv2"),
        cout,
        cout,
        3,
    );
    if cin != cout {
        g.conv(
            &format!("{V}{l}.nin_shortcut"),
            &format!("vae.{d}.conv_shortcut"),
            cout,
            cin,
            1,
        );
    }
}

fn vae_mid(g: &mut Gen, side: &str, c: usize) {
    vae_resnet(
        g,
        &format!("{side}.mid.block_1"),
        &format!("{side}.mid_block.resnets.0"),
        c,
        c,
    );
    let (l, d) = (
        format!("{V}{side}.mid.attn_1"),
        format!("vae.{side}.mid_block.attentions.0"),
    );
    g.norm(&format!("{l}.norm"), &format!("{d}.group_norm"), c);
    for (a, b) in [
        ("q", "to_q"),
        ("k", "to_k"),
        ("v", "to_v"),
        ("proj_out", "to_out.0"),
    ] {
        // 1x1 convolutions in LDM, Linear in diffusers.
        g.add(
            format!("{l}.{a}.weight"),
            format!("{d}.{b}.weight"),
            &[c, c, 1, 1],
            &[c, c],
        );
        g.add(format!("{l}.{a}.bias"), format!("{d}.{b}.bias"), &[c], &[c]);
    }
    vae_resnet(
        g,
        &format!("{side}.mid.block_2"),
        &format!("{side}.mid_block.resnets.1"),
        c,
        c,
    );
}

/// AutoencoderKL; the LDM decoder numbers its levels from the bottom (reversed).
fn vae_tensors(ch: &[usize], latent: usize) -> Vec<Tensor2> {
    let mut g = Gen::default();
    let levels = ch.len();
    let lpb = 2;
    g.conv(
        &format!("{V}encoder.conv_in"),
        "vae.encoder.conv_in",
        ch[0],
        3,
        3,
    );
    for i in 0..levels {
        let out = ch[i];
        let inp = if i == 0 { ch[0] } else { ch[i - 1] };
        for j in 0..lpb {
            let cin = if j == 0 { inp } else { out };
            vae_resnet(
                &mut g,
                &format!("encoder.down.{i}.block.{j}"),
                &format!("encoder.down_blocks.{i}.resnets.{j}"),
                cin,
                out,
            );
        }
        if i + 1 < levels {
            g.conv(
                &format!("{V}encoder.down.{i}.downsample.conv"),
                &format!("vae.encoder.down_blocks.{i}.downsamplers.0.conv"),
                out,
                out,
                3,
            );
        }
    }
    let c = ch[levels - 1];
    vae_mid(&mut g, "encoder", c);
    g.norm(
        &format!("{V}encoder.norm_out"),
        "vae.encoder.conv_norm_out",
        c,
    );
    g.conv(
        &format!("{V}encoder.conv_out"),
        "vae.encoder.conv_out",
        2 * latent,
        c,
        3,
    );
    g.conv(
        &format!("{V}quant_conv"),
        "vae.quant_conv",
        2 * latent,
        2 * latent,
        1,
    );
    g.conv(
        &format!("{V}post_quant_conv"),
        "vae.post_quant_conv",
        latent,
        latent,
        1,
    );
    g.conv(
        &format!("{V}decoder.conv_in"),
        "vae.decoder.conv_in",
        c,
        latent,
        3,
    );
    vae_mid(&mut g, "decoder", c);
    let rev: Vec<usize> = ch.iter().rev().copied().collect();
    for i in 0..levels {
        let out = rev[i];
        let prev = if i == 0 { rev[0] } else { rev[i - 1] };
        let k = levels - 1 - i;
        for j in 0..=lpb {
            let cin = if j == 0 { prev } else { out };
            vae_resnet(
                &mut g,
                &format!("decoder.up.{k}.block.{j}"),
                &format!("decoder.up_blocks.{i}.resnets.{j}"),
                cin,
                out,
            );
        }
        if i + 1 < levels {
            g.conv(
                &format!("{V}decoder.up.{k}.upsample.conv"),
                &format!("vae.decoder.up_blocks.{i}.upsamplers.0.conv"),
                out,
                out,
                3,
            );
        }
    }
    g.norm(
        &format!("{V}decoder.norm_out"),
        "vae.decoder.conv_norm_out",
        ch[0],
    );
    g.conv(
        &format!("{V}decoder.conv_out"),
        "vae.decoder.conv_out",
        3,
        ch[0],
        3,
    );
    g.out
}

struct ClipSpec {
    vocab: usize,
    hidden: usize,
    layers: usize,
    positions: usize,
    intermediate: usize,
}

/// CLIPTextModel; `with_text_model` false writes the old layout without `text_model.`.
fn clip_tensors(s: &ClipSpec, with_text_model: bool) -> Vec<Tensor2> {
    let mut g = Gen::default();
    let lp = if with_text_model {
        "cond_stage_model.transformer.text_model."
    } else {
        "cond_stage_model.transformer."
    };
    let d = "text_encoder.text_model.";
    let h = s.hidden;
    for (n, rows) in [
        ("embeddings.token_embedding.weight", s.vocab),
        ("embeddings.position_embedding.weight", s.positions),
    ] {
        g.add(
            format!("{lp}{n}"),
            format!("{d}{n}"),
            &[rows, h],
            &[rows, h],
        );
    }
    for layer in 0..s.layers {
        let p = format!("encoder.layers.{layer}.");
        let both = |n: &str| (format!("{lp}{p}{n}"), format!("{d}{p}{n}"));
        for proj in ["q_proj", "k_proj", "v_proj", "out_proj"] {
            let (a, b) = both(&format!("self_attn.{proj}"));
            g.linear(&a, &b, h, h, true);
        }
        for n in ["layer_norm1", "layer_norm2"] {
            let (a, b) = both(n);
            g.norm(&a, &b, h);
        }
        let (a, b) = both("mlp.fc1");
        g.linear(&a, &b, s.intermediate, h, true);
        let (a, b) = both("mlp.fc2");
        g.linear(&a, &b, h, s.intermediate, true);
    }
    g.norm(
        &format!("{lp}final_layer_norm"),
        &format!("{d}final_layer_norm"),
        h,
    );
    g.out
}

fn sd15_unet_spec() -> UnetSpec {
    UnetSpec {
        channels: vec![320, 640, 1280, 1280],
        layers_per_block: 2,
        in_channels: 4,
        out_channels: 4,
        cross: 768,
    }
}

fn sd15_clip_spec() -> ClipSpec {
    ClipSpec {
        vocab: 49408,
        hidden: 768,
        layers: 12,
        positions: 77,
        intermediate: 3072,
    }
}

/// The tiny model: SD1.5's topology (4 UNet levels of 2 layers, 4 VAE levels), small widths
/// (the first three levels distinct, so a level mix-up shows; the last two equal as in SD1.5,
/// so the conv_shortcut count, and with it every count, matches), a 2-layer CLIP of width 64
/// (one head).
fn tiny_unet_spec() -> UnetSpec {
    UnetSpec {
        channels: vec![32, 64, 96, 96],
        layers_per_block: 2,
        in_channels: 4,
        out_channels: 4,
        cross: 64,
    }
}
const TINY_VAE: [usize; 4] = [32, 64, 96, 96];
fn tiny_clip_spec() -> ClipSpec {
    ClipSpec {
        vocab: 100,
        hidden: 64,
        layers: 2,
        positions: 16,
        intermediate: 128,
    }
}

fn tiny_tensors() -> Vec<Tensor2> {
    let mut all = unet_tensors(&tiny_unet_spec());
    all.extend(vae_tensors(&TINY_VAE, 4));
    all.extend(clip_tensors(&tiny_clip_spec(), true));
    all
}

/// Keys real single-file checkpoints carry that lorafuse ignores.
fn ignored_extras() -> Vec<Raw> {
    vec![
        filled("alphas_cumprod", &[1000], 0.5),
        filled("betas", &[1000], 0.001),
        filled("model_ema.decay", &[], 0.9999),
        filled("model_ema.diffusion_modelinput_blocks00weight", &[4], 1.0),
        Raw {
            name: "cond_stage_model.transformer.text_model.embeddings.position_ids".into(),
            dtype: Dtype::I64,
            shape: vec![1, 16],
            bytes: (0..16i64).flat_map(|i| i.to_le_bytes()).collect(),
        },
    ]
}

/// Writes `tensors` under their LDM names, tensor k filled with the value k (exact in f16
/// below 2048), plus the ignored extras.
fn write_ldm(path: &Path, tensors: &[Tensor2]) {
    let mut raws: Vec<Raw> = tensors
        .iter()
        .enumerate()
        .map(|(k, t)| filled(&t.ldm, &t.ldm_shape, k as f32))
        .collect();
    raws.extend(ignored_extras());
    write_safetensors(path, &raws);
}

fn load_tiny(dir: &TempDir) -> (PathBuf, Vec<Tensor2>, Sd15Checkpoint) {
    let path = dir.join("tiny-sd15.safetensors");
    let tensors = tiny_tensors();
    write_ldm(&path, &tensors);
    let ckpt = load_sd15(&path).unwrap();
    (path, tensors, ckpt)
}

fn count_prefix(t: &[Tensor2], prefix: &str) -> usize {
    t.iter().filter(|t| t.diffusers.starts_with(prefix)).count()
}

// ---------------------------------------------------------------------------------------------
// Key mapping

#[test]
fn generated_key_sets_have_sd15_counts() {
    // The real model's counts (ostris/ai-toolkit's SD1 key map: 686 + 248 + 196).
    let unet = unet_tensors(&sd15_unet_spec());
    let vae = vae_tensors(&[128, 256, 512, 512], 4);
    let clip = clip_tensors(&sd15_clip_spec(), true);
    assert_eq!(unet.len(), 686);
    assert_eq!(vae.len(), 248);
    assert_eq!(clip.len(), 196);
    // A few real SD1.5 shapes, to check the generator itself.
    let shape = |t: &[Tensor2], n: &str| t.iter().find(|t| t.diffusers == n).unwrap().shape.clone();
    assert_eq!(
        shape(&unet, "unet.up_blocks.1.resnets.2.conv1.weight"),
        [1280, 1920, 3, 3]
    );
    assert_eq!(
        shape(
            &unet,
            "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"
        ),
        [320, 768]
    );
    assert_eq!(
        shape(
            &vae,
            "vae.decoder.up_blocks.3.resnets.0.conv_shortcut.weight"
        ),
        [128, 256, 1, 1]
    );
    // The tiny model: the same counts, 16 per CLIP layer fewer.
    let tiny = tiny_tensors();
    assert_eq!(count_prefix(&tiny, "unet."), 686);
    assert_eq!(count_prefix(&tiny, "vae."), 248);
    assert_eq!(count_prefix(&tiny, "text_encoder."), 196 - 10 * 16);
}

#[test]
fn ldm_names_map_to_diffusers_names_for_the_documented_examples() {
    let l = LdmLayout::SD15;
    let cases = [
        (
            "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight",
            "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight",
        ),
        (
            "model.diffusion_model.output_blocks.2.1.conv.weight",
            "unet.up_blocks.0.upsamplers.0.conv.weight",
        ),
        (
            "model.diffusion_model.output_blocks.5.2.conv.bias",
            "unet.up_blocks.1.upsamplers.0.conv.bias",
        ),
        (
            "model.diffusion_model.output_blocks.8.2.conv.weight",
            "unet.up_blocks.2.upsamplers.0.conv.weight",
        ),
        (
            "model.diffusion_model.input_blocks.0.0.weight",
            "unet.conv_in.weight",
        ),
        (
            "model.diffusion_model.input_blocks.3.0.op.weight",
            "unet.down_blocks.0.downsamplers.0.conv.weight",
        ),
        (
            "model.diffusion_model.input_blocks.9.0.op.bias",
            "unet.down_blocks.2.downsamplers.0.conv.bias",
        ),
        (
            "model.diffusion_model.input_blocks.4.0.skip_connection.weight",
            "unet.down_blocks.1.resnets.0.conv_shortcut.weight",
        ),
        (
            "model.diffusion_model.input_blocks.11.0.out_layers.3.weight",
            "unet.down_blocks.3.resnets.1.conv2.weight",
        ),
        (
            "model.diffusion_model.input_blocks.8.1.proj_in.weight",
            "unet.down_blocks.2.attentions.1.proj_in.weight",
        ),
        (
            "model.diffusion_model.middle_block.0.in_layers.0.weight",
            "unet.mid_block.resnets.0.norm1.weight",
        ),
        (
            "model.diffusion_model.middle_block.1.transformer_blocks.0.ff.net.0.proj.weight",
            "unet.mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj.weight",
        ),
        (
            "model.diffusion_model.middle_block.2.emb_layers.1.bias",
            "unet.mid_block.resnets.1.time_emb_proj.bias",
        ),
        (
            "model.diffusion_model.output_blocks.0.0.in_layers.2.weight",
            "unet.up_blocks.0.resnets.0.conv1.weight",
        ),
        (
            "model.diffusion_model.output_blocks.11.1.proj_out.bias",
            "unet.up_blocks.3.attentions.2.proj_out.bias",
        ),
        (
            "model.diffusion_model.output_blocks.3.0.skip_connection.weight",
            "unet.up_blocks.1.resnets.0.conv_shortcut.weight",
        ),
        (
            "model.diffusion_model.time_embed.0.weight",
            "unet.time_embedding.linear_1.weight",
        ),
        (
            "model.diffusion_model.time_embed.2.bias",
            "unet.time_embedding.linear_2.bias",
        ),
        (
            "model.diffusion_model.out.0.weight",
            "unet.conv_norm_out.weight",
        ),
        ("model.diffusion_model.out.2.bias", "unet.conv_out.bias"),
        // VAE: the decoder's levels are reversed.
        (
            "first_stage_model.decoder.up.3.block.0.conv1.weight",
            "vae.decoder.up_blocks.0.resnets.0.conv1.weight",
        ),
        (
            "first_stage_model.decoder.up.0.block.2.norm2.bias",
            "vae.decoder.up_blocks.3.resnets.2.norm2.bias",
        ),
        (
            "first_stage_model.decoder.up.1.upsample.conv.weight",
            "vae.decoder.up_blocks.2.upsamplers.0.conv.weight",
        ),
        (
            "first_stage_model.decoder.up.1.block.0.nin_shortcut.weight",
            "vae.decoder.up_blocks.2.resnets.0.conv_shortcut.weight",
        ),
        (
            "first_stage_model.encoder.down.2.downsample.conv.bias",
            "vae.encoder.down_blocks.2.downsamplers.0.conv.bias",
        ),
        (
            "first_stage_model.encoder.mid.block_2.conv1.weight",
            "vae.encoder.mid_block.resnets.1.conv1.weight",
        ),
        (
            "first_stage_model.encoder.mid.attn_1.norm.weight",
            "vae.encoder.mid_block.attentions.0.group_norm.weight",
        ),
        (
            "first_stage_model.decoder.mid.attn_1.proj_out.weight",
            "vae.decoder.mid_block.attentions.0.to_out.0.weight",
        ),
        (
            "first_stage_model.decoder.mid.attn_1.k.bias",
            "vae.decoder.mid_block.attentions.0.to_k.bias",
        ),
        (
            "first_stage_model.encoder.norm_out.bias",
            "vae.encoder.conv_norm_out.bias",
        ),
        (
            "first_stage_model.post_quant_conv.weight",
            "vae.post_quant_conv.weight",
        ),
        // Text encoder: with and without `text_model.`.
        (
            "cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight",
            "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.weight",
        ),
        (
            "cond_stage_model.transformer.encoder.layers.11.mlp.fc2.bias",
            "text_encoder.text_model.encoder.layers.11.mlp.fc2.bias",
        ),
        (
            "cond_stage_model.transformer.embeddings.token_embedding.weight",
            "text_encoder.text_model.embeddings.token_embedding.weight",
        ),
        (
            "cond_stage_model.transformer.text_model.final_layer_norm.weight",
            "text_encoder.text_model.final_layer_norm.weight",
        ),
    ];
    for (ldm_key, want) in cases {
        assert_eq!(
            ldm_to_diffusers(ldm_key, &l).as_deref(),
            Some(want),
            "{ldm_key}"
        );
    }
    for ignored in [
        "alphas_cumprod",
        "betas",
        "log_one_minus_alphas_cumprod",
        "model_ema.decay",
        "model_ema.num_updates",
        "model_ema.diffusion_modelinput_blocks00weight",
        "cond_stage_model.transformer.text_model.embeddings.position_ids",
        "cond_stage_model.transformer.embeddings.position_ids",
        "model.diffusion_model.input_blocks.1.2.weight",
        "model.diffusion_model.nonsense.weight",
        "first_stage_model.decoder.up.4.block.0.conv1.weight",
    ] {
        assert_eq!(ldm_to_diffusers(ignored, &l), None, "{ignored}");
    }
}

#[test]
fn vae_attention_weights_are_reshaped_to_linear() {
    let n = "vae.decoder.mid_block.attentions.0.to_q.weight";
    assert_eq!(ldm::logical_shape(n, &[512, 512, 1, 1]), [512, 512]);
    assert_eq!(ldm::logical_shape(n, &[512, 512]), [512, 512]);
    let bias = "vae.decoder.mid_block.attentions.0.to_q.bias";
    assert_eq!(ldm::logical_shape(bias, &[512]), [512]);
    // The UNet's 1x1 proj_in stays a 1x1 convolution.
    let proj = "unet.mid_block.attentions.0.proj_in.weight";
    assert_eq!(
        ldm::logical_shape(proj, &[1280, 1280, 1, 1]),
        [1280, 1280, 1, 1]
    );
}

#[test]
fn every_pattern_of_the_tiny_model_maps_to_its_diffusers_name_and_data() {
    let dir = TempDir::new("map");
    let (path, tensors, ckpt) = load_tiny(&dir);
    let (_, unet) = &ckpt.unet;
    let (_, vae) = &ckpt.vae;
    let (_, te) = &ckpt.text_encoder;
    assert_eq!(unet.len(), 686);
    assert_eq!(vae.len(), 248);
    assert_eq!(te.len(), 36);
    let mut ignored = ckpt.ignored.clone();
    ignored.sort();
    let mut want_ignored: Vec<String> = ignored_extras().into_iter().map(|r| r.name).collect();
    want_ignored.sort();
    assert_eq!(ignored, want_ignored);
    assert_eq!(ckpt.source, path);

    for (k, t) in tensors.iter().enumerate() {
        let w = if t.diffusers.starts_with("unet.") {
            unet
        } else if t.diffusers.starts_with("vae.") {
            vae
        } else {
            te
        };
        assert_eq!(
            w.shape(&t.diffusers),
            Some(t.shape.as_slice()),
            "{}",
            t.diffusers
        );
        let (file, stored) = w.source_of(&t.diffusers).unwrap();
        assert_eq!((file, stored), (path.as_path(), t.ldm.as_str()));
        // The data is the LDM tensor's (tensor k holds the value k), in f32 and f16.
        let x = w.get(&t.diffusers, t.shape.clone()).unwrap();
        assert_eq!(x.dims(), t.shape.as_slice());
        assert!(
            x.to_f32_vec().iter().all(|&v| v == k as f32),
            "{}",
            t.diffusers
        );
        let h = w.get_f16(&t.diffusers, t.shape.clone()).unwrap();
        assert_eq!(h.dtype(), lorafuse::DType::F16);
        assert_eq!(h.to_f32_vec()[0], k as f32);
    }
    assert!(unet.contains("unet.conv_in.weight"));
    assert!(!unet.contains("vae.encoder.conv_in.weight"));
    let ups: Vec<&str> = unet
        .keys_with_prefix("unet.up_blocks.0.upsamplers.")
        .collect();
    assert_eq!(
        ups,
        [
            "unet.up_blocks.0.upsamplers.0.conv.bias",
            "unet.up_blocks.0.upsamplers.0.conv.weight"
        ]
    );
    assert_eq!(
        te.keys_with_prefix("text_encoder.text_model.encoder.layers.1.")
            .count(),
        16
    );
    assert_eq!(unet.keys_with_prefix("unet.zzz").count(), 0);
    assert_eq!(unet.files().collect::<Vec<_>>(), [path.as_path()]);
}

#[test]
fn text_encoder_keys_without_text_model_load_the_same() {
    let dir = TempDir::new("te-old");
    let path = dir.join("old-te.safetensors");
    let mut tensors = unet_tensors(&tiny_unet_spec());
    tensors.extend(vae_tensors(&TINY_VAE, 4));
    tensors.extend(clip_tensors(&tiny_clip_spec(), false));
    write_ldm(&path, &tensors);
    let ckpt = load_sd15(&path).unwrap();
    let te = &ckpt.text_encoder.1;
    assert_eq!(te.len(), 36);
    let (_, stored) = te
        .source_of("text_encoder.text_model.encoder.layers.1.mlp.fc1.weight")
        .unwrap();
    assert_eq!(
        stored,
        "cond_stage_model.transformer.encoder.layers.1.mlp.fc1.weight"
    );
    assert_eq!(ckpt.text_encoder.0.num_hidden_layers, 2);
}

// ---------------------------------------------------------------------------------------------
// Configurations

#[test]
fn configs_are_inferred_from_the_shapes() {
    let dir = TempDir::new("infer");
    let (_, _, ckpt) = load_tiny(&dir);
    let unet = &ckpt.unet.0;
    assert_eq!(unet.block_out_channels, [32, 64, 96, 96]);
    assert_eq!(unet.layers_per_block, 2);
    assert_eq!((unet.in_channels, unet.out_channels), (4, 4));
    assert_eq!(unet.cross_attention_dim, 64);
    assert_eq!(
        unet.down_block_types,
        [
            DownBlockType::CrossAttnDownBlock2D,
            DownBlockType::CrossAttnDownBlock2D,
            DownBlockType::CrossAttnDownBlock2D,
            DownBlockType::DownBlock2D
        ]
    );
    assert_eq!(unet.up_block_types, UnetConfig::sd15().up_block_types);
    // What shapes cannot tell: SD1.x's conventions.
    assert_eq!(unet.heads(0), Some(8));
    assert_eq!(unet.head_dim(3), Some(12));
    assert_eq!((unet.norm_num_groups, unet.norm_eps), (32, 1e-5));
    assert!(unet.flip_sin_to_cos && !unet.use_linear_projection);
    assert_eq!(unet.freq_shift, 0.0);

    let vae = &ckpt.vae.0;
    assert_eq!(vae.block_out_channels, TINY_VAE);
    assert_eq!((vae.layers_per_block, vae.latent_channels), (2, 4));
    assert_eq!((vae.in_channels, vae.out_channels), (3, 3));
    assert_eq!((vae.norm_num_groups, vae.scaling_factor), (32, 0.18215));
    assert_eq!(vae.norm_eps(), 1e-6);

    let clip = &ckpt.text_encoder.0;
    let want = ClipTextConfig {
        vocab_size: 100,
        hidden_size: 64,
        intermediate_size: 128,
        num_hidden_layers: 2,
        num_attention_heads: 1,
        max_position_embeddings: 16,
        layer_norm_eps: 1e-5,
        hidden_act: HiddenAct::QuickGelu,
        text_projection: None,
    };
    assert_eq!(clip, &want);
}

#[test]
fn other_depths_and_level_counts_map_and_infer() {
    // One layer per block and three levels: the LDM indices follow (P = 2).
    let dir = TempDir::new("lpb1");
    let path = dir.join("lpb1.safetensors");
    let spec = UnetSpec {
        channels: vec![32, 64, 64],
        layers_per_block: 1,
        in_channels: 5,
        out_channels: 4,
        cross: 64,
    };
    let mut tensors = unet_tensors(&spec);
    tensors.extend(vae_tensors(&[32, 64], 3));
    tensors.extend(clip_tensors(&tiny_clip_spec(), true));
    write_ldm(&path, &tensors);
    let layout = LdmLayout::infer(tensors.iter().map(|t| t.ldm.as_str()));
    assert_eq!(
        layout,
        LdmLayout {
            unet_layers_per_block: 1,
            unet_levels: 3,
            vae_levels: 2
        }
    );
    for t in &tensors {
        assert_eq!(
            ldm_to_diffusers(&t.ldm, &layout).as_deref(),
            Some(t.diffusers.as_str())
        );
    }
    let ckpt = load_sd15(&path).unwrap();
    let unet = &ckpt.unet.0;
    assert_eq!(unet.block_out_channels, [32, 64, 64]);
    assert_eq!((unet.layers_per_block, unet.in_channels), (1, 5));
    assert_eq!(unet.down_block_types.len(), 3);
    assert_eq!(ckpt.vae.0.block_out_channels, [32, 64]);
    assert_eq!(ckpt.vae.0.latent_channels, 3);
    // And the real model's layout from its own key list.
    let sd15 = unet_tensors(&sd15_unet_spec());
    let mut keys: Vec<&str> = sd15.iter().map(|t| t.ldm.as_str()).collect();
    let vae = vae_tensors(&[128, 256, 512, 512], 4);
    keys.extend(vae.iter().map(|t| t.ldm.as_str()));
    assert_eq!(LdmLayout::infer(keys), LdmLayout::SD15);
}

const SD15_UNET_CONFIG: &str = r#"{
  "_class_name": "UNet2DConditionModel",
  "_diffusers_version": "0.6.0",
  "act_fn": "silu",
  "attention_head_dim": 8,
  "block_out_channels": [320, 640, 1280, 1280],
  "center_input_sample": false,
  "cross_attention_dim": 768,
  "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
  "downsample_padding": 1,
  "flip_sin_to_cos": true,
  "freq_shift": 0,
  "in_channels": 4,
  "layers_per_block": 2,
  "mid_block_scale_factor": 1,
  "norm_eps": 1e-05,
  "norm_num_groups": 32,
  "out_channels": 4,
  "sample_size": 64,
  "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]
}"#;

const SD15_VAE_CONFIG: &str = r#"{
  "_class_name": "AutoencoderKL",
  "_diffusers_version": "0.6.0",
  "act_fn": "silu",
  "block_out_channels": [128, 256, 512, 512],
  "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
  "in_channels": 3,
  "latent_channels": 4,
  "layers_per_block": 2,
  "norm_num_groups": 32,
  "out_channels": 3,
  "sample_size": 512,
  "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"]
}"#;

const SD15_TEXT_ENCODER_CONFIG: &str = r#"{
  "_name_or_path": "openai/clip-vit-large-patch14",
  "architectures": ["CLIPTextModel"],
  "attention_dropout": 0.0,
  "bos_token_id": 0,
  "dropout": 0.0,
  "eos_token_id": 2,
  "hidden_act": "quick_gelu",
  "hidden_size": 768,
  "initializer_factor": 1.0,
  "initializer_range": 0.02,
  "intermediate_size": 3072,
  "layer_norm_eps": 1e-05,
  "max_position_embeddings": 77,
  "model_type": "clip_text_model",
  "num_attention_heads": 12,
  "num_hidden_layers": 12,
  "pad_token_id": 1,
  "projection_dim": 768,
  "torch_dtype": "float32",
  "transformers_version": "4.22.0.dev0",
  "vocab_size": 49408
}"#;

#[test]
fn sd15_config_json_files_parse_to_the_sd15_constructors() {
    let unet: UnetConfig = serde_json::from_str(SD15_UNET_CONFIG).unwrap();
    assert_eq!(unet, UnetConfig::sd15());
    // The quirk: attention_head_dim 8 is the number of heads.
    assert_eq!(unet.attention_head_dim, PerLevel::All(8));
    assert_eq!(
        (0..4).map(|l| unet.heads(l).unwrap()).collect::<Vec<_>>(),
        [8, 8, 8, 8]
    );
    assert_eq!(
        (0..4)
            .map(|l| unet.head_dim(l).unwrap())
            .collect::<Vec<_>>(),
        [40, 80, 160, 160]
    );
    unet.validate().unwrap();
    let vae: VaeConfig = serde_json::from_str(SD15_VAE_CONFIG).unwrap();
    assert_eq!(vae, VaeConfig::sd15());
    let clip: ClipTextConfig = serde_json::from_str(SD15_TEXT_ENCODER_CONFIG).unwrap();
    assert_eq!(clip, ClipTextConfig::sd15());
    assert_eq!(clip.head_dim(), 64);
    // num_attention_heads, when a newer config sets it, wins; lists are per level.
    let json = r#"{"attention_head_dim": [5, 10, 20, 20], "num_attention_heads": 4}"#;
    let c: UnetConfig = serde_json::from_str(json).unwrap();
    assert_eq!((c.heads(0), c.head_dim(1)), (Some(4), Some(160)));
}

// ---------------------------------------------------------------------------------------------
// Diffusers folders

fn write_json(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// The tiny model as a diffusers folder: unet/ in fp32 under the usual name, vae/ as an fp16
/// variant with diffusers < 0.17's attention names, text_encoder/ sharded in two files (with
/// the position_ids buffer).
fn write_tiny_diffusers(root: &Path, tensors: &[Tensor2]) {
    let index = r#"{"_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.6.0",
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"]}"#;
    write_json(&root.join("model_index.json"), index);
    let unet_cfg = SD15_UNET_CONFIG
        .replace("[320, 640, 1280, 1280]", "[32, 64, 96, 96]")
        .replace(
            "\"cross_attention_dim\": 768",
            "\"cross_attention_dim\": 64",
        );
    write_json(&root.join("unet/config.json"), &unet_cfg);
    let vae_cfg = SD15_VAE_CONFIG.replace("[128, 256, 512, 512]", "[32, 64, 96, 96]");
    write_json(&root.join("vae/config.json"), &vae_cfg);
    let te_cfg = SD15_TEXT_ENCODER_CONFIG
        .replace("\"hidden_size\": 768", "\"hidden_size\": 64")
        .replace("\"num_attention_heads\": 12", "\"num_attention_heads\": 1")
        .replace("\"num_hidden_layers\": 12", "\"num_hidden_layers\": 2")
        .replace("\"intermediate_size\": 3072", "\"intermediate_size\": 128")
        .replace(
            "\"max_position_embeddings\": 77",
            "\"max_position_embeddings\": 16",
        )
        .replace("\"vocab_size\": 49408", "\"vocab_size\": 100");
    write_json(&root.join("text_encoder/config.json"), &te_cfg);

    let mut unet = Vec::new();
    let mut vae = Vec::new();
    let mut te = Vec::new();
    for (k, t) in tensors.iter().enumerate() {
        let n: usize = t.shape.iter().product();
        let values = vec![k as f32; n];
        if let Some(name) = t.diffusers.strip_prefix("unet.") {
            unet.push(Raw {
                name: name.into(),
                dtype: Dtype::F32,
                shape: t.shape.clone(),
                bytes: f32_bytes(&values),
            });
        } else if let Some(name) = t.diffusers.strip_prefix("vae.") {
            let name = name
                .replace("attentions.0.to_q.", "attentions.0.query.")
                .replace("attentions.0.to_k.", "attentions.0.key.")
                .replace("attentions.0.to_v.", "attentions.0.value.")
                .replace("attentions.0.to_out.0.", "attentions.0.proj_attn.");
            vae.push(filled(&name, &t.shape, k as f32));
        } else {
            let name = t.diffusers.strip_prefix("text_encoder.").unwrap();
            te.push(filled(name, &t.shape, k as f32));
        }
    }
    te.push(Raw {
        name: "text_model.embeddings.position_ids".into(),
        dtype: Dtype::I64,
        shape: vec![1, 16],
        bytes: vec![0; 128],
    });
    write_safetensors(
        &root.join("unet/diffusion_pytorch_model.safetensors"),
        &unet,
    );
    write_safetensors(
        &root.join("vae/diffusion_pytorch_model.fp16.safetensors"),
        &vae,
    );
    let half = te.len() / 2;
    let (a, b) = te.split_at(half);
    let mut map = BTreeMap::new();
    for (shard, part) in [
        ("model-00001-of-00002.safetensors", a),
        ("model-00002-of-00002.safetensors", b),
    ] {
        write_safetensors(&root.join("text_encoder").join(shard), part);
        for t in part {
            map.insert(t.name.clone(), serde_json::Value::from(shard));
        }
    }
    let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": map});
    write_json(
        &root.join("text_encoder/model.safetensors.index.json"),
        &index.to_string(),
    );
}

#[test]
fn diffusers_folder_loads_like_the_single_file() {
    let dir = TempDir::new("diffusers");
    let (_, tensors, single) = load_tiny(&dir);
    let root = dir.join("tiny-diffusers");
    write_tiny_diffusers(&root, &tensors);
    let folder = load_sd15(&root).unwrap();
    assert_eq!(folder.source, root);
    assert_eq!(folder.unet.0, single.unet.0);
    assert_eq!(folder.vae.0, single.vae.0);
    assert_eq!(folder.text_encoder.0, single.text_encoder.0);
    assert_eq!(folder.text_encoder.1.files().count(), 2);
    assert_eq!(folder.ignored.len(), 1, "{:?}", folder.ignored);
    assert!(folder.ignored[0].ends_with("text_model.embeddings.position_ids"));
    for (a, b) in [
        (&folder.unet.1, &single.unet.1),
        (&folder.vae.1, &single.vae.1),
        (&folder.text_encoder.1, &single.text_encoder.1),
    ] {
        assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
        for k in a.keys() {
            let shape = a.shape(k).unwrap().to_vec();
            assert_eq!(Some(shape.as_slice()), b.shape(k), "{k}");
            let (x, y) = (a.get(k, shape.clone()).unwrap(), b.get(k, shape).unwrap());
            assert_eq!(x.to_f32_vec(), y.to_f32_vec(), "{k}");
        }
    }
    let (file, stored) = folder
        .vae
        .1
        .source_of("vae.decoder.mid_block.attentions.0.to_out.0.weight")
        .unwrap();
    assert!(file.ends_with("vae/diffusion_pytorch_model.fp16.safetensors"));
    assert_eq!(stored, "decoder.mid_block.attentions.0.proj_attn.weight");
}

// ---------------------------------------------------------------------------------------------
// dtypes

#[test]
fn f16_bf16_and_f32_convert_exactly() {
    // Every f16 bit pattern widens exactly; every bf16 one too; f32 rounds to nearest f16.
    let all16: Vec<u8> = (0..=u16::MAX).flat_map(|b| b.to_le_bytes()).collect();
    let from_f16 = to_f32(Dtype::F16, &all16).unwrap();
    let from_bf16 = to_f32(Dtype::BF16, &all16).unwrap();
    for (b, (x, y)) in (0..=u16::MAX).zip(from_f16.iter().zip(&from_bf16)) {
        let (hx, hy) = (f16::from_bits(b).to_f32(), bf16::from_bits(b).to_f32());
        assert!(
            x.to_bits() == hx.to_bits() || (x.is_nan() && hx.is_nan()),
            "{b:#x}"
        );
        assert_eq!(y.to_bits(), (b as u32) << 16, "{b:#x}");
        assert!(y.to_bits() == hy.to_bits() || (y.is_nan() && hy.is_nan()));
    }
    let back = to_f16(Dtype::F16, &all16).unwrap();
    assert!(back.iter().zip(0..=u16::MAX).all(|(h, b)| h.to_bits() == b));
    let values = [
        0.0f32,
        -0.0,
        1.0,
        -2.5,
        65504.0,
        1e-7,
        std::f32::consts::PI,
        1e6,
        f32::INFINITY,
    ];
    let from_f32 = to_f16(Dtype::F32, &f32_bytes(&values)).unwrap();
    for (v, h) in values.iter().zip(&from_f32) {
        assert_eq!(h.to_bits(), f16::from_f32(*v).to_bits(), "{v}");
    }
    assert_eq!(from_f32[7], f16::INFINITY);
    assert_eq!(to_f32(Dtype::F32, &f32_bytes(&values)).unwrap(), values);
    // bf16 → f16 rounds through f32.
    let b = [bf16::from_f32(1.0 / 3.0), bf16::from_f32(-1e5)];
    let h = to_f16(Dtype::BF16, &bf16_bytes(&b)).unwrap();
    assert_eq!(h[0], f16::from_f32(b[0].to_f32()));
    assert_eq!(h[1], f16::NEG_INFINITY);
    assert_eq!(to_f32(Dtype::I64, &[0; 8]), None);
}

#[test]
fn weights_of_each_stored_dtype_load_as_f32_and_f16() {
    let dir = TempDir::new("dtypes");
    let path = dir.join("dtypes.safetensors");
    let v = [0.5f32, -1.25, 3.0e-3, 1234.5678];
    let h: Vec<f32> = v.iter().map(|&x| f16::from_f32(x).to_f32()).collect();
    let b: Vec<bf16> = v.iter().map(|&x| bf16::from_f32(x)).collect();
    write_safetensors(
        &path,
        &[
            Raw {
                name: "a.f32".into(),
                dtype: Dtype::F32,
                shape: vec![2, 2],
                bytes: f32_bytes(&v),
            },
            Raw {
                name: "a.f16".into(),
                dtype: Dtype::F16,
                shape: vec![4],
                bytes: f16_bytes(v),
            },
            Raw {
                name: "a.bf16".into(),
                dtype: Dtype::BF16,
                shape: vec![1, 4],
                bytes: bf16_bytes(&b),
            },
        ],
    );
    let w = Weights::open(&path).unwrap();
    assert_eq!(w.keys().collect::<Vec<_>>(), ["a.bf16", "a.f16", "a.f32"]);
    assert_eq!(w.get("a.f32", [2, 2]).unwrap().to_f32_vec(), v);
    assert_eq!(w.get("a.f16", [4]).unwrap().to_f32_vec(), h);
    let bf: Vec<f32> = b.iter().map(|x| x.to_f32()).collect();
    assert_eq!(w.get("a.bf16", [1, 4]).unwrap().to_f32_vec(), bf);
    let f16s = w.get_f16("a.f32", [2, 2]).unwrap();
    assert_eq!(f16s.dtype(), lorafuse::DType::F16);
    assert_eq!(f16s.to_f32_vec(), h);
    let from_bf: Vec<f32> = bf.iter().map(|&x| f16::from_f32(x).to_f32()).collect();
    assert_eq!(w.get_f16("a.bf16", [1, 4]).unwrap().to_f32_vec(), from_bf);
}

// ---------------------------------------------------------------------------------------------
// Errors: one test per case, each checking that the message names what is at fault.

#[test]
fn error_missing_path() {
    let dir = TempDir::new("missing");
    let path = dir.join("no-such-model.safetensors");
    let msg = message(load_sd15(&path));
    assert_has(
        &msg,
        &[
            &path.display().to_string(),
            "no such file or folder",
            ".safetensors",
            "model_index.json",
        ],
    );
}

#[test]
fn error_folder_without_model_index() {
    let dir = TempDir::new("no-index");
    std::fs::create_dir_all(dir.join("unet")).unwrap();
    let msg = message(load_sd15(&dir.0));
    assert_has(
        &msg,
        &[
            &dir.0.display().to_string(),
            "without model_index.json",
            "unet/, vae/, text_encoder/",
        ],
    );
}

#[test]
fn error_pickle_zip_ckpt() {
    let dir = TempDir::new("zip");
    let path = dir.join("v1-5-pruned.ckpt");
    std::fs::write(&path, b"PK\x03\x04\x14\x00\x00\x00\x08\x00archive/data.pkl").unwrap();
    let msg = message(load_sd15(&path));
    assert_has(
        &msg,
        &[
            &path.display().to_string(),
            "zip archive",
            "pickle",
            "arbitrary code",
            "never unpickles",
            "safetensors",
            "save_file",
        ],
    );
}

#[test]
fn error_pickle_protocol_byte_whatever_the_extension() {
    let dir = TempDir::new("pickle");
    let path = dir.join("model.safetensors");
    std::fs::write(&path, b"\x80\x02}q\x00(X\x0a\x00\x00\x00state_dictq\x01").unwrap();
    let msg = message(load_sd15(&path));
    assert_has(
        &msg,
        &[
            &path.display().to_string(),
            "pickle, protocol 2",
            "arbitrary code",
        ],
    );
}

#[test]
fn error_pickle_by_extension() {
    let dir = TempDir::new("bin");
    let path = dir.join("pytorch_model.bin");
    // Protocol 0 pickles have no magic bytes; the name gives them away.
    std::fs::write(&path, b"(dp0\nS'state_dict'\np1\n").unwrap();
    let msg = message(load_sd15(&path));
    assert_has(
        &msg,
        &[
            &path.display().to_string(),
            "extension .bin",
            "never unpickles",
        ],
    );
}

#[test]
fn error_diffusers_folder_with_only_pickle_weights() {
    let dir = TempDir::new("diffusers-bin");
    let root = dir.join("sd15");
    let tensors = tiny_tensors();
    write_tiny_diffusers(&root, &tensors);
    std::fs::remove_file(root.join("unet/diffusion_pytorch_model.safetensors")).unwrap();
    std::fs::write(root.join("unet/diffusion_pytorch_model.bin"), b"PK\x03\x04").unwrap();
    let msg = message(load_sd15(&root));
    assert_has(
        &msg,
        &[
            "diffusion_pytorch_model.bin",
            "only weights are PyTorch .bin",
            "safe_serialization=True",
        ],
    );
}

#[test]
fn safetensors_content_under_a_ckpt_name_loads() {
    // Not an error: content wins over the name.
    let dir = TempDir::new("renamed");
    let path = dir.join("renamed.ckpt");
    write_ldm(&path, &tiny_tensors());
    let ckpt = load_sd15(&path).unwrap();
    assert_eq!(ckpt.unet.1.len(), 686);
}

/// A minimal file: detection runs before anything else is needed.
fn write_minimal(path: &Path, tensors: &[(&str, &[usize])]) {
    let raws: Vec<Raw> = tensors.iter().map(|(n, s)| filled(n, s, 0.0)).collect();
    write_safetensors(path, &raws);
}

/// SD2.x is loaded (tests/golden.rs); detection names what shows it, and a file with only
/// those keys is refused for what it lacks.
fn sd2_evidence(path: &Path) -> String {
    match lorafuse::model::checkpoint::detect_family(path).unwrap() {
        lorafuse::model::checkpoint::Family::Sd2 { evidence } => evidence,
        other => panic!("{}: detected {other:?}", path.display()),
    }
}

#[test]
fn sd2_detected_by_its_openclip_text_encoder() {
    let dir = TempDir::new("sd2-clip");
    let path = dir.join("v2-1_768-ema-pruned.safetensors");
    write_minimal(
        &path,
        &[
            (
                "model.diffusion_model.input_blocks.0.0.weight",
                &[320, 4, 3, 3],
            ),
            ("cond_stage_model.model.token_embedding.weight", &[8, 4]),
        ],
    );
    assert_has(
        &sd2_evidence(&path),
        &["OpenCLIP", "cond_stage_model.model."],
    );
    let msg = message(load_sd15(&path));
    assert_has(&msg, &[&path.display().to_string(), "first_stage_model."]);
}

#[test]
fn sd2_detected_by_cross_attention_1024() {
    let dir = TempDir::new("sd2-cross");
    let path = dir.join("sd2-cross.safetensors");
    let k = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight";
    write_minimal(&path, &[(k, &[32, 1024])]);
    assert_has(&sd2_evidence(&path), &[k, "1024"]);
}

#[test]
fn sd2_detected_by_linear_proj_in() {
    let dir = TempDir::new("sd2-proj");
    let path = dir.join("sd2-proj.safetensors");
    let k = "model.diffusion_model.input_blocks.1.1.proj_in.weight";
    write_minimal(&path, &[(k, &[32, 32])]);
    assert_has(&sd2_evidence(&path), &[k, "Linear"]);
}

#[test]
fn error_sdxl_conditioner() {
    let dir = TempDir::new("sdxl");
    let path = dir.join("sd_xl_base_1.0.safetensors");
    write_minimal(
        &path,
        &[
            (
                "model.diffusion_model.input_blocks.0.0.weight",
                &[320, 4, 3, 3],
            ),
            (
                "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight",
                &[8],
            ),
        ],
    );
    let msg = message(load_sd15(&path));
    assert_has(
        &msg,
        &[
            &path.display().to_string(),
            "this is an SDXL checkpoint",
            "conditioner.embedders.",
            "SD1.x and SD2.x checkpoints only",
        ],
    );
}

#[test]
fn error_sdxl_label_emb() {
    let dir = TempDir::new("sdxl-label");
    let path = dir.join("sdxl-unet.safetensors");
    write_minimal(
        &path,
        &[
            (
                "model.diffusion_model.input_blocks.0.0.weight",
                &[320, 4, 3, 3],
            ),
            ("model.diffusion_model.label_emb.0.0.weight", &[8, 4]),
        ],
    );
    let msg = message(load_sd15(&path));
    assert_has(
        &msg,
        &[
            "this is an SDXL checkpoint",
            "label_emb",
            "SD2.x checkpoints only",
        ],
    );
}

#[test]
fn error_other_model_kinds_are_named() {
    let dir = TempDir::new("other-kinds");
    type Tensors<'a> = &'a [(&'a str, &'a [usize])];
    let cases: [(&str, Tensors, &str); 5] = [
        (
            "sd3",
            &[(
                "model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight",
                &[8, 8],
            )],
            "SD3",
        ),
        (
            "flux",
            &[(
                "model.diffusion_model.double_blocks.0.img_attn.qkv.weight",
                &[8, 8],
            )],
            "Flux",
        ),
        (
            "refiner",
            &[
                ("conditioner.embedders.0.model.ln_final.weight", &[8]),
                ("model.diffusion_model.label_emb.0.0.weight", &[8, 4]),
            ],
            "SDXL refiner",
        ),
        (
            "inpaint",
            &[(
                "model.diffusion_model.input_blocks.0.0.weight",
                &[320, 9, 3, 3],
            )],
            "inpainting",
        ),
        (
            "pix2pix",
            &[(
                "model.diffusion_model.input_blocks.0.0.weight",
                &[320, 8, 3, 3],
            )],
            "instruct-pix2pix",
        ),
    ];
    for (name, tensors, family) in cases {
        let path = dir.join(&format!("{name}.safetensors"));
        write_minimal(&path, tensors);
        let msg = message(load_sd15(&path));
        assert_has(&msg, &[family, tensors[0].0]);
        assert_eq!(
            lorafuse::model::family::family_of(&path)
                .map(|f| f.id())
                .err()
                .map(|e| e.to_string()),
            Some(msg),
            "{name}"
        );
    }
}

#[test]
fn error_sdxl_diffusers_folder() {
    let dir = TempDir::new("sdxl-folder");
    let root = dir.join("sdxl");
    write_json(
        &root.join("model_index.json"),
        r#"{"_class_name": "StableDiffusionXLPipeline", "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"]}"#,
    );
    let msg = message(load_sd15(&root));
    assert_has(
        &msg,
        &[
            &root.display().to_string(),
            "this is an SDXL checkpoint",
            "StableDiffusionXLPipeline",
        ],
    );
}

#[test]
fn error_diffusers_folder_cross_attention_not_the_text_width() {
    let dir = TempDir::new("sd2-folder");
    let root = dir.join("sd2");
    write_tiny_diffusers(&root, &tiny_tensors());
    let cfg = SD15_UNET_CONFIG.replace(
        "\"cross_attention_dim\": 768",
        "\"cross_attention_dim\": 1024",
    );
    write_json(&root.join("unet/config.json"), &cfg);
    let msg = message(load_sd15(&root));
    assert_has(&msg, &["cross_attention_dim 1024", "hidden_size"]);
}

#[test]
fn error_lora_is_not_a_base_model() {
    let dir = TempDir::new("lora");
    let path = dir.join("my-lora.safetensors");
    let k = "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight";
    write_minimal(&path, &[(k, &[4, 32, 1, 1])]);
    let msg = message(load_sd15(&path));
    assert_has(
        &msg,
        &[
            &path.display().to_string(),
            "not an SD1.x, SD2.x or SDXL checkpoint",
            "LoRA",
            k,
        ],
    );
}

#[test]
fn error_truncated_header() {
    let dir = TempDir::new("trunc-header");
    let path = dir.join("half-downloaded.safetensors");
    let full = serialize(&[filled(
        "model.diffusion_model.out.2.weight",
        &[4, 32, 3, 3],
        1.0,
    )]);
    std::fs::write(&path, &full[..40]).unwrap();
    let msg = message(load_sd15(&path));
    assert_has(
        &msg,
        &[
            &path.display().to_string(),
            "is truncated",
            "header is",
            "only 32 bytes follow",
            "download",
        ],
    );
    // Shorter than the length field itself.
    std::fs::write(&path, &full[..5]).unwrap();
    let msg = message(load_sd15(&path));
    assert_has(
        &msg,
        &[&path.display().to_string(), "is truncated", "5 bytes"],
    );
    std::fs::write(&path, b"").unwrap();
    let msg = message(load_sd15(&path));
    assert_has(
        &msg,
        &[&path.display().to_string(), "is truncated", "empty"],
    );
}

#[test]
fn error_truncated_data() {
    let dir = TempDir::new("trunc-data");
    let path = dir.join("interrupted.safetensors");
    let full = serialize(&[filled(
        "model.diffusion_model.out.2.weight",
        &[4, 32, 3, 3],
        1.0,
    )]);
    std::fs::write(&path, &full[..full.len() - 100]).unwrap();
    let msg = message(load_sd15(&path));
    assert_has(
        &msg,
        &[
            &path.display().to_string(),
            "is truncated",
            &format!("describes {} bytes", full.len()),
            "100 bytes missing",
            "download it again",
        ],
    );
}

#[test]
fn error_missing_tensor_names_key_and_file() {
    let dir = TempDir::new("missing-tensor");
    let (path, _, ckpt) = load_tiny(&dir);
    let r = ckpt
        .unet
        .1
        .get("unet.down_blocks.9.resnets.0.conv1.weight", [1]);
    let msg = message(r);
    assert_has(
        &msg,
        &[
            "`unet.down_blocks.9.resnets.0.conv1.weight`",
            "missing from",
            &path.display().to_string(),
        ],
    );
    // A file without one tensor that configuration inference needs.
    let path2 = dir.join("incomplete.safetensors");
    let tensors: Vec<Tensor2> = tiny_tensors()
        .into_iter()
        .filter(|t| t.diffusers != "unet.conv_out.weight")
        .collect();
    write_ldm(&path2, &tensors);
    let msg = message(load_sd15(&path2));
    assert_has(
        &msg,
        &[
            "`unet.conv_out.weight`",
            "missing from",
            &path2.display().to_string(),
        ],
    );
    // A file without any VAE.
    let path3 = dir.join("no-vae.safetensors");
    let tensors: Vec<Tensor2> = tiny_tensors()
        .into_iter()
        .filter(|t| !t.diffusers.starts_with("vae."))
        .collect();
    write_ldm(&path3, &tensors);
    let msg = message(load_sd15(&path3));
    assert_has(
        &msg,
        &[
            &path3.display().to_string(),
            "no VAE found",
            "first_stage_model.*",
        ],
    );
}

#[test]
fn error_wrong_shape_names_key_file_and_both_shapes() {
    let dir = TempDir::new("shape");
    let (path, _, ckpt) = load_tiny(&dir);
    let msg = message(ckpt.unet.1.get("unet.conv_in.weight", [320, 4, 3, 3]));
    assert_has(
        &msg,
        &[
            "`unet.conv_in.weight`",
            "(stored as `model.diffusion_model.input_blocks.0.0.weight`)",
            &path.display().to_string(),
            "has shape [32, 4, 3, 3]",
            "expected [320, 4, 3, 3]",
        ],
    );
    let msg = message(ckpt.vae.1.get_f16(
        "vae.encoder.mid_block.attentions.0.to_q.weight",
        [96, 96, 1, 1],
    ));
    assert_has(&msg, &["has shape [96, 96]", "expected [96, 96, 1, 1]"]);
}

#[test]
fn error_unsupported_dtype_names_key_and_file() {
    let dir = TempDir::new("dtype");
    let path = dir.join("ints.safetensors");
    write_safetensors(
        &path,
        &[Raw {
            name: "counts".into(),
            dtype: Dtype::I32,
            shape: vec![2],
            bytes: vec![0; 8],
        }],
    );
    let w = Weights::open(&path).unwrap();
    let msg = message(w.get("counts", [2]));
    assert_has(
        &msg,
        &[
            "`counts`",
            &path.display().to_string(),
            "dtype I32",
            "F32, F16, BF16",
        ],
    );
}

#[test]
fn error_not_safetensors() {
    let dir = TempDir::new("garbage");
    let path = dir.join("notes.safetensors");
    std::fs::write(&path, b"this is a text file, not a model at all\n").unwrap();
    let msg = message(load_sd15(&path));
    assert_has(
        &msg,
        &[&path.display().to_string(), "not a valid safetensors file"],
    );
    // Valid framing, trailing garbage.
    let mut bytes = serialize(&[filled("x", &[2], 1.0)]);
    bytes.extend_from_slice(b"extra");
    std::fs::write(&path, &bytes).unwrap();
    let msg = message(load_sd15(&path));
    assert_has(
        &msg,
        &["not a valid safetensors file", "5 unexpected bytes"],
    );
}

#[test]
fn error_config_json_names_the_file() {
    let dir = TempDir::new("bad-config");
    let root = dir.join("sd15");
    write_tiny_diffusers(&root, &tiny_tensors());
    write_json(
        &root.join("vae/config.json"),
        r#"{"block_out_channels": "wide"}"#,
    );
    let msg = message(load_sd15(&root));
    assert_has(
        &msg,
        &["vae/config.json", "cannot parse", "block_out_channels"],
    );
    std::fs::remove_dir_all(root.join("text_encoder")).unwrap();
    write_json(&root.join("vae/config.json"), SD15_VAE_CONFIG);
    let msg = message(load_sd15(&root));
    assert_has(
        &msg,
        &["no text_encoder found", "text_encoder/ with config.json"],
    );
}

// ---------------------------------------------------------------------------------------------
// Bad bytes never panic

#[test]
fn fuzz_random_bytes_are_errors_not_panics() {
    let dir = TempDir::new("fuzz-random");
    let path = dir.join("random.safetensors");
    let mut rng = Rng::new(1234);
    for round in 0..300 {
        let len = rng.below(600) as usize;
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        // Half the time, a plausible header length and '{', to get past the framing.
        if round % 2 == 0 && len > 9 {
            let n = rng.below(len as u64);
            bytes[..8].copy_from_slice(&n.to_le_bytes());
            bytes[8] = b'{';
        }
        std::fs::write(&path, &bytes).unwrap();
        assert!(load_sd15(&path).is_err(), "round {round}");
        let _ = Weights::open(&path);
    }
}

#[test]
fn fuzz_truncations_and_corruptions_are_errors_not_panics() {
    let dir = TempDir::new("fuzz-cut");
    let path = dir.join("cut.safetensors");
    let tensors: Vec<Raw> = [
        (
            "model.diffusion_model.input_blocks.0.0.weight",
            vec![32usize, 4, 3, 3],
        ),
        (
            "first_stage_model.encoder.conv_in.weight",
            vec![32, 3, 3, 3],
        ),
        (
            "cond_stage_model.transformer.text_model.final_layer_norm.weight",
            vec![64],
        ),
    ]
    .iter()
    .map(|(n, s)| filled(n, s, 2.0))
    .collect();
    let full = serialize(&tensors);
    let header_end = 8 + u64::from_le_bytes(full[..8].try_into().unwrap()) as usize;
    // Every cut through the header and the first data bytes, then a sample of the rest.
    let cuts = (0..header_end + 64).chain((header_end + 64..full.len()).step_by(97));
    for cut in cuts {
        std::fs::write(&path, &full[..cut]).unwrap();
        assert!(load_sd15(&path).is_err(), "cut at {cut}");
    }
    // Random byte flips in the header: errors (or, rarely, a still-valid header), never a panic.
    let mut rng = Rng::new(99);
    for _ in 0..500 {
        let mut bytes = full.clone();
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(header_end as u64) as usize;
            bytes[at] = rng.next_u64() as u8;
        }
        std::fs::write(&path, &bytes).unwrap();
        let _ = load_sd15(&path);
        if let Ok(w) = Weights::open(&path) {
            for k in w.keys() {
                let s = w.shape(k).unwrap().to_vec();
                let _ = w.get(k, s.clone());
                let _ = w.get_f16(k, s);
            }
        }
    }
}
