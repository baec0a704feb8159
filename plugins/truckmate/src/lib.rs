//! TruckMate, the reference use case: an in-cab voice assistant whose model reads what a truck
//! driver said and writes the intent with its slots.
//!
//! - [`corpus`]: the synthetic corpus generator and its train/validation/test splits;
//! - [`eval`]: greedy decoding after `[INTENT]` and the intent, slot and JSON metrics;
//! - [`confidence`]: the model's probability of the intent it decoded;
//! - [`answer`]: one utterance to an answer with confidence and abstention (`classify`, `serve`).
//!
//! Files are laid out in a data directory as described in
//! [`bitnet_runtime::data::dir`]; [`write_corpus`] writes the three split files and
//! [`write_manifest`] records which generator options (and which hand-written training
//! files, [`corpus::extra`]) made them.

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

/// The file in a data directory that records the generator options of its corpus.
pub const MANIFEST_FILE: &str = "corpus.txt";

/// Records the corpus recipe `describe` (as [`corpus::CorpusOptions::describe`], followed by
/// [`corpus::extra::ExtraTrain::describe`] when hand-written lines were added) in
/// `DIR/corpus.txt`.
pub fn write_manifest(dir: &DataDir, describe: &str) -> Result<(), DataError> {
    let path = dir.root().join(MANIFEST_FILE);
    std::fs::write(&path, format!("{describe}\n"))
        .map_err(|source| DataError::Io { path: path.display().to_string(), source })
}

/// The generator options recorded in `DIR/corpus.txt`, if the file exists.
pub fn read_manifest(dir: &DataDir) -> Result<Option<String>, DataError> {
    let path = dir.root().join(MANIFEST_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Some(text.trim().to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(DataError::Io { path: path.display().to_string(), source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_manifest_records_the_generator_options() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = DataDir::new(tmp.path().join("data"));
        let options = corpus::CorpusOptions::new(60, 4);
        write_corpus(&dir, &options.generate().expect("generate")).expect("write");
        assert_eq!(read_manifest(&dir).expect("read"), None);
        write_manifest(&dir, &options.describe()).expect("manifest");
        let recorded = read_manifest(&dir).expect("read");
        assert_eq!(
            recorded.as_deref(),
            Some("generator cab revision 6 count 60 seed 4 none_share 0.1")
        );
    }
}
