//! README.md's table of configuration keys, made from the declarations in keys.rs. A test
//! (tests/config.rs) keeps README.md byte-equal to it; `LORAFUSE_BLESS=1 cargo test --test
//! frontend config::the_readme_table` rewrites the table there.

use yaml_serde::Value;

use super::keys::KEYS;
use super::parse::float_text;

/// One key as the documentation shows it (README.md's table, `lorafuse serve`'s form).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct KeyDoc {
    pub name: &'static str,
    /// The type column ("whole number ≥ 1", "`cosine`, `linear`, ...").
    pub doc_type: String,
    /// The default column ("`32`", "required", "unset").
    pub default_doc: String,
    /// What a valid value is ("must be ...").
    pub rule: String,
    /// The meaning, with other trainers' names and kohya's default where they apply.
    pub doc: String,
}

/// Every key, in field order.
pub(crate) fn key_docs() -> Vec<KeyDoc> {
    KEYS.iter()
        .map(|k| KeyDoc {
            name: k.name,
            doc_type: k.doc_type.clone(),
            default_doc: k.default_doc.clone(),
            rule: k.rule.clone(),
            doc: meaning(k),
        })
        .collect()
}

/// The meaning column: the doc, other trainers' names, kohya's default.
fn meaning(k: &super::decl::KeyDecl) -> String {
    let mut meaning = k.doc.to_string();
    if !k.aliases.is_empty() {
        let names: Vec<String> = k
            .aliases
            .iter()
            .map(|(name, note)| format!("`{name}`{note}"))
            .collect();
        let label = if names.len() == 1 { "name" } else { "names" };
        meaning.push_str(&format!(" Other trainers' {label}: {}.", names.join(", ")));
    }
    if let Some(kohya) = k.kohya_default {
        meaning.push_str(&format!(
            " Left out of a kohya-format (TOML) file: `{kohya}`, kohya's default."
        ));
    }
    meaning
}

/// The header and one row per key: `| key | type | default | meaning |`.
pub(crate) fn markdown_table() -> String {
    let mut out = String::from("| key | type | default | meaning |\n|---|---|---|---|\n");
    for k in KEYS.iter() {
        let meaning = meaning(k);
        out.push_str(&format!(
            "| `{}` | {} | {} | {} |\n",
            k.name,
            escape(&k.doc_type),
            escape(&k.default_doc),
            escape(&meaning)
        ));
    }
    out
}

/// A table cell cannot hold a bare `|`.
fn escape(text: &str) -> String {
    text.replace('|', "\\|")
}

/// A default value as README.md shows it: numbers as a config writes them (`1e-4`, `0.9`,
/// `0`), text without quotes.
pub(crate) fn cell(v: &Value) -> String {
    match v {
        Value::Null => "unset".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => match n.as_f64() {
            Some(x) if n.is_f64() && x.fract() == 0.0 && x.abs() < 1e6 => format!("{x:.0}"),
            Some(x) if n.is_f64() => float_text(x),
            _ => n.to_string(),
        },
        Value::String(s) => s.clone(),
        Value::Sequence(items) => format!(
            "[{}]",
            items.iter().map(cell).collect::<Vec<_>>().join(", ")
        ),
        other => super::parse::render(other),
    }
}
