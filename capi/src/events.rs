//! Events and reports as the C ABI passes them: a kind (`LORAFUSE_EVENT_*`) and a small JSON
//! object whose `"event"` names the kind again (README "Embedding from C" lists the fields).

use serde_json::{json, Value};

use lorafuse::train::events::{Event, TrainReport};

use crate::fail::Fail;
use crate::{
    LORAFUSE_EVENT_FAILED, LORAFUSE_EVENT_FINISHED, LORAFUSE_EVENT_INFO, LORAFUSE_EVENT_SAVED,
    LORAFUSE_EVENT_STARTED, LORAFUSE_EVENT_STEP, LORAFUSE_EVENT_VALIDATION, LORAFUSE_EVENT_WARNING,
};

/// The kind and JSON of a run's event. A loss that is not finite is `null`.
pub(crate) fn of_event(e: &Event) -> (i32, String) {
    let (kind, v) = match e {
        Event::Info(m) => (LORAFUSE_EVENT_INFO, json!({"event": "info", "message": m})),
        Event::Warning(m) => (
            LORAFUSE_EVENT_WARNING,
            json!({"event": "warning", "message": m}),
        ),
        Event::Started {
            total_steps,
            first_step,
            steps_per_epoch,
            images,
            validation_images,
            trainable,
        } => (
            LORAFUSE_EVENT_STARTED,
            json!({"event": "started", "total_steps": total_steps, "first_step": first_step,
                   "steps_per_epoch": steps_per_epoch, "images": images,
                   "validation_images": validation_images, "trainable": trainable}),
        ),
        Event::Step {
            step,
            total,
            epoch,
            loss,
            lr,
            seconds,
            skipped,
            device_memory,
        } => (
            LORAFUSE_EVENT_STEP,
            json!({"event": "step", "step": step, "total": total, "epoch": epoch,
                   "loss": loss, "lr": lr, "seconds": seconds, "skipped": skipped,
                   "device_memory": device_memory.map(|m| json!({"in_use": m.in_use, "peak": m.peak}))}),
        ),
        Event::Validation { step, loss, best } => (
            LORAFUSE_EVENT_VALIDATION,
            json!({"event": "validation", "step": step, "loss": loss, "best": best}),
        ),
        Event::Saved { what, path } => (
            LORAFUSE_EVENT_SAVED,
            json!({"event": "saved", "what": what, "path": path.to_string_lossy()}),
        ),
    };
    (kind, v.to_string())
}

/// The report of a run that ended (finished, stopped early or cancelled) as JSON.
pub(crate) fn report(r: &TrainReport) -> Value {
    json!({
        "lora_path": r.lora_path.to_string_lossy(),
        "state_path": r.state_path.to_string_lossy(),
        "steps": r.steps,
        "stopped": r.stopped,
        "interrupted": r.interrupted,
        "train_loss_before": r.train_loss_before,
        "train_loss_after": r.train_loss_after,
        "best_validation": r.best_validation.map(|(step, loss)| json!({"step": step, "loss": loss})),
        "skipped_steps": r.skipped_steps,
    })
}

/// The last event of a run: `finished` with the report, or `failed` with the status code and
/// message.
pub(crate) fn of_end(end: &Result<TrainReport, Fail>) -> (i32, String) {
    let (kind, v) = match end {
        Ok(r) => (
            LORAFUSE_EVENT_FINISHED,
            json!({"event": "finished", "report": report(r)}),
        ),
        Err(f) => (
            LORAFUSE_EVENT_FAILED,
            json!({"event": "failed", "code": f.code, "message": f.message}),
        ),
    };
    (kind, v.to_string())
}
