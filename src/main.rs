//! The `lorafuse` command line. Thin: parse, call the library, map errors to exit codes
//! (2 for every error lorafuse reports: bad input, files, settings).

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(cli::Failure(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
    }
}
