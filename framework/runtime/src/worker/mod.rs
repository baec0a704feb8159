//! The worker loop: calibrate by timing real training steps, register, then claim tasks,
//! download and verify weights and shards (cached by version and hash), compute the update
//! (async-sgd: the gradient over the task's tokens; diloco: H inner steps and the
//! pseudo-gradient `theta_start - theta_end`), encode it with the codec and upload it, with
//! heartbeats, log shipping, retries with backoff, and a stop flag (SIGTERM) that hands the
//! current task back.
//!
//! A task may name presigned object-store URLs for its weights and shard
//! ([`TaskSpec::weights_url`], [`TaskSpec::shard_url`]): the worker downloads from there first
//! (through its transport's [`CoordinatorClient::fetch_presigned`], a few tries), checks the
//! bytes against the task's SHA-256 and falls back to the coordinator, with a warning, when the
//! download fails or does not verify.
//!
//! A task's slice is packed into windows like the single-process loader packs its shards (see
//! [`batches`]): the worker trains every example whose `[BOS]` lies in the slice, shuffled
//! from `(train.seed, task id)`.
//!
//! DiLoCo's inner optimizer keeps its state (AdamW moments and step count) across the tasks a
//! worker runs, as in the DiLoCo paper, so a worker's second round does not start from cold
//! moments; its learning-rate schedule is indexed by the run's step ([`TaskSpec::schedule_step`]
//! = tokens applied / the run's schedule unit, plus the step within the task; see
//! `coordinator.schedule_unit_tokens`), so warm-up happens once per run and the decay ends with
//! the token budget, however many workers share the run.

pub mod batches;

pub use batches::{PackedTask, TaskBatches, Windows, task_examples, windows};

use crate::config::TrainMode;
use crate::coordinator::corpus::decode_shard_tokens;
use bitnet_framework::codec::GradientCodec;
use bitnet_framework::model::{ModelKernel, TokenBatch};
use bitnet_framework::optim::{Optimizer, StepInfo};
use bitnet_framework::protocol::{
    ApiError, CoordinatorClient, Heartbeat, LogRecord, PresignedUrl, Registration, TaskRef,
    TaskSpec, UpdateUpload, now_ms,
};
use bitnet_framework::store::sha256_hex;
use bitnet_framework::weights::WeightCodec;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub use crate::config::WorkerSection;

/// Errors that stop a worker.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The coordinator refused or could not be reached after retries.
    #[error("coordinator: {0}")]
    Api(#[from] ApiError),
    /// The model kernel failed.
    #[error("model kernel: {0}")]
    Kernel(String),
    /// A download did not verify, or a blob did not decode.
    #[error("invalid download: {0}")]
    Download(String),
    /// The task names weights the coordinator no longer serves: it restarted from an older
    /// snapshot and rebuilt that version from other updates. The task is dropped, not the
    /// worker (its lease died with the old process).
    #[error("stale task: {0}")]
    StaleTask(String),
    /// The codec or optimizer failed.
    #[error("{0}")]
    Update(String),
}

/// The components a worker is assembled from.
pub struct WorkerParts {
    /// Authenticated client.
    pub client: Box<dyn CoordinatorClient>,
    /// Model kernel.
    pub kernel: Box<dyn ModelKernel>,
    /// Gradient codec (one instance per worker: it may carry an error-feedback residual).
    pub codec: Box<dyn GradientCodec>,
    /// Decodes weight downloads (the run's weight codec).
    pub weight_codec: Box<dyn WeightCodec>,
    /// DiLoCo's inner optimizer (its state persists across tasks); unused in async-sgd.
    pub inner_optimizer: Option<Box<dyn Optimizer>>,
}

/// What a worker did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WorkerReport {
    /// Tokens/s measured by calibration.
    pub calibrated_tps: f64,
    /// Tasks whose update was accepted.
    pub tasks_accepted: u64,
    /// Tasks whose update was rejected (stale) or refused.
    pub tasks_rejected: u64,
    /// Tasks handed back or abandoned (lease lost).
    pub tasks_abandoned: u64,
    /// Tokens trained in accepted tasks.
    pub tokens: u64,
    /// Loss of the last task.
    pub last_loss: Option<f32>,
    /// DiLoCo inner optimizer steps taken (the inner optimizer's state spans them all).
    pub inner_steps: u64,
    /// Where the time of accepted tasks went, summed over them.
    pub timing: TaskTiming,
    /// Times shipping logs was put off (the coordinator's log quota, or a retryable failure)
    /// rather than waited for.
    pub logs_deferred: u64,
    /// Bytes of weights and shards downloaded straight from the object store (verified).
    pub direct_bytes: u64,
    /// Bytes of weights and shards downloaded from the coordinator.
    pub coordinator_bytes: u64,
    /// Presigned downloads that failed or did not verify, and were fetched from the
    /// coordinator instead.
    pub direct_fallbacks: u64,
}

/// Wall-clock seconds spent in each phase of a task, summed over tasks. Everything but
/// `compute` is the per-task overhead of distribution.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TaskTiming {
    /// `GET /work` (the claim, including the coordinator encoding a new weight version).
    pub claim: f64,
    /// Weight download, checksum and decode (zero when the version was cached).
    pub weights: f64,
    /// Shard download and decode (zero when cached), and packing the slice.
    pub data: f64,
    /// Forward and backward passes (and DiLoCo's inner optimizer steps).
    pub compute: f64,
    /// Encoding the update with the gradient codec.
    pub encode: f64,
    /// `POST /gradient`: upload, and the coordinator's decode and optimizer step.
    pub upload: f64,
}

impl TaskTiming {
    /// Everything but compute.
    pub fn overhead(&self) -> f64 {
        self.claim + self.weights + self.data + self.encode + self.upload
    }

    /// Adds `o`'s times to these.
    pub fn add(&mut self, o: &TaskTiming) {
        self.claim += o.claim;
        self.weights += o.weights;
        self.data += o.data;
        self.compute += o.compute;
        self.encode += o.encode;
        self.upload += o.upload;
    }
}

/// This machine's host name for the console's worker table: the kernel's on Linux, else the
/// usual environment variables, else empty.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

/// Log records a worker keeps while the coordinator cannot take them (its quota, an outage).
const MAX_BUFFERED_LOGS: usize = 2000;
/// Tries of a presigned download that fails with a retryable error (a connection error, a 5xx)
/// before falling back to the coordinator.
const DIRECT_TRIES: u32 = 3;

/// A worker. Build with [`Worker::new`], then [`Worker::run`].
pub struct Worker {
    parts: WorkerParts,
    settings: WorkerSection,
    stop: Arc<AtomicBool>,
    threads: usize,
    seed: u64,
    weights: Option<CachedWeights>,
    shards: HashMap<String, Arc<Vec<u32>>>,
    logs: Vec<LogRecord>,
    /// Shipping logs waits until then (the coordinator's quota said so, or it was unreachable).
    logs_not_before: Option<Instant>,
    /// Gradient arena, reused across tasks (sized to the layout on first use).
    grads: Vec<f32>,
    /// async-sgd's f64 accumulator of the task's gradient, reused across tasks.
    acc: Vec<f64>,
    /// An arena-sized buffer for the next update, handed back after each upload so a task
    /// does not fault in a fresh one.
    spare: Vec<f32>,
    report: WorkerReport,
    heartbeat_every: Duration,
}

/// The weights a worker last downloaded, kept while tasks keep naming their version.
struct CachedWeights {
    version: u64,
    sha256: String,
    params: Vec<f32>,
}

/// A claimed task with what its compute needs: the weight version it starts from (held in the
/// worker's cache) and its shard.
struct PreparedTask {
    spec: TaskSpec,
    task: TaskRef,
    /// The weight version the update is computed on.
    base_version: u64,
    /// The task's shard, whole (the task is a slice of it).
    tokens: Arc<Vec<u32>>,
}

/// What a task's compute produced.
struct ComputedUpdate {
    /// The gradient (async-sgd) or pseudo-gradient (diloco).
    update: Vec<f32>,
    /// Mean training loss over the task.
    loss: f32,
}

/// Why a task ended early.
enum Interrupted {
    Stop,
    LeaseLost,
}

impl Worker {
    /// A worker over `parts`; setting `stop` makes it hand back its task and return.
    pub fn new(
        parts: WorkerParts,
        settings: WorkerSection,
        threads: usize,
        seed: u64,
        stop: Arc<AtomicBool>,
    ) -> Self {
        Self {
            parts,
            settings,
            stop,
            threads,
            seed,
            weights: None,
            shards: HashMap::new(),
            logs: Vec::new(),
            logs_not_before: None,
            grads: Vec::new(),
            acc: Vec::new(),
            spare: Vec::new(),
            report: WorkerReport::default(),
            heartbeat_every: Duration::from_secs(10),
        }
    }

    /// What the worker has done so far.
    pub fn report(&self) -> &WorkerReport {
        &self.report
    }

    fn log(&mut self, level: &str, message: String) {
        match level {
            "error" => tracing::error!(worker = self.parts.client.worker_id(), "{message}"),
            "warn" => tracing::warn!(worker = self.parts.client.worker_id(), "{message}"),
            _ => tracing::info!(worker = self.parts.client.worker_id(), "{message}"),
        }
        self.logs.push(LogRecord { ts_ms: now_ms(), level: level.into(), message });
    }

    /// Ships the buffered log records, at most once per call and never waiting: logs must not
    /// stall training. A refusal for the coordinator's log quota (429) or a retryable failure
    /// keeps the records for a later call, after the Retry-After or a backoff; past
    /// [`MAX_BUFFERED_LOGS`] the oldest are dropped (and said so in the local log). Any other
    /// error drops the batch with a warning.
    fn flush_logs(&mut self) {
        if self.logs.is_empty() || self.logs_not_before.is_some_and(|t| Instant::now() < t) {
            return;
        }
        self.logs_not_before = None;
        let batch = std::mem::take(&mut self.logs);
        match self.parts.client.logs(batch.clone()) {
            Ok(()) => {}
            Err(e) if e.is_retryable() => {
                let wait = match &e {
                    ApiError::TooMany { retry_after_secs, .. } => {
                        Duration::from_secs((*retry_after_secs).max(1))
                    }
                    _ => Duration::from_millis(self.settings.retry_max_ms.max(1000)),
                };
                tracing::debug!(error = %e, "log shipping deferred by {wait:?}");
                self.report.logs_deferred += 1;
                self.logs_not_before = Some(Instant::now() + wait);
                let mut kept = batch;
                kept.append(&mut self.logs);
                let over = kept.len().saturating_sub(MAX_BUFFERED_LOGS);
                if over > 0 {
                    kept.drain(..over);
                    tracing::warn!("dropped {over} log records the coordinator could not take yet");
                }
                self.logs = kept;
            }
            Err(e) => tracing::warn!(error = %e, "could not ship {} log records", batch.len()),
        }
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Sleeps up to `d`, waking early when stopped.
    fn nap(&self, d: Duration) {
        let until = Instant::now() + d;
        while !self.stopped() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20).min(d));
        }
    }

    /// Calls `f` until it succeeds, retrying retryable errors (see [`retrying`]).
    fn retry<T>(
        &mut self,
        mut f: impl FnMut(&mut dyn CoordinatorClient) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let client = &mut self.parts.client;
        retrying(&self.settings, &self.stop, || f(&mut **client))
    }

    /// Times `steps` real forward and backward passes of the model on random tokens (after
    /// one warm-up step) and returns training tokens per second.
    pub fn calibrate(&mut self, batch: usize, seq_len: usize) -> Result<f64, WorkerError> {
        let kernel = &mut self.parts.kernel;
        let n = kernel.layout().total_params();
        let vocab = kernel.config().vocab_size.max(1) as u64;
        let mut params = vec![0.0f32; n];
        kernel
            .init_params(self.seed, &mut params)
            .map_err(|e| WorkerError::Kernel(e.to_string()))?;
        let mut grads = vec![0.0f32; n];
        let mut state = self.seed | 1;
        let mut next = || {
            // xorshift64: any tokens will do, the cost does not depend on their values.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % vocab) as u32
        };
        let inputs: Vec<u32> = (0..batch * seq_len).map(|_| next()).collect();
        let targets: Vec<u32> = (0..batch * seq_len).map(|_| next()).collect();
        let tb = TokenBatch { inputs: &inputs, targets: &targets, batch, seq_len };
        let steps = self.settings.calibration_steps.max(1);
        let mut timed = Duration::ZERO;
        for i in 0..=steps {
            let t = Instant::now();
            kernel
                .forward_backward(&params, &tb, &mut grads)
                .map_err(|e| WorkerError::Kernel(e.to_string()))?;
            if i > 0 {
                timed += t.elapsed();
            }
        }
        let tps = (steps * batch * seq_len) as f64 / timed.as_secs_f64().max(1e-9);
        self.report.calibrated_tps = tps;
        Ok(tps)
    }

    /// Calibrates, registers and works until the stop flag is set (or, with
    /// `exit_when_done`, until the queue is finished).
    pub fn run(&mut self, batch: usize, seq_len: usize) -> Result<WorkerReport, WorkerError> {
        let tps = self.calibrate(batch, seq_len)?;
        let registration = Registration {
            threads: self.threads,
            tokens_per_sec: tps,
            framework_version: env!("CARGO_PKG_VERSION").into(),
            layout_fingerprint: self.parts.kernel.layout().fingerprint(),
            host: host_name(),
        };
        let registered = self.retry(|c| c.register(registration.clone()))?;
        self.heartbeat_every = Duration::from_millis(registered.heartbeat_ms.max(100));
        self.log(
            "info",
            format!("registered: calibrated {tps:.0} tokens/s, mode {:?}", registered.mode),
        );
        let result = self.work_loop();
        self.logs_not_before = None;
        self.flush_logs();
        if !self.logs.is_empty() {
            tracing::warn!("{} log records were not shipped to the coordinator", self.logs.len());
        }
        let draining =
            Heartbeat { task: None, progress_tokens: 0, hand_back: false, draining: true };
        if let Err(e) = self.parts.client.heartbeat(draining) {
            tracing::debug!(error = %e, "final heartbeat failed");
        }
        result.map(|()| self.report.clone())
    }

    fn work_loop(&mut self) -> Result<(), WorkerError> {
        while !self.stopped() {
            let t = Instant::now();
            match self.retry(|c| c.claim())? {
                Some(task) => self.run_task(task, t.elapsed().as_secs_f64())?,
                None => {
                    if self.settings.exit_when_done {
                        let status = self.retry(|c| c.status())?;
                        if status.tasks.finished() {
                            self.log("info", "queue finished; exiting".into());
                            return Ok(());
                        }
                    }
                    self.flush_logs();
                    self.nap(Duration::from_millis(self.settings.idle_poll_ms));
                }
            }
            if self.logs.len() >= self.settings.log_batch {
                self.flush_logs();
            }
        }
        Ok(())
    }

    /// Downloads `url` straight from the object store (a few tries on retryable errors) and
    /// returns its bytes when they hash to `sha`; `None`, with a warning, otherwise, and the
    /// caller asks the coordinator. `None` without a word when the transport cannot.
    fn fetch_direct(&mut self, what: &str, url: &PresignedUrl, sha: &str) -> Option<Vec<u8>> {
        let mut backoff = Duration::from_millis(self.settings.retry_base_ms.max(1));
        let mut attempt = 1;
        let outcome = loop {
            match self.parts.client.fetch_presigned(url)? {
                Err(e) if e.is_retryable() && attempt < DIRECT_TRIES => {
                    tracing::debug!(error = %e, attempt, "direct download failed; retrying");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_millis(self.settings.retry_max_ms));
                    attempt += 1;
                }
                Err(e) => break Err(e.to_string()),
                Ok(bytes) => {
                    let found = sha256_hex(&bytes);
                    if found == sha {
                        break Ok(bytes);
                    }
                    break Err(format!("sha256 {found}, expected {sha}"));
                }
            }
        };
        match outcome {
            Ok(bytes) => {
                self.report.direct_bytes += bytes.len() as u64;
                Some(bytes)
            }
            Err(why) => {
                self.report.direct_fallbacks += 1;
                self.log(
                    "warn",
                    format!(
                        "downloading {what} from the object store failed ({why}); asking the \
                         coordinator"
                    ),
                );
                None
            }
        }
    }

    /// Weights of `version` (verified against `sha`), from cache, the object store (`url`) or
    /// the coordinator; falls back to the newest version when that one is no longer served.
    fn fetch_weights(
        &mut self,
        version: u64,
        sha: &str,
        url: Option<&PresignedUrl>,
    ) -> Result<u64, WorkerError> {
        if let Some(cached) = &self.weights
            && cached.version == version
            && cached.sha256 == sha
        {
            return Ok(version);
        }
        let direct = url.and_then(|u| self.fetch_direct(&format!("weights {version}"), u, sha));
        // A direct download was checked against `sha` already; hash it only once.
        let (blob, found) = match direct {
            Some(bytes) => {
                let blob = bitnet_framework::protocol::Blob {
                    version,
                    sha256: sha.into(),
                    bytes: bytes.into(),
                };
                (blob, sha.to_string())
            }
            None => {
                let blob = match self.retry(|c| c.weights(version)) {
                    Ok(b) => b,
                    Err(ApiError::NotFound(_)) => self.retry(|c| c.weights(u64::MAX))?,
                    Err(e) => return Err(e.into()),
                };
                self.report.coordinator_bytes += blob.bytes.len() as u64;
                let found = sha256_hex(&blob.bytes);
                (blob, found)
            }
        };
        if found != blob.sha256 {
            return Err(WorkerError::Download(format!(
                "weights version {} failed verification: sha256 {found}, served as {}",
                blob.version, blob.sha256
            )));
        }
        if blob.version == version && found != sha {
            // Intact bytes that are not the task's: the version was rebuilt after a restart.
            return Err(WorkerError::StaleTask(format!(
                "weights version {version} is now {found}, the task named {sha}"
            )));
        }
        // Decoded into the previous version's arena (this one replaces it).
        let mut params = self.weights.take().map(|c| c.params).unwrap_or_default();
        let decoded = self
            .parts
            .weight_codec
            .decode_into(self.parts.kernel.layout(), &blob.bytes, &mut params)
            .map_err(|e| WorkerError::Download(e.to_string()))?;
        if decoded != blob.version {
            return Err(WorkerError::Download(format!(
                "blob served as version {} holds version {decoded}",
                blob.version
            )));
        }
        self.weights = Some(CachedWeights { version: decoded, sha256: found, params });
        Ok(decoded)
    }

    fn shard_path(&self, sha: &str) -> Option<PathBuf> {
        self.settings.cache_dir.as_ref().map(|d| d.join("shards").join(format!("{sha}.bin")))
    }

    fn fetch_shard(
        &mut self,
        name: &str,
        sha: &str,
        url: Option<&PresignedUrl>,
    ) -> Result<Arc<Vec<u32>>, WorkerError> {
        if let Some(t) = self.shards.get(sha) {
            return Ok(Arc::clone(t));
        }
        let cached = self.shard_path(sha).and_then(|p| std::fs::read(p).ok());
        let bytes = match cached.filter(|b| sha256_hex(b) == sha) {
            Some(b) => b,
            None => {
                let direct =
                    url.and_then(|u| self.fetch_direct(&format!("shard `{name}`"), u, sha));
                let bytes = match direct {
                    Some(bytes) => bytes,
                    None => {
                        let blob = self.retry(|c| c.corpus(name))?;
                        self.report.coordinator_bytes += blob.bytes.len() as u64;
                        let found = sha256_hex(&blob.bytes);
                        if found != sha {
                            return Err(WorkerError::Download(format!(
                                "shard `{name}` failed verification: sha256 {found}, expected \
                                 {sha}"
                            )));
                        }
                        Arc::try_unwrap(blob.bytes).unwrap_or_else(|shared| shared.as_ref().clone())
                    }
                };
                if let Some(p) = self.shard_path(sha) {
                    let tmp = p.with_extension("tmp");
                    let written = p
                        .parent()
                        .map(std::fs::create_dir_all)
                        .transpose()
                        .and_then(|_| std::fs::write(&tmp, &bytes))
                        .and_then(|_| std::fs::rename(&tmp, &p));
                    if let Err(e) = written {
                        tracing::warn!(error = %e, "could not cache shard");
                    }
                }
                bytes
            }
        };
        let tokens = Arc::new(decode_shard_tokens(&bytes).map_err(WorkerError::Download)?);
        // Keep a handful of shards; a worker usually walks them in order.
        if self.shards.len() >= 4 {
            self.shards.clear();
        }
        self.shards.insert(sha.to_string(), Arc::clone(&tokens));
        Ok(tokens)
    }

    fn heartbeat(
        &mut self,
        task: TaskRef,
        progress: u64,
        hand_back: bool,
    ) -> Result<bool, WorkerError> {
        let hb =
            Heartbeat { task: Some(task), progress_tokens: progress, hand_back, draining: false };
        Ok(self.retry(|c| c.heartbeat(hb.clone()))?.lease_valid)
    }

    /// One task: prepare (weights and batches), compute, submit.
    fn run_task(&mut self, task: TaskSpec, claim_secs: f64) -> Result<(), WorkerError> {
        let started = Instant::now();
        let mut timing = TaskTiming { claim: claim_secs, ..TaskTiming::default() };
        let id = task.task_id;
        let prepared = match self.prepare(task, &mut timing) {
            Ok(p) => p,
            Err(WorkerError::StaleTask(why)) => {
                self.report.tasks_abandoned += 1;
                self.log("warn", format!("task {id} dropped: {why}"));
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let phase = Instant::now();
        let batches = self.batches(&prepared);
        timing.data += phase.elapsed().as_secs_f64();
        let phase = Instant::now();
        let computed = self.compute(&prepared, batches);
        timing.compute = phase.elapsed().as_secs_f64();
        let computed = match computed? {
            Ok(c) => c,
            Err(Interrupted::Stop) => {
                self.heartbeat(prepared.task, 0, true)?;
                self.report.tasks_abandoned += 1;
                self.log("info", format!("stopping: handed task {} back", prepared.task.task_id));
                return Ok(());
            }
            Err(Interrupted::LeaseLost) => {
                self.report.tasks_abandoned += 1;
                let id = prepared.task.task_id;
                self.log("warn", format!("lease on task {id} lost; abandoned"));
                return Ok(());
            }
        };
        self.submit(&prepared, computed, &mut timing, started)?;
        self.flush_logs();
        Ok(())
    }

    /// Downloads (or reuses) the task's weights and shard.
    fn prepare(
        &mut self,
        task: TaskSpec,
        timing: &mut TaskTiming,
    ) -> Result<PreparedTask, WorkerError> {
        let phase = Instant::now();
        let task_ref = TaskRef { task_id: task.task_id, lease: task.lease };
        let base_version = self.fetch_weights(
            task.weights_version,
            &task.weights_sha256,
            task.weights_url.as_ref(),
        )?;
        timing.weights = phase.elapsed().as_secs_f64();
        let phase = Instant::now();
        let tokens = self.fetch_shard(&task.shard, &task.shard_sha256, task.shard_url.as_ref())?;
        timing.data = phase.elapsed().as_secs_f64();
        Ok(PreparedTask { spec: task, task: task_ref, base_version, tokens })
    }

    /// Cuts the task's slice of its shard into batches: packed examples, or plain windows.
    fn batches<'a>(&mut self, prepared: &'a PreparedTask) -> TaskBatches<'a> {
        let (task, tokens) = (&prepared.spec, prepared.tokens.as_slice());
        let start = usize::try_from(task.offset).unwrap_or(usize::MAX).min(tokens.len());
        let end = usize::try_from(task.offset.saturating_add(task.tokens))
            .unwrap_or(usize::MAX)
            .min(tokens.len());
        match task.packing {
            Some(packing) => {
                let packed = PackedTask::new(
                    tokens,
                    start,
                    end,
                    packing,
                    task.seq_len,
                    task.batch_size,
                    (self.seed, task.task_id),
                );
                if packed.skipped() > 0 {
                    self.log(
                        "warn",
                        format!(
                            "task {}: {} example(s) longer than seq_len {} skipped",
                            task.task_id,
                            packed.skipped(),
                            task.seq_len
                        ),
                    );
                }
                match task.mode {
                    TrainMode::AsyncSgd => TaskBatches::Packed(packed),
                    // H inner steps: the coordinator cut H * batch * seq_len example tokens
                    // (fewer for the shard's last slice, which gets proportionally fewer steps).
                    TrainMode::Diloco => {
                        let per_step = (task.batch_size * task.seq_len).max(1) as u64;
                        let steps = task.tokens.div_ceil(per_step).max(1);
                        TaskBatches::Packed(packed.in_steps(steps as usize))
                    }
                }
            }
            // One token past the slice gives its last window a target.
            None => TaskBatches::Plain(windows(
                &tokens[start..(end + 1).min(tokens.len())],
                task.seq_len,
                task.batch_size,
            )),
        }
    }

    /// Trains on the task's batches: a gradient (async-sgd) or pseudo-gradient (diloco).
    fn compute(
        &mut self,
        prepared: &PreparedTask,
        batches: TaskBatches<'_>,
    ) -> Result<Result<ComputedUpdate, Interrupted>, WorkerError> {
        let result = match prepared.spec.mode {
            TrainMode::AsyncSgd => self.gradient(prepared.task, batches),
            TrainMode::Diloco => self.pseudo_gradient(&prepared.spec, prepared.task, batches),
        };
        Ok(result?.map(|(update, loss)| ComputedUpdate { update, loss }))
    }

    /// Encodes and uploads the update, and records what the coordinator answered.
    fn submit(
        &mut self,
        prepared: &PreparedTask,
        computed: ComputedUpdate,
        timing: &mut TaskTiming,
        started: Instant,
    ) -> Result<(), WorkerError> {
        let task = &prepared.spec;
        let loss = computed.loss;
        let phase = Instant::now();
        let payload = self
            .parts
            .codec
            .encode(self.parts.kernel.layout(), &computed.update)
            .map_err(|e| WorkerError::Update(format!("encoding the update: {e}")))?;
        self.spare = computed.update;
        timing.encode = phase.elapsed().as_secs_f64();
        let seconds = started.elapsed().as_secs_f64();
        let upload = UpdateUpload {
            task: prepared.task,
            base_version: prepared.base_version,
            loss,
            tokens: task.tokens,
            seconds,
            payload,
        };
        let phase = Instant::now();
        let uploaded = self.retry(|c| c.upload(upload.clone()));
        timing.upload = phase.elapsed().as_secs_f64();
        match uploaded {
            Ok(r) if r.accepted => {
                self.report.tasks_accepted += 1;
                self.report.timing.add(timing);
                self.report.tokens += task.tokens;
                self.report.last_loss = Some(loss);
                self.log(
                    "info",
                    format!(
                        "task {} done: loss {loss:.4}, {} tokens in {seconds:.2}s (compute {:.3}s, \
                         overhead {:.3}s), staleness {}, version {:?}",
                        task.task_id,
                        task.tokens,
                        timing.compute,
                        timing.overhead(),
                        r.staleness,
                        r.applied_version
                    ),
                );
            }
            Ok(r) => {
                self.report.tasks_rejected += 1;
                self.log(
                    "warn",
                    format!("task {} rejected: {}", task.task_id, r.reason.unwrap_or_default()),
                );
            }
            // The task moved on (lease lost, task gone, not ours any more) or the update was
            // refused: this worker moves on to its next task.
            Err(
                e @ (ApiError::Conflict(_)
                | ApiError::Invalid(_)
                | ApiError::TooLarge(_)
                | ApiError::Forbidden(_)
                | ApiError::NotFound(_)),
            ) => {
                self.report.tasks_rejected += 1;
                self.log("warn", format!("task {} upload refused: {e}", task.task_id));
            }
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }

    /// Checks the stop flag and heartbeats when due.
    fn checkpoint(
        &mut self,
        task: TaskRef,
        progress: u64,
        last_beat: &mut Instant,
    ) -> Result<Option<Interrupted>, WorkerError> {
        if self.stopped() {
            return Ok(Some(Interrupted::Stop));
        }
        if last_beat.elapsed() >= self.heartbeat_every {
            *last_beat = Instant::now();
            if !self.heartbeat(task, progress, false)? {
                return Ok(Some(Interrupted::LeaseLost));
            }
        }
        Ok(None)
    }

    /// async-sgd: the mean gradient over every counted target of the task's batches.
    fn gradient(
        &mut self,
        task_ref: TaskRef,
        batches: TaskBatches<'_>,
    ) -> Result<Result<(Vec<f32>, f32), Interrupted>, WorkerError> {
        let Some(cached) = self.weights.take() else {
            return Err(WorkerError::Download("no weights".into()));
        };
        let params = &cached.params;
        let n = params.len();
        let mut grads = std::mem::take(&mut self.grads);
        grads.resize(n, 0.0);
        // The first batch's gradient, which becomes the update: a task of one batch (the
        // usual size) needs no f64 sum, and its mean is that gradient exactly.
        let mut first = std::mem::take(&mut self.spare);
        let mut acc = std::mem::take(&mut self.acc);
        let (mut batches_in, mut first_count) = (0usize, 0usize);
        let mut loss_sum = 0.0f64;
        let mut counted = 0usize;
        let mut last_beat = Instant::now();
        let mut progress = 0u64;
        let mut outcome = Ok(());
        for batch in batches {
            if let Some(i) = self.checkpoint(task_ref, progress, &mut last_beat)? {
                outcome = Err(i);
                break;
            }
            let view = batch.view();
            let c = view.counted_targets();
            if c == 0 {
                continue;
            }
            let loss = self
                .parts
                .kernel
                .forward_backward(params, &view, &mut grads)
                .map_err(|e| WorkerError::Kernel(e.to_string()))?;
            // The kernel returns the mean over this batch's targets; weight by their count so
            // the result is the mean over the whole slice (summed in f64, in batch order).
            match batches_in {
                0 => {
                    std::mem::swap(&mut first, &mut grads);
                    grads.resize(n, 0.0);
                    first_count = c;
                }
                1 => {
                    acc.clear();
                    acc.extend(first.iter().zip(&grads).map(|(f, g)| {
                        f64::from(*f) * first_count as f64 + f64::from(*g) * c as f64
                    }));
                }
                _ => {
                    for (a, g) in acc.iter_mut().zip(&grads) {
                        *a += f64::from(*g) * c as f64;
                    }
                }
            }
            batches_in += 1;
            loss_sum += f64::from(loss) * c as f64;
            counted += c;
            progress += (view.batch * view.seq_len) as u64;
        }
        self.weights = Some(cached);
        self.grads = grads;
        let denom = counted.max(1) as f64;
        let update = match batches_in {
            // (g * c) / c is g exactly in f64: one batch's gradient is its task's mean.
            1 => first,
            _ => {
                first.clear();
                match batches_in {
                    0 => first.resize(n, 0.0),
                    _ => first.extend(acc.iter().map(|a| (a / denom) as f32)),
                }
                first
            }
        };
        self.acc = acc;
        match outcome {
            Ok(()) => Ok(Ok((update, (loss_sum / denom) as f32))),
            Err(i) => {
                self.spare = update;
                Ok(Err(i))
            }
        }
    }

    /// diloco: one inner optimizer step per batch of the task from the downloaded weights, then
    /// `theta_start - theta_end`.
    fn pseudo_gradient(
        &mut self,
        task: &TaskSpec,
        task_ref: TaskRef,
        batches: TaskBatches<'_>,
    ) -> Result<Result<(Vec<f32>, f32), Interrupted>, WorkerError> {
        let Some(CachedWeights { params: start, .. }) = self.weights.as_ref() else {
            return Err(WorkerError::Download("no weights".into()));
        };
        let mut theta = std::mem::take(&mut self.spare);
        theta.clear();
        theta.extend_from_slice(start);
        let mut grads = std::mem::take(&mut self.grads);
        grads.resize(theta.len(), 0.0);
        let mut loss_sum = 0.0f64;
        let mut steps = 0usize;
        let mut last_beat = Instant::now();
        let mut progress = 0u64;
        for batch in batches {
            if let Some(i) = self.checkpoint(task_ref, progress, &mut last_beat)? {
                self.grads = grads;
                return Ok(Err(i));
            }
            let view = batch.view();
            if view.counted_targets() == 0 {
                continue;
            }
            let loss = self
                .parts
                .kernel
                .forward_backward(&theta, &view, &mut grads)
                .map_err(|e| WorkerError::Kernel(e.to_string()))?;
            let inner = self
                .parts
                .inner_optimizer
                .as_mut()
                .ok_or_else(|| WorkerError::Update("diloco needs an inner optimizer".into()))?;
            let step = task.schedule_step.saturating_add(steps as u64);
            inner
                .step(&mut theta, &grads, StepInfo { step, lr_scale: 1.0 })
                .map_err(|e| WorkerError::Update(format!("inner step: {e}")))?;
            self.report.inner_steps += 1;
            loss_sum += f64::from(loss);
            steps += 1;
            progress += (view.batch * view.seq_len) as u64;
        }
        self.grads = grads;
        let Some(CachedWeights { params: start, .. }) = self.weights.as_ref() else {
            return Err(WorkerError::Download("no weights".into()));
        };
        // theta becomes the pseudo-gradient theta_start - theta_end, in place.
        for (e, s) in theta.iter_mut().zip(start) {
            *e = s - *e;
        }
        Ok(Ok((theta, (loss_sum / steps.max(1) as f64) as f32)))
    }
}

/// Calls `f` until it succeeds, retrying retryable errors (connection errors, 5xx, 429) with
/// capped exponential backoff from `settings` (or the server's Retry-After), until `stop` is set
/// or `give_up_after_secs` pass (0: never give up). A non-retryable error returns at once.
pub fn retrying<T>(
    settings: &WorkerSection,
    stop: &AtomicBool,
    mut f: impl FnMut() -> Result<T, ApiError>,
) -> Result<T, ApiError> {
    let started = Instant::now();
    let give_up = settings.give_up_after_secs;
    let mut attempt = 0u32;
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if e.is_retryable() => {
                if give_up > 0.0 && started.elapsed().as_secs_f64() >= give_up {
                    tracing::error!(error = %e, attempt, "giving up after {give_up} s");
                    return Err(e);
                }
                let backoff = match &e {
                    ApiError::TooMany { retry_after_secs, .. } => {
                        Duration::from_secs(*retry_after_secs)
                    }
                    _ => Duration::from_millis(
                        settings
                            .retry_base_ms
                            .saturating_mul(1 << attempt.min(16))
                            .min(settings.retry_max_ms),
                    ),
                };
                tracing::warn!(error = %e, attempt, ?backoff, "request failed; retrying");
                attempt = attempt.saturating_add(1);
                let until = Instant::now() + backoff;
                while !stop.load(Ordering::SeqCst) && Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(20).min(backoff));
                }
                if stop.load(Ordering::SeqCst) {
                    return Err(e);
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// Connects (logs in) to the coordinator at `endpoint`, retrying as [`retrying`] does: a worker
/// started while its coordinator restarts, or before it listens, waits for it instead of
/// exiting. Wrong credentials (401/403) fail at once.
pub fn connect(
    transport: &dyn bitnet_framework::transport::Transport,
    endpoint: &str,
    credentials: &bitnet_framework::transport::Credentials,
    settings: &WorkerSection,
    stop: &AtomicBool,
) -> Result<Box<dyn CoordinatorClient>, ApiError> {
    retrying(settings, stop, || transport.connect(endpoint, credentials.clone()))
}
