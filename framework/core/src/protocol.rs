//! The coordinator protocol: the messages a coordinator and its workers exchange, the errors
//! they answer with, and the two sides of the conversation.
//!
//! The protocol is transport-agnostic: [`CoordinatorApi`] is what a coordinator serves (every
//! call names the authenticated worker), [`CoordinatorClient`] is what a worker calls. A
//! [`crate::transport::Transport`] plugin serves one and builds the other. Nothing here knows a
//! wire format or a status code: a transport maps [`ApiError`] to its own.

use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// How training is distributed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TrainMode {
    /// Workers send gradients; the coordinator's optimizer applies them.
    AsyncSgd,
    /// Workers run local inner steps and send pseudo-gradients; the coordinator applies an
    /// outer optimizer.
    Diloco,
}

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
    /// The worker machine's host name, shown to operators (as the worker says: not trusted;
    /// the coordinator keeps at most 255 printable characters). Empty from older workers.
    #[serde(default)]
    pub host: String,
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
    /// Where to download the weights straight from the object store, when the coordinator's
    /// weight store offers it; `None`: from the coordinator (`weights`). The bytes are checked
    /// against `weights_sha256` all the same, and a failed download falls back to the
    /// coordinator.
    ///
    /// The URL travels in the task rather than as a redirect from the weights endpoint: the
    /// worker then fetches it with a client of its own (the object store's certificates, not
    /// the run's pinned CA; no bearer token), bounded by the length given here, and an old
    /// worker that ignores the field still downloads from the coordinator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights_url: Option<PresignedUrl>,
    /// Where to download the shard straight from the object store (as `weights_url`), checked
    /// against `shard_sha256`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard_url: Option<PresignedUrl>,
}

/// A short-lived URL that GETs one object of an object store without credentials.
///
/// Whoever holds it can read that object until it expires: it is handed only to authenticated
/// workers, with tasks, and is never logged.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresignedUrl {
    /// The URL (`https://`, or `http://` for a store the operator allowed plain HTTP to).
    pub url: String,
    /// The object's length, bytes: a download reads no more.
    pub bytes: u64,
    /// When the URL stops working, ms since the epoch.
    pub expires_ms: u64,
}

impl std::fmt::Debug for PresignedUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The query string holds the signature: only the object's address is shown.
        let address = self.url.split('?').next().unwrap_or_default();
        f.debug_struct("PresignedUrl")
            .field("url", &format_args!("{address}?..."))
            .field("bytes", &self.bytes)
            .field("expires_ms", &self.expires_ms)
            .finish()
    }
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
    /// The fleet's training tokens/s: the tokens of the most recent applied updates over the
    /// wall time they spanned (claims, transfers and rounds included).
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

/// Errors of the protocol. Transports map them to their own codes (the HTTP plugin to statuses).
#[derive(Debug, Clone, PartialEq, thiserror::Error, Serialize, Deserialize)]
pub enum ApiError {
    /// Missing, invalid or expired credentials.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// Authenticated, but not allowed; a revoked client, another worker's task.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// No such thing.
    #[error("not found: {0}")]
    NotFound(String),
    /// The request conflicts with the current state: a lease that moved on.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The request is malformed or its payload invalid.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The body is larger than allowed.
    #[error("payload too large: {0}")]
    TooLarge(String),
    /// Too many requests (a rate limit, a locked-out client): wait `retry_after_secs`.
    #[error("too many requests: {reason} (retry after {retry_after_secs} s)")]
    TooMany {
        /// What was limited.
        reason: String,
        /// Seconds to wait before trying again.
        retry_after_secs: u64,
    },
    /// Try again later.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A failure of the coordinator itself.
    #[error("internal error: {0}")]
    Internal(String),
    /// The transport failed (connection refused, timeout) before an answer came.
    #[error("transport: {0}")]
    Transport(String),
}

impl ApiError {
    /// Whether retrying the same request may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ApiError::Unavailable(_)
                | ApiError::Transport(_)
                | ApiError::Internal(_)
                | ApiError::TooMany { .. }
        )
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
    /// Whether a claim by `worker` would now wait for the open round to close (its update
    /// waits in it), answered without blocking; if so, `waker` is woken once the answer may have
    /// changed (the round closed). An async transport parks the claim on the waker before
    /// calling [`Self::claim`], so a waiting claim holds no thread and is answered when the
    /// round closes. An implementation that never wakes leaves the caller its fallback timer.
    fn claim_would_wait(&self, worker: &str, waker: &std::task::Waker) -> bool {
        let _ = (worker, waker);
        false
    }
    /// Largest upload body this coordinator can accept, bytes (`None`: no limit of its own).
    /// Transports refuse larger bodies before reading them.
    fn upload_limit(&self) -> Option<u64> {
        None
    }
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
    /// Downloads the object `url` names straight from the object store, reading at most
    /// `url.bytes` bytes, without the coordinator's credentials or pinned CA. `None` (the
    /// default): this transport cannot, and the worker downloads from the coordinator. The
    /// caller verifies the bytes.
    fn fetch_presigned(&mut self, url: &PresignedUrl) -> Option<Result<Vec<u8>, ApiError>> {
        let _ = url;
        None
    }
}
