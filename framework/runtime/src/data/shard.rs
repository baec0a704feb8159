//! Token shards: a small, documented binary format for tokenized corpora, read memory-mapped.
//!
//! # Format (version 1)
//!
//! All integers are little-endian. The header is 64 bytes:
//!
//! | offset | size | field |
//! | ---: | ---: | --- |
//! | 0 | 8 | magic `BNTSHARD` |
//! | 8 | 4 | format version (`1`) |
//! | 12 | 4 | dtype: `1` = u16 tokens, `2` = u32 tokens |
//! | 16 | 4 | vocabulary size (every token is below it) |
//! | 20 | 4 | reserved, zero |
//! | 24 | 32 | vocabulary hash: the tokenizer's SHA-256 content hash, raw bytes |
//! | 56 | 8 | token count `n` |
//!
//! Then `n` tokens of the dtype's width, and nothing else. The file's SHA-256 is written next to
//! it in `<file>.sha256` (`sha256sum` format: `<hex>  <file name>`). Shards are written to a
//! temporary name and renamed, so a reader never sees a half-written shard.
//!
//! [`ShardReader::open`] maps the file and refuses it, with a message naming the file and the
//! problem, when the magic, version, dtype, size, vocabulary hash or checksum does not match.
//! [`parse_header`] does the structural checks on bytes and is what the fuzz tests drive.

use super::DataError;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};

/// First eight bytes of every shard.
pub const MAGIC: [u8; 8] = *b"BNTSHARD";
/// The format version this code writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Size of the header in bytes.
pub const HEADER_LEN: usize = 64;

/// Width of the stored tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenDtype {
    /// Two bytes per token (vocabularies of at most 65,536 ids).
    U16,
    /// Four bytes per token.
    U32,
}

impl TokenDtype {
    /// The narrowest dtype that holds every id below `vocab_size`.
    pub fn for_vocab(vocab_size: usize) -> Self {
        if vocab_size <= (u16::MAX as usize) + 1 { TokenDtype::U16 } else { TokenDtype::U32 }
    }

    /// Bytes per token.
    pub fn width(self) -> usize {
        match self {
            TokenDtype::U16 => 2,
            TokenDtype::U32 => 4,
        }
    }

    fn code(self) -> u32 {
        match self {
            TokenDtype::U16 => 1,
            TokenDtype::U32 => 2,
        }
    }

    fn from_code(code: u32) -> Option<Self> {
        match code {
            1 => Some(TokenDtype::U16),
            2 => Some(TokenDtype::U32),
            _ => None,
        }
    }
}

/// The SHA-256 content hash of a tokenizer's vocabulary, as stored in shard headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VocabHash(pub [u8; 32]);

impl VocabHash {
    /// Parses the 64-character hex string returned by `Tokenizer::content_hash`.
    pub fn from_hex(hex_str: &str) -> Result<Self, String> {
        let bytes = hex::decode(hex_str.trim())
            .map_err(|e| format!("vocabulary hash `{hex_str}` is not hex: {e}"))?;
        let arr: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
            format!("vocabulary hash must be 32 bytes (SHA-256), got {}", b.len())
        })?;
        Ok(VocabHash(arr))
    }

    /// Lower-case hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl std::fmt::Display for VocabHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// The decoded header of a shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardHeader {
    /// Token width.
    pub dtype: TokenDtype,
    /// Vocabulary size; every token is below it.
    pub vocab_size: u32,
    /// Hash of the tokenizer that produced the tokens.
    pub vocab_hash: VocabHash,
    /// Number of tokens.
    pub token_count: u64,
}

impl ShardHeader {
    /// The 64 header bytes.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..8].copy_from_slice(&MAGIC);
        h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        h[12..16].copy_from_slice(&self.dtype.code().to_le_bytes());
        h[16..20].copy_from_slice(&self.vocab_size.to_le_bytes());
        h[24..56].copy_from_slice(&self.vocab_hash.0);
        h[56..64].copy_from_slice(&self.token_count.to_le_bytes());
        h
    }
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Checks the structure of a whole shard file held in `bytes`: magic, version, dtype, reserved
/// field, and that the length is exactly the header plus the announced tokens. Does not check
/// the vocabulary hash, the checksum or the token values (see [`ShardReader::open`]).
pub fn parse_header(bytes: &[u8]) -> Result<ShardHeader, String> {
    if bytes.len() < HEADER_LEN {
        return Err(format!(
            "truncated: {} bytes is shorter than the {HEADER_LEN}-byte shard header",
            bytes.len()
        ));
    }
    if bytes[0..8] != MAGIC {
        return Err(format!(
            "not a token shard: magic is {:?}, expected {:?}",
            String::from_utf8_lossy(&bytes[0..8]),
            String::from_utf8_lossy(&MAGIC)
        ));
    }
    let version = le_u32(bytes, 8);
    if version != FORMAT_VERSION {
        return Err(format!(
            "shard format version {version} is not supported (this build reads version {FORMAT_VERSION})"
        ));
    }
    let dtype_code = le_u32(bytes, 12);
    let dtype = TokenDtype::from_code(dtype_code)
        .ok_or_else(|| format!("unknown token dtype code {dtype_code} (1 = u16, 2 = u32)"))?;
    let vocab_size = le_u32(bytes, 16);
    if vocab_size == 0 {
        return Err("vocabulary size is zero".into());
    }
    if dtype == TokenDtype::U16 && vocab_size > u32::from(u16::MAX) + 1 {
        return Err(format!("vocabulary of {vocab_size} ids does not fit u16 tokens"));
    }
    if le_u32(bytes, 20) != 0 {
        return Err("reserved header field is not zero".into());
    }
    let mut hash = [0u8; 32];
    hash.copy_from_slice(&bytes[24..56]);
    let token_count = le_u64(bytes, 56);
    let expected = token_count
        .checked_mul(dtype.width() as u64)
        .and_then(|b| b.checked_add(HEADER_LEN as u64))
        .ok_or_else(|| format!("token count {token_count} overflows the file size"))?;
    if expected != bytes.len() as u64 {
        return Err(format!(
            "size mismatch: header announces {token_count} tokens ({expected} bytes) but the file has {} bytes{}",
            bytes.len(),
            if (bytes.len() as u64) < expected { " (truncated)" } else { "" }
        ));
    }
    Ok(ShardHeader { dtype, vocab_size, vocab_hash: VocabHash(hash), token_count })
}

/// Path of the SHA-256 sidecar of `shard`.
pub fn sidecar_path(shard: &Path) -> PathBuf {
    let mut name = shard.as_os_str().to_os_string();
    name.push(".sha256");
    PathBuf::from(name)
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DataError + '_ {
    move |source| DataError::Io { path: path.display().to_string(), source }
}

fn invalid(path: &Path, reason: impl Into<String>) -> DataError {
    DataError::Invalid { path: path.display().to_string(), reason: reason.into() }
}

/// What one written shard holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenShard {
    /// Path of the shard.
    pub path: PathBuf,
    /// Tokens written.
    pub tokens: u64,
    /// SHA-256 of the file (hex), as in the sidecar.
    pub sha256: String,
}

/// Writes `tokens` as a shard at `path` (atomically, through a temporary file) and its sidecar.
/// Refuses tokens outside the vocabulary.
pub fn write_shard(
    path: &Path,
    tokens: &[u32],
    vocab_size: u32,
    vocab_hash: VocabHash,
) -> Result<WrittenShard, DataError> {
    if vocab_size == 0 {
        return Err(invalid(path, "vocabulary size is zero"));
    }
    if let Some((i, t)) = tokens.iter().enumerate().find(|(_, t)| **t >= vocab_size) {
        return Err(invalid(
            path,
            format!("token {t} at index {i} is outside the vocabulary of {vocab_size}"),
        ));
    }
    let dtype = TokenDtype::for_vocab(vocab_size as usize);
    let header = ShardHeader { dtype, vocab_size, vocab_hash, token_count: tokens.len() as u64 };
    let mut bytes = Vec::with_capacity(HEADER_LEN + tokens.len() * dtype.width());
    bytes.extend_from_slice(&header.to_bytes());
    match dtype {
        TokenDtype::U16 => {
            // Every token is below vocab_size <= 65536, so it fits u16.
            for &t in tokens {
                bytes.extend_from_slice(&(t as u16).to_le_bytes());
            }
        }
        TokenDtype::U32 => {
            for &t in tokens {
                bytes.extend_from_slice(&t.to_le_bytes());
            }
        }
    }
    let sha = hex::encode(Sha256::digest(&bytes));
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| invalid(path, "shard path has no file name"))?;
    let tmp = path.with_file_name(format!(".{file_name}.tmp"));
    {
        let mut f = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(&bytes).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(io_err(path))?;
    let side = sidecar_path(path);
    std::fs::write(&side, format!("{sha}  {file_name}\n")).map_err(io_err(&side))?;
    Ok(WrittenShard { path: path.to_path_buf(), tokens: tokens.len() as u64, sha256: sha })
}

/// Reads the expected SHA-256 (hex) from a sidecar's text.
pub fn parse_sidecar(text: &str) -> Result<String, String> {
    let first = text.split_whitespace().next().ok_or("empty checksum file")?;
    if first.len() != 64 || !first.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("`{first}` is not a SHA-256 hex digest"));
    }
    Ok(first.to_ascii_lowercase())
}

/// A memory-mapped, verified token shard.
#[derive(Debug)]
pub struct ShardReader {
    path: PathBuf,
    map: memmap2::Mmap,
    header: ShardHeader,
}

impl ShardReader {
    /// Maps `path` and verifies it: structure ([`parse_header`]), the vocabulary hash against
    /// `expected_vocab` (the tokenizer in use), the SHA-256 sidecar, and that every token is
    /// inside the vocabulary. Any mismatch is refused with an error naming the file.
    pub fn open(path: &Path, expected_vocab: &VocabHash) -> Result<Self, DataError> {
        let file = std::fs::File::open(path).map_err(io_err(path))?;
        // SAFETY: the file is opened read-only and shards are immutable once written (writers
        // create a temporary file and rename it into place, never modify a shard in place). A
        // process truncating the file behind our back would break this, as with any mmap; the
        // data directory is owned by the run.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io_err(path))?;
        let header = parse_header(&map).map_err(|reason| invalid(path, reason))?;
        if header.vocab_hash != *expected_vocab {
            return Err(invalid(
                path,
                format!(
                    "vocabulary mismatch: shard was written with tokenizer {} but the tokenizer in use is {}; re-run `bitnet tokenize-corpus`",
                    header.vocab_hash, expected_vocab
                ),
            ));
        }
        let side = sidecar_path(path);
        let text = std::fs::read_to_string(&side).map_err(io_err(&side))?;
        let expected_sha = parse_sidecar(&text).map_err(|r| invalid(&side, r))?;
        let actual = hex::encode(Sha256::digest(&map[..]));
        if actual != expected_sha {
            return Err(invalid(
                path,
                format!("checksum mismatch: file hashes to {actual}, sidecar says {expected_sha}"),
            ));
        }
        let reader = Self { path: path.to_path_buf(), map, header };
        if let Some(i) = (0..reader.len()).find(|&i| reader.token(i) >= header.vocab_size) {
            return Err(invalid(
                path,
                format!(
                    "token {} at index {i} is outside the vocabulary of {}",
                    reader.token(i),
                    header.vocab_size
                ),
            ));
        }
        Ok(reader)
    }

    /// The shard's header.
    pub fn header(&self) -> &ShardHeader {
        &self.header
    }

    /// Path it was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.header.token_count as usize
    }

    /// Whether the shard holds no token.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Token `i`. Panics when `i >= len()` (an indexing bug, not bad input: the file's length
    /// was verified when it was opened).
    pub fn token(&self, i: usize) -> u32 {
        let body = &self.map[HEADER_LEN..];
        match self.header.dtype {
            TokenDtype::U16 => u32::from(u16::from_le_bytes([body[2 * i], body[2 * i + 1]])),
            TokenDtype::U32 => {
                u32::from_le_bytes([body[4 * i], body[4 * i + 1], body[4 * i + 2], body[4 * i + 3]])
            }
        }
    }

    /// Appends tokens `range` to `out`. Panics when the range is outside the shard.
    pub fn extend_into(&self, range: std::ops::Range<usize>, out: &mut Vec<u32>) {
        out.extend(range.map(|i| self.token(i)));
    }

    /// Every token, copied.
    pub fn to_vec(&self) -> Vec<u32> {
        let mut v = Vec::with_capacity(self.len());
        self.extend_into(0..self.len(), &mut v);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hash(b: u8) -> VocabHash {
        VocabHash([b; 32])
    }

    fn write(dir: &Path, tokens: &[u32], vocab: u32) -> PathBuf {
        let p = dir.join("train-0000.bin");
        write_shard(&p, tokens, vocab, hash(7)).expect("write");
        p
    }

    #[test]
    fn round_trip_u16_and_u32() {
        let dir = tempfile::tempdir().expect("tempdir");
        for vocab in [100u32, 70_000] {
            let tokens: Vec<u32> = (0..1000).map(|i| (i * 37) % vocab).collect();
            let p = write(dir.path(), &tokens, vocab);
            let r = ShardReader::open(&p, &hash(7)).expect("open");
            assert_eq!(r.to_vec(), tokens);
            assert_eq!(r.header().vocab_size, vocab);
            assert_eq!(r.header().dtype, TokenDtype::for_vocab(vocab as usize));
            let side = std::fs::read_to_string(sidecar_path(&p)).expect("sidecar");
            assert!(side.ends_with("  train-0000.bin\n"), "{side}");
        }
    }

    #[test]
    fn empty_shard_is_valid() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = write(dir.path(), &[], 10);
        assert!(ShardReader::open(&p, &hash(7)).expect("open").is_empty());
    }

    #[test]
    fn refuses_wrong_vocab_hash_with_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = write(dir.path(), &[1, 2, 3], 10);
        let err = ShardReader::open(&p, &hash(8)).expect_err("wrong vocab").to_string();
        assert!(err.contains("vocabulary mismatch") && err.contains("train-0000.bin"), "{err}");
    }

    #[test]
    fn refuses_flipped_byte_by_checksum() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = write(dir.path(), &[1, 2, 3, 4], 10);
        let mut bytes = std::fs::read(&p).expect("read");
        bytes[HEADER_LEN + 2] ^= 0x01;
        std::fs::write(&p, &bytes).expect("write");
        let err = ShardReader::open(&p, &hash(7)).expect_err("flipped").to_string();
        assert!(err.contains("checksum mismatch"), "{err}");
    }

    #[test]
    fn refuses_missing_sidecar_and_bad_magic() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = write(dir.path(), &[1, 2], 10);
        std::fs::remove_file(sidecar_path(&p)).expect("rm");
        let err = ShardReader::open(&p, &hash(7)).expect_err("no sidecar").to_string();
        assert!(err.contains(".sha256"), "{err}");
        let mut bytes = std::fs::read(&p).expect("read");
        bytes[0] = b'X';
        let err = parse_header(&bytes).expect_err("magic");
        assert!(err.contains("magic"), "{err}");
    }

    #[test]
    fn writer_refuses_out_of_vocab_tokens() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = write_shard(&dir.path().join("x.bin"), &[1, 10], 10, hash(1))
            .expect_err("out of vocab")
            .to_string();
        assert!(err.contains("outside the vocabulary"), "{err}");
    }

    #[test]
    fn vocab_hash_hex_round_trip() {
        let h = VocabHash::from_hex(&"ab".repeat(32)).expect("hex");
        assert_eq!(h.to_hex(), "ab".repeat(32));
        assert!(VocabHash::from_hex("abcd").is_err());
        assert!(VocabHash::from_hex("zz").is_err());
    }

    fn valid_shard_bytes(tokens: &[u32], vocab: u32) -> Vec<u8> {
        let dtype = TokenDtype::for_vocab(vocab as usize);
        let h = ShardHeader {
            dtype,
            vocab_size: vocab,
            vocab_hash: hash(3),
            token_count: tokens.len() as u64,
        };
        let mut b = h.to_bytes().to_vec();
        for &t in tokens {
            match dtype {
                TokenDtype::U16 => b.extend_from_slice(&(t as u16).to_le_bytes()),
                TokenDtype::U32 => b.extend_from_slice(&t.to_le_bytes()),
            }
        }
        b
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Arbitrary bytes never panic the header parser.
        #[test]
        fn parse_header_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse_header(&bytes);
        }

        /// Every truncation of a valid shard is refused with a clear error.
        #[test]
        fn truncations_are_refused(tokens in proptest::collection::vec(0u32..50, 1..40), cut in 1usize..100) {
            let bytes = valid_shard_bytes(&tokens, 50);
            let cut = cut.min(bytes.len());
            let err = parse_header(&bytes[..bytes.len() - cut]).expect_err("truncated must fail");
            prop_assert!(err.contains("truncated"), "{}", err);
        }

        /// Flipping any byte of a written shard makes `open` fail (header checks, vocabulary hash
        /// or checksum) and never panic.
        #[test]
        fn flipped_bytes_are_refused(tokens in proptest::collection::vec(0u32..50, 1..40), pos in any::<prop::sample::Index>(), bit in 0u8..8) {
            let dir = tempfile::tempdir().expect("tempdir");
            let p = dir.path().join("s.bin");
            write_shard(&p, &tokens, 50, hash(3)).expect("write");
            let mut bytes = std::fs::read(&p).expect("read");
            let i = pos.index(bytes.len());
            bytes[i] ^= 1 << bit;
            std::fs::write(&p, &bytes).expect("write");
            prop_assert!(ShardReader::open(&p, &hash(3)).is_err());
        }
    }
}
