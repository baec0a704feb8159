//! TruckMate, the reference use case: an in-cab voice assistant whose model reads what a truck
//! driver said and writes the intent with its slots.
//!
//! - [`corpus`]: the synthetic corpus generator and its train/validation/test splits;
//! - [`eval`]: greedy decoding after `[INTENT]` and the intent, slot and JSON metrics;
//! - [`confidence`]: the model's probability of the intent it decoded;
//! - [`answer`]: one utterance to an answer with confidence and abstention (`classify`, `serve`).
//!
//! Files are laid out in a data directory as described in
//! [`bitnet_runtime::data::dir`]; [`write_corpus`] writes the three split files.

pub mod answer;
pub mod confidence;
pub mod corpus;
pub mod eval;
pub mod eval_set;

use bitnet_runtime::data::{DataDir, DataError, Split};

/// Writes the corpus splits as `DIR/{train,validation,test}.txt`, one example per line.
pub fn write_corpus(dir: &DataDir, corpus: &corpus::Corpus) -> Result<(), DataError> {
    std::fs::create_dir_all(dir.root())
        .map_err(|source| DataError::Io { path: dir.root().display().to_string(), source })?;
    for (split, lines) in [
        (Split::Train, &corpus.train),
        (Split::Validation, &corpus.validation),
        (Split::Test, &corpus.test),
    ] {
        let path = dir.split_text(split);
        let mut text = lines.join("\n");
        text.push('\n');
        std::fs::write(&path, text)
            .map_err(|source| DataError::Io { path: path.display().to_string(), source })?;
    }
    Ok(())
}
