//! Leader election among coordinator replicas: one lease row whose epoch fences commits.
//!
//! `leader_lease` holds one row. A replica takes it when it has expired (bumping the epoch) or
//! renews it while it holds it; expiry is computed with the database's clock. A fenced store
//! handle ([`Leadership::fence`]) checks, inside the transaction of every round commit,
//! recovery reset and snapshot record, that its epoch still holds a live lease, taking a share
//! lock on the row: a replica taking the lease over (an `UPDATE` of the row) waits for such a
//! commit to finish, and once it has the lease, every later commit of the old epoch fails. An
//! advisory lock was the alternative; it dies with its connection (which a pool recycles) and
//! carries no epoch to fence a deposed leader's late writes with.

use super::{PostgresStore, fail, i, u};
use bitnet_framework::coordinator_store::{
    LeaderInfo, Leadership, Lease, SnapshotHead, StoreFailure,
};
use std::sync::atomic::Ordering;
use std::time::Duration;

fn ttl_ms(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1)
}

/// Fails unless `epoch` holds the live lease; locks the lease row for the transaction.
pub(crate) async fn check_fence(
    tx: &deadpool_postgres::Transaction<'_>,
    epoch: i64,
) -> Result<(), StoreFailure> {
    let live = tx
        .query_opt(
            "SELECT 1 FROM leader_lease WHERE id = 1 AND epoch = $1 AND expires_at > now()
             FOR SHARE",
            &[&epoch],
        )
        .await
        .map_err(fail)?;
    match live {
        Some(_) => Ok(()),
        None => Err(StoreFailure(format!(
            "postgres: this coordinator's leadership (epoch {epoch}) has ended: its lease \
             expired or another replica took it over; nothing was recorded"
        ))),
    }
}

impl PostgresStore {
    /// The epoch this handle's commits are fenced with, if any.
    pub(crate) fn fence_epoch(&self) -> Option<i64> {
        match self.fence.load(Ordering::SeqCst) {
            0 => None,
            e => Some(e),
        }
    }
}

impl Leadership for PostgresStore {
    fn acquire(
        &self,
        holder: &str,
        endpoint: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>, StoreFailure> {
        if holder.is_empty() {
            return Err(fail("a lease holder needs a non-empty name"));
        }
        let row = self.block(async {
            self.connection()
                .await?
                .query_opt(
                    "UPDATE leader_lease SET
                       epoch = CASE WHEN holder = $1 AND expires_at > now()
                                    THEN epoch ELSE epoch + 1 END,
                       holder = $1, endpoint = $2,
                       expires_at = now() + $3::BIGINT * interval '1 millisecond'
                     WHERE id = 1 AND (expires_at <= now() OR holder = $1)
                     RETURNING epoch",
                    &[&holder, &endpoint, &ttl_ms(ttl)],
                )
                .await
                .map_err(fail)
        })?;
        Ok(row.map(|r| Lease { holder: holder.to_string(), epoch: u(r.get(0)) }))
    }

    fn renew(&self, lease: &Lease, ttl: Duration) -> Result<bool, StoreFailure> {
        let n = self.block(async {
            self.connection()
                .await?
                .execute(
                    "UPDATE leader_lease
                     SET expires_at = now() + $3::BIGINT * interval '1 millisecond'
                     WHERE id = 1 AND holder = $1 AND epoch = $2 AND expires_at > now()",
                    &[&lease.holder, &i(lease.epoch), &ttl_ms(ttl)],
                )
                .await
                .map_err(fail)
        })?;
        Ok(n == 1)
    }

    fn resign(&self, lease: &Lease) -> Result<(), StoreFailure> {
        self.block(async {
            self.connection()
                .await?
                .execute(
                    "UPDATE leader_lease SET expires_at = 'epoch'
                     WHERE id = 1 AND holder = $1 AND epoch = $2",
                    &[&lease.holder, &i(lease.epoch)],
                )
                .await
                .map_err(fail)
        })?;
        Ok(())
    }

    fn leader(&self) -> Result<Option<LeaderInfo>, StoreFailure> {
        let row = self.block(async {
            self.connection()
                .await?
                .query_opt(
                    "SELECT holder, epoch, endpoint,
                       GREATEST(0, EXTRACT(EPOCH FROM (expires_at - now())) * 1000)::BIGINT
                     FROM leader_lease WHERE id = 1 AND expires_at > now()",
                    &[],
                )
                .await
                .map_err(fail)
        })?;
        row.map(|r| {
            Ok(LeaderInfo {
                holder: r.try_get(0).map_err(fail)?,
                epoch: u(r.try_get(1).map_err(fail)?),
                endpoint: r.try_get(2).map_err(fail)?,
                expires_in_ms: u(r.try_get(3).map_err(fail)?),
            })
        })
        .transpose()
    }

    fn fence(&self, epoch: u64) {
        self.fence.store(i(epoch), Ordering::SeqCst);
    }

    fn snapshot_head(&self) -> Result<Option<SnapshotHead>, StoreFailure> {
        let row = self.block(async {
            self.connection()
                .await?
                .query_opt("SELECT version, sha256 FROM snapshot_head WHERE id = 1", &[])
                .await
                .map_err(fail)
        })?;
        row.map(|r| {
            Ok(SnapshotHead {
                version: u(r.try_get(0).map_err(fail)?),
                sha256: r.try_get(1).map_err(fail)?,
            })
        })
        .transpose()
    }

    fn set_snapshot_head(&self, head: &SnapshotHead) -> Result<(), StoreFailure> {
        let epoch = self.fence_epoch().unwrap_or(0);
        in_transaction!(self, |tx| async {
            if epoch > 0 {
                check_fence(&tx, epoch).await?;
            }
            tx.execute(
                "INSERT INTO snapshot_head (id, version, sha256, epoch) VALUES (1, $1, $2, $3)
                 ON CONFLICT (id) DO UPDATE
                 SET version = EXCLUDED.version, sha256 = EXCLUDED.sha256, epoch = EXCLUDED.epoch
                 WHERE snapshot_head.version < EXCLUDED.version",
                &[&i(head.version), &head.sha256, &epoch],
            )
            .await
            .map_err(fail)?;
            Ok::<(), StoreFailure>(())
        })
    }

    fn newest_task_version(&self) -> Result<u64, StoreFailure> {
        let row = self.block(async {
            self.connection()
                .await?
                .query_one(
                    "SELECT COALESCE(MAX(applied_version), 0)::BIGINT FROM tasks
                     WHERE state = 'done'",
                    &[],
                )
                .await
                .map_err(fail)
        })?;
        Ok(u(row.try_get(0).map_err(fail)?))
    }
}
