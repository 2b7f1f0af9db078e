//! `lorafuse serve`: starts the web UI (src/serve/) and prints its address.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::Args;
use lorafuse::serve::{Options, Server};

use super::{CliError, Outcome};

#[derive(Args)]
pub struct ServeArgs {
    /// The port; 0 picks a free one (the printed address says which).
    #[arg(long, default_value_t = 7860)]
    port: u16,
    /// The address to listen on. Anything but a loopback address (127.0.0.1, ::1) makes the
    /// server require the random token printed in its address.
    #[arg(long, default_value = "127.0.0.1")]
    bind: IpAddr,
    /// A folder the UI may read configs, data and images from and write runs to
    /// (repeatable); default: the working folder.
    #[arg(long = "root", value_name = "DIR")]
    roots: Vec<PathBuf>,
}

pub fn serve_cmd(args: &ServeArgs) -> Outcome {
    let server = Server::start(&Options {
        bind: args.bind,
        port: args.port,
        roots: args.roots.clone(),
    })
    .map_err(|e| CliError::Usage(e.to_string()))?;
    // The address is the result (standard output, flushed: a program starting the server
    // reads it); the rest is a note.
    let mut out = super::Out::new();
    out.line(format_args!("lorafuse serve: {}", server.url()))?;
    eprintln!("serving until Ctrl-C");
    server.wait();
    Ok(())
}
