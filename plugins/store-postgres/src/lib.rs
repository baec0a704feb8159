//! Coordinator store "postgres": the work queue, worker registry, client keys, telemetry and
//! logs in a PostgreSQL database, so the run's state lives on a database server rather than the
//! coordinator's disk, and every process of a run (the coordinator's pool, `bitnet keys`) shares
//! it safely.
//!
//! The schema is versioned ([`schema`]) and migrated when the store opens. Every method runs in
//! one transaction (or one statement). Claims take a transaction-scoped advisory lock, so
//! claims from every connection are serialised exactly as SQLite's `BEGIN IMMEDIATE` serialises
//! them: the queue order, the split rule and the per-worker lease cap hold across connections
//! and processes.
//! Completions lock the rows they finish (`FOR UPDATE`), so a sweep expiring a lease cannot
//! interleave with the completion of the same task.
//!
//! The [`CoordinatorStore`] trait is synchronous, tokio-postgres is asynchronous: the store
//! owns a small tokio runtime that drives its connection pool, and each call blocks its
//! caller on that runtime (see [`PostgresStore::block`]). Callers already make store calls
//! from blocking threads (the HTTP transport uses `spawn_blocking`, the coordinator's
//! maintenance loop is a plain thread); a call made on a worker of a multi-thread tokio
//! runtime moves off it with `block_in_place` rather than stalling its other tasks.

use bitnet_framework::BuildContext;
use bitnet_framework::coordinator_store::queue::{THROUGHPUT_EMA, completion, slice_size, tally};
use bitnet_framework::coordinator_store::{
    ClaimRequest, ClientRecord, Completion, CoordinatorStore, Finished, LogPage, LogQuery, NewTask,
    StoreFailure, StoredLog, SweepPolicy, SweepReport, TaskPage, TaskQuery, TaskRecord, TaskState,
    TaskTelemetry, WorkerRecord, WorkerState,
};
use bitnet_framework::protocol::{LogRecord, TaskCounts, TaskRef, WorkerCounts, now_ms};
use bitnet_framework::registry::{BuildError, PluginConfig, Slot};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::time::Duration;
use tokio_postgres::{GenericClient, NoTls, Row};

pub mod schema;
#[cfg(any(test, feature = "test-support"))]
pub mod test_support;

/// Advisory lock key every claim holds for its transaction ("bitnet" in ASCII, then 2).
const CLAIM_LOCK: i64 = 0x6269_746e_6574_0002;

/// Options of the postgres store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresStoreConfig {
    /// Connection string: a `postgresql://user[:password]@host:port/dbname` URL or libpq
    /// `key=value` pairs. Keep passwords out of config files: set this one through the
    /// environment (`BITNET_COORDINATOR_STORE__URL`).
    pub url: String,
    /// Most connections the pool opens.
    pub pool_size: usize,
    /// How long opening a connection or waiting for a free one may take, ms.
    pub connect_timeout_ms: u64,
}

impl Default for PostgresStoreConfig {
    fn default() -> Self {
        Self {
            url: "postgresql://bitnet@127.0.0.1:5432/bitnet".into(),
            pool_size: 16,
            connect_timeout_ms: 10_000,
        }
    }
}

impl PluginConfig for PostgresStoreConfig {
    type Component = dyn CoordinatorStore;
    fn build(self, _ctx: &BuildContext) -> Result<Box<dyn CoordinatorStore>, BuildError> {
        PostgresStore::connect(&self)
            .map(|s| Box::new(s) as Box<dyn CoordinatorStore>)
            .map_err(|e| BuildError::failed(Slot::CoordinatorStore, "postgres", e))
    }
}

bitnet_framework::register_plugin!(
    PostgresStoreConfig,
    "postgres",
    "Queue, workers, keys, telemetry and logs in PostgreSQL (versioned migrations, claims serialised across connections)."
);

/// Runs `$body` (a future using the transaction `$tx`) in one transaction on `$store`'s
/// runtime and commits it; an error rolls it back (dropping an open transaction does).
macro_rules! in_transaction {
    ($store:expr, |$tx:ident| $body:expr) => {
        $store.block(async {
            let mut client = $store.connection().await?;
            let $tx = client.transaction().await.map_err(fail)?;
            let out = $body.await?;
            $tx.commit().await.map_err(fail)?;
            Ok(out)
        })
    };
}

/// Runs `$body` (a future using the transaction `$tx`) in one read-only `REPEATABLE READ`
/// transaction: every statement sees the same snapshot, so a page and its total agree while
/// other connections write (under the default `READ COMMITTED` each statement takes its own).
macro_rules! in_snapshot {
    ($store:expr, |$tx:ident| $body:expr) => {
        $store.block(async {
            let mut client = $store.connection().await?;
            let $tx = client
                .build_transaction()
                .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await
                .map_err(fail)?;
            let out = $body.await?;
            $tx.commit().await.map_err(fail)?;
            Ok(out)
        })
    };
}

mod leadership;

/// A [`CoordinatorStore`] in a PostgreSQL database.
pub struct PostgresStore {
    pool: Pool,
    /// Drives the pool's connections; `None` only while dropping.
    runtime: Option<tokio::runtime::Runtime>,
    /// `host:port/dbname`, for messages (never the password).
    target: String,
    /// The leader epoch fencing this handle's commits (0: not fenced; see [`leadership`]).
    fence: std::sync::atomic::AtomicI64,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore").field("target", &self.target).finish()
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which tokio refuses inside an async context; the pool's
        // connections need no orderly close (the server rolls back anything open).
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

fn fail(e: impl std::fmt::Display) -> StoreFailure {
    StoreFailure(format!("postgres: {e}"))
}

// Postgres BIGINT is i64; ids, counts and times here stay far below 2^63.
fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}
fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// `host:port/dbname` of a parsed config, for messages.
fn describe(config: &tokio_postgres::Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .zip(config.get_ports().iter().chain(std::iter::repeat(&5432)))
        .map(|(h, p)| match h {
            tokio_postgres::config::Host::Tcp(h) => format!("{h}:{p}"),
            tokio_postgres::config::Host::Unix(path) => format!("{}:{p}", path.display()),
        })
        .collect();
    format!("{}/{}", hosts.join(","), config.get_dbname().unwrap_or("(default database)"))
}

const TASK_COLUMNS: &str =
    "id, shard, start, tokens, state, worker, attempts, lease_deadline_ms, applied_version";

fn task_row(r: &Row) -> Result<TaskRecord, StoreFailure> {
    let state: String = r.try_get(4).map_err(fail)?;
    Ok(TaskRecord {
        id: u(r.try_get(0).map_err(fail)?),
        shard: r.try_get(1).map_err(fail)?,
        offset: u(r.try_get(2).map_err(fail)?),
        tokens: u(r.try_get(3).map_err(fail)?),
        state: TaskState::parse(&state)
            .ok_or_else(|| fail(format!("task has unknown state `{state}`")))?,
        worker: r.try_get(5).map_err(fail)?,
        attempts: u(r.try_get(6).map_err(fail)?),
        lease_deadline_ms: u(r.try_get(7).map_err(fail)?),
        applied_version: u(r.try_get(8).map_err(fail)?),
    })
}

fn worker_row(r: &Row) -> Result<WorkerRecord, StoreFailure> {
    let state: String = r.try_get(1).map_err(fail)?;
    Ok(WorkerRecord {
        id: r.try_get(0).map_err(fail)?,
        state: WorkerState::parse(&state)
            .ok_or_else(|| fail(format!("worker has unknown state `{state}`")))?,
        threads: usize::try_from(r.try_get::<_, i64>(2).map_err(fail)?).unwrap_or(0),
        calibrated_tps: r.try_get(3).map_err(fail)?,
        measured_tps: r.try_get(4).map_err(fail)?,
        last_seen_ms: u(r.try_get(5).map_err(fail)?),
        host: r.try_get(6).map_err(fail)?,
    })
}

fn client_row(r: &Row) -> Result<ClientRecord, StoreFailure> {
    Ok(ClientRecord {
        id: r.try_get(0).map_err(fail)?,
        secret_hash: r.try_get(1).map_err(fail)?,
        generation: u(r.try_get(2).map_err(fail)?),
        revoked: r.try_get(3).map_err(fail)?,
        created_ms: u(r.try_get(4).map_err(fail)?),
    })
}

async fn get_task(
    c: &impl GenericClient,
    id: u64,
    lock: bool,
) -> Result<Option<TaskRecord>, StoreFailure> {
    let sql = format!(
        "SELECT {TASK_COLUMNS} FROM tasks WHERE id = $1{}",
        if lock { " FOR UPDATE" } else { "" }
    );
    c.query_opt(sql.as_str(), &[&i(id)]).await.map_err(fail)?.as_ref().map(task_row).transpose()
}

const CLIENT_COLUMNS: &str = "id, secret_hash, generation, revoked, created_ms";

async fn get_client(
    c: &impl GenericClient,
    id: &str,
) -> Result<Option<ClientRecord>, StoreFailure> {
    let sql = format!("SELECT {CLIENT_COLUMNS} FROM clients WHERE id = $1");
    c.query_opt(sql.as_str(), &[&id]).await.map_err(fail)?.as_ref().map(client_row).transpose()
}

impl PostgresStore {
    /// Connects to the database of `config`, checks that it answers and migrates its schema.
    pub fn connect(config: &PostgresStoreConfig) -> Result<Self, StoreFailure> {
        let pg: tokio_postgres::Config = config.url.parse().map_err(|e| {
            fail(format!("coordinator_store.url is not a valid connection string: {e}"))
        })?;
        if config.pool_size == 0 {
            return Err(fail("coordinator_store.pool_size must be at least 1"));
        }
        let target = describe(&pg);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("bitnet-postgres")
            .enable_io()
            .enable_time()
            .build()
            .map_err(|e| fail(format!("cannot start the store's runtime: {e}")))?;
        let timeout = Duration::from_millis(config.connect_timeout_ms.max(1));
        let manager = Manager::from_config(
            pg,
            NoTls,
            ManagerConfig { recycling_method: RecyclingMethod::Fast },
        );
        let pool = Pool::builder(manager)
            .max_size(config.pool_size)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(timeout))
            .create_timeout(Some(timeout))
            .recycle_timeout(Some(timeout))
            .build()
            .map_err(|e| fail(format!("{target}: {e}")))?;
        let store = Self { pool, runtime: Some(runtime), target, fence: Default::default() };
        let before = store.block(async {
            let mut client = store.connection().await?;
            schema::migrate(&mut client).await
        })?;
        if before < schema::latest_version() {
            tracing::info!(
                target = %store.target,
                from = before,
                to = schema::latest_version(),
                "migrated the coordinator store schema"
            );
        }
        Ok(store)
    }

    /// `host:port/dbname` of the database.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Runs `fut` to completion on the store's runtime, blocking the calling thread. On a
    /// worker thread of a multi-thread tokio runtime the wait moves off the worker with
    /// `block_in_place`; on a current-thread runtime's own thread it panics (tokio forbids
    /// blocking there), so such callers use `spawn_blocking`.
    fn block<T>(
        &self,
        fut: impl Future<Output = Result<T, StoreFailure>>,
    ) -> Result<T, StoreFailure> {
        let rt = self.runtime.as_ref().ok_or_else(|| fail("the store is shut down"))?;
        tokio::task::block_in_place(|| rt.block_on(fut))
    }

    async fn connection(&self) -> Result<deadpool_postgres::Client, StoreFailure> {
        self.pool.get().await.map_err(|e| fail(format!("{}: {e}", self.target)))
    }
}

async fn add_tasks_in(
    tx: &deadpool_postgres::Transaction<'_>,
    tasks: &[NewTask],
) -> Result<Vec<u64>, StoreFailure> {
    let shards: Vec<&str> = tasks.iter().map(|t| t.shard.as_str()).collect();
    let starts: Vec<i64> = tasks.iter().map(|t| i(t.offset)).collect();
    let tokens: Vec<i64> = tasks.iter().map(|t| i(t.tokens)).collect();
    // Ids are drawn first and sorted, so the queue keeps the caller's order whatever order
    // the server inserts the rows in; two round trips for any number of tasks.
    let mut ids: Vec<i64> = tx
        .query(
            "SELECT nextval(pg_get_serial_sequence('tasks', 'id')) FROM generate_series(1::BIGINT, $1::BIGINT)",
            &[&i(tasks.len() as u64)],
        )
        .await
        .map_err(fail)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    ids.sort_unstable();
    tx.execute(
        "INSERT INTO tasks (id, shard, start, tokens, state)
         SELECT id, shard, start, tokens, 'pending'
         FROM UNNEST($1::BIGINT[], $2::TEXT[], $3::BIGINT[], $4::BIGINT[])
           AS t(id, shard, start, tokens)",
        &[&ids, &shards, &starts, &tokens],
    )
    .await
    .map_err(fail)?;
    Ok(ids.into_iter().map(u).collect())
}

async fn claim_in(
    tx: &deadpool_postgres::Transaction<'_>,
    req: &ClaimRequest,
) -> Result<Option<TaskRecord>, StoreFailure> {
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&CLAIM_LOCK]).await.map_err(fail)?;
    if req.max_leases > 0 {
        let held: i64 = tx
            .query_one(
                "SELECT COUNT(*) FROM tasks WHERE state = 'assigned' AND worker = $1",
                &[&req.worker],
            )
            .await
            .map_err(fail)?
            .get(0);
        if u(held) >= req.max_leases {
            return Ok(None);
        }
    }
    let sql = format!(
        "SELECT {TASK_COLUMNS} FROM tasks WHERE state = 'pending' ORDER BY id LIMIT 1 FOR UPDATE"
    );
    let Some(row) = tx.query_opt(sql.as_str(), &[]).await.map_err(fail)? else {
        return Ok(None);
    };
    let mut t = task_row(&row)?;
    let size = slice_size(req.max_tokens, req.granularity);
    t.state = TaskState::Assigned;
    t.worker = Some(req.worker.clone());
    t.attempts += 1;
    t.lease_deadline_ms = req.now_ms + req.lease_ms;
    if t.tokens > size {
        // Split: the head is claimed as a new task and the rest keeps this row's place in the
        // queue, so the next claim continues where this one stopped.
        let head: i64 = tx
            .query_one(
                "INSERT INTO tasks (shard, start, tokens, state, worker, attempts,
                 lease_deadline_ms) VALUES ($1, $2, $3, 'assigned', $4, $5, $6) RETURNING id",
                &[
                    &t.shard,
                    &i(t.offset),
                    &i(size),
                    &req.worker,
                    &i(t.attempts),
                    &i(t.lease_deadline_ms),
                ],
            )
            .await
            .map_err(fail)?
            .get(0);
        tx.execute(
            "UPDATE tasks SET start = start + $2, tokens = tokens - $2 WHERE id = $1",
            &[&i(t.id), &i(size)],
        )
        .await
        .map_err(fail)?;
        t.id = u(head);
        t.tokens = size;
        return Ok(Some(t));
    }
    tx.execute(
        "UPDATE tasks SET state = 'assigned', worker = $2, attempts = $3, lease_deadline_ms = $4
         WHERE id = $1",
        &[&i(t.id), &req.worker, &i(t.attempts), &i(t.lease_deadline_ms)],
    )
    .await
    .map_err(fail)?;
    Ok(Some(t))
}

async fn complete_in(
    tx: &deadpool_postgres::Transaction<'_>,
    tasks: &[Finished],
    applied_version: u64,
) -> Result<Vec<Completion>, StoreFailure> {
    let mut out = Vec::with_capacity(tasks.len());
    for f in tasks {
        let c = completion(get_task(&**tx, f.task.task_id, true).await?.as_ref(), f);
        if c == Completion::Completed {
            tx.execute(
                "UPDATE tasks SET state = 'done', applied_version = $2, lease_deadline_ms = 0
                 WHERE id = $1",
                &[&i(f.task.task_id), &i(applied_version)],
            )
            .await
            .map_err(fail)?;
        }
        out.push(c);
    }
    Ok(out)
}

async fn sweep_in(
    tx: &deadpool_postgres::Transaction<'_>,
    now: u64,
    policy: &SweepPolicy,
) -> Result<SweepReport, StoreFailure> {
    let failed = tx
        .execute(
            "UPDATE tasks SET state = 'failed', lease_deadline_ms = 0
             WHERE state = 'assigned' AND lease_deadline_ms < $1 AND attempts >= $2",
            &[&i(now), &i(policy.max_attempts)],
        )
        .await
        .map_err(fail)?;
    let expired = tx
        .execute(
            "UPDATE tasks SET state = 'pending', lease_deadline_ms = 0
             WHERE state = 'assigned' AND lease_deadline_ms < $1",
            &[&i(now)],
        )
        .await
        .map_err(fail)?;
    let gone = tx
        .execute(
            "UPDATE workers SET state = 'gone' WHERE state <> 'gone' AND last_seen_ms < $1",
            &[&i(now.saturating_sub(policy.worker_timeout_ms))],
        )
        .await
        .map_err(fail)?;
    let pruned = tx
        .execute(
            "DELETE FROM telemetry WHERE ts_ms < $1",
            &[&i(now.saturating_sub(policy.telemetry_retention_ms))],
        )
        .await
        .map_err(fail)?;
    let old_logs = tx
        .execute(
            "DELETE FROM logs WHERE ts_ms < $1",
            &[&i(now.saturating_sub(policy.log_retention_ms))],
        )
        .await
        .map_err(fail)?;
    let excess_logs = tx
        .execute(
            "DELETE FROM logs WHERE id IN (SELECT id FROM logs ORDER BY id DESC OFFSET $1)",
            &[&i(policy.max_log_records)],
        )
        .await
        .map_err(fail)?;
    Ok(SweepReport {
        leases_expired: expired,
        tasks_failed: failed,
        workers_gone: gone,
        telemetry_pruned: pruned,
        logs_pruned: old_logs + excess_logs,
    })
}

async fn add_client_in(
    tx: &deadpool_postgres::Transaction<'_>,
    id: &str,
    secret_hash: &str,
) -> Result<ClientRecord, StoreFailure> {
    let n = tx
        .execute(
            "INSERT INTO clients (id, secret_hash, generation, revoked, created_ms)
             VALUES ($1, $2, 1, FALSE, $3) ON CONFLICT (id) DO NOTHING",
            &[&id, &secret_hash, &i(now_ms())],
        )
        .await
        .map_err(fail)?;
    if n == 0 {
        return Err(StoreFailure(format!("client `{id}` already exists")));
    }
    get_client(&**tx, id).await?.ok_or_else(|| fail("inserted client vanished"))
}

/// Applies `update` (which binds the client id as `$1` and may bind `secret` as `$2`) and
/// returns the client as it now is.
async fn change_client_in(
    tx: &deadpool_postgres::Transaction<'_>,
    id: &str,
    update: &str,
    secret: Option<&str>,
) -> Result<ClientRecord, StoreFailure> {
    let n = match secret {
        Some(s) => tx.execute(update, &[&id, &s]).await,
        None => tx.execute(update, &[&id]).await,
    }
    .map_err(fail)?;
    if n == 0 {
        return Err(StoreFailure(format!("no client `{id}`")));
    }
    get_client(&**tx, id).await?.ok_or_else(|| fail("changed client vanished"))
}

impl CoordinatorStore for PostgresStore {
    fn add_tasks(&self, tasks: &[NewTask]) -> Result<Vec<u64>, StoreFailure> {
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        in_transaction!(self, |tx| add_tasks_in(&tx, tasks))
    }

    fn claim(&self, req: &ClaimRequest) -> Result<Option<TaskRecord>, StoreFailure> {
        in_transaction!(self, |tx| claim_in(&tx, req))
    }

    fn task(&self, id: u64) -> Result<Option<TaskRecord>, StoreFailure> {
        self.block(async { get_task(&**self.connection().await?, id, false).await })
    }

    fn renew_lease(
        &self,
        task: TaskRef,
        worker: &str,
        deadline_ms: u64,
    ) -> Result<bool, StoreFailure> {
        self.block(async {
            let n = self
                .connection()
                .await?
                .execute(
                    "UPDATE tasks SET lease_deadline_ms = GREATEST(lease_deadline_ms, $4)
                     WHERE id = $1 AND attempts = $2 AND worker = $3 AND state = 'assigned'",
                    &[&i(task.task_id), &i(task.lease), &worker, &i(deadline_ms)],
                )
                .await
                .map_err(fail)?;
            Ok(n == 1)
        })
    }

    fn complete(
        &self,
        tasks: &[Finished],
        applied_version: u64,
    ) -> Result<Vec<Completion>, StoreFailure> {
        let fence = self.fence_epoch();
        in_transaction!(self, |tx| async {
            if let Some(epoch) = fence {
                leadership::check_fence(&tx, epoch).await?;
            }
            complete_in(&tx, tasks, applied_version).await
        })
    }

    fn release(&self, task: TaskRef, worker: &str) -> Result<bool, StoreFailure> {
        self.block(async {
            let n = self
                .connection()
                .await?
                .execute(
                    "UPDATE tasks SET state = 'pending', lease_deadline_ms = 0
                     WHERE id = $1 AND attempts = $2 AND worker = $3 AND state = 'assigned'",
                    &[&i(task.task_id), &i(task.lease), &worker],
                )
                .await
                .map_err(fail)?;
            Ok(n == 1)
        })
    }

    fn counts(&self) -> Result<TaskCounts, StoreFailure> {
        let rows = self.block(async {
            self.connection()
                .await?
                .query(
                    "SELECT state, COUNT(*), COALESCE(SUM(tokens), 0)::BIGINT FROM tasks
                     GROUP BY state",
                    &[],
                )
                .await
                .map_err(fail)
        })?;
        let mut c = TaskCounts::default();
        for row in rows {
            let state: String = row.try_get(0).map_err(fail)?;
            let n = u(row.try_get(1).map_err(fail)?);
            let tokens = u(row.try_get(2).map_err(fail)?);
            tally(&mut c, &state, n, tokens);
        }
        Ok(c)
    }

    fn reset_after_recovery(&self, snapshot_version: u64) -> Result<u64, StoreFailure> {
        let fence = self.fence_epoch();
        in_transaction!(self, |tx| async {
            if let Some(epoch) = fence {
                leadership::check_fence(&tx, epoch).await?;
            }
            tx.execute(
                "UPDATE tasks SET state = 'pending', lease_deadline_ms = 0, applied_version = 0
                     WHERE state = 'assigned' OR (state = 'done' AND applied_version > $1)",
                &[&i(snapshot_version)],
            )
            .await
            .map_err(fail)
        })
    }

    fn sweep(&self, now: u64, policy: &SweepPolicy) -> Result<SweepReport, StoreFailure> {
        in_transaction!(self, |tx| sweep_in(&tx, now, policy))
    }

    fn upsert_worker(&self, w: &WorkerRecord) -> Result<(), StoreFailure> {
        self.block(async {
            self.connection()
                .await?
                .execute(
                    "INSERT INTO workers (id, state, threads, calibrated_tps, measured_tps,
                       last_seen_ms, host) VALUES ($1, $2, $3, $4, $5, $6, $7)
                     ON CONFLICT (id) DO UPDATE SET state = $2, threads = $3, calibrated_tps = $4,
                       measured_tps = CASE WHEN $5 > 0 THEN $5 ELSE workers.measured_tps END,
                       last_seen_ms = $6, host = $7",
                    &[
                        &w.id,
                        &w.state.as_str(),
                        &i(w.threads as u64),
                        &w.calibrated_tps,
                        &w.measured_tps,
                        &i(w.last_seen_ms),
                        &w.host,
                    ],
                )
                .await
                .map_err(fail)?;
            Ok(())
        })
    }

    fn worker(&self, id: &str) -> Result<Option<WorkerRecord>, StoreFailure> {
        self.block(async {
            self.connection()
                .await?
                .query_opt(
                    "SELECT id, state, threads, calibrated_tps, measured_tps, last_seen_ms, host
                     FROM workers WHERE id = $1",
                    &[&id],
                )
                .await
                .map_err(fail)?
                .as_ref()
                .map(worker_row)
                .transpose()
        })
    }

    fn touch_worker(&self, id: &str, now: u64, draining: bool) -> Result<(), StoreFailure> {
        self.block(async {
            self.connection()
                .await?
                .execute(
                    "UPDATE workers SET last_seen_ms = $2,
                       state = CASE WHEN $3 OR state = 'draining' THEN 'draining' ELSE 'active' END
                     WHERE id = $1",
                    &[&id, &i(now), &draining],
                )
                .await
                .map_err(fail)?;
            Ok(())
        })
    }

    fn record_throughput(&self, id: &str, tps: f64) -> Result<(), StoreFailure> {
        if !(tps.is_finite() && tps > 0.0) {
            return Ok(());
        }
        self.block(async {
            self.connection()
                .await?
                .execute(
                    "UPDATE workers SET measured_tps = CASE WHEN measured_tps > 0
                       THEN $2::DOUBLE PRECISION * $3::DOUBLE PRECISION
                       + (1.0 - $3::DOUBLE PRECISION) * measured_tps
                       ELSE $2::DOUBLE PRECISION END WHERE id = $1",
                    &[&id, &tps, &THROUGHPUT_EMA],
                )
                .await
                .map_err(fail)?;
            Ok(())
        })
    }

    fn worker_counts(&self) -> Result<WorkerCounts, StoreFailure> {
        let rows = self.block(async {
            self.connection()
                .await?
                .query("SELECT state, COUNT(*) FROM workers GROUP BY state", &[])
                .await
                .map_err(fail)
        })?;
        let mut c = WorkerCounts::default();
        for row in rows {
            let state: String = row.try_get(0).map_err(fail)?;
            let n = u(row.try_get(1).map_err(fail)?);
            match WorkerState::parse(&state) {
                Some(WorkerState::Active) => c.active += n,
                Some(WorkerState::Draining) => c.draining += n,
                Some(WorkerState::Gone) | None => c.gone += n,
            }
        }
        Ok(c)
    }

    fn add_client(&self, id: &str, secret_hash: &str) -> Result<ClientRecord, StoreFailure> {
        in_transaction!(self, |tx| add_client_in(&tx, id, secret_hash))
    }

    fn rotate_client(&self, id: &str, secret_hash: &str) -> Result<ClientRecord, StoreFailure> {
        const SQL: &str = "UPDATE clients SET secret_hash = $2, generation = generation + 1,
                           revoked = FALSE WHERE id = $1";
        in_transaction!(self, |tx| change_client_in(&tx, id, SQL, Some(secret_hash)))
    }

    fn revoke_client(&self, id: &str) -> Result<ClientRecord, StoreFailure> {
        const SQL: &str =
            "UPDATE clients SET generation = generation + 1, revoked = TRUE WHERE id = $1";
        in_transaction!(self, |tx| change_client_in(&tx, id, SQL, None))
    }

    fn client(&self, id: &str) -> Result<Option<ClientRecord>, StoreFailure> {
        self.block(async { get_client(&**self.connection().await?, id).await })
    }

    fn clients(&self) -> Result<Vec<ClientRecord>, StoreFailure> {
        self.block(async {
            let sql = format!("SELECT {CLIENT_COLUMNS} FROM clients ORDER BY id");
            let rows = self.connection().await?.query(sql.as_str(), &[]).await.map_err(fail)?;
            rows.iter().map(client_row).collect()
        })
    }

    fn record_telemetry(&self, r: &TaskTelemetry) -> Result<(), StoreFailure> {
        self.block(async {
            self.connection()
                .await?
                .execute(
                    "INSERT INTO telemetry (task_id, worker, loss, tokens, tokens_per_sec,
                       staleness, accepted, version, ts_ms)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                    &[
                        &i(r.task_id),
                        &r.worker,
                        &f64::from(r.loss),
                        &i(r.tokens),
                        &r.tokens_per_sec,
                        &i(r.staleness),
                        &r.accepted,
                        &i(r.version),
                        &i(r.ts_ms),
                    ],
                )
                .await
                .map_err(fail)?;
            Ok(())
        })
    }

    fn recent_telemetry(&self, limit: usize) -> Result<Vec<TaskTelemetry>, StoreFailure> {
        let rows = self.block(async {
            self.connection()
                .await?
                .query(
                    "SELECT task_id, worker, loss, tokens, tokens_per_sec, staleness, accepted,
                       version, ts_ms FROM telemetry ORDER BY id DESC LIMIT $1",
                    &[&i(limit as u64)],
                )
                .await
                .map_err(fail)
        })?;
        rows.iter()
            .map(|r| {
                Ok(TaskTelemetry {
                    task_id: u(r.try_get(0).map_err(fail)?),
                    worker: r.try_get(1).map_err(fail)?,
                    loss: r.try_get::<_, f64>(2).map_err(fail)? as f32,
                    tokens: u(r.try_get(3).map_err(fail)?),
                    tokens_per_sec: r.try_get(4).map_err(fail)?,
                    staleness: u(r.try_get(5).map_err(fail)?),
                    accepted: r.try_get(6).map_err(fail)?,
                    version: u(r.try_get(7).map_err(fail)?),
                    ts_ms: u(r.try_get(8).map_err(fail)?),
                })
            })
            .collect()
    }

    fn append_logs(&self, worker: &str, records: &[LogRecord]) -> Result<(), StoreFailure> {
        if records.is_empty() {
            return Ok(());
        }
        let ts: Vec<i64> = records.iter().map(|r| i(r.ts_ms)).collect();
        let levels: Vec<&str> = records.iter().map(|r| r.level.as_str()).collect();
        let messages: Vec<&str> = records.iter().map(|r| r.message.as_str()).collect();
        self.block(async {
            // One statement, so the batch is stored whole or not at all, in the given order
            // (UNNEST WITH ORDINALITY keeps it; ids follow it).
            self.connection()
                .await?
                .execute(
                    "INSERT INTO logs (worker, ts_ms, level, message)
                     SELECT $1::TEXT, ts, level, message
                     FROM UNNEST($2::BIGINT[], $3::TEXT[], $4::TEXT[]) WITH ORDINALITY
                       AS t(ts, level, message, n)
                     ORDER BY n",
                    &[&worker, &ts, &levels, &messages],
                )
                .await
                .map_err(fail)?;
            Ok(())
        })
    }

    fn log_count(&self) -> Result<u64, StoreFailure> {
        self.block(async {
            let row = self
                .connection()
                .await?
                .query_one("SELECT COUNT(*) FROM logs", &[])
                .await
                .map_err(fail)?;
            Ok(u(row.try_get(0).map_err(fail)?))
        })
    }

    fn query_logs(&self, q: &LogQuery) -> Result<LogPage, StoreFailure> {
        // strpos, not LIKE: the operator's text is matched literally (`%` and `_` included).
        const FILTER: &str = "($1::TEXT IS NULL OR worker = $1) AND ($2::TEXT IS NULL OR \
                              lower(level) = lower($2)) AND ($3::TEXT IS NULL OR \
                              strpos(lower(message), lower($3)) > 0)";
        let (limit, offset) = (i(q.limit), i(q.offset));
        in_snapshot!(self, |c| async {
            let filter: [&(dyn tokio_postgres::types::ToSql + Sync); 3] =
                [&q.worker, &q.level, &q.text];
            let total = c
                .query_one(format!("SELECT COUNT(*) FROM logs WHERE {FILTER}").as_str(), &filter)
                .await
                .map_err(fail)?;
            let rows = c
                .query(
                    format!(
                        "SELECT worker, ts_ms, level, message FROM logs WHERE {FILTER}
                         ORDER BY id DESC LIMIT $4 OFFSET $5"
                    )
                    .as_str(),
                    &[&q.worker, &q.level, &q.text, &limit, &offset],
                )
                .await
                .map_err(fail)?;
            let records = rows
                .iter()
                .map(|r| {
                    Ok(StoredLog {
                        worker: r.try_get(0).map_err(fail)?,
                        ts_ms: u(r.try_get(1).map_err(fail)?),
                        level: r.try_get(2).map_err(fail)?,
                        message: r.try_get(3).map_err(fail)?,
                    })
                })
                .collect::<Result<Vec<_>, StoreFailure>>()?;
            Ok(LogPage { records, total: u(total.try_get(0).map_err(fail)?) })
        })
    }

    fn list_tasks(&self, q: &TaskQuery) -> Result<TaskPage, StoreFailure> {
        const FILTER: &str =
            "($1::TEXT IS NULL OR state = $1) AND ($2::TEXT IS NULL OR worker = $2)";
        let state = q.state.map(|s| s.as_str().to_string());
        let (limit, offset) = (i(q.limit), i(q.offset));
        in_snapshot!(self, |c| async {
            let total = c
                .query_one(
                    format!("SELECT COUNT(*) FROM tasks WHERE {FILTER}").as_str(),
                    &[&state, &q.worker],
                )
                .await
                .map_err(fail)?;
            let rows = c
                .query(
                    format!(
                        "SELECT {TASK_COLUMNS} FROM tasks WHERE {FILTER} ORDER BY id \
                         LIMIT $3 OFFSET $4"
                    )
                    .as_str(),
                    &[&state, &q.worker, &limit, &offset],
                )
                .await
                .map_err(fail)?;
            let tasks = rows.iter().map(task_row).collect::<Result<Vec<_>, _>>()?;
            Ok(TaskPage { tasks, total: u(total.try_get(0).map_err(fail)?) })
        })
    }

    fn requeue_failed(&self) -> Result<u64, StoreFailure> {
        self.block(async {
            self.connection()
                .await?
                .execute(
                    "UPDATE tasks SET state = 'pending', worker = NULL, lease_deadline_ms = 0
                     WHERE state = 'failed'",
                    &[],
                )
                .await
                .map_err(fail)
        })
    }

    fn workers(&self) -> Result<Vec<WorkerRecord>, StoreFailure> {
        let rows = self.block(async {
            self.connection()
                .await?
                .query(
                    "SELECT id, state, threads, calibrated_tps, measured_tps, last_seen_ms, host
                     FROM workers ORDER BY id",
                    &[],
                )
                .await
                .map_err(fail)
        })?;
        rows.iter().map(worker_row).collect()
    }

    fn drain_worker(&self, id: &str) -> Result<bool, StoreFailure> {
        let n = self.block(async {
            self.connection()
                .await?
                .execute("UPDATE workers SET state = 'draining' WHERE id = $1", &[&id])
                .await
                .map_err(fail)
        })?;
        Ok(n > 0)
    }

    fn leadership(&self) -> Option<&dyn bitnet_framework::coordinator_store::Leadership> {
        Some(self)
    }
}

#[cfg(test)]
mod tests;
