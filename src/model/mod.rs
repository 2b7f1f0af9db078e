//! The Stable Diffusion 1.x model: configurations, checkpoint loading, the CLIP tokenizer,
//! the frozen layers, and the UNet (with its LoRA backward), VAE and CLIP text encoder; and
//! timm's ViT (vit.rs) for the WD14 tagger of `lorafuse caption`; SDXL's two text encoders
//! (sdxl_text.rs).

pub mod attention;
pub mod checkpoint;
pub mod clip;
pub mod clip_vision;
pub mod cond;
pub mod config;
pub mod family;
pub mod layers;
pub mod sdxl_text;
pub mod tokenizer;
pub mod unet;
pub mod vae;
pub mod vit;
pub mod weights;
