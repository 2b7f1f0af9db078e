//! Writing a file so that neither a crash nor an error leaves half of it under its name.
//!
//! The bytes go to a temporary file in the target's folder (the same filesystem, so the final
//! rename is atomic), which is flushed and fsync'ed, then renamed over the target, and then
//! the folder is fsync'ed so that the rename itself survives a power loss. Until the rename,
//! an existing file at the target is untouched; on any error, or when an [`AtomicFile`] is
//! dropped without [`AtomicFile::commit`], the temporary file is removed.
//!
//! The temporary name is `.<file name>.<pid>.<n>.tmp`: hidden, and recognisable as ours if a
//! crash (not an error) leaves one behind.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

/// A file being written; it appears under its name on [`AtomicFile::commit`] only.
pub struct AtomicFile {
    target: PathBuf,
    temp: PathBuf,
    /// None once committed (or after a failed commit, which removed the file).
    writer: Option<BufWriter<File>>,
}

impl AtomicFile {
    /// Starts writing `target`. Fails, naming `target`, when it is a folder, when its folder
    /// does not exist or is not writable.
    pub fn create(target: &Path) -> Result<AtomicFile> {
        let name = target.file_name().ok_or_else(|| {
            Error::io(
                target,
                "write it",
                io::Error::new(io::ErrorKind::InvalidInput, "the path has no file name"),
            )
        })?;
        if target.is_dir() {
            return Err(Error::io(
                target,
                "write it",
                io::Error::new(
                    io::ErrorKind::IsADirectory,
                    "it is a folder; give the path of a file",
                ),
            ));
        }
        let dir = match target.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let mut last_err = None;
        for _ in 0..64 {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let mut temp_name = std::ffi::OsString::from(".");
            temp_name.push(name);
            temp_name.push(format!(".{}.{n}.tmp", std::process::id()));
            let temp = dir.join(temp_name);
            match OpenOptions::new().write(true).create_new(true).open(&temp) {
                Ok(file) => {
                    return Ok(AtomicFile {
                        target: target.to_path_buf(),
                        temp,
                        writer: Some(BufWriter::with_capacity(8 << 20, file)),
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last_err = Some(e),
                Err(e) => {
                    return Err(Error::io(
                        target,
                        "create a temporary file in its folder",
                        e,
                    ))
                }
            }
        }
        Err(Error::io(
            target,
            "create a temporary file in its folder",
            last_err.unwrap_or_else(|| io::Error::other("no free temporary name")),
        ))
    }

    /// The path the file will have.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Appends `bytes`; an error names the target.
    pub fn write_bytes(&mut self, bytes: &[u8]) -> Result<()> {
        self.write_all(bytes)
            .map_err(|e| Error::io(&self.target, "write it", e))
    }

    /// Flushes, fsyncs, renames the temporary file to the target and fsyncs the folder.
    pub fn commit(mut self) -> Result<()> {
        let Some(writer) = self.writer.take() else {
            return Err(Error::io(
                &self.target,
                "finish writing it",
                io::Error::other("already committed"),
            ));
        };
        let target = self.target.clone();
        let file = writer
            .into_inner()
            .map_err(|e| Error::io(&target, "write it", e.into_error()))?;
        file.sync_all()
            .map_err(|e| Error::io(&target, "flush it to disk (fsync)", e))?;
        drop(file);
        std::fs::rename(&self.temp, &target)
            .map_err(|e| Error::io(&target, "move the finished temporary file into place", e))?;
        // The rename is done: from here on nothing is left to clean up.
        self.temp = PathBuf::new();
        sync_dir(&target);
        Ok(())
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.writer {
            Some(w) => w.write(buf),
            None => Err(io::Error::other("the file is already committed")),
        }
    }
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match &mut self.writer {
            Some(w) => w.write_all(buf),
            None => Err(io::Error::other("the file is already committed")),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match &mut self.writer {
            Some(w) => w.flush(),
            None => Ok(()),
        }
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        // Close before removing (Windows cannot remove an open file).
        drop(self.writer.take());
        if !self.temp.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

/// Makes a rename in `target`'s folder durable. Best effort: some filesystems refuse to
/// fsync a folder, and the file itself is already complete and in place.
fn sync_dir(target: &Path) {
    #[cfg(unix)]
    {
        let dir = match target.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    #[cfg(not(unix))]
    let _ = target;
}

/// Writes `bytes` to `path` atomically.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = AtomicFile::create(path)?;
    f.write_bytes(bytes)?;
    f.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("lorafuse-atomic-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn entries(d: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn commit_replaces_and_drop_discards() {
        let d = temp_dir("commit");
        let p = d.join("out.bin");
        write_file(&p, b"first").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"first");
        // An abandoned write leaves the old content and no temporary file.
        {
            let mut f = AtomicFile::create(&p).unwrap();
            f.write_bytes(b"half of the second").unwrap();
        }
        assert_eq!(std::fs::read(&p).unwrap(), b"first");
        assert_eq!(entries(&d), vec!["out.bin".to_string()]);
        write_file(&p, b"second").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"second");
        assert_eq!(entries(&d), vec!["out.bin".to_string()]);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn missing_folder_and_folder_target_are_errors_naming_the_path() {
        let d = temp_dir("errors");
        let p = d.join("no-such-folder").join("out.bin");
        let e = write_file(&p, b"x").unwrap_err().to_string();
        assert!(e.contains(&p.display().to_string()), "{e}");
        let e = write_file(&d, b"x").unwrap_err().to_string();
        assert!(e.contains("folder"), "{e}");
        assert!(entries(&d).is_empty());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
