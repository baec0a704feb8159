//! The corpus a coordinator serves: named token shards with their checksums.

use crate::data::shard::{HEADER_LEN, TokenDtype, parse_header, parse_sidecar, sidecar_path};
use bitnet_framework::protocol::{ApiError, Blob, Packing, ShardInfo};
use bitnet_framework::store::sha256_hex;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Shards served to workers (`GET /corpus/{shard}`).
pub trait Corpus: Send + Sync {
    /// Every shard, sorted by name.
    fn shards(&self) -> Vec<ShardInfo>;
    /// One shard's description.
    fn info(&self, name: &str) -> Option<ShardInfo> {
        self.shards().into_iter().find(|s| s.name == name)
    }
    /// One shard's bytes (a token shard file, see [`crate::data::shard`]).
    fn shard(&self, name: &str) -> Result<Blob, ApiError>;
    /// One shard's bytes for a one-off use (publishing it to the object store), verified like
    /// [`Self::shard`] but not kept in memory by a corpus that caches what it serves.
    fn read(&self, name: &str) -> Result<Blob, ApiError> {
        self.shard(name)
    }
    /// `Some` when the shards hold `[BOS]`-delimited examples that workers pack into windows
    /// like the single-process loader; `None` for plain token streams.
    fn packing(&self) -> Option<Packing> {
        None
    }
}

/// Shards held in memory.
#[derive(Debug, Default)]
pub struct MemoryCorpus {
    shards: BTreeMap<String, (ShardInfo, Arc<Vec<u8>>)>,
    packing: Option<Packing>,
}

impl MemoryCorpus {
    /// An empty corpus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Marks the shards as `[BOS]`-delimited examples (see [`Corpus::packing`]).
    pub fn with_packing(mut self, packing: Packing) -> Self {
        self.packing = Some(packing);
        self
    }

    /// Adds shard `name` from the bytes of a shard file; refuses bytes that are not one.
    pub fn add(&mut self, name: &str, bytes: Vec<u8>) -> Result<ShardInfo, String> {
        let header = parse_header(&bytes)?;
        let info =
            ShardInfo { name: name.into(), tokens: header.token_count, sha256: sha256_hex(&bytes) };
        self.shards.insert(name.into(), (info.clone(), Arc::new(bytes)));
        Ok(info)
    }
}

impl Corpus for MemoryCorpus {
    fn shards(&self) -> Vec<ShardInfo> {
        self.shards.values().map(|(i, _)| i.clone()).collect()
    }

    fn info(&self, name: &str) -> Option<ShardInfo> {
        self.shards.get(name).map(|(i, _)| i.clone())
    }

    fn packing(&self) -> Option<Packing> {
        self.packing
    }

    fn shard(&self, name: &str) -> Result<Blob, ApiError> {
        let (info, bytes) =
            self.shards.get(name).ok_or_else(|| ApiError::NotFound(format!("shard `{name}`")))?;
        Ok(Blob { version: 0, sha256: info.sha256.clone(), bytes: Arc::clone(bytes) })
    }
}

/// Shard files on disk, named by file name; each is read (and its checksum verified) on first
/// request and then kept in memory.
#[derive(Debug)]
pub struct DirCorpus {
    files: BTreeMap<String, (ShardInfo, PathBuf)>,
    loaded: Mutex<Loaded>,
    packing: Option<Packing>,
}

impl DirCorpus {
    /// Describes `paths` (token shard files with `.sha256` sidecars) from their headers.
    pub fn open(paths: &[PathBuf]) -> Result<Self, String> {
        let mut files = BTreeMap::new();
        for p in paths {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .ok_or_else(|| format!("{}: no file name", p.display()))?;
            let side = sidecar_path(p);
            let sha = std::fs::read_to_string(&side)
                .map_err(|e| format!("{}: {e}", side.display()))
                .and_then(|t| parse_sidecar(&t).map_err(|e| format!("{}: {e}", side.display())))?;
            let mut head = vec![0u8; HEADER_LEN];
            {
                use std::io::Read;
                let mut f = std::fs::File::open(p).map_err(|e| format!("{}: {e}", p.display()))?;
                f.read_exact(&mut head).map_err(|e| format!("{}: {e}", p.display()))?;
            }
            let tokens = header_tokens(&head, p)?;
            files.insert(name.clone(), (ShardInfo { name, tokens, sha256: sha }, p.clone()));
        }
        Ok(Self { files, loaded: Mutex::new(BTreeMap::new()), packing: None })
    }

    /// Marks the shards as `[BOS]`-delimited examples (see [`Corpus::packing`]).
    pub fn with_packing(mut self, packing: Packing) -> Self {
        self.packing = Some(packing);
        self
    }
}

fn header_tokens(head: &[u8], path: &Path) -> Result<u64, String> {
    // parse_header checks the whole file's length; only the count is needed here.
    if head.len() < HEADER_LEN || head[0..8] != crate::data::shard::MAGIC {
        return Err(format!("{}: not a token shard", path.display()));
    }
    let mut a = [0u8; 8];
    a.copy_from_slice(&head[56..64]);
    Ok(u64::from_le_bytes(a))
}

impl Corpus for DirCorpus {
    fn shards(&self) -> Vec<ShardInfo> {
        self.files.values().map(|(i, _)| i.clone()).collect()
    }

    fn info(&self, name: &str) -> Option<ShardInfo> {
        self.files.get(name).map(|(i, _)| i.clone())
    }

    fn packing(&self) -> Option<Packing> {
        self.packing
    }

    fn shard(&self, name: &str) -> Result<Blob, ApiError> {
        let (info, path) =
            self.files.get(name).ok_or_else(|| ApiError::NotFound(format!("shard `{name}`")))?;
        let mut loaded = self.loaded()?;
        if let Some(b) = loaded.get(name) {
            return Ok(Blob { version: 0, sha256: info.sha256.clone(), bytes: Arc::clone(b) });
        }
        let bytes = read_verified(info, path)?;
        loaded.insert(name.into(), Arc::clone(&bytes));
        Ok(Blob { version: 0, sha256: info.sha256.clone(), bytes })
    }

    fn read(&self, name: &str) -> Result<Blob, ApiError> {
        let (info, path) =
            self.files.get(name).ok_or_else(|| ApiError::NotFound(format!("shard `{name}`")))?;
        if let Some(b) = self.loaded()?.get(name) {
            return Ok(Blob { version: 0, sha256: info.sha256.clone(), bytes: Arc::clone(b) });
        }
        Ok(Blob { version: 0, sha256: info.sha256.clone(), bytes: read_verified(info, path)? })
    }
}

/// Shards read so far, by name.
type Loaded = BTreeMap<String, Arc<Vec<u8>>>;

impl DirCorpus {
    fn loaded(&self) -> Result<std::sync::MutexGuard<'_, Loaded>, ApiError> {
        self.loaded.lock().map_err(|_| ApiError::Internal("corpus lock poisoned".into()))
    }
}

/// The bytes of the shard file at `path`, checked against its sidecar's SHA-256.
fn read_verified(info: &ShardInfo, path: &Path) -> Result<Arc<Vec<u8>>, ApiError> {
    let bytes =
        std::fs::read(path).map_err(|e| ApiError::Internal(format!("{}: {e}", path.display())))?;
    let found = sha256_hex(&bytes);
    if found != info.sha256 {
        return Err(ApiError::Internal(format!(
            "{} is corrupt: sha256 {found}, sidecar says {}",
            path.display(),
            info.sha256
        )));
    }
    Ok(Arc::new(bytes))
}

/// Decodes the tokens of a shard file held in memory (structure checked by
/// [`parse_header`]; token values checked against the shard's vocabulary).
pub fn decode_shard_tokens(bytes: &[u8]) -> Result<Vec<u32>, String> {
    let header = parse_header(bytes)?;
    let body = &bytes[HEADER_LEN..];
    let tokens: Vec<u32> = match header.dtype {
        TokenDtype::U16 => {
            body.chunks_exact(2).map(|c| u32::from(u16::from_le_bytes([c[0], c[1]]))).collect()
        }
        TokenDtype::U32 => {
            body.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
        }
    };
    if let Some((i, t)) = tokens.iter().enumerate().find(|(_, t)| **t >= header.vocab_size) {
        return Err(format!("token {t} at {i} is outside the vocabulary of {}", header.vocab_size));
    }
    Ok(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::shard::{ShardHeader, VocabHash};
    use proptest::prelude::*;

    pub(crate) fn shard_bytes(tokens: &[u32], vocab: u32) -> Vec<u8> {
        let dtype = TokenDtype::for_vocab(vocab as usize);
        let header = ShardHeader {
            dtype,
            vocab_size: vocab,
            vocab_hash: VocabHash([7; 32]),
            token_count: tokens.len() as u64,
        };
        let mut b = header.to_bytes().to_vec();
        for &t in tokens {
            match dtype {
                TokenDtype::U16 => b.extend_from_slice(&(t as u16).to_le_bytes()),
                TokenDtype::U32 => b.extend_from_slice(&t.to_le_bytes()),
            }
        }
        b
    }

    #[test]
    fn memory_corpus_serves_checksummed_shards() {
        let mut c = MemoryCorpus::new();
        let bytes = shard_bytes(&[1, 2, 3], 10);
        let info = c.add("train-0000.bin", bytes.clone()).expect("valid shard");
        assert_eq!(info.tokens, 3);
        let blob = c.shard("train-0000.bin").expect("served");
        assert_eq!(blob.sha256, sha256_hex(&bytes));
        assert_eq!(decode_shard_tokens(&blob.bytes), Ok(vec![1, 2, 3]));
        assert!(matches!(c.shard("nope"), Err(ApiError::NotFound(_))));
        assert!(c.add("bad", vec![0; 10]).is_err());
    }

    #[test]
    fn out_of_vocabulary_tokens_are_refused() {
        let mut bytes = shard_bytes(&[1, 2, 3], 10);
        let n = bytes.len();
        bytes[n - 2] = 50;
        assert!(decode_shard_tokens(&bytes).is_err());
    }

    proptest! {
        #[test]
        fn decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_shard_tokens(&bytes);
        }
    }
}
