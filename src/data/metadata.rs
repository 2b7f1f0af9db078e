//! Captions from a metadata file in the image folder, as Hugging Face's `imagefolder` reads
//! them: `metadata.jsonl` (one JSON object per line) or `metadata.csv` (a header row), each row
//! with a `file_name` (path relative to the metadata file's folder) and a `text`. A `caption`
//! column is accepted where there is no `text` (kohya's name for it).

use std::collections::HashMap;
use std::path::Path;

use super::error::DataError;

/// One caption row.
#[derive(Clone, Debug, PartialEq)]
pub struct MetadataRow {
    /// 1-based line of the row (of its first line, for a CSV record spanning several).
    pub line: usize,
    /// `file_name` as written.
    pub file_name: String,
    pub text: String,
}

/// A parsed metadata file: rows by normalised file name.
#[derive(Clone, Debug, Default)]
pub struct Metadata {
    pub rows: Vec<MetadataRow>,
    pub by_key: HashMap<String, usize>,
}

impl Metadata {
    pub fn get(&self, key: &str) -> Option<&MetadataRow> {
        self.by_key.get(key).map(|&i| &self.rows[i])
    }
}

/// The lookup form of a relative path: "/" separators, no leading "./".
pub fn normalize_key(name: &str) -> String {
    let s = name.trim().replace('\\', "/");
    let mut s = s.as_str();
    while let Some(rest) = s.strip_prefix("./") {
        s = rest;
    }
    s.to_string()
}

/// Parse `metadata.jsonl` or `metadata.csv` (by extension). All problems are returned.
pub fn read_metadata(path: &Path) -> Result<Metadata, Vec<DataError>> {
    let bytes = std::fs::read(path).map_err(|e| {
        vec![DataError::Read {
            path: path.to_path_buf(),
            reason: e.to_string(),
        }]
    })?;
    let text = match std::str::from_utf8(strip_bom(&bytes)) {
        Ok(t) => t,
        Err(e) => {
            return Err(vec![DataError::Metadata {
                path: path.to_path_buf(),
                line: 1 + bytes[..e.valid_up_to()]
                    .iter()
                    .filter(|&&b| b == b'\n')
                    .count(),
                problem: "not valid UTF-8 text; save the file as UTF-8".into(),
            }])
        }
    };
    let is_csv = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    let (rows, mut problems) = if is_csv {
        parse_csv_rows(text)
    } else {
        parse_jsonl_rows(text)
    };
    let mut metadata = Metadata::default();
    for row in rows {
        let key = normalize_key(&row.file_name);
        if key.is_empty() {
            problems.push((row.line, "file_name is empty".to_string()));
            continue;
        }
        if let Some(first) = metadata.get(&key) {
            problems.push((
                row.line,
                format!(
                    "file_name \"{}\" already has a row at line {}; keep one",
                    row.file_name, first.line
                ),
            ));
            continue;
        }
        metadata.by_key.insert(key, metadata.rows.len());
        metadata.rows.push(row);
    }
    if problems.is_empty() {
        Ok(metadata)
    } else {
        Err(problems
            .into_iter()
            .map(|(line, problem)| DataError::Metadata {
                path: path.to_path_buf(),
                line,
                problem,
            })
            .collect())
    }
}

fn strip_bom(b: &[u8]) -> &[u8] {
    b.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(b)
}

type Problems = Vec<(usize, String)>;

fn parse_jsonl_rows(text: &str) -> (Vec<MetadataRow>, Problems) {
    let mut rows = Vec::new();
    let mut problems = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value = match serde_json::from_str(raw) {
            Ok(v) => v,
            Err(e) => {
                problems.push((line, format!("not valid JSON: {e}")));
                continue;
            }
        };
        let Some(obj) = value.as_object() else {
            problems.push((line, "expected a JSON object per line".into()));
            continue;
        };
        let file_name = match obj.get("file_name") {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(_) => {
                problems.push((line, "\"file_name\" must be a string".into()));
                continue;
            }
            None => {
                problems.push((line, "no \"file_name\" key".into()));
                continue;
            }
        };
        let text = match obj.get("text").or_else(|| obj.get("caption")) {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Null) => String::new(),
            Some(_) => {
                problems.push((line, "\"text\" must be a string".into()));
                continue;
            }
            None => {
                problems.push((line, "no \"text\" key (the caption)".into()));
                continue;
            }
        };
        rows.push(MetadataRow {
            line,
            file_name,
            text,
        });
    }
    (rows, problems)
}

fn parse_csv_rows(text: &str) -> (Vec<MetadataRow>, Problems) {
    let mut problems = Vec::new();
    let records = match parse_csv(text) {
        Ok(r) => r,
        Err((line, p)) => return (Vec::new(), vec![(line, p)]),
    };
    let mut iter = records.into_iter();
    let Some(header) = iter.next() else {
        return (
            Vec::new(),
            vec![(1, "empty file: expected a header row file_name,text".into())],
        );
    };
    let Some((name_col, text_col)) = caption_columns(&header) else {
        return (
            Vec::new(),
            vec![(
                header.line,
                format!(
                    "header row has columns [{}]; expected file_name and text",
                    header.fields.join(", ")
                ),
            )],
        );
    };
    let mut rows = Vec::new();
    for rec in iter {
        if rec.fields.len() == 1 && rec.fields[0].trim().is_empty() {
            continue; // blank line
        }
        if rec.fields.len() != header.fields.len() {
            problems.push((
                rec.line,
                format!(
                    "{} fields, but the header has {}; quote fields that contain commas (\"a, b\")",
                    rec.fields.len(),
                    header.fields.len()
                ),
            ));
            continue;
        }
        rows.push(MetadataRow {
            line: rec.line,
            file_name: rec.fields[name_col].clone(),
            text: rec.fields[text_col].clone(),
        });
    }
    (rows, problems)
}

/// The `file_name` and the caption column (`text`, else `caption`) of a metadata CSV's header
/// row, case-insensitive.
pub fn caption_columns(header: &CsvRecord) -> Option<(usize, usize)> {
    let column = |names: &[&str]| {
        names.iter().find_map(|n| {
            header
                .fields
                .iter()
                .position(|f| f.trim().eq_ignore_ascii_case(n))
        })
    };
    Some((column(&["file_name"])?, column(&["text", "caption"])?))
}

/// One field as [`parse_csv`] reads it back: in double quotes (a quote doubled) when it holds
/// a comma, a quote, a line break or spaces at either end.
pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) || s.trim() != s {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// One CSV record and the line it starts on.
#[derive(Debug, PartialEq)]
pub struct CsvRecord {
    pub line: usize,
    pub fields: Vec<String>,
}

/// RFC 4180 CSV: comma-separated fields; a field in double quotes may hold commas, line breaks
/// and `""` for a quote; records end at LF or CRLF. Spaces before an opening quote are
/// skipped; a quote inside an unquoted field is kept as a character (lenient, as Python's csv
/// module). An unterminated quote is an error naming
/// the line where the field opened.
pub fn parse_csv(text: &str) -> Result<Vec<CsvRecord>, (usize, String)> {
    let mut records = Vec::new();
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut line = 1;
    let mut record_line = 1;
    let mut chars = text.chars().peekable();
    let mut at_field_start = true;
    let mut any = false;
    while let Some(c) = chars.next() {
        any = true;
        match c {
            '"' if at_field_start => {
                // Spaces before an opening quote are not part of the field.
                field.clear();
                let open_line = line;
                let mut closed = false;
                while let Some(q) = chars.next() {
                    match q {
                        '"' if chars.peek() == Some(&'"') => {
                            chars.next();
                            field.push('"');
                        }
                        '"' => {
                            closed = true;
                            break;
                        }
                        '\r' if chars.peek() == Some(&'\n') => {}
                        '\n' => {
                            line += 1;
                            field.push('\n');
                        }
                        _ => field.push(q),
                    }
                }
                if !closed {
                    return Err((
                        open_line,
                        "a quoted field is never closed (missing '\"')".into(),
                    ));
                }
                at_field_start = false;
                // Characters between the closing quote and the next separator are kept, as
                // Python's csv module does.
            }
            ',' => {
                fields.push(std::mem::take(&mut field));
                at_field_start = true;
            }
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' => {
                fields.push(std::mem::take(&mut field));
                records.push(CsvRecord {
                    line: record_line,
                    fields: std::mem::take(&mut fields),
                });
                line += 1;
                record_line = line;
                at_field_start = true;
                any = false;
            }
            _ => {
                field.push(c);
                at_field_start = at_field_start && c.is_whitespace();
            }
        }
    }
    if any {
        fields.push(field);
        records.push(CsvRecord {
            line: record_line,
            fields,
        });
    }
    Ok(records)
}
