//! The `CoordinatorStore` slot: the coordinator's durable state other than weights (the work
//! queue, workers, client keys, telemetry and logs), and the queue arithmetic every store shares.

use crate::protocol::{ApiError, LogRecord, TaskCounts, TaskRef, WorkerCounts};
use serde::{Deserialize, Serialize};

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
#[cfg(any(test, feature = "conformance"))]
pub mod faults;
pub mod leadership;
pub mod queue;

pub use leadership::{LeaderInfo, Leadership, Lease, SnapshotHead};

/// State of a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TaskState {
    /// Waiting to be claimed.
    Pending,
    /// Leased to a worker.
    Assigned,
    /// Finished: its update is applied (or was dropped deliberately).
    Done,
    /// Gave up after too many attempts.
    Failed,
}

impl TaskState {
    /// Name stored in databases.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Pending => "pending",
            TaskState::Assigned => "assigned",
            TaskState::Done => "done",
            TaskState::Failed => "failed",
        }
    }

    /// Parses [`TaskState::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => TaskState::Pending,
            "assigned" => TaskState::Assigned,
            "done" => TaskState::Done,
            "failed" => TaskState::Failed,
            _ => return None,
        })
    }
}

/// A task to add to the queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewTask {
    /// Shard name.
    pub shard: String,
    /// First token.
    pub offset: u64,
    /// Tokens.
    pub tokens: u64,
}

/// A task as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// Id.
    pub id: u64,
    /// Shard name.
    pub shard: String,
    /// First token.
    pub offset: u64,
    /// Tokens.
    pub tokens: u64,
    /// State.
    pub state: TaskState,
    /// Worker holding (or that finished) it.
    pub worker: Option<String>,
    /// Claims so far; the current lease id.
    pub attempts: u64,
    /// Lease deadline, ms since the epoch (Assigned only).
    pub lease_deadline_ms: u64,
    /// Weight version its update produced (Done only; 0 if dropped).
    pub applied_version: u64,
}

/// How to size and lease a claim.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimRequest {
    /// Claiming worker.
    pub worker: String,
    /// Now, ms since the epoch.
    pub now_ms: u64,
    /// Largest slice to hand out; a larger pending task is split, the rest stays Pending.
    pub max_tokens: u64,
    /// Slices are multiples of this (a whole number of windows).
    pub granularity: u64,
    /// Lease length from now, ms.
    pub lease_ms: u64,
    /// Most tasks one worker may hold Assigned at once (0 = no cap): a claim by a worker
    /// already holding this many gets nothing.
    pub max_leases: u64,
}

/// State of a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WorkerState {
    /// Heartbeating.
    Active,
    /// Finishing; claims nothing more.
    Draining,
    /// Silent for too long.
    Gone,
}

impl WorkerState {
    /// Name stored in databases.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerState::Active => "active",
            WorkerState::Draining => "draining",
            WorkerState::Gone => "gone",
        }
    }

    /// Parses [`WorkerState::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "active" => WorkerState::Active,
            "draining" => WorkerState::Draining,
            "gone" => WorkerState::Gone,
            _ => return None,
        })
    }
}

/// A worker as registered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerRecord {
    /// Id.
    pub id: String,
    /// State.
    pub state: WorkerState,
    /// Threads.
    pub threads: usize,
    /// Calibrated tokens/s (from registration).
    pub calibrated_tps: f64,
    /// Measured tokens/s (moving average of finished tasks); 0 until the first task.
    pub measured_tps: f64,
    /// Last heartbeat, ms since the epoch.
    pub last_seen_ms: u64,
    /// Host name the worker registered with (empty if it named none).
    #[serde(default)]
    pub host: String,
}

impl WorkerRecord {
    /// Best estimate of the worker's throughput: measured when known, else calibrated.
    pub fn throughput(&self) -> f64 {
        if self.measured_tps > 0.0 { self.measured_tps } else { self.calibrated_tps }
    }
}

/// A client key as stored: the secret only as an argon2 (or similar) hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientRecord {
    /// Client id.
    pub id: String,
    /// PHC-format hash of the secret.
    pub secret_hash: String,
    /// Bumped by every rotation and revocation; tokens carry it and die when it moves.
    pub generation: u64,
    /// Revoked clients may not authenticate.
    pub revoked: bool,
    /// Creation time, ms since the epoch.
    pub created_ms: u64,
}

/// Per-task telemetry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskTelemetry {
    /// Task.
    pub task_id: u64,
    /// Worker.
    pub worker: String,
    /// Mean loss.
    pub loss: f32,
    /// Tokens.
    pub tokens: u64,
    /// Tokens/s of the worker on this task.
    pub tokens_per_sec: f64,
    /// Versions behind.
    pub staleness: u64,
    /// Applied or rejected.
    pub accepted: bool,
    /// Weight version after applying (0 if rejected).
    pub version: u64,
    /// When, ms since the epoch.
    pub ts_ms: u64,
}

/// What one sweep did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SweepReport {
    /// Expired leases returned to Pending.
    pub leases_expired: u64,
    /// Expired leases whose task ran out of attempts (now Failed).
    pub tasks_failed: u64,
    /// Workers marked Gone.
    pub workers_gone: u64,
    /// Telemetry rows pruned.
    pub telemetry_pruned: u64,
    /// Worker log records pruned (by age or by count).
    pub logs_pruned: u64,
}

/// When a sweep acts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SweepPolicy {
    /// A worker silent this long is Gone.
    pub worker_timeout_ms: u64,
    /// Telemetry older than this is pruned.
    pub telemetry_retention_ms: u64,
    /// A task whose lease expires after this many attempts is Failed.
    pub max_attempts: u64,
    /// Worker log records older than this are pruned.
    pub log_retention_ms: u64,
    /// At most this many worker log records are kept; the earliest stored go first.
    pub max_log_records: u64,
}

impl Default for SweepPolicy {
    fn default() -> Self {
        Self {
            worker_timeout_ms: 60_000,
            telemetry_retention_ms: 7 * 24 * 3600 * 1000,
            max_attempts: 5,
            log_retention_ms: 7 * 24 * 3600 * 1000,
            max_log_records: 1_000_000,
        }
    }
}

/// One task of a closing round, reported by the worker that held it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    /// The task and the lease its update was computed under.
    pub task: TaskRef,
    /// The worker that uploaded it.
    pub worker: String,
}

/// Outcome of completing a task.
#[derive(Debug, Clone, PartialEq)]
pub enum Completion {
    /// The task was Assigned to this worker under this lease and is now Done.
    Completed,
    /// It was already Done under this lease (a retried upload): nothing changed.
    AlreadyDone {
        /// Version it produced.
        applied_version: u64,
    },
    /// Not Assigned to this worker under this lease; nothing changed.
    Refused(String),
}

/// Which tasks to list (the console's and the admin API's task queue view).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskQuery {
    /// Only tasks in this state.
    pub state: Option<TaskState>,
    /// Only tasks held (or finished) by this worker.
    pub worker: Option<String>,
    /// Tasks to skip, in id order.
    pub offset: u64,
    /// Tasks to return at most.
    pub limit: u64,
}

/// One page of tasks, in id order, and how many match in all.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskPage {
    /// The page.
    pub tasks: Vec<TaskRecord>,
    /// Tasks matching the query, all pages together.
    pub total: u64,
}

/// Which worker log records to list.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogQuery {
    /// Only this worker's records.
    pub worker: Option<String>,
    /// Only records of this level (`error`, `warn`, `info`, `debug`; case-insensitive).
    pub level: Option<String>,
    /// Only records whose message contains this text (case-insensitive).
    pub text: Option<String>,
    /// Records to skip, newest first.
    pub offset: u64,
    /// Records to return at most.
    pub limit: u64,
}

/// A worker log record as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredLog {
    /// The worker that sent it.
    pub worker: String,
    /// Time, ms since the epoch.
    pub ts_ms: u64,
    /// Level.
    pub level: String,
    /// Message.
    pub message: String,
}

impl StoredLog {
    /// Whether the record matches `q`'s filters (paging aside): the rule every store applies.
    pub fn matches(&self, q: &LogQuery) -> bool {
        q.worker.as_deref().is_none_or(|w| w == self.worker)
            && q.level.as_deref().is_none_or(|l| l.eq_ignore_ascii_case(&self.level))
            && q.text
                .as_deref()
                .is_none_or(|t| self.message.to_lowercase().contains(&t.to_lowercase()))
    }
}

/// One page of log records, newest first, and how many match in all.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LogPage {
    /// The page.
    pub records: Vec<StoredLog>,
    /// Records matching the query, all pages together.
    pub total: u64,
}

/// A store failure (I/O, corruption, a broken invariant).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("coordinator store: {0}")]
pub struct StoreFailure(pub String);

/// A store failure answers a protocol call as an internal error.
impl From<StoreFailure> for ApiError {
    fn from(e: StoreFailure) -> Self {
        ApiError::Internal(e.to_string())
    }
}

/// The `CoordinatorStore` slot: the coordinator's durable state other than weights.
///
/// Every method is atomic. Implementations run the conformance suite in
/// [`conformance`].
pub trait CoordinatorStore: Send + Sync {
    // --- work queue -------------------------------------------------------------------------

    /// Appends tasks as Pending; returns their ids.
    fn add_tasks(&self, tasks: &[NewTask]) -> Result<Vec<u64>, StoreFailure>;
    /// Atomically claims the oldest Pending task for `req.worker`. When it is larger than
    /// `req.max_tokens` it is split: its head is claimed as a new task, and the rest stays
    /// Pending in the old task's place in the queue, so claims walk the seeded slices in order
    /// (an epoch's shards one after another, the next epoch after them). Increments the claimed
    /// task's attempts; the lease id is the new attempt count.
    fn claim(&self, req: &ClaimRequest) -> Result<Option<TaskRecord>, StoreFailure>;
    /// A task by id.
    fn task(&self, id: u64) -> Result<Option<TaskRecord>, StoreFailure>;
    /// Extends the lease when the task is still Assigned to `worker` under `lease`.
    fn renew_lease(
        &self,
        task: TaskRef,
        worker: &str,
        deadline_ms: u64,
    ) -> Result<bool, StoreFailure>;
    /// Marks every task of `tasks` Done with the version their round produced, each if it is
    /// Assigned to its worker under its lease; reports, per task in order, the completion, a
    /// retried completion, or why it was refused. All or nothing: on an error no task changed,
    /// so the coordinator can leave its step untaken and the round open.
    fn complete(
        &self,
        tasks: &[Finished],
        applied_version: u64,
    ) -> Result<Vec<Completion>, StoreFailure>;
    /// Returns an Assigned task to Pending (hand-back, rejected update). Returns whether it
    /// was Assigned to `worker` under `lease`.
    fn release(&self, task: TaskRef, worker: &str) -> Result<bool, StoreFailure>;
    /// Task counts.
    fn counts(&self) -> Result<TaskCounts, StoreFailure>;
    /// After a crash: every Assigned task, and every Done task whose update is newer than the
    /// snapshot the coordinator resumed from, goes back to Pending. Returns how many moved.
    fn reset_after_recovery(&self, snapshot_version: u64) -> Result<u64, StoreFailure>;
    /// Returns expired leases to Pending (or Failed after too many attempts), marks silent
    /// workers Gone and prunes old telemetry and worker logs.
    fn sweep(&self, now_ms: u64, policy: &SweepPolicy) -> Result<SweepReport, StoreFailure>;
    /// One page of the tasks matching `query`, in id order.
    fn list_tasks(&self, query: &TaskQuery) -> Result<TaskPage, StoreFailure>;
    /// Returns every Failed task to Pending (its attempt count, the lease id, keeps counting).
    /// Returns how many moved.
    fn requeue_failed(&self) -> Result<u64, StoreFailure>;

    // --- workers -----------------------------------------------------------------------------

    /// Registers or refreshes a worker (Active).
    fn upsert_worker(&self, record: &WorkerRecord) -> Result<(), StoreFailure>;
    /// A worker by id.
    fn worker(&self, id: &str) -> Result<Option<WorkerRecord>, StoreFailure>;
    /// Records a heartbeat (and Draining when asked).
    fn touch_worker(&self, id: &str, now_ms: u64, draining: bool) -> Result<(), StoreFailure>;
    /// Folds a finished task's throughput into the worker's moving average.
    fn record_throughput(&self, id: &str, tokens_per_sec: f64) -> Result<(), StoreFailure>;
    /// Worker counts.
    fn worker_counts(&self) -> Result<WorkerCounts, StoreFailure>;
    /// Every worker, by id.
    fn workers(&self) -> Result<Vec<WorkerRecord>, StoreFailure>;
    /// Marks a worker Draining (an operator's drain): it claims nothing more until it
    /// registers again. Returns whether the worker exists.
    fn drain_worker(&self, id: &str) -> Result<bool, StoreFailure>;

    // --- client keys -------------------------------------------------------------------------

    /// Adds a client; refuses an existing id.
    fn add_client(&self, id: &str, secret_hash: &str) -> Result<ClientRecord, StoreFailure>;
    /// Replaces a client's secret hash and bumps its generation (and un-revokes it).
    fn rotate_client(&self, id: &str, secret_hash: &str) -> Result<ClientRecord, StoreFailure>;
    /// Revokes a client and bumps its generation.
    fn revoke_client(&self, id: &str) -> Result<ClientRecord, StoreFailure>;
    /// A client by id.
    fn client(&self, id: &str) -> Result<Option<ClientRecord>, StoreFailure>;
    /// Every client, by id.
    fn clients(&self) -> Result<Vec<ClientRecord>, StoreFailure>;

    // --- telemetry and logs ------------------------------------------------------------------

    /// Records one task's telemetry.
    fn record_telemetry(&self, row: &TaskTelemetry) -> Result<(), StoreFailure>;
    /// The newest `limit` telemetry rows, newest first.
    fn recent_telemetry(&self, limit: usize) -> Result<Vec<TaskTelemetry>, StoreFailure>;
    /// Appends a worker's log records.
    fn append_logs(&self, worker: &str, records: &[LogRecord]) -> Result<(), StoreFailure>;
    /// Number of stored log records (for status and tests).
    fn log_count(&self) -> Result<u64, StoreFailure>;
    /// One page of the stored log records matching `query`, newest first.
    fn query_logs(&self, query: &LogQuery) -> Result<LogPage, StoreFailure>;

    // --- replicas --------------------------------------------------------------------------

    /// The leader election of a store that several coordinator replicas can share; `None` (the
    /// default) for a store only one coordinator process may use.
    fn leadership(&self) -> Option<&dyn Leadership> {
        None
    }
}
