//! The "word-level" tokenizer.
//!
//! # Normalisation and splitting
//!
//! Text is split on Unicode whitespace into words; inside a word:
//! 1. the special tokens `[PAD] [UNK] [BOS] [EOS] [USER] [INTENT]` (upper case, exactly) are
//!    tokens of their own;
//! 2. each JSON punctuation character `{ } [ ] : , "` is a token of its own;
//! 3. what is left is lower-cased and cut into pieces: every ASCII digit is a piece of its own,
//!    every maximal run of other characters is one piece; every piece after the first of such a
//!    run is written with a `##` prefix (it glues to the previous piece), so numbers of any
//!    length need only the 20 digit pieces `0`..`9`, `##0`..`##9`.
//!
//! Decoding joins pieces: a `##` piece glues to the previous one; otherwise a single space
//! separates two pieces, except next to JSON punctuation, which glues to its neighbours unless the
//! neighbour is a special token. [`normalise`] is exactly "split, then join", so for text whose
//! pieces are all in the vocabulary `decode(encode(x)) == normalise(x)`; other pieces become
//! `[UNK]`, or their nearest in-vocabulary form (see below). TruckMate corpus lines are already
//! in normal form.
//!
//! # Words outside the vocabulary
//!
//! People type and speak words a generated corpus never held. Unless `unknown_words = "unk"` an
//! out-of-vocabulary word (a piece that starts a word, not a `##` piece) is reduced, in this
//! order, to the first form the vocabulary knows (see [`reduce`]):
//! 1. typographic apostrophes (`’`, `‘`, `` ` ``) read as `'`;
//! 2. leading and trailing punctuation dropped (`gas?` is `gas`);
//! 3. a word joined by `-` or `/` is its parts (`pre-trip` is `pre trip` when `pre-trip` is not
//!    known); a part no form of which is known is `[UNK]`;
//! 4. clitics dropped (`light's`, `that'll`, `we're`, `i'd`): the stem; `n't` becomes the stem
//!    and `not` (`isn't` is `is not`; `can't` and `won't` are `can not` and `will not`);
//! 5. one inflection dropped (`-ing`, `-ed`, `-es`, `-s`, `-ly`, `-er`, `-est`, stems of at least
//!    three letters, also with `e` restored, a doubled consonant undone, or `i` read as `y`):
//!    `doors` is `door`, `fueled` is `fuel`, `stopped` is `stop`, `batteries` is `battery`.
//!
//! A word with no known form (and a `##` piece outside the vocabulary) is `[UNK]` with
//! `unknown_words = "reduce"`, and is left out with `"reduce-or-drop"`, the default: a
//! vocabulary of every word seen twice in its training text leaves `[UNK]` almost never seen in
//! training (once in TruckMate's 1.57M training tokens), so its embedding is noise the model
//! never learned to read. Words in the vocabulary are never changed, so the option changes
//! nothing for in-vocabulary text.
//!
//! # Vocabulary and file
//!
//! Ids 0..=5 are the specials above; then the JSON punctuation and the 20 digit pieces (always
//! kept, so JSON structure and numbers never become `[UNK]`); then the most frequent pieces
//! (ties by text) seen at least `min_freq` times, up to `max_vocab` ids in all. The file is JSON:
//! `{"format":"bitnet-word-level","version":1,"content_hash":"<hex>","tokens":[...]}`, where
//! `content_hash` is the SHA-256 of `bitnet-word-level/1\n` followed by the tokens joined by
//! `\n`. Loading checks the format, the specials, duplicates and the hash.

use bitnet_framework::BuildContext;
use bitnet_framework::registry::{BuildError, PluginConfig};
use bitnet_framework::tokenizer::{SpecialTokens, Tokenizer, TokenizerError};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::Path;

/// Special tokens in id order.
pub const SPECIALS: [&str; 6] = ["[PAD]", "[UNK]", "[BOS]", "[EOS]", "[USER]", "[INTENT]"];
/// Characters that are always tokens of their own.
pub const JSON_PUNCTUATION: [char; 7] = ['{', '}', '[', ']', ':', ',', '"'];
const FORMAT: &str = "bitnet-word-level";
const VERSION: u32 = 1;
const SPECIAL_IDS: SpecialTokens =
    SpecialTokens { pad: 0, unk: 1, bos: 2, eos: 3, user: 4, intent: 5 };

fn is_special(p: &str) -> bool {
    SPECIALS.contains(&p)
}

fn is_punct_piece(p: &str) -> bool {
    let mut c = p.chars();
    matches!((c.next(), c.next()), (Some(ch), None) if JSON_PUNCTUATION.contains(&ch))
}

fn is_continuation(p: &str) -> bool {
    p.len() > 2 && p.starts_with("##")
}

/// Cuts a lower-cased run of non-punctuation characters into pieces (digits alone, `##` after
/// the first piece).
fn push_run(run: &str, out: &mut Vec<String>) {
    fn flush(current: &mut String, first: &mut bool, out: &mut Vec<String>) {
        if !current.is_empty() {
            out.push(if *first { std::mem::take(current) } else { format!("##{current}") });
            current.clear();
            *first = false;
        }
    }
    let lower = run.to_lowercase();
    let mut first = true;
    let mut current = String::new();
    for ch in lower.chars() {
        if ch.is_ascii_digit() {
            flush(&mut current, &mut first, out);
            current.push(ch);
            flush(&mut current, &mut first, out);
        } else {
            current.push(ch);
        }
    }
    flush(&mut current, &mut first, out);
}

/// Splits `text` into pieces (see the crate docs).
pub fn pieces(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for word in text.split_whitespace() {
        let mut run_start = 0;
        let mut i = 0;
        while i < word.len() {
            let rest = &word[i..];
            let special = SPECIALS.iter().find(|s| rest.starts_with(**s));
            let ch = rest.chars().next().unwrap_or(' ');
            if special.is_some() || JSON_PUNCTUATION.contains(&ch) {
                if run_start < i {
                    push_run(&word[run_start..i], &mut out);
                }
                let tok = special.map(|s| s.to_string()).unwrap_or_else(|| ch.to_string());
                i += tok.len();
                out.push(tok);
                run_start = i;
            } else {
                i += ch.len_utf8();
            }
        }
        if run_start < word.len() {
            push_run(&word[run_start..], &mut out);
        }
    }
    out
}

/// Joins pieces back into text (see the crate docs).
pub fn join<S: AsRef<str>>(pieces: &[S]) -> String {
    let mut out = String::new();
    let mut prev: Option<&str> = None;
    for p in pieces {
        let p = p.as_ref();
        if is_continuation(p) {
            out.push_str(&p[2..]);
        } else {
            if let Some(q) = prev {
                let glue =
                    !is_special(p) && !is_special(q) && (is_punct_piece(p) || is_punct_piece(q));
                if !glue {
                    out.push(' ');
                }
            }
            out.push_str(p);
        }
        prev = Some(p);
    }
    out
}

/// The normal form of `text`: split into pieces, then joined.
pub fn normalise(text: &str) -> String {
    join(&pieces(text))
}

/// Tokens always in the vocabulary after the specials.
fn base_tokens() -> Vec<String> {
    let mut v: Vec<String> = JSON_PUNCTUATION.iter().map(|c| c.to_string()).collect();
    v.extend((0..10).map(|d| d.to_string()));
    v.extend((0..10).map(|d| format!("##{d}")));
    v
}

fn content_hash_of(tokens: &[String]) -> String {
    let mut h = Sha256::new();
    h.update(format!("{FORMAT}/{VERSION}\n").as_bytes());
    h.update(tokens.join("\n").as_bytes());
    hex::encode(h.finalize())
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WordLevelFile {
    format: String,
    version: u32,
    content_hash: String,
    tokens: Vec<String>,
}

/// What encoding does with a word outside the vocabulary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UnknownWords {
    /// `[UNK]`.
    Unk,
    /// Its nearest in-vocabulary form ([`reduce`]), else `[UNK]`.
    Reduce,
    /// Its nearest in-vocabulary form, else nothing: for a vocabulary that holds (almost) every
    /// word of its training text, whose model never learned what `[UNK]` means.
    #[default]
    ReduceOrDrop,
}

/// Options of the "word-level" tokenizer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WordLevelConfig {
    /// Vocabulary size including the specials.
    pub max_vocab: usize,
    /// Pieces seen fewer times are left out of the vocabulary.
    pub min_freq: u64,
    /// What encoding does with a word outside the vocabulary.
    pub unknown_words: UnknownWords,
}

impl Default for WordLevelConfig {
    fn default() -> Self {
        Self { max_vocab: 5174, min_freq: 2, unknown_words: UnknownWords::default() }
    }
}

/// Clitics [`reduce`] drops, with the word each leaves behind (`n't` leaves `not`).
const CLITICS: [(&str, Option<&str>); 7] = [
    ("n't", Some("not")),
    ("'s", None),
    ("'ll", None),
    ("'re", None),
    ("'ve", None),
    ("'d", None),
    ("'m", None),
];

/// Inflections [`reduce`] drops (longest first where one ends another).
const INFLECTIONS: [&str; 7] = ["ing", "est", "ed", "es", "ly", "er", "s"];

/// Reduces the out-of-vocabulary word `w` (lower case) to the ids of its nearest known form (see
/// the crate docs), appending them to `out`; `false` (and `out` unchanged) when no form is known.
/// `id` looks a piece up in the vocabulary; a part of a hyphenated word with no known form
/// becomes `unknown` (nothing when `None`). Each step shortens the word or, for apostrophes,
/// removes a character outside ASCII, so the work is bounded by the word's length.
pub fn reduce(
    w: &str,
    id: &impl Fn(&str) -> Option<u32>,
    unknown: Option<u32>,
    out: &mut Vec<u32>,
) -> bool {
    if let Some(i) = id(w) {
        out.push(i);
        return true;
    }
    if w.contains(['\u{2019}', '\u{2018}', '`']) {
        return reduce(&w.replace(['\u{2019}', '\u{2018}', '`'], "'"), id, unknown, out);
    }
    let trimmed = w.trim_matches(|c: char| !c.is_alphanumeric());
    if trimmed.len() < w.len() {
        return !trimmed.is_empty() && reduce(trimmed, id, unknown, out);
    }
    if w.contains(['-', '/']) {
        let start = out.len();
        let mut any = false;
        for part in w.split(['-', '/']).filter(|p| !p.is_empty()) {
            if reduce(part, id, unknown, out) {
                any = true;
            } else {
                out.extend(unknown);
            }
        }
        if !any {
            out.truncate(start);
        }
        return any;
    }
    for (clitic, leaves) in CLITICS {
        let Some(stem) = w.strip_suffix(clitic).filter(|s| !s.is_empty()) else { continue };
        let stem = match (clitic, stem) {
            ("n't", "ca") => "can",
            ("n't", "wo") => "will",
            ("n't", "sha") => "shall",
            _ => stem,
        };
        if !reduce(stem, id, unknown, out) {
            return false;
        }
        if let Some(i) = leaves.and_then(id) {
            out.push(i);
        }
        return true;
    }
    for suffix in INFLECTIONS {
        let Some(stem) = w.strip_suffix(suffix).filter(|s| s.chars().count() >= 3) else {
            continue;
        };
        let undoubled = stem.char_indices().last().and_then(|(i, c)| {
            (stem[..i].ends_with(c) && !"aeiou".contains(c)).then(|| &stem[..i])
        });
        let y_form = stem.strip_suffix('i').map(|s| format!("{s}y"));
        let candidates = [
            Some(stem.to_string()),
            Some(format!("{stem}e")),
            undoubled.map(str::to_string),
            y_form,
        ];
        if let Some(i) = candidates.iter().flatten().find_map(|c| id(c)) {
            out.push(i);
            return true;
        }
    }
    false
}

impl PluginConfig for WordLevelConfig {
    type Component = dyn Tokenizer;
    fn build(self, _ctx: &BuildContext) -> Result<Box<dyn Tokenizer>, BuildError> {
        if self.max_vocab < SPECIALS.len() + base_tokens().len() {
            return Err(BuildError::failed(
                bitnet_framework::Slot::Tokenizer,
                "word-level",
                format!(
                    "max_vocab {} is too small: the specials, JSON punctuation and digits need {}",
                    self.max_vocab,
                    SPECIALS.len() + base_tokens().len()
                ),
            ));
        }
        Ok(Box::new(WordLevel::new(self)))
    }
}

bitnet_framework::register_plugin!(
    WordLevelConfig,
    "word-level",
    "Word-level vocabulary with JSON punctuation and digit pieces; trained by frequency."
);

/// The word-level tokenizer. Untrained it knows only the specials, JSON punctuation and digits.
#[derive(Debug, Clone)]
pub struct WordLevel {
    config: WordLevelConfig,
    tokens: Vec<String>,
    ids: HashMap<String, u32>,
    hash: String,
}

impl Default for WordLevel {
    fn default() -> Self {
        Self::new(WordLevelConfig::default())
    }
}

impl WordLevel {
    /// An untrained tokenizer with these options.
    pub fn new(config: WordLevelConfig) -> Self {
        let mut tokens: Vec<String> = SPECIALS.iter().map(|s| s.to_string()).collect();
        tokens.extend(base_tokens());
        let mut t = Self { config, tokens: Vec::new(), ids: HashMap::new(), hash: String::new() };
        t.set_tokens(tokens);
        t
    }

    fn set_tokens(&mut self, tokens: Vec<String>) {
        self.ids = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
        self.hash = content_hash_of(&tokens);
        self.tokens = tokens;
    }

    /// The token of `id`.
    pub fn token(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    /// Parses and validates a saved tokenizer (what [`Tokenizer::load`] does, on bytes).
    pub fn from_json_bytes(bytes: &[u8], config: WordLevelConfig) -> Result<Self, String> {
        let file: WordLevelFile =
            serde_json::from_slice(bytes).map_err(|e| format!("not a word-level file: {e}"))?;
        if file.format != FORMAT {
            return Err(format!("format is {:?}, expected {FORMAT:?}", file.format));
        }
        if file.version != VERSION {
            return Err(format!("version {} is not supported (expected {VERSION})", file.version));
        }
        if file.tokens.len() < SPECIALS.len() || file.tokens[..SPECIALS.len()] != SPECIALS {
            return Err(format!("the first tokens must be the specials {SPECIALS:?}"));
        }
        if u32::try_from(file.tokens.len()).is_err() {
            return Err("too many tokens for 32-bit ids".into());
        }
        let mut seen = std::collections::HashSet::new();
        for (i, t) in file.tokens.iter().enumerate() {
            if t.is_empty() || t.chars().any(char::is_whitespace) {
                return Err(format!("token {i} ({t:?}) is empty or contains whitespace"));
            }
            if !seen.insert(t.as_str()) {
                return Err(format!("token {t:?} appears twice"));
            }
        }
        let actual = content_hash_of(&file.tokens);
        if actual != file.content_hash {
            return Err(format!(
                "content hash mismatch: file says {}, tokens hash to {actual} (edited or damaged)",
                file.content_hash
            ));
        }
        let mut t = Self::new(config);
        t.set_tokens(file.tokens);
        Ok(t)
    }

    /// The JSON text [`Tokenizer::save`] writes.
    pub fn to_json(&self) -> String {
        let file = WordLevelFile {
            format: FORMAT.into(),
            version: VERSION,
            content_hash: self.hash.clone(),
            tokens: self.tokens.clone(),
        };
        let mut s = serde_json::to_string_pretty(&file).unwrap_or_default();
        s.push('\n');
        s
    }
}

impl Tokenizer for WordLevel {
    fn train(&mut self, lines: &mut dyn Iterator<Item = String>) -> Result<(), TokenizerError> {
        let mut tokens: Vec<String> = SPECIALS.iter().map(|s| s.to_string()).collect();
        tokens.extend(base_tokens());
        let mut counts: HashMap<String, u64> = HashMap::new();
        for line in lines {
            for p in pieces(&line) {
                if !is_special(&p) {
                    *counts.entry(p).or_default() += 1;
                }
            }
        }
        let fixed: std::collections::HashSet<String> = tokens.iter().cloned().collect();
        let mut ranked: Vec<(String, u64)> = counts
            .into_iter()
            .filter(|(p, c)| *c >= self.config.min_freq.max(1) && !fixed.contains(p))
            .collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let room = self.config.max_vocab.saturating_sub(tokens.len());
        tokens.extend(ranked.into_iter().take(room).map(|(p, _)| p));
        self.set_tokens(tokens);
        Ok(())
    }

    fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let id = |p: &str| self.ids.get(p).copied();
        let mut out = Vec::new();
        for p in pieces(text) {
            match id(&p) {
                Some(i) => out.push(i),
                None => {
                    let mode = self.config.unknown_words;
                    let unknown = (mode != UnknownWords::ReduceOrDrop).then_some(SPECIAL_IDS.unk);
                    let reduced = mode != UnknownWords::Unk
                        && !is_continuation(&p)
                        && reduce(&p, &id, unknown, &mut out);
                    if !reduced {
                        out.extend(unknown);
                    }
                }
            }
        }
        Ok(out)
    }

    fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        let ps = ids
            .iter()
            .map(|&id| {
                self.token(id).ok_or_else(|| {
                    TokenizerError::Other(format!(
                        "id {id} is outside the vocabulary of {}",
                        self.tokens.len()
                    ))
                })
            })
            .collect::<Result<Vec<&str>, _>>()?;
        Ok(join(&ps))
    }

    fn save(&self, path: &Path) -> Result<(), TokenizerError> {
        let io = |source| TokenizerError::Io { path: path.display().to_string(), source };
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, self.to_json()).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }

    fn load(&mut self, path: &Path) -> Result<(), TokenizerError> {
        let bytes = std::fs::read(path)
            .map_err(|source| TokenizerError::Io { path: path.display().to_string(), source })?;
        *self = Self::from_json_bytes(&bytes, self.config.clone()).map_err(|reason| {
            TokenizerError::Invalid { path: path.display().to_string(), reason }
        })?;
        Ok(())
    }

    fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    fn special_tokens(&self) -> SpecialTokens {
        SPECIAL_IDS
    }

    fn content_hash(&self) -> String {
        self.hash.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitnet_framework::tokenizer::conformance;
    use proptest::prelude::*;

    fn trained_on(lines: &[&str], min_freq: u64) -> WordLevel {
        let mut t =
            WordLevel::new(WordLevelConfig { max_vocab: 100_000, min_freq, ..Default::default() });
        t.train(&mut lines.iter().map(|s| s.to_string())).expect("train");
        t
    }

    #[test]
    fn conformance_suite() {
        let dir = tempfile::tempdir().expect("tempdir");
        conformance::run_all(&mut || Box::new(WordLevel::default()), dir.path())
            .expect("conformance");
    }

    #[test]
    fn splits_as_documented() {
        let line = r#"[USER] Uh find Exit 42 near I-35 [INTENT] {"intent":"find_poi","slots":{"exit":"42"}}"#;
        let p = pieces(line);
        assert_eq!(&p[..8], ["[USER]", "uh", "find", "exit", "4", "##2", "near", "i-"]);
        assert_eq!(&p[8..11], ["##3", "##5", "[INTENT]"]);
        assert_eq!(
            normalise(line),
            r#"[USER] uh find exit 42 near i-35 [INTENT] {"intent":"find_poi","slots":{"exit":"42"}}"#
        );
        assert_eq!(normalise("312.45 dollars"), "312.45 dollars");
        assert_eq!(pieces("312.45"), ["3", "##1", "##2", "##.", "##4", "##5"]);
    }

    #[test]
    fn unknown_words_become_unk_and_vocab_respects_limits() {
        let mut t = trained_on(&["a a a b b c"], 2);
        t.config.unknown_words = UnknownWords::Unk;
        assert_eq!(t.encode("c").expect("enc"), [SPECIAL_IDS.unk]);
        assert_ne!(t.encode("a").expect("enc"), [SPECIAL_IDS.unk]);
        let mut small = WordLevel::new(WordLevelConfig {
            max_vocab: 34,
            min_freq: 1,
            unknown_words: UnknownWords::Unk,
        });
        small.train(&mut ["a a a b b c".to_string()].into_iter()).expect("train");
        assert_eq!(small.vocab_size(), 34);
        assert_eq!(
            small.encode("a b c").expect("enc")[2],
            SPECIAL_IDS.unk,
            "least frequent dropped"
        );
        assert!(
            WordLevelConfig { max_vocab: 10, min_freq: 1, ..Default::default() }
                .build(&BuildContext::new(Default::default()))
                .is_err()
        );
    }

    #[test]
    fn unknown_words_reduce_to_their_known_forms() {
        let mut t = trained_on(
            &["is not can will gas door fuel stop battery move trip pre light that park"],
            1,
        );
        t.config.unknown_words = UnknownWords::Reduce;
        let enc =
            |t: &WordLevel, text: &str| t.decode(&t.encode(text).expect("encode")).expect("decode");
        for (text, want) in [
            ("gas?", "gas"),
            ("'door'.", "door"),
            ("light\u{2019}s", "light"),
            ("that'll", "that"),
            ("isn't", "is not"),
            ("can't won't", "can not will not"),
            ("doors fueled stopped batteries moving parking", "door fuel stop battery move park"),
            ("pre-trip", "pre trip"),
            ("pre-zzz", "pre [UNK]"),
            ("zzz-qqq", "[UNK]"),
            ("light's door", "light door"),
            ("mmm ... $", "[UNK] [UNK] [UNK]"),
            ("ss sing", "[UNK] [UNK]"),
        ] {
            assert_eq!(enc(&t, text), want, "{text:?}");
        }
        t.config.unknown_words = UnknownWords::ReduceOrDrop;
        assert_eq!(enc(&t, "pre-zzz doors mmm ... ##x"), "pre door");
        assert_eq!(t.encode("zzz").expect("encode"), Vec::<u32>::new());
        t.config.unknown_words = UnknownWords::Unk;
        assert_eq!(t.encode("doors").expect("encode"), [SPECIAL_IDS.unk]);
    }

    #[test]
    fn tampered_file_is_refused() {
        let t = trained_on(&["navigate to dallas", "navigate to dallas"], 1);
        let json = t.to_json().replace("\"dallas\"", "\"austin\"");
        let err = WordLevel::from_json_bytes(json.as_bytes(), WordLevelConfig::default())
            .expect_err("tampered");
        assert!(err.contains("content hash mismatch"), "{err}");
        let json = t.to_json().replace("[USER]", "[USR]");
        assert!(WordLevel::from_json_bytes(json.as_bytes(), WordLevelConfig::default()).is_err());
    }

    proptest! {
        /// decode(encode(x)) == normalise(x) for text whose pieces are in the vocabulary.
        #[test]
        fn round_trip_is_normalise(x in "[a-zA-Z0-9 {}\\[\\]:,\".$'-]{0,60}", y in "\\PC{0,30}") {
            for text in [x, y] {
                let t = trained_on(&[&text], 1);
                let ids = t.encode(&text).expect("encode");
                prop_assert!(!ids.contains(&SPECIAL_IDS.unk) || text.contains("[UNK]"));
                prop_assert_eq!(t.decode(&ids).expect("decode"), normalise(&text));
            }
        }

        /// Encoding any text terminates with ids inside the vocabulary, whatever it reduces.
        #[test]
        fn reduction_stays_in_the_vocabulary(x in "\\PC{0,80}", y in "[a-z'’/.-]{0,40}") {
            let t = trained_on(&["door fuel stop is not can will pre trip light"], 1);
            for text in [x, y] {
                let ids = t.encode(&text).expect("encode");
                prop_assert!(ids.iter().all(|&i| (i as usize) < t.vocab_size()));
                prop_assert!(ids.len() <= 2 * text.len().max(1));
            }
        }

        /// Normal form is a fixed point for ordinary text.
        #[test]
        fn normalise_is_idempotent(x in "[a-z0-9 {}:,\".]{0,60}") {
            let n = normalise(&x);
            prop_assert_eq!(normalise(&n), n);
        }

        /// The loader never panics on arbitrary bytes or on a damaged valid file.
        #[test]
        fn loader_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300), pos in any::<prop::sample::Index>(), b in any::<u8>()) {
            let _ = WordLevel::from_json_bytes(&bytes, WordLevelConfig::default());
            let t = trained_on(&["navigate to dallas texas 42"], 1);
            let mut good = t.to_json().into_bytes();
            let i = pos.index(good.len());
            good[i] = b;
            let _ = WordLevel::from_json_bytes(&good, WordLevelConfig::default());
            let cut = pos.index(good.len() - 1);
            prop_assert!(WordLevel::from_json_bytes(&t.to_json().as_bytes()[..cut], WordLevelConfig::default()).is_err());
        }
    }
}
