//! One process at a time in a folder: `train`'s automatic preparation takes this lock on
//! `<output_dir>/auto`, so the ranks of a torchrun or srun launch (which all start at once, each
//! running `auto_crop` / `auto_caption` over the same folder) do the work one after another:
//! the first does it, the others find its key files and reuse the result.
//!
//! The lock is a file made with `create_new` holding its owner's host name and process id, and
//! removed when the guard drops. A lock whose owner is a process of this host that has ended
//! (a killed run) is taken over; an owner on another host (a shared file system) is waited for
//! and named.

use std::fs;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// The lock file's name inside the locked folder.
pub const LOCK_FILE: &str = ".lorafuse.lock";
/// How often a waiting process looks again.
const POLL: Duration = Duration::from_millis(250);

/// Held while the folder is ours; dropping it releases the lock.
#[derive(Debug)]
pub struct FolderLock {
    path: PathBuf,
}

/// This process as a lock file records it: "host pid".
fn owner_line() -> String {
    format!("{} {}", host(), std::process::id())
}

fn host() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

/// Whether the owner a lock file names has ended: a process of this host that /proc does not
/// list. Unknown (another host, no /proc, an unreadable file): false, so it is waited for.
fn owner_ended(line: &str) -> bool {
    let mut parts = line.split_whitespace();
    let (Some(h), Some(pid)) = (parts.next(), parts.next()) else {
        return false;
    };
    h == host()
        && Path::new("/proc/self").exists()
        && pid.parse::<u32>().is_ok()
        && !Path::new("/proc").join(pid).exists()
}

impl FolderLock {
    /// Takes the lock on `dir` (created if missing), waiting up to `timeout` for its holder;
    /// `waiting(owner)` is called once when it has to wait.
    pub fn acquire(dir: &Path, timeout: Duration, waiting: &mut dyn FnMut(&str)) -> Result<Self> {
        fs::create_dir_all(dir).map_err(|e| Error::io(dir, "create", e))?;
        let path = dir.join(LOCK_FILE);
        let start = Instant::now();
        let mut told = false;
        loop {
            match fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut f) => {
                    f.write_all(owner_line().as_bytes())
                        .map_err(|e| Error::io(&path, "write", e))?;
                    return Ok(FolderLock { path });
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                Err(e) => return Err(Error::io(&path, "create the lock file", e)),
            }
            let owner = fs::read_to_string(&path).unwrap_or_default();
            if owner_ended(&owner) {
                // A killed run's lock: gone, then the race for a new one starts again.
                let _ = fs::remove_file(&path);
                continue;
            }
            if start.elapsed() >= timeout {
                return Err(Error::BadValue {
                    op: "prepare",
                    name: "lock",
                    value: path.display().to_string(),
                    expected: format!(
                        "no other lorafuse preparing this folder; after {} s it is still held \
                         by {:?} (host and process id): wait for that run, or remove the file \
                         if no run is using it",
                        timeout.as_secs(),
                        owner.trim()
                    ),
                });
            }
            if !told {
                waiting(owner.trim());
                told = true;
            }
            std::thread::sleep(POLL);
        }
    }
}

impl Drop for FolderLock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("lorafuse-lock-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn one_holder_at_a_time_and_released_on_drop() {
        let d = dir("one");
        let first = FolderLock::acquire(&d, Duration::from_secs(5), &mut |_| {}).unwrap();
        let mut waited = String::new();
        let e = FolderLock::acquire(&d, Duration::ZERO, &mut |o| waited = o.to_string())
            .unwrap_err()
            .to_string();
        assert!(e.contains(LOCK_FILE) && e.contains("still held"), "{e}");
        assert_eq!(waited, "", "a zero timeout gives up before waiting");
        // A second thread waits for the first to drop it.
        let d2 = d.clone();
        let t = std::thread::spawn(move || {
            let mut told = Vec::new();
            let l = FolderLock::acquire(&d2, Duration::from_secs(20), &mut |o| {
                told.push(o.to_string())
            });
            (l.is_ok(), told)
        });
        std::thread::sleep(Duration::from_millis(600));
        drop(first);
        let (ok, told) = t.join().unwrap();
        assert!(ok);
        assert_eq!(told, [owner_line()]);
        assert!(!d.join(LOCK_FILE).exists(), "the second guard dropped too");
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn a_lock_of_an_ended_process_is_taken_over_and_another_hosts_is_not() {
        if !Path::new("/proc/self").exists() {
            println!("SKIPPED: no /proc on this system");
            return;
        }
        let d = dir("stale");
        fs::create_dir_all(&d).unwrap();
        // No process has the largest pid (pid_max is far below it).
        fs::write(d.join(LOCK_FILE), format!("{} {}", host(), u32::MAX)).unwrap();
        let l = FolderLock::acquire(&d, Duration::ZERO, &mut |_| {}).unwrap();
        assert_eq!(fs::read_to_string(d.join(LOCK_FILE)).unwrap(), owner_line());
        drop(l);
        fs::write(d.join(LOCK_FILE), format!("other-host-{} 1", host())).unwrap();
        assert!(FolderLock::acquire(&d, Duration::ZERO, &mut |_| {}).is_err());
        let _ = fs::remove_dir_all(&d);
    }
}
