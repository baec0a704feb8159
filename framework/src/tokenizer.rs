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
