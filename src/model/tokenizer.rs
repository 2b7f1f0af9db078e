//! The CLIP BPE tokenizer of SD1.x's text encoder (OpenAI CLIP ViT-L/14), matching
//! transformers' slow `CLIPTokenizer` as diffusers and kohya-ss/sd-scripts run it: with ftfy
//! installed, `padding="max_length"`, `max_length=77`, `truncation=True`.
//!
//! A prompt becomes ids in five steps:
//! 1. Exact occurrences of `<|startoftext|>` and `<|endoftext|>` are split off as their ids
//!    (transformers' added-token trie), the pieces between go on alone.
//! 2. Each piece is cleaned ([`text`]): ftfy's fixes (HTML references, C1 controls, ligatures,
//!    character width, curly quotes, control characters), whitespace runs to one space, trim,
//!    lowercase.
//! 3. CLIP's pattern splits it into words,
//!    `<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+`
//!    (case-insensitive), first alternative that matches at each position; whitespace between
//!    matches is dropped. Here `\s` is `char::is_whitespace` (identical on every code point),
//!    `\p{N}` is `char::is_numeric` (identical on every code point assigned in Unicode 14, the
//!    reference's table), and `\p{L}` is `is_alphabetic() && !is_numeric()`. The last differs
//!    from `\p{L}` by Unicode's Other_Alphabetic: 1,442 code points, nearly all combining vowel
//!    signs of Indic, Arabic, Hebrew and South-East Asian scripts, plus the circled letters
//!    `Ⓐ..ⓩ`; the reference makes those separate symbol words, this makes them part of the
//!    letter run. English and other Latin, Greek, Cyrillic and CJK text is not affected.
//!    Case-insensitivity matters only for `ſ` (long s), which matches `s` in `'s`.
//! 4. Each word's UTF-8 bytes become symbols through GPT-2's byte-to-unicode table, the last one
//!    marked end-of-word (`</w>`), and BPE merges the adjacent pair of lowest rank, all its
//!    non-overlapping occurrences left to right, until no pair has a rank.
//! 5. `[BOS] tokens [EOS]`, the tokens cut to the first 75 so that the EOS is always there,
//!    padded with the EOS id to 77 (SD1.5's tokenizer sets `pad_token` to `<|endoftext|>`).
//!
//! The vocabulary is CLIP's `bpe_simple_vocab_16e6.txt` (header line and the 48,894 merges CLIP
//! uses, see assets/clip/README.md), compiled in. Ids are CLIP's: the 256 byte symbols, the same
//! with `</w>`, one per merge in rank order (so merge `r` makes id `512 + r`), then
//! `<|startoftext|>` 49406 and `<|endoftext|>` 49407.
//!
//! Without ftfy, transformers falls back to BERT's `BasicTokenizer(strip_accents=False,
//! do_split_on_punc=False)`: it drops U+0000, U+FFFD and every character of category C*
//! (controls, format characters such as the zero-width joiner inside emoji sequences, private
//! use, unassigned) except TAB/LF/CR, puts spaces around CJK ideographs (so `猫の絵` becomes the
//! words `猫`, `の`, `絵`), applies NFC, lowercases, keeps accents, does not split punctuation,
//! and neither unescapes HTML nor straightens quotes nor folds width. SD1.x was trained through
//! the ftfy path (OpenAI's CLIP tokenizer requires ftfy, and kohya-ss/sd-scripts and diffusers'
//! training examples install it), so that is the path matched here. tests/tokenizer.rs checks
//! every id of ~60 prompts against the reference (tests/fixtures/make_tokenizer_fixture.py).

mod html;
mod text;

use std::collections::HashMap;

use crate::error::{Error, Result};

/// Tokens in CLIP's vocabulary.
pub const VOCAB_SIZE: usize = 49408;
/// `<|startoftext|>`.
pub const BOS: u32 = 49406;
/// `<|endoftext|>`, also the padding id.
pub const EOS: u32 = 49407;
/// The text encoder's sequence length: BOS, at most 75 tokens, EOS, padding.
pub const MAX_LENGTH: usize = 77;
/// Caption tokens per window: [`MAX_LENGTH`] without BOS and EOS.
pub const WINDOW: usize = MAX_LENGTH - 2;
/// The merges CLIP uses: 49408 tokens - 512 byte symbols - 2 special tokens.
pub const N_MERGES: usize = VOCAB_SIZE - 512 - 2;

const MERGES_FILE: &str = "assets/clip/bpe_simple_vocab_16e6.merges.txt";
const MERGES: &str = include_str!("../../assets/clip/bpe_simple_vocab_16e6.merges.txt");
const SPECIALS: [(&str, u32); 2] = [("<|startoftext|>", BOS), ("<|endoftext|>", EOS)];
const END_OF_WORD: &str = "</w>";

/// A prompt as the text encoder takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// Rows of [`MAX_LENGTH`] ids: BOS, 75 tokens (EOS padding), EOS; one row from
    /// [`Tokenizer::encode`], `max_tokens / 75` from [`Tokenizer::encode_long`].
    pub ids: Vec<u32>,
    /// The prompt's tokens before truncation (no BOS/EOS).
    pub n_tokens: usize,
    /// More tokens than the rows hold: the rest was cut. The caller decides whether to warn.
    pub truncated: bool,
    /// Index of the first EOS id in the first row, where CLIP's pooled output is read (transformers takes the
    /// argmax of the ids, i.e. the first 49407). An `<|endoftext|>` written in the prompt comes
    /// first and is the one taken, as in transformers.
    pub eos_position: usize,
}

impl Encoded {
    /// BOS, the kept tokens, EOS: the first row's ids without padding.
    pub fn unpadded(&self) -> &[u32] {
        &self.ids[..self.n_tokens.min(MAX_LENGTH - 2) + 2]
    }

    /// The kept tokens alone.
    pub fn tokens(&self) -> &[u32] {
        let unpadded = self.unpadded();
        &unpadded[1..unpadded.len() - 1]
    }
}

/// sd-scripts' rows (`get_input_ids`) of one whole caption `full`, BOS, tokens, EOS and
/// padding, `2 + rows·(window-2)` ids: each row is `full`'s BOS, its `window-2` ids and
/// `full`'s last id; a row whose id before that last one is neither `eos` nor `pad` ends in
/// `eos`, and a row starting with `pad` starts with `eos` instead. With `pad == eos` (SD1.x)
/// the rows are BOS, their ids, EOS. [`Tokenizer::encode_long`] and SDXL's second encoder
/// (its ids made from the first's) cut captions with it.
pub fn caption_windows(full: &[u32], window: usize, eos: u32, pad: u32) -> Vec<u32> {
    let inner = window.saturating_sub(2).max(1);
    let rows = full.len().saturating_sub(2) / inner;
    let (Some(&first), Some(&last)) = (full.first(), full.last()) else {
        return Vec::new();
    };
    let mut ids = Vec::with_capacity(rows * window);
    for row in 0..rows {
        let start = ids.len();
        ids.push(first);
        ids.extend_from_slice(&full[1 + row * inner..1 + (row + 1) * inner]);
        ids.push(last);
        let before_last = ids[start + window - 2];
        if before_last != eos && before_last != pad {
            ids[start + window - 1] = eos;
        }
        if ids[start + 1] == pad {
            ids[start + 1] = eos;
        }
    }
    ids
}

/// CLIP's tokenizer over the compiled-in vocabulary. Immutable; share it freely across threads.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    /// The id of each byte's symbol; its end-of-word form is 256 higher.
    byte_ids: [u32; 256],
    /// Merge rank of each symbol pair; the merged symbol's id is `512 + rank`.
    ranks: HashMap<(u32, u32), u32>,
    /// Each id's text in byte-symbol form (`ph`, `oto</w>`), for [`Tokenizer::decode`].
    vocab: Vec<String>,
    /// The id after the EOS up to [`MAX_LENGTH`]: EOS for SD1.x, 0 (`!`) for SD2.x.
    pad: u32,
}

impl Tokenizer {
    /// The tokenizer of SD1.x, from the vocabulary compiled into the binary (built once per
    /// process: parsing the merges takes longer than a `plan`'s metered run).
    pub fn new() -> Result<Self> {
        static BUILT: std::sync::OnceLock<Tokenizer> = std::sync::OnceLock::new();
        if let Some(t) = BUILT.get() {
            return Ok(t.clone());
        }
        let t = Self::from_merges(MERGES_FILE, MERGES)?;
        Ok(BUILT.get_or_init(|| t).clone())
    }

    /// Builds a tokenizer from a CLIP merges file: a header line, then one merge (`a b`) a line,
    /// of which the first 48,894 are used. `file` names it in errors.
    pub fn from_merges(file: &str, merges: &str) -> Result<Self> {
        let bad = |line: usize, problem: String| Error::Vocabulary {
            file: file.to_string(),
            line,
            problem,
        };
        let symbols = byte_symbols();
        let mut vocab: Vec<String> = symbols.iter().map(|(_, c)| c.to_string()).collect();
        vocab.extend(symbols.iter().map(|(_, c)| format!("{c}{END_OF_WORD}")));
        let mut byte_ids = [0u32; 256];
        for (id, &(byte, _)) in symbols.iter().enumerate() {
            byte_ids[byte as usize] = id as u32;
        }
        let mut ids: HashMap<String, u32> = vocab
            .iter()
            .enumerate()
            .map(|(id, s)| (s.clone(), id as u32))
            .collect();
        let mut ranks = HashMap::with_capacity(N_MERGES);

        // Line numbers from 1; the header is line 1. A text-mode checkout on Windows may have
        // turned LF into CRLF.
        let mut lines = merges
            .split('\n')
            .enumerate()
            .skip(1)
            .map(|(i, line)| (i + 1, line.strip_suffix('\r').unwrap_or(line)));
        for rank in 0..N_MERGES as u32 {
            let (line_no, line) = match lines.next() {
                Some((line_no, line)) if !line.is_empty() => (line_no, line),
                end => {
                    let line_no = end.map_or(merges.split('\n').count(), |(n, _)| n);
                    let problem = format!("ends after {rank} merges; CLIP uses {N_MERGES}");
                    return Err(bad(line_no, problem));
                }
            };
            let mut parts = line.split(' ');
            let (Some(first), Some(second), None) = (parts.next(), parts.next(), parts.next())
            else {
                return Err(bad(
                    line_no,
                    format!("{line:?} is not two symbols split by one space"),
                ));
            };
            let symbol_id = |s: &str| {
                ids.get(s).copied().ok_or_else(|| {
                    bad(
                        line_no,
                        format!("symbol {s:?} is neither a byte nor an earlier merge"),
                    )
                })
            };
            let pair = (symbol_id(first)?, symbol_id(second)?);
            let merged = format!("{first}{second}");
            let id = vocab.len() as u32;
            if ids.insert(merged.clone(), id).is_some() {
                return Err(bad(
                    line_no,
                    format!("merge makes {merged:?}, which exists already"),
                ));
            }
            ranks.insert(pair, rank);
            vocab.push(merged);
        }
        vocab.extend(SPECIALS.iter().map(|(s, _)| s.to_string()));
        debug_assert_eq!(vocab.len(), VOCAB_SIZE);
        Ok(Self {
            byte_ids,
            ranks,
            vocab,
            pad: EOS,
        })
    }

    /// This tokenizer padding with `pad` instead of EOS (SD2.x's tokenizer pads with `!`, id
    /// 0: the model family's `pad_token`).
    pub fn padding_with(mut self, pad: u32) -> Self {
        self.pad = pad;
        self
    }

    /// The padding id ([`EOS`] unless set by [`Tokenizer::padding_with`]).
    pub fn pad(&self) -> u32 {
        self.pad
    }

    /// The prompt as the text encoder takes it: BOS, the first 75 tokens, EOS, EOS padding.
    pub fn encode(&self, text: &str) -> Encoded {
        self.encode_long(text, WINDOW)
    }

    /// The prompt as sd-scripts encodes it for SD1.x with `max_token_length` = `max_tokens`
    /// (75, 150 or 225): its first `max_tokens` tokens in windows of [`WINDOW`], each window
    /// a row of [`MAX_LENGTH`] ids, BOS + its 75 tokens (EOS padding after the last) + EOS;
    /// `max_tokens / 75` rows. The text encoder encodes each row alone and joins them
    /// (`ClipTextModel::forward`). With 75 it is [`Tokenizer::encode`]'s one row.
    ///
    /// With a padding id other than EOS (SD2.x) the rows are sd-scripts' `get_input_ids` for
    /// v2: the whole caption padded to `2 + rows·75` ids (BOS, tokens, EOS, padding) is cut
    /// into windows that get BOS and the sequence's last id, a window ending in a token after
    /// which that id is padding gets EOS there, and a window starting with padding starts with
    /// EOS. With EOS padding this is the SD1.x rule above.
    pub fn encode_long(&self, text: &str, max_tokens: usize) -> Encoded {
        let rows = (max_tokens / WINDOW).max(1);
        let tokens = self.tokenize(text);
        let kept = &tokens[..tokens.len().min(rows * WINDOW)];
        let full_len = rows * WINDOW + 2;
        let mut full = Vec::with_capacity(full_len);
        full.push(BOS);
        full.extend_from_slice(kept);
        full.push(EOS);
        full.resize(full_len, self.pad);
        let ids = caption_windows(&full, MAX_LENGTH, EOS, self.pad);
        let eos_position = ids[..MAX_LENGTH]
            .iter()
            .position(|&id| id == EOS)
            .unwrap_or(MAX_LENGTH - 1);
        Encoded {
            ids,
            n_tokens: tokens.len(),
            truncated: tokens.len() > kept.len(),
            eos_position,
        }
    }

    /// All of the prompt's tokens, without BOS/EOS and without truncation.
    pub fn tokenize(&self, text: &str) -> Vec<u32> {
        let mut tokens = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            // The earliest special token, as transformers' trie finds it (case-sensitive).
            let next = SPECIALS
                .iter()
                .filter_map(|&(s, id)| rest.find(s).map(|at| (at, s.len(), id)))
                .min_by_key(|&(at, _, _)| at);
            let (piece, special) = match next {
                Some((at, len, id)) => {
                    let piece = &rest[..at];
                    rest = &rest[at + len..];
                    (piece, Some(id))
                }
                None => (std::mem::take(&mut rest), None),
            };
            if !piece.is_empty() {
                self.tokenize_piece(piece, &mut tokens);
            }
            tokens.extend(special);
        }
        tokens
    }

    fn tokenize_piece(&self, piece: &str, tokens: &mut Vec<u32>) {
        let cleaned = text::clean(piece);
        for word in words(&cleaned) {
            match SPECIALS.iter().find(|(s, _)| *s == word) {
                Some(&(_, id)) => tokens.push(id),
                None => self.bpe(word.as_bytes(), tokens),
            }
        }
    }

    /// BPE of one word, as CLIP's `bpe()`: repeatedly merge every occurrence of the pair of lowest
    /// rank. Quadratic in the word's length, which is a few dozen bytes in a prompt.
    fn bpe(&self, word: &[u8], tokens: &mut Vec<u32>) {
        let Some((&last, init)) = word.split_last() else {
            return;
        };
        let mut symbols: Vec<u32> = init.iter().map(|&b| self.byte_ids[b as usize]).collect();
        symbols.push(self.byte_ids[last as usize] + 256);
        let mut merged = Vec::with_capacity(symbols.len());
        while symbols.len() > 1 {
            let best = symbols
                .windows(2)
                .filter_map(|pair| {
                    self.ranks
                        .get(&(pair[0], pair[1]))
                        .map(|&rank| (rank, pair))
                })
                .min_by_key(|&(rank, _)| rank);
            let Some((rank, pair)) = best else { break };
            let (first, second) = (pair[0], pair[1]);
            merged.clear();
            let mut i = 0;
            while i < symbols.len() {
                if symbols[i] == first && symbols.get(i + 1) == Some(&second) {
                    merged.push(512 + rank);
                    i += 2;
                } else {
                    merged.push(symbols[i]);
                    i += 1;
                }
            }
            std::mem::swap(&mut symbols, &mut merged);
        }
        tokens.extend_from_slice(&symbols);
    }

    /// The text of `ids` as transformers' `decode` gives it (special tokens included, `</w>` as a
    /// space, trimmed); ids outside the vocabulary are skipped and invalid UTF-8 becomes U+FFFD.
    /// For messages, such as what truncation cut off.
    pub fn decode(&self, ids: &[u32]) -> String {
        let unicode_to_byte: HashMap<char, u8> = byte_symbols()
            .into_iter()
            .map(|(byte, c)| (c, byte))
            .collect();
        let bytes: Vec<u8> = ids
            .iter()
            .filter_map(|&id| self.vocab.get(id as usize))
            .flat_map(|token| token.chars())
            .filter_map(|c| unicode_to_byte.get(&c).copied())
            .collect();
        String::from_utf8_lossy(&bytes)
            .replace(END_OF_WORD, " ")
            .trim()
            .to_string()
    }
}

/// GPT-2's byte-to-unicode table in CLIP's vocabulary order: the 188 printable bytes map to
/// themselves (as Latin-1 characters) in ascending order, then the 68 others (controls, space,
/// DEL, NBSP, soft hyphen) in ascending order to U+0100 upwards, so that no symbol is whitespace
/// or a control character.
fn byte_symbols() -> Vec<(u8, char)> {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut symbols: Vec<(u8, char)> = (0..=255u8)
        .filter(|&b| printable(b))
        .map(|b| (b, char::from(b)))
        .collect();
    let others = (0..=255u8).filter(|&b| !printable(b));
    symbols.extend(
        others
            .zip(0x100u32..)
            .filter_map(|(b, cp)| Some((b, char::from_u32(cp)?))),
    );
    symbols
}

/// CLIP's pre-tokenizer pattern over cleaned (lowercase) text; see the module header.
fn words(text: &str) -> Vec<&str> {
    let mut words = Vec::new();
    let mut at = 0;
    while let Some(c) = text[at..].chars().next() {
        let rest = &text[at..];
        let len = if let Some(len) = special_len(rest) {
            len
        } else if let Some(len) = contraction_len(rest) {
            len
        } else if is_letter(c) {
            run_len(rest, is_letter)
        } else if c.is_numeric() {
            c.len_utf8()
        } else if c.is_whitespace() {
            at += c.len_utf8();
            continue;
        } else {
            run_len(rest, |c| {
                !is_letter(c) && !c.is_numeric() && !c.is_whitespace()
            })
        };
        words.push(&rest[..len]);
        at += len;
    }
    words
}

/// `\p{L}`, up to Other_Alphabetic (module header).
fn is_letter(c: char) -> bool {
    c.is_alphabetic() && !c.is_numeric()
}

fn run_len(text: &str, class: impl Fn(char) -> bool) -> usize {
    text.chars()
        .take_while(|&c| class(c))
        .map(char::len_utf8)
        .sum()
}

/// Byte length of `pattern` at the start of `text` under the pattern's case-insensitive match of
/// lowercase text: only `ſ` (U+017F) folds onto an ASCII letter of these patterns.
fn prefix_len(text: &str, pattern: &str) -> Option<usize> {
    let mut len = 0;
    let mut chars = text.chars();
    for p in pattern.chars() {
        let c = chars.next()?;
        if c != p && !(p == 's' && c == 'ſ') {
            return None;
        }
        len += c.len_utf8();
    }
    Some(len)
}

fn special_len(text: &str) -> Option<usize> {
    SPECIALS.iter().find_map(|(s, _)| prefix_len(text, s))
}

fn contraction_len(text: &str) -> Option<usize> {
    ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d"]
        .iter()
        .find_map(|p| prefix_len(text, p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_splits_like_clip() {
        assert_eq!(
            words("it's rock'n'roll!!'s 3.14x"),
            ["it", "'s", "rock", "'", "n", "'", "roll", "!!'", "s", "3", ".", "1", "4", "x"]
        );
        assert_eq!(
            words("a<|endoftext|>b !<|endoftext|>"),
            ["a", "<|endoftext|>", "b", "!<|", "endoftext", "|>"]
        );
        assert_eq!(words("it'ſ"), ["it", "'ſ"]);
    }

    #[test]
    fn byte_table_is_a_bijection_onto_non_space_symbols() {
        let symbols = byte_symbols();
        assert_eq!(symbols.len(), 256);
        let mut bytes: Vec<u8> = symbols.iter().map(|&(b, _)| b).collect();
        bytes.sort_unstable();
        bytes.dedup();
        assert_eq!(bytes.len(), 256);
        assert!(symbols
            .iter()
            .all(|&(_, c)| !c.is_whitespace() && !c.is_control()));
        assert_eq!(symbols[0], (b'!', '!'));
        assert_eq!(symbols[188], (0, '\u{100}'));
    }
}
