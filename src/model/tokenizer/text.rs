//! Prompt cleanup before BPE, as transformers' slow `CLIPTokenizer._tokenize` does it with ftfy
//! installed: `whitespace_clean(ftfy.fix_text(text)).lower()`.
//!
//! ftfy 6.1's `fix_text` with its default settings, less what is listed under "Not done" below:
//! the text is cut into lines (each keeping its `\n`); HTML unescaping is on until the first line
//! that contains `<` and off from that line on (ftfy's `unescape_html="auto"`: the text might be
//! HTML). Each line then goes through these fixes, in this order, repeated until a pass changes
//! nothing (so `&amp;lt;` ends as `<`):
//! 1. HTML character references ([`super::html`]), where on;
//! 2. C1 controls U+0080..U+009F read as the Windows-1252 bytes they most likely were (`\x85` ->
//!    `…`, `\x93` -> `“`; the five bytes Windows-1252 leaves undefined stay);
//! 3. Latin ligatures and digraphs split (`ﬁ` -> `fi`, `ĳ` -> `ij`, `ǆ` -> `dž`);
//! 4. fullwidth and halfwidth forms to standard width (`Ａ` -> `A`, U+3000 -> space, `ｶ` -> `カ`);
//! 5. curly quotes straightened (U+02BC, U+2018..U+201B -> `'`; U+201C..U+201F -> `"`), which
//!    makes `it’s` the contraction `it's`;
//! 6. terminal colour escapes `ESC [ digits/; letter` removed;
//! 7. control characters removed: U+0000..U+0008, U+000B, U+000E..U+001F, U+007F,
//!    U+206A..U+206F, U+FEFF, U+FFF9..U+FFFC (TAB, LF, FF, CR survive as whitespace; zero-width
//!    joiners, directional marks and soft hyphens survive as characters).
//!
//! ftfy's line-break fix (CR, CRLF, U+2028/9, NEL -> LF) is skipped: every one of those is
//! whitespace, which the cleanup below turns into one space anyway.
//!
//! Then whitespace runs become one space and the ends are trimmed (`\s+` of Python's `regex`
//! module is exactly Unicode White_Space, which is `char::is_whitespace`: checked on every code
//! point), and the text is lowercased (Rust's `to_lowercase` and Python's `str.lower` both apply
//! full case mappings and the final-sigma rule: `İ` -> `i̇`, `ΟΔΟΣ` -> `οδος`).
//!
//! Not done, so these inputs tokenize differently from ftfy (the fixture lists one of each under
//! `known_differences`):
//! - NFC normalisation: decomposed text (`e` + U+0301) is not composed, nor are singletons such
//!   as U+212B ANGSTROM SIGN, nor halfwidth kana voiced marks after width mapping. Typed and
//!   scraped text is NFC already; a table-driven composer would be needed.
//! - Mojibake repair (`fix_encoding`: `cafÃ©` -> `café`), which rests on ftfy's heuristics and
//!   its re-encoding tables.
//! - HTML5-only entity names (see [`super::html`]).
//! - Digits in a terminal escape are ASCII only (Python's `\d` takes any decimal digit).

use super::html;

/// `whitespace_clean(ftfy.fix_text(text)).lower()` for one piece of a prompt (the special tokens
/// are split off before, as transformers does).
pub(super) fn clean(text: &str) -> String {
    let fixed = fix_text(text);
    let words: Vec<&str> = fixed.split_whitespace().collect();
    words.join(" ").to_lowercase()
}

fn fix_text(text: &str) -> String {
    let html_off_from = match text.find('<') {
        Some(lt) => text[..lt].rfind('\n').map_or(0, |nl| nl + 1),
        None => text.len(),
    };
    let mut out = fix_until_stable(&text[..html_off_from], true);
    out.push_str(&fix_until_stable(&text[html_off_from..], false));
    out
}

/// ftfy's `fix_and_explain` loop. No fix spans a line break, so the lines on each side of the
/// HTML switch can be fixed together. Every pass but the last shrinks the text or maps characters
/// into forms no fix maps again, so the bound is never reached; it only makes termination plain.
fn fix_until_stable(text: &str, unescape_html: bool) -> String {
    let mut current = text.to_string();
    for _ in 0..text.len() + 2 {
        let mut next = if unescape_html {
            html::unescape(&current)
        } else {
            current.clone()
        };
        next = translate(&next, |c, out| match c {
            '\u{80}'..='\u{9F}' => {
                out.push(windows_1252_c1(c as u32));
                true
            }
            _ => false,
        });
        next = translate(&next, ligature);
        next = translate(&next, standard_width);
        next = translate(&next, |c, out| match c {
            '\u{2BC}' | '\u{2018}'..='\u{201B}' => {
                out.push('\'');
                true
            }
            '\u{201C}'..='\u{201F}' => {
                out.push('"');
                true
            }
            _ => false,
        });
        next = remove_terminal_escapes(&next);
        next.retain(|c| !is_stripped_control(c));
        if next == current {
            break;
        }
        current = next;
    }
    current
}

/// Maps each character through `f`, which pushes a replacement and says true, or says false to
/// keep the character (Python's `str.translate`).
fn translate(text: &str, f: impl Fn(char, &mut String) -> bool) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if !f(c, &mut out) {
            out.push(c);
        }
    }
    out
}

/// The Windows-1252 character of byte `cp` in 0x80..=0x9F; the five bytes it leaves undefined
/// map to themselves (Python's `html` module and ftfy's "sloppy" codec agree on this).
pub(super) fn windows_1252_c1(cp: u32) -> char {
    const TABLE: [u16; 32] = [
        0x20AC, 0x81, 0x201A, 0x192, 0x201E, 0x2026, 0x2020, 0x2021, 0x2C6, 0x2030, 0x160, 0x2039,
        0x152, 0x8D, 0x17D, 0x8F, 0x90, 0x2018, 0x2019, 0x201C, 0x201D, 0x2022, 0x2013, 0x2014,
        0x2DC, 0x2122, 0x161, 0x203A, 0x153, 0x9D, 0x17E, 0x178,
    ];
    let mapped = cp
        .checked_sub(0x80)
        .and_then(|i| TABLE.get(i as usize))
        .map_or(cp, |&m| u32::from(m));
    char::from_u32(mapped).unwrap_or('\u{FFFD}')
}

/// ftfy's `LIGATURES`: typographic Latin ligatures and the legacy digraph code points; not `æ`
/// or `œ`, which are letters of their own.
fn ligature(c: char, out: &mut String) -> bool {
    let split = match c {
        'Ĳ' => "IJ",
        'ĳ' => "ij",
        'ŉ' => "\u{2BC}n",
        'Ǳ' => "DZ",
        'ǲ' => "Dz",
        'ǳ' => "dz",
        'Ǆ' => "DŽ",
        'ǅ' => "Dž",
        'ǆ' => "dž",
        'Ǉ' => "LJ",
        'ǈ' => "Lj",
        'ǉ' => "lj",
        'Ǌ' => "NJ",
        'ǋ' => "Nj",
        'ǌ' => "nj",
        'ﬀ' => "ff",
        'ﬁ' => "fi",
        'ﬂ' => "fl",
        'ﬃ' => "ffi",
        'ﬄ' => "ffl",
        'ﬅ' => "ſt",
        'ﬆ' => "st",
        _ => return false,
    };
    out.push_str(split);
    true
}

/// ftfy's `WIDTH_MAP`: U+3000 IDEOGRAPHIC SPACE to a space, and every character of
/// U+FF01..U+FFEF to its NFKC form where that differs (fullwidth ASCII, halfwidth CJK
/// punctuation, katakana and hangul, fullwidth currency and arrows).
fn standard_width(c: char, out: &mut String) -> bool {
    // NFKC of U+FF5F..=U+FFEE; 0 where NFKC leaves the character alone.
    #[rustfmt::skip]
    const HALF_AND_FULL: [u16; 144] = [
        0x2985, 0x2986, 0x3002, 0x300C, 0x300D, 0x3001, 0x30FB, 0x30F2, 0x30A1, 0x30A3, 0x30A5, 0x30A7,
        0x30A9, 0x30E3, 0x30E5, 0x30E7, 0x30C3, 0x30FC, 0x30A2, 0x30A4, 0x30A6, 0x30A8, 0x30AA, 0x30AB,
        0x30AD, 0x30AF, 0x30B1, 0x30B3, 0x30B5, 0x30B7, 0x30B9, 0x30BB, 0x30BD, 0x30BF, 0x30C1, 0x30C4,
        0x30C6, 0x30C8, 0x30CA, 0x30CB, 0x30CC, 0x30CD, 0x30CE, 0x30CF, 0x30D2, 0x30D5, 0x30D8, 0x30DB,
        0x30DE, 0x30DF, 0x30E0, 0x30E1, 0x30E2, 0x30E4, 0x30E6, 0x30E8, 0x30E9, 0x30EA, 0x30EB, 0x30EC,
        0x30ED, 0x30EF, 0x30F3, 0x3099, 0x309A, 0x1160, 0x1100, 0x1101, 0x11AA, 0x1102, 0x11AC, 0x11AD,
        0x1103, 0x1104, 0x1105, 0x11B0, 0x11B1, 0x11B2, 0x11B3, 0x11B4, 0x11B5, 0x111A, 0x1106, 0x1107,
        0x1108, 0x1121, 0x1109, 0x110A, 0x110B, 0x110C, 0x110D, 0x110E, 0x110F, 0x1110, 0x1111, 0x1112,
        0x0000, 0x0000, 0x0000, 0x1161, 0x1162, 0x1163, 0x1164, 0x1165, 0x1166, 0x0000, 0x0000, 0x1167,
        0x1168, 0x1169, 0x116A, 0x116B, 0x116C, 0x0000, 0x0000, 0x116D, 0x116E, 0x116F, 0x1170, 0x1171,
        0x1172, 0x0000, 0x0000, 0x1173, 0x1174, 0x1175, 0x0000, 0x0000, 0x0000, 0x00A2, 0x00A3, 0x00AC,
        0x0000, 0x00A6, 0x00A5, 0x20A9, 0x0000, 0x2502, 0x2190, 0x2191, 0x2192, 0x2193, 0x25A0, 0x25CB,
    ];
    let cp = c as u32;
    let mapped = match cp {
        0x3000 => 0x20,
        0xFF01..=0xFF5E => cp - 0xFEE0,
        // FULLWIDTH MACRON: NFKC gives a space and a combining macron.
        0xFFE3 => {
            out.push_str(" \u{304}");
            return true;
        }
        0xFF5F..=0xFFEE => u32::from(HALF_AND_FULL[(cp - 0xFF5F) as usize]),
        _ => 0,
    };
    match char::from_u32(mapped).filter(|_| mapped != 0) {
        Some(m) => {
            out.push(m);
            true
        }
        None => false,
    }
}

/// Removes `ESC [ (digit | ;)* letter`, the colour codes of terminal output.
fn remove_terminal_escapes(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(esc) = rest.find('\u{1B}') {
        out.push_str(&rest[..esc]);
        let after = &rest[esc + 1..];
        let len = after.strip_prefix('[').and_then(|params| {
            let n = params
                .bytes()
                .take_while(|b| b.is_ascii_digit() || *b == b';')
                .count();
            params
                .as_bytes()
                .get(n)
                .filter(|b| b.is_ascii_alphabetic())
                .map(|_| n + 2)
        });
        match len {
            Some(len) => rest = &after[len..],
            None => {
                out.push('\u{1B}');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// ftfy's `remove_control_chars` set.
fn is_stripped_control(c: char) -> bool {
    matches!(
        c as u32,
        0x00..=0x08 | 0x0B | 0x0E..=0x1F | 0x7F | 0x206A..=0x206F | 0xFEFF | 0xFFF9..=0xFFFC
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleanup() {
        assert_eq!(clean("  A\tB\u{3000}C  "), "a b c");
        assert_eq!(clean("it\u{2019}s ﬁne ＡＢＣ"), "it's fine abc");
        assert_eq!(clean("a\u{1B}[31mred\u{1B}[0m\u{7}b\u{1B}x"), "aredbx");
        assert_eq!(clean("&amp;lt;3 \u{85}"), "<3 …");
        assert_eq!(
            clean("one &amp;\ntwo <b> &amp;\nthree &amp;"),
            "one & two <b> &amp; three &amp;"
        );
        assert_eq!(clean("ΟΔΟΣ ΣΑ"), "οδος σα");
    }
}
