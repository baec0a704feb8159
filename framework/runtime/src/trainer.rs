//! The single-process training loop: a [`ModelKernel`], an [`Optimizer`] and a [`BatchSource`],
//! with periodic validation, metrics as JSONL, checkpoints and exact resume.
//!
//! One step is: next batch, `forward_backward` into the gradient arena, optimizer step on the
//! parameter arena. Both arenas and the batch buffer are allocated once. Given a deterministic
//! kernel, training `2N` steps gives bit-identical weights to training `N`, saving a checkpoint,
//! loading it into a fresh trainer and training `N` more: the checkpoint holds the weights, the
//! optimizer state, the step (which drives the schedule) and the data position.
//!
//! Also here: [`TokenFileSource`], a [`BatchSource`] over a plain token file, so training works
//! without the tokenizer and shard pipeline.

use crate::checkpoint::{self, CheckpointError, CheckpointFile, CheckpointMeta};
use crate::data::{BatchBuffer, BatchSource, DataError, SourcePosition};
use crate::metrics::{MetricsFile, MetricsKind, MetricsRow, MetricsSource};
use bitnet_framework::model::{KernelError, ModelKernel};
use bitnet_framework::optim::{OptimError, Optimizer, StepInfo};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Errors of the training loop.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The model kernel failed.
    #[error("model kernel: {0}")]
    Kernel(#[from] KernelError),
    /// The optimizer refused a step.
    #[error("optimizer at step {step}: {source}")]
    Optimizer {
        /// Zero-based step.
        step: u64,
        /// Cause.
        source: OptimError,
    },
    /// The training or validation data failed.
    #[error("data: {0}")]
    Data(#[from] DataError),
    /// Writing or reading a checkpoint failed.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// Writing metrics failed.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The options or a resumed checkpoint do not fit this trainer.
    #[error("{0}")]
    Invalid(String),
}

/// What to train and where to write.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainOptions {
    /// Train until this many steps are done (counting steps restored from a checkpoint).
    pub steps: u64,
    /// Sequences per step.
    pub batch_size: usize,
    /// Tokens per sequence.
    pub seq_len: usize,
    /// Seed of the initial weights (the data source has its own).
    pub seed: u64,
    /// Validation every this many steps (0 = only at the end); needs a validation source.
    pub eval_every: u64,
    /// Batches per validation.
    pub eval_batches: usize,
    /// Checkpoint every this many steps (0 = only at the end); needs `checkpoint_dir`.
    pub checkpoint_every: u64,
    /// Where checkpoints go (`step-NNNNNNNN.safetensors`); `None` = no checkpoints.
    pub checkpoint_dir: Option<PathBuf>,
    /// Periodic checkpoints to keep (older ones are deleted; 0 = keep all).
    pub keep_checkpoints: usize,
    /// Metrics JSONL file (appended to); `None` = no metrics file.
    pub metrics_path: Option<PathBuf>,
    /// Kernel plugin name, recorded in checkpoints.
    pub kernel_name: String,
    /// Optimizer plugin name, recorded in checkpoints.
    pub optimizer_name: String,
    /// The run configuration (TOML), recorded in checkpoints.
    pub run_config: String,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            steps: 100,
            batch_size: 8,
            seq_len: 128,
            seed: 0,
            eval_every: 0,
            eval_batches: 4,
            checkpoint_every: 0,
            checkpoint_dir: None,
            keep_checkpoints: 2,
            metrics_path: None,
            kernel_name: String::new(),
            optimizer_name: String::new(),
            run_config: String::new(),
        }
    }
}

/// What happened on one training step.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct StepMetrics {
    /// Steps completed (this one included).
    pub step: u64,
    /// Training loss of the step's batch.
    pub loss: f32,
    /// Effective learning rate.
    pub lr: f32,
    /// Gradient norm before clipping.
    pub grad_norm: f32,
    /// Training tokens consumed in all.
    pub tokens: u64,
    /// Training tokens per second in this session (step time only).
    pub tokens_per_s: f64,
    /// Seconds since this session started.
    pub elapsed_s: f64,
}

/// Hooks for progress display; every method has an empty default.
pub trait TrainObserver {
    /// After every step.
    fn on_step(&mut self, _metrics: &StepMetrics) {}
    /// After a validation pass.
    fn on_eval(&mut self, _step: u64, _loss: f32) {}
    /// After a checkpoint was written.
    fn on_checkpoint(&mut self, _step: u64, _path: &Path) {}
}

/// An observer that does nothing.
impl TrainObserver for () {}

/// The outcome of [`Trainer::run`].
#[derive(Debug, Clone, PartialEq)]
pub struct TrainSummary {
    /// Steps completed in all.
    pub steps: u64,
    /// Last training loss (NaN if no step ran).
    pub last_loss: f32,
    /// Last validation loss, if any.
    pub val_loss: Option<f32>,
    /// Tokens consumed in all.
    pub tokens: u64,
    /// The last checkpoint written, if any.
    pub checkpoint: Option<PathBuf>,
}

/// The training loop and its state.
pub struct Trainer {
    kernel: Box<dyn ModelKernel>,
    optimizer: Box<dyn Optimizer>,
    train: Box<dyn BatchSource>,
    validation: Option<Box<dyn BatchSource>>,
    options: TrainOptions,
    params: Vec<f32>,
    grads: Vec<f32>,
    batch: BatchBuffer,
    step: u64,
    tokens: u64,
}

impl std::fmt::Debug for Trainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("step", &self.step)
            .field("tokens", &self.tokens)
            .field("options", &self.options)
            .finish()
    }
}

impl Trainer {
    /// A trainer with freshly initialised weights (`kernel.init_params(options.seed)`).
    pub fn new(
        kernel: Box<dyn ModelKernel>,
        optimizer: Box<dyn Optimizer>,
        train: Box<dyn BatchSource>,
        validation: Option<Box<dyn BatchSource>>,
        options: TrainOptions,
    ) -> Result<Self, TrainError> {
        if options.batch_size == 0 || options.seq_len == 0 {
            return Err(TrainError::Invalid(
                "batch size and sequence length must be positive".into(),
            ));
        }
        if options.seq_len > kernel.config().seq_len {
            return Err(TrainError::Invalid(format!(
                "sequence length {} exceeds the model's {}",
                options.seq_len,
                kernel.config().seq_len
            )));
        }
        let n = kernel.layout().total_params();
        let mut params = vec![0f32; n];
        kernel.init_params(options.seed, &mut params)?;
        Ok(Self {
            kernel,
            optimizer,
            train,
            validation,
            options,
            params,
            grads: vec![0f32; n],
            batch: BatchBuffer::default(),
            step: 0,
            tokens: 0,
        })
    }

    /// Restores weights, optimizer state, step, token count and data position from `file`,
    /// refusing a checkpoint of another model, kernel or optimizer.
    pub fn resume(&mut self, file: &CheckpointFile) -> Result<(), TrainError> {
        let meta = file.meta();
        let refuse = |what: &str, saved: &str, ours: &str| {
            TrainError::Checkpoint(CheckpointError::Mismatch {
                path: file.path().to_path_buf(),
                reason: format!("it was written by {what} `{saved}`, this run uses `{ours}`"),
            })
        };
        if meta.kernel != self.options.kernel_name {
            return Err(refuse("kernel", &meta.kernel, &self.options.kernel_name));
        }
        if meta.optimizer != self.options.optimizer_name {
            return Err(refuse("optimizer", &meta.optimizer, &self.options.optimizer_name));
        }
        let params = file.params(self.kernel.layout())?;
        let state = file.optimizer_state()?;
        self.optimizer.load_state(state).map_err(|e| {
            TrainError::Checkpoint(CheckpointError::Mismatch {
                path: file.path().to_path_buf(),
                reason: e.to_string(),
            })
        })?;
        self.train.seek(meta.data_position)?;
        self.params = params;
        self.step = meta.step;
        self.tokens = meta.tokens;
        Ok(())
    }

    /// Steps completed.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// The parameter arena.
    pub fn params(&self) -> &[f32] {
        &self.params
    }

    /// The model kernel.
    pub fn kernel(&self) -> &dyn ModelKernel {
        self.kernel.as_ref()
    }

    /// Runs one step; returns `(loss, lr, gradient norm)`.
    pub fn train_step(&mut self) -> Result<(f32, f32, f32), TrainError> {
        let (b, t) = (self.options.batch_size, self.options.seq_len);
        self.train.next_batch(b, t, &mut self.batch)?;
        let loss =
            self.kernel.forward_backward(&self.params, &self.batch.view(), &mut self.grads)?;
        let info = StepInfo { step: self.step, lr_scale: 1.0 };
        let report = self
            .optimizer
            .step(&mut self.params, &self.grads, info)
            .map_err(|source| TrainError::Optimizer { step: self.step, source })?;
        self.step += 1;
        self.tokens += (b * t) as u64;
        Ok((loss, report.lr, report.update_norm))
    }

    /// Mean validation loss over the first `eval_batches` batches of the validation source
    /// (the same batches every time), weighted by counted targets; `None` without a source.
    pub fn evaluate(&mut self) -> Result<Option<f32>, TrainError> {
        let Some(source) = self.validation.as_mut() else { return Ok(None) };
        let o = &self.options;
        let shape = (o.eval_batches, o.batch_size, o.seq_len);
        mean_loss(self.kernel.as_mut(), &self.params, source.as_mut(), shape)
    }

    /// Writes a checkpoint of the current state to `path`.
    pub fn save_checkpoint(&self, path: &Path) -> Result<(), TrainError> {
        let meta = CheckpointMeta {
            step: self.step,
            tokens: self.tokens,
            seed: self.options.seed,
            data_position: self.train.position(),
            layout: self.kernel.layout().clone(),
            kernel: self.options.kernel_name.clone(),
            optimizer: self.options.optimizer_name.clone(),
            run_config: self.options.run_config.clone(),
        };
        checkpoint::write(path, &meta, &self.params, &self.optimizer.save_state())?;
        Ok(())
    }

    /// Trains until `options.steps` steps are done, validating, logging and checkpointing.
    pub fn run(&mut self, observer: &mut dyn TrainObserver) -> Result<TrainSummary, TrainError> {
        let mut metrics = match &self.options.metrics_path {
            Some(p) => Some(MetricsLog::open(p)?),
            None => None,
        };
        let start = Instant::now();
        let (mut train_secs, mut session_tokens) = (0f64, 0u64);
        let mut summary = TrainSummary {
            steps: self.step,
            last_loss: f32::NAN,
            val_loss: None,
            tokens: self.tokens,
            checkpoint: None,
        };
        let tokens_total =
            self.options.steps * (self.options.batch_size * self.options.seq_len) as u64;
        while self.step < self.options.steps {
            let t0 = Instant::now();
            let (loss, lr, grad_norm) = self.train_step()?;
            train_secs += t0.elapsed().as_secs_f64();
            session_tokens += (self.options.batch_size * self.options.seq_len) as u64;
            let m = StepMetrics {
                step: self.step,
                loss,
                lr,
                grad_norm,
                tokens: self.tokens,
                tokens_per_s: if train_secs > 0.0 {
                    session_tokens as f64 / train_secs
                } else {
                    0.0
                },
                elapsed_s: start.elapsed().as_secs_f64(),
            };
            summary.last_loss = loss;
            if let Some(log) = metrics.as_mut() {
                log.write(&MetricsRow {
                    tokens: m.tokens,
                    tokens_total: Some(tokens_total),
                    loss: Some(m.loss),
                    lr: Some(m.lr),
                    grad_norm: Some(m.grad_norm),
                    tokens_per_s: Some(m.tokens_per_s),
                    ..MetricsRow::new(
                        MetricsSource::Train,
                        MetricsKind::Progress,
                        m.elapsed_s,
                        m.step,
                    )
                })?;
            }
            observer.on_step(&m);
            let last = self.step == self.options.steps;
            let step = self.step;
            let every = |n: u64| n > 0 && step.is_multiple_of(n);
            let (eval_now, checkpoint_now) = (
                every(self.options.eval_every) || last,
                every(self.options.checkpoint_every) || last,
            );
            if eval_now && let Some(val) = self.evaluate()? {
                summary.val_loss = Some(val);
                if let Some(log) = metrics.as_mut() {
                    log.write(&MetricsRow {
                        tokens: self.tokens,
                        tokens_total: Some(tokens_total),
                        val_loss: Some(val),
                        ..MetricsRow::new(
                            MetricsSource::Train,
                            MetricsKind::Validation,
                            start.elapsed().as_secs_f64(),
                            self.step,
                        )
                    })?;
                }
                observer.on_eval(self.step, val);
            }
            if checkpoint_now && let Some(dir) = self.options.checkpoint_dir.clone() {
                let path = checkpoint_path(&dir, self.step);
                self.save_checkpoint(&path)?;
                prune_checkpoints(&dir, self.options.keep_checkpoints);
                observer.on_checkpoint(self.step, &path);
                summary.checkpoint = Some(path);
            }
        }
        summary.steps = self.step;
        summary.tokens = self.tokens;
        Ok(summary)
    }
}

/// The checkpoint file of `step` in `dir`.
pub fn checkpoint_path(dir: &Path, step: u64) -> PathBuf {
    dir.join(format!("step-{step:08}.safetensors"))
}

/// The newest `step-NNNNNNNN.safetensors` in `dir`, if any.
pub fn latest_checkpoint(dir: &Path) -> Option<PathBuf> {
    step_checkpoints(dir).pop().map(|(_, p)| p)
}

fn step_checkpoints(dir: &Path) -> Vec<(u64, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut out: Vec<(u64, PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let digits = name.strip_prefix("step-")?.strip_suffix(".safetensors")?;
            Some((digits.parse().ok()?, e.path()))
        })
        .collect();
    out.sort();
    out
}

/// Deletes all but the newest `keep` checkpoints of `dir` (0 = keep all).
pub fn prune_checkpoints(dir: &Path, keep: usize) {
    if keep == 0 {
        return;
    }
    let all = step_checkpoints(dir);
    for (_, path) in all.iter().take(all.len().saturating_sub(keep)) {
        if let Err(e) = std::fs::remove_file(path) {
            tracing::warn!(path = %path.display(), error = %e, "cannot delete an old checkpoint");
        }
    }
}

/// Appends [`MetricsRow`]s to the metrics file.
struct MetricsLog(MetricsFile);

impl MetricsLog {
    fn open(path: &Path) -> Result<Self, TrainError> {
        MetricsFile::open(path)
            .map(Self)
            .map_err(|source| TrainError::Io { path: path.to_path_buf(), source })
    }

    fn write(&mut self, row: &MetricsRow) -> Result<(), TrainError> {
        self.0
            .write(row)
            .map_err(|source| TrainError::Io { path: self.0.path().to_path_buf(), source })
    }
}

/// A [`BatchSource`] over a plain token file.
///
/// # Format
/// The file is nothing but token ids as little-endian `u32`, back to back (no header; the
/// length must be a multiple of 4). For sequence length `T` the file is cut into
/// `(n - 1) / T` windows of `T + 1` tokens at stride `T`: window `w` covers tokens
/// `w*T ..= w*T + T`; inputs are its first `T` tokens, targets the last `T` (every target
/// counts). Each epoch visits every window once, in an order shuffled from `(seed, epoch)`;
/// the position is `(epoch, windows handed out this epoch)`.
#[derive(Debug, Clone)]
pub struct TokenFileSource {
    name: String,
    tokens: Vec<u32>,
    seed: u64,
    shuffle: bool,
    position: SourcePosition,
    /// Window order of `(epoch, seq_len)`, rebuilt when either changes.
    order: Vec<u32>,
    order_key: Option<(u64, usize)>,
}

impl TokenFileSource {
    /// Reads `path`, checking every id is below `vocab_size`.
    pub fn open(path: &Path, vocab_size: usize, seed: u64) -> Result<Self, DataError> {
        let bytes = std::fs::read(path)
            .map_err(|source| DataError::Io { path: path.display().to_string(), source })?;
        let invalid =
            |reason: String| DataError::Invalid { path: path.display().to_string(), reason };
        if !bytes.len().is_multiple_of(4) {
            return Err(invalid(format!(
                "{} bytes is not a whole number of little-endian u32 tokens",
                bytes.len()
            )));
        }
        let tokens: Vec<u32> =
            bytes.chunks_exact(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        Self::from_tokens(path.display().to_string(), tokens, vocab_size, seed)
    }

    /// A source over tokens already in memory; `name` is used in error messages.
    pub fn from_tokens(
        name: String,
        tokens: Vec<u32>,
        vocab_size: usize,
        seed: u64,
    ) -> Result<Self, DataError> {
        if let Some((i, &id)) =
            tokens.iter().enumerate().find(|&(_, &id)| id as usize >= vocab_size)
        {
            return Err(DataError::Invalid {
                path: name,
                reason: format!("token {i} is id {id}, outside the vocabulary of {vocab_size}"),
            });
        }
        Ok(Self {
            name,
            tokens,
            seed,
            shuffle: true,
            position: SourcePosition::default(),
            order: Vec::new(),
            order_key: None,
        })
    }

    /// Windows in file order, every epoch the same (for validation).
    pub fn unshuffled(mut self) -> Self {
        self.shuffle = false;
        self.order_key = None;
        self
    }

    /// Windows per epoch at `seq_len`.
    pub fn windows(&self, seq_len: usize) -> usize {
        self.tokens.len().saturating_sub(1) / seq_len.max(1)
    }

    fn plan(&mut self, seq_len: usize) -> Result<(), DataError> {
        let key = (self.position.epoch, seq_len);
        if self.order_key == Some(key) {
            return Ok(());
        }
        let n = self.windows(seq_len);
        if n == 0 {
            return Err(DataError::Empty(format!(
                "{} holds {} tokens, fewer than one window of {} + 1",
                self.name,
                self.tokens.len(),
                seq_len
            )));
        }
        let n32 = u32::try_from(n).map_err(|_| DataError::Invalid {
            path: self.name.clone(),
            reason: format!("{n} windows are too many"),
        })?;
        self.order.clear();
        self.order.extend(0..n32);
        if self.shuffle {
            let mut rng = SplitMix64::new(
                self.seed ^ self.position.epoch.wrapping_mul(0x9e37_79b9_7f4a_7c15),
            );
            for i in (1..n).rev() {
                let j = (rng.next() % (i as u64 + 1)) as usize;
                self.order.swap(i, j);
            }
        }
        self.order_key = Some(key);
        Ok(())
    }
}

impl BatchSource for TokenFileSource {
    fn next_batch(
        &mut self,
        batch: usize,
        seq_len: usize,
        out: &mut BatchBuffer,
    ) -> Result<(), DataError> {
        out.batch = batch;
        out.seq_len = seq_len;
        out.inputs.clear();
        out.targets.clear();
        for _ in 0..batch {
            self.plan(seq_len)?;
            if self.position.cursor as usize >= self.order.len() {
                if self.position.cursor as usize > self.order.len() {
                    return Err(DataError::Invalid {
                        path: self.name.clone(),
                        reason: format!(
                            "position {} is past the {} windows of an epoch",
                            self.position.cursor,
                            self.order.len()
                        ),
                    });
                }
                self.position = SourcePosition { epoch: self.position.epoch + 1, cursor: 0 };
                self.plan(seq_len)?;
            }
            let start = self.order[self.position.cursor as usize] as usize * seq_len;
            let window = &self.tokens[start..start + seq_len + 1];
            out.inputs.extend_from_slice(&window[..seq_len]);
            out.targets.extend_from_slice(&window[1..]);
            self.position.cursor += 1;
        }
        Ok(())
    }

    fn position(&self) -> SourcePosition {
        self.position
    }

    fn seek(&mut self, position: SourcePosition) -> Result<(), DataError> {
        self.position = position;
        Ok(())
    }
}

/// Writes `tokens` as a plain token file (see [`TokenFileSource`]), atomically.
pub fn write_token_file(path: &Path, tokens: &[u32]) -> std::io::Result<()> {
    let bytes: Vec<u8> = tokens.iter().flat_map(|t| t.to_le_bytes()).collect();
    checkpoint::write_atomic(path, &bytes)
}

/// SplitMix64: a tiny, fixed generator, so shuffles never change with a dependency's version.
struct SplitMix64(u64);

impl SplitMix64 {
    fn new(seed: u64) -> Self {
        Self(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Mean loss of `params` over the first `batches` batches of `(batch_size, seq_len)` windows of
/// `source` (from its start, so the same batches every time), weighted by counted targets;
/// `None` when they count none. What `bitnet train`'s validation and a fleet run's periodic
/// validation both measure.
pub fn mean_loss(
    kernel: &mut dyn ModelKernel,
    params: &[f32],
    source: &mut dyn BatchSource,
    (batches, batch_size, seq_len): (usize, usize, usize),
) -> Result<Option<f32>, TrainError> {
    source.seek(SourcePosition::default())?;
    let (mut sum, mut count) = (0f64, 0usize);
    let mut buf = BatchBuffer::default();
    for _ in 0..batches.max(1) {
        source.next_batch(batch_size, seq_len, &mut buf)?;
        let counted = buf.view().counted_targets();
        if counted == 0 {
            continue;
        }
        let loss = kernel.forward_loss(params, &buf.view())?;
        sum += f64::from(loss) * counted as f64;
        count += counted;
    }
    Ok((count > 0).then(|| (sum / count as f64) as f32))
}

#[cfg(test)]
mod tests;
