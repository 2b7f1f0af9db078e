//! `lorafuse serve` in a real headless browser (Debian's chromium through chromedriver):
//! the page loads the demo's config into its form, shows an invalid value's error at its
//! field, starts a tiny run, draws the loss curve as steps arrive, shows a sample when it is
//! written, and stops the run. The screenshot goes to target/serve-browser.png, and with
//! LORAFUSE_BLESS=1 to docs/serve.png (the README's). Without chromium the test says SKIPPED,
//! unless LORAFUSE_REQUIRE_BROWSER=1 (CI), where that fails.

use crate::common;

use std::path::PathBuf;

use common::webdriver::{find, Browser};
use lorafuse::serve::{Options, Server};
use serde_json::json;

#[test]
fn the_page_validates_starts_draws_and_stops_a_run() {
    let Some((chromium, chromedriver)) = find() else {
        assert!(
            std::env::var("LORAFUSE_REQUIRE_BROWSER").as_deref() != Ok("1"),
            "LORAFUSE_REQUIRE_BROWSER=1 but no chromium/chromedriver: run scripts/install-browser.sh"
        );
        println!("SKIPPED: no chromium (scripts/install-browser.sh)");
        return;
    };
    let dir = std::env::temp_dir().join(format!("lorafuse-browser-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let demo = lorafuse::demo::prepare(&dir.join("demo"), 300).unwrap();
    let srv = Server::start(&Options {
        bind: "127.0.0.1".parse().unwrap(),
        port: 0,
        roots: vec![dir.clone()],
    })
    .unwrap();

    let b = Browser::start(&chromium, &chromedriver, 1280, 1000);
    b.goto(&srv.url());
    b.wait_for("the form", "return document.body.dataset.ready", 20);

    // The demo's config into the form.
    b.type_into("#load-path", &demo.config.display().to_string());
    b.click("#load");
    b.wait_for(
        "the loaded config",
        "return document.getElementById('field-train_data_dir').value",
        20,
    );

    // An invalid value: its error at its field; fixed: gone.
    b.type_into("#field-learning_rate", "abc");
    let error = b.wait_for(
        "the learning_rate error",
        "return document.getElementById('error-learning_rate').textContent",
        20,
    );
    assert!(error.as_str().unwrap().contains("must be > 0"), "{error}");
    let bad = b.eval(
        "return document.getElementById('row-learning_rate').classList.contains('bad')",
        json!([]),
    );
    assert_eq!(bad, json!(true));
    b.type_into("#field-learning_rate", "0.002");
    b.wait_for(
        "the error to clear",
        "return document.getElementById('error-learning_rate').textContent === ''",
        20,
    );
    // Samples every 3 steps, with few sampler steps.
    b.type_into("#field-sample_every_n_steps", "3");
    b.type_into(
        "#field-sample_prompts",
        "[\"a red circle on a grey background --w 64 --h 64 --s 4 --d 1\"]",
    );
    b.wait_for(
        "no problems",
        "return [...document.querySelectorAll('.error')].every(e => e.textContent === '')",
        20,
    );

    b.click("#start");
    b.wait_for(
        "the loss curve",
        "return Number(document.getElementById('curve').dataset.points) >= 8",
        120,
    );
    b.wait_for(
        "a sample image",
        "const i = document.querySelector('#samples img'); return i && i.complete && i.naturalWidth === 64",
        120,
    );
    let text = b.eval(
        "return document.getElementById('last-step').textContent",
        json!([]),
    );
    assert!(text.as_str().unwrap().starts_with("step "), "{text}");
    b.click("#stop");
    let status = b.wait_for(
        "the stopped run",
        "const s = document.getElementById('status').textContent; return s.startsWith('stopped') && s",
        120,
    );
    assert!(status.as_str().unwrap().contains("state saved"), "{status}");
    assert!(demo.output.join("state.safetensors").exists());
    assert_eq!(
        b.eval(
            "return document.getElementById('resume').disabled",
            json!([])
        ),
        json!(false)
    );

    // The memory plan on the preselected card, and the data folder's captions.
    b.click("#plan");
    let plan = b.wait_for(
        "the memory plan",
        "return document.getElementById('plan-out').textContent",
        20,
    );
    assert!(plan.as_str().unwrap().contains("memory plan"), "{plan}");
    b.click("#captions");
    let tags = b.wait_for(
        "the tag counts",
        "return document.getElementById('tags').textContent",
        20,
    );
    assert!(
        tags.as_str()
            .unwrap()
            .contains("simple flat illustration (12)"),
        "{tags}"
    );
    // The tag tools' preview of a trigger word: every caption would change, none is written.
    b.type_into("#tag-trigger", "sks");
    b.click("#tag-preview");
    let preview = b.wait_for(
        "the tag edit's preview",
        "return document.getElementById('tag-result').textContent",
        20,
    );
    assert!(
        preview
            .as_str()
            .unwrap()
            .starts_with("12 captions would change"),
        "{preview}"
    );
    let caption = demo.data.join("10_shapes/shape_00.txt");
    assert!(!std::fs::read_to_string(caption).unwrap().starts_with("sks"));

    b.eval(
        "window.scrollTo(0, 0); document.getElementById('run').scrollTo(0, 0)",
        json!([]),
    );
    let png = b.screenshot();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let target = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("serve-browser.png");
    std::fs::write(&target, &png).unwrap();
    if std::env::var("LORAFUSE_BLESS").as_deref() == Ok("1") {
        let docs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/serve.png");
        std::fs::write(docs, &png).unwrap();
    }
    drop(b);
    let _ = std::fs::remove_dir_all(&dir);
}
