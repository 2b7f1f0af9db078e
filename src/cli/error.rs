//! What a command can end with, kept typed up to main, which prints one message and picks the
//! exit code: 2 for bad input (the message says what to change), 1 for a failure, 130 for a
//! run that Ctrl-C stopped (after saving), 0 when standard output was closed early (`lorafuse
//! inspect x | head`).

use std::fmt;
use std::io::Write;

use lorafuse::config::ConfigError;
use lorafuse::error::ErrorKind;

/// Why a command did not finish normally.
#[derive(Debug)]
pub enum CliError {
    /// An error of the library; its kind picks the exit code.
    Lib(lorafuse::Error),
    /// The config file or a `--set` value.
    Config(ConfigError),
    /// A command-line value the library never sees (a `--lora` weight, `--gpu-memory`).
    Usage(String),
    /// Ctrl-C stopped the run; what was saved and how to resume is already printed.
    Interrupted,
    /// A worker process of `train --gpus` failed with this exit code (its message is printed).
    Worker { rank: usize, code: i32 },
    /// Standard output was closed by its reader (a broken pipe): stop quietly.
    StdoutClosed,
    /// Writing to standard output failed for another reason (a full disk).
    Stdout(std::io::Error),
}

pub type Outcome = Result<(), CliError>;

/// Exit codes (sysexits-like 2 for usage, as clap; 128 + SIGINT for Ctrl-C, as shells).
pub const EXIT_FAILURE: u8 = 1;
pub const EXIT_BAD_INPUT: u8 = 2;
pub const EXIT_INTERRUPTED: u8 = 130;

impl CliError {
    /// The process's exit code for this ending.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Lib(e) => match e.kind() {
                ErrorKind::BadInput => EXIT_BAD_INPUT,
                ErrorKind::Failure => EXIT_FAILURE,
            },
            CliError::Config(_) | CliError::Usage(_) => EXIT_BAD_INPUT,
            CliError::Interrupted => EXIT_INTERRUPTED,
            CliError::Worker { code, .. } => u8::try_from(*code).unwrap_or(EXIT_FAILURE),
            CliError::StdoutClosed => 0,
            CliError::Stdout(_) => EXIT_FAILURE,
        }
    }

    /// The one message to print after "error: ", if any (an interruption has said its piece,
    /// and a closed pipe has nobody to tell).
    pub fn message(&self) -> Option<String> {
        match self {
            CliError::Lib(e) => Some(e.to_string()),
            CliError::Config(e) => Some(e.to_string()),
            CliError::Usage(m) => Some(m.clone()),
            CliError::Interrupted | CliError::StdoutClosed => None,
            CliError::Worker { rank, code } => Some(format!(
                "worker {rank} ended with exit code {code} (its message is above); the other \
                 workers stopped too. Resume from the last save with --resume"
            )),
            CliError::Stdout(e) => Some(format!("cannot write to standard output: {e}")),
        }
    }
}

impl From<lorafuse::Error> for CliError {
    fn from(e: lorafuse::Error) -> Self {
        CliError::Lib(e)
    }
}

impl From<ConfigError> for CliError {
    fn from(e: ConfigError) -> Self {
        CliError::Config(e)
    }
}

impl From<lorafuse::sample::SampleError> for CliError {
    fn from(e: lorafuse::sample::SampleError) -> Self {
        CliError::Lib(e.into())
    }
}

/// Standard output, where a command prints its result (notes and progress go to stderr). A
/// closed pipe ends the command quietly instead of panicking as `println!` does.
pub struct Out(std::io::StdoutLock<'static>);

impl Out {
    pub fn new() -> Out {
        Out(std::io::stdout().lock())
    }

    /// Writes `text` and a newline.
    pub fn line(&mut self, text: impl fmt::Display) -> Outcome {
        writeln!(self.0, "{text}").map_err(stdout_error)?;
        self.0.flush().map_err(stdout_error)
    }

    /// Writes `text` as is.
    pub fn text(&mut self, text: &str) -> Outcome {
        self.0.write_all(text.as_bytes()).map_err(stdout_error)?;
        self.0.flush().map_err(stdout_error)
    }
}

fn stdout_error(e: std::io::Error) -> CliError {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        CliError::StdoutClosed
    } else {
        CliError::Stdout(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lorafuse::error::LayerError;

    #[test]
    fn exit_codes_follow_the_kind() {
        let bad = lorafuse::Error::BadValue {
            op: "op",
            name: "x",
            value: "0".into(),
            expected: "positive".into(),
        };
        assert_eq!(CliError::Lib(bad).exit_code(), 2);
        let cuda = lorafuse::Error::Cuda {
            what: "cuLaunchKernel".into(),
            detail: "CUDA_ERROR_LAUNCH_FAILED".into(),
        };
        assert_eq!(CliError::Lib(cuda).exit_code(), 1);
        let full = std::io::Error::from(std::io::ErrorKind::StorageFull);
        let io = lorafuse::Error::Io {
            path: "out.safetensors".into(),
            action: "write it",
            source: full,
        };
        assert_eq!(CliError::Lib(io).exit_code(), 1);
        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let layer = lorafuse::Error::Layer(LayerError::new(ErrorKind::BadInput, denied));
        assert_eq!(CliError::Lib(layer).exit_code(), 2);
        assert_eq!(CliError::Usage("--lora x:inf".into()).exit_code(), 2);
        assert_eq!(CliError::Interrupted.exit_code(), 130);
        assert_eq!(CliError::StdoutClosed.exit_code(), 0);
        assert!(CliError::Interrupted.message().is_none());
        assert!(CliError::StdoutClosed.message().is_none());
    }

    #[test]
    fn a_broken_pipe_is_quiet_and_other_write_errors_fail() {
        let pipe = stdout_error(std::io::ErrorKind::BrokenPipe.into());
        assert!(matches!(pipe, CliError::StdoutClosed));
        let full = stdout_error(std::io::ErrorKind::StorageFull.into());
        assert_eq!(full.exit_code(), 1);
        assert!(full.message().unwrap().contains("standard output"));
    }
}
