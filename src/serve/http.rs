//! The HTTP pieces the routes share: a URL's path and query, percent-coding, a JSON body read
//! with a size limit, and responses with the headers every answer carries.

use std::collections::HashMap;
use std::io::Read;

use serde_json::Value;
use tiny_http::{Header, Request, Response, StatusCode};

/// The largest request body read (a configuration as JSON is a few KiB).
const MAX_BODY: u64 = 1 << 20;

/// A URL's path and its query's decoded `name=value` pairs.
pub fn split_url(url: &str) -> (String, HashMap<String, String>) {
    let (path, query) = url.split_once('?').unwrap_or((url, ""));
    let pairs = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect();
    (decode(path), pairs)
}

/// `%XX` and `+` decoded; an invalid escape is kept as written.
pub fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match b[i] {
            b'%' => {
                match (
                    b.get(i + 1).and_then(|&c| hex(c)),
                    b.get(i + 2).and_then(|&c| hex(c)),
                ) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 3;
                        continue;
                    }
                    _ => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Every byte but the unreserved ones as `%XX`.
pub fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The request's body as JSON.
pub fn json_body(req: &mut Request) -> Result<Value, String> {
    let mut text = String::new();
    req.as_reader()
        .take(MAX_BODY)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read the request: {e}"))?;
    serde_json::from_str(&text).map_err(|e| format!("the request is not JSON: {e}"))
}

pub fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("ASCII header")
}

/// The headers every answer carries: no sniffing, no framing, our own scripts only.
pub fn guarded<R: Read>(mut r: Response<R>, content_type: &str) -> Response<R> {
    for (n, v) in [
        ("Content-Type", content_type),
        ("X-Content-Type-Options", "nosniff"),
        ("X-Frame-Options", "DENY"),
        ("Cache-Control", "no-store"),
        (
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self'; frame-ancestors 'none'",
        ),
    ] {
        r.add_header(header(n, v));
    }
    r
}

pub fn json(status: u16, v: &Value) -> Response<std::io::Cursor<Vec<u8>>> {
    guarded(
        Response::from_data(v.to_string().into_bytes()).with_status_code(StatusCode(status)),
        "application/json",
    )
}

/// An error: `{"error": message}`.
pub fn error(status: u16, message: &str) -> Response<std::io::Cursor<Vec<u8>>> {
    json(status, &serde_json::json!({ "error": message }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_and_decode() {
        let (p, q) = split_url("/api/file?path=%2Ftmp%2Fa%20b.png&token=x&flag");
        assert_eq!(p, "/api/file");
        assert_eq!(q["path"], "/tmp/a b.png");
        assert_eq!(q["token"], "x");
        assert_eq!(q["flag"], "");
        assert_eq!(decode("100%"), "100%");
        assert_eq!(decode("%zz%4"), "%zz%4");
        assert_eq!(decode(&encode("/a b/ü?&=")), "/a b/ü?&=");
    }
}
