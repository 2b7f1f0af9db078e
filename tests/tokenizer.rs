//! The CLIP tokenizer against transformers' `CLIPTokenizer` (tests/fixtures/tokenizer_ids.json,
//! written by tests/fixtures/make_tokenizer_fixture.py), a few ids checked by hand, the
//! BOS/EOS/padding/truncation contract, corrupt vocabularies, and random text.

use lorafuse::model::tokenizer::{Encoded, Tokenizer, BOS, EOS, MAX_LENGTH, N_MERGES, VOCAB_SIZE};
use lorafuse::rng::Rng;
use lorafuse::Error;

const FIXTURE: &str = include_str!("fixtures/tokenizer_ids.json");

fn tokenizer() -> Tokenizer {
    Tokenizer::new().expect("the compiled-in vocabulary parses")
}

/// The contract every encoding keeps, whatever the text.
fn check_layout(e: &Encoded, context: &str) {
    let kept = e.n_tokens.min(MAX_LENGTH - 2);
    assert_eq!(e.ids.len(), MAX_LENGTH, "{context}");
    assert_eq!(e.ids[0], BOS, "{context}");
    assert!(
        e.ids.iter().all(|&id| (id as usize) < VOCAB_SIZE),
        "{context}"
    );
    assert_eq!(e.truncated, e.n_tokens > MAX_LENGTH - 2, "{context}");
    assert_eq!(e.unpadded().len(), kept + 2, "{context}");
    assert_eq!(e.tokens().len(), kept, "{context}");
    assert_eq!(e.tokens(), &e.ids[1..kept + 1], "{context}");
    assert!(
        e.ids[kept + 1..].iter().all(|&id| id == EOS),
        "{context}: EOS, then EOS padding"
    );
    assert!(e.eos_position <= kept + 1, "{context}");
    assert_eq!(e.ids[e.eos_position], EOS, "{context}");
    assert!(
        !e.ids[..e.eos_position].contains(&EOS),
        "{context}: first EOS"
    );
}

#[test]
fn a_photo_of_a_cat() {
    let tok = tokenizer();
    let e = tok.encode("a photo of a cat");
    // Checked with transformers 4.44 CLIPTokenizer (the fixture script asserts the same ids).
    assert_eq!(e.unpadded(), [BOS, 320, 1125, 539, 320, 2368, EOS]);
    assert_eq!(e.tokens(), [320, 1125, 539, 320, 2368]);
    assert_eq!((e.n_tokens, e.truncated, e.eos_position), (5, false, 6));
    assert_eq!(tok.decode(e.tokens()), "a photo of a cat");
    assert_eq!(
        tok.decode(&[BOS, 2368, EOS]),
        "<|startoftext|>cat <|endoftext|>"
    );
    check_layout(&e, "a photo of a cat");
}

/// SD2.x's tokenizer pads with `!` (id 0) after the EOS; long captions are cut into windows as
/// sd-scripts' `get_input_ids` does for v2 (a window that ends in a token gets EOS, one that
/// starts with padding starts with EOS).
#[test]
fn sd2_padding_and_long_windows() {
    let tok = tokenizer().padding_with(0);
    let e = tok.encode("a photo of a cat");
    assert_eq!(e.ids[..7], [BOS, 320, 1125, 539, 320, 2368, EOS]);
    assert!(e.ids[7..].iter().all(|&id| id == 0), "{:?}", e.ids);
    assert_eq!(e.eos_position, 6);
    // Two windows of a short caption: the second is BOS, EOS, padding.
    let e = tok.encode_long("a photo of a cat", 150);
    assert_eq!(e.ids.len(), 2 * MAX_LENGTH);
    assert_eq!(e.ids[..MAX_LENGTH], tok.encode("a photo of a cat").ids[..]);
    assert_eq!(e.ids[MAX_LENGTH..MAX_LENGTH + 2], [BOS, EOS]);
    assert!(e.ids[MAX_LENGTH + 2..].iter().all(|&id| id == 0));
    // 80 tokens in two windows: the first full (its last id EOS), the second 5 tokens, EOS, 0s.
    let text = vec!["cat"; 80].join(" ");
    let e = tok.encode_long(&text, 150);
    let (a, b) = e.ids.split_at(MAX_LENGTH);
    assert_eq!((a[0], a[75], a[76]), (BOS, 2368, EOS));
    assert_eq!(b[..7], [BOS, 2368, 2368, 2368, 2368, 2368, EOS]);
    assert!(b[7..].iter().all(|&id| id == 0));
    // SD1.x's padding is unchanged: EOS.
    assert!(tokenizer().encode_long(&text, 150).ids[MAX_LENGTH + 7..]
        .iter()
        .all(|&id| id == EOS));
}

#[test]
fn special_token_ids_and_vocabulary_size() {
    let tok = tokenizer();
    assert_eq!(tok.decode(&[BOS]), "<|startoftext|>");
    assert_eq!(tok.decode(&[EOS]), "<|endoftext|>");
    // Ids 0..256 are the bytes, 256..512 the same at the end of a word, then one per merge.
    assert_eq!(tok.decode(&[0]), "!");
    assert_eq!(tok.decode(&[256 + 64]), "a");
    assert_eq!(N_MERGES, 48894);
    assert_eq!(tok.decode(&[511 + N_MERGES as u32]), "jekyll");
    assert_eq!(tok.decode(&[VOCAB_SIZE as u32]), "");
}

#[test]
fn matches_transformers_on_every_fixture_prompt() {
    let tok = tokenizer();
    let fixture = Json::parse(FIXTURE);
    assert_eq!(fixture.get("max_length").num() as usize, MAX_LENGTH);
    let cases = fixture.get("cases").arr();
    assert!(cases.len() >= 40);
    let mut failures = Vec::new();
    for case in cases {
        let (name, text) = (case.get("name").str(), case.get("text").str());
        let want: Vec<u32> = case
            .get("ids")
            .arr()
            .iter()
            .map(|v| v.num() as u32)
            .collect();
        let got = tok.encode(text);
        check_layout(&got, name);
        if got.ids != want || got.n_tokens != case.get("n_tokens").num() as usize {
            failures.push(format!(
                "{name} ({text:?}): n_tokens {} want {}\n  got  {:?}\n  want {:?}",
                got.n_tokens,
                case.get("n_tokens").num(),
                got.unpadded(),
                &want[..got
                    .unpadded()
                    .len()
                    .max(want.iter().position(|&i| i == EOS).unwrap() + 1)]
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn documented_differences_still_differ() {
    // Each case is a gap the tokenizer's module header documents. If one starts to match,
    // the gap was closed: move the case to CASES in the fixture script.
    let tok = tokenizer();
    let fixture = Json::parse(FIXTURE);
    for case in fixture.get("known_differences").arr() {
        let (name, text) = (case.get("name").str(), case.get("text").str());
        let want: Vec<u32> = case
            .get("ids")
            .arr()
            .iter()
            .map(|v| v.num() as u32)
            .collect();
        let got = tok.encode(text);
        check_layout(&got, name);
        assert_ne!(got.ids, want, "{name} ({text:?}) now matches transformers");
    }
}

#[test]
fn ftfy_tables_match_the_reference() {
    // Each table entry the fixture dumps from ftfy / Python's html module: the source text must
    // tokenize as its replacement does.
    let tok = tokenizer();
    let fixture = Json::parse(FIXTURE);
    let mut checked = 0;
    for table in ["ftfy_width_map", "ftfy_ligatures"] {
        for (code, replacement) in fixture.get(table).obj() {
            let c = char::from_u32(code.parse().unwrap()).unwrap();
            let replacement = replacement.str();
            assert_eq!(
                tok.tokenize(&c.to_string()),
                tok.tokenize(replacement),
                "{table}: U+{:04X} -> {replacement:?}",
                c as u32
            );
            checked += 1;
        }
    }
    for (reference, replacement) in fixture.get("html_entities").obj() {
        let replacement = replacement.str();
        assert_eq!(
            tok.tokenize(reference),
            tok.tokenize(replacement),
            "{reference} -> {replacement:?}"
        );
        checked += 1;
    }
    assert!(checked > 600, "{checked}");
}

#[test]
fn truncation_at_the_boundary() {
    let tok = tokenizer();
    for n in [74, 75, 76, 200] {
        let text = vec!["a"; n].join(" ");
        let e = tok.encode(&text);
        check_layout(&e, &format!("{n} tokens"));
        assert_eq!(e.n_tokens, n);
        assert_eq!(e.truncated, n > 75, "{n}");
        assert_eq!(
            e.ids[MAX_LENGTH - 1],
            EOS,
            "{n}: the last id is EOS, real or padding"
        );
        assert_eq!(e.eos_position, n.min(75) + 1);
        assert!(e.tokens().iter().all(|&id| id == 320));
    }
    // Truncation keeps the first 75 tokens and the EOS after them.
    let e = tok.encode(&format!("{} cat dog", vec!["a"; 74].join(" ")));
    assert_eq!((e.n_tokens, e.truncated), (76, true));
    assert_eq!(&e.ids[74..], [320, 2368, EOS]);
}

#[test]
fn empty_and_blank_prompts() {
    let tok = tokenizer();
    for text in ["", " ", "\t\n\r", "\u{3000}\u{a0}", "\u{0}\u{7}\u{feff}"] {
        let e = tok.encode(text);
        check_layout(&e, text);
        assert_eq!(e.unpadded(), [BOS, EOS], "{text:?}");
        assert_eq!(e.eos_position, 1);
        assert!(!e.truncated);
    }
}

#[test]
fn special_tokens_in_the_prompt() {
    let tok = tokenizer();
    // transformers takes an exact `<|endoftext|>` in the text as the special token, and the
    // pooled output then reads there.
    let e = tok.encode("a cat <|endoftext|> a dog");
    assert_eq!(e.unpadded(), [BOS, 320, 2368, EOS, 320, 1929, EOS]);
    assert_eq!(e.eos_position, 3);
    check_layout(&e, "inline EOS");
}

#[test]
fn corrupt_vocabularies_are_errors() {
    let header = "\"bpe_simple_vocab_16e6.txt#version: 0.2\n";
    let short = format!("{header}i n\nt h\n");
    let bad_line = format!("{header}i n\nt h e\n");
    let unknown = format!("{header}i n\nxyz w\n");
    let twice = format!("{header}i n\ni n\n");
    for (merges, line, says) in [
        (short.as_str(), 4, "ends after 2 merges"),
        (bad_line.as_str(), 3, "not two symbols"),
        (unknown.as_str(), 3, "\"xyz\""),
        (twice.as_str(), 3, "exists already"),
        ("", 1, "ends after 0 merges"),
    ] {
        match Tokenizer::from_merges("test.txt", merges) {
            Err(Error::Vocabulary {
                file,
                line: l,
                problem,
            }) => {
                assert_eq!((file.as_str(), l), ("test.txt", line), "{problem}");
                assert!(problem.contains(says), "{problem}");
            }
            other => panic!("{merges:?}: {other:?}"),
        }
    }
}

#[test]
fn random_text_never_panics_and_keeps_the_layout() {
    let tok = tokenizer();
    let mut rng = Rng::new(20240521);
    // Pieces that exercise each branch: entities, specials, escapes, contractions, marks, CJK,
    // width forms, controls, surrogate-adjacent and astral code points.
    let pieces = [
        "&",
        "&amp;",
        "&#",
        "&#x",
        ";",
        "<",
        "<|",
        "|>",
        "<|endoftext|>",
        "<|startoftext|>",
        "'",
        "'s",
        "'ll",
        "ſ",
        "\u{1b}[",
        "m",
        "\n",
        "\r",
        " ",
        "\t",
        "\u{301}",
        "猫",
        "ｱ",
        "ﾞ",
        "ﬃ",
        "\u{85}",
        "\u{200d}",
        "🐱",
        "\u{10ffff}",
        "\u{d7ff}",
        "\u{e000}",
        "Σ",
        "İ",
        "9",
        "x",
    ];
    for round in 0..3000 {
        let len = rng.below(if round % 10 == 0 { 400 } else { 40 }) as usize;
        let mut text = String::new();
        for _ in 0..len {
            match rng.below(3) {
                0 => text.push_str(pieces[rng.below(pieces.len() as u64) as usize]),
                1 => text.push(char::from(b' ' + rng.below(95) as u8)),
                _ => {
                    let plane = if rng.below(4) == 0 { 0x110000 } else { 0x10000 };
                    if let Some(c) = char::from_u32(rng.below(plane) as u32) {
                        text.push(c);
                    }
                }
            }
        }
        let e = tok.encode(&text);
        check_layout(&e, &format!("{text:?}"));
        assert_eq!(e, tok.encode(&text), "deterministic");
        assert_eq!(tok.tokenize(&text).len(), e.n_tokens);
        let _ = tok.decode(&e.ids);
    }
}

/// Just enough JSON for the fixture: what Python's `json.dump` writes.
#[derive(Debug)]
enum Json {
    Null,
    Bool(#[allow(dead_code)] bool),
    Num(f64),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

impl Json {
    fn parse(text: &str) -> Json {
        let chars: Vec<char> = text.chars().collect();
        let mut at = 0;
        let value = Self::value(&chars, &mut at);
        Self::skip_space(&chars, &mut at);
        assert_eq!(at, chars.len(), "trailing text in the fixture");
        value
    }

    fn get(&self, key: &str) -> &Json {
        match self {
            Json::Obj(entries) => {
                &entries
                    .iter()
                    .find(|(k, _)| k == key)
                    .unwrap_or_else(|| panic!("no {key}"))
                    .1
            }
            other => panic!("{other:?} is not an object"),
        }
    }
    fn obj(&self) -> &[(String, Json)] {
        match self {
            Json::Obj(entries) => entries,
            other => panic!("{other:?} is not an object"),
        }
    }
    fn arr(&self) -> &[Json] {
        match self {
            Json::Arr(items) => items,
            other => panic!("{other:?} is not an array"),
        }
    }
    fn str(&self) -> &str {
        match self {
            Json::Str(s) => s,
            other => panic!("{other:?} is not a string"),
        }
    }
    fn num(&self) -> f64 {
        match self {
            Json::Num(n) => *n,
            other => panic!("{other:?} is not a number"),
        }
    }

    fn skip_space(c: &[char], at: &mut usize) {
        while *at < c.len() && c[*at].is_ascii_whitespace() {
            *at += 1;
        }
    }

    fn value(c: &[char], at: &mut usize) -> Json {
        Self::skip_space(c, at);
        let literal = |at: &mut usize, word: &str, v: Json| {
            assert!(
                c[*at..].iter().take(word.len()).copied().eq(word.chars()),
                "bad literal"
            );
            *at += word.len();
            v
        };
        match c[*at] {
            '{' => {
                *at += 1;
                let mut entries = Vec::new();
                loop {
                    Self::skip_space(c, at);
                    if c[*at] == '}' {
                        *at += 1;
                        return Json::Obj(entries);
                    }
                    if c[*at] == ',' {
                        *at += 1;
                        Self::skip_space(c, at);
                    }
                    let Json::Str(key) = Self::value(c, at) else {
                        panic!("object key")
                    };
                    Self::skip_space(c, at);
                    assert_eq!(c[*at], ':');
                    *at += 1;
                    entries.push((key, Self::value(c, at)));
                }
            }
            '[' => {
                *at += 1;
                let mut items = Vec::new();
                loop {
                    Self::skip_space(c, at);
                    match c[*at] {
                        ']' => {
                            *at += 1;
                            return Json::Arr(items);
                        }
                        ',' => *at += 1,
                        _ => items.push(Self::value(c, at)),
                    }
                }
            }
            '"' => Json::Str(Self::string(c, at)),
            'n' => literal(at, "null", Json::Null),
            't' => literal(at, "true", Json::Bool(true)),
            'f' => literal(at, "false", Json::Bool(false)),
            _ => {
                let start = *at;
                while *at < c.len() && matches!(c[*at], '-' | '+' | '.' | 'e' | 'E' | '0'..='9') {
                    *at += 1;
                }
                Json::Num(
                    c[start..*at]
                        .iter()
                        .collect::<String>()
                        .parse()
                        .expect("number"),
                )
            }
        }
    }

    fn string(c: &[char], at: &mut usize) -> String {
        *at += 1;
        let mut s = String::new();
        let hex4 = |at: &mut usize| {
            let h: String = c[*at..*at + 4].iter().collect();
            *at += 4;
            u32::from_str_radix(&h, 16).expect("\\u escape")
        };
        loop {
            let ch = c[*at];
            *at += 1;
            match ch {
                '"' => return s,
                '\\' => {
                    let e = c[*at];
                    *at += 1;
                    match e {
                        'n' => s.push('\n'),
                        't' => s.push('\t'),
                        'r' => s.push('\r'),
                        'b' => s.push('\u{8}'),
                        'f' => s.push('\u{c}'),
                        'u' => {
                            let mut cp = hex4(at);
                            if (0xD800..0xDC00).contains(&cp) && c[*at] == '\\' {
                                *at += 2;
                                cp = 0x10000 + ((cp - 0xD800) << 10) + (hex4(at) - 0xDC00);
                            }
                            s.push(char::from_u32(cp).expect("valid code point"));
                        }
                        other => s.push(other),
                    }
                }
                other => s.push(other),
            }
        }
    }
}

/// sd-scripts' long captions for SD1.x: the first max_token_length tokens, 75 per window, each
/// window BOS + its tokens (EOS padding after the last token) + EOS, 77 ids per window.
#[test]
fn long_captions_are_split_into_windows_of_75_as_sd_scripts_does() {
    let t = tokenizer();
    let text: String = (0..100).map(|i| format!("tag{i}, ")).collect();
    let tokens = t.tokenize(&text);
    assert!(tokens.len() > 225, "{}", tokens.len());
    let window = |kept: &[u32]| {
        let mut row = vec![BOS];
        row.extend_from_slice(kept);
        row.resize(MAX_LENGTH - 1, EOS);
        row.push(EOS);
        row
    };
    for (max, rows) in [(75, 1), (150, 2), (225, 3)] {
        let e = t.encode_long(&text, max);
        assert_eq!(e.ids.len(), rows * MAX_LENGTH);
        let want: Vec<u32> = (0..rows)
            .flat_map(|r| window(&tokens[75 * r..75 * (r + 1)]))
            .collect();
        assert_eq!(e.ids, want, "{max}");
        assert!(e.truncated, "{max}");
        assert_eq!(e.n_tokens, tokens.len());
    }
    assert_eq!(t.encode_long(&text, 75), t.encode(&text));
    // A caption of 80 tokens: all kept with 150 or 225; the third window is BOS + EOS only.
    let short = &tokens[..80];
    let text80 = t.decode(short);
    assert_eq!(t.tokenize(&text80), short);
    let e = t.encode_long(&text80, 225);
    assert!(!e.truncated);
    let mut want = window(&short[..75]);
    want.extend(window(&short[75..]));
    want.extend(window(&[]));
    assert_eq!(e.ids, want);
    assert_eq!(e.eos_position, MAX_LENGTH - 1);
    assert!(t.encode_long(&text80, 75).truncated);
}
