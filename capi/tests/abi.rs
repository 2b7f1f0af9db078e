//! The C ABI's contract from Rust: NULL and bad UTF-8 give codes and messages (never a
//! crash); a configuration's notices and problems read back; each trainer keeps its own last
//! error when several fail at once on different threads; a run a cap refuses ends with
//! LORAFUSE_ERR_REFUSED and a `failed` event (whose callback may not wait for its own run);
//! two trainers run at once, one cancelled while the other is waited for on another thread.
//! (The C side, with resume: tests/c_example.rs.)

use std::ffi::{c_char, c_void, CStr, CString};
use std::ptr::{null, null_mut};
use std::sync::Mutex;

use lorafuse_capi::*;

fn message(t: *mut lorafuse_trainer) -> String {
    let mut buf = vec![0 as c_char; 4096];
    let n = unsafe { lorafuse_error_message(t, buf.as_mut_ptr(), buf.len()) };
    assert!(n < buf.len());
    unsafe { CStr::from_ptr(buf.as_ptr()) }
        .to_str()
        .unwrap()
        .to_string()
}

fn from_yaml(yaml: &[u8], sets: &[&[u8]]) -> (i32, *mut lorafuse_trainer) {
    let yaml = CString::new(yaml).unwrap();
    let sets: Vec<CString> = sets.iter().map(|s| CString::new(*s).unwrap()).collect();
    let ptrs: Vec<*const c_char> = sets.iter().map(|s| s.as_ptr()).collect();
    let mut t = null_mut();
    let code = unsafe {
        lorafuse_trainer_from_yaml(yaml.as_ptr(), null(), ptrs.as_ptr(), ptrs.len(), &mut t)
    };
    assert!(!t.is_null());
    (code, t)
}

#[test]
fn null_pointers_and_bad_utf8_are_codes_with_messages() {
    let n = null_mut();
    unsafe {
        assert_eq!(lorafuse_set_threads(n, 1), LORAFUSE_ERR_NULL);
        assert_eq!(lorafuse_set_max_memory(n, 1, 0), LORAFUSE_ERR_NULL);
        assert_eq!(lorafuse_set_output_root(n, null()), LORAFUSE_ERR_NULL);
        assert_eq!(
            lorafuse_set_event_callback(n, None, null_mut()),
            LORAFUSE_ERR_NULL
        );
        assert_eq!(lorafuse_validate(n, null_mut()), LORAFUSE_ERR_NULL);
        assert_eq!(lorafuse_start(n, 0), LORAFUSE_ERR_NULL);
        assert_eq!(lorafuse_cancel(n), LORAFUSE_ERR_NULL);
        assert_eq!(lorafuse_wait(n), LORAFUSE_ERR_NULL);
        assert_eq!(lorafuse_problem_key(n, 0, null_mut(), 0), 0);
        assert_eq!(lorafuse_report(n, null_mut(), 0), 0);
        lorafuse_free(n);
        assert_eq!(
            lorafuse_trainer_from_file(null(), null(), 0, null_mut()),
            LORAFUSE_ERR_NULL
        );
        assert_eq!(
            lorafuse_demo_write(null(), 1, null_mut(), 0),
            LORAFUSE_ERR_NULL
        );
    }
    assert_eq!(message(n), "the trainer is NULL");

    // An override array that is NULL though it has entries, and one that is not UTF-8.
    let mut t = null_mut();
    let yaml = CString::new("lora_rank: 4").unwrap();
    let code = unsafe { lorafuse_trainer_from_yaml(yaml.as_ptr(), null(), null(), 2, &mut t) };
    assert_eq!(code, LORAFUSE_ERR_NULL);
    assert_eq!(message(t), "overrides is NULL");
    unsafe { lorafuse_free(t) };
    let (code, t) = from_yaml(b"lora_rank: 4", &[b"seed=1", b"output_dir=\xc3("]);
    assert_eq!(code, LORAFUSE_ERR_UTF8);
    assert!(
        message(t).starts_with("overrides[1] is not valid UTF-8"),
        "{}",
        message(t)
    );
    // The trainer cannot start, validate or wait; each says so.
    unsafe {
        assert_eq!(lorafuse_start(t, 0), LORAFUSE_ERR_INVALID);
        assert!(
            message(t)
                .starts_with("this trainer has no configuration: overrides[1] is not valid UTF-8"),
            "{}",
            message(t)
        );
        assert_eq!(lorafuse_validate(t, null_mut()), LORAFUSE_ERR_INVALID);
        assert_eq!(lorafuse_wait(t), LORAFUSE_ERR_NOT_STARTED);
        assert!(message(t).contains("lorafuse_start first"));
        lorafuse_free(t);
    }
}

#[test]
fn each_trainer_keeps_its_own_error() {
    std::thread::scope(|s| {
        let jobs: Vec<_> = (0..8)
            .map(|i| {
                s.spawn(move || {
                    let yaml = format!(
                        "train_data_dir: /nowhere\nbase_model: m\noutput_dir: o\n\
                         lora_rank: {}\nbatch_size: 0\n",
                        2000 + i
                    );
                    let (code, t) = from_yaml(yaml.as_bytes(), &[]);
                    assert_eq!(code, LORAFUSE_ERR_INVALID);
                    for _ in 0..50 {
                        let m = message(t);
                        assert!(m.contains(&format!("lora_rank = {}", 2000 + i)), "{m}");
                        assert_eq!(
                            unsafe { lorafuse_validate(t, null_mut()) },
                            LORAFUSE_ERR_INVALID
                        );
                    }
                    let mut count = 0;
                    assert_eq!(
                        unsafe { lorafuse_validate(t, &mut count) },
                        LORAFUSE_ERR_INVALID
                    );
                    let mut key = [0 as c_char; 3];
                    // Cut to the buffer; the whole length returned.
                    let n = unsafe { lorafuse_problem_key(t, 0, key.as_mut_ptr(), key.len()) };
                    assert_eq!(n, "lora_rank".len());
                    assert_eq!(unsafe { CStr::from_ptr(key.as_ptr()) }.to_bytes(), b"lo");
                    unsafe { lorafuse_free(t) };
                    count
                })
            })
            .collect();
        for j in jobs {
            assert!(j.join().unwrap() >= 2);
        }
    });
}

/// Each event, and what lorafuse_wait on its own trainer returned from the callback.
static EVENTS: Mutex<Vec<(i32, String, i32)>> = Mutex::new(Vec::new());

unsafe extern "C" fn record(user: *mut c_void, kind: i32, json: *const c_char) {
    let json = CStr::from_ptr(json).to_str().unwrap().to_string();
    let waited = lorafuse_wait(user.cast());
    EVENTS.lock().unwrap().push((kind, json, waited));
}

#[test]
fn a_cap_refuses_the_run_and_the_output_root_is_a_problem() {
    let dir = std::env::temp_dir().join(format!("lorafuse-capi-abi-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cdir = CString::new(dir.to_str().unwrap()).unwrap();
    assert_eq!(
        unsafe { lorafuse_demo_write(cdir.as_ptr(), 2, null_mut(), 0) },
        LORAFUSE_OK
    );
    let path = CString::new(dir.join("demo.yaml").to_str().unwrap()).unwrap();
    let mut t = null_mut();
    unsafe {
        assert_eq!(
            lorafuse_trainer_from_file(path.as_ptr(), null(), 0, &mut t),
            LORAFUSE_OK
        );
        assert_eq!(lorafuse_wait(t), LORAFUSE_ERR_NOT_STARTED);
        assert_eq!(lorafuse_notices(t, null_mut(), 0), 0);
        let mut noted = null_mut();
        let sets = [c"keep_tokens=1".as_ptr()];
        lorafuse_trainer_from_file(path.as_ptr(), sets.as_ptr(), 1, &mut noted);
        let mut buf = [0 as c_char; 512];
        lorafuse_notices(noted, buf.as_mut_ptr(), buf.len());
        let notices = CStr::from_ptr(buf.as_ptr()).to_str().unwrap();
        assert!(
            notices.starts_with("keep_tokens = 1 has no effect"),
            "{notices}"
        );
        lorafuse_free(noted);
        let elsewhere = CString::new(dir.join("allowed").to_str().unwrap()).unwrap();
        assert_eq!(lorafuse_set_output_root(t, elsewhere.as_ptr()), LORAFUSE_OK);
        let mut count = 0;
        assert_eq!(lorafuse_validate(t, &mut count), LORAFUSE_ERR_INVALID);
        // output_dir, and logging_dir (under it by default).
        assert_eq!(count, 2);
        let mut key = [0 as c_char; 32];
        for (i, want) in ["output_dir", "logging_dir"].into_iter().enumerate() {
            lorafuse_problem_key(t, i, key.as_mut_ptr(), key.len());
            assert_eq!(CStr::from_ptr(key.as_ptr()).to_str().unwrap(), want);
        }
        assert!(
            message(t).contains("outside the output root"),
            "{}",
            message(t)
        );
        // start says so at once, and nothing runs.
        assert_eq!(lorafuse_start(t, 0), LORAFUSE_ERR_INVALID);
        assert_eq!(lorafuse_wait(t), LORAFUSE_ERR_NOT_STARTED);
        assert_eq!(lorafuse_set_output_root(t, null()), LORAFUSE_OK);
        assert_eq!(lorafuse_validate(t, &mut count), LORAFUSE_OK);
        assert_eq!(count, 0);

        assert_eq!(lorafuse_set_max_memory(t, 64 * 1024, 0), LORAFUSE_OK);
        assert_eq!(
            lorafuse_set_event_callback(t, Some(record), t.cast()),
            LORAFUSE_OK
        );
        assert_eq!(lorafuse_start(t, 0), LORAFUSE_OK);
        assert_eq!(lorafuse_wait(t), LORAFUSE_ERR_REFUSED);
        assert!(message(t).contains("above the cap"), "{}", message(t));
        assert_eq!(lorafuse_report(t, null_mut(), 0), 0);
        lorafuse_free(t);
    }
    let events = EVENTS.lock().unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].0, LORAFUSE_EVENT_FAILED);
    let v: serde_json::Value = serde_json::from_str(&events[0].1).unwrap();
    assert_eq!(v["event"], "failed");
    assert_eq!(v["code"], LORAFUSE_ERR_REFUSED);
    // Waiting from the callback would never return: refused instead.
    assert_eq!(events[0].2, LORAFUSE_ERR_BUSY);
    assert!(!dir.join("output/state.safetensors").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Trainer B's first step event waits here until the test has cancelled B.
static HELD: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static RELEASED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static STEPS: Mutex<Vec<(usize, u64)>> = Mutex::new(Vec::new());

unsafe extern "C" fn count_steps(user: *mut c_void, kind: i32, json: *const c_char) {
    use std::sync::atomic::Ordering::SeqCst;
    if kind != LORAFUSE_EVENT_STEP {
        return;
    }
    let v: serde_json::Value =
        serde_json::from_str(CStr::from_ptr(json).to_str().unwrap()).unwrap();
    let step = v["step"].as_u64().unwrap();
    STEPS.lock().unwrap().push((user as usize, step));
    if user as usize == 2 && step == 1 {
        HELD.store(true, SeqCst);
        while !RELEASED.load(SeqCst) {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
}

/// Two trainers run at once: A is waited for on another thread while this one cancels B
/// during B's first step; A trains all its steps, B stops after step 1.
#[test]
fn two_trainers_one_cancelled_while_the_other_is_waited_for() {
    use std::sync::atomic::Ordering::SeqCst;
    let dir = std::env::temp_dir().join(format!("lorafuse-capi-two-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cdir = CString::new(dir.to_str().unwrap()).unwrap();
    assert_eq!(
        unsafe { lorafuse_demo_write(cdir.as_ptr(), 3, null_mut(), 0) },
        LORAFUSE_OK
    );
    let path = CString::new(dir.join("demo.yaml").to_str().unwrap()).unwrap();
    let make = |name: &str, user: usize| {
        let out = CString::new(format!("output_dir={}", dir.join(name).display())).unwrap();
        let sets = [out.as_ptr(), c"sample_every_n_steps=0".as_ptr()];
        let mut t = null_mut();
        unsafe {
            assert_eq!(
                lorafuse_trainer_from_file(path.as_ptr(), sets.as_ptr(), 2, &mut t),
                LORAFUSE_OK
            );
            lorafuse_set_threads(t, 1);
            lorafuse_set_event_callback(t, Some(count_steps), user as *mut c_void);
        }
        t as usize
    };
    let (a, b) = (make("a", 1), make("b", 2));
    unsafe {
        assert_eq!(lorafuse_start(a as *mut _, 0), LORAFUSE_OK);
        assert_eq!(lorafuse_start(b as *mut _, 0), LORAFUSE_OK);
    }
    let waiter = std::thread::spawn(move || unsafe { lorafuse_wait(a as *mut _) });
    let t0 = std::time::Instant::now();
    while !HELD.load(SeqCst) {
        assert!(t0.elapsed().as_secs() < 120, "B never reached step 1");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    unsafe {
        assert_eq!(lorafuse_cancel(b as *mut _), LORAFUSE_OK);
        RELEASED.store(true, SeqCst);
        assert_eq!(lorafuse_wait(b as *mut _), LORAFUSE_CANCELLED);
    }
    assert_eq!(waiter.join().unwrap(), LORAFUSE_OK);
    let steps = STEPS.lock().unwrap().clone();
    let of = |u: usize| -> Vec<u64> {
        steps
            .iter()
            .filter(|(w, _)| *w == u)
            .map(|(_, s)| *s)
            .collect()
    };
    assert_eq!(of(1), vec![1, 2, 3]);
    assert_eq!(of(2), vec![1]);
    unsafe {
        lorafuse_free(a as *mut _);
        lorafuse_free(b as *mut _);
    }
    let _ = std::fs::remove_dir_all(&dir);
}
