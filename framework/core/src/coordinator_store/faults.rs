//! A fault-injecting [`CoordinatorStore`] decorator for tests: it passes every call through to
//! the store it wraps, except that chosen writes fail with an I/O-like [`StoreFailure`] (a
//! full disk, a failed fsync) before reaching it. Drives the coordinator's disk-full and
//! I/O-error paths without a real full disk.

use super::{
    ClaimRequest, ClientRecord, Completion, CoordinatorStore, Finished, LogPage, LogQuery, NewTask,
    StoreFailure, SweepPolicy, SweepReport, TaskPage, TaskQuery, TaskRecord, TaskTelemetry,
    WorkerRecord,
};
use crate::protocol::{LogRecord, TaskCounts, TaskRef, WorkerCounts};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Which writes a [`FaultyStore`] fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOp {
    /// Every write method.
    Any,
    /// [`CoordinatorStore::complete`] only.
    Complete,
    /// [`CoordinatorStore::claim`] only.
    Claim,
    /// [`CoordinatorStore::release`] only.
    Release,
    /// [`CoordinatorStore::append_logs`] only.
    AppendLogs,
}

#[derive(Debug, Clone, Copy)]
struct Plan {
    op: WriteOp,
    /// Matching writes still to let through before failing.
    skip: u64,
    /// Matching writes still to fail.
    fail: u64,
}

/// Wraps a store; see the module docs.
pub struct FaultyStore {
    inner: Arc<dyn CoordinatorStore>,
    plan: Mutex<Option<Plan>>,
    injected: AtomicU64,
}

impl FaultyStore {
    /// Wraps `inner`, failing nothing until [`Self::fail`] is called.
    pub fn new(inner: Arc<dyn CoordinatorStore>) -> Self {
        Self { inner, plan: Mutex::new(None), injected: AtomicU64::new(0) }
    }

    /// Lets the next `skip` writes matching `op` through, then fails the `fail` after them.
    pub fn fail(&self, op: WriteOp, skip: u64, fail: u64) {
        *self.plan.lock().unwrap_or_else(|p| p.into_inner()) = Some(Plan { op, skip, fail });
    }

    /// Stops injecting failures.
    pub fn heal(&self) {
        *self.plan.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Failures injected so far.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::SeqCst)
    }

    fn check(&self, op: WriteOp) -> Result<(), StoreFailure> {
        let mut plan = self.plan.lock().unwrap_or_else(|p| p.into_inner());
        let Some(p) = plan.as_mut() else { return Ok(()) };
        if p.op != WriteOp::Any && p.op != op {
            return Ok(());
        }
        if p.skip > 0 {
            p.skip -= 1;
            return Ok(());
        }
        if p.fail == 0 {
            return Ok(());
        }
        p.fail -= 1;
        self.injected.fetch_add(1, Ordering::SeqCst);
        Err(StoreFailure(format!("injected fault: {op:?} failed (no space left on device)")))
    }
}

impl CoordinatorStore for FaultyStore {
    fn add_tasks(&self, tasks: &[NewTask]) -> Result<Vec<u64>, StoreFailure> {
        self.check(WriteOp::Any)?;
        self.inner.add_tasks(tasks)
    }
    fn claim(&self, req: &ClaimRequest) -> Result<Option<TaskRecord>, StoreFailure> {
        self.check(WriteOp::Claim)?;
        self.inner.claim(req)
    }
    fn task(&self, id: u64) -> Result<Option<TaskRecord>, StoreFailure> {
        self.inner.task(id)
    }
    fn renew_lease(
        &self,
        task: TaskRef,
        worker: &str,
        deadline: u64,
    ) -> Result<bool, StoreFailure> {
        self.check(WriteOp::Any)?;
        self.inner.renew_lease(task, worker, deadline)
    }
    fn complete(&self, tasks: &[Finished], version: u64) -> Result<Vec<Completion>, StoreFailure> {
        self.check(WriteOp::Complete)?;
        self.inner.complete(tasks, version)
    }
    fn release(&self, task: TaskRef, worker: &str) -> Result<bool, StoreFailure> {
        self.check(WriteOp::Release)?;
        self.inner.release(task, worker)
    }
    fn counts(&self) -> Result<TaskCounts, StoreFailure> {
        self.inner.counts()
    }
    fn reset_after_recovery(&self, snapshot_version: u64) -> Result<u64, StoreFailure> {
        self.check(WriteOp::Any)?;
        self.inner.reset_after_recovery(snapshot_version)
    }
    fn sweep(&self, now_ms: u64, policy: &SweepPolicy) -> Result<SweepReport, StoreFailure> {
        self.check(WriteOp::Any)?;
        self.inner.sweep(now_ms, policy)
    }
    fn upsert_worker(&self, record: &WorkerRecord) -> Result<(), StoreFailure> {
        self.check(WriteOp::Any)?;
        self.inner.upsert_worker(record)
    }
    fn worker(&self, id: &str) -> Result<Option<WorkerRecord>, StoreFailure> {
        self.inner.worker(id)
    }
    fn touch_worker(&self, id: &str, now_ms: u64, draining: bool) -> Result<(), StoreFailure> {
        self.check(WriteOp::Any)?;
        self.inner.touch_worker(id, now_ms, draining)
    }
    fn record_throughput(&self, id: &str, tokens_per_sec: f64) -> Result<(), StoreFailure> {
        self.check(WriteOp::Any)?;
        self.inner.record_throughput(id, tokens_per_sec)
    }
    fn worker_counts(&self) -> Result<WorkerCounts, StoreFailure> {
        self.inner.worker_counts()
    }
    fn add_client(&self, id: &str, secret_hash: &str) -> Result<ClientRecord, StoreFailure> {
        self.check(WriteOp::Any)?;
        self.inner.add_client(id, secret_hash)
    }
    fn rotate_client(&self, id: &str, secret_hash: &str) -> Result<ClientRecord, StoreFailure> {
        self.check(WriteOp::Any)?;
        self.inner.rotate_client(id, secret_hash)
    }
    fn revoke_client(&self, id: &str) -> Result<ClientRecord, StoreFailure> {
        self.check(WriteOp::Any)?;
        self.inner.revoke_client(id)
    }
    fn client(&self, id: &str) -> Result<Option<ClientRecord>, StoreFailure> {
        self.inner.client(id)
    }
    fn clients(&self) -> Result<Vec<ClientRecord>, StoreFailure> {
        self.inner.clients()
    }
    fn record_telemetry(&self, row: &TaskTelemetry) -> Result<(), StoreFailure> {
        self.check(WriteOp::Any)?;
        self.inner.record_telemetry(row)
    }
    fn recent_telemetry(&self, limit: usize) -> Result<Vec<TaskTelemetry>, StoreFailure> {
        self.inner.recent_telemetry(limit)
    }
    fn append_logs(&self, worker: &str, records: &[LogRecord]) -> Result<(), StoreFailure> {
        self.check(WriteOp::AppendLogs)?;
        self.inner.append_logs(worker, records)
    }
    fn log_count(&self) -> Result<u64, StoreFailure> {
        self.inner.log_count()
    }
    fn list_tasks(&self, query: &TaskQuery) -> Result<TaskPage, StoreFailure> {
        self.inner.list_tasks(query)
    }
    fn requeue_failed(&self) -> Result<u64, StoreFailure> {
        self.check(WriteOp::Any)?;
        self.inner.requeue_failed()
    }
    fn workers(&self) -> Result<Vec<WorkerRecord>, StoreFailure> {
        self.inner.workers()
    }
    fn drain_worker(&self, id: &str) -> Result<bool, StoreFailure> {
        self.check(WriteOp::Any)?;
        self.inner.drain_worker(id)
    }
    fn query_logs(&self, query: &LogQuery) -> Result<LogPage, StoreFailure> {
        self.inner.query_logs(query)
    }
    fn leadership(&self) -> Option<&dyn super::Leadership> {
        self.inner.leadership()
    }
}
