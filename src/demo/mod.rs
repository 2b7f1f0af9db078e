//! `lorafuse demo`: a tiny model, a small synthetic captioned data set, a real config, and a
//! LoRA trained on them on the CPU in about a minute.

pub mod model;
