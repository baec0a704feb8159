//! Coordinator store "memory": everything in one mutex-guarded struct. Nothing survives the
//! process; for tests, benches and throw-away runs. Also the reference the conformance suite
//! was written against.

use bitnet_framework::BuildContext;
use bitnet_framework::coordinator_store::queue::{THROUGHPUT_EMA, completion, is_held, slice_size};
use bitnet_framework::coordinator_store::{
    ClaimRequest, ClientRecord, Completion, CoordinatorStore, Finished, LogPage, LogQuery, NewTask,
    StoreFailure, StoredLog, SweepPolicy, SweepReport, TaskPage, TaskQuery, TaskRecord, TaskState,
    TaskTelemetry, WorkerRecord, WorkerState,
};
use bitnet_framework::protocol::{LogRecord, TaskCounts, TaskRef, WorkerCounts, now_ms};
use bitnet_framework::registry::{BuildError, PluginConfig};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};

#[derive(Default)]
struct State {
    tasks: BTreeMap<u64, TaskRecord>,
    next_task: u64,
    workers: HashMap<String, WorkerRecord>,
    clients: BTreeMap<String, ClientRecord>,
    telemetry: Vec<TaskTelemetry>,
    /// The stored log records in arrival order.
    logs: VecDeque<StoredLog>,
}

/// An in-memory [`CoordinatorStore`].
#[derive(Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> Result<MutexGuard<'_, State>, StoreFailure> {
        self.state.lock().map_err(|_| StoreFailure("memory store lock poisoned".into()))
    }
}

impl CoordinatorStore for MemoryStore {
    fn add_tasks(&self, tasks: &[NewTask]) -> Result<Vec<u64>, StoreFailure> {
        let mut s = self.lock()?;
        let mut ids = Vec::with_capacity(tasks.len());
        for t in tasks {
            s.next_task += 1;
            let id = s.next_task;
            s.tasks.insert(
                id,
                TaskRecord {
                    id,
                    shard: t.shard.clone(),
                    offset: t.offset,
                    tokens: t.tokens,
                    state: TaskState::Pending,
                    worker: None,
                    attempts: 0,
                    lease_deadline_ms: 0,
                    applied_version: 0,
                },
            );
            ids.push(id);
        }
        Ok(ids)
    }

    fn claim(&self, req: &ClaimRequest) -> Result<Option<TaskRecord>, StoreFailure> {
        let mut s = self.lock()?;
        if req.max_leases > 0 {
            let held = s
                .tasks
                .values()
                .filter(|t| {
                    t.state == TaskState::Assigned && t.worker.as_deref() == Some(&*req.worker)
                })
                .count() as u64;
            if held >= req.max_leases {
                return Ok(None);
            }
        }
        let Some(id) = s.tasks.values().find(|t| t.state == TaskState::Pending).map(|t| t.id)
        else {
            return Ok(None);
        };
        let size = slice_size(req.max_tokens, req.granularity);
        let t = s.tasks.get_mut(&id).ok_or_else(|| StoreFailure("task vanished".into()))?;
        let mut claimed = TaskRecord {
            state: TaskState::Assigned,
            worker: Some(req.worker.clone()),
            attempts: t.attempts + 1,
            lease_deadline_ms: req.now_ms + req.lease_ms,
            ..t.clone()
        };
        if t.tokens <= size {
            *t = claimed.clone();
            return Ok(Some(claimed));
        }
        // Split: the head is claimed as a new task and the rest keeps this one's place in the
        // queue, so the next claim continues where this one stopped (see the trait's contract).
        claimed.tokens = size;
        t.offset += size;
        t.tokens -= size;
        s.next_task += 1;
        claimed.id = s.next_task;
        s.tasks.insert(claimed.id, claimed.clone());
        Ok(Some(claimed))
    }

    fn task(&self, id: u64) -> Result<Option<TaskRecord>, StoreFailure> {
        Ok(self.lock()?.tasks.get(&id).cloned())
    }

    fn renew_lease(
        &self,
        task: TaskRef,
        worker: &str,
        deadline_ms: u64,
    ) -> Result<bool, StoreFailure> {
        let mut s = self.lock()?;
        match s.tasks.get_mut(&task.task_id) {
            Some(t) if is_held(t, task, worker) => {
                t.lease_deadline_ms = t.lease_deadline_ms.max(deadline_ms);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    fn complete(
        &self,
        tasks: &[Finished],
        applied_version: u64,
    ) -> Result<Vec<Completion>, StoreFailure> {
        let mut s = self.lock()?;
        let mut out = Vec::with_capacity(tasks.len());
        for f in tasks {
            let c = completion(s.tasks.get(&f.task.task_id), f);
            if c == Completion::Completed
                && let Some(t) = s.tasks.get_mut(&f.task.task_id)
            {
                t.state = TaskState::Done;
                t.applied_version = applied_version;
                t.lease_deadline_ms = 0;
            }
            out.push(c);
        }
        Ok(out)
    }

    fn release(&self, task: TaskRef, worker: &str) -> Result<bool, StoreFailure> {
        let mut s = self.lock()?;
        match s.tasks.get_mut(&task.task_id) {
            Some(t) if is_held(t, task, worker) => {
                t.state = TaskState::Pending;
                t.lease_deadline_ms = 0;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    fn counts(&self) -> Result<TaskCounts, StoreFailure> {
        let s = self.lock()?;
        let mut c = TaskCounts::default();
        for t in s.tasks.values() {
            c.total_tokens += t.tokens;
            match t.state {
                TaskState::Pending => c.pending += 1,
                TaskState::Assigned => c.assigned += 1,
                TaskState::Done => {
                    c.done += 1;
                    c.done_tokens += t.tokens;
                }
                TaskState::Failed => c.failed += 1,
            }
        }
        Ok(c)
    }

    fn reset_after_recovery(&self, snapshot_version: u64) -> Result<u64, StoreFailure> {
        let mut s = self.lock()?;
        let mut moved = 0;
        for t in s.tasks.values_mut() {
            let lost = match t.state {
                TaskState::Assigned => true,
                TaskState::Done => t.applied_version > snapshot_version,
                _ => false,
            };
            if lost {
                t.state = TaskState::Pending;
                t.lease_deadline_ms = 0;
                t.applied_version = 0;
                moved += 1;
            }
        }
        Ok(moved)
    }

    fn sweep(&self, now: u64, policy: &SweepPolicy) -> Result<SweepReport, StoreFailure> {
        let mut s = self.lock()?;
        let mut report = SweepReport::default();
        for t in s.tasks.values_mut() {
            if t.state == TaskState::Assigned && t.lease_deadline_ms < now {
                t.lease_deadline_ms = 0;
                if t.attempts >= policy.max_attempts {
                    t.state = TaskState::Failed;
                    report.tasks_failed += 1;
                } else {
                    t.state = TaskState::Pending;
                    report.leases_expired += 1;
                }
            }
        }
        for w in s.workers.values_mut() {
            if w.state != WorkerState::Gone
                && w.last_seen_ms.saturating_add(policy.worker_timeout_ms) < now
            {
                w.state = WorkerState::Gone;
                report.workers_gone += 1;
            }
        }
        let before = s.telemetry.len();
        let cutoff = now.saturating_sub(policy.telemetry_retention_ms);
        s.telemetry.retain(|r| r.ts_ms >= cutoff);
        report.telemetry_pruned = (before - s.telemetry.len()) as u64;
        let before = s.logs.len();
        let cutoff = now.saturating_sub(policy.log_retention_ms);
        s.logs.retain(|r| r.ts_ms >= cutoff);
        let excess = s.logs.len().saturating_sub(policy.max_log_records as usize);
        s.logs.drain(..excess);
        report.logs_pruned = (before - s.logs.len()) as u64;
        Ok(report)
    }

    fn upsert_worker(&self, record: &WorkerRecord) -> Result<(), StoreFailure> {
        let mut s = self.lock()?;
        let measured = s.workers.get(&record.id).map(|w| w.measured_tps).unwrap_or(0.0);
        let mut r = record.clone();
        if r.measured_tps == 0.0 {
            r.measured_tps = measured;
        }
        s.workers.insert(r.id.clone(), r);
        Ok(())
    }

    fn worker(&self, id: &str) -> Result<Option<WorkerRecord>, StoreFailure> {
        Ok(self.lock()?.workers.get(id).cloned())
    }

    fn touch_worker(&self, id: &str, now: u64, draining: bool) -> Result<(), StoreFailure> {
        let mut s = self.lock()?;
        if let Some(w) = s.workers.get_mut(id) {
            w.last_seen_ms = now;
            w.state = if draining || w.state == WorkerState::Draining {
                WorkerState::Draining
            } else {
                WorkerState::Active
            };
        }
        Ok(())
    }

    fn record_throughput(&self, id: &str, tokens_per_sec: f64) -> Result<(), StoreFailure> {
        let mut s = self.lock()?;
        if let Some(w) = s.workers.get_mut(id)
            && tokens_per_sec.is_finite()
            && tokens_per_sec > 0.0
        {
            w.measured_tps = if w.measured_tps > 0.0 {
                THROUGHPUT_EMA * tokens_per_sec + (1.0 - THROUGHPUT_EMA) * w.measured_tps
            } else {
                tokens_per_sec
            };
        }
        Ok(())
    }

    fn worker_counts(&self) -> Result<WorkerCounts, StoreFailure> {
        let s = self.lock()?;
        let mut c = WorkerCounts::default();
        for w in s.workers.values() {
            match w.state {
                WorkerState::Active => c.active += 1,
                WorkerState::Draining => c.draining += 1,
                WorkerState::Gone => c.gone += 1,
            }
        }
        Ok(c)
    }

    fn add_client(&self, id: &str, secret_hash: &str) -> Result<ClientRecord, StoreFailure> {
        let mut s = self.lock()?;
        if s.clients.contains_key(id) {
            return Err(StoreFailure(format!("client `{id}` already exists")));
        }
        let r = ClientRecord {
            id: id.to_string(),
            secret_hash: secret_hash.to_string(),
            generation: 1,
            revoked: false,
            created_ms: now_ms(),
        };
        s.clients.insert(id.to_string(), r.clone());
        Ok(r)
    }

    fn rotate_client(&self, id: &str, secret_hash: &str) -> Result<ClientRecord, StoreFailure> {
        let mut s = self.lock()?;
        let c = s.clients.get_mut(id).ok_or_else(|| StoreFailure(format!("no client `{id}`")))?;
        c.secret_hash = secret_hash.to_string();
        c.generation += 1;
        c.revoked = false;
        Ok(c.clone())
    }

    fn revoke_client(&self, id: &str) -> Result<ClientRecord, StoreFailure> {
        let mut s = self.lock()?;
        let c = s.clients.get_mut(id).ok_or_else(|| StoreFailure(format!("no client `{id}`")))?;
        c.generation += 1;
        c.revoked = true;
        Ok(c.clone())
    }

    fn client(&self, id: &str) -> Result<Option<ClientRecord>, StoreFailure> {
        Ok(self.lock()?.clients.get(id).cloned())
    }

    fn clients(&self) -> Result<Vec<ClientRecord>, StoreFailure> {
        Ok(self.lock()?.clients.values().cloned().collect())
    }

    fn record_telemetry(&self, row: &TaskTelemetry) -> Result<(), StoreFailure> {
        self.lock()?.telemetry.push(row.clone());
        Ok(())
    }

    fn recent_telemetry(&self, limit: usize) -> Result<Vec<TaskTelemetry>, StoreFailure> {
        let s = self.lock()?;
        Ok(s.telemetry.iter().rev().take(limit).cloned().collect())
    }

    fn append_logs(&self, worker: &str, records: &[LogRecord]) -> Result<(), StoreFailure> {
        let mut s = self.lock()?;
        s.logs.extend(records.iter().map(|r| StoredLog {
            worker: worker.to_string(),
            ts_ms: r.ts_ms,
            level: r.level.clone(),
            message: r.message.clone(),
        }));
        Ok(())
    }

    fn log_count(&self) -> Result<u64, StoreFailure> {
        Ok(self.lock()?.logs.len() as u64)
    }

    fn query_logs(&self, query: &LogQuery) -> Result<LogPage, StoreFailure> {
        let s = self.lock()?;
        let matching = s.logs.iter().rev().filter(|r| r.matches(query));
        let total = matching.clone().count() as u64;
        let records =
            matching.skip(query.offset as usize).take(query.limit as usize).cloned().collect();
        Ok(LogPage { records, total })
    }

    fn list_tasks(&self, query: &TaskQuery) -> Result<TaskPage, StoreFailure> {
        let s = self.lock()?;
        let matching = s.tasks.values().filter(|t| {
            query.state.is_none_or(|st| t.state == st)
                && query.worker.as_deref().is_none_or(|w| t.worker.as_deref() == Some(w))
        });
        let total = matching.clone().count() as u64;
        let tasks =
            matching.skip(query.offset as usize).take(query.limit as usize).cloned().collect();
        Ok(TaskPage { tasks, total })
    }

    fn requeue_failed(&self) -> Result<u64, StoreFailure> {
        let mut s = self.lock()?;
        let mut moved = 0;
        for t in s.tasks.values_mut().filter(|t| t.state == TaskState::Failed) {
            t.state = TaskState::Pending;
            t.worker = None;
            t.lease_deadline_ms = 0;
            moved += 1;
        }
        Ok(moved)
    }

    fn workers(&self) -> Result<Vec<WorkerRecord>, StoreFailure> {
        let s = self.lock()?;
        let mut out: Vec<WorkerRecord> = s.workers.values().cloned().collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    fn drain_worker(&self, id: &str) -> Result<bool, StoreFailure> {
        let mut s = self.lock()?;
        Ok(match s.workers.get_mut(id) {
            Some(w) => {
                w.state = WorkerState::Draining;
                true
            }
            None => false,
        })
    }
}

/// Options of the "memory" coordinator store (none).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MemoryStoreConfig {}

impl PluginConfig for MemoryStoreConfig {
    type Component = dyn CoordinatorStore;
    fn build(self, _ctx: &BuildContext) -> Result<Box<dyn CoordinatorStore>, BuildError> {
        Ok(Box::new(MemoryStore::new()))
    }
}

bitnet_framework::register_plugin!(
    MemoryStoreConfig,
    "memory",
    "In-memory coordinator state (tests, throw-away runs; nothing survives a restart)."
);

#[cfg(test)]
mod tests {
    #[test]
    fn memory_store_passes_the_conformance_suite() {
        bitnet_framework::coordinator_store::conformance::run_store_suite(&|| {
            Box::new(super::MemoryStore::new())
        });
    }
}
