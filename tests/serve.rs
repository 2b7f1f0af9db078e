//! `lorafuse serve` over HTTP: a run started, streamed, stopped and resumed through the API;
//! no file outside the run's output folder and the roots is served (`..`, symlinks, other
//! folders); another origin or host is refused; off the loopback the token is required; and
//! the binary answers within a second of starting.

use crate::common;
use common::tools::TempDir;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use common::http::{json, read_head, request};
use lorafuse::serve::{Options, Server};
use serde_json::{json, Value};

/// A fresh folder, removed when dropped.
fn scratch(name: &str) -> TempDir {
    TempDir::new(&format!("serve-{name}"))
}

fn server(root: &Path) -> Server {
    Server::start(&Options {
        bind: "127.0.0.1".parse().unwrap(),
        port: 0,
        roots: vec![root.to_path_buf()],
    })
    .unwrap()
}

/// The demo's model and data under `dir`, and settings for a run of `steps` into `out` with
/// a sample every `sample_every` steps.
fn settings(dir: &Path, out: &Path, steps: usize, sample_every: usize) -> Value {
    let demo = lorafuse::demo::prepare(&dir.join("demo"), steps).unwrap();
    json!({ "sets": [
        format!("train_data_dir={}", demo.data.display()),
        format!("base_model={}", demo.model.display()),
        format!("output_dir={}", out.display()),
        "resolution=64", "lora_rank=4", "batch_size=4", "learning_rate=0.002",
        "mixed_precision=no",
        format!("max_train_steps={steps}"),
        format!("sample_every_n_steps={sample_every}"),
        "sample_prompts=[\"a red circle --w 64 --h 64 --s 3 --d 1\"]",
    ]})
}

/// Reads the event stream until an event `stop` accepts (or the run ends), returning the
/// events seen.
fn events_until(addr: SocketAddr, from: usize, stop: impl Fn(&Value) -> bool) -> Vec<Value> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    write!(
        s,
        "GET /api/events?from={from} HTTP/1.1\r\nHost: {addr}\r\n\r\n"
    )
    .unwrap();
    let mut r = BufReader::new(s);
    let (status, headers) = read_head(&mut r);
    assert_eq!(status, 200);
    assert!(headers.contains(&("content-type".into(), "text/event-stream".into())));
    let mut seen = Vec::new();
    for line in r.lines() {
        let line = line.unwrap();
        if let Some(data) = line.strip_prefix("data: ") {
            let e: Value = serde_json::from_str(data).unwrap();
            let end = stop(&e) || matches!(e["event"].as_str(), Some("finished" | "failed"));
            seen.push(e);
            if end {
                break;
            }
        }
    }
    seen
}

fn of_kind<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["event"] == kind).collect()
}

fn file(addr: SocketAddr, path: &str) -> u16 {
    let q: String = path
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'/' | b'-' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    request(addr, "GET", &format!("/api/file?path={q}"), &[], b"").status
}

#[test]
fn a_run_over_http_streams_its_events_stops_and_resumes() {
    let dir = scratch("run");
    let out = dir.join("out");
    let srv = server(&dir);
    let addr = srv.addr();
    let body = settings(&dir, &out, 8, 2);

    let problems = json(addr, "POST", "/api/validate", &body).json();
    assert_eq!(problems["problems"], json!([]), "{problems}");
    assert!(!out.exists(), "validating creates nothing");
    let started = json(addr, "POST", "/api/start", &body);
    assert_eq!(started.status, 200, "{}", started.text());
    assert_eq!(
        json(addr, "POST", "/api/start", &body).status,
        409,
        "one run at a time"
    );

    // Stopped once step 3 is seen: the step in progress finishes and the state is saved.
    let first = events_until(addr, 0, |e| e["event"] == "step" && e["step"] == 3);
    assert_eq!(json(addr, "POST", "/api/stop", &json!({})).status, 200);
    let rest = events_until(addr, first.len(), |_| false);
    let end = rest.last().unwrap();
    assert_eq!(end["event"], "finished", "{end}");
    assert_eq!(end["interrupted"], true, "{end}");
    let stopped_at = end["steps"].as_u64().unwrap();
    assert!((3..8).contains(&stopped_at), "{end}");
    let all: Vec<Value> = first.into_iter().chain(rest).collect();
    let steps: Vec<u64> = of_kind(&all, "step")
        .iter()
        .map(|e| e["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, (1..=stopped_at).collect::<Vec<_>>());
    assert!(of_kind(&all, "step")
        .iter()
        .all(|e| e["loss"].as_f64().unwrap().is_finite() && e["lr"].as_f64().unwrap() > 0.0));

    // The sample of step 2, served as a PNG from its URL.
    let sample = of_kind(&all, "saved")
        .into_iter()
        .find(|e| e["what"] == "sample")
        .expect("a sample was written");
    let png = request(addr, "GET", sample["url"].as_str().unwrap(), &[], b"");
    assert_eq!(png.status, 200);
    assert_eq!(png.header("content-type"), Some("image/png"));
    assert_eq!(&png.body[..8], b"\x89PNG\r\n\x1a\n");

    // Resumed: the steps after the stop, to the end.
    assert_eq!(json(addr, "POST", "/api/resume", &body).status, 200);
    let resumed = events_until(addr, 0, |_| false);
    let end = resumed.last().unwrap();
    assert_eq!(end["event"], "finished", "{end}");
    assert_eq!(end["interrupted"], false);
    assert_eq!(end["steps"], 8);
    let first_resumed = of_kind(&resumed, "step")[0]["step"].as_u64().unwrap();
    assert_eq!(first_resumed, stopped_at + 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn no_file_outside_the_output_folder_and_the_roots_is_served() {
    let base = scratch("paths");
    let root = base.join("root");
    let outside = base.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret.txt"), "secret").unwrap();
    let out = root.join("out");
    std::fs::create_dir_all(&root).unwrap();
    let srv = server(&root);
    let addr = srv.addr();

    // A config writing outside the roots is refused at its key, and nothing is created.
    let mut body = settings(&root, &outside.join("run"), 2, 2);
    let problems = json(addr, "POST", "/api/validate", &body).json();
    let p = &problems["problems"][0];
    assert_eq!(p["key"], "output_dir", "{problems}");
    assert!(p["message"].as_str().unwrap().contains("outside"), "{p}");
    assert_eq!(json(addr, "POST", "/api/start", &body).status, 422);
    assert!(!outside.join("run").exists());

    body = settings(&root, &out, 2, 2);
    assert_eq!(json(addr, "POST", "/api/start", &body).status, 200);
    let end = events_until(addr, 0, |_| false);
    assert_eq!(end.last().unwrap()["event"], "finished");
    std::os::unix::fs::symlink(&outside, out.join("link")).unwrap();
    std::os::unix::fs::symlink(outside.join("secret.txt"), out.join("secret.txt")).unwrap();

    // A log folder through a symlink out of the root is outside it too, and is not created.
    let mut through_link = settings(&root, &out, 2, 2);
    let logs = out.join("link/logs");
    through_link["sets"]
        .as_array_mut()
        .unwrap()
        .push(json!(format!("logging_dir={}", logs.display())));
    let problems = json(addr, "POST", "/api/validate", &through_link).json();
    assert_eq!(problems["problems"][0]["key"], "logging_dir", "{problems}");
    assert!(!outside.join("logs").exists());

    let lora = of_kind(&end, "saved")
        .into_iter()
        .find(|e| e["what"] == "LoRA")
        .unwrap()["path"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(file(addr, &lora), 200, "the run's own file");
    let o = out.display();
    for refused in [
        format!("{o}/../../outside/secret.txt"),
        format!(
            "{o}/../out/{}",
            Path::new(&lora).file_name().unwrap().to_str().unwrap()
        ),
        outside.join("secret.txt").display().to_string(),
        format!("{o}/link/secret.txt"),
        format!("{o}/secret.txt"),
        root.join("demo/demo.yaml").display().to_string(),
        "/etc/passwd".into(),
        format!("{o}"),
    ] {
        assert_eq!(file(addr, &refused), 403, "{refused}");
    }
    // The same through the other readers, and raw `..` in the URL's path.
    let secret = outside.join("secret.txt");
    for path in [
        format!("/api/load?path={}", secret.display()),
        format!("/api/load?path={}/../outside/secret.txt", root.display()),
        format!("/api/captions?dir={}", outside.display()),
        format!("/api/captions?dir={o}/link"),
    ] {
        let r = request(addr, "GET", &path, &[], b"");
        assert_eq!(r.status, 403, "{path}: {}", r.text());
    }
    for path in [
        "/../../../../etc/passwd",
        "/%2e%2e/%2e%2e/etc/passwd",
        "/api/../app.js",
    ] {
        let r = request(addr, "GET", path, &[], b"");
        assert_eq!(r.status, 404, "{path}");
        assert!(!r.text().contains("root:"), "{path}");
    }
    let _ = std::fs::remove_dir_all(&base);
}

#[test]
fn foreign_origins_and_hosts_are_refused() {
    let dir = scratch("origins");
    let srv = server(&dir);
    let addr = srv.addr();
    let body = settings(&dir, &dir.join("out"), 2, 2).to_string();
    let own = format!("http://{addr}");
    let post = |path: &str, headers: &[(&str, &str)]| {
        let mut h = vec![("Content-Type", "application/json")];
        h.extend_from_slice(headers);
        request(addr, "POST", path, &h, body.as_bytes())
    };
    let evil_host = format!("evil.example:{}", addr.port());
    for headers in [
        vec![("Origin", "http://evil.example")],
        vec![("Origin", "null")],
        vec![("Host", evil_host.as_str())],
        vec![
            ("Host", evil_host.as_str()),
            ("Origin", "http://evil.example"),
        ],
        vec![("Sec-Fetch-Site", "cross-site")],
        vec![("Sec-Fetch-Site", "same-site")],
    ] {
        for path in ["/api/start", "/api/stop", "/api/validate"] {
            let r = post(path, &headers);
            assert_eq!(r.status, 403, "{path} {headers:?}: {}", r.text());
        }
    }
    // A rebinding page's GET names its own host.
    let r = request(addr, "GET", "/api/keys", &[("Host", &evil_host)], b"");
    assert_eq!(r.status, 403);
    // Nothing was started; the page's own origin is answered.
    assert_eq!(
        request(addr, "GET", "/api/status", &[], b"").json()["job"],
        Value::Null
    );
    assert!(!dir.join("out").exists());
    let ok = post(
        "/api/validate",
        &[("Origin", own.as_str()), ("Sec-Fetch-Site", "same-origin")],
    );
    assert_eq!(ok.status, 200, "{}", ok.text());
    let localhost = format!("localhost:{}", addr.port());
    let ok = request(addr, "GET", "/", &[("Host", &localhost)], b"");
    assert_eq!(ok.status, 200);
    assert!(ok.text().contains("<title>lorafuse</title>"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn off_the_loopback_the_token_is_required() {
    let dir = scratch("token");
    let srv = Server::start(&Options {
        bind: "0.0.0.0".parse().unwrap(),
        port: 0,
        roots: vec![dir.clone()],
    })
    .unwrap();
    let url = srv.url();
    let token = url.split("?token=").nth(1).expect("a token in the URL");
    assert!(token.len() >= 32, "{url}");
    let addr: SocketAddr = format!("127.0.0.1:{}", srv.addr().port()).parse().unwrap();
    let get = |path: &str| request(addr, "GET", path, &[], b"").status;
    assert_eq!(get("/"), 403);
    assert_eq!(get("/api/keys?token=0123"), 403);
    assert_eq!(get(&format!("/api/keys?token={token}x")), 403);
    assert_eq!(get(&format!("/?token={token}")), 200);
    assert_eq!(get(&format!("/api/keys?token={token}")), 200);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn serve_starts_in_under_a_second() {
    let dir = scratch("start");
    let t0 = Instant::now();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_lorafuse"))
        .args(["serve", "--port", "0", "--root"])
        .arg(&dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("lorafuse serve: ")
        .unwrap_or_else(|| panic!("{line:?}"));
    let addr: SocketAddr = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .unwrap();
    let page = request(addr, "GET", "/", &[], b"");
    let keys = request(addr, "GET", "/api/keys", &[], b"");
    let elapsed = t0.elapsed();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(page.status, 200);
    assert_eq!(keys.status, 200);
    // The form is made from every declared key.
    let names: Vec<String> = keys
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, lorafuse::config::TrainConfig::key_names());
    assert!(
        elapsed < Duration::from_secs(1),
        "answered after {elapsed:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn tag_edits_are_previewed_then_written_inside_the_roots_only() {
    let base = scratch("tags");
    let root = base.join("root");
    std::fs::create_dir_all(&root).unwrap();
    let demo = lorafuse::demo::prepare(&root.join("demo"), 2).unwrap();
    let srv = server(&root);
    let addr = srv.addr();
    let first = demo.data.join("10_shapes/shape_00.txt");
    let before = std::fs::read_to_string(&first).unwrap();
    let edit = |dir: &Path, dry_run: bool| {
        json(
            addr,
            "POST",
            "/api/tags",
            &json!({
                "dir": dir, "trigger": "sks shape", "remove": ["simple*"],
                "replace": [["a red circle*", "red circle"]], "dry_run": dry_run,
            }),
        )
    };
    let preview = edit(&demo.data, true).json();
    let changes = preview["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 12, "{preview}");
    assert_eq!(preview["written"], false);
    assert_eq!(
        std::fs::read_to_string(&first).unwrap(),
        before,
        "a preview writes nothing"
    );
    let change = changes
        .iter()
        .find(|c| c["file"] == "10_shapes/shape_00.txt")
        .unwrap();
    assert_eq!(change["after"], "sks shape, red circle");

    assert_eq!(edit(&demo.data, false).json()["written"], true);
    assert_eq!(
        std::fs::read_to_string(&first).unwrap(),
        "sks shape, red circle"
    );
    let listed = request(
        addr,
        "GET",
        &format!("/api/captions?dir={}", demo.data.display()),
        &[],
        b"",
    )
    .json();
    assert!(
        listed["tags"].to_string().contains("[\"sks shape\",12]"),
        "{listed}"
    );

    // A folder outside the roots, also through `..`, is refused and left alone.
    let outside = base.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("a.txt"), &before).unwrap();
    image_beside(&outside.join("a.png"));
    for dir in [outside.clone(), root.join("../outside")] {
        assert_eq!(edit(&dir, false).status, 403, "{}", dir.display());
    }
    assert_eq!(
        std::fs::read_to_string(outside.join("a.txt")).unwrap(),
        before
    );
    let _ = std::fs::remove_dir_all(&base);
}

/// A small PNG (a caption needs its image to be listed).
fn image_beside(path: &Path) {
    image::RgbImage::new(8, 8).save(path).unwrap();
}

/// The card list the form's memory plan offers: every card of the profile table, the usual
/// one (what the form selects first) marked once and supported.
#[test]
fn the_card_list_marks_the_usual_card() {
    let dir = scratch("cards");
    let srv = server(&dir);
    let cards = request(srv.addr(), "GET", "/api/profiles", &[], b"").json();
    let cards = cards.as_array().unwrap();
    assert_eq!(
        cards.len(),
        lorafuse::backend::cuda::DeviceLimits::profiles().len()
    );
    let usual: Vec<&serde_json::Value> = cards.iter().filter(|c| c["usual"] == true).collect();
    assert_eq!(usual.len(), 1, "{cards:?}");
    assert_eq!(usual[0]["name"], lorafuse::backend::cuda::USUAL_CARD);
    assert!(usual[0]["unsupported"].is_null(), "{:?}", usual[0]);
}
