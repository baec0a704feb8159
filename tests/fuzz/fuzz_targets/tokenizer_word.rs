//! Word-level tokenizer files (`WordLevel::from_json_bytes`, what `Tokenizer::load` reads).
//!
//! A file whose only fault is its content hash is re-tried with the hash the decoder computed,
//! so mutations reach the token checks behind it. Loaded tokenizers must save and load back
//! with the same hash, and encode and decode arbitrary text without panicking.
#![no_main]

use bitnet_framework::tokenizer::Tokenizer;
use bitnet_fuzz::{load_resealed, write_seeds};
use bitnet_tokenizer_word::{WordLevel, WordLevelConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: {
        let mut t = WordLevel::new(WordLevelConfig::default());
        let lines = ["the cat sat on the mat", "{\"a\": 12, \"b\": [1, 2]}", "the dog"];
        let mut it = lines.iter().map(|s| s.to_string());
        let _ = t.train(&mut it);
        write_seeds(&[("trained", t.to_json().into_bytes())]);
    },
    |bytes: &[u8]| {
        let Some(loaded) = load_resealed(bytes, |b| WordLevel::from_json_bytes(b, WordLevelConfig::default()))
        else {
            return;
        };
        let again = WordLevel::from_json_bytes(loaded.to_json().as_bytes(), WordLevelConfig::default())
            .expect("a loaded tokenizer saves and loads back");
        assert_eq!(again.content_hash(), loaded.content_hash());
        let text = String::from_utf8_lossy(bytes);
        if let Ok(ids) = loaded.encode(&text) {
            assert!(ids.iter().all(|&i| (i as usize) < loaded.vocab_size()));
            let _ = loaded.decode(&ids);
        }
    }
);
