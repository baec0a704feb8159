//! BPE tokenizer files (`Bpe::from_json_bytes`: our envelope around a `tokenizers` JSON).
//!
//! A file whose only fault is its content hash is re-tried with the hash the decoder computed,
//! so mutations reach the `tokenizers` deserialiser and the special-token checks. Loaded
//! tokenizers must save and load back with the same hash, and encode and decode arbitrary text
//! without panicking.
#![no_main]

use bitnet_framework::tokenizer::Tokenizer;
use bitnet_fuzz::{load_resealed, write_seeds};
use bitnet_tokenizer_bpe::{Bpe, BpeConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: {
        let mut t = Bpe::new(BpeConfig { max_vocab: 300, ..BpeConfig::default() });
        let lines = ["the cat sat on the mat", "{\"a\": 12, \"b\": [1, 2]}", "the dog ran"];
        let mut it = lines.iter().map(|s| s.to_string());
        if t.train(&mut it).is_ok()
            && let Ok(json) = t.to_json()
        {
            write_seeds(&[("trained", json.into_bytes())]);
        }
    },
    |bytes: &[u8]| {
        let Some(loaded) = load_resealed(bytes, |b| Bpe::from_json_bytes(b, BpeConfig::default()))
        else {
            return;
        };
        let json = loaded.to_json().expect("a loaded tokenizer saves");
        let again = Bpe::from_json_bytes(json.as_bytes(), BpeConfig::default())
            .expect("a saved tokenizer loads back");
        assert_eq!(again.content_hash(), loaded.content_hash());
        let text = String::from_utf8_lossy(bytes);
        if let Ok(ids) = loaded.encode(&text) {
            let _ = loaded.decode(&ids);
        }
    }
);
