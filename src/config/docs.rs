//! README.md's table of configuration keys, made from the declarations in keys.rs. A test
//! (tests/config.rs) keeps README.md byte-equal to it; `LORAFUSE_BLESS=1 cargo test --test
//! config` rewrites the table there.

use yaml_serde::Value;

use super::keys::KEYS;
use super::parse::float_text;

/// The header and one row per key: `| key | type | default | meaning |`.
pub(crate) fn markdown_table() -> String {
    let mut out = String::from("| key | type | default | meaning |\n|---|---|---|---|\n");
    for k in KEYS.iter() {
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
