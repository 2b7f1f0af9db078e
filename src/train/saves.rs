//! What a run writes and when: LoRA checkpoints and the resumable state at every save point,
//! the final LoRA, and the pruning of old checkpoints, with sd-scripts' file names.
//!
//!   save point                 LoRA                                  state
//!   every N steps              <name>-step<step:08>.safetensors      state.safetensors
//!   every N epochs             <name>-<epoch:06>.safetensors         state.safetensors
//!   the end                    <name>.safetensors                    state.safetensors
//!   Ctrl-C                     (none)                                state.safetensors
//!
//! `state.safetensors` is always the newest save; with `save_state` (kohya's: a state per save
//! point), or `save_last_n_steps_state` / `save_last_n_epochs_state`, every save point also
//! keeps its own copy
//! (`<name>-step<step:08>-state.safetensors`, `<name>-<epoch:06>-state.safetensors`), pruned
//! like the LoRA checkpoints: `save_last_n_steps` keeps the step checkpoints of the last N
//! steps, `save_last_n_epochs` the last N epoch checkpoints, as sd-scripts does. Every file is
//! written to a temporary name and renamed, so a crash leaves the previous file or the new one.

use std::path::{Path, PathBuf};

use crate::config::TrainConfig;
use crate::error::{Error, Result};

/// A save point: where in the run it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SavePoint {
    Step(u64),
    Epoch(u64),
}

/// How many checkpoints of each kind to keep (None: all).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Retention {
    /// LoRA checkpoints of the last N steps.
    pub steps: Option<u64>,
    /// The last N epoch checkpoints.
    pub epochs: Option<u64>,
    /// Per-save-point states: of the last N steps / the last N epochs (None: only the newest
    /// state, `state.safetensors`).
    pub step_states: Option<u64>,
    pub epoch_states: Option<u64>,
    /// Every save point keeps its own state (kohya's `save_state`), pruned by the above.
    pub every_state: bool,
}

impl Retention {
    pub fn from_config(cfg: &TrainConfig) -> Retention {
        let n = |v: Option<usize>| v.map(|n| n as u64);
        Retention {
            steps: n(cfg.save_last_n_steps),
            epochs: n(cfg.save_last_n_epochs),
            step_states: n(cfg.save_last_n_steps_state),
            epoch_states: n(cfg.save_last_n_epochs_state),
            every_state: cfg.save_state,
        }
    }
}

/// The file name of the newest resumable state inside output_dir.
pub const STATE_FILE: &str = "state.safetensors";

/// Names and prunes the files of one output folder.
pub struct Saves {
    pub dir: PathBuf,
    pub name: String,
    pub retention: Retention,
}

impl Saves {
    pub fn new(cfg: &TrainConfig) -> Saves {
        Saves {
            dir: cfg.output_dir.clone(),
            name: cfg.output_name.clone(),
            retention: Retention::from_config(cfg),
        }
    }

    /// The final LoRA.
    pub fn lora(&self) -> PathBuf {
        self.dir.join(format!("{}.safetensors", self.name))
    }
    /// The newest state.
    pub fn state(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }
    /// The LoRA checkpoint of a save point.
    pub fn checkpoint(&self, at: SavePoint) -> PathBuf {
        self.dir.join(format!("{}.safetensors", self.stem(at)))
    }
    /// The state copy of a save point (kept only with a state retention).
    pub fn checkpoint_state(&self, at: SavePoint) -> PathBuf {
        self.dir
            .join(format!("{}-state.safetensors", self.stem(at)))
    }
    /// Whether a save point keeps its own state copy.
    pub fn keeps_state(&self, at: SavePoint) -> bool {
        self.retention.every_state
            || match at {
                SavePoint::Step(_) => self.retention.step_states.is_some(),
                SavePoint::Epoch(_) => self.retention.epoch_states.is_some(),
            }
    }

    fn stem(&self, at: SavePoint) -> String {
        match at {
            SavePoint::Step(s) => format!("{}-step{s:08}", self.name),
            SavePoint::Epoch(e) => format!("{}-{e:06}", self.name),
        }
    }

    /// Copies the newest state to the save point's own file (hard link where the file
    /// system has them, through a temporary name and a rename either way).
    pub fn keep_state_copy(&self, at: SavePoint) -> Result<PathBuf> {
        let to = self.checkpoint_state(at);
        let tmp = self
            .dir
            .join(format!(".{}.{}.tmp", STATE_FILE, std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let state = self.state();
        if std::fs::hard_link(&state, &tmp).is_err() {
            std::fs::copy(&state, &tmp).map_err(|e| Error::io(&to, "copy the state", e))?;
        }
        std::fs::rename(&tmp, &to).map_err(|e| Error::io(&to, "rename the state copy", e))?;
        Ok(to)
    }

    /// Deletes checkpoints (and state copies) that fall out of the retention windows after
    /// a save at `now`; returns what it deleted.
    pub fn prune(&self, now: SavePoint) -> Result<Vec<PathBuf>> {
        let mut gone = Vec::new();
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) => return Err(Error::io(&self.dir, "list the output folder", e)),
        };
        let mut epochs: Vec<(u64, PathBuf, bool)> = Vec::new();
        for entry in entries.flatten() {
            let file = entry.file_name().to_string_lossy().into_owned();
            let Some((at, is_state)) = self.parse(&file) else {
                continue;
            };
            let path = entry.path();
            match (at, now) {
                (SavePoint::Step(s), SavePoint::Step(n)) => {
                    let keep = if is_state {
                        self.retention.step_states
                    } else {
                        self.retention.steps
                    };
                    // sd-scripts keeps the step checkpoints of steps >= now − N.
                    if keep.is_some_and(|k| s + k < n) {
                        remove(&path, &mut gone)?;
                    }
                }
                (SavePoint::Epoch(e), SavePoint::Epoch(_)) => epochs.push((e, path, is_state)),
                _ => {}
            }
        }
        for is_state in [false, true] {
            let keep = if is_state {
                self.retention.epoch_states
            } else {
                self.retention.epochs
            };
            let Some(k) = keep else { continue };
            let mut mine: Vec<&(u64, PathBuf, bool)> =
                epochs.iter().filter(|e| e.2 == is_state).collect();
            mine.sort_by_key(|e| std::cmp::Reverse(e.0));
            for (_, path, _) in mine.into_iter().skip(k as usize) {
                remove(path, &mut gone)?;
            }
        }
        Ok(gone)
    }

    /// The save point and kind of a checkpoint file name of this run, if it is one.
    fn parse(&self, file: &str) -> Option<(SavePoint, bool)> {
        let rest = file.strip_prefix(&self.name)?.strip_prefix('-')?;
        let rest = rest.strip_suffix(".safetensors")?;
        let (rest, is_state) = match rest.strip_suffix("-state") {
            Some(r) => (r, true),
            None => (rest, false),
        };
        let at = match rest.strip_prefix("step") {
            Some(d) if d.len() == 8 && d.bytes().all(|b| b.is_ascii_digit()) => {
                SavePoint::Step(d.parse().ok()?)
            }
            _ if rest.len() == 6 && rest.bytes().all(|b| b.is_ascii_digit()) => {
                SavePoint::Epoch(rest.parse().ok()?)
            }
            _ => return None,
        };
        Some((at, is_state))
    }
}

fn remove(path: &Path, gone: &mut Vec<PathBuf>) -> Result<()> {
    std::fs::remove_file(path).map_err(|e| Error::io(path, "delete an old checkpoint", e))?;
    gone.push(path.to_path_buf());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn saves(dir: &Path, r: Retention) -> Saves {
        Saves {
            dir: dir.to_path_buf(),
            name: "x".into(),
            retention: r,
        }
    }

    #[test]
    fn pruning_keeps_the_windows_sd_scripts_keeps() {
        let dir = std::env::temp_dir().join(format!("lorafuse-saves-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let s = saves(
            &dir,
            Retention {
                steps: Some(20),
                epochs: Some(2),
                step_states: Some(10),
                epoch_states: None,
                every_state: false,
            },
        );
        for step in [10, 20, 30, 40] {
            for p in [
                s.checkpoint(SavePoint::Step(step)),
                s.checkpoint_state(SavePoint::Step(step)),
            ] {
                std::fs::write(p, b"x").unwrap();
            }
        }
        for e in 1..=4 {
            std::fs::write(s.checkpoint(SavePoint::Epoch(e)), b"x").unwrap();
        }
        std::fs::write(dir.join("x-notes.safetensors"), b"x").unwrap();
        std::fs::write(dir.join("y-step00000010.safetensors"), b"x").unwrap();
        s.prune(SavePoint::Step(40)).unwrap();
        s.prune(SavePoint::Epoch(4)).unwrap();
        let mut left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "x-000003.safetensors",
                "x-000004.safetensors",
                "x-notes.safetensors",
                "x-step00000020.safetensors",
                "x-step00000030-state.safetensors",
                "x-step00000030.safetensors",
                "x-step00000040-state.safetensors",
                "x-step00000040.safetensors",
                "y-step00000010.safetensors",
            ]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
