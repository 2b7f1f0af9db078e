//! Events and reports as the C ABI passes them: a kind (`LORAFUSE_EVENT_*`) and a small JSON
//! object whose `"event"` names the kind again (README "Embedding from C" lists the fields).

use serde_json::json;

use lorafuse::train::events::{Event, TrainReport};

use crate::fail::Fail;
use crate::{
    LORAFUSE_EVENT_FAILED, LORAFUSE_EVENT_FINISHED, LORAFUSE_EVENT_INFO, LORAFUSE_EVENT_SAVED,
    LORAFUSE_EVENT_STARTED, LORAFUSE_EVENT_STEP, LORAFUSE_EVENT_VALIDATION, LORAFUSE_EVENT_WARNING,
};

/// The kind and JSON of a run's event ([`Event::to_json`]).
pub(crate) fn of_event(e: &Event) -> (i32, String) {
    let kind = match e {
        Event::Info(_) => LORAFUSE_EVENT_INFO,
        Event::Warning(_) => LORAFUSE_EVENT_WARNING,
        Event::Started { .. } => LORAFUSE_EVENT_STARTED,
        Event::Step { .. } => LORAFUSE_EVENT_STEP,
        Event::Validation { .. } => LORAFUSE_EVENT_VALIDATION,
        Event::Saved { .. } => LORAFUSE_EVENT_SAVED,
    };
    (kind, e.to_json().to_string())
}

/// The last event of a run: `finished` with the report, or `failed` with the status code and
/// message.
pub(crate) fn of_end(end: &Result<TrainReport, Fail>) -> (i32, String) {
    let (kind, v) = match end {
        Ok(r) => (
            LORAFUSE_EVENT_FINISHED,
            json!({"event": "finished", "report": r.to_json()}),
        ),
        Err(f) => (
            LORAFUSE_EVENT_FAILED,
            json!({"event": "failed", "code": f.code, "message": f.message}),
        ),
    };
    (kind, v.to_string())
}
