//! The `Tokenizer` slot.

use std::path::Path;

/// Ids of the special tokens every tokenizer provides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecialTokens {
    /// Padding.
    pub pad: u32,
    /// Unknown word.
    pub unk: u32,
    /// Begin of example.
    pub bos: u32,
    /// End of example.
    pub eos: u32,
    /// Marks the start of the user's utterance.
    pub user: u32,
    /// Marks the start of the intent JSON.
    pub intent: u32,
}

/// Errors of a tokenizer.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// File I/O.
    #[error("{path}: {source}")]
    Io {
        /// File involved.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// A saved tokenizer is invalid.
    #[error("invalid tokenizer file {path}: {reason}")]
    Invalid {
        /// File involved.
        path: String,
        /// What was wrong.
        reason: String,
    },
    /// Used before training or loading.
    #[error("tokenizer is not trained or loaded")]
    NotReady,
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

/// Text to token ids and back.
pub trait Tokenizer: Send + Sync {
    /// Learns the vocabulary from a corpus of lines.
    fn train(&mut self, lines: &mut dyn Iterator<Item = String>) -> Result<(), TokenizerError>;
    /// Text to ids (no BOS/EOS added).
    fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError>;
    /// Ids to text.
    fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError>;
    /// Writes the tokenizer to `path`.
    fn save(&self, path: &Path) -> Result<(), TokenizerError>;
    /// Replaces this tokenizer's state with the one saved at `path`.
    fn load(&mut self, path: &Path) -> Result<(), TokenizerError>;
    /// Number of ids.
    fn vocab_size(&self) -> usize;
    /// Special-token ids.
    fn special_tokens(&self) -> SpecialTokens;
    /// SHA-256 (hex) of the vocabulary, written into shards so a mismatch is caught.
    fn content_hash(&self) -> String;
}

/// Conformance checks every tokenizer plugin's tests run, so any implementation of the slot
/// behaves the same way downstream: specials at their reference ids, round trips, save/load
/// identity, a stable content hash, and a loader that refuses damaged files without panicking.
///
/// Each check returns `Err` with a description of the first violation.
///
/// ```ignore
/// #[test]
/// fn conformance() {
///     let dir = tempfile::tempdir().expect("tempdir");
///     bitnet_framework::tokenizer::conformance::run_all(
///         &mut || Box::new(MyTokenizer::default()),
///         dir.path(),
///     )
///     .expect("conformance");
/// }
/// ```
pub mod conformance {
    use super::{SpecialTokens, Tokenizer};
    use std::path::Path;

    /// The reference special-token ids every tokenizer uses.
    pub const REFERENCE_SPECIALS: SpecialTokens =
        SpecialTokens { pad: 0, unk: 1, bos: 2, eos: 3, user: 4, intent: 5 };

    /// The literal text of each special token, with its reference id.
    pub const SPECIAL_LITERALS: [(&str, u32); 6] =
        [("[PAD]", 0), ("[UNK]", 1), ("[BOS]", 2), ("[EOS]", 3), ("[USER]", 4), ("[INTENT]", 5)];

    /// A small TruckMate-style corpus (lower case, no stray punctuation) to train on.
    pub fn sample_corpus() -> Vec<String> {
        let utterances = [
            (
                "navigate to dallas texas",
                r#"{"intent":"navigate","slots":{"city":"dallas","state":"tx"}}"#,
            ),
            (
                "uh find me a pilot near exit 42",
                r#"{"intent":"find_poi","slots":{"chain":"pilot","exit":"42"}}"#,
            ),
            ("how many hours can i still drive", r#"{"intent":"hos_drive_remaining","slots":{}}"#),
            (
                "add fuel expense of 312.45 dollars",
                r#"{"intent":"add_expense","slots":{"amount":"312.45","category":"fuel"}}"#,
            ),
            (
                "avoid tolls please",
                r#"{"intent":"route_preference","slots":{"preference":"avoid_tolls"}}"#,
            ),
            (
                "start the trip to el paso texas",
                r#"{"intent":"start_trip","slots":{"city":"el paso","state":"tx"}}"#,
            ),
            (
                "update load weight to 42000 pounds",
                r#"{"intent":"update_load","slots":{"weight_lbs":"42000"}}"#,
            ),
            ("when do i get there", r#"{"intent":"eta_query","slots":{}}"#),
        ];
        let mut out = Vec::new();
        for round in 0..4 {
            for (u, j) in utterances {
                out.push(format!("[USER] {u} [INTENT] {j}"));
                if round % 2 == 1 {
                    out.push(format!("[USER] um {u} [INTENT] {j}"));
                }
            }
        }
        out
    }

    fn trained(
        make: &mut dyn FnMut() -> Box<dyn Tokenizer>,
        corpus: &[String],
    ) -> Result<Box<dyn Tokenizer>, String> {
        let mut t = make();
        t.train(&mut corpus.iter().cloned()).map_err(|e| format!("train: {e}"))?;
        Ok(t)
    }

    /// Specials sit at the reference ids, are distinct and inside the vocabulary, decode to
    /// their literal and encode from it as one id.
    pub fn check_specials(tok: &dyn Tokenizer) -> Result<(), String> {
        let sp = tok.special_tokens();
        if sp != REFERENCE_SPECIALS {
            return Err(format!("special tokens {sp:?}, expected {REFERENCE_SPECIALS:?}"));
        }
        for (lit, id) in SPECIAL_LITERALS {
            if id as usize >= tok.vocab_size() {
                return Err(format!("{lit} id {id} outside vocabulary of {}", tok.vocab_size()));
            }
            let enc = tok.encode(lit).map_err(|e| format!("encode {lit}: {e}"))?;
            if enc != [id] {
                return Err(format!("encode({lit:?}) = {enc:?}, expected [{id}]"));
            }
            let dec = tok.decode(&[id]).map_err(|e| format!("decode [{id}]: {e}"))?;
            if dec.trim() != lit {
                return Err(format!("decode([{id}]) = {dec:?}, expected {lit:?}"));
            }
        }
        Ok(())
    }

    /// Every line of the training corpus round-trips exactly (the corpus is already in normal
    /// form), and for `other` text decoding is a fixed point: encoding the decoded text gives the
    /// same ids again. No id is outside the vocabulary.
    pub fn check_round_trip(
        tok: &dyn Tokenizer,
        corpus: &[String],
        other: &[&str],
    ) -> Result<(), String> {
        for line in corpus {
            let ids = tok.encode(line).map_err(|e| format!("encode {line:?}: {e}"))?;
            if let Some(bad) = ids.iter().find(|&&i| i as usize >= tok.vocab_size()) {
                return Err(format!("encode({line:?}) produced id {bad} outside the vocabulary"));
            }
            let back = tok.decode(&ids).map_err(|e| format!("decode: {e}"))?;
            if &back != line {
                return Err(format!("round trip changed {line:?} into {back:?}"));
            }
        }
        for text in other {
            let ids = tok.encode(text).map_err(|e| format!("encode {text:?}: {e}"))?;
            let back = tok.decode(&ids).map_err(|e| format!("decode: {e}"))?;
            let again = tok.encode(&back).map_err(|e| format!("encode {back:?}: {e}"))?;
            if again != ids {
                return Err(format!(
                    "decode is not a fixed point for {text:?}: {ids:?} -> {back:?} -> {again:?}"
                ));
            }
        }
        Ok(())
    }

    /// Saving, then loading into a fresh tokenizer, gives the same vocabulary, specials, hash
    /// and encodings; saving the loaded tokenizer writes identical bytes.
    pub fn check_save_load(
        tok: &dyn Tokenizer,
        make: &mut dyn FnMut() -> Box<dyn Tokenizer>,
        dir: &Path,
        samples: &[String],
    ) -> Result<(), String> {
        let first = dir.join("conformance-tokenizer.json");
        tok.save(&first).map_err(|e| format!("save: {e}"))?;
        let mut loaded = make();
        loaded.load(&first).map_err(|e| format!("load: {e}"))?;
        if loaded.vocab_size() != tok.vocab_size() {
            return Err(format!(
                "vocab size {} after load, {} before",
                loaded.vocab_size(),
                tok.vocab_size()
            ));
        }
        if loaded.special_tokens() != tok.special_tokens() {
            return Err("special tokens changed through save/load".into());
        }
        if loaded.content_hash() != tok.content_hash() {
            return Err("content hash changed through save/load".into());
        }
        for s in samples {
            let a = tok.encode(s).map_err(|e| e.to_string())?;
            let b = loaded.encode(s).map_err(|e| e.to_string())?;
            if a != b {
                return Err(format!("encoding of {s:?} changed through save/load"));
            }
        }
        let second = dir.join("conformance-tokenizer-2.json");
        loaded.save(&second).map_err(|e| format!("save again: {e}"))?;
        let (a, b) = (std::fs::read(&first), std::fs::read(&second));
        match (a, b) {
            (Ok(a), Ok(b)) if a == b => Ok(()),
            (Ok(_), Ok(_)) => Err("saving a loaded tokenizer does not write the same bytes".into()),
            (Err(e), _) | (_, Err(e)) => Err(format!("read back: {e}")),
        }
    }

    /// The content hash is a SHA-256 hex digest, equal for two trainings on the same corpus and
    /// different for a different corpus.
    pub fn check_hash_stability(
        make: &mut dyn FnMut() -> Box<dyn Tokenizer>,
        corpus: &[String],
    ) -> Result<(), String> {
        let a = trained(make, corpus)?.content_hash();
        let b = trained(make, corpus)?.content_hash();
        if a.len() != 64 || !a.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(format!("content hash {a:?} is not 64 hex digits"));
        }
        if a != b {
            return Err(format!("training twice on the same corpus gave hashes {a} and {b}"));
        }
        let mut other = corpus.to_vec();
        other.push("[USER] zebra quokka marmot [INTENT] {}".into());
        other.push("[USER] zebra quokka marmot [INTENT] {}".into());
        let c = trained(make, &other)?.content_hash();
        if c == a {
            return Err("a different corpus gave the same content hash".into());
        }
        Ok(())
    }

    /// Loading truncated, bit-flipped or garbage files never panics; truncated and garbage files
    /// are refused.
    pub fn check_corrupt_files(
        tok: &dyn Tokenizer,
        make: &mut dyn FnMut() -> Box<dyn Tokenizer>,
        dir: &Path,
    ) -> Result<(), String> {
        let good = dir.join("conformance-good.json");
        tok.save(&good).map_err(|e| format!("save: {e}"))?;
        let bytes = std::fs::read(&good).map_err(|e| e.to_string())?;
        let body_len =
            bytes.len() - bytes.iter().rev().take_while(|b| b.is_ascii_whitespace()).count();
        let bad = dir.join("conformance-bad.json");
        let step = (body_len / 40).max(1);
        for cut in (1..body_len).step_by(step) {
            std::fs::write(&bad, &bytes[..cut]).map_err(|e| e.to_string())?;
            if make().load(&bad).is_ok() {
                return Err(format!("a file truncated to {cut} bytes was accepted"));
            }
        }
        for pos in (0..bytes.len()).step_by(step) {
            let mut flipped = bytes.clone();
            flipped[pos] ^= 0x04;
            std::fs::write(&bad, &flipped).map_err(|e| e.to_string())?;
            // Must return (Ok or Err), not panic.
            let _ = make().load(&bad);
        }
        for garbage in [&b""[..], b"null", b"{}", b"[1,2,3]", b"\xff\xfe\x00"] {
            std::fs::write(&bad, garbage).map_err(|e| e.to_string())?;
            if make().load(&bad).is_ok() {
                return Err(format!("garbage {:?} was accepted", String::from_utf8_lossy(garbage)));
            }
        }
        if make().load(&dir.join("does-not-exist.json")).is_ok() {
            return Err("a missing file was accepted".into());
        }
        Ok(())
    }

    /// Trains on [`sample_corpus`] and runs every check, writing files under `dir`.
    pub fn run_all(make: &mut dyn FnMut() -> Box<dyn Tokenizer>, dir: &Path) -> Result<(), String> {
        let corpus = sample_corpus();
        let tok = trained(make, &corpus)?;
        check_specials(tok.as_ref())?;
        check_round_trip(
            tok.as_ref(),
            &corpus,
            &[
                "navigate to zanzibar",
                "[USER] hello world [INTENT] {\"x\":1}",
                "",
                "  spaced   out ",
            ],
        )?;
        check_save_load(tok.as_ref(), make, dir, &corpus)?;
        check_hash_stability(make, &corpus)?;
        check_corrupt_files(tok.as_ref(), make, dir)?;
        Ok(())
    }
}
