//! `lorafuse serve`: a local web UI over the library API ([`crate::api`]): the configuration
//! as a form made from the key declarations, live validation, the memory plan for a GPU
//! profile, start / stop / resume of one run at a time, its events as server-sent events (the
//! loss curve, the learning rate, sample images as they are written) and a data folder's
//! captions.
//!
//! ```text
//! mod.rs      Options, Server: bind, the accept loop (one thread per request)
//! guard.rs    the token, Host / Origin / Sec-Fetch-Site checks, the roots paths must lie under
//! http.rs     query strings, percent-coding, JSON bodies and responses
//! routes.rs   which URL does what
//! job.rs      the run: its thread, its canceller, its log of events for the streams
//! events.rs   an Event (and how the run ended) as JSON
//! plan.rs     the memory plan of a config on a GPU profile, as JSON
//! assets.rs   index.html, app.js and style.css, compiled in
//! ```
//!
//! Safety: bound to 127.0.0.1 unless told otherwise, and then only with a random token in
//! every URL; the Host header must name the loopback address when bound there (DNS
//! rebinding), a request from another origin is refused, and a file is served only from
//! under the run's output folder, inside the roots, after symlinks are resolved.

mod assets;
mod events;
mod guard;
mod http;
mod job;
mod plan;
mod routes;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;

pub use guard::Guard;

/// What `lorafuse serve` is told.
#[derive(Clone, Debug)]
pub struct Options {
    pub bind: IpAddr,
    /// 0: a free port (the URL says which).
    pub port: u16,
    /// The folders the server may read configs, captions and images from and write runs to;
    /// empty: the working folder.
    pub roots: Vec<PathBuf>,
}

/// Why the server did not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("--root {}: {source} (give an existing folder)", .path.display())]
    Root {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}: {why} (another program may use the port: try --port)")]
    Bind { addr: SocketAddr, why: String },
}

/// A running server.
pub struct Server {
    http: Arc<tiny_http::Server>,
    addr: SocketAddr,
    token: Option<String>,
    accept: Option<JoinHandle<()>>,
}

impl Server {
    /// Binds and starts answering on a thread of its own.
    pub fn start(opts: &Options) -> Result<Server, ServeError> {
        let roots = if opts.roots.is_empty() {
            vec![PathBuf::from(".")]
        } else {
            opts.roots.clone()
        };
        let roots = roots
            .iter()
            .map(|p| {
                p.canonicalize().map_err(|source| ServeError::Root {
                    path: p.clone(),
                    source,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let addr = SocketAddr::new(opts.bind, opts.port);
        let http = tiny_http::Server::http(addr).map_err(|e| ServeError::Bind {
            addr,
            why: e.to_string(),
        })?;
        let addr = http.server_addr().to_ip().unwrap_or(addr);
        let token = (!opts.bind.is_loopback()).then(guard::new_token);
        let guard = Guard::new(token.clone(), opts.bind.is_loopback(), addr.port(), roots);
        let http = Arc::new(http);
        let state = Arc::new(routes::State::new(guard));
        let server = Arc::clone(&http);
        let accept = std::thread::spawn(move || {
            for request in server.incoming_requests() {
                let state = Arc::clone(&state);
                std::thread::spawn(move || routes::answer(&state, request));
            }
        });
        Ok(Server {
            http,
            addr,
            token,
            accept: Some(accept),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The page's address, with the token when one is needed.
    pub fn url(&self) -> String {
        let host = match self.addr.ip() {
            IpAddr::V6(ip) => format!("[{ip}]"),
            IpAddr::V4(ip) => ip.to_string(),
        };
        let token = match &self.token {
            Some(t) => format!("?token={t}"),
            None => String::new(),
        };
        format!("http://{host}:{}/{token}", self.addr.port())
    }

    /// Answers until the process ends.
    pub fn wait(mut self) {
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Server {
    /// Stops accepting (a run in progress goes on to its end on its own thread).
    fn drop(&mut self) {
        self.http.unblock();
    }
}
