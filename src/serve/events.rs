//! A run's [`Event`]s, and how it ended, as the JSON objects the page's event stream carries
//! (`kind` names the event; a written file comes with the URL that serves it).

use serde_json::{json, Value};

use crate::api::ApiError;
use crate::train::events::{Event, TrainReport};

use super::http::encode;

/// The URL of a file the run wrote (served by `/api/file` from under the output folder).
pub fn file_url(path: &std::path::Path) -> String {
    format!("/api/file?path={}", encode(&path.to_string_lossy()))
}

pub fn event(e: &Event) -> Value {
    match e {
        Event::Info(text) => json!({ "kind": "info", "text": text }),
        Event::Warning(text) => json!({ "kind": "warning", "text": text }),
        Event::Started {
            total_steps,
            first_step,
            steps_per_epoch,
            images,
            validation_images,
            trainable,
        } => json!({
            "kind": "started",
            "total_steps": total_steps,
            "first_step": first_step,
            "steps_per_epoch": steps_per_epoch,
            "images": images,
            "validation_images": validation_images,
            "trainable": trainable,
        }),
        Event::Step {
            step,
            total,
            epoch,
            loss,
            lr,
            seconds,
            skipped,
            device_memory,
        } => json!({
            "kind": "step",
            "step": step,
            "total": total,
            "epoch": epoch,
            "loss": loss,
            "lr": lr,
            "seconds": seconds,
            "skipped": skipped,
            "device_memory": device_memory.map(|m| json!({ "in_use": m.in_use, "peak": m.peak })),
        }),
        Event::Validation { step, loss, best } => {
            json!({ "kind": "validation", "step": step, "loss": loss, "best": best })
        }
        Event::Saved { what, path } => json!({
            "kind": "saved",
            "what": what,
            "path": path,
            "url": file_url(path),
        }),
    }
}

/// The last event of a run: `finished` with its report, or `failed` with the message.
pub fn ended(result: &Result<TrainReport, ApiError>) -> Value {
    match result {
        Ok(r) => json!({
            "kind": "finished",
            "steps": r.steps,
            "interrupted": r.interrupted,
            "stopped": r.stopped,
            "lora_path": r.lora_path,
            "state_path": r.state_path,
            "train_loss_before": r.train_loss_before,
            "train_loss_after": r.train_loss_after,
        }),
        Err(e) => json!({ "kind": "failed", "message": e.to_string() }),
    }
}
