//! What a fleet run leaves in its run directory, written by `bitnet run` and
//! `bitnet coordinator` alike: `metrics.jsonl` rows (the [`crate::metrics`] schema) about once a
//! second, training checkpoints (`checkpoints/step-*.safetensors`, the format `bitnet train`
//! writes and `eval`, `export` and `classify` open) every `coordinator.checkpoint_every_secs`
//! while the weights change, when the token budget is reached and at shutdown.

use crate::checkpoint::{self, CheckpointError, CheckpointMeta};
use crate::config::RunConfig;
use crate::coordinator::Coordinator;
use crate::data::SourcePosition;
use crate::metrics::{MetricsFile, MetricsKind, MetricsRow, MetricsSource};
use bitnet_framework::protocol::{ApiError, StatusReport};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How often a progress row is written.
const ROW_EVERY: Duration = Duration::from_secs(1);

/// Errors writing a run's outputs.
#[derive(Debug, thiserror::Error)]
pub enum RecorderError {
    /// `metrics.jsonl` could not be written.
    #[error("writing {path}: {source}")]
    Metrics {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A checkpoint could not be written.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The coordinator's state could not be read.
    #[error("reading the coordinator's state: {0}")]
    Coordinator(#[from] ApiError),
    /// A validation pass failed.
    #[error("validating the weights: {0}")]
    Validation(String),
    /// The run config could not be serialised into the checkpoint.
    #[error("serialising the run config: {0}")]
    Config(String),
}

/// `run.dir/checkpoints`.
pub fn checkpoint_dir(config: &RunConfig) -> PathBuf {
    config.run.dir.join("checkpoints")
}

/// Writes the coordinator's current weights and optimizer state as a training checkpoint in
/// `run.dir/checkpoints/step-<weight version>.safetensors`, keeping the newest
/// `train.keep_checkpoints`. `tokens` is what the weights were trained on.
pub fn write_checkpoint(
    config: &RunConfig,
    coordinator: &Coordinator,
    tokens: u64,
) -> Result<PathBuf, RecorderError> {
    let (version, params, optimizer) = coordinator.state()?;
    let meta = CheckpointMeta {
        step: version,
        tokens,
        seed: config.train.seed,
        data_position: SourcePosition::default(),
        layout: coordinator.layout().clone(),
        kernel: config.kernel.kind.clone(),
        optimizer: config.optimizer.kind.clone(),
        run_config: toml::to_string(config).map_err(|e| RecorderError::Config(e.to_string()))?,
    };
    let dir = checkpoint_dir(config);
    let path = crate::trainer::checkpoint_path(&dir, version);
    checkpoint::write(&path, &meta, &params, &optimizer)?;
    crate::trainer::prune_checkpoints(&dir, config.train.keep_checkpoints);
    Ok(path)
}

/// Writes a fleet run's metrics and scheduled checkpoints; call [`Recorder::tick`] often.
#[derive(Debug)]
pub struct Recorder {
    config: RunConfig,
    source: MetricsSource,
    metrics: MetricsFile,
    started: Instant,
    last_row: Option<Instant>,
    last_checkpoint: Instant,
    checkpointed_version: Option<u64>,
    validator: Option<super::validation::Validator>,
    /// When the last validation ran and on which version.
    last_validation: Option<(Instant, u64)>,
}

impl Recorder {
    /// Appends to `run.dir/metrics.jsonl`.
    pub fn new(config: &RunConfig, source: MetricsSource) -> Result<Self, RecorderError> {
        let path = config.run.dir.join("metrics.jsonl");
        let metrics =
            MetricsFile::open(&path).map_err(|source| RecorderError::Metrics { path, source })?;
        Ok(Self {
            config: config.clone(),
            source,
            metrics,
            started: Instant::now(),
            last_row: None,
            last_checkpoint: Instant::now(),
            checkpointed_version: None,
            validator: None,
            last_validation: None,
        })
    }

    /// Measures the validation loss with `validator` every `coordinator.eval_every_secs`.
    pub fn with_validator(mut self, validator: super::validation::Validator) -> Self {
        self.validator = Some(validator);
        self
    }

    /// Measures the validation loss of the current weights, writes a `validation` row and
    /// gives the point to the coordinator (the console's curve). Returns the loss.
    pub fn validate(
        &mut self,
        coordinator: &Coordinator,
        status: &StatusReport,
    ) -> Result<Option<f32>, RecorderError> {
        let Some(validator) = self.validator.as_mut() else { return Ok(None) };
        let (version, params) = coordinator.params()?;
        self.last_validation = Some((Instant::now(), version));
        let Some(loss) = validator.loss(&params).map_err(RecorderError::Validation)? else {
            return Ok(None);
        };
        coordinator.record_validation(version, loss);
        let mut row = MetricsRow::from_status(
            self.source,
            MetricsKind::Validation,
            self.started.elapsed().as_secs_f64(),
            status,
        );
        row.val_loss = Some(loss);
        self.write(&row)?;
        Ok(Some(loss))
    }

    /// Seconds since the recorder started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Writes a progress row when a second has passed since the last, and a checkpoint when
    /// `coordinator.checkpoint_every_secs` have passed and the weights changed. Returns the
    /// checkpoint written, if any.
    pub fn tick(
        &mut self,
        coordinator: &Coordinator,
        status: &StatusReport,
    ) -> Result<Option<PathBuf>, RecorderError> {
        if self.last_row.is_none_or(|t| t.elapsed() >= ROW_EVERY) {
            self.last_row = Some(Instant::now());
            self.row(MetricsKind::Progress, status)?;
        }
        let eval_every = self.config.coordinator.eval_every_secs;
        if eval_every > 0.0
            && self.validator.is_some()
            && status.weight_version > 0
            && self.last_validation.is_none_or(|(t, v)| {
                t.elapsed().as_secs_f64() >= eval_every && v != status.weight_version
            })
        {
            self.validate(coordinator, status)?;
        }
        let every = self.config.coordinator.checkpoint_every_secs;
        if every > 0.0
            && self.last_checkpoint.elapsed().as_secs_f64() >= every
            && self.checkpointed_version != Some(status.weight_version)
        {
            // A failed write is retried at the next period, not on every tick.
            self.last_checkpoint = Instant::now();
            return self.checkpoint(coordinator, status).map(Some);
        }
        Ok(None)
    }

    /// Writes a row of `kind` now.
    pub fn row(&mut self, kind: MetricsKind, status: &StatusReport) -> Result<(), RecorderError> {
        let row = MetricsRow::from_status(
            self.source,
            kind,
            self.started.elapsed().as_secs_f64(),
            status,
        );
        self.write(&row)
    }

    fn write(&mut self, row: &MetricsRow) -> Result<(), RecorderError> {
        self.metrics.write(row).map_err(|source| RecorderError::Metrics {
            path: self.metrics.path().to_path_buf(),
            source,
        })
    }

    /// Writes a checkpoint of the current weights now.
    pub fn checkpoint(
        &mut self,
        coordinator: &Coordinator,
        status: &StatusReport,
    ) -> Result<PathBuf, RecorderError> {
        let path = write_checkpoint(&self.config, coordinator, status.tasks.done_tokens)?;
        self.last_checkpoint = Instant::now();
        self.checkpointed_version = Some(status.weight_version);
        tracing::info!(path = %path.display(), version = status.weight_version, "checkpoint written");
        Ok(path)
    }

    /// The metrics file.
    pub fn metrics_path(&self) -> &Path {
        self.metrics.path()
    }
}
