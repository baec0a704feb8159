//! Training data as the trainers see it: batches of token windows.
//!
//! Token shards ([`shard`]), the data directory layout ([`dir`]) and the loader that packs
//! examples into windows ([`loader`]) live here too; trainers only depend on [`BatchSource`].

pub mod dir;
pub mod loader;
pub mod shard;

pub use dir::{DataDir, Split};
pub use loader::{LoaderOptions, PackedLoader, Slice};
pub use shard::{ShardReader, VocabHash};

use bitnet_framework::model::TokenBatch;

/// Where a batch source stands, saved in checkpoints so training resumes exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct SourcePosition {
    /// Epoch (each epoch reshuffles).
    pub epoch: u64,
    /// Windows handed out so far in this epoch.
    pub cursor: u64,
}

/// Errors reading training data.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The data has no usable window.
    #[error("no training windows: {0}")]
    Empty(String),
    /// Anything wrong with a file (names the file and the problem).
    #[error("{path}: {reason}")]
    Invalid {
        /// File.
        path: String,
        /// What was wrong.
        reason: String,
    },
    /// I/O.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
}

/// Owned storage for one batch, reused across steps.
#[derive(Debug, Clone, Default)]
pub struct BatchBuffer {
    /// Input ids, `batch * seq_len`.
    pub inputs: Vec<u32>,
    /// Target ids, `batch * seq_len` ([`bitnet_framework::model::IGNORE_INDEX`] = not counted).
    pub targets: Vec<u32>,
    /// Sequences.
    pub batch: usize,
    /// Tokens per sequence.
    pub seq_len: usize,
}

impl BatchBuffer {
    /// A borrowed view for the kernel.
    pub fn view(&self) -> TokenBatch<'_> {
        TokenBatch {
            inputs: &self.inputs,
            targets: &self.targets,
            batch: self.batch,
            seq_len: self.seq_len,
        }
    }
}

/// An endless, deterministic stream of training batches.
pub trait BatchSource: Send {
    /// Fills `out` with the next `batch` windows of `seq_len` tokens.
    fn next_batch(
        &mut self,
        batch: usize,
        seq_len: usize,
        out: &mut BatchBuffer,
    ) -> Result<(), DataError>;
    /// Current position (for checkpoints).
    fn position(&self) -> SourcePosition;
    /// Moves to a position saved earlier.
    fn seek(&mut self, position: SourcePosition) -> Result<(), DataError>;
}
