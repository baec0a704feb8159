//! Electing one leader among coordinator replicas that share a store.
//!
//! Replicas share the queue (the store) and the bytes (a shared weight store). One of them, the
//! leader, holds the master weights, applies rounds and writes snapshots; the others serve
//! logins and relay the worker protocol to it. The leader is whoever holds an unexpired lease
//! in the store; every lease taken bumps an epoch, and the epoch fences the leader's commits:
//! once a lease has expired or passed to another replica, the old holder's round commits,
//! recovery resets and snapshot records are refused by the store, whatever the old holder
//! still believes. The store's clock decides expiry, so the replicas' clocks do not matter.

use super::StoreFailure;
use std::time::Duration;

/// A lease this replica holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Who holds it (unique per replica process).
    pub holder: String,
    /// The fencing token: larger than every epoch before it.
    pub epoch: u64,
}

/// The current leader, as the store sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderInfo {
    /// Who holds the lease.
    pub holder: String,
    /// Its epoch.
    pub epoch: u64,
    /// Where it serves workers (an `http(s)://host:port` URL).
    pub endpoint: String,
    /// Milliseconds until the lease expires unless renewed.
    pub expires_in_ms: u64,
}

/// The newest snapshot a leader recorded: recovery starts from it, not from the newest blob a
/// listing shows (a deposed leader's late upload is then an orphan nobody points to).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotHead {
    /// Weight version of the snapshot.
    pub version: u64,
    /// SHA-256 (hex) of the snapshot blob.
    pub sha256: String,
}

/// A store that can elect a leader among the replicas sharing it, and fence its commits.
pub trait Leadership: Send + Sync {
    /// Takes the lease for `holder` when it is free or expired (a new epoch), or renews it when
    /// `holder` already holds it (same epoch); `None` while another holder's lease is live.
    fn acquire(
        &self,
        holder: &str,
        endpoint: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>, StoreFailure>;
    /// Extends `lease` by `ttl` from now; false when it has expired or passed to another
    /// replica (the caller must stop leading at once).
    fn renew(&self, lease: &Lease, ttl: Duration) -> Result<bool, StoreFailure>;
    /// Gives `lease` up, so a follower takes over without waiting for it to expire.
    fn resign(&self, lease: &Lease) -> Result<(), StoreFailure>;
    /// The holder of the live lease, if any.
    fn leader(&self) -> Result<Option<LeaderInfo>, StoreFailure>;
    /// From now on, this store handle's round commits ([`super::CoordinatorStore::complete`]),
    /// recovery resets and snapshot records succeed only while `epoch` holds a live lease.
    fn fence(&self, epoch: u64);
    /// The newest snapshot recorded by [`Self::set_snapshot_head`].
    fn snapshot_head(&self) -> Result<Option<SnapshotHead>, StoreFailure>;
    /// Records a written snapshot as the one to recover from (fenced; never moves back).
    fn set_snapshot_head(&self, head: &SnapshotHead) -> Result<(), StoreFailure>;
    /// The newest weight version any task was completed at: a new leader numbers its versions
    /// past it, so none of its versions can be confused with a deposed leader's.
    fn newest_task_version(&self) -> Result<u64, StoreFailure>;
}
