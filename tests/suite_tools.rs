//! The LoRA tools: resize, extract, merge (into a checkpoint, into one LoRA), the families'
//! tools, kohya's metadata, export.
//!
//! One test binary for these files (Cargo.toml lists the binaries, `autotests = false`): the
//! shared helpers (tests/common/) and the link are built once, not once per file. Run one file's
//! tests with its module path as the filter, e.g. `cargo test --release --test tools
//! lora_tools::`.

mod common;

mod export;
mod family_tools;
mod kohya_metadata;
mod lora_extract;
mod lora_tools;
mod merge;
