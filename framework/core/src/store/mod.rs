//! The `WeightStore` slot: immutable, versioned, checksummed weight blobs.
//!
//! `conformance` (feature `conformance`) is the crash-consistency suite every store plugin runs.
//!
//! A store may also offer [`DirectDownloads`]: objects that workers fetch straight from the
//! store through short-lived presigned URLs, so the coordinator's egress does not grow with the
//! fleet. The coordinator publishes the blobs workers download (the encoded weights of a
//! version, the corpus shards) under content-addressed keys and hands out URLs with each task;
//! workers verify every byte against the task's SHA-256 and fall back to the coordinator when a
//! URL fails.

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;

/// Description of one stored version.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WeightMeta {
    /// Monotonic version number.
    pub version: u64,
    /// SHA-256 of the blob, hex.
    pub sha256: String,
    /// Blob length in bytes.
    pub bytes: u64,
}

/// Errors of a weight store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No such version.
    #[error("weight version {0} not found")]
    NotFound(u64),
    /// Version already written (blobs are immutable).
    #[error("weight version {0} already exists")]
    Exists(u64),
    /// Stored bytes do not match their checksum.
    #[error("weight version {version} is corrupt: expected sha256 {expected}, found {found}")]
    Corrupt {
        /// Version.
        version: u64,
        /// Recorded digest.
        expected: String,
        /// Digest of the bytes read.
        found: String,
    },
    /// Underlying I/O.
    #[error("weight store I/O at {path}: {source}")]
    Io {
        /// Path involved.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

/// Versioned blob storage; every read verifies SHA-256.
pub trait WeightStore: Send + Sync {
    /// Stores `blob` as `version`, atomically; refuses to overwrite.
    fn put_version(&self, version: u64, blob: &[u8]) -> Result<WeightMeta, StoreError>;
    /// Reads and verifies `version`.
    fn get_version(&self, version: u64) -> Result<Vec<u8>, StoreError>;
    /// All versions, ascending.
    fn list_versions(&self) -> Result<Vec<WeightMeta>, StoreError>;
    /// Deletes `version` (pruning old snapshots), so that a crash part-way never leaves it
    /// listed with a missing or partial blob. Deleting a version that does not exist succeeds.
    fn delete_version(&self, version: u64) -> Result<(), StoreError>;
    /// Direct downloads, when workers can fetch objects from this store without credentials
    /// (the "s3" store's presigned URLs). `None` (the default): the coordinator serves every
    /// download itself.
    fn direct_downloads(&self) -> Option<&dyn DirectDownloads> {
        None
    }
    /// Newest version, if any.
    fn latest(&self) -> Result<Option<WeightMeta>, StoreError> {
        Ok(self.list_versions()?.into_iter().max_by_key(|m| m.version))
    }
    /// The newest version that reads back intact, with its bytes: what a coordinator resumes
    /// from after a crash. Corrupt or vanished versions are skipped (and logged); other errors
    /// are returned.
    fn latest_valid(&self) -> Result<Option<(WeightMeta, Vec<u8>)>, StoreError> {
        let mut versions = self.list_versions()?;
        versions.sort_by_key(|m| std::cmp::Reverse(m.version));
        for meta in versions {
            match self.get_version(meta.version) {
                Ok(bytes) => return Ok(Some((meta, bytes))),
                Err(e @ (StoreError::Corrupt { .. } | StoreError::NotFound(_))) => {
                    tracing::warn!("skipping weight version {}: {e}", meta.version);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }
}

/// Objects workers download straight from a store, through URLs that expire.
///
/// Keys are `/`-separated names of `[A-Za-z0-9._-]` chosen by the coordinator and kept apart
/// from the store's weight versions. A key names its content (it holds the SHA-256), so
/// publishing a key again publishes the same bytes and may be skipped.
pub trait DirectDownloads: Send + Sync {
    /// Stores `bytes` under `key` unless an object of that key and length is already there.
    fn publish(&self, key: &str, bytes: &[u8]) -> Result<(), StoreError>;
    /// Whether an object of `key` and length `bytes` is there.
    fn is_published(&self, key: &str, bytes: u64) -> Result<bool, StoreError>;
    /// A URL that GETs `key` without credentials until it expires (the store's configured
    /// lifetime); `bytes` is the object's length, passed through to the worker as its bound.
    /// Signing does not check that the object exists.
    fn presign_get(&self, key: &str, bytes: u64) -> Result<PresignedUrl, StoreError>;
    /// Removes `key`; removing a key that is not there succeeds.
    fn unpublish(&self, key: &str) -> Result<(), StoreError>;
}

pub use crate::protocol::PresignedUrl;

/// Whether `key` is a valid [`DirectDownloads`] key: non-empty `/`-separated names of
/// `[A-Za-z0-9._-]`, none of them `.` or `..`.
pub fn valid_download_key(key: &str) -> bool {
    key.split('/').all(|part| {
        !part.is_empty()
            && part != "."
            && part != ".."
            && part.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    })
}

/// SHA-256 of `bytes` as lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::valid_download_key;

    #[test]
    fn download_keys_are_plain_relative_names() {
        for k in ["weights/v1-ab.bin", "shards/0123.bin", "a"] {
            assert!(valid_download_key(k), "{k}");
        }
        for k in ["", "/a", "a/", "a//b", "../a", "a/./b", "a b", "a?x=1", "a%2f"] {
            assert!(!valid_download_key(k), "{k}");
        }
    }
}
