//! What users touch: the command line and its errors, configs (ours and kohya's), plan, the
//! embedding API, serve and its page in a browser.
//!
//! One test binary for these files (Cargo.toml lists the binaries, `autotests = false`): the
//! shared helpers (tests/common/) and the link are built once, not once per file. Run one file's
//! tests with its module path as the filter, e.g. `cargo test --release --test frontend cli::`.

mod common;

mod api;
mod cli;
mod cli_errors;
mod config;
mod kohya_config;
mod plan;
mod serve;
mod serve_browser;
