//! The `WeightStore` slot: immutable, versioned, checksummed weight blobs.
//!
//! `conformance` (feature `conformance`) is the crash-consistency suite every store plugin runs.

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

/// SHA-256 of `bytes` as lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(bytes))
}
