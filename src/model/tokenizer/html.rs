//! HTML character references, decoded the way ftfy 6.1's `unescape_html` does it (ftfy runs it
//! inside `fix_text`, which transformers' `CLIPTokenizer` calls on every prompt when ftfy is
//! installed).
//!
//! A reference is `&` + an optional `#` + 1 to 24 ASCII letters or digits + `;` (ftfy's regex
//! `&#?[0-9A-Za-z]{1,24};`); anything else, `&amp` without its semicolon included, stays as it
//! is. A matched reference is replaced by
//! - a named entity: the 252 names of HTML 4 plus `&apos;` (Python's
//!   `html.entities.name2codepoint`), with the characters HTML5 gives them, case-sensitively; and, as ftfy does, a name of a lowercase
//!   entity written in upper case (`&EACUTE;`, `&SZLIG;`) gives the upper case of its character
//!   (`É`, `SS`);
//! - a numeric reference `&#NNN;` / `&#xHH;` (only digits, resp. `x` or `X` and hex digits):
//!   Python's `html.unescape` rules, i.e. 0 -> U+FFFD, 13 -> CR, 0x80..0x9F -> their
//!   Windows-1252 characters, surrogates and values past U+10FFFF -> U+FFFD, the code points HTML
//!   calls invalid (C0/C1 controls other than TAB, LF, FF, CR; U+FDD0..U+FDEF; U+xFFFE/U+xFFFF)
//!   -> nothing. A reference that decodes to `;` is kept, because ftfy keeps any result that
//!   still holds a semicolon.
//!
//! Limit: ftfy knows all 2,125 HTML5 names (`&ast;`, `&lbrace;`, `&NewLine;`...); the ones
//! outside HTML 4 are left undecoded here. Prompts rarely hold entities at all (they come from
//! scraped captions), and those that do use the HTML 4 ones.

/// One pass over `text`. ftfy repeats its fixes until nothing changes, so `&amp;lt;` becomes `<`
/// over two passes; the caller loops.
pub(super) fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let candidate = &rest[amp..];
        match reference_len(candidate) {
            Some(len) => {
                let reference = &candidate[..len];
                match decode(reference) {
                    Some(decoded) => out.push_str(&decoded),
                    None => out.push_str(reference),
                }
                rest = &candidate[len..];
            }
            None => {
                out.push('&');
                rest = &candidate[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The byte length of the reference at the start of `s` (which starts with `&`), if one is there.
fn reference_len(s: &str) -> Option<usize> {
    let bytes = s.as_bytes();
    let start = if bytes.get(1) == Some(&b'#') { 2 } else { 1 };
    let name_len = bytes[start..]
        .iter()
        .take_while(|b| b.is_ascii_alphanumeric())
        .count();
    let end = start + name_len;
    ((1..=24).contains(&name_len) && bytes.get(end) == Some(&b';')).then_some(end + 1)
}

/// The replacement for a whole reference `&...;`, or None to keep it.
fn decode(reference: &str) -> Option<String> {
    let body = &reference[1..reference.len() - 1];
    if let Some(number) = body.strip_prefix('#') {
        return numeric(number);
    }
    if let Some(c) = named(body) {
        return Some(c.to_string());
    }
    // ftfy also accepts the upper-case spelling of an all-lowercase name.
    let lower = body.to_ascii_lowercase();
    if body.bytes().any(|b| b.is_ascii_uppercase()) && body.to_ascii_uppercase() == body {
        if let Some(c) = named(&lower) {
            return Some(c.to_uppercase().collect());
        }
    }
    None
}

fn named(name: &str) -> Option<char> {
    NAMED
        .binary_search_by(|(n, _)| n.as_bytes().cmp(name.as_bytes()))
        .ok()
        .and_then(|i| char::from_u32(NAMED[i].1))
}

/// `&#NNN;` or `&#xHH;` without the `&#` and `;`.
fn numeric(number: &str) -> Option<String> {
    let (digits, radix) = match number.strip_prefix(['x', 'X']) {
        Some(hex) => (hex, 16),
        None => (number, 10),
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    // Up to 23 digits: saturate rather than overflow; anything past U+10FFFF is one case.
    let value = digits.chars().fold(0u64, |acc, c| {
        acc.saturating_mul(radix as u64)
            .saturating_add(c.to_digit(radix).unwrap_or(0) as u64)
    });
    let decoded = match value {
        0 => "\u{FFFD}".to_string(),
        0x0D => "\r".to_string(),
        0x80..=0x9F => super::text::windows_1252_c1(value as u32).to_string(),
        0xD800..=0xDFFF => "\u{FFFD}".to_string(),
        v if v > 0x10FFFF => "\u{FFFD}".to_string(),
        v if is_invalid_codepoint(v as u32) => String::new(),
        v => char::from_u32(v as u32).map_or_else(String::new, |c| c.to_string()),
    };
    (decoded != ";").then_some(decoded)
}

/// Python's `html._invalid_codepoints` (less 0x80..0x9F, handled before).
fn is_invalid_codepoint(cp: u32) -> bool {
    matches!(cp, 0x01..=0x08 | 0x0B | 0x0E..=0x1F | 0x7F | 0xFDD0..=0xFDEF) || cp & 0xFFFE == 0xFFFE
}

/// The HTML 4 entities and `apos` with their HTML5 characters (HTML5 moved `lang` and `rang`
/// from U+2329/U+232A to U+27E8/U+27E9), sorted by name (byte order) for the binary search.
#[rustfmt::skip]
const NAMED: [(&str, u32); 253] = [
    ("AElig", 0xC6), ("Aacute", 0xC1), ("Acirc", 0xC2), ("Agrave", 0xC0), ("Alpha", 0x391),
    ("Aring", 0xC5), ("Atilde", 0xC3), ("Auml", 0xC4), ("Beta", 0x392), ("Ccedil", 0xC7),
    ("Chi", 0x3A7), ("Dagger", 0x2021), ("Delta", 0x394), ("ETH", 0xD0), ("Eacute", 0xC9),
    ("Ecirc", 0xCA), ("Egrave", 0xC8), ("Epsilon", 0x395), ("Eta", 0x397), ("Euml", 0xCB),
    ("Gamma", 0x393), ("Iacute", 0xCD), ("Icirc", 0xCE), ("Igrave", 0xCC), ("Iota", 0x399),
    ("Iuml", 0xCF), ("Kappa", 0x39A), ("Lambda", 0x39B), ("Mu", 0x39C), ("Ntilde", 0xD1),
    ("Nu", 0x39D), ("OElig", 0x152), ("Oacute", 0xD3), ("Ocirc", 0xD4), ("Ograve", 0xD2),
    ("Omega", 0x3A9), ("Omicron", 0x39F), ("Oslash", 0xD8), ("Otilde", 0xD5), ("Ouml", 0xD6),
    ("Phi", 0x3A6), ("Pi", 0x3A0), ("Prime", 0x2033), ("Psi", 0x3A8), ("Rho", 0x3A1),
    ("Scaron", 0x160), ("Sigma", 0x3A3), ("THORN", 0xDE), ("Tau", 0x3A4), ("Theta", 0x398),
    ("Uacute", 0xDA), ("Ucirc", 0xDB), ("Ugrave", 0xD9), ("Upsilon", 0x3A5), ("Uuml", 0xDC),
    ("Xi", 0x39E), ("Yacute", 0xDD), ("Yuml", 0x178), ("Zeta", 0x396), ("aacute", 0xE1),
    ("acirc", 0xE2), ("acute", 0xB4), ("aelig", 0xE6), ("agrave", 0xE0), ("alefsym", 0x2135),
    ("alpha", 0x3B1), ("amp", 0x26), ("and", 0x2227), ("ang", 0x2220), ("apos", 0x27),
    ("aring", 0xE5), ("asymp", 0x2248), ("atilde", 0xE3), ("auml", 0xE4), ("bdquo", 0x201E),
    ("beta", 0x3B2), ("brvbar", 0xA6), ("bull", 0x2022), ("cap", 0x2229), ("ccedil", 0xE7),
    ("cedil", 0xB8), ("cent", 0xA2), ("chi", 0x3C7), ("circ", 0x2C6), ("clubs", 0x2663),
    ("cong", 0x2245), ("copy", 0xA9), ("crarr", 0x21B5), ("cup", 0x222A), ("curren", 0xA4),
    ("dArr", 0x21D3), ("dagger", 0x2020), ("darr", 0x2193), ("deg", 0xB0), ("delta", 0x3B4),
    ("diams", 0x2666), ("divide", 0xF7), ("eacute", 0xE9), ("ecirc", 0xEA), ("egrave", 0xE8),
    ("empty", 0x2205), ("emsp", 0x2003), ("ensp", 0x2002), ("epsilon", 0x3B5), ("equiv", 0x2261),
    ("eta", 0x3B7), ("eth", 0xF0), ("euml", 0xEB), ("euro", 0x20AC), ("exist", 0x2203),
    ("fnof", 0x192), ("forall", 0x2200), ("frac12", 0xBD), ("frac14", 0xBC), ("frac34", 0xBE),
    ("frasl", 0x2044), ("gamma", 0x3B3), ("ge", 0x2265), ("gt", 0x3E), ("hArr", 0x21D4),
    ("harr", 0x2194), ("hearts", 0x2665), ("hellip", 0x2026), ("iacute", 0xED), ("icirc", 0xEE),
    ("iexcl", 0xA1), ("igrave", 0xEC), ("image", 0x2111), ("infin", 0x221E), ("int", 0x222B),
    ("iota", 0x3B9), ("iquest", 0xBF), ("isin", 0x2208), ("iuml", 0xEF), ("kappa", 0x3BA),
    ("lArr", 0x21D0), ("lambda", 0x3BB), ("lang", 0x27E8), ("laquo", 0xAB), ("larr", 0x2190),
    ("lceil", 0x2308), ("ldquo", 0x201C), ("le", 0x2264), ("lfloor", 0x230A), ("lowast", 0x2217),
    ("loz", 0x25CA), ("lrm", 0x200E), ("lsaquo", 0x2039), ("lsquo", 0x2018), ("lt", 0x3C),
    ("macr", 0xAF), ("mdash", 0x2014), ("micro", 0xB5), ("middot", 0xB7), ("minus", 0x2212),
    ("mu", 0x3BC), ("nabla", 0x2207), ("nbsp", 0xA0), ("ndash", 0x2013), ("ne", 0x2260),
    ("ni", 0x220B), ("not", 0xAC), ("notin", 0x2209), ("nsub", 0x2284), ("ntilde", 0xF1),
    ("nu", 0x3BD), ("oacute", 0xF3), ("ocirc", 0xF4), ("oelig", 0x153), ("ograve", 0xF2),
    ("oline", 0x203E), ("omega", 0x3C9), ("omicron", 0x3BF), ("oplus", 0x2295), ("or", 0x2228),
    ("ordf", 0xAA), ("ordm", 0xBA), ("oslash", 0xF8), ("otilde", 0xF5), ("otimes", 0x2297),
    ("ouml", 0xF6), ("para", 0xB6), ("part", 0x2202), ("permil", 0x2030), ("perp", 0x22A5),
    ("phi", 0x3C6), ("pi", 0x3C0), ("piv", 0x3D6), ("plusmn", 0xB1), ("pound", 0xA3),
    ("prime", 0x2032), ("prod", 0x220F), ("prop", 0x221D), ("psi", 0x3C8), ("quot", 0x22),
    ("rArr", 0x21D2), ("radic", 0x221A), ("rang", 0x27E9), ("raquo", 0xBB), ("rarr", 0x2192),
    ("rceil", 0x2309), ("rdquo", 0x201D), ("real", 0x211C), ("reg", 0xAE), ("rfloor", 0x230B),
    ("rho", 0x3C1), ("rlm", 0x200F), ("rsaquo", 0x203A), ("rsquo", 0x2019), ("sbquo", 0x201A),
    ("scaron", 0x161), ("sdot", 0x22C5), ("sect", 0xA7), ("shy", 0xAD), ("sigma", 0x3C3),
    ("sigmaf", 0x3C2), ("sim", 0x223C), ("spades", 0x2660), ("sub", 0x2282), ("sube", 0x2286),
    ("sum", 0x2211), ("sup", 0x2283), ("sup1", 0xB9), ("sup2", 0xB2), ("sup3", 0xB3),
    ("supe", 0x2287), ("szlig", 0xDF), ("tau", 0x3C4), ("there4", 0x2234), ("theta", 0x3B8),
    ("thetasym", 0x3D1), ("thinsp", 0x2009), ("thorn", 0xFE), ("tilde", 0x2DC), ("times", 0xD7),
    ("trade", 0x2122), ("uArr", 0x21D1), ("uacute", 0xFA), ("uarr", 0x2191), ("ucirc", 0xFB),
    ("ugrave", 0xF9), ("uml", 0xA8), ("upsih", 0x3D2), ("upsilon", 0x3C5), ("uuml", 0xFC),
    ("weierp", 0x2118), ("xi", 0x3BE), ("yacute", 0xFD), ("yen", 0xA5), ("yuml", 0xFF),
    ("zeta", 0x3B6), ("zwj", 0x200D), ("zwnj", 0x200C),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_sorted_for_the_binary_search() {
        assert!(NAMED
            .windows(2)
            .all(|w| w[0].0.as_bytes() < w[1].0.as_bytes()));
    }

    #[test]
    fn references() {
        assert_eq!(
            unescape("&amp;lt; &#x41;&#66; &EACUTE; &SZLIG;"),
            "&lt; AB É SS"
        );
        assert_eq!(
            unescape("&amp &#59; &#12a; &#; &&amp;"),
            "&amp &#59; &#12a; &#; &&"
        );
        assert_eq!(
            unescape("&#1; &#0; &#x110000; &#128;"),
            " \u{FFFD} \u{FFFD} €"
        );
    }
}
