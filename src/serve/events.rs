//! A run's [`Event`]s, and how it ended, as the JSON objects the page's event stream carries
//! (`event` names it, as in the C ABI; a written file comes with the URL that serves it).

use serde_json::{json, Value};

use crate::api::ApiError;
use crate::train::events::{Event, TrainReport};

use super::http::encode;

/// The URL of a file the run wrote (served by `/api/file` from under the output folder).
pub fn file_url(path: &std::path::Path) -> String {
    format!("/api/file?path={}", encode(&path.to_string_lossy()))
}

/// The event as the page's stream carries it: [`Event::to_json`], and for a written file the
/// URL that serves it.
pub fn event(e: &Event) -> Value {
    let mut v = e.to_json();
    if let Event::Saved { path, .. } = e {
        v["url"] = file_url(path).into();
    }
    v
}

/// The last event of a run: `finished` with its report's fields, or `failed` with the message.
pub fn ended(result: &Result<TrainReport, ApiError>) -> Value {
    match result {
        Ok(r) => {
            let mut v = r.to_json();
            v["event"] = "finished".into();
            v
        }
        Err(e) => json!({ "event": "failed", "message": e.to_string() }),
    }
}
