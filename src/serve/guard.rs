//! Who may ask, and which paths may be touched: the token (bound off the loopback), the Host
//! header (bound on it: a DNS-rebinding page names its own host), the Origin and
//! Sec-Fetch-Site headers (another site's page may not start or stop a run, nor read
//! anything), and the roots every path read, written or served must lie under once symlinks
//! are resolved.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

/// The request checks and the roots.
pub struct Guard {
    token: Option<String>,
    loopback: bool,
    port: u16,
    roots: Vec<PathBuf>,
}

/// The headers a check reads.
pub struct Asking<'a> {
    pub host: Option<&'a str>,
    pub origin: Option<&'a str>,
    pub fetch_site: Option<&'a str>,
    pub query: &'a HashMap<String, String>,
}

impl Guard {
    /// `roots` are canonical folders.
    pub fn new(token: Option<String>, loopback: bool, port: u16, roots: Vec<PathBuf>) -> Guard {
        Guard {
            token,
            loopback,
            port,
            roots,
        }
    }

    /// Why the request is refused, if it is.
    pub fn refuse(&self, a: &Asking) -> Option<&'static str> {
        if let Some(token) = &self.token {
            let given = a.query.get("token").map(String::as_bytes).unwrap_or(b"");
            if !same(given, token.as_bytes()) {
                return Some("this server needs the token printed when it started (?token=...)");
            }
        }
        let Some(host) = a.host else {
            return Some("no Host header");
        };
        if self.loopback {
            let port = self.port;
            let allowed = [
                format!("127.0.0.1:{port}"),
                format!("localhost:{port}"),
                format!("[::1]:{port}"),
            ];
            if !allowed.iter().any(|h| h.eq_ignore_ascii_case(host)) {
                return Some("the Host header does not name this server");
            }
        }
        if let Some(origin) = a.origin {
            if !origin.eq_ignore_ascii_case(&format!("http://{host}")) {
                return Some("a request from another origin");
            }
        }
        if matches!(a.fetch_site, Some("cross-site" | "same-site")) {
            return Some("a request from another site");
        }
        None
    }

    /// `path` made canonical (symlinks resolved), when it exists and lies inside a root.
    pub fn existing_inside(&self, path: &Path) -> Option<PathBuf> {
        if has_parent_steps(path) {
            return None;
        }
        let real = path.canonicalize().ok()?;
        self.roots
            .iter()
            .any(|r| real.starts_with(r))
            .then_some(real)
    }

    /// The root a folder to be written (it may not exist yet) lies in: its deepest existing
    /// ancestor made canonical, the rest appended, with no `..` anywhere.
    pub fn root_for_writing(&self, path: &Path) -> Option<PathBuf> {
        if has_parent_steps(path) {
            return None;
        }
        let abs = std::env::current_dir().ok()?.join(path);
        let mut existing = abs.as_path();
        let mut rest = Vec::new();
        let real = loop {
            match existing.canonicalize() {
                Ok(real) => break real,
                Err(_) => {
                    rest.push(existing.file_name()?.to_os_string());
                    existing = existing.parent()?;
                }
            }
        };
        let full = rest.iter().rev().fold(real, |p, c| p.join(c));
        self.roots.iter().find(|r| full.starts_with(r)).cloned()
    }

    pub fn roots(&self) -> &[PathBuf] {
        &self.roots
    }
}

fn has_parent_steps(path: &Path) -> bool {
    path.components().any(|c| c == Component::ParentDir)
}

/// Equal bytes, compared in time independent of where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// 32 hex digits from the system's random source (std's randomly keyed hasher where there is
/// no /dev/urandom).
pub fn new_token() -> String {
    let mut bytes = [0u8; 16];
    let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    if read.is_err() {
        use std::hash::{BuildHasher, Hasher};
        for (i, chunk) in bytes.chunks_mut(8).enumerate() {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_usize(i);
            h.write_u128(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos()),
            );
            chunk.copy_from_slice(&h.finish().to_le_bytes());
        }
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asking<'a>(
        host: &'a str,
        origin: Option<&'a str>,
        q: &'a HashMap<String, String>,
    ) -> Asking<'a> {
        Asking {
            host: Some(host),
            origin,
            fetch_site: None,
            query: q,
        }
    }

    #[test]
    fn loopback_checks_host_and_origin() {
        let g = Guard::new(None, true, 7860, vec![]);
        let q = HashMap::new();
        assert_eq!(g.refuse(&asking("127.0.0.1:7860", None, &q)), None);
        assert_eq!(
            g.refuse(&asking("localhost:7860", Some("http://localhost:7860"), &q)),
            None
        );
        assert!(g.refuse(&asking("evil.example:7860", None, &q)).is_some());
        assert!(g
            .refuse(&asking("127.0.0.1:7860", Some("http://evil.example"), &q))
            .is_some());
    }

    #[test]
    fn off_loopback_needs_the_token() {
        let g = Guard::new(Some("abc".into()), false, 80, vec![]);
        let mut q = HashMap::new();
        assert!(g.refuse(&asking("box:80", None, &q)).is_some());
        q.insert("token".into(), "abd".into());
        assert!(g.refuse(&asking("box:80", None, &q)).is_some());
        q.insert("token".into(), "abc".into());
        assert_eq!(g.refuse(&asking("box:80", None, &q)), None);
        assert_eq!(new_token().len(), 32);
        assert_ne!(new_token(), new_token());
    }
}
