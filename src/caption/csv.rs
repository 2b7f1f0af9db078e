//! `caption --metadata-csv FILE`: the captions in one CSV, as the data loader reads a
//! `metadata.csv` (src/data/metadata.rs: Hugging Face imagefolder's `file_name,text`, the
//! file names relative to the CSV's folder), instead of `.txt` sidecars.
//!
//! - The CSV must be in the captioned folder or a folder above it (its file names then reach
//!   the pictures); a picture's row is `<folder from the CSV to DIR>/<path below DIR>`.
//! - An existing file is checked as the data loader checks it (header, duplicates) and merged
//!   into: its rows and columns are kept, in order; a picture without a row gets one at the
//!   end. A row with an empty text counts as no caption.
//! - The whole file is written atomically once, after the last picture.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use crate::atomic::write_file;
use crate::data::metadata::{caption_columns, csv_field, normalize_key, parse_csv, read_metadata};
use crate::error::{Error, Result};

use super::error::CaptionError;

/// The CSV being filled.
pub struct CaptionCsv {
    pub path: PathBuf,
    /// The captioned folder relative to the CSV's, with a trailing `/` ("" when the same).
    prefix: String,
    header: Vec<String>,
    /// (file_name, text) columns.
    cols: (usize, usize),
    records: Vec<Vec<String>>,
    /// Row of each normalised file name.
    index: HashMap<String, usize>,
}

fn bad(path: &Path, problem: impl Into<String>) -> Error {
    CaptionError::MetadataCsv {
        path: path.to_path_buf(),
        problem: problem.into(),
    }
    .into()
}

impl CaptionCsv {
    /// The CSV at `path` for the pictures below `dir` (read if it exists).
    pub fn open(path: &Path, dir: &Path) -> Result<CaptionCsv> {
        let folder = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let canon =
            |p: &Path| fs::canonicalize(p).map_err(|e| bad(path, format!("{}: {e}", p.display())));
        let rel = canon(dir)?
            .strip_prefix(canon(folder)?)
            .map(Path::to_path_buf)
            .map_err(|_| {
                bad(
                    path,
                    format!(
                        "it is not in {} or a folder above it, so its file names could not \
                         reach the pictures",
                        dir.display()
                    ),
                )
            })?;
        let mut prefix: String = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join("/");
        if !prefix.is_empty() {
            prefix.push('/');
        }
        let mut csv = CaptionCsv {
            path: path.to_path_buf(),
            prefix,
            header: vec!["file_name".into(), "text".into()],
            cols: (0, 1),
            records: Vec::new(),
            index: HashMap::new(),
        };
        if !path.exists() {
            return Ok(csv);
        }
        // The loader's checks first: a file it would refuse is not merged into.
        if let Err(mut errors) = read_metadata(path) {
            return Err(errors.remove(0).into());
        }
        let text = fs::read_to_string(path).map_err(|e| Error::io(path, "read", e))?;
        let mut records = parse_csv(text.trim_start_matches('\u{feff}'))
            .map_err(|(line, why)| bad(path, format!("line {line}: {why}")))?
            .into_iter();
        let header = records
            .next()
            .ok_or_else(|| bad(path, "empty file: expected a header row file_name,text"))?;
        csv.cols = caption_columns(&header)
            .ok_or_else(|| bad(path, "no file_name and text columns in its header"))?;
        csv.header = header.fields;
        for r in records {
            if r.fields.iter().all(|f| f.trim().is_empty()) {
                continue;
            }
            let mut fields = r.fields;
            fields.resize(csv.header.len().max(fields.len()), String::new());
            csv.index
                .insert(normalize_key(&fields[csv.cols.0]), csv.records.len());
            csv.records.push(fields);
        }
        Ok(csv)
    }

    /// The row key of a picture at `rel` below the captioned folder.
    pub fn key(&self, rel: &Path) -> String {
        let rel: Vec<String> = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        normalize_key(&format!("{}{}", self.prefix, rel.join("/")))
    }

    /// The caption of `key`, if its row has one.
    pub fn get(&self, key: &str) -> Option<&str> {
        let text = self.records.get(*self.index.get(key)?)?[self.cols.1].as_str();
        (!text.trim().is_empty()).then_some(text)
    }

    /// Sets the caption of `key`, adding its row if needed.
    pub fn set(&mut self, key: &str, text: &str) {
        let i = match self.index.get(key) {
            Some(&i) => i,
            None => {
                let mut fields = vec![String::new(); self.header.len()];
                fields[self.cols.0] = key.to_string();
                self.index.insert(key.to_string(), self.records.len());
                self.records.push(fields);
                self.records.len() - 1
            }
        };
        self.records[i][self.cols.1] = text.to_string();
    }

    /// The file's text: the header, then every row.
    pub fn text(&self) -> String {
        std::iter::once(&self.header)
            .chain(&self.records)
            .map(|r| r.iter().map(|f| csv_field(f)).collect::<Vec<_>>().join(",") + "\n")
            .collect()
    }

    /// Writes the file atomically.
    pub fn write(&self) -> Result<()> {
        write_file(&self.path, self.text().as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_kept_merged_and_read_back() {
        let dir = std::env::temp_dir().join(format!("lf-caption-csv-{}", std::process::id()));
        let pics = dir.join("pics");
        fs::create_dir_all(pics.join("5_x")).unwrap();
        let path = dir.join("metadata.csv");
        fs::write(
            &path,
            "file_name,extra,text\npics/5_x/a.png,keep me,\"old, caption\"\nother.png,,x\n",
        )
        .unwrap();
        let mut csv = CaptionCsv::open(&path, &pics).unwrap();
        let a = csv.key(Path::new("5_x/a.png"));
        assert_eq!(a, "pics/5_x/a.png");
        assert_eq!(csv.get(&a), Some("old, caption"));
        csv.set(&a, "new \"quoted\", tag");
        csv.set(&csv.key(Path::new("b.png")), " b ");
        csv.write().unwrap();
        let md = read_metadata(&path).unwrap();
        assert_eq!(
            md.get("pics/5_x/a.png").unwrap().text,
            "new \"quoted\", tag"
        );
        assert_eq!(md.get("other.png").unwrap().text, "x");
        assert_eq!(md.get("pics/b.png").unwrap().text, " b ");
        assert!(fs::read_to_string(&path)
            .unwrap()
            .starts_with("file_name,extra,text\npics/5_x/a.png,keep me,"));
        // A CSV in a subfolder cannot name the pictures above it.
        let e = CaptionCsv::open(&pics.join("5_x/m.csv"), &pics)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("m.csv") && e.contains("not in"), "{e}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
