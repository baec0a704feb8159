//! Token shards: the header parser (`parse_header`), the checksum sidecar (`parse_sidecar`) and
//! the full verifying reader (`ShardReader::open`, on a scratch file).
//!
//! Mode bit 0: write a sidecar with the right SHA-256, so the reader gets past the checksum and
//! checks every token; otherwise the sidecar holds the input itself.
#![no_main]

use bitnet_fuzz::{mode, scratch_dir, write_seeds};
use bitnet_runtime::data::shard::{
    HEADER_LEN, ShardHeader, ShardReader, TokenDtype, VocabHash, parse_header, parse_sidecar,
    sidecar_path,
};
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};

fn shard(dtype: TokenDtype, vocab_size: u32, tokens: &[u32]) -> Vec<u8> {
    let header = ShardHeader {
        dtype,
        vocab_size,
        vocab_hash: VocabHash([7; 32]),
        token_count: tokens.len() as u64,
    };
    let mut out = header.to_bytes().to_vec();
    for t in tokens {
        match dtype {
            TokenDtype::U16 => out.extend_from_slice(&(*t as u16).to_le_bytes()),
            TokenDtype::U32 => out.extend_from_slice(&t.to_le_bytes()),
        }
    }
    out
}

fuzz_target!(
    init: {
        let tokens: Vec<u32> = (0..40).map(|i| (i * 7) % 50).collect();
        write_seeds(&[
            ("u16", [vec![1], shard(TokenDtype::U16, 50, &tokens)].concat()),
            ("u32", [vec![1], shard(TokenDtype::U32, 70_000, &tokens)].concat()),
            ("empty", [vec![1], shard(TokenDtype::U16, 1, &[])].concat()),
        ]);
    },
    |data: &[u8]| {
        let Some((mode, bytes)) = mode(data) else { return };
        let _ = parse_sidecar(&String::from_utf8_lossy(bytes));
        let Ok(header) = parse_header(bytes) else { return };
        assert_eq!(
            HEADER_LEN as u64 + header.token_count * header.dtype.width() as u64,
            bytes.len() as u64
        );
        assert_eq!(header.to_bytes()[..], bytes[..HEADER_LEN]);

        let path = scratch_dir().join("shard.bin");
        if std::fs::write(&path, bytes).is_err() {
            return;
        }
        let sidecar = if mode & 1 == 1 {
            format!("{}  shard.bin\n", hex_of(&Sha256::digest(bytes)))
        } else {
            String::from_utf8_lossy(bytes).into_owned()
        };
        if std::fs::write(sidecar_path(&path), sidecar).is_err() {
            return;
        }
        if let Ok(reader) = ShardReader::open(&path, &header.vocab_hash) {
            let tokens = reader.to_vec();
            assert_eq!(tokens.len() as u64, header.token_count);
            assert!(tokens.iter().all(|&t| t < header.vocab_size));
        }
    }
);

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
