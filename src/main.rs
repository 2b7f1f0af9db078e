//! The `lorafuse` command line. Thin: parse, call the library, print one message for an error
//! and exit with its code: 2 for bad input, 1 for a failure, 130 after Ctrl-C (see
//! `cli::CliError`).

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if let Some(message) = e.message() {
                eprintln!("error: {message}");
            }
            ExitCode::from(e.exit_code())
        }
    }
}
