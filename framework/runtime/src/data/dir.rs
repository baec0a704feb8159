//! The layout of a data directory (the run config's `data.dir`):
//!
//! ```text
//! DIR/train.txt                         corpus splits, one example per line:
//! DIR/validation.txt                    [USER] <utterance> [INTENT] {"intent":...,"slots":{...}}
//! DIR/test.txt
//! DIR/tokenizer-<type>.json             the trained tokenizer of plugin <type> (word-level, bpe)
//! DIR/shards/<type>/<split>-NNNN.bin    token shards of that tokenizer (see `shard`)
//! DIR/shards/<type>/<split>-NNNN.bin.sha256
//! ```
//!
//! Shards live under the tokenizer's name, so swapping the `[tokenizer]` slot never reads shards
//! written by another tokenizer (and the vocabulary hash in every shard catches a retrained one).

use super::DataError;
use super::loader::{LoaderOptions, PackedLoader};
use super::shard::{ShardReader, VocabHash, WrittenShard, sidecar_path, write_shard};
use bitnet_framework::tokenizer::Tokenizer;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A corpus split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Split {
    /// Training examples.
    Train,
    /// Held-out examples for model selection.
    Validation,
    /// Held-out examples for the final figures.
    Test,
}

impl Split {
    /// Every split, in order.
    pub const ALL: [Split; 3] = [Split::Train, Split::Validation, Split::Test];

    /// File-name stem.
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Validation => "validation",
            Split::Test => "test",
        }
    }
}

impl std::str::FromStr for Split {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Split::ALL
            .into_iter()
            .find(|x| x.name() == s)
            .ok_or_else(|| format!("unknown split `{s}`: expected train, validation or test"))
    }
}

impl std::fmt::Display for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Paths inside a data directory (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// The data directory at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The text file of `split`.
    pub fn split_text(&self, split: Split) -> PathBuf {
        self.root.join(format!("{}.txt", split.name()))
    }

    /// The saved tokenizer of plugin `kind`.
    pub fn tokenizer_file(&self, kind: &str) -> PathBuf {
        self.root.join(format!("tokenizer-{kind}.json"))
    }

    /// Directory of the shards written with tokenizer `kind`.
    pub fn shard_dir(&self, kind: &str) -> PathBuf {
        self.root.join("shards").join(kind)
    }

    /// Shard number `n` of `split`.
    pub fn shard_path(&self, kind: &str, split: Split, n: usize) -> PathBuf {
        self.shard_dir(kind).join(format!("{}-{n:04}.bin", split.name()))
    }

    /// Existing shards of `split`, in order.
    pub fn shard_paths(&self, kind: &str, split: Split) -> Result<Vec<PathBuf>, DataError> {
        let dir = self.shard_dir(kind);
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(DataError::Io { path: dir.display().to_string(), source }),
        };
        let prefix = format!("{}-", split.name());
        let mut out: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                    n.strip_prefix(&prefix)
                        .and_then(|r| r.strip_suffix(".bin"))
                        .is_some_and(|d| d.len() == 4 && d.bytes().all(|b| b.is_ascii_digit()))
                })
            })
            .collect();
        out.sort();
        Ok(out)
    }

    /// Opens and verifies every shard of `split` against the tokenizer's vocabulary hash.
    pub fn open_split(
        &self,
        kind: &str,
        split: Split,
        vocab: &VocabHash,
    ) -> Result<Vec<Arc<ShardReader>>, DataError> {
        let paths = self.shard_paths(kind, split)?;
        if paths.is_empty() {
            return Err(DataError::Empty(format!(
                "no {split} shards in {}: run `bitnet tokenize-corpus` first",
                self.shard_dir(kind).display()
            )));
        }
        paths.iter().map(|p| ShardReader::open(p, vocab).map(Arc::new)).collect()
    }

    /// A [`PackedLoader`] over `split`'s shards written with tokenizer plugin `kind`, verified
    /// against `tokenizer` (its vocabulary hash) and using its special tokens.
    pub fn loader(
        &self,
        kind: &str,
        split: Split,
        tokenizer: &dyn Tokenizer,
        options: LoaderOptions,
    ) -> Result<PackedLoader, DataError> {
        let vocab = VocabHash::from_hex(&tokenizer.content_hash()).map_err(|reason| {
            DataError::Invalid { path: self.tokenizer_file(kind).display().to_string(), reason }
        })?;
        let shards = self.open_split(kind, split, &vocab)?;
        PackedLoader::new(shards, tokenizer.special_tokens(), options)
    }

    /// Reads the lines of `split`'s text file (empty lines skipped).
    pub fn read_split(&self, split: Split) -> Result<Vec<String>, DataError> {
        let p = self.split_text(split);
        let text = std::fs::read_to_string(&p)
            .map_err(|source| DataError::Io { path: p.display().to_string(), source })?;
        Ok(text.lines().filter(|l| !l.trim().is_empty()).map(str::to_string).collect())
    }
}

/// Tokenizes `lines` as `[BOS] encode(line) [EOS]` examples into shards of at most
/// `shard_tokens` tokens (an example is never split across shards), replacing the split's
/// previous shards. `kind` is the tokenizer's plugin name.
pub fn write_split_shards(
    dir: &DataDir,
    kind: &str,
    split: Split,
    tokenizer: &dyn Tokenizer,
    lines: &[String],
    shard_tokens: usize,
) -> Result<Vec<WrittenShard>, DataError> {
    let vocab = VocabHash::from_hex(&tokenizer.content_hash()).map_err(|reason| {
        DataError::Invalid { path: dir.tokenizer_file(kind).display().to_string(), reason }
    })?;
    let vocab_size = u32::try_from(tokenizer.vocab_size()).map_err(|_| DataError::Invalid {
        path: dir.tokenizer_file(kind).display().to_string(),
        reason: "vocabulary does not fit 32-bit ids".into(),
    })?;
    for old in dir.shard_paths(kind, split)? {
        for p in [sidecar_path(&old), old] {
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(DataError::Io { path: p.display().to_string(), source });
                }
            }
        }
    }
    let sp = tokenizer.special_tokens();
    let mut written = Vec::new();
    let mut buf: Vec<u32> = Vec::new();
    let split_file = dir.split_text(split).display().to_string();
    for (i, line) in lines.iter().enumerate() {
        let ids = tokenizer.encode(line).map_err(|e| DataError::Invalid {
            path: split_file.clone(),
            reason: format!("line {}: {e}", i + 1),
        })?;
        if !buf.is_empty() && buf.len() + ids.len() + 2 > shard_tokens {
            let p = dir.shard_path(kind, split, written.len());
            written.push(write_shard(&p, &buf, vocab_size, vocab)?);
            buf.clear();
        }
        buf.push(sp.bos);
        buf.extend_from_slice(&ids);
        buf.push(sp.eos);
    }
    if !buf.is_empty() || written.is_empty() {
        let p = dir.shard_path(kind, split, written.len());
        written.push(write_shard(&p, &buf, vocab_size, vocab)?);
    }
    Ok(written)
}
