//! The checks that touch the disk, kept apart so values can be validated without it:
//! the data folder and the model exist, the output and log folders can be created and
//! written, the sample-prompt file reads.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use super::error::ConfigError;
use super::values::SamplePrompts;
use super::TrainConfig;

impl TrainConfig {
    /// Checks the paths: `train_data_dir` (and `reg_data_dir`) is a folder, `base_model` exists (a file or a
    /// folder), `output_dir` and `logging_dir` can be created and written (nothing is created:
    /// a small probe file is written and removed in each, or in its nearest existing parent),
    /// and a `sample_prompts` file reads
    /// and has a prompt when sampling is on.
    pub fn check_paths(&self) -> Result<(), ConfigError> {
        let mut errors = Vec::new();
        let effective = self.effective();
        let mut fail = |key: &str, problem: String| {
            let (origin, key, value) = self.describe(key, &effective);
            errors.push(ConfigError::BadValue {
                origin,
                key,
                value,
                problem,
            });
        };

        // reg_data_dir is not used beside a dataset_config (whose folders the scan checks).
        let reg = self
            .reg_data_dir
            .as_ref()
            .filter(|_| self.subsets.is_empty());
        for (key, dir) in [
            ("train_data_dir", Some(&self.train_data_dir)),
            ("reg_data_dir", reg),
        ] {
            let Some(dir) = dir else { continue };
            match std::fs::metadata(dir) {
                Ok(m) if m.is_dir() => {
                    if let Err(e) = std::fs::read_dir(dir) {
                        fail(key, format!("cannot be read: {e}"));
                    }
                }
                Ok(_) => fail(
                    key,
                    "is a file, not a folder: give the folder that holds the images (or kohya's N_name subfolders)".into(),
                ),
                Err(e) => fail(key, missing(dir, &e)),
            }
        }

        if let Some(model) = &self.auto_caption {
            if let Err(e) = std::fs::metadata(model) {
                fail("auto_caption", missing(model, &e));
            }
        }
        // The automatic steps work on train_data_dir alone.
        for (key, set) in [
            ("auto_crop", self.auto_crop.is_some()),
            ("auto_caption", self.auto_caption.is_some()),
        ] {
            if set && !self.subsets.is_empty() {
                fail(
                    key,
                    "cannot be used with dataset_config: run `lorafuse prepare` and `lorafuse \
                     caption` on each subset's folder instead"
                        .into(),
                );
            }
        }

        if let Err(e) = std::fs::metadata(&self.base_model) {
            fail("base_model", missing(&self.base_model, &e));
        }

        if let Some(r) = &self.resume {
            if let Err(p) = resume_state(r) {
                fail("resume", p);
            }
        }

        let output_ok = match writable_folder(&self.output_dir) {
            Ok(()) => true,
            Err(p) => {
                fail("output_dir", p);
                false
            }
        };
        // A log folder inside a broken output folder would only repeat its error.
        if output_ok || !self.logging_dir.starts_with(&self.output_dir) {
            if let Err(p) = writable_folder(&self.logging_dir) {
                fail("logging_dir", p);
            }
        }

        if let SamplePrompts::File(path) = &self.sample_prompts {
            match read_prompt_file(path) {
                Ok(lines) if lines.is_empty() && self.samples_asked() => fail(
                    "sample_prompts",
                    "has no prompts (blank lines and lines starting with # are skipped)".into(),
                ),
                Ok(lines) => {
                    if let Some(problem) = super::validate::bad_prompt(self, &lines) {
                        fail("sample_prompts", problem);
                    }
                }
                Err(e) if e.kind() == ErrorKind::InvalidData => {
                    fail("sample_prompts", format!("cannot be read: {e}"))
                }
                Err(e) => fail("sample_prompts", missing(path, &e)),
            }
        }

        match ConfigError::from_list(errors) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The sample prompts: the list, or the lines of the `.txt` file without blank lines and
    /// `#` comments.
    pub fn sample_prompt_lines(&self) -> Result<Vec<String>, ConfigError> {
        match &self.sample_prompts {
            SamplePrompts::List(v) => Ok(v.clone()),
            SamplePrompts::File(path) => {
                read_prompt_file(path).map_err(|e| ConfigError::BadValue {
                    origin: self.provenance.origin("sample_prompts"),
                    key: "sample_prompts".into(),
                    value: quoted(path.clone()),
                    problem: format!("cannot be read: {e}"),
                })
            }
        }
    }
}

fn quoted(p: PathBuf) -> String {
    format!("{:?}", p.to_string_lossy())
}

/// "does not exist" (with the folder a relative path is read from) or the I/O error.
fn missing(path: &Path, e: &std::io::Error) -> String {
    if e.kind() != ErrorKind::NotFound {
        return format!("cannot be read: {e}");
    }
    if let Some(file) = blocking_file(path) {
        return format!("does not exist: {} is a file, not a folder", file.display());
    }
    match std::env::current_dir() {
        Ok(cwd) if path.is_relative() => format!(
            "does not exist (relative paths start from the folder lorafuse runs in: {})",
            cwd.display()
        ),
        _ => "does not exist".into(),
    }
}

/// The first ancestor of `path` that exists as a file (which makes `path` impossible).
fn blocking_file(path: &Path) -> Option<PathBuf> {
    path.ancestors()
        .skip(1)
        .filter(|a| !a.as_os_str().is_empty())
        .find(|a| a.is_file())
        .map(Path::to_path_buf)
}

/// Creates `dir` (and its parents) and writes and removes a probe file in it.
fn writable_folder(dir: &Path) -> Result<(), String> {
    if dir.is_file() {
        return Err("is a file, not a folder".into());
    }
    if let Some(file) = blocking_file(dir) {
        return Err(format!(
            "cannot be created: {} is a file, not a folder",
            file.display()
        ));
    }
    // The folder, or where it would be created: its nearest existing ancestor. Checking
    // creates nothing (serve validates every edit of a form), only a probe file it removes.
    let (existing, what) = match dir.ancestors().find(|a| a.exists()) {
        Some(a) if a == dir => (a, "is not writable"),
        Some(a) => (a, "cannot be created"),
        None => return Err("cannot be created: no part of the path exists".into()),
    };
    let probe = existing.join(format!(".lorafuse-write-test-{}", std::process::id()));
    std::fs::write(&probe, b"lorafuse checks that it can write here\n").map_err(|e| {
        if existing == dir {
            format!("{what}: {e}")
        } else {
            format!("{what} in {}: {e}", existing.display())
        }
    })?;
    // The probe is ours; if it cannot be removed the folder is still writable.
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

fn read_prompt_file(path: &Path) -> std::io::Result<Vec<String>> {
    let bytes = std::fs::read(path)?;
    let text = String::from_utf8(bytes)
        .map_err(|_| std::io::Error::new(ErrorKind::InvalidData, "it is not UTF-8 text"))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect())
}

/// The state file `resume` names: the file itself, or `state.safetensors` in the folder; an
/// error says what is there instead (a kohya state folder, nothing).
pub fn resume_state(path: &Path) -> Result<PathBuf, String> {
    let state = crate::train::saves::STATE_FILE;
    match std::fs::metadata(path) {
        Err(e) => Err(missing(path, &e)),
        Ok(m) if m.is_file() => Ok(path.to_path_buf()),
        Ok(_) if path.join(state).is_file() => Ok(path.join(state)),
        Ok(_)
            if path.join("train_state.json").is_file() || path.join("optimizer.bin").is_file() =>
        {
            Err(format!(
                "is a kohya (accelerate) state folder, which lorafuse cannot read; lorafuse \
                 resumes from its own state files ({state}, or a save point's \
                 …-state.safetensors with save_state = true); to go on from that save point's \
                 LoRA instead, set network_weights to it and remove resume"
            ))
        }
        Ok(_) => Err(format!(
            "is a folder without {state}: give a lorafuse state file or the output folder of \
             the run to continue"
        )),
    }
}
