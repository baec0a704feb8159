//! Hand-written utterances mixed into the training split (`data.extra_train`).
//!
//! A generator only teaches what its authors thought of; utterances people wrote teach how
//! they talk. [`ExtraTrain`] reads labelled JSON-lines files (the form `bitnet eval --set`
//! reads, [`parse_eval_set`]), writes each utterance as a corpus line (cleaned as `classify`
//! cleans free text) and adds it `copies` times to the **training** split, shuffled in with the
//! generated lines so that every shard and every distributed task sees some. Validation and test
//! stay the generator's. The recipe (file names, their SHA-256 and the copies) goes into the data
//! directory's manifest, so a changed file makes the directory's corpus stale instead of silently
//! reused.
//!
//! The shipped hand-written **test** set never trains: a file holding any of its utterances is
//! refused, by line.

use super::corpus_line;
use crate::eval::clean_utterance;
use crate::eval_set::{EvalSetError, LabelledUtterance, MAX_FILE_BYTES, parse_eval_set};
use bitnet_framework::store::sha256_hex;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Most times one utterance may be added (the config's bound).
pub const MAX_COPIES: usize = bitnet_runtime::config::MAX_EXTRA_TRAIN_COPIES;
/// Most files in `data.extra_train`.
pub const MAX_FILES: usize = 64;

/// The shipped hand-written test set, which no training split may hold.
const TEST_SET: &str = include_str!("../../data/handwritten-eval.jsonl");

/// Why the extra training utterances were refused.
#[derive(Debug, thiserror::Error)]
pub enum ExtraTrainError {
    /// `copies` is outside `1..=MAX_COPIES`.
    #[error("data.extra_train_copies must be 1 to {MAX_COPIES}, got {0}")]
    Copies(usize),
    /// More files than [`MAX_FILES`].
    #[error("data.extra_train names {0} files; at most {MAX_FILES}")]
    TooManyFiles(usize),
    /// A file could not be read.
    #[error("data.extra_train: reading {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What failed.
        source: std::io::Error,
    },
    /// A file is not a labelled set.
    #[error("data.extra_train: {path}: {source}")]
    Parse {
        /// The file.
        path: String,
        /// What is wrong, by line.
        source: EvalSetError,
    },
    /// A file holds an utterance of the hand-written test set.
    #[error(
        "data.extra_train: {path} line {line}: {utterance:?} is in the hand-written test set \
         (handwritten-eval.jsonl), which never trains"
    )]
    TestUtterance {
        /// The file.
        path: String,
        /// 1-based line.
        line: usize,
        /// The utterance, cleaned.
        utterance: String,
    },
}

/// One file of extra training utterances.
#[derive(Debug, Clone, PartialEq)]
pub struct ExtraSet {
    /// The file's name (without its directory), as the manifest records it.
    pub name: String,
    /// SHA-256 of the file's bytes, hex.
    pub sha256: String,
    /// Its labelled utterances.
    pub items: Vec<LabelledUtterance>,
}

/// Hand-written utterances to add to the training split, and how many times.
#[derive(Debug, Clone, PartialEq)]
pub struct ExtraTrain {
    /// The files, in config order.
    pub sets: Vec<ExtraSet>,
    /// Times each utterance is added.
    pub copies: usize,
}

impl ExtraTrain {
    /// Reads `paths` (`None` when there are none); each file is bounded by the eval-set limits.
    pub fn load(paths: &[PathBuf], copies: usize) -> Result<Option<Self>, ExtraTrainError> {
        if paths.is_empty() {
            return Ok(None);
        }
        if paths.len() > MAX_FILES {
            return Err(ExtraTrainError::TooManyFiles(paths.len()));
        }
        let mut named = Vec::with_capacity(paths.len());
        for path in paths {
            named.push((path.display().to_string(), read_bounded(path)?));
        }
        Self::from_texts(&named, copies).map(Some)
    }

    /// From `(path, contents)` pairs: parsed, checked against the test set, hashed.
    pub fn from_texts(named: &[(String, String)], copies: usize) -> Result<Self, ExtraTrainError> {
        if !(1..=MAX_COPIES).contains(&copies) {
            return Err(ExtraTrainError::Copies(copies));
        }
        if named.len() > MAX_FILES {
            return Err(ExtraTrainError::TooManyFiles(named.len()));
        }
        let test = test_utterances();
        let mut sets = Vec::with_capacity(named.len());
        for (path, text) in named {
            let items = parse_eval_set(text)
                .map_err(|source| ExtraTrainError::Parse { path: path.clone(), source })?;
            for item in &items {
                let utterance = clean_utterance(&item.utterance);
                if !utterance.is_empty() && test.contains(&utterance) {
                    return Err(ExtraTrainError::TestUtterance {
                        path: path.clone(),
                        line: item.line,
                        utterance,
                    });
                }
            }
            let name = Path::new(path)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| path.clone());
            let sha256 = sha256_hex(text.as_bytes());
            sets.push(ExtraSet { name, sha256, items });
        }
        Ok(Self { sets, copies })
    }

    /// The recipe as the manifest records it: `extra_train NAME@SHA12 ... copies N`.
    pub fn describe(&self) -> String {
        let files: Vec<String> =
            self.sets.iter().map(|s| format!("{}@{}", s.name, &s.sha256[..12])).collect();
        format!("extra_train {} copies {}", files.join(" "), self.copies)
    }

    /// Utterances over all files (each counted once).
    pub fn len(&self) -> usize {
        self.sets.iter().map(|s| s.items.len()).sum()
    }

    /// Whether no file holds an utterance (never true for a loaded recipe: an empty file is
    /// refused).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// One corpus line per utterance, in file order: the utterance cleaned as `classify`
    /// cleans free text, and its answer in the corpus's form.
    pub fn lines(&self) -> Vec<String> {
        self.sets
            .iter()
            .flat_map(|s| &s.items)
            .map(|item| corpus_line(&clean_utterance(&item.utterance), &item.answer_json()))
            .collect()
    }

    /// Adds every line `copies` times to `train` and shuffles the whole split with `seed`
    /// (byte-identical for the same inputs), so the hand-written lines spread over every shard.
    pub fn mix_into(&self, train: &mut Vec<String>, seed: u64) {
        let lines = self.lines();
        train.reserve(lines.len() * self.copies);
        for _ in 0..self.copies {
            train.extend(lines.iter().cloned());
        }
        // A stream of its own, so the generator's draws with the same seed are not repeated.
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x6578_7472_615f_7472);
        train.shuffle(&mut rng);
    }
}

/// Reads at most [`MAX_FILE_BYTES`] + 1 bytes, so a huge file costs bounded memory and is then
/// refused by the parser's size check.
fn read_bounded(path: &Path) -> Result<String, ExtraTrainError> {
    let io = |source| ExtraTrainError::Io { path: path.display().to_string(), source };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES as u64 + 1).read_to_end(&mut bytes).map_err(io)?;
    String::from_utf8(bytes).map_err(|e| {
        io(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("not UTF-8: {e}")))
    })
}

/// The test set's utterances, cleaned (the shipped file parses: a test checks it).
fn test_utterances() -> BTreeSet<String> {
    parse_eval_set(TEST_SET)
        .map(|items| items.iter().map(|i| clean_utterance(&i.utterance)).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SET: &str = concat!(
        r#"{"utterance": "Take me to El Paso, TX!", "intent": "navigate", "slots": {"state": "tx", "city": "el paso"}}"#,
        "\n",
        r#"{"utterance": "", "intent": "none", "slots": {}}"#,
        "\n",
        r#"{"utterance": "what's the game score", "intent": "none"}"#,
        "\n"
    );

    fn named(text: &str) -> Vec<(String, String)> {
        vec![("sets/extra.jsonl".to_string(), text.to_string())]
    }

    #[test]
    fn lines_are_corpus_lines_with_sorted_slots() {
        let extra = ExtraTrain::from_texts(&named(SET), 2).expect("valid");
        assert_eq!(extra.len(), 3);
        assert_eq!(
            extra.lines(),
            vec![
                r#"[USER] take me to el paso tx [INTENT] {"intent":"navigate","slots":{"city":"el paso","state":"tx"}}"#,
                r#"[USER] [INTENT] {"intent":"none","slots":{}}"#,
                r#"[USER] what's the game score [INTENT] {"intent":"none","slots":{}}"#,
            ]
        );
        for line in extra.lines() {
            assert!(crate::corpus::parse_line(&line).is_some(), "{line}");
        }
        let sha = sha256_hex(SET.as_bytes());
        assert_eq!(extra.describe(), format!("extra_train extra.jsonl@{} copies 2", &sha[..12]));
    }

    #[test]
    fn mixing_adds_every_copy_and_is_deterministic() {
        let extra = ExtraTrain::from_texts(&named(SET), 3).expect("valid");
        let generated: Vec<String> = (0..50).map(|i| format!("line {i}")).collect();
        let mut a = generated.clone();
        extra.mix_into(&mut a, 42);
        let mut b = generated.clone();
        extra.mix_into(&mut b, 42);
        assert_eq!(a, b, "same seed, same split");
        assert_eq!(a.len(), 50 + 3 * 3);
        for line in extra.lines() {
            assert_eq!(a.iter().filter(|l| **l == line).count(), 3, "{line}");
        }
        for line in &generated {
            assert!(a.contains(line));
        }
        let mut c = generated.clone();
        extra.mix_into(&mut c, 43);
        assert_ne!(a, c, "another seed shuffles otherwise");
        // Spread over the split, not appended at its end.
        let first = a.iter().position(|l| !l.starts_with("line ")).expect("some extra line");
        assert!(first < 45, "extra lines start at {first}");
    }

    #[test]
    fn bad_recipes_are_refused_by_name() {
        let copies = ExtraTrain::from_texts(&named(SET), 0).expect_err("zero copies");
        assert!(copies.to_string().contains("extra_train_copies"), "{copies}");
        assert!(ExtraTrain::from_texts(&named(SET), MAX_COPIES + 1).is_err());
        let bad = ExtraTrain::from_texts(&named("{\"utterance\": 3}\n"), 1).expect_err("bad line");
        assert!(bad.to_string().contains("sets/extra.jsonl: line 1"), "{bad}");
        let empty = ExtraTrain::from_texts(&named("\n\n"), 1).expect_err("empty");
        assert!(empty.to_string().contains("no utterance"), "{empty}");
        let many = vec![("a".to_string(), SET.to_string()); MAX_FILES + 1];
        assert!(matches!(ExtraTrain::from_texts(&many, 1), Err(ExtraTrainError::TooManyFiles(_))));
        let missing = ExtraTrain::load(&[PathBuf::from("/nonexistent/extra.jsonl")], 1)
            .expect_err("missing file");
        assert!(missing.to_string().contains("/nonexistent/extra.jsonl"), "{missing}");
        assert_eq!(ExtraTrain::load(&[], 1).expect("no files"), None);
    }

    #[test]
    fn the_test_set_never_trains() {
        let first = parse_eval_set(TEST_SET)
            .expect("parses")
            .into_iter()
            .find(|i| !clean_utterance(&i.utterance).is_empty());
        let first = first.expect("a test utterance");
        let line = serde_json::json!({
            "utterance": first.utterance.to_uppercase(),
            "intent": first.intent,
            "slots": first.slots,
        });
        let text = format!("{}\n{line}\n", SET.lines().next().unwrap_or_default());
        let err = ExtraTrain::from_texts(&named(&text), 1).expect_err("a test utterance");
        assert!(matches!(&err, ExtraTrainError::TestUtterance { line: 2, .. }), "{err}");
    }

    #[test]
    fn the_shipped_development_sets_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("data");
        let paths: Vec<PathBuf> = crate::eval_set::DEVELOPMENT_SETS
            .iter()
            .map(|(name, ..)| dir.join(format!("{name}.jsonl")))
            .collect();
        let extra = ExtraTrain::load(&paths, 3).expect("loads").expect("some files");
        assert_eq!(extra.sets.len(), 5);
        assert!(extra.len() > 2_700, "{}", extra.len());
        let test = ExtraTrain::load(&[dir.join("handwritten-eval.jsonl")], 1);
        assert!(matches!(test, Err(ExtraTrainError::TestUtterance { .. })), "{test:?}");
    }
}
