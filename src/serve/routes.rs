//! Which URL does what. Every request passes the [`Guard`] first; the configuration comes as
//! `{"sets": ["key=value", ...]}` (each read as `--set` reads it), so the form and the CLI
//! share one reader.
//!
//! ```text
//! GET  /  /app.js  /style.css           the page (assets.rs)
//! GET  /api/keys                        every key: name, type, default, rule, meaning
//! GET  /api/profiles                    the GPU profile table
//! GET  /api/status                      the run: none, running, ended
//! GET  /api/events?from=N               the run's events as server-sent events
//! GET  /api/file?path=P                 a file from under the run's output folder
//! GET  /api/load?path=P                 a config file's written keys as form values
//! GET  /api/captions?dir=P              a data folder's captions and tag counts
//! POST /api/validate                    problems (with keys) and notices
//! POST /api/plan      {"gpu": ...}      the memory plan on a card
//! POST /api/start  /api/resume          start the run, or continue its saved state
//! POST /api/stop                        cancel: finish the step, save the state
//! POST /api/tags                        a tag edit on a data folder's captions (or its preview)
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tiny_http::{Method, Request, Response};

use crate::api::{ApiError, Caps, Problem, Trainer};
use crate::config::TrainConfig;
use crate::prepare::tags::{apply, frequency, read_captions, split, Pattern, TagEdit};

use super::guard::{Asking, Guard};
use super::http::{error, guarded, json as json_response, json_body, split_url};
use super::job::Job;

/// What the requests share.
pub struct State {
    guard: Guard,
    job: Mutex<Option<Arc<Job>>>,
    next_id: AtomicU64,
}

impl State {
    pub fn new(guard: Guard) -> State {
        State {
            guard,
            job: Mutex::new(None),
            next_id: AtomicU64::new(1),
        }
    }

    fn job(&self) -> Option<Arc<Job>> {
        self.job.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

type Answer = Response<std::io::Cursor<Vec<u8>>>;

/// Answers one request (on its own thread).
pub fn answer(state: &State, mut req: Request) {
    let (path, query) = split_url(req.url());
    let head = |name: &'static str| {
        req.headers()
            .iter()
            .find(|h| h.field.equiv(name))
            .map(|h| h.value.as_str().to_string())
    };
    let (host, origin, site) = (head("Host"), head("Origin"), head("Sec-Fetch-Site"));
    let refusal = state.guard.refuse(&Asking {
        host: host.as_deref(),
        origin: origin.as_deref(),
        fetch_site: site.as_deref(),
        query: &query,
    });
    if let Some(why) = refusal {
        let _ = req.respond(error(403, why));
        return;
    }
    let get = |name: &str| query.get(name).map(String::as_str).unwrap_or("");
    let answer = match (req.method().clone(), path.as_str()) {
        (Method::Get, "/api/events") => {
            // A reconnecting EventSource says the last event it had.
            let after = head("Last-Event-ID").and_then(|i| i.parse::<usize>().ok());
            let from = get("from").parse().unwrap_or(0);
            return stream(state, req, after.map_or(from, |i| from.max(i + 1)));
        }
        (Method::Get, p) if !p.starts_with("/api/") => match super::assets::asset(p) {
            Some((kind, body)) => guarded(Response::from_string(body), kind),
            None => error(404, "no such page"),
        },
        (Method::Get, "/api/keys") => json_response(200, &json!(TrainConfig::key_docs())),
        (Method::Get, "/api/profiles") => json_response(200, &super::plan::profiles()),
        (Method::Get, "/api/status") => status(state),
        (Method::Get, "/api/file") => return file(state, req, Path::new(get("path"))),
        (Method::Get, "/api/load") => load(state, Path::new(get("path"))),
        (Method::Get, "/api/captions") => captions(state, Path::new(get("dir"))),
        (Method::Post, p) => match json_body(&mut req) {
            Err(e) => error(400, &e),
            Ok(body) => post(state, p, &body),
        },
        _ => error(404, "no such request"),
    };
    let _ = req.respond(answer);
}

fn post(state: &State, path: &str, body: &Value) -> Answer {
    let sets: Vec<String> = body["sets"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    match path {
        "/api/validate" => {
            let c = checked(&state.guard, &sets);
            json_response(
                200,
                &json!({ "problems": problems(&c.problems), "notices": c.notices }),
            )
        }
        "/api/plan" => match Trainer::from_overrides(&sets) {
            Err(e) => error(400, &e.to_string()),
            Ok(t) => match super::plan::plan_on(t.config(), body["gpu"].as_str().unwrap_or("")) {
                Ok(v) => json_response(200, &v),
                Err(e) => error(400, &e),
            },
        },
        "/api/tags" => edit_tags(state, body),
        "/api/start" => start(state, &sets, false),
        "/api/resume" => start(state, &sets, true),
        "/api/stop" => match state.job() {
            Some(job) if job.running() => {
                job.stop();
                json_response(200, &json!({ "stopping": job.id }))
            }
            _ => error(409, "no run is in progress"),
        },
        _ => error(404, "no such request"),
    }
}

/// A configuration read and checked for this server: the trainer and its output folder when
/// it can start.
struct Checked {
    trainer: Option<(Trainer, PathBuf)>,
    problems: Vec<Problem>,
    notices: Vec<String>,
}

fn checked(guard: &Guard, sets: &[String]) -> Checked {
    let no = |problems| Checked {
        trainer: None,
        problems,
        notices: Vec::new(),
    };
    let t = match Trainer::from_overrides(sets) {
        Ok(t) => t,
        Err(ApiError::Invalid(p)) => return no(p),
        Err(e) => {
            return no(vec![Problem {
                key: None,
                message: e.to_string(),
            }])
        }
    };
    let notices = t.notices();
    let cfg = t.config();
    let out = cfg.output_dir.clone();
    // Checked canonically (symlinks resolved), where the output root of the caps compares
    // names.
    let outside: Vec<Problem> = [
        ("output_dir", &cfg.output_dir),
        ("logging_dir", &cfg.logging_dir),
    ]
    .into_iter()
    .filter(|(_, dir)| guard.root_for_writing(dir).is_none())
    .map(|(key, dir)| Problem {
        key: Some(key.into()),
        message: format!(
            "{key} = {} is outside the folders this server may write to ({}): give a \
                 folder inside one, or start `lorafuse serve` with --root",
            dir.display(),
            guard
                .roots()
                .iter()
                .map(|r| r.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    })
    .collect();
    let Some(root) = guard.root_for_writing(&out).filter(|_| outside.is_empty()) else {
        return no(outside);
    };
    let t = t.with_caps(Caps {
        output_root: Some(root),
        ..Caps::default()
    });
    let problems = t.validate();
    let trainer = problems.is_empty().then_some((t, out));
    Checked {
        trainer,
        problems,
        notices,
    }
}

fn problems(p: &[Problem]) -> Value {
    p.iter()
        .map(|p| json!({ "key": p.key, "message": p.message }))
        .collect()
}

fn start(state: &State, sets: &[String], resume: bool) -> Answer {
    let mut slot = state.job.lock().unwrap_or_else(|p| p.into_inner());
    if slot.as_ref().is_some_and(|j| j.running()) {
        return error(409, "a run is in progress: stop it first");
    }
    let c = checked(&state.guard, sets);
    let Some((trainer, out)) = c.trainer else {
        return json_response(422, &json!({ "problems": problems(&c.problems) }));
    };
    // The run's folder, made now (checking made nothing) and named canonically, as the
    // guard serves files.
    let dir = match std::fs::create_dir_all(&out).and_then(|()| out.canonicalize()) {
        Ok(dir) => dir,
        Err(e) => {
            let p = Problem {
                key: Some("output_dir".into()),
                message: format!("{} cannot be created: {e}", out.display()),
            };
            return json_response(422, &json!({ "problems": problems(&[p]) }));
        }
    };
    let id = state.next_id.fetch_add(1, Ordering::SeqCst);
    *slot = Some(Job::start(id, trainer, dir, resume));
    json_response(200, &json!({ "started": id }))
}

fn status(state: &State) -> Answer {
    match state.job() {
        None => json_response(200, &json!({ "job": null })),
        Some(j) => json_response(
            200,
            &json!({ "job": j.id, "running": j.running(), "output_dir": j.output_dir }),
        ),
    }
}

/// Server-sent events of the current run from event `from` on: `id` is the event's number;
/// a comment every 15 s finds a closed page; the stream (chunked, so that the connection
/// can serve the next request) ends after the run's last event.
fn stream(state: &State, req: Request, from: usize) {
    let Some(job) = state.job() else {
        let _ = req.respond(Response::empty(204));
        return;
    };
    let mut w = req.into_writer();
    let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\n\
                X-Content-Type-Options: nosniff\r\nTransfer-Encoding: chunked\r\n\r\n";
    if w.write_all(head.as_bytes()).is_err() {
        return;
    }
    // One chunk per write; the empty chunk ends the body.
    let mut send = |text: &str| {
        let chunk = format!("{:x}\r\n{text}\r\n", text.len());
        w.write_all(chunk.as_bytes()).and_then(|_| w.flush())
    };
    let mut next = from;
    loop {
        let (events, done) = job.events_from(next, Duration::from_secs(15));
        let mut text = String::new();
        for e in &events {
            text.push_str(&format!("id: {next}\ndata: {e}\n\n"));
            next += 1;
        }
        if text.is_empty() {
            text.push_str(": waiting\n\n");
        }
        if send(&text).is_err() {
            return;
        }
        if done {
            let _ = send("");
            return;
        }
    }
}

/// A file from under the current run's output folder (and a root), symlinks resolved.
fn file(state: &State, req: Request, path: &Path) {
    let Some(job) = state.job() else {
        let _ = req.respond(error(404, "no run"));
        return;
    };
    let real = state.guard.existing_inside(path);
    let Some(real) = real.filter(|r| r.starts_with(&job.output_dir) && r.is_file()) else {
        let _ = req.respond(error(403, "not a file under the run's output folder"));
        return;
    };
    let kind = match real.extension().and_then(|e| e.to_str()) {
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("webp") => "image/webp",
        Some("json") => "application/json",
        Some("txt" | "yaml" | "toml") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    };
    match std::fs::File::open(&real) {
        Ok(f) => {
            let _ = req.respond(guarded(Response::from_file(f), kind));
        }
        Err(e) => {
            let _ = req.respond(error(404, &e.to_string()));
        }
    }
}

/// The keys a config file inside a root writes, with their values as form text.
fn load(state: &State, path: &Path) -> Answer {
    let Some(real) = state.guard.existing_inside(path) else {
        return error(403, "not a file inside this server's roots");
    };
    let cfg = match TrainConfig::load(&real, &[] as &[&str]) {
        Ok(cfg) => cfg,
        Err(e) => return error(422, &e.to_string()),
    };
    let all = serde_json::to_value(&cfg).unwrap_or(Value::Null);
    let values: serde_json::Map<String, Value> = TrainConfig::key_names()
        .into_iter()
        .filter(|k| cfg.provenance.is_written(k))
        .filter_map(|k| {
            let text = match all.get(k)? {
                Value::String(s) => s.clone(),
                Value::Null => return None,
                v => v.to_string(),
            };
            Some((k.to_string(), Value::String(text)))
        })
        .collect();
    json_response(200, &json!({ "values": values }))
}

/// A data folder's captions (`.txt`) and how often each tag appears.
fn captions(state: &State, dir: &Path) -> Answer {
    let Some(real) = state.guard.existing_inside(dir) else {
        return error(403, "not a folder inside this server's roots");
    };
    match read_captions(&real, ".txt") {
        Err(e) => error(422, &e.to_string()),
        Ok(c) => json_response(
            200,
            &json!({
                "files": c.files.iter().map(|(p, t)| json!({
                    "file": p.strip_prefix(&real).unwrap_or(p), "text": t
                })).collect::<Vec<_>>(),
                "uncaptioned": c.uncaptioned,
                "tags": frequency(&c),
            }),
        ),
    }
}

/// `{"dir", "ext", "trigger": "a, b", "remove": [pattern], "replace": [[old, new]], "dedupe",
/// "dry_run"}`: the changes `lorafuse tags` would make (written unless `dry_run`).
fn edit_tags(state: &State, body: &Value) -> Answer {
    let text = |v: &Value| v.as_str().unwrap_or("").to_string();
    let Some(dir) = state.guard.existing_inside(Path::new(&text(&body["dir"]))) else {
        return error(403, "not a folder inside this server's roots");
    };
    let list = |v: &Value| v.as_array().cloned().unwrap_or_default();
    let edit = TagEdit {
        remove: list(&body["remove"])
            .iter()
            .map(|p| Pattern::new(&text(p)))
            .collect(),
        replace: list(&body["replace"])
            .iter()
            .map(|r| (Pattern::new(&text(&r[0])), text(&r[1]).trim().to_string()))
            .collect(),
        dedupe: body["dedupe"].as_bool().unwrap_or(false),
        trigger: split(&text(&body["trigger"])),
    };
    let ext = match text(&body["ext"]).trim().trim_start_matches('.') {
        "" => ".txt".to_string(),
        e => format!(".{e}"),
    };
    let dry_run = body["dry_run"].as_bool().unwrap_or(true);
    match read_captions(&dir, &ext).and_then(|c| apply(&c, &edit, dry_run)) {
        Err(e) => error(422, &e.to_string()),
        Ok(changes) => json_response(
            200,
            &json!({
                "written": !dry_run,
                "changes": changes.iter().map(|(p, before, after)| json!({
                    "file": p.strip_prefix(&dir).unwrap_or(p), "before": before, "after": after
                })).collect::<Vec<_>>(),
            }),
        ),
    }
}
