//! Versioned schema migrations, applied in order when a store opens.
//!
//! Each migration runs once, in the transaction that records it in `schema_migrations`, under
//! a transaction-scoped advisory lock: processes starting together do not race, and a crash
//! part-way leaves the database at the previous version. A database migrated by a newer build
//! (a version this build does not know) is refused rather than used.

use bitnet_framework::coordinator_store::StoreFailure;
use bitnet_framework::protocol::now_ms;

/// Advisory lock key held while migrating ("bitnet" in ASCII, then 1).
const MIGRATION_LOCK: i64 = 0x6269_746e_6574_0001;

/// The migrations, oldest first; a migration is never edited once released, only added.
pub const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        "CREATE TABLE tasks (
        id BIGSERIAL PRIMARY KEY,
        shard TEXT NOT NULL,
        start BIGINT NOT NULL,
        tokens BIGINT NOT NULL,
        state TEXT NOT NULL,
        worker TEXT,
        attempts BIGINT NOT NULL DEFAULT 0,
        lease_deadline_ms BIGINT NOT NULL DEFAULT 0,
        applied_version BIGINT NOT NULL DEFAULT 0
    );
    CREATE INDEX tasks_by_state ON tasks (state, id);
    CREATE INDEX tasks_by_worker ON tasks (worker) WHERE state = 'assigned';
    CREATE TABLE workers (
        id TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        threads BIGINT NOT NULL,
        calibrated_tps DOUBLE PRECISION NOT NULL,
        measured_tps DOUBLE PRECISION NOT NULL,
        last_seen_ms BIGINT NOT NULL
    );
    CREATE TABLE clients (
        id TEXT PRIMARY KEY,
        secret_hash TEXT NOT NULL,
        generation BIGINT NOT NULL,
        revoked BOOLEAN NOT NULL,
        created_ms BIGINT NOT NULL
    );
    CREATE TABLE telemetry (
        id BIGSERIAL PRIMARY KEY,
        task_id BIGINT NOT NULL,
        worker TEXT NOT NULL,
        loss DOUBLE PRECISION NOT NULL,
        tokens BIGINT NOT NULL,
        tokens_per_sec DOUBLE PRECISION NOT NULL,
        staleness BIGINT NOT NULL,
        accepted BOOLEAN NOT NULL,
        version BIGINT NOT NULL,
        ts_ms BIGINT NOT NULL
    );
    CREATE INDEX telemetry_by_time ON telemetry (ts_ms);
    CREATE TABLE logs (
        id BIGSERIAL PRIMARY KEY,
        worker TEXT NOT NULL,
        ts_ms BIGINT NOT NULL,
        level TEXT NOT NULL,
        message TEXT NOT NULL
    );
    CREATE INDEX logs_by_time ON logs (ts_ms);",
    ),
    (2, "ALTER TABLE workers ADD COLUMN host TEXT NOT NULL DEFAULT '';"),
    (
        3,
        "CREATE TABLE leader_lease (
        id INT PRIMARY KEY CHECK (id = 1),
        holder TEXT NOT NULL,
        epoch BIGINT NOT NULL,
        endpoint TEXT NOT NULL,
        expires_at TIMESTAMPTZ NOT NULL
    );
    INSERT INTO leader_lease (id, holder, epoch, endpoint, expires_at)
        VALUES (1, '', 0, '', 'epoch');
    CREATE TABLE snapshot_head (
        id INT PRIMARY KEY CHECK (id = 1),
        version BIGINT NOT NULL,
        sha256 TEXT NOT NULL,
        epoch BIGINT NOT NULL
    );",
    ),
];

/// The schema version this build writes.
pub fn latest_version() -> i64 {
    MIGRATIONS.last().map_or(0, |(v, _)| *v)
}

fn fail(e: impl std::fmt::Display) -> StoreFailure {
    StoreFailure(format!("postgres: migrating the schema: {e}"))
}

/// Brings the database up to [`latest_version`]; returns the version it was at before.
pub async fn migrate(client: &mut tokio_postgres::Client) -> Result<i64, StoreFailure> {
    let tx = client.transaction().await.map_err(fail)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await.map_err(fail)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version BIGINT PRIMARY KEY,
            applied_ms BIGINT NOT NULL
        )",
    )
    .await
    .map_err(fail)?;
    let current: i64 = tx
        .query_one("SELECT COALESCE(MAX(version), 0) FROM schema_migrations", &[])
        .await
        .map_err(fail)?
        .get(0);
    if current > latest_version() {
        return Err(StoreFailure(format!(
            "postgres: the database is at schema version {current}, newer than this build's {}; \
             run a bitnet at least as new as the one that migrated it",
            latest_version()
        )));
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        tx.batch_execute(sql).await.map_err(|e| fail(format!("version {version}: {e}")))?;
        let applied = i64::try_from(now_ms()).unwrap_or(i64::MAX);
        tx.execute(
            "INSERT INTO schema_migrations (version, applied_ms) VALUES ($1, $2)",
            &[version, &applied],
        )
        .await
        .map_err(fail)?;
        tracing::info!(version, "applied coordinator store migration");
    }
    tx.commit().await.map_err(fail)?;
    Ok(current)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_increase_from_one() {
        for (i, (v, _)) in MIGRATIONS.iter().enumerate() {
            assert_eq!(*v, i as i64 + 1, "migration versions are 1, 2, 3, ... in order");
        }
        assert_eq!(latest_version(), MIGRATIONS.len() as i64);
    }
}
