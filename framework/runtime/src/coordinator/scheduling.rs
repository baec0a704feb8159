//! Task sizing: how many tokens a task holds and how long its lease runs, from the task shape
//! and the worker's measured throughput. The one home of this arithmetic.

use super::*;
use crate::config::RunConfig;

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

impl Coordinator {
    pub(super) fn lease_ms(&self, tokens: u64, tokens_per_sec: f64) -> u64 {
        let expected = tokens as f64 / tokens_per_sec.max(1e-3);
        let secs = (expected * self.settings.lease_headroom).max(self.settings.min_lease_secs);
        // A worker reporting a crawl (1e-9 tokens/s) would otherwise hold a task for days.
        let secs = secs.min(self.settings.max_lease_secs);
        secs_to_ms(secs.max(3.0 * self.settings.heartbeat_secs))
    }

    /// Tokens a task for a worker of `tokens_per_sec` should hold, and the granule.
    pub(super) fn task_size(&self, tokens_per_sec: f64) -> (u64, u64) {
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
}

impl CoordinatorSection {
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
}

/// Steps the learning-rate schedules of a distributed run span (the coordinator's optimizer in
/// async-sgd, the workers' inner optimizer in diloco), so a schedule ends when the token budget
/// does. With `train.token_budget` set, `budget / unit`, the unit being
/// `coordinator.schedule_unit_tokens` if set, else async-sgd's `coordinator.max_task_tokens`
/// (one step per capped task) or diloco's batch (`batch_size x seq_len`; its inner schedule is
/// indexed by tokens applied / batch tokens). Otherwise (one epoch, or async-sgd tasks sized
/// by time) `train.steps`.
pub fn schedule_steps(config: &RunConfig) -> u64 {
    let budget = config.train.token_budget;
    let batch = (config.train.batch_size.max(1) * config.model.seq_len.max(1)) as u64;
    let unit = config.coordinator.schedule_unit_tokens;
    match (config.train.mode, config.coordinator.max_task_tokens) {
        _ if budget == 0 => config.train.steps,
        _ if unit > 0 => budget.div_ceil(unit),
        (TrainMode::AsyncSgd, 0) => config.train.steps,
        (TrainMode::AsyncSgd, cap) => budget.div_ceil(cap),
        (TrainMode::Diloco, _) => budget.div_ceil(batch),
    }
}

/// The error for DiLoCo with a lossy weight download.
pub fn lossy_diloco(codec: &str) -> String {
    format!(
        "weight_codec `{codec}` is lossy, but train.mode = \"diloco\" needs the exact fp32 \
         weights (its inner steps update the latent weights): use weight_codec.type = \"fp32\""
    )
}
