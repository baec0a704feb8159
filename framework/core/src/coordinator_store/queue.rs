//! Queue rules every coordinator store applies the same way: how a claim splits a task, why a
//! completion is refused, how throughput estimates move.

use super::{Completion, Finished, TaskRecord, TaskState};
use crate::protocol::{TaskCounts, TaskRef};

/// Weight of a new throughput measurement in the moving average.
pub const THROUGHPUT_EMA: f64 = 0.5;

/// The size of the slice a claim takes: `max_tokens` rounded down to a multiple of
/// `granularity`, at least one granule.
pub fn slice_size(max_tokens: u64, granularity: u64) -> u64 {
    let g = granularity.max(1);
    (max_tokens / g).max(1) * g
}

/// Whether `task` (as stored in `t`) is currently leased to `worker` under that lease.
pub fn is_held(t: &TaskRecord, task: TaskRef, worker: &str) -> bool {
    t.state == TaskState::Assigned
        && t.attempts == task.lease
        && t.worker.as_deref() == Some(worker)
}

/// What completing `f` does to the task as stored (`None`: no such task).
/// [`Completion::Completed`] means the store must now mark it Done.
pub fn completion(t: Option<&TaskRecord>, f: &Finished) -> Completion {
    let Some(t) = t else {
        return Completion::Refused(format!("task {} does not exist", f.task.task_id));
    };
    if is_held(t, f.task, &f.worker) {
        Completion::Completed
    } else if t.state == TaskState::Done
        && t.attempts == f.task.lease
        && t.worker.as_deref() == Some(f.worker.as_str())
    {
        Completion::AlreadyDone { applied_version: t.applied_version }
    } else {
        Completion::Refused(refusal(t, f.task, &f.worker))
    }
}

/// Why a completion of `task` by `worker` is refused, given the task as stored.
pub fn refusal(t: &TaskRecord, task: TaskRef, worker: &str) -> String {
    if t.worker.as_deref() != Some(worker) {
        format!("task {} is not leased to `{worker}`", t.id)
    } else if t.attempts != task.lease {
        format!("lease {} of task {} is no longer current (now {})", task.lease, t.id, t.attempts)
    } else {
        format!("task {} is {}, not assigned", t.id, t.state.as_str())
    }
}

/// Adds `n` tasks of `tokens` tokens in all, in the state named `state` (as stored by a SQL
/// store), to `counts`; an unknown state counts as failed.
pub fn tally(counts: &mut TaskCounts, state: &str, n: u64, tokens: u64) {
    counts.total_tokens += tokens;
    match TaskState::parse(state) {
        Some(TaskState::Pending) => counts.pending += n,
        Some(TaskState::Assigned) => counts.assigned += n,
        Some(TaskState::Done) => {
            counts.done += n;
            counts.done_tokens += tokens;
        }
        Some(TaskState::Failed) | None => counts.failed += n,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_are_whole_granules() {
        assert_eq!(slice_size(1000, 128), 896);
        assert_eq!(slice_size(10, 128), 128, "at least one granule");
        assert_eq!(slice_size(10, 0), 10, "granularity 0 means 1");
    }
}
