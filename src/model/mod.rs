//! The Stable Diffusion 1.x model: configurations, checkpoint loading, and (to come) the
//! layers, UNet, VAE and CLIP text encoder built from them.

pub mod checkpoint;
pub mod config;
