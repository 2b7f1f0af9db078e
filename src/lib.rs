//! lorafuse: a LoRA trainer for Stable Diffusion 1.x.
//!
//! This crate is the library behind the `lorafuse` binary. The op set lives in
//! [`backend::Backend`], with [`backend::cpu::CpuBackend`] as the numeric reference that every
//! GPU kernel is checked against; [`tensor::Tensor`] is a shape, a dtype and a buffer.

pub mod api;
pub mod atomic;
pub mod backend;
pub mod caption;
pub mod config;
pub mod data;
pub mod demo;
pub mod dist;
pub mod error;
pub mod linalg;
pub mod lora;
pub mod model;
pub mod monitor;
pub mod plan;
pub mod prepare;
pub mod rng;
pub mod sample;
pub mod serve;
pub mod tensor;
pub mod train;

pub use backend::cpu::CpuBackend;
pub use backend::{Accum, Backend};
pub use error::{Error, Result};
pub use tensor::{DType, Shape, Tensor};
