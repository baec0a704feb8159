//! The coordinator protocol, the `Transport` slot that carries it, and the `CoordinatorStore`
//! slot that persists the coordinator's state.
//!
//! The protocol is transport-agnostic: [`CoordinatorApi`] is what a coordinator serves (every
//! call names the authenticated worker), [`CoordinatorClient`] is what a worker calls. A
//! [`Transport`] plugin serves one and builds the other (HTTP with JWTs, or direct calls in one
//! process). Everything is synchronous: workers are CPU-bound and a server plugin can move calls
//! onto blocking threads.

use crate::config::TrainMode;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (the protocol's clock).
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// What a worker tells the coordinator when it starts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Registration {
    /// Compute threads the worker uses.
    pub threads: usize,
    /// Training throughput measured by timing real training steps of the configured model.
    pub tokens_per_sec: f64,
    /// Framework version of the worker.
    pub framework_version: String,
    /// Fingerprint of the worker's parameter layout; must match the coordinator's.
    pub layout_fingerprint: String,
}

/// The coordinator's answer to a registration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Registered {
    /// The worker id (the authenticated client id).
    pub worker_id: String,
    /// Training mode of the run.
    pub mode: TrainMode,
    /// How often to heartbeat while working, in milliseconds.
    pub heartbeat_ms: u64,
    /// Current weight version.
    pub weight_version: u64,
}

/// One leased task: a slice of a token shard plus the mode's parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// Task id.
    pub task_id: u64,
    /// Lease id (the attempt number); uploads and heartbeats name it.
    pub lease: u64,
    /// When the lease expires (ms since the epoch) unless renewed by a heartbeat.
    pub lease_deadline_ms: u64,
    /// Shard name.
    pub shard: String,
    /// SHA-256 of the shard's bytes, hex.
    pub shard_sha256: String,
    /// First token of the slice.
    pub offset: u64,
    /// Tokens in the slice.
    pub tokens: u64,
    /// Training mode.
    pub mode: TrainMode,
    /// Sequences per step.
    pub batch_size: usize,
    /// Tokens per sequence.
    pub seq_len: usize,
    /// Weight version to start from.
    pub weights_version: u64,
    /// SHA-256 of that version's blob, hex.
    pub weights_sha256: String,
    /// How to cut the slice into windows: `Some` = the shard holds `[BOS]`-delimited examples,
    /// packed like the single-process loader; `None` = a plain token stream, cut into windows.
    #[serde(default)]
    pub packing: Option<Packing>,
    /// The run's optimizer step this task starts at (DiLoCo: tokens applied / the schedule
    /// unit), so a worker's inner learning-rate schedule follows the run, not the worker's own
    /// life.
    #[serde(default)]
    pub schedule_step: u64,
}

/// The special tokens a worker needs to pack a slice of examples into windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Packing {
    /// `[BOS]`: every example starts with it.
    pub bos: u32,
    /// `[PAD]`: fills the unused tail of a window.
    pub pad: u32,
}

/// A task named by id and lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TaskRef {
    /// Task id.
    pub task_id: u64,
    /// Lease id.
    pub lease: u64,
}

/// A worker's periodic sign of life.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The task being worked on, whose lease to renew.
    pub task: Option<TaskRef>,
    /// Tokens of the task processed so far.
    pub progress_tokens: u64,
    /// The worker gives the task back (shutting down): it returns to Pending at once.
    pub hand_back: bool,
    /// The worker is draining: it will claim nothing more.
    pub draining: bool,
}

/// The coordinator's answer to a heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatReply {
    /// Whether the lease is still this worker's (false: abandon the task).
    pub lease_valid: bool,
    /// The renewed deadline.
    pub lease_deadline_ms: u64,
    /// Current weight version.
    pub weight_version: u64,
}

/// A finished task's update.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdateUpload {
    /// Task and lease.
    pub task: TaskRef,
    /// Weight version the update was computed from.
    pub base_version: u64,
    /// Mean training loss over the task.
    pub loss: f32,
    /// Tokens trained on.
    pub tokens: u64,
    /// Wall-clock seconds of compute.
    pub seconds: f64,
    /// The update, encoded by the run's gradient codec.
    #[serde(with = "hex_bytes")]
    pub payload: Vec<u8>,
}

/// Upload metadata for transports that carry the payload separately (e.g. as the HTTP body).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UploadMeta {
    /// Task and lease.
    pub task: TaskRef,
    /// Weight version the update was computed from.
    pub base_version: u64,
    /// Mean training loss over the task.
    pub loss: f32,
    /// Tokens trained on.
    pub tokens: u64,
    /// Wall-clock seconds of compute.
    pub seconds: f64,
}

impl UpdateUpload {
    /// Splits into metadata and payload.
    pub fn split(self) -> (UploadMeta, Vec<u8>) {
        (
            UploadMeta {
                task: self.task,
                base_version: self.base_version,
                loss: self.loss,
                tokens: self.tokens,
                seconds: self.seconds,
            },
            self.payload,
        )
    }

    /// Joins metadata and payload.
    pub fn join(meta: UploadMeta, payload: Vec<u8>) -> Self {
        Self {
            task: meta.task,
            base_version: meta.base_version,
            loss: meta.loss,
            tokens: meta.tokens,
            seconds: meta.seconds,
            payload,
        }
    }
}

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        hex::decode(text).map_err(serde::de::Error::custom)
    }
}

/// What became of an upload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UploadReceipt {
    /// Applied to the weights.
    pub accepted: bool,
    /// The weight version the update produced, when applied.
    pub applied_version: Option<u64>,
    /// Versions the update was behind.
    pub staleness: u64,
    /// Learning-rate multiplier the staleness policy chose (0 when rejected).
    pub lr_scale: f32,
    /// Why it was rejected, if it was.
    pub reason: Option<String>,
}

/// One structured log record shipped by a worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogRecord {
    /// Time, ms since the epoch.
    pub ts_ms: u64,
    /// `error`, `warn`, `info`, `debug`.
    pub level: String,
    /// Message.
    pub message: String,
}

/// Counts of tasks by state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TaskCounts {
    /// Waiting to be claimed.
    pub pending: u64,
    /// Leased to a worker.
    pub assigned: u64,
    /// Applied (or deliberately finished).
    pub done: u64,
    /// Gave up after too many attempts.
    pub failed: u64,
    /// Tokens in Done tasks.
    pub done_tokens: u64,
    /// Tokens in all tasks.
    pub total_tokens: u64,
}

impl TaskCounts {
    /// Whether nothing is left to do.
    pub fn finished(&self) -> bool {
        self.pending == 0 && self.assigned == 0
    }
}

/// Counts of workers by state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct WorkerCounts {
    /// Heartbeating.
    pub active: u64,
    /// Finishing, claiming nothing more.
    pub draining: u64,
    /// Silent for too long.
    pub gone: u64,
}

/// Public status of a coordinator (`GET /status`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// Current weight version.
    pub weight_version: u64,
    /// Newest snapshot written.
    pub snapshot_version: u64,
    /// Tasks by state.
    pub tasks: TaskCounts,
    /// Workers by state.
    pub workers: WorkerCounts,
    /// Updates applied by this coordinator process.
    pub updates_applied: u64,
    /// Updates rejected (stale, malformed) by this process.
    pub updates_rejected: u64,
    /// Mean training loss of the most recent applied updates.
    pub recent_loss: Option<f32>,
    /// Training tokens/s over the most recent applied updates (all workers).
    pub tokens_per_sec: f64,
}

/// A blob with its checksum, as served for weights and corpus shards.
#[derive(Debug, Clone, PartialEq)]
pub struct Blob {
    /// Version (weights) or 0 (shards).
    pub version: u64,
    /// SHA-256 of `bytes`, hex.
    pub sha256: String,
    /// The bytes, shared.
    pub bytes: Arc<Vec<u8>>,
}

/// Description of one corpus shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardInfo {
    /// Name (unique; used in URLs: `[A-Za-z0-9._-]`).
    pub name: String,
    /// Tokens in the shard.
    pub tokens: u64,
    /// SHA-256 of the shard's bytes, hex.
    pub sha256: String,
}

/// Errors of the protocol; each maps to an HTTP status.
#[derive(Debug, Clone, PartialEq, thiserror::Error, Serialize, Deserialize)]
pub enum ApiError {
    /// Missing, invalid or expired credentials (401).
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// Authenticated, but not allowed (403): revoked client, another worker's task.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// No such thing (404).
    #[error("not found: {0}")]
    NotFound(String),
    /// The request conflicts with the current state (409): a lease that moved on.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The request is malformed (400) or its payload invalid (422).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The body is larger than allowed (413).
    #[error("payload too large: {0}")]
    TooLarge(String),
    /// Try again later (503).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A failure of the coordinator itself (500).
    #[error("internal error: {0}")]
    Internal(String),
    /// The transport failed (connection refused, timeout) before an answer came.
    #[error("transport: {0}")]
    Transport(String),
}

impl ApiError {
    /// HTTP status code of the error.
    pub fn status(&self) -> u16 {
        match self {
            ApiError::Unauthorized(_) => 401,
            ApiError::Forbidden(_) => 403,
            ApiError::NotFound(_) => 404,
            ApiError::Conflict(_) => 409,
            ApiError::Invalid(_) => 422,
            ApiError::TooLarge(_) => 413,
            ApiError::Unavailable(_) => 503,
            ApiError::Internal(_) => 500,
            ApiError::Transport(_) => 502,
        }
    }

    /// Whether retrying the same request may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, ApiError::Unavailable(_) | ApiError::Transport(_) | ApiError::Internal(_))
    }

    /// Rebuilds an error from an HTTP status and message.
    pub fn from_status(status: u16, message: String) -> Self {
        match status {
            401 => ApiError::Unauthorized(message),
            403 => ApiError::Forbidden(message),
            404 => ApiError::NotFound(message),
            409 => ApiError::Conflict(message),
            400 | 422 => ApiError::Invalid(message),
            413 => ApiError::TooLarge(message),
            503 => ApiError::Unavailable(message),
            500 => ApiError::Internal(message),
            _ => ApiError::Transport(format!("HTTP {status}: {message}")),
        }
    }
}

impl From<StoreFailure> for ApiError {
    fn from(e: StoreFailure) -> Self {
        ApiError::Internal(e.to_string())
    }
}

/// What a coordinator serves. Every worker-facing call names the authenticated worker; the
/// transport authenticates before calling.
pub trait CoordinatorApi: Send + Sync {
    /// Registers (or re-registers) a worker.
    fn register(&self, worker: &str, registration: Registration) -> Result<Registered, ApiError>;
    /// Claims a task atomically, sized to the worker's throughput; `None` when the queue is
    /// empty.
    fn claim(&self, worker: &str) -> Result<Option<TaskSpec>, ApiError>;
    /// Renews the worker's lease, or takes the task back.
    fn heartbeat(&self, worker: &str, heartbeat: Heartbeat) -> Result<HeartbeatReply, ApiError>;
    /// Completes a task with its update. Idempotent per (task, lease).
    fn upload(&self, worker: &str, upload: UpdateUpload) -> Result<UploadReceipt, ApiError>;
    /// Stores a batch of the worker's log records.
    fn logs(&self, worker: &str, records: Vec<LogRecord>) -> Result<(), ApiError>;
    /// Weights blob of `version`; `u64::MAX` asks for the newest.
    fn weights(&self, version: u64) -> Result<Blob, ApiError>;
    /// A corpus shard's bytes.
    fn corpus(&self, shard: &str) -> Result<Blob, ApiError>;
    /// Public status.
    fn status(&self) -> Result<StatusReport, ApiError>;
    /// Prometheus text exposition of the coordinator's metrics.
    fn metrics(&self) -> String;
}

/// What a worker calls; one client per worker, authenticated as that worker.
pub trait CoordinatorClient: Send {
    /// The id this client is authenticated as.
    fn worker_id(&self) -> &str;
    /// See [`CoordinatorApi::register`].
    fn register(&mut self, registration: Registration) -> Result<Registered, ApiError>;
    /// See [`CoordinatorApi::claim`].
    fn claim(&mut self) -> Result<Option<TaskSpec>, ApiError>;
    /// See [`CoordinatorApi::heartbeat`].
    fn heartbeat(&mut self, heartbeat: Heartbeat) -> Result<HeartbeatReply, ApiError>;
    /// See [`CoordinatorApi::upload`].
    fn upload(&mut self, upload: UpdateUpload) -> Result<UploadReceipt, ApiError>;
    /// See [`CoordinatorApi::logs`].
    fn logs(&mut self, records: Vec<LogRecord>) -> Result<(), ApiError>;
    /// See [`CoordinatorApi::weights`].
    fn weights(&mut self, version: u64) -> Result<Blob, ApiError>;
    /// See [`CoordinatorApi::corpus`].
    fn corpus(&mut self, shard: &str) -> Result<Blob, ApiError>;
    /// See [`CoordinatorApi::status`].
    fn status(&mut self) -> Result<StatusReport, ApiError>;
}

/// A worker's credentials.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    /// Client id (= worker id).
    pub client_id: String,
    /// Client secret.
    pub client_secret: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("client_id", &self.client_id).finish_non_exhaustive()
    }
}

/// Everything a server needs besides the API: who may call it.
#[derive(Clone)]
pub struct ServeContext {
    /// The coordinator.
    pub api: Arc<dyn CoordinatorApi>,
    /// Client keys and revocations (the store).
    pub store: Arc<dyn CoordinatorStore>,
}

/// A running server; dropping it or calling [`ServerHandle::shutdown`] stops it.
pub trait ServerHandle: Send {
    /// Where clients connect (`http://127.0.0.1:PORT`, `inproc://NAME`).
    fn endpoint(&self) -> String;
    /// Stops serving and waits for in-flight requests.
    fn shutdown(self: Box<Self>);
}

/// The `Transport` slot: serves a coordinator and connects workers to one.
pub trait Transport: Send + Sync {
    /// Starts serving `ctx.api`.
    fn serve(&self, ctx: ServeContext) -> Result<Box<dyn ServerHandle>, ApiError>;
    /// Connects to the coordinator at `endpoint` as `credentials`.
    fn connect(
        &self,
        endpoint: &str,
        credentials: Credentials,
    ) -> Result<Box<dyn CoordinatorClient>, ApiError>;
}

// ---------------------------------------------------------------------------------------------
// The coordinator store slot.
// ---------------------------------------------------------------------------------------------

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
}

impl Default for SweepPolicy {
    fn default() -> Self {
        Self {
            worker_timeout_ms: 60_000,
            telemetry_retention_ms: 7 * 24 * 3600 * 1000,
            max_attempts: 5,
        }
    }
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

/// A store failure (I/O, corruption, a broken invariant).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("coordinator store: {0}")]
pub struct StoreFailure(pub String);

/// The `CoordinatorStore` slot: the coordinator's durable state other than weights.
///
/// Every method is atomic. Implementations run the conformance suite in
/// [`crate::coordinator::conformance`].
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
    /// Marks the task Done with the version its update produced, if it is Assigned to `worker`
    /// under `lease`; reports a retried completion, or why the completion was refused.
    fn complete(
        &self,
        task: TaskRef,
        worker: &str,
        applied_version: u64,
    ) -> Result<Completion, StoreFailure>;
    /// Returns an Assigned task to Pending (hand-back, rejected update). Returns whether it
    /// was Assigned to `worker` under `lease`.
    fn release(&self, task: TaskRef, worker: &str) -> Result<bool, StoreFailure>;
    /// Task counts.
    fn counts(&self) -> Result<TaskCounts, StoreFailure>;
    /// After a crash: every Assigned task, and every Done task whose update is newer than the
    /// snapshot the coordinator resumed from, goes back to Pending. Returns how many moved.
    fn reset_after_recovery(&self, snapshot_version: u64) -> Result<u64, StoreFailure>;
    /// Returns expired leases to Pending (or Failed after too many attempts), marks silent
    /// workers Gone and prunes old telemetry.
    fn sweep(&self, now_ms: u64, policy: &SweepPolicy) -> Result<SweepReport, StoreFailure>;

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
}

/// Client secrets: generated at random, stored only as argon2 PHC hashes.
pub mod secrets {
    use argon2::Argon2;
    use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
    use rand::RngCore;

    /// A new random secret: 32 bytes, hex.
    pub fn generate_secret() -> String {
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        hex::encode(bytes)
    }

    /// A new random client id with `prefix`.
    pub fn generate_client_id(prefix: &str) -> String {
        let mut bytes = [0u8; 6];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        format!("{prefix}-{}", hex::encode(bytes))
    }

    /// The argon2id PHC hash of `secret` with a fresh salt.
    pub fn hash_secret(secret: &str) -> Result<String, String> {
        let salt = SaltString::generate(&mut rand::rngs::OsRng);
        Argon2::default()
            .hash_password(secret.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| format!("hashing the secret: {e}"))
    }

    /// Whether `secret` matches the PHC hash `hash` (false for a malformed hash).
    pub fn verify_secret(secret: &str, hash: &str) -> bool {
        PasswordHash::new(hash)
            .map(|h| Argon2::default().verify_password(secret.as_bytes(), &h).is_ok())
            .unwrap_or(false)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn hashes_verify_only_their_secret() {
            let s = generate_secret();
            let h = hash_secret(&s).expect("hash");
            assert!(h.starts_with("$argon2"), "{h}");
            assert!(verify_secret(&s, &h));
            assert!(!verify_secret("wrong", &h));
            assert!(!verify_secret(&s, "not a hash"));
            assert_ne!(hash_secret(&s).expect("hash"), h, "fresh salt");
        }
    }
}
