//! The coordinator core, independent of any transport: it owns the master weights and the
//! optimizer, leases tasks sized to each worker's measured throughput, applies uploaded updates
//! through the staleness policy, snapshots off the request path and recovers from the newest
//! valid snapshot.
//!
//! Durable state is split in two: weights and optimizer state live in snapshots in the
//! [`WeightStore`]; the queue, workers, keys and telemetry live in the [`CoordinatorStore`].
//! A task's update counts only once it is in a snapshot: on restart, every task Done with a
//! version newer than the snapshot goes back to Pending, so nothing is lost or applied twice.

pub mod blob;
pub mod corpus;
pub mod direct;
pub mod memory;
mod metrics;
pub mod round;
pub mod seed;

mod api;
mod quota;
mod recovery;
mod rounds;
mod scheduling;
mod serving;
mod snapshots;

pub use crate::config::CoordinatorSection;
pub use corpus::{Corpus, DirCorpus, MemoryCorpus};
pub use recovery::Recovery;
pub use scheduling::{
    FEW_STEPS_SHARE, TaskPlan, TaskShape, local_plan, lossy_diloco, schedule_steps,
    schedule_steps_for,
};

use crate::config::coordinator::secs_to_ms;
use rounds::rate;
use snapshots::{SnapshotJob, prune_snapshots};

use crate::config::{TrainMode, TrainSection};
use bitnet_framework::codec::GradientCodec;
use bitnet_framework::coordinator_store::{
    ClaimRequest, Completion, CoordinatorStore, Finished, TaskTelemetry, WorkerRecord, WorkerState,
};
use bitnet_framework::optim::{Optimizer, StepInfo};
use bitnet_framework::protocol::{
    ApiError, Blob, CoordinatorApi, Heartbeat, HeartbeatReply, LogRecord, Packing, Registered,
    Registration, StatusReport, TaskRef, TaskSpec, UpdateUpload, UploadReceipt, now_ms,
};
use bitnet_framework::staleness::{StalenessDecision, StalenessPolicy};
use bitnet_framework::store::{WeightStore, sha256_hex};
use bitnet_framework::tensor::ParamLayout;
use bitnet_framework::weights::WeightCodec;
use metrics::Metrics;
use round::{Entry, Round};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

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

struct ModelState {
    params: Vec<f32>,
    optimizer: Box<dyn Optimizer>,
    version: u64,
    updates_since_snapshot: u64,
    last_snapshot: Instant,
    /// The most recent applied updates (at most [`RECENT_UPDATES`]).
    recent: VecDeque<Recent>,
    /// Updates waiting for their round's step.
    round: Round,
    /// Tokens in applied updates since the run began (drives the schedules).
    tokens_applied: u64,
    /// Every task whose update is in `params`, once each (persisted in snapshots).
    ledger: Vec<blob::LedgerEntry>,
}

/// One applied update as the status averages it.
#[derive(Debug, Clone, Copy)]
struct Recent {
    loss: f32,
    tokens: u64,
    /// The worker's compute time for the update.
    compute_ms: u64,
    /// When it was applied.
    at: Instant,
}

/// The fleet's training throughput over `recent`, tokens/s: the tokens applied over the
/// window's wall time (everything counted: claims, downloads, uploads, rounds). Until the window
/// spans a second, the workers' compute rate times `workers` (an upper bound).
fn recent_rate(recent: &VecDeque<Recent>, workers: u64) -> f64 {
    let (Some(first), Some(last)) = (recent.front(), recent.back()) else {
        return 0.0;
    };
    let span = last.at.duration_since(first.at).as_secs_f64();
    if span >= 1.0 {
        // The updates applied with the first (its round) open the window: not counted.
        let tokens: u64 = recent.iter().filter(|r| r.at > first.at).map(|r| r.tokens).sum();
        return tokens as f64 / span;
    }
    let tokens: u64 = recent.iter().map(|r| r.tokens).sum();
    let ms: u64 = recent.iter().map(|r| r.compute_ms).sum();
    if ms > 0 { tokens as f64 * 1000.0 / ms as f64 * workers.max(1) as f64 } else { 0.0 }
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
    /// The open round's workers and the async claims waiting on it (no model lock needed).
    claim_gate: Arc<round::ClaimGate>,
    /// The newest weight versions, encoded for download (and where published, if they are).
    served: Mutex<VecDeque<direct::Served>>,
    /// What is published for direct download from the object store.
    published: direct::Published,
    /// Held while a weight version is encoded, so each version is encoded once even when
    /// many claims arrive together (encoding the medium preset takes tens of milliseconds).
    /// The lock also guards the copy of the parameters being encoded, reused from version to
    /// version (a fresh arena-sized copy costs its page faults on every version).
    encoding: Mutex<Vec<f32>>,
    snapshot_tx: Mutex<Option<mpsc::Sender<SnapshotJob>>>,
    snapshot_version: Arc<AtomicU64>,
    snapshots: Arc<dyn WeightStore>,
    snapshot_thread: Mutex<Option<JoinHandle<()>>>,
    /// Set by [`Coordinator::abandon`]: the snapshot thread drops what is still queued.
    abandoned: Arc<AtomicBool>,
    maintenance: Mutex<Option<JoinHandle<()>>>,
    stopping: Arc<AtomicBool>,
    metrics: Metrics,
    recovery: Recovery,
    /// Largest upload accepted, bytes: `max_upload_bytes`, or less when the codec knows the
    /// longest valid update of this model.
    upload_limit: u64,
    /// Ceiling on a worker's throughput, tokens/s (see `max_worker_tokens_per_sec`).
    max_tps: f64,
    log_quota: quota::LogQuota,
    /// Validation losses of the run's weights, oldest first (what the recorder measured).
    validation: Mutex<VecDeque<bitnet_framework::admin::LossPoint>>,
}

/// Validation points the coordinator keeps for the console.
const VALIDATION_POINTS: usize = 500;

/// Served weight versions kept for workers still downloading an older one.
const SERVED_VERSIONS: usize = 4;
/// Applied updates the status's loss and throughput average over.
const RECENT_UPDATES: usize = 16;
/// Longest a claim waits for the claiming worker's round to close before answering "no task"
/// (the worker then polls again).
const CLAIM_WAIT: Duration = Duration::from_secs(10);
/// Largest log batch accepted in one call.
pub const MAX_LOG_BATCH: usize = 10_000;
/// Room above the longest valid update an upload limit leaves (framing of future versions).
const UPLOAD_SLACK_BYTES: u64 = 64 << 10;
/// Peak FLOP/s no worker machine reaches (about 100 AVX-512 cores at their peak): the ceiling
/// on reported throughput is this over the 6 FLOPs per parameter and token of training.
const PLAUSIBLE_FLOPS: f64 = 1e13;

fn lock<'a, T>(m: &'a Mutex<T>, what: &str) -> Result<MutexGuard<'a, T>, ApiError> {
    m.lock().map_err(|_| ApiError::Internal(format!("{what} lock poisoned")))
}

impl Coordinator {
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

    /// Records the validation loss of weight version `version` (the console's second curve).
    pub fn record_validation(&self, version: u64, loss: f32) {
        if let Ok(mut v) = self.validation.lock() {
            if v.len() == VALIDATION_POINTS {
                v.pop_front();
            }
            let ts_ms = bitnet_framework::protocol::now_ms();
            v.push_back(bitnet_framework::admin::LossPoint { version, loss, ts_ms });
        }
    }

    /// The validation losses recorded, oldest first.
    pub fn validation_points(&self) -> Vec<bitnet_framework::admin::LossPoint> {
        self.validation.lock().map(|v| v.iter().cloned().collect()).unwrap_or_default()
    }

    /// A copy of the current parameters and their version.
    pub fn params(&self) -> Result<(u64, Vec<f32>), ApiError> {
        let m = lock(&self.model, "model")?;
        Ok((m.version, m.params.clone()))
    }

    /// Every task whose update is in the current weights, once each, in the order applied.
    pub fn ledger(&self) -> Result<Vec<blob::LedgerEntry>, ApiError> {
        Ok(lock(&self.model, "model")?.ledger.clone())
    }

    /// The current version, parameters and optimizer state (for checkpoints).
    pub fn state(
        &self,
    ) -> Result<(u64, Vec<f32>, bitnet_framework::optim::OptimizerState), ApiError> {
        let m = lock(&self.model, "model")?;
        Ok((m.version, m.params.clone(), m.optimizer.save_state()))
    }

    /// The open synchronous round: updates in it, and updates it still waits for.
    pub fn round_progress(&self) -> Result<(usize, usize), ApiError> {
        let m = lock(&self.model, "model")?;
        Ok((m.round.len(), m.round.missing()))
    }

    /// The settings it runs with.
    pub fn settings(&self) -> &CoordinatorSection {
        &self.settings
    }

    /// The parameter layout.
    pub fn layout(&self) -> &ParamLayout {
        &self.layout
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod rate_tests {
    use super::*;

    fn window(points: &[(u64, u64, f64)]) -> VecDeque<Recent> {
        let t0 = Instant::now();
        points
            .iter()
            .map(|&(tokens, compute_ms, at)| Recent {
                loss: 1.0,
                tokens,
                compute_ms,
                at: t0 + Duration::from_secs_f64(at),
            })
            .collect()
    }

    /// Two workers computing 440 tokens in 0.5 s each but applied in rounds 2 s apart train 440
    /// tokens/s, not the 1,760 their compute rate suggests.
    #[test]
    fn the_rate_counts_wall_time_not_compute_time() {
        let rounds: Vec<_> =
            (0..4).flat_map(|r| [(440, 500, 2.0 * r as f64), (440, 500, 2.0 * r as f64)]).collect();
        let rate = recent_rate(&window(&rounds), 2);
        assert!((rate - 440.0).abs() < 1e-6, "{rate}");
    }

    #[test]
    fn a_short_window_reads_the_compute_rate_and_an_empty_one_zero() {
        assert_eq!(recent_rate(&VecDeque::new(), 2), 0.0);
        let rate = recent_rate(&window(&[(440, 500, 0.0), (440, 500, 0.0)]), 2);
        assert!((rate - 1760.0).abs() < 1e-6, "{rate}");
    }
}
