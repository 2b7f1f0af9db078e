//! `lorafuse tags`: the tag editor's jobs on a folder of captioned images, from the command
//! line: a frequency table, a trigger word put first, tags removed or replaced (by name or
//! `*` pattern), duplicates removed; a dry run shows each change before anything is written.
//!
//! A caption is read as comma-separated tags, each trimmed; empty tags are dropped. Tags are
//! compared without regard to letter case, and `_` equals a space (the WD14 tagger writes
//! `long_hair` or `long hair` as the user chose). Each line of a caption file is a caption of
//! its own (kohya's wildcard captions). An edited caption is written back joined with ", ",
//! atomically; a caption the edit does not change is not rewritten.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::walk;
use crate::atomic::write_file;
use crate::error::Error;

/// A tag name or a pattern where `*` matches any run of characters.
#[derive(Clone, Debug, PartialEq)]
pub struct Pattern(String);

/// The comparison form: lower case, `_` as space, spaces collapsed.
fn fold(tag: &str) -> String {
    tag.to_lowercase()
        .replace('_', " ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

impl Pattern {
    pub fn new(text: &str) -> Pattern {
        Pattern(fold(text))
    }

    pub fn matches(&self, tag: &str) -> bool {
        glob(self.0.as_bytes(), fold(tag).as_bytes())
    }
}

/// `*` matches any run (greedy with backtracking to the last star).
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// What to do to every caption, in this order: remove, replace, remove duplicates, put the
/// trigger first.
#[derive(Clone, Debug, Default)]
pub struct TagEdit {
    pub remove: Vec<Pattern>,
    /// A tag matching the pattern becomes the text.
    pub replace: Vec<(Pattern, String)>,
    pub dedupe: bool,
    /// Tags put first, in this order (moved if present, added if not).
    pub trigger: Vec<String>,
}

impl TagEdit {
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.replace.is_empty() && !self.dedupe && self.trigger.is_empty()
    }

    /// One caption line edited.
    pub fn line(&self, line: &str) -> String {
        let mut tags: Vec<String> = split(line);
        tags.retain(|t| !self.remove.iter().any(|p| p.matches(t)));
        for tag in &mut tags {
            if let Some((_, new)) = self.replace.iter().find(|(p, _)| p.matches(tag)) {
                *tag = new.trim().to_string();
            }
        }
        tags.retain(|t| !t.is_empty());
        if self.dedupe {
            let mut seen = std::collections::HashSet::new();
            tags.retain(|t| seen.insert(fold(t)));
        }
        if !self.trigger.is_empty() {
            let first: Vec<String> = self.trigger.iter().map(|t| fold(t)).collect();
            tags.retain(|t| !first.contains(&fold(t)));
            let mut front: Vec<String> = self.trigger.clone();
            front.append(&mut tags);
            tags = front;
        }
        tags.join(", ")
    }

    /// A caption file's text edited line by line (its line ends kept).
    pub fn text(&self, text: &str) -> String {
        let lines: Vec<&str> = text.lines().collect();
        let mut out: Vec<String> = lines.iter().map(|l| self.line(l)).collect();
        if lines.is_empty() {
            out.push(self.line(""));
        }
        let mut joined = out.join("\n");
        if text.ends_with('\n') {
            joined.push('\n');
        }
        joined
    }
}

/// The tags of a caption line.
pub fn split(line: &str) -> Vec<String> {
    line.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect()
}

/// The captions of a folder's images (and its subfolders').
#[derive(Debug, Default)]
pub struct Captions {
    /// (caption file, its text).
    pub files: Vec<(PathBuf, String)>,
    /// Images with no caption file of the extension.
    pub uncaptioned: Vec<PathBuf>,
}

/// Reads the `ext` (with its dot) caption of every image under `dir`.
pub fn read_captions(dir: &Path, ext: &str) -> Result<Captions, Error> {
    let listing = walk::list(dir, &[ext.to_string()])?;
    let mut out = Captions::default();
    for job in listing.jobs {
        match job.sidecars.first() {
            Some((_, path)) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| Error::io(path, "read the caption", e))?;
                out.files.push((path.clone(), text));
            }
            None => out.uncaptioned.push(job.rel),
        }
    }
    Ok(out)
}

/// How often each tag appears (in how many caption lines), most frequent first, ties by name;
/// a tag is counted under its first spelling.
pub fn frequency(c: &Captions) -> Vec<(String, usize)> {
    let mut counts: HashMap<String, (String, usize)> = HashMap::new();
    for (_, text) in &c.files {
        for line in text.lines() {
            let mut seen = std::collections::HashSet::new();
            for tag in split(line) {
                if seen.insert(fold(&tag)) {
                    counts.entry(fold(&tag)).or_insert((tag, 0)).1 += 1;
                }
            }
        }
    }
    let mut v: Vec<(String, usize)> = counts.into_values().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    v
}

/// A caption the edit changes: (file, before, after).
pub type Change = (PathBuf, String, String);

/// The changes `edit` makes; written unless `dry_run`.
pub fn apply(c: &Captions, edit: &TagEdit, dry_run: bool) -> Result<Vec<Change>, Error> {
    let mut changes = Vec::new();
    for (path, text) in &c.files {
        let new = edit.text(text);
        if new != *text {
            if !dry_run {
                write_file(path, new.as_bytes())?;
            }
            changes.push((path.clone(), text.clone(), new));
        }
    }
    Ok(changes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_fold_case_and_underscores() {
        assert!(Pattern::new("long_hair").matches("Long Hair"));
        assert!(Pattern::new("*hair").matches("long_hair"));
        assert!(Pattern::new("*hair*").matches("hair ornament"));
        assert!(Pattern::new("a*b*c").matches("axxbyyc"));
        assert!(!Pattern::new("a*b*c").matches("axxbyy"));
        assert!(!Pattern::new("hair").matches("long hair"));
    }

    #[test]
    fn edits_apply_in_order() {
        let e = TagEdit {
            remove: vec![Pattern::new("*background")],
            replace: vec![(Pattern::new("1girl"), "woman".into())],
            dedupe: true,
            trigger: vec!["sks style".into()],
        };
        assert_eq!(
            e.line("1girl, white_background, smile, Smile, sks_style ,"),
            "sks style, woman, smile"
        );
        assert_eq!(
            e.text("a, b\nb, sks style\n"),
            "sks style, a, b\nsks style, b\n"
        );
        assert_eq!(TagEdit::default().line(" a ,, b"), "a, b");
    }
}
