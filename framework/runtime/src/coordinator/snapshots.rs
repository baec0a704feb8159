//! Snapshots: written off the request path by one thread, pruned to the newest few, and the
//! final one at shutdown.

use super::*;
use bitnet_framework::coordinator_store::{Leadership, SnapshotHead};

/// Deletes all but the newest `keep` snapshots (0 = keep all). Failures are logged: a snapshot
/// left behind only costs disk.
pub(super) fn prune_snapshots(snapshots: &dyn WeightStore, keep: usize) {
    if keep == 0 {
        return;
    }
    let versions = match snapshots.list_versions() {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(error = %e, "listing snapshots to prune failed");
            return;
        }
    };
    let old = versions.len().saturating_sub(keep);
    for meta in &versions[..old] {
        match snapshots.delete_version(meta.version) {
            Ok(()) => tracing::debug!(version = meta.version, "old snapshot deleted"),
            Err(e) => {
                tracing::warn!(version = meta.version, error = %e, "deleting a snapshot failed")
            }
        }
    }
}

/// Writes the snapshot of `version` and records it as the store's head (replicas). A blob
/// already at that version (a deposed leader's late upload) is not ours: it is an error, and
/// the head stays where it was, so recovery never loads it.
pub(super) fn write_replicated(
    snapshots: &dyn WeightStore,
    leadership: &dyn Leadership,
    version: u64,
    blob: &[u8],
) -> Result<(), String> {
    match snapshots.put_version(version, blob) {
        Ok(_) => {}
        Err(bitnet_framework::store::StoreError::Exists(_)) => {
            return Err(format!(
                "weight version {version} is already in the weight store, written by another \
                 replica; not recorded as the head"
            ));
        }
        Err(e) => return Err(e.to_string()),
    }
    let head = SnapshotHead { version, sha256: sha256_hex(blob) };
    leadership.set_snapshot_head(&head).map_err(|e| format!("recording it as the head: {e}"))
}

/// Writes the snapshot `encode` makes at the first version from `version` on that is free in
/// the weight store (or already holds exactly these bytes) and records it as the head; returns
/// the version used.
pub(super) fn publish_head(
    snapshots: &dyn WeightStore,
    leadership: &dyn Leadership,
    mut version: u64,
    encode: impl Fn(u64) -> Vec<u8>,
) -> Result<u64, String> {
    const TRIES: usize = 64;
    for _ in 0..TRIES {
        let blob = encode(version);
        let ours = match snapshots.put_version(version, &blob) {
            Ok(_) => true,
            Err(bitnet_framework::store::StoreError::Exists(_)) => {
                snapshots.get_version(version).is_ok_and(|b| b[..] == blob[..])
            }
            Err(e) => return Err(format!("writing the snapshot of version {version}: {e}")),
        };
        if ours {
            let head = SnapshotHead { version, sha256: sha256_hex(&blob) };
            leadership
                .set_snapshot_head(&head)
                .map_err(|e| format!("recording snapshot {version} as the head: {e}"))?;
            return Ok(version);
        }
        version += 1;
    }
    Err(format!("{TRIES} weight versions from {version} on are taken in the weight store"))
}

pub(super) struct SnapshotJob {
    pub(super) version: u64,
    pub(super) params: Vec<f32>,
    pub(super) optimizer: bitnet_framework::optim::OptimizerState,
    pub(super) ledger: Vec<blob::LedgerEntry>,
}

impl Coordinator {
    /// Queues a snapshot of the current state now (if anything changed since the last one).
    pub fn snapshot_now(&self) -> Result<u64, ApiError> {
        let mut m = lock(&self.model, "model")?;
        if m.updates_since_snapshot > 0 {
            self.queue_snapshot(&mut m);
        }
        Ok(m.version)
    }

    pub(super) fn queue_snapshot(&self, m: &mut ModelState) {
        let job = SnapshotJob {
            version: m.version,
            params: m.params.clone(),
            optimizer: m.optimizer.save_state(),
            ledger: m.ledger.clone(),
        };
        m.updates_since_snapshot = 0;
        m.last_snapshot = Instant::now();
        if let Ok(tx) = self.snapshot_tx.lock()
            && let Some(tx) = tx.as_ref()
            && tx.send(job).is_err()
        {
            tracing::error!("snapshot thread is gone");
        }
    }

    /// Versions of the snapshots in the weight store, ascending.
    pub fn snapshot_versions(&self) -> Result<Vec<u64>, ApiError> {
        let versions = self
            .snapshots
            .list_versions()
            .map_err(|e| ApiError::Internal(format!("listing snapshots: {e}")))?;
        Ok(versions.into_iter().map(|m| m.version).collect())
    }

    /// Newest snapshot written.
    pub fn snapshot_version(&self) -> u64 {
        self.snapshot_version.load(Ordering::SeqCst)
    }

    /// Takes a final snapshot, waits for every queued snapshot to be written and stops the
    /// background threads. Further updates are refused.
    pub fn shutdown(&self) {
        self.stop(true);
    }

    /// Stops without writing anything more: no open round applied, no final snapshot, and the
    /// snapshots still queued are dropped. For a replica that lost the leader lease: its
    /// store commits are refused already, and a blob it uploaded now would sit in the weight
    /// store at a version the new leader may reach (which then could not record its own
    /// snapshot of that version as the head).
    pub fn abandon(&self) {
        self.abandoned.store(true, Ordering::SeqCst);
        self.stop(false);
    }

    fn stop(&self, finish: bool) {
        let mut applied = None;
        if finish && let Ok(mut m) = self.model.lock() {
            // Updates waiting in an open round were computed and their leases held: step them
            // in rather than have them redone.
            if !m.round.is_empty() {
                applied = Some(self.apply_round(&mut m));
            }
            if m.updates_since_snapshot > 0 {
                self.queue_snapshot(&mut m);
            }
        }
        self.record_closed(applied, "applying the open round at shutdown");
        self.stopping.store(true, Ordering::SeqCst);
        if let Ok(mut tx) = self.snapshot_tx.lock() {
            tx.take();
        }
        if let Ok(mut h) = self.snapshot_thread.lock()
            && let Some(h) = h.take()
            && h.join().is_err()
        {
            tracing::error!("snapshot thread panicked");
        }
        if let Ok(mut h) = self.maintenance.lock()
            && let Some(h) = h.take()
            && h.thread().id() != std::thread::current().id()
            && h.join().is_err()
        {
            tracing::error!("maintenance thread panicked");
        }
    }
}
