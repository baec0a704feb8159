//! Snapshots: written off the request path by one thread, pruned to the newest few, and the
//! final one at shutdown.

use super::*;

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
        let mut applied = None;
        if let Ok(mut m) = self.model.lock() {
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
