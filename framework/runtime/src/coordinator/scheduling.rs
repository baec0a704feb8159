//! Task sizing: how many tokens a task holds and how long its lease runs, from the task shape,
//! the run's token count and the workers sharing a round. The one home of this arithmetic.
//!
//! In async-sgd a task's update is one gradient over all its tokens, and the coordinator takes
//! one optimizer step per round (or per task without rounds): the task size *is* the batch
//! size of the optimizer. So a task is a whole number of optimizer batches
//! (`coordinator.schedule_unit_tokens`, else `batch_size x seq_len` tokens), as many as still
//! give the run the optimizer steps its schedule spans and no more than `task_seconds` of the
//! claiming worker's throughput, but never less than one batch. Time only caps the size:
//! sizing a task to 600 s of a worker's throughput made the first round of TruckMate medium
//! one AdamW step on about a million tokens.

use super::*;
use crate::config::RunConfig;
use bitnet_framework::coordinator_store::queue::slice_size;

/// A schedule that yields fewer than this share of the steps it spans is warned about.
pub const FEW_STEPS_SHARE: f64 = 0.5;

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
    /// `train.steps`.
    pub steps: u64,
    /// `train.token_budget` (0 = one epoch).
    pub token_budget: u64,
    /// Tokens the run trains on: the budget, or the corpus's epoch once the coordinator knows
    /// it (0 = unknown).
    pub run_tokens: u64,
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
            steps: train.steps,
            token_budget: train.token_budget,
            run_tokens: train.token_budget,
        }
    }

    /// Tokens of one full batch.
    pub fn batch_tokens(&self) -> u64 {
        (self.batch_size * self.seq_len) as u64
    }
}

/// How async-sgd tasks are sized for a run, and the optimizer steps that gives it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TaskPlan {
    /// Tokens of one optimizer batch, the granule of a task:
    /// `coordinator.schedule_unit_tokens` (at least one window of `seq_len`), else
    /// `batch_size x seq_len`.
    pub batch_tokens: u64,
    /// Whole optimizer batches per task (0 when `max_task_tokens` cuts a task below one).
    pub batches: u64,
    /// Tokens of a task (`batches x batch_tokens`, or less under `max_task_tokens`).
    pub task_tokens: u64,
    /// Slices are whole multiples of this.
    pub granule: u64,
    /// Tasks averaged into one optimizer step: the workers sharing a synchronous round, or
    /// 1 without rounds.
    pub tasks_per_step: u64,
    /// Tokens of the run (0 = not known yet).
    pub run_tokens: u64,
    /// Optimizer steps the run takes at this size (0 when the run's tokens are unknown).
    pub steps: u64,
    /// Steps the config names: what the learning-rate schedule spans ([`schedule_steps`]).
    pub named_steps: u64,
}

impl TaskPlan {
    /// Whether the run takes far fewer optimizer steps than its config names.
    pub fn too_few_steps(&self) -> bool {
        self.steps > 0 && (self.steps as f64) < FEW_STEPS_SHARE * self.named_steps as f64
    }

    /// One line: the task size and the steps it gives.
    pub fn describe(&self) -> String {
        let steps = if self.steps > 0 {
            format!("about {} optimizer steps over {} tokens", self.steps, self.run_tokens)
        } else {
            "optimizer steps known once the corpus is tokenized".into()
        };
        format!(
            "{} tokens per task ({:.2} optimizer batches of {}), {} task(s) per step: {steps}; \
             the schedule spans {}",
            self.task_tokens,
            self.task_tokens as f64 / self.batch_tokens.max(1) as f64,
            self.batch_tokens,
            self.tasks_per_step,
            self.named_steps
        )
    }

    /// The warning for a run that takes far fewer optimizer steps than its config names, with
    /// what to change; `None` when the steps are close enough.
    pub fn warning(&self) -> Option<String> {
        if !self.too_few_steps() {
            return None;
        }
        let step_tokens = self.tasks_per_step * self.task_tokens;
        let split = (self.run_tokens / self.named_steps.max(1) / self.tasks_per_step.max(1)).max(1);
        Some(format!(
            "this run takes about {} optimizer steps, far fewer than the {} its config names: \
             each step averages {} task(s) of {} tokens ({step_tokens} tokens) over {} tokens. \
             Lower train.steps to about {}, raise train.token_budget to about {}, or split a \
             batch across the workers with coordinator.max_task_tokens = {split}",
            self.steps,
            self.named_steps,
            self.tasks_per_step,
            self.task_tokens,
            self.run_tokens,
            self.steps,
            self.named_steps.saturating_mul(step_tokens),
        ))
    }
}

impl CoordinatorSection {
    /// How async-sgd tasks are sized for a run of `shape` over `run_tokens` tokens (0 =
    /// unknown) with `workers` workers sharing a round, for a worker of `tokens_per_sec`
    /// (`None`: no time cap, as in `--dry-run`). See the module docs.
    pub fn plan_async_sgd(
        &self,
        shape: &TaskShape,
        run_tokens: u64,
        workers: u64,
        tokens_per_sec: Option<f64>,
    ) -> TaskPlan {
        // A task holds at least one window, whatever the schedule's unit.
        let unit = match self.schedule_unit_tokens {
            0 => shape.batch_tokens(),
            u => u.max(shape.seq_len as u64),
        }
        .max(1);
        let tasks_per_step = if self.sync_rounds { workers.max(1) } else { 1 };
        let named_steps = schedule_steps_for(self, shape);
        // The most whole batches per task that still give the named steps.
        let by_steps = match named_steps.saturating_mul(tasks_per_step).saturating_mul(unit) {
            0 => 1,
            per_batch_step if run_tokens > 0 => run_tokens / per_batch_step,
            _ => 1,
        };
        // The most whole batches that fit task_seconds on this worker.
        let by_time = tokens_per_sec.map_or(u64::MAX, |tps| {
            let tokens = tps.max(0.0) * self.task_seconds;
            if tokens.is_finite() { tokens as u64 / unit } else { u64::MAX }
        });
        let batches = by_steps.min(by_time).max(1);
        let (mut want, mut granule) = (batches.saturating_mul(unit), unit);
        if self.max_task_tokens > 0 {
            // Packed examples need no batch-aligned cuts; plain windows do, as far as the cap
            // allows.
            want = want.min(self.max_task_tokens);
            granule = granule.min(self.max_task_tokens);
        }
        let task_tokens = slice_size(want, granule);
        let steps = match run_tokens {
            0 => 0,
            t => t.div_ceil(tasks_per_step.saturating_mul(task_tokens).max(1)),
        };
        TaskPlan {
            batch_tokens: unit,
            batches: task_tokens / unit.max(1),
            task_tokens,
            granule,
            tasks_per_step,
            run_tokens,
            steps,
            named_steps,
        }
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
        match self.shape.mode {
            // One outer step per task: exactly H inner steps of full batches.
            TrainMode::Diloco => {
                let g = self.shape.batch_tokens() * self.shape.inner_steps as u64;
                (g, g)
            }
            TrainMode::AsyncSgd => {
                // The workers that share a round: those alive now (at least this one).
                let workers = match self.store.worker_counts() {
                    Ok(c) => c.active.max(1),
                    Err(e) => {
                        tracing::warn!(error = %e, "counting workers failed; sizing for one");
                        1
                    }
                };
                let plan = self.settings.plan_async_sgd(
                    &self.shape,
                    self.shape.run_tokens,
                    workers,
                    Some(tokens_per_sec),
                );
                (plan.task_tokens, plan.granule)
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
                let unit = match self.schedule_unit_tokens {
                    0 => format!("{batch} tokens (batch_size x seq_len)"),
                    u => format!("{u} tokens (coordinator.schedule_unit_tokens)"),
                };
                let cap = if self.max_task_tokens > 0 {
                    format!(
                        ", at most {} tokens (coordinator.max_task_tokens)",
                        self.max_task_tokens
                    )
                } else {
                    String::new()
                };
                format!(
                    "async-sgd: whole optimizer batches of {unit} per task, as many as keep the \
                     steps the schedule spans and fit {} s of the worker's throughput (at least \
                     one){cap}; {}",
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
/// by batches) `train.steps`.
pub fn schedule_steps(config: &RunConfig) -> u64 {
    schedule_steps_for(
        &config.coordinator,
        &TaskShape::from_train(&config.train, config.model.seq_len),
    )
}

/// [`schedule_steps`] of a run of `shape` under `settings`.
pub fn schedule_steps_for(settings: &CoordinatorSection, shape: &TaskShape) -> u64 {
    let budget = shape.token_budget;
    let unit = settings.schedule_unit_tokens;
    match (shape.mode, settings.max_task_tokens) {
        _ if budget == 0 => shape.steps,
        _ if unit > 0 => budget.div_ceil(unit),
        (TrainMode::AsyncSgd, 0) => shape.steps,
        (TrainMode::AsyncSgd, cap) => budget.div_ceil(cap),
        (TrainMode::Diloco, _) => budget.div_ceil(shape.batch_tokens()),
    }
}

/// The async-sgd task plan of `config` over `run_tokens` tokens (its budget, or the epoch; 0 =
/// unknown) with its `[run] local_workers` sharing each round, as `bitnet run` starts it;
/// `None` in diloco (a task is H inner steps).
pub fn local_plan(config: &RunConfig, run_tokens: u64) -> Option<TaskPlan> {
    let shape = TaskShape::from_train(&config.train, config.model.seq_len);
    (shape.mode == TrainMode::AsyncSgd).then(|| {
        let workers = config.run.local_workers.max(1) as u64;
        config.coordinator.plan_async_sgd(&shape, run_tokens, workers, None)
    })
}

/// The error for DiLoCo with a lossy weight download.
pub fn lossy_diloco(codec: &str) -> String {
    format!(
        "weight_codec `{codec}` is lossy, but train.mode = \"diloco\" needs the exact fp32 \
         weights (its inner steps update the latent weights): use weight_codec.type = \"fp32\""
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// TruckMate medium as first shipped: batch 8 x 128, `train.steps = 2000`, one epoch of the
    /// corpus (1,530,947 train tokens), two local workers calibrated at about 800 tokens/s.
    fn medium() -> (CoordinatorSection, TaskShape) {
        let train = TrainSection { batch_size: 8, steps: 2000, ..TrainSection::default() };
        (CoordinatorSection::default(), TaskShape::from_train(&train, 128))
    }

    #[test]
    fn medium_tasks_are_one_optimizer_batch_not_ten_minutes_of_tokens() {
        let (settings, shape) = medium();
        let plan = settings.plan_async_sgd(&shape, 1_530_947, 2, Some(800.0));
        // 600 s x 800 tokens/s asked for 480,000 tokens per task: two optimizer steps per epoch.
        assert_eq!((plan.task_tokens, plan.granule, plan.batches), (1024, 1024, 1));
        assert_eq!(plan.tasks_per_step, 2);
        assert_eq!(plan.steps, 748, "ceil(1,530,947 / (2 x 1024))");
        assert_eq!(plan.named_steps, 2000);
        // 748 of 2000 named steps: warned, with what to change.
        let warning = plan.warning().expect("far fewer steps than named");
        assert!(warning.contains("748") && warning.contains("2000"), "{warning}");
        assert!(warning.contains("train.token_budget") && warning.contains("max_task_tokens"));
    }

    #[test]
    fn tasks_grow_in_whole_batches_while_the_named_steps_allow() {
        let (settings, shape) = medium();
        // 100M tokens over 2000 steps of 2 workers: 24 whole batches per task.
        let plan = settings.plan_async_sgd(&shape, 100_000_000, 2, Some(800.0));
        assert_eq!((plan.batches, plan.task_tokens), (24, 24 * 1024));
        assert!(plan.steps >= 2000 && plan.warning().is_none(), "{plan:?}");
        // Twice the workers share each step: half the batches per task, the same steps.
        let wide = settings.plan_async_sgd(&shape, 100_000_000, 4, Some(800.0));
        assert_eq!(wide.batches, 12);
        // task_seconds caps the size: 5 s of 800 tokens/s holds 3 whole batches.
        let short = CoordinatorSection { task_seconds: 5.0, ..settings.clone() };
        assert_eq!(short.plan_async_sgd(&shape, 100_000_000, 2, Some(800.0)).batches, 3);
        // ...but never below one batch, however slow the worker.
        assert_eq!(short.plan_async_sgd(&shape, 100_000_000, 2, Some(1.0)).task_tokens, 1024);
        // Without rounds every task is a step of its own.
        let unsync = CoordinatorSection { sync_rounds: false, ..settings };
        let plan = unsync.plan_async_sgd(&shape, 100_000_000, 2, Some(800.0));
        assert_eq!((plan.tasks_per_step, plan.batches), (1, 48));
    }

    #[test]
    fn small_as_shipped_takes_its_named_steps() {
        // truckmate-small: tasks capped at 440 of a unit of 880, budget 1,760,000, 2 workers.
        let train =
            TrainSection { batch_size: 8, token_budget: 1_760_000, ..TrainSection::default() };
        let shape = TaskShape::from_train(&train, 128);
        let settings = CoordinatorSection {
            max_task_tokens: 440,
            schedule_unit_tokens: 880,
            ..CoordinatorSection::default()
        };
        let plan = settings.plan_async_sgd(&shape, 1_760_000, 2, Some(800.0));
        assert_eq!((plan.task_tokens, plan.granule, plan.batches), (440, 440, 0));
        assert_eq!((plan.steps, plan.named_steps), (2000, 2000));
        assert!(plan.warning().is_none());
        assert!(plan.describe().contains("0.50 optimizer batches of 880"), "{}", plan.describe());
    }

    #[test]
    fn an_unknown_run_length_sizes_one_batch_and_warns_of_nothing() {
        let (settings, shape) = medium();
        let plan = settings.plan_async_sgd(&shape, 0, 2, None);
        assert_eq!((plan.task_tokens, plan.steps), (1024, 0));
        assert!(plan.warning().is_none());
        assert!(plan.describe().contains("once the corpus is tokenized"));
    }
}
