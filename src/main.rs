//! The `lorafuse` command line. Thin: parse, call the library, map errors to exit codes.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "lorafuse",
    version,
    about = "LoRA trainer for Stable Diffusion 1.x"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show the compute backends this build has and which one `device: auto` would pick.
    Devices,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Devices => devices(),
    }
}

fn devices() -> ExitCode {
    println!("cpu: available ({} threads)", rayon::current_num_threads());
    #[cfg(feature = "cuda")]
    match lorafuse::backend::cuda::probe() {
        Ok(info) => println!("cuda:0: {info}"),
        Err(e) => println!("cuda: {e}"),
    }
    #[cfg(not(feature = "cuda"))]
    println!("cuda: not in this build (rebuild with `--features cuda`)");
    ExitCode::SUCCESS
}
