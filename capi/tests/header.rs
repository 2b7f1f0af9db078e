//! include/lorafuse.h is generated from src/lib.rs's exported items (constants, the opaque
//! trainer, the callback type, every `#[no_mangle] extern "C"` function) and their doc
//! comments; this test fails when the committed header differs from what src/lib.rs declares.
//! `LORAFUSE_BLESS=1 cargo test --release -p lorafuse-capi --test header` rewrites it.

use std::path::Path;

const PREAMBLE: &str = "\
// lorafuse.h: the C ABI of lorafuse (link with -llorafuse_capi).
// Generated from capi/src/lib.rs by capi/tests/header.rs: do not edit; after changing the
// Rust declarations run LORAFUSE_BLESS=1 cargo test --release -p lorafuse-capi --test header
//
// Every function may be called from any thread, returns an int32_t status (LORAFUSE_OK or
// an error code) unless it says otherwise, and keeps a failure's message on the trainer
// (lorafuse_error_message). Strings in are UTF-8 and NUL-terminated; strings out are copied
// into the caller's buffer as snprintf does (the whole length is returned: call again with a
// larger buffer when it is >= cap).
#ifndef LORAFUSE_H
#define LORAFUSE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern \"C\" {
#endif
";

const POSTAMBLE: &str = "
#ifdef __cplusplus
}
#endif

#endif /* LORAFUSE_H */
";

/// The C spelling of a Rust FFI type.
fn c_type(rust: &str) -> String {
    let rust = rust.trim();
    for (prefix, konst) in [("*const ", true), ("*mut ", false)] {
        if let Some(inner) = rust.strip_prefix(prefix) {
            let mut pointee = c_type(inner);
            if konst {
                pointee = if pointee.ends_with('*') {
                    format!("{pointee}const")
                } else {
                    format!("const {pointee}")
                };
            }
            return if pointee.ends_with('*') {
                format!("{pointee}*")
            } else {
                format!("{pointee} *")
            };
        }
    }
    match rust {
        "" | "()" => "void",
        "c_char" => "char",
        "c_void" => "void",
        "usize" => "size_t",
        "i32" => "int32_t",
        "u32" => "uint32_t",
        "u64" => "uint64_t",
        "lorafuse_trainer" | "lorafuse_event_fn" => rust,
        other => panic!("no C spelling for the Rust type `{other}`: add it to c_type"),
    }
    .to_string()
}

/// `a: T, b: U` -> `T a, U b` (`void` when empty).
fn c_params(params: &str) -> String {
    let list: Vec<String> = params
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (name, ty) = p.split_once(':').expect("a parameter is `name: Type`");
            let ty = c_type(ty);
            let sep = if ty.ends_with('*') { "" } else { " " };
            format!("{ty}{sep}{}", name.trim())
        })
        .collect();
    if list.is_empty() {
        "void".into()
    } else {
        list.join(", ")
    }
}

/// `name(params) -> ret` -> (name, C params, C return type).
fn signature(sig: &str) -> (String, String, String) {
    let open = sig.find('(').expect("a signature has parameters");
    let close = sig.rfind(')').expect("a signature closes its parameters");
    let ret = sig[close + 1..].trim().trim_start_matches("->").trim();
    (
        sig[..open].trim().to_string(),
        c_params(&sig[open + 1..close]),
        c_type(ret),
    )
}

/// The header for the Rust source `src`.
fn generate(src: &str) -> String {
    let mut out = String::from(PREAMBLE);
    let mut docs: Vec<String> = Vec::new();
    let mut no_mangle = false;
    let mut lines = src.lines();
    let doc_block = |docs: &mut Vec<String>| -> String {
        let s: String = docs.iter().map(|d| format!("\n//{d}")).collect();
        docs.clear();
        s
    };
    while let Some(line) = lines.next() {
        let l = line.trim();
        if let Some(d) = l.strip_prefix("///") {
            docs.push(d.trim_end().to_string());
            continue;
        }
        if l == "#[no_mangle]" {
            no_mangle = true;
            continue;
        }
        // An item that spans lines: up to its `{` (a function) or `;`.
        let mut item = l.to_string();
        let exported = l.starts_with("pub extern \"C\" fn ")
            || l.starts_with("pub unsafe extern \"C\" fn ")
            || l.starts_with("pub type ");
        while exported && !item.ends_with('{') && !item.ends_with(';') {
            item.push(' ');
            item.push_str(lines.next().expect("an item ends").trim());
        }
        let item = item.replace("( ", "(").replace(", )", ")");
        if let Some(rest) = item
            .strip_prefix("pub const ")
            .filter(|_| item.contains(": i32 ="))
        {
            let (name, value) = rest.split_once(": i32 =").unwrap();
            let value = value.trim().trim_end_matches(';');
            out += &format!("{}\n#define {name} {value}\n", doc_block(&mut docs));
        } else if let Some(rest) = item.strip_prefix("pub struct ") {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            out += &format!("{}\ntypedef struct {name} {name};\n", doc_block(&mut docs));
        } else if let Some(rest) = item.strip_prefix("pub type ") {
            let (name, ty) = rest.split_once('=').unwrap();
            let f = ty
                .trim()
                .trim_end_matches(';')
                .strip_prefix("Option<unsafe extern \"C\" fn")
                .and_then(|f| f.strip_suffix('>'))
                .expect("a callback type is Option<unsafe extern \"C\" fn(..)>");
            let (_, params, ret) = signature(f);
            let name = name.trim();
            out += &format!(
                "{}\ntypedef {ret} (*{name})({params});\n",
                doc_block(&mut docs)
            );
        } else if exported {
            assert!(no_mangle, "`{item}` is exported without #[no_mangle]");
            let sig = item.split(" fn ").nth(1).unwrap().trim_end_matches('{');
            let (name, params, ret) = signature(sig);
            let sep = if ret.ends_with('*') { "" } else { " " };
            out += &format!("{}\n{ret}{sep}{name}({params});\n", doc_block(&mut docs));
        } else if !l.starts_with("#[") {
            docs.clear();
        }
        no_mangle = false;
    }
    out + POSTAMBLE
}

#[test]
fn the_committed_header_is_what_lib_rs_declares() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let src = std::fs::read_to_string(root.join("src/lib.rs")).unwrap();
    let want = generate(&src);
    let path = root.join("include/lorafuse.h");
    if std::env::var_os("LORAFUSE_BLESS").is_some() {
        std::fs::write(&path, &want).unwrap();
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "{} is not what src/lib.rs declares: run LORAFUSE_BLESS=1 cargo test --release \
         -p lorafuse-capi --test header",
        path.display()
    );
}

#[test]
fn every_exported_function_is_in_the_header() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let src = std::fs::read_to_string(root.join("src/lib.rs")).unwrap();
    let header = generate(&src);
    let exported = src.matches("#[no_mangle]").count();
    let declared = header
        .lines()
        .filter(|l| l.starts_with(|c: char| c.is_ascii_alphabetic()) && l.ends_with(");"))
        .filter(|l| !l.starts_with("typedef"))
        .count();
    assert_eq!(exported, declared, "{header}");
    // The generator reads lib.rs only: nothing is exported from another file.
    for f in std::fs::read_dir(root.join("src")).unwrap() {
        let f = f.unwrap().path();
        if f.file_name().unwrap() != "lib.rs" {
            let text = std::fs::read_to_string(&f).unwrap();
            assert!(
                !text.contains("no_mangle"),
                "{} exports a function",
                f.display()
            );
        }
    }
    assert!(exported >= 17, "{exported}");
}

#[test]
fn c_types() {
    assert_eq!(c_type("*const c_char"), "const char *");
    assert_eq!(c_type("*const *const c_char"), "const char *const *");
    assert_eq!(c_type("*mut *mut lorafuse_trainer"), "lorafuse_trainer **");
    assert_eq!(c_type("*mut c_void"), "void *");
    assert_eq!(
        signature("f(a: usize, b: *mut c_char) -> u64"),
        ("f".into(), "size_t a, char *b".into(), "uint64_t".into())
    );
}
