//! Direct downloads: workers fetch weights and shards straight from the object store.
//!
//! When the weight store offers [`DirectDownloads`] (the `s3` store) and
//! `coordinator.direct_downloads` is on, the coordinator publishes what workers download under
//! content-addressed keys beside its snapshots:
//!
//! - `weights/v<version>-<sha256>.bin`: each served weight version, encoded by the run's weight
//!   codec, uploaded once when it is first encoded and removed when it leaves the served window
//!   (the newest few versions), as the coordinator stops serving it then too;
//! - `shards/<sha256>.bin`: every corpus shard, uploaded by a background thread at start (a
//!   restart finds them there and uploads nothing).
//!
//! A claim hands out a presigned GET URL for each that is published ([`TaskSpec::weights_url`],
//! [`TaskSpec::shard_url`]); what is not published yet, or whose publication failed, the
//! coordinator serves itself. Workers verify the bytes against the task's SHA-256 and fall back
//! to the coordinator when a URL fails, so nothing here is trusted for integrity.
//!
//! [`TaskSpec::weights_url`]: bitnet_framework::protocol::TaskSpec::weights_url
//! [`TaskSpec::shard_url`]: bitnet_framework::protocol::TaskSpec::shard_url

use super::*;
use bitnet_framework::protocol::{PresignedUrl, ShardInfo};
use bitnet_framework::store::DirectDownloads;
use std::collections::HashMap;
use std::sync::Weak;

/// A weight version the coordinator serves, and its key in the object store when published.
#[derive(Clone)]
pub(super) struct Served {
    pub(super) blob: Blob,
    pub(super) key: Option<String>,
}

/// Key of weight version `version` with digest `sha256`.
pub fn weights_key(version: u64, sha256: &str) -> String {
    format!("weights/v{version:020}-{sha256}.bin")
}

/// Key of the shard with digest `sha256`.
pub fn shard_key(sha256: &str) -> String {
    format!("shards/{sha256}.bin")
}

/// What the coordinator has published for direct download.
#[derive(Default)]
pub(super) struct Published {
    /// Shard name to (key, length), once uploaded (shards of equal bytes share one object).
    shards: Mutex<HashMap<String, (String, u64)>>,
}

impl Coordinator {
    /// The store's direct downloads, when the run uses them.
    pub(super) fn downloads(&self) -> Option<&dyn DirectDownloads> {
        if self.settings.direct_downloads { self.snapshots.direct_downloads() } else { None }
    }

    /// Publishes weight version `blob` for direct download; `None` (and a warning) when that
    /// fails, so the coordinator serves it.
    pub(super) fn publish_weights(&self, blob: &Blob) -> Option<String> {
        let downloads = self.downloads()?;
        let key = weights_key(blob.version, &blob.sha256);
        match downloads.publish(&key, &blob.bytes) {
            Ok(()) => {
                self.metrics
                    .published_weight_bytes
                    .fetch_add(blob.bytes.len() as u64, Ordering::Relaxed);
                Some(key)
            }
            Err(e) => {
                tracing::warn!(
                    version = blob.version,
                    error = %e,
                    "could not publish the weights to the object store; serving them"
                );
                None
            }
        }
    }

    /// Removes weight versions that left the served window from the object store.
    pub(super) fn unpublish(&self, keys: Vec<String>) {
        let Some(downloads) = self.downloads() else { return };
        for key in keys {
            if let Err(e) = downloads.unpublish(&key) {
                tracing::warn!(%key, error = %e, "could not remove old weights from the object store");
            }
        }
    }

    /// A presigned URL for the served weights `served`, when published (counted as handed out).
    pub(super) fn weights_url(&self, served: &Served) -> Option<PresignedUrl> {
        let url = self.presign(served.key.as_deref()?, served.blob.bytes.len() as u64)?;
        self.metrics.presigned_weights.fetch_add(1, Ordering::Relaxed);
        Some(url)
    }

    /// A presigned URL for `shard`, when published (counted as handed out).
    pub(super) fn shard_url(&self, shard: &ShardInfo) -> Option<PresignedUrl> {
        let (key, bytes) = self.published.shards.lock().ok()?.get(&shard.name)?.clone();
        let url = self.presign(&key, bytes)?;
        self.metrics.presigned_shards.fetch_add(1, Ordering::Relaxed);
        Some(url)
    }

    fn presign(&self, key: &str, bytes: u64) -> Option<PresignedUrl> {
        match self.downloads()?.presign_get(key, bytes) {
            Ok(url) => Some(url),
            Err(e) => {
                tracing::warn!(%key, error = %e, "could not presign a download; serving it");
                None
            }
        }
    }

    /// Shards published for direct download so far.
    pub fn published_shards(&self) -> usize {
        self.published.shards.lock().map(|s| s.len()).unwrap_or(0)
    }

    /// Starts the thread that publishes every corpus shard, when the run uses direct
    /// downloads. Each shard is read once (not kept) and uploaded unless already there.
    /// The thread ends on its own (it checks `stopping` between shards) and is not joined: a
    /// shutdown does not wait for an upload.
    pub(super) fn start_shard_publisher(self: &Arc<Self>) -> Result<(), CoordinatorError> {
        if self.downloads().is_none() {
            return Ok(());
        }
        let weak = Arc::downgrade(self);
        let shards = self.corpus.shards();
        std::thread::Builder::new()
            .name("bitnet-publish".into())
            .spawn(move || publish_shards(&weak, &shards))
            .map(drop)
            .map_err(|e| CoordinatorError::Component(format!("publishing shards: {e}")))
    }
}

fn publish_shards(coordinator: &Weak<Coordinator>, shards: &[ShardInfo]) {
    let mut published = 0;
    for info in shards {
        let Some(c) = coordinator.upgrade() else { return };
        if c.stopping.load(Ordering::SeqCst) {
            return;
        }
        let Some(downloads) = c.downloads() else { return };
        let key = shard_key(&info.sha256);
        let outcome = c.corpus.read(&info.name).map_err(|e| e.to_string()).and_then(|blob| {
            if blob.sha256 != info.sha256 {
                return Err(format!("read as sha256 {}, listed as {}", blob.sha256, info.sha256));
            }
            let fresh = !downloads
                .is_published(&key, blob.bytes.len() as u64)
                .map_err(|e| e.to_string())?;
            if fresh {
                downloads.publish(&key, &blob.bytes).map_err(|e| e.to_string())?;
                c.metrics
                    .published_shard_bytes
                    .fetch_add(blob.bytes.len() as u64, Ordering::Relaxed);
            }
            Ok(blob.bytes.len() as u64)
        });
        match outcome {
            Ok(bytes) => {
                if let Ok(mut s) = c.published.shards.lock() {
                    s.insert(info.name.clone(), (key, bytes));
                    published += 1;
                }
            }
            Err(e) => tracing::warn!(
                shard = %info.name,
                error = %e,
                "could not publish the shard to the object store; serving it"
            ),
        }
    }
    tracing::info!(published, shards = shards.len(), "shards published for direct download");
}
