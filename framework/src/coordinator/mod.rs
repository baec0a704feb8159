//! The coordinator core, independent of any transport: it owns the master weights and the
//! optimizer, leases tasks sized to each worker's measured throughput, applies uploaded updates
//! through the staleness policy, snapshots off the request path and recovers from the newest
//! valid snapshot.
//!
//! Durable state is split in two: weights and optimizer state live in snapshots in the
//! [`WeightStore`]; the queue, workers, keys and telemetry live in the [`CoordinatorStore`].
//! A task's update counts only once it is in a snapshot: on restart, every task Done with a
//! version newer than the snapshot goes back to Pending, so nothing is lost or applied twice.

pub mod assemble;
pub mod blob;
#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
pub mod corpus;
pub mod memory;
mod metrics;
pub mod round;
pub mod seed;

pub use corpus::{Corpus, DirCorpus, MemoryCorpus};

use crate::codec::GradientCodec;
use crate::config::{TrainMode, TrainSection};
use crate::optim::{Optimizer, StepInfo};
use crate::staleness::{StalenessDecision, StalenessPolicy};
use crate::store::{WeightStore, sha256_hex};
use crate::tensor::ParamLayout;
use crate::transport::{
    ApiError, Blob, ClaimRequest, Completion, CoordinatorApi, CoordinatorStore, Heartbeat,
    HeartbeatReply, LogRecord, Packing, Registered, Registration, StatusReport, SweepPolicy,
    TaskRef, TaskSpec, TaskTelemetry, UpdateUpload, UploadReceipt, WorkerRecord, WorkerState,
    now_ms,
};
use crate::weights::WeightCodec;
use metrics::Metrics;
use round::{Entry, Round};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The `[coordinator]` section of a run config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CoordinatorSection {
    /// Target wall-clock seconds of one task on the worker that claims it.
    pub task_seconds: f64,
    /// Lease = headroom x the task's expected duration (at least `min_lease_secs`).
    pub lease_headroom: f64,
    /// Shortest lease, seconds.
    pub min_lease_secs: f64,
    /// Workers heartbeat this often while working, seconds.
    pub heartbeat_secs: f64,
    /// Snapshot after this many applied updates (0 = only by time).
    pub snapshot_every_updates: u64,
    /// Snapshot at least this often while updates arrive, seconds (0 = only by count).
    pub snapshot_every_secs: f64,
    /// Snapshots kept in the weight store: after each one is written, all but the newest
    /// `keep_snapshots` are deleted (0 = keep all). More than one lets recovery fall back when
    /// the newest turns out corrupt.
    pub keep_snapshots: usize,
    /// A worker silent this long is marked Gone, seconds.
    pub worker_timeout_secs: f64,
    /// A task whose lease expires this many times is Failed.
    pub max_attempts: u64,
    /// Largest accepted update upload, bytes.
    pub max_upload_bytes: u64,
    /// The maintenance thread (lease sweeper, timed snapshots) wakes this often, seconds.
    pub sweep_every_secs: f64,
    /// Telemetry older than this is pruned, seconds.
    pub telemetry_retention_secs: f64,
    /// Seeded tasks are at most this many tokens (claims split them further).
    pub seed_chunk_tokens: u64,
    /// async-sgd: a claimed task holds at most this many tokens, whatever `task_seconds` asks
    /// for (0 = no cap). Each task is one optimizer step on the coordinator, so a cap of about
    /// one single-process batch (`batch_size x seq_len` tokens) gives as many steps per token
    /// as `bitnet train`; the default (600 s tasks) suits fleets where weight downloads and
    /// uploads are expensive.
    pub max_task_tokens: u64,
    /// Average the updates computed on one weight version into a single optimizer step (a
    /// synchronous round) instead of applying each on arrival. A round closes when every task
    /// leased on its version has reported, been handed back or lost its lease, or
    /// `round_wait_secs` after its first update. A worker whose update waits in the open round
    /// waits in its next claim until the round closes, so while every worker is alive no update
    /// is stale. false = fully asynchronous (each update is one step, stale by about the number
    /// of other workers).
    pub sync_rounds: bool,
    /// Longest an open round waits for missing updates after its first one, seconds.
    pub round_wait_secs: f64,
    /// Example tokens per step of the learning-rate schedules of a run with a token budget
    /// (the coordinator's optimizer in async-sgd, the workers' inner optimizer in diloco;
    /// DiLoCo's outer optimizer counts weight versions): the schedule's step index is tokens
    /// applied / this, and it spans `token_budget / this` steps, so warm-up and decay happen at the same point of the data however many workers
    /// share a round. Set it to the example tokens of one single-process batch to give a
    /// distributed run `bitnet train`'s schedule. 0 = `max_task_tokens` in async-sgd (one step
    /// per capped task), `batch_size x seq_len` in diloco.
    pub schedule_unit_tokens: u64,
}

impl Default for CoordinatorSection {
    fn default() -> Self {
        Self {
            task_seconds: 600.0,
            lease_headroom: 3.0,
            min_lease_secs: 30.0,
            heartbeat_secs: 10.0,
            snapshot_every_updates: 50,
            snapshot_every_secs: 300.0,
            keep_snapshots: 3,
            worker_timeout_secs: 120.0,
            max_attempts: 5,
            max_upload_bytes: 512 << 20,
            sweep_every_secs: 2.0,
            telemetry_retention_secs: 7.0 * 24.0 * 3600.0,
            seed_chunk_tokens: 1 << 20,
            max_task_tokens: 0,
            sync_rounds: true,
            round_wait_secs: 120.0,
            schedule_unit_tokens: 0,
        }
    }
}

impl CoordinatorSection {
    /// Every inconsistent value, described.
    pub fn validate(&self) -> Vec<String> {
        let mut p = Vec::new();
        for (k, v) in [
            ("task_seconds", self.task_seconds),
            ("lease_headroom", self.lease_headroom),
            ("heartbeat_secs", self.heartbeat_secs),
            ("sweep_every_secs", self.sweep_every_secs),
        ] {
            if !(v.is_finite() && v > 0.0) {
                p.push(format!("coordinator.{k} must be positive, is {v}"));
            }
        }
        if self.lease_headroom < 1.0 {
            p.push("coordinator.lease_headroom must be at least 1".into());
        }
        if !(self.round_wait_secs.is_finite() && self.round_wait_secs >= 0.0) {
            p.push(format!(
                "coordinator.round_wait_secs must be zero or positive, is {}",
                self.round_wait_secs
            ));
        }
        if self.max_attempts == 0 {
            p.push("coordinator.max_attempts must be positive".into());
        }
        if self.seed_chunk_tokens == 0 {
            p.push("coordinator.seed_chunk_tokens must be positive".into());
        }
        p
    }

    /// Every problem with this section for a run of `shape`: [`Self::validate`], plus a task
    /// cap that cannot hold one window.
    pub fn validate_for(&self, shape: &TaskShape) -> Vec<String> {
        let mut p = self.validate();
        if shape.mode == TrainMode::AsyncSgd
            && self.max_task_tokens > 0
            && self.max_task_tokens < shape.seq_len as u64
        {
            p.push(format!(
                "coordinator.max_task_tokens = {} is less than one window of seq_len {} tokens",
                self.max_task_tokens, shape.seq_len
            ));
        }
        p
    }

    /// One line describing how tasks are sized for a run of `shape` (for `--dry-run`).
    pub fn describe_tasks(&self, shape: &TaskShape) -> String {
        let batch = shape.batch_tokens();
        match shape.mode {
            TrainMode::Diloco => format!(
                "diloco: {} inner steps per task ({} tokens), {}",
                shape.inner_steps,
                batch * shape.inner_steps as u64,
                if self.sync_rounds {
                    "one outer step per round (the mean of the pseudo-gradients computed on a \
                     version)"
                } else {
                    "one outer step per task"
                }
            ),
            TrainMode::AsyncSgd => {
                let cap = if self.max_task_tokens > 0 {
                    format!(
                        ", at most {} tokens ({:.2} batches of {batch})",
                        self.max_task_tokens,
                        self.max_task_tokens as f64 / batch as f64
                    )
                } else {
                    ", no token cap".into()
                };
                format!(
                    "async-sgd: {} s of the worker's measured throughput per task{cap}; {}",
                    self.task_seconds,
                    if self.sync_rounds {
                        "one optimizer step per round (the token-weighted mean of the gradients \
                         computed on a version)"
                    } else {
                        "one optimizer step per task"
                    }
                )
            }
        }
    }

    fn sweep_policy(&self) -> SweepPolicy {
        SweepPolicy {
            worker_timeout_ms: secs_to_ms(self.worker_timeout_secs),
            telemetry_retention_ms: secs_to_ms(self.telemetry_retention_secs),
            max_attempts: self.max_attempts,
        }
    }
}

/// The error for DiLoCo with a lossy weight download.
pub fn lossy_diloco(codec: &str) -> String {
    format!(
        "weight_codec `{codec}` is lossy, but train.mode = \"diloco\" needs the exact fp32 \
         weights (its inner steps update the latent weights): use weight_codec.type = \"fp32\""
    )
}

/// Deletes all but the newest `keep` snapshots (0 = keep all). Failures are logged: a snapshot
/// left behind only costs disk.
fn prune_snapshots(snapshots: &dyn WeightStore, keep: usize) {
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

fn secs_to_ms(s: f64) -> u64 {
    if s.is_finite() && s > 0.0 { (s * 1000.0) as u64 } else { 0 }
}

/// Errors starting a coordinator.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    /// A component failed.
    #[error("{0}")]
    Component(String),
    /// The configuration is inconsistent.
    #[error("invalid coordinator configuration: {0}")]
    Config(String),
}

/// The components a coordinator is assembled from.
pub struct CoordinatorParts {
    /// Layout of the model's parameter arena.
    pub layout: ParamLayout,
    /// Parameters to start from when no snapshot exists.
    pub initial_params: Vec<f32>,
    /// The optimizer (DiLoCo: the outer optimizer).
    pub optimizer: Box<dyn Optimizer>,
    /// Staleness policy.
    pub staleness: Box<dyn StalenessPolicy>,
    /// Gradient codec (decoding only).
    pub codec: Box<dyn GradientCodec>,
    /// How weights are encoded for download.
    pub weight_codec: Box<dyn WeightCodec>,
    /// Where snapshots go.
    pub snapshots: Arc<dyn WeightStore>,
    /// Queue, workers, keys, telemetry.
    pub store: Arc<dyn CoordinatorStore>,
    /// The training corpus served to workers.
    pub corpus: Arc<dyn Corpus>,
}

/// Mode parameters the coordinator hands out with every task.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskShape {
    /// Training mode.
    pub mode: TrainMode,
    /// Sequences per step.
    pub batch_size: usize,
    /// Tokens per sequence.
    pub seq_len: usize,
    /// DiLoCo inner steps per task.
    pub inner_steps: usize,
    /// How workers pack slices (from the corpus; see [`Corpus::packing`]).
    pub packing: Option<Packing>,
}

impl TaskShape {
    /// From a run's `[train]` section and model sequence length.
    pub fn from_train(train: &TrainSection, seq_len: usize) -> Self {
        Self {
            mode: train.mode,
            batch_size: train.batch_size.max(1),
            seq_len: seq_len.max(1),
            inner_steps: train.inner_steps.max(1),
            packing: None,
        }
    }

    /// Tokens of one full batch.
    pub fn batch_tokens(&self) -> u64 {
        (self.batch_size * self.seq_len) as u64
    }
}

struct ModelState {
    params: Vec<f32>,
    optimizer: Box<dyn Optimizer>,
    version: u64,
    updates_since_snapshot: u64,
    last_snapshot: Instant,
    recent: VecDeque<(f32, u64, u64)>,
    /// Updates waiting for their round's step.
    round: Round,
    /// Tokens in applied updates since the run began (drives the schedules).
    tokens_applied: u64,
}

struct SnapshotJob {
    version: u64,
    params: Vec<f32>,
    optimizer: crate::optim::OptimizerState,
}

/// What recovery found at start-up.
#[derive(Debug, Clone, PartialEq)]
pub struct Recovery {
    /// Version resumed from (0 = fresh start).
    pub version: u64,
    /// Snapshots refused as corrupt or unreadable, with the reason.
    pub skipped: Vec<(u64, String)>,
    /// Tasks returned to Pending.
    pub tasks_reset: u64,
}

/// The coordinator. Share it as `Arc<Coordinator>`; it implements [`CoordinatorApi`].
pub struct Coordinator {
    settings: CoordinatorSection,
    shape: TaskShape,
    layout: ParamLayout,
    fingerprint: String,
    store: Arc<dyn CoordinatorStore>,
    corpus: Arc<dyn Corpus>,
    codec: Box<dyn GradientCodec>,
    weight_codec: Box<dyn WeightCodec>,
    staleness: Box<dyn StalenessPolicy>,
    model: Mutex<ModelState>,
    /// Signalled (with `model`) whenever a round closes.
    round_closed: Condvar,
    served: Mutex<VecDeque<Blob>>,
    /// Held while a weight version is encoded, so each version is encoded once even when
    /// many claims arrive together (encoding the medium preset takes tens of milliseconds).
    encoding: Mutex<()>,
    snapshot_tx: Mutex<Option<mpsc::Sender<SnapshotJob>>>,
    snapshot_version: Arc<AtomicU64>,
    snapshots: Arc<dyn WeightStore>,
    snapshot_thread: Mutex<Option<JoinHandle<()>>>,
    maintenance: Mutex<Option<JoinHandle<()>>>,
    stopping: Arc<AtomicBool>,
    metrics: Metrics,
    recovery: Recovery,
}

/// Served weight versions kept for workers still downloading an older one.
const SERVED_VERSIONS: usize = 4;
/// Applied updates the status's loss and throughput average over.
const RECENT_UPDATES: usize = 16;
/// Longest a claim waits for the claiming worker's round to close before answering "no task"
/// (the worker then polls again).
const CLAIM_WAIT: Duration = Duration::from_secs(10);
/// Largest log batch accepted in one call.
pub const MAX_LOG_BATCH: usize = 10_000;

fn lock<'a, T>(m: &'a Mutex<T>, what: &str) -> Result<MutexGuard<'a, T>, ApiError> {
    m.lock().map_err(|_| ApiError::Internal(format!("{what} lock poisoned")))
}

impl Coordinator {
    /// Recovers from the newest valid snapshot (or starts at version 0 and writes one), returns
    /// lost work to the queue and starts the snapshot and maintenance threads.
    pub fn start(
        parts: CoordinatorParts,
        settings: CoordinatorSection,
        mut shape: TaskShape,
    ) -> Result<Arc<Self>, CoordinatorError> {
        let mut problems = settings.validate_for(&shape);
        if shape.mode == TrainMode::Diloco && !parts.weight_codec.is_lossless() {
            problems.push(lossy_diloco(parts.weight_codec.wire_id()));
        }
        if !problems.is_empty() {
            return Err(CoordinatorError::Config(problems.join("; ")));
        }
        let CoordinatorParts {
            layout,
            initial_params,
            mut optimizer,
            staleness,
            codec,
            weight_codec,
            snapshots,
            store,
            corpus,
        } = parts;
        shape.packing = corpus.packing();
        let fingerprint = layout.fingerprint();
        let n = layout.total_params();
        if initial_params.len() != n {
            return Err(CoordinatorError::Config(format!(
                "initial parameters have {} values, the layout {n}",
                initial_params.len()
            )));
        }
        let comp = |e: &dyn std::fmt::Display| CoordinatorError::Component(e.to_string());
        let mut skipped = Vec::new();
        let mut resumed = None;
        let mut versions = snapshots.list_versions().map_err(|e| comp(&e))?;
        versions.sort_by_key(|m| std::cmp::Reverse(m.version));
        for meta in versions {
            let attempt = snapshots
                .get_version(meta.version)
                .map_err(|e| e.to_string())
                .and_then(|b| blob::decode_snapshot(&b, &fingerprint, n).map_err(|e| e.to_string()))
                .and_then(|s| {
                    if s.version == meta.version {
                        Ok(s)
                    } else {
                        Err(format!("holds version {}", s.version))
                    }
                });
            match attempt {
                Ok(snap) => match optimizer.load_state(snap.optimizer.clone()) {
                    Ok(()) => {
                        resumed = Some(snap);
                        break;
                    }
                    Err(e) => skipped.push((meta.version, e.to_string())),
                },
                Err(reason) => {
                    tracing::warn!(version = meta.version, %reason, "skipping unusable snapshot");
                    skipped.push((meta.version, reason));
                }
            }
        }
        let (params, version, write_initial) = match resumed {
            Some(s) => (s.params, s.version, false),
            None => (initial_params, 0, true),
        };
        let tasks_reset = store.reset_after_recovery(version).map_err(|e| comp(&e))?;
        // After the reset, the Done tasks are exactly the updates in the snapshot.
        let tokens_applied = store.counts().map_err(|e| comp(&e))?.done_tokens;
        if write_initial {
            let blob = blob::encode_snapshot(0, &fingerprint, &params, &optimizer.save_state());
            match snapshots.put_version(0, &blob) {
                Ok(_) | Err(crate::store::StoreError::Exists(_)) => {}
                Err(e) => return Err(comp(&e)),
            }
        }
        tracing::info!(version, tasks_reset, skipped = skipped.len(), "coordinator recovered");
        let (tx, rx) = mpsc::channel::<SnapshotJob>();
        let snapshot_version = Arc::new(AtomicU64::new(version));
        let snapshot_thread = {
            let snapshots = Arc::clone(&snapshots);
            let done = Arc::clone(&snapshot_version);
            let fp = fingerprint.clone();
            let keep = settings.keep_snapshots;
            std::thread::Builder::new()
                .name("bitnet-snapshot".into())
                .spawn(move || {
                    for job in rx {
                        let blob = blob::encode_snapshot(job.version, &fp, &job.params, &job.optimizer);
                        match snapshots.put_version(job.version, &blob) {
                            Ok(_) | Err(crate::store::StoreError::Exists(_)) => {
                                done.fetch_max(job.version, Ordering::SeqCst);
                                tracing::debug!(version = job.version, "snapshot written");
                                prune_snapshots(snapshots.as_ref(), keep);
                            }
                            Err(e) => tracing::error!(version = job.version, error = %e, "snapshot failed"),
                        }
                    }
                })
                .map_err(|e| comp(&e))?
        };
        let coordinator = Arc::new(Self {
            settings,
            shape,
            layout,
            fingerprint,
            store,
            corpus,
            codec,
            weight_codec,
            staleness,
            model: Mutex::new(ModelState {
                params,
                optimizer,
                version,
                updates_since_snapshot: 0,
                last_snapshot: Instant::now(),
                recent: VecDeque::new(),
                round: Round::default(),
                tokens_applied,
            }),
            round_closed: Condvar::new(),
            served: Mutex::new(VecDeque::new()),
            encoding: Mutex::new(()),
            snapshot_tx: Mutex::new(Some(tx)),
            snapshot_version,
            snapshots,
            snapshot_thread: Mutex::new(Some(snapshot_thread)),
            maintenance: Mutex::new(None),
            stopping: Arc::new(AtomicBool::new(false)),
            metrics: Metrics::default(),
            recovery: Recovery { version, skipped, tasks_reset },
        });
        let weak = Arc::downgrade(&coordinator);
        let stopping = Arc::clone(&coordinator.stopping);
        let every = Duration::from_secs_f64(coordinator.settings.sweep_every_secs);
        let handle = std::thread::Builder::new()
            .name("bitnet-maintenance".into())
            .spawn(move || {
                let tick = Duration::from_millis(50).min(every);
                let mut last = Instant::now();
                while !stopping.load(Ordering::SeqCst) {
                    std::thread::sleep(tick);
                    if last.elapsed() < every {
                        continue;
                    }
                    last = Instant::now();
                    let Some(c) = weak.upgrade() else { break };
                    c.maintain();
                }
            })
            .map_err(|e| comp(&e))?;
        *coordinator.maintenance.lock().map_err(|_| comp(&"maintenance lock poisoned"))? =
            Some(handle);
        Ok(coordinator)
    }

    /// What recovery did at start-up.
    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn CoordinatorStore> {
        &self.store
    }

    /// The corpus.
    pub fn corpus(&self) -> &Arc<dyn Corpus> {
        &self.corpus
    }

    /// Current weight version.
    pub fn version(&self) -> u64 {
        self.model.lock().map(|m| m.version).unwrap_or(0)
    }

    /// A copy of the current parameters and their version.
    pub fn params(&self) -> Result<(u64, Vec<f32>), ApiError> {
        let m = lock(&self.model, "model")?;
        Ok((m.version, m.params.clone()))
    }

    /// The current version, parameters and optimizer state (for checkpoints).
    pub fn state(&self) -> Result<(u64, Vec<f32>, crate::optim::OptimizerState), ApiError> {
        let m = lock(&self.model, "model")?;
        Ok((m.version, m.params.clone(), m.optimizer.save_state()))
    }

    /// The parameter layout.
    pub fn layout(&self) -> &ParamLayout {
        &self.layout
    }

    /// One maintenance pass: sweep the store, take a timed snapshot if one is due.
    pub fn maintain(&self) {
        match self.store.sweep(now_ms(), &self.settings.sweep_policy()) {
            Ok(r) if r.leases_expired + r.tasks_failed + r.workers_gone > 0 => {
                tracing::info!(
                    leases_expired = r.leases_expired,
                    tasks_failed = r.tasks_failed,
                    workers_gone = r.workers_gone,
                    "sweep"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "sweep failed"),
        }
        if self.settings.sync_rounds {
            self.check_round();
        }
        let due = self.settings.snapshot_every_secs > 0.0;
        if let Ok(mut m) = self.model.lock()
            && due
            && m.updates_since_snapshot > 0
            && m.last_snapshot.elapsed().as_secs_f64() >= self.settings.snapshot_every_secs
        {
            self.queue_snapshot(&mut m);
        }
    }

    /// Stops waiting for round members whose lease is gone (expired, handed back, failed) and
    /// closes the round when nothing more is expected or it waited long enough.
    fn check_round(&self) {
        let Ok(members) = lock(&self.model, "model").map(|m| m.round.members().collect::<Vec<_>>())
        else {
            return;
        };
        let gone: Vec<TaskRef> = members
            .into_iter()
            .filter(|t| match self.store.task(t.task_id) {
                Ok(Some(r)) => {
                    !(r.state == crate::transport::TaskState::Assigned && r.attempts == t.lease)
                }
                Ok(None) => true,
                Err(_) => false,
            })
            .collect();
        let applied = match lock(&self.model, "model") {
            Ok(mut m) => {
                for t in gone {
                    m.round.forget(t);
                }
                if self.round_due(&m) { Some(self.apply_round(&mut m)) } else { None }
            }
            Err(_) => return,
        };
        self.record_closed(applied, "closing a round");
    }

    /// Records a round closed off the request path (maintenance, shutdown), or logs why
    /// closing it failed.
    fn record_closed(&self, applied: Option<Result<Applied, ApiError>>, what: &str) {
        match applied {
            Some(Ok(a)) => self.record_applied(&a),
            Some(Err(e)) => tracing::error!(error = %e, "{what} failed"),
            None => {}
        }
    }

    /// Whether the open round should take its step now.
    fn round_due(&self, m: &ModelState) -> bool {
        !m.round.is_empty()
            && (!self.settings.sync_rounds
                || m.round.missing() == 0
                || m.round
                    .opened()
                    .is_some_and(|t| t.elapsed().as_secs_f64() >= self.settings.round_wait_secs))
    }

    /// The coordinator optimizer's step index (drives its schedule). async-sgd: tokens applied
    /// / the schedule unit (`schedule_unit_tokens`, else the task cap), so the schedule spans
    /// the token budget however many tasks a round holds ([`assemble::schedule_steps`] sizes it
    /// the same way). Otherwise (DiLoCo's outer optimizer, uncapped async-sgd) the weight
    /// version.
    fn schedule_position(&self, m: &ModelState) -> u64 {
        match (self.shape.mode, self.settings.schedule_unit_tokens, self.settings.max_task_tokens) {
            (TrainMode::AsyncSgd, unit, _) if unit > 0 => m.tokens_applied / unit,
            (TrainMode::AsyncSgd, _, cap) if cap > 0 => m.tokens_applied / cap,
            _ => m.version,
        }
    }

    /// The step a task's schedule starts at: for diloco's inner optimizer, tokens applied /
    /// the schedule unit (`schedule_unit_tokens`, else batch tokens; its schedule spans budget
    /// / that unit); for async-sgd, the coordinator's own step index.
    fn task_schedule_step(&self, m: &ModelState) -> u64 {
        match self.shape.mode {
            TrainMode::AsyncSgd => self.schedule_position(m),
            TrainMode::Diloco => {
                let unit = match self.settings.schedule_unit_tokens {
                    0 => self.shape.batch_tokens(),
                    unit => unit,
                };
                m.tokens_applied / unit.max(1)
            }
        }
    }

    /// Takes the open round's step (the token-weighted mean of its updates), completes its
    /// tasks at the new version and wakes claims waiting for it. A round whose updates carry
    /// no tokens completes its tasks without a step.
    fn apply_round(&self, m: &mut ModelState) -> Result<Applied, ApiError> {
        let step = self.schedule_position(m);
        let ModelState { params, optimizer, round, .. } = &mut *m;
        let closed = round.close();
        let tokens = closed.tokens;
        let mut lr = 0.0;
        let stepped = match closed.update {
            Some(update) => {
                match optimizer.step(params, update, StepInfo { step, lr_scale: closed.lr_scale }) {
                    Ok(report) => {
                        lr = report.lr;
                        true
                    }
                    Err(e) => {
                        let entries = round.finish();
                        for en in &entries {
                            if let Err(err) = self.store.release(en.task, &en.worker) {
                                tracing::error!(task = en.task.task_id, error = %err, "release failed");
                            }
                        }
                        self.round_closed.notify_all();
                        return Err(ApiError::Internal(format!(
                            "the optimizer refused the round's update ({e}); its {} task(s) go \
                             back to the queue",
                            entries.len()
                        )));
                    }
                }
            }
            None => false,
        };
        if stepped {
            m.version += 1;
            m.updates_since_snapshot += 1;
            m.tokens_applied += tokens;
        }
        let version = m.version;
        let entries = m.round.finish();
        for e in &entries {
            match self.store.complete(e.task, &e.worker, version) {
                Ok(Completion::Completed | Completion::AlreadyDone { .. }) => {}
                // The leases were extended when the updates joined the round; a refusal means
                // the store changed under us. The step is in the weights, so keep counting it.
                Ok(Completion::Refused(msg)) => {
                    tracing::error!(task = e.task.task_id, %msg, "completion refused after the step")
                }
                Err(err) => {
                    tracing::error!(task = e.task.task_id, error = %err, "completion failed")
                }
            }
            m.recent.push_back((e.loss, e.tokens, (e.seconds * 1000.0) as u64));
        }
        while m.recent.len() > RECENT_UPDATES {
            m.recent.pop_front();
        }
        if self.settings.snapshot_every_updates > 0
            && m.updates_since_snapshot >= self.settings.snapshot_every_updates
        {
            self.queue_snapshot(m);
        }
        self.round_closed.notify_all();
        tracing::debug!(version, updates = entries.len(), tokens, lr, "round applied");
        Ok(Applied { version, stepped, entries })
    }

    /// Metrics and telemetry of an applied round (outside the model lock).
    fn record_applied(&self, a: &Applied) {
        self.metrics.applied.fetch_add(a.entries.len() as u64, Ordering::Relaxed);
        if a.stepped {
            self.metrics.steps.fetch_add(1, Ordering::Relaxed);
        }
        for e in &a.entries {
            self.metrics.tokens.fetch_add(e.tokens, Ordering::Relaxed);
            let rate = rate(e.tokens, e.seconds);
            let recorded = self.store.record_throughput(&e.worker, rate).and_then(|()| {
                self.store.record_telemetry(&TaskTelemetry {
                    task_id: e.task.task_id,
                    worker: e.worker.clone(),
                    loss: e.loss,
                    tokens: e.tokens,
                    tokens_per_sec: rate,
                    staleness: e.staleness,
                    accepted: true,
                    version: a.version,
                    ts_ms: now_ms(),
                })
            });
            if let Err(err) = recorded {
                tracing::warn!(task = e.task.task_id, error = %err, "telemetry not recorded");
            }
        }
    }

    /// Queues a snapshot of the current state now (if anything changed since the last one).
    pub fn snapshot_now(&self) -> Result<u64, ApiError> {
        let mut m = lock(&self.model, "model")?;
        if m.updates_since_snapshot > 0 {
            self.queue_snapshot(&mut m);
        }
        Ok(m.version)
    }

    fn queue_snapshot(&self, m: &mut ModelState) {
        let job = SnapshotJob {
            version: m.version,
            params: m.params.clone(),
            optimizer: m.optimizer.save_state(),
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

    fn lease_ms(&self, tokens: u64, tokens_per_sec: f64) -> u64 {
        let expected = tokens as f64 / tokens_per_sec.max(1e-3);
        let secs = (expected * self.settings.lease_headroom).max(self.settings.min_lease_secs);
        secs_to_ms(secs.max(3.0 * self.settings.heartbeat_secs))
    }

    /// Tokens a task for a worker of `tokens_per_sec` should hold, and the granule.
    fn task_size(&self, tokens_per_sec: f64) -> (u64, u64) {
        let batch = self.shape.batch_tokens();
        match self.shape.mode {
            // One outer step per task: exactly H inner steps of full batches.
            TrainMode::Diloco => {
                let g = batch * self.shape.inner_steps as u64;
                (g, g)
            }
            TrainMode::AsyncSgd => {
                let want = (tokens_per_sec.max(0.0) * self.settings.task_seconds) as u64;
                match self.settings.max_task_tokens {
                    0 => (want.max(batch), batch),
                    // Packed examples need no batch-aligned cuts; plain windows do, as far as
                    // the cap allows.
                    cap => (want.max(batch).min(cap), batch.min(cap)),
                }
            }
        }
    }

    fn current_blob(&self) -> Result<Blob, ApiError> {
        let _encoding = lock(&self.encoding, "encoding")?;
        let (version, params) = {
            let m = lock(&self.model, "model")?;
            if let Some(b) = lock(&self.served, "served")?.iter().find(|b| b.version == m.version) {
                return Ok(b.clone());
            }
            (m.version, m.params.clone())
        };
        let bytes = self
            .weight_codec
            .encode(&self.layout, version, &params)
            .map_err(|e| ApiError::Internal(format!("encoding weights: {e}")))?;
        let b = Blob { version, sha256: sha256_hex(&bytes), bytes: Arc::new(bytes) };
        // Only this function adds to `served`, under the encoding lock, after finding `version`
        // missing: it is still missing.
        let mut served = lock(&self.served, "served")?;
        served.push_back(b.clone());
        while served.len() > SERVED_VERSIONS {
            served.pop_front();
        }
        Ok(b)
    }

    fn require_worker(&self, worker: &str) -> Result<WorkerRecord, ApiError> {
        self.store
            .worker(worker)?
            .ok_or_else(|| ApiError::Forbidden(format!("worker `{worker}` has not registered")))
    }

    /// Blocks while `worker`'s update waits in the open round, so its next task starts from
    /// the round's result. False when the round is still open after [`CLAIM_WAIT`] (the claim
    /// answers "no task"; the worker polls again).
    fn wait_for_round(&self, worker: &str) -> Result<bool, ApiError> {
        let deadline = Instant::now() + CLAIM_WAIT;
        let mut m = lock(&self.model, "model")?;
        let generation = m.round.generation();
        while m.round.generation() == generation && m.round.has_update_from(worker) {
            let now = Instant::now();
            if now >= deadline || self.stopping.load(Ordering::SeqCst) {
                return Ok(false);
            }
            m = self
                .round_closed
                .wait_timeout(m, deadline - now)
                .map_err(|_| ApiError::Internal("model lock poisoned".into()))?
                .0;
        }
        Ok(true)
    }

    fn reject(
        &self,
        worker: &str,
        task: TaskRef,
        upload: &UpdateUpload,
        staleness: u64,
        reason: String,
    ) -> Result<UploadReceipt, ApiError> {
        self.store.release(task, worker)?;
        self.metrics.rejected.fetch_add(1, Ordering::Relaxed);
        self.store.record_telemetry(&TaskTelemetry {
            task_id: task.task_id,
            worker: worker.into(),
            loss: upload.loss,
            tokens: upload.tokens,
            tokens_per_sec: rate(upload.tokens, upload.seconds),
            staleness,
            accepted: false,
            version: 0,
            ts_ms: now_ms(),
        })?;
        tracing::info!(task = task.task_id, worker, staleness, %reason, "update rejected");
        Ok(UploadReceipt {
            accepted: false,
            applied_version: None,
            staleness,
            lr_scale: 0.0,
            reason: Some(reason),
        })
    }
}

/// What closing a round did.
struct Applied {
    /// Weight version after the round.
    version: u64,
    /// Whether the optimizer stepped (false when no update carried tokens).
    stepped: bool,
    entries: Vec<Entry>,
}

/// Tokens per second of an update's compute (0 when the reported time is unusable).
fn rate(tokens: u64, seconds: f64) -> f64 {
    if seconds > 0.0 && seconds.is_finite() { tokens as f64 / seconds } else { 0.0 }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
    }
}

impl CoordinatorApi for Coordinator {
    fn register(&self, worker: &str, reg: Registration) -> Result<Registered, ApiError> {
        if reg.layout_fingerprint != self.fingerprint {
            return Err(ApiError::Invalid(format!(
                "worker model layout {} does not match the coordinator's {}",
                reg.layout_fingerprint, self.fingerprint
            )));
        }
        if !(reg.tokens_per_sec.is_finite() && reg.tokens_per_sec > 0.0) {
            return Err(ApiError::Invalid("calibrated tokens_per_sec must be positive".into()));
        }
        self.store.upsert_worker(&WorkerRecord {
            id: worker.into(),
            state: WorkerState::Active,
            threads: reg.threads,
            calibrated_tps: reg.tokens_per_sec,
            measured_tps: 0.0,
            last_seen_ms: now_ms(),
        })?;
        tracing::info!(worker, tokens_per_sec = reg.tokens_per_sec, "worker registered");
        Ok(Registered {
            worker_id: worker.into(),
            mode: self.shape.mode,
            heartbeat_ms: secs_to_ms(self.settings.heartbeat_secs),
            weight_version: self.version(),
        })
    }

    fn claim(&self, worker: &str) -> Result<Option<TaskSpec>, ApiError> {
        let started = Instant::now();
        let record = self.require_worker(worker)?;
        if record.state == WorkerState::Draining {
            return Ok(None);
        }
        self.store.touch_worker(worker, now_ms(), false)?;
        if self.settings.sync_rounds && !self.wait_for_round(worker)? {
            self.metrics.claim_latency.record(started.elapsed());
            return Ok(None);
        }
        let tps = record.throughput();
        let (max_tokens, granularity) = self.task_size(tps);
        let weights = self.current_blob()?;
        let req = ClaimRequest {
            worker: worker.into(),
            now_ms: now_ms(),
            max_tokens,
            granularity,
            lease_ms: self.lease_ms(max_tokens, tps),
        };
        let Some(task) = self.store.claim(&req)? else {
            self.metrics.claim_latency.record(started.elapsed());
            return Ok(None);
        };
        let shard = self.corpus.info(&task.shard).ok_or_else(|| {
            ApiError::Internal(format!("task {} names unknown shard `{}`", task.id, task.shard))
        })?;
        let schedule_step = {
            let mut m = lock(&self.model, "model")?;
            // A task leased on the open round's version is waited for by that round.
            if self.settings.sync_rounds && m.version == weights.version {
                m.round.expect(TaskRef { task_id: task.id, lease: task.attempts });
            }
            self.task_schedule_step(&m)
        };
        self.metrics.claims.fetch_add(1, Ordering::Relaxed);
        self.metrics.claim_latency.record(started.elapsed());
        Ok(Some(TaskSpec {
            task_id: task.id,
            lease: task.attempts,
            lease_deadline_ms: task.lease_deadline_ms,
            shard: task.shard,
            shard_sha256: shard.sha256,
            offset: task.offset,
            tokens: task.tokens,
            mode: self.shape.mode,
            batch_size: self.shape.batch_size,
            seq_len: self.shape.seq_len,
            weights_version: weights.version,
            weights_sha256: weights.sha256,
            packing: self.shape.packing,
            schedule_step,
        }))
    }

    fn heartbeat(&self, worker: &str, hb: Heartbeat) -> Result<HeartbeatReply, ApiError> {
        let started = Instant::now();
        let record = self.require_worker(worker)?;
        let now = now_ms();
        self.store.touch_worker(worker, now, hb.draining)?;
        let mut reply =
            HeartbeatReply { lease_valid: false, lease_deadline_ms: 0, weight_version: 0 };
        if let Some(task) = hb.task {
            if hb.hand_back {
                self.store.release(task, worker)?;
                lock(&self.model, "model")?.round.forget(task);
                tracing::info!(task = task.task_id, worker, "task handed back");
            } else if let Some(t) = self.store.task(task.task_id)? {
                let deadline = now + self.lease_ms(t.tokens, record.throughput());
                reply.lease_valid = self.store.renew_lease(task, worker, deadline)?;
                reply.lease_deadline_ms = deadline;
            }
        }
        reply.weight_version = self.version();
        self.metrics.heartbeats.fetch_add(1, Ordering::Relaxed);
        self.metrics.heartbeat_latency.record(started.elapsed());
        Ok(reply)
    }

    fn upload(&self, worker: &str, upload: UpdateUpload) -> Result<UploadReceipt, ApiError> {
        let task_ref = upload.task;
        let task = self
            .store
            .task(task_ref.task_id)?
            .ok_or_else(|| ApiError::NotFound(format!("task {}", task_ref.task_id)))?;
        if task.worker.as_deref() != Some(worker) {
            return Err(ApiError::Forbidden(format!(
                "task {} is not leased to `{worker}`",
                task.id
            )));
        }
        if task.state == crate::transport::TaskState::Done && task.attempts == task_ref.lease {
            return Ok(UploadReceipt {
                accepted: true,
                applied_version: Some(task.applied_version),
                staleness: 0,
                lr_scale: 0.0,
                reason: Some("duplicate upload: already applied".into()),
            });
        }
        if task.state != crate::transport::TaskState::Assigned || task.attempts != task_ref.lease {
            return Err(ApiError::Conflict(memory::refusal(&task, task_ref, worker)));
        }
        if upload.payload.len() as u64 > self.settings.max_upload_bytes {
            return Err(ApiError::TooLarge(format!(
                "update of {} bytes exceeds the limit of {}",
                upload.payload.len(),
                self.settings.max_upload_bytes
            )));
        }
        if !upload.loss.is_finite() {
            return Err(ApiError::Invalid("reported loss is not finite".into()));
        }
        let started = Instant::now();
        let update = self.codec.decode(&self.layout, &upload.payload).map_err(|e| {
            self.metrics.malformed.fetch_add(1, Ordering::Relaxed);
            ApiError::Invalid(e.to_string())
        })?;
        let decoded = started.elapsed();
        if update.len() != self.layout.total_params() {
            return Err(ApiError::Invalid(format!(
                "update has {} values, the model {}",
                update.len(),
                self.layout.total_params()
            )));
        }
        let mut m = lock(&self.model, "model")?;
        if self.stopping.load(Ordering::SeqCst) {
            return Err(ApiError::Unavailable("coordinator is shutting down".into()));
        }
        if upload.base_version > m.version {
            return Err(ApiError::Conflict(format!(
                "update computed on version {} but the coordinator is at {}",
                upload.base_version, m.version
            )));
        }
        let staleness = m.version - upload.base_version;
        let scale = match self.staleness.decide(staleness) {
            StalenessDecision::Accept { scale } => scale,
            StalenessDecision::Reject { reason } => {
                drop(m);
                return self.reject(worker, task_ref, &upload, staleness, reason);
            }
        };
        if m.round.holds(task_ref) {
            return Ok(UploadReceipt {
                accepted: true,
                applied_version: None,
                staleness,
                lr_scale: scale,
                reason: Some("duplicate upload: already waiting in the open round".into()),
            });
        }
        // Re-check and extend the lease under the model lock, so the sweeper cannot hand the
        // task to someone else while its update waits in the round or is being applied.
        let hold = now_ms()
            + secs_to_ms(self.settings.min_lease_secs.max(60.0) + self.settings.round_wait_secs);
        if !self.store.renew_lease(task_ref, worker, hold)? {
            return Err(ApiError::Conflict(format!(
                "lease {} of task {} expired before the update could be applied",
                task_ref.lease, task_ref.task_id
            )));
        }
        let entry = Entry {
            task: task_ref,
            worker: worker.into(),
            loss: upload.loss,
            tokens: upload.tokens,
            seconds: upload.seconds,
            staleness,
            scale,
        };
        m.round.add(entry, update);
        let applied = if self.round_due(&m) { Some(self.apply_round(&mut m)?) } else { None };
        let (version, missing) = (m.version, m.round.missing());
        drop(m);
        self.metrics.decode_latency.record(decoded);
        self.metrics.apply_latency.record(started.elapsed());
        match applied {
            Some(a) => {
                self.record_applied(&a);
                tracing::debug!(
                    task = task_ref.task_id,
                    worker,
                    version = a.version,
                    staleness,
                    "applied"
                );
                Ok(UploadReceipt {
                    accepted: true,
                    applied_version: Some(a.version),
                    staleness,
                    lr_scale: scale,
                    reason: None,
                })
            }
            None => Ok(UploadReceipt {
                accepted: true,
                applied_version: None,
                staleness,
                lr_scale: scale,
                reason: Some(format!(
                    "waiting in the round on version {version} for {missing} more update(s)"
                )),
            }),
        }
    }

    fn logs(&self, worker: &str, records: Vec<LogRecord>) -> Result<(), ApiError> {
        self.require_worker(worker)?;
        if records.len() > MAX_LOG_BATCH {
            return Err(ApiError::TooLarge(format!(
                "{} log records in one batch; the limit is {MAX_LOG_BATCH}",
                records.len()
            )));
        }
        self.store.append_logs(worker, &records)?;
        Ok(())
    }

    fn weights(&self, version: u64) -> Result<Blob, ApiError> {
        if version == u64::MAX {
            return self.current_blob();
        }
        if let Some(b) = lock(&self.served, "served")?.iter().find(|b| b.version == version) {
            return Ok(b.clone());
        }
        let current = self.current_blob()?;
        if current.version == version {
            Ok(current)
        } else {
            Err(ApiError::NotFound(format!(
                "weight version {version} is no longer served; the newest is {}",
                current.version
            )))
        }
    }

    fn corpus(&self, shard: &str) -> Result<Blob, ApiError> {
        self.corpus.shard(shard)
    }

    fn status(&self) -> Result<StatusReport, ApiError> {
        let (version, recent_loss, tokens_per_sec) = {
            let m = lock(&self.model, "model")?;
            let n = m.recent.len();
            let loss = (n > 0).then(|| m.recent.iter().map(|r| r.0).sum::<f32>() / n as f32);
            // Per-update rates summed approximates the fleet's rate when workers run in
            // parallel; averaged when they do not. Use the mean rate times active workers.
            let tokens: u64 = m.recent.iter().map(|r| r.1).sum();
            let ms: u64 = m.recent.iter().map(|r| r.2).sum();
            let rate = if ms > 0 { tokens as f64 * 1000.0 / ms as f64 } else { 0.0 };
            (m.version, loss, rate)
        };
        let workers = self.store.worker_counts()?;
        Ok(StatusReport {
            weight_version: version,
            snapshot_version: self.snapshot_version(),
            tasks: self.store.counts()?,
            workers,
            updates_applied: self.metrics.applied.load(Ordering::Relaxed),
            updates_rejected: self.metrics.rejected.load(Ordering::Relaxed),
            recent_loss,
            tokens_per_sec: tokens_per_sec * workers.active.max(1) as f64,
        })
    }

    fn metrics(&self) -> String {
        let status = self.status().ok();
        self.metrics.render(status.as_ref())
    }
}
