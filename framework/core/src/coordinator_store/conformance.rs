//! The conformance suite every [`CoordinatorStore`] runs in its tests:
//! `run_store_suite(&|| Box::new(MyStore::open(...)))`. The factory returns a fresh, empty
//! store each call.

use super::{
    ClaimRequest, Completion, CoordinatorStore, Finished, LogQuery, NewTask, SweepPolicy,
    TaskQuery, TaskState, TaskTelemetry, WorkerRecord, WorkerState,
};
use crate::protocol::{LogRecord, TaskRef};
use std::collections::HashSet;
use std::sync::Arc;

/// A factory of fresh, empty stores.
pub type StoreFactory<'a> = &'a dyn Fn() -> Box<dyn CoordinatorStore>;

/// Runs every check; panics with a message naming the failed property.
pub fn run_store_suite(make: StoreFactory<'_>) {
    claims_split_and_lease(make());
    split_claims_walk_the_queue_in_order(make());
    concurrent_claims_are_distinct(Arc::from(make()));
    completion_is_idempotent_per_lease(make());
    sweep_expires_leases_and_fails_after_attempts(make());
    recovery_returns_unsnapshotted_work(make());
    workers_and_throughput(make());
    clients_rotate_and_revoke(make());
    telemetry_and_logs(make());
    leases_per_worker_are_capped(make());
    a_round_completes_in_one_call(make());
    logs_are_pruned_by_age_and_count(make());
    tasks_list_by_state_and_worker_in_pages(make());
    failed_tasks_requeue(make());
    operators_list_and_drain_workers(make());
    logs_filter_by_worker_level_and_text(make());
}

/// For two handles on one database (two connections, as the coordinator's process and an
/// operator's): while `writer` adds tasks, every page `reader` lists holds as many tasks as its
/// total says, i.e. the count and the rows come from one snapshot. Bounded: 2,000 adds at most.
pub fn pages_agree_with_totals_while_another_handle_writes(
    writer: &dyn CoordinatorStore,
    reader: &dyn CoordinatorStore,
) {
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            for k in 0..2_000 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let t = NewTask { shard: "s".into(), offset: k, tokens: 1 };
                writer.add_tasks(&[t]).expect("add");
            }
        });
        let mut mismatch = None;
        for _ in 0..300 {
            let q = TaskQuery { limit: 1_000_000, ..TaskQuery::default() };
            let page = reader.list_tasks(&q).expect("list");
            if page.tasks.len() as u64 != page.total {
                mismatch = Some((page.tasks.len(), page.total));
                break;
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(mismatch, None, "a page of (tasks, total) from two snapshots");
    });
}

fn tasks_list_by_state_and_worker_in_pages(store: Box<dyn CoordinatorStore>) {
    let tasks: Vec<NewTask> =
        (0..5).map(|i| NewTask { shard: "s".into(), offset: i * 10, tokens: 10 }).collect();
    store.add_tasks(&tasks).expect("add");
    let a = claim(&*store, "wa", 10, 0).expect("claim");
    claim(&*store, "wb", 10, 0).expect("claim");
    let all = store.list_tasks(&TaskQuery { limit: 2, ..TaskQuery::default() }).expect("list");
    assert_eq!(all.total, 5);
    assert_eq!(all.tasks.len(), 2, "a page holds at most `limit`");
    assert!(all.tasks[0].id < all.tasks[1].id, "id order");
    let rest =
        store.list_tasks(&TaskQuery { offset: 4, limit: 10, ..TaskQuery::default() }).expect("p");
    assert_eq!((rest.total, rest.tasks.len()), (5, 1), "the last page");
    let pending = store
        .list_tasks(&TaskQuery {
            state: Some(TaskState::Pending),
            limit: 10,
            ..TaskQuery::default()
        })
        .expect("pending");
    assert_eq!(pending.total, 3);
    assert!(pending.tasks.iter().all(|t| t.state == TaskState::Pending));
    let of_a = store
        .list_tasks(&TaskQuery { worker: Some("wa".into()), limit: 10, ..TaskQuery::default() })
        .expect("wa");
    assert_eq!(of_a.tasks.iter().map(|t| t.id).collect::<Vec<_>>(), [a.task_id]);
}

fn failed_tasks_requeue(store: Box<dyn CoordinatorStore>) {
    store.add_tasks(&[NewTask { shard: "s".into(), offset: 0, tokens: 10 }]).expect("add");
    let policy = SweepPolicy { max_attempts: 1, ..SweepPolicy::default() };
    let t = claim(&*store, "w", 10, 0).expect("claim");
    store.sweep(5000, &policy).expect("sweep");
    assert_eq!(store.counts().expect("c").failed, 1, "one expiry at max_attempts = 1 fails it");
    assert_eq!(store.requeue_failed().expect("requeue"), 1);
    assert_eq!(store.requeue_failed().expect("requeue"), 0, "nothing failed any more");
    let c = store.counts().expect("c");
    assert_eq!((c.failed, c.pending), (0, 1));
    let again = claim(&*store, "w", 10, 6000).expect("claimable again");
    assert_eq!(again.task_id, t.task_id);
    assert!(again.lease > t.lease, "the lease id keeps counting: an old lease stays stale");
}

fn operators_list_and_drain_workers(store: Box<dyn CoordinatorStore>) {
    store.upsert_worker(&worker("b", 7)).expect("upsert");
    store.upsert_worker(&worker("a", 7)).expect("upsert");
    let ids: Vec<String> = store.workers().expect("list").into_iter().map(|w| w.id).collect();
    assert_eq!(ids, ["a", "b"], "sorted by id");
    assert_eq!(store.worker("b").expect("w"), Some(worker("b", 7)), "a worker reads back whole");
    assert_eq!(store.workers().expect("list")[0].host, "host-of-a");
    assert!(store.drain_worker("a").expect("drain"));
    assert!(!store.drain_worker("nobody").expect("drain"), "an unknown worker is reported");
    let a = store.worker("a").expect("w").expect("w");
    assert_eq!(a.state, WorkerState::Draining);
    assert_eq!(a.last_seen_ms, 7, "a drain is not a sign of life");
    store.touch_worker("a", 8, false).expect("touch");
    assert_eq!(store.worker("a").expect("w").expect("w").state, WorkerState::Draining, "sticky");
}

fn logs_filter_by_worker_level_and_text(store: Box<dyn CoordinatorStore>) {
    let rec = |ts: u64, level: &str, message: &str| LogRecord {
        ts_ms: ts,
        level: level.into(),
        message: message.into(),
    };
    store
        .append_logs("w1", &[rec(1, "info", "task 1 done"), rec(2, "warn", "Slow DISK")])
        .expect("logs");
    store
        .append_logs("w2", &[rec(3, "info", "task 2 done"), rec(4, "error", "50% lost")])
        .expect("logs");
    let q = |worker: Option<&str>, level: Option<&str>, text: Option<&str>| LogQuery {
        worker: worker.map(Into::into),
        level: level.map(Into::into),
        text: text.map(Into::into),
        offset: 0,
        limit: 10,
    };
    let all = store.query_logs(&q(None, None, None)).expect("all");
    assert_eq!(all.total, 4);
    assert_eq!(
        all.records.iter().map(|r| r.ts_ms).collect::<Vec<_>>(),
        [4, 3, 2, 1],
        "newest first"
    );
    let w1 = store.query_logs(&q(Some("w1"), None, None)).expect("w1");
    assert!(w1.total == 2 && w1.records.iter().all(|r| r.worker == "w1"));
    let warn = store.query_logs(&q(None, Some("WARN"), None)).expect("warn");
    assert_eq!(warn.records.iter().map(|r| r.message.as_str()).collect::<Vec<_>>(), ["Slow DISK"]);
    let disk = store.query_logs(&q(None, None, Some("disk"))).expect("text");
    assert_eq!(disk.total, 1, "text matches case-insensitively");
    let pct = store.query_logs(&q(None, None, Some("50%"))).expect("text");
    assert_eq!(pct.total, 1, "no wildcard characters: `%` is literal");
    let under = store.query_logs(&q(None, None, Some("k_1"))).expect("text");
    assert_eq!(under.total, 0, "`_` is literal");
    let done_w2 = store.query_logs(&q(Some("w2"), Some("info"), Some("done"))).expect("and");
    assert_eq!(done_w2.total, 1, "filters combine");
    let page =
        store.query_logs(&LogQuery { offset: 1, limit: 2, ..q(None, None, None) }).expect("p");
    assert_eq!(
        (page.total, page.records.iter().map(|r| r.ts_ms).collect::<Vec<_>>()),
        (4, vec![3, 2])
    );
}

fn complete_one(store: &dyn CoordinatorStore, t: TaskRef, worker: &str, v: u64) -> Completion {
    let done = store.complete(&[Finished { task: t, worker: worker.into() }], v).expect("complete");
    assert_eq!(done.len(), 1, "one outcome per task");
    done.into_iter().next().expect("one outcome")
}

fn claim(store: &dyn CoordinatorStore, worker: &str, max: u64, now: u64) -> Option<TaskRef> {
    let req = ClaimRequest {
        worker: worker.into(),
        now_ms: now,
        max_tokens: max,
        granularity: 10,
        lease_ms: 1000,
        max_leases: 0,
    };
    store.claim(&req).expect("claim").map(|t| TaskRef { task_id: t.id, lease: t.attempts })
}

fn worker(id: &str, now: u64) -> WorkerRecord {
    WorkerRecord {
        id: id.into(),
        state: WorkerState::Active,
        threads: 1,
        calibrated_tps: 100.0,
        measured_tps: 0.0,
        last_seen_ms: now,
        host: format!("host-of-{id}"),
    }
}

fn claims_split_and_lease(store: Box<dyn CoordinatorStore>) {
    let ids = store
        .add_tasks(&[NewTask { shard: "s0".into(), offset: 0, tokens: 95 }])
        .expect("add tasks");
    assert_eq!(ids.len(), 1);
    // 35 rounds down to 30: a whole number of granules; the rest stays pending.
    let a = claim(&*store, "w1", 35, 0).expect("first claim");
    let t = store.task(a.task_id).expect("task").expect("exists");
    assert_eq!((t.offset, t.tokens, t.state), (0, 30, TaskState::Assigned), "split claim");
    assert_eq!(t.worker.as_deref(), Some("w1"));
    assert_eq!(t.lease_deadline_ms, 1000);
    let b = claim(&*store, "w2", 1000, 0).expect("rest is claimable");
    let t = store.task(b.task_id).expect("task").expect("exists");
    assert_eq!((t.offset, t.tokens), (30, 65), "remainder keeps its offset");
    assert_ne!(a.task_id, b.task_id, "the split head and the rest are different tasks");
    assert!(claim(&*store, "w3", 1000, 0).is_none(), "empty queue");
    let c = store.counts().expect("counts");
    assert_eq!((c.pending, c.assigned, c.total_tokens), (0, 2, 95));
    assert!(store.renew_lease(a, "w1", 5000).expect("renew"), "holder renews");
    assert!(!store.renew_lease(a, "w2", 9000).expect("renew"), "another worker cannot");
    assert_eq!(store.task(a.task_id).expect("t").expect("t").lease_deadline_ms, 5000);
    assert!(store.release(a, "w1").expect("release"), "holder releases");
    assert_eq!(store.task(a.task_id).expect("t").expect("t").state, TaskState::Pending);
    let again = claim(&*store, "w2", 1000, 0).expect("released task is claimable");
    assert_eq!((again.task_id, again.lease), (a.task_id, 2), "lease id is the attempt count");
}

/// Seeded like a run whose budget is one epoch and a bit of two shards: shard `a`, shard `b`,
/// then `a` again. Split claims must take `a` to its end, then `b`, then the second epoch,
/// never one slice of each in turn (which would train the second epoch's slices right next to
/// their first pass).
fn split_claims_walk_the_queue_in_order(store: Box<dyn CoordinatorStore>) {
    store
        .add_tasks(&[
            NewTask { shard: "a".into(), offset: 0, tokens: 30 },
            NewTask { shard: "b".into(), offset: 0, tokens: 20 },
            NewTask { shard: "a".into(), offset: 0, tokens: 10 },
        ])
        .expect("add tasks");
    let mut order = Vec::new();
    let mut ids = std::collections::HashSet::new();
    while let Some(r) = claim(&*store, "w", 10, 0) {
        let t = store.task(r.task_id).expect("task").expect("exists");
        assert!(ids.insert(t.id), "task id {} claimed twice", t.id);
        order.push((t.shard, t.offset, t.tokens));
        assert!(order.len() <= 6, "the queue holds six slices of 10");
    }
    let want = [("a", 0), ("a", 10), ("a", 20), ("b", 0), ("b", 10), ("a", 0)];
    let want: Vec<(String, u64, u64)> = want.iter().map(|&(s, o)| (s.to_string(), o, 10)).collect();
    assert_eq!(order, want, "claims follow the queue: each split's rest comes next");
    let c = store.counts().expect("counts");
    assert_eq!((c.pending, c.assigned, c.total_tokens), (0, 6, 60));
}

fn concurrent_claims_are_distinct(store: Arc<dyn CoordinatorStore>) {
    let tasks: Vec<NewTask> =
        (0..40).map(|i| NewTask { shard: "s".into(), offset: i * 10, tokens: 10 }).collect();
    store.add_tasks(&tasks).expect("add");
    let handles: Vec<_> = (0..4)
        .map(|w| {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                let mut got = Vec::new();
                while let Some(t) = claim(&*store, &format!("w{w}"), 10, 0) {
                    got.push(t.task_id);
                }
                got
            })
        })
        .collect();
    let mut seen = HashSet::new();
    for h in handles {
        for id in h.join().expect("claimer thread") {
            assert!(seen.insert(id), "task {id} claimed twice");
        }
    }
    assert_eq!(seen.len(), 40, "every task claimed exactly once");
}

fn completion_is_idempotent_per_lease(store: Box<dyn CoordinatorStore>) {
    store.add_tasks(&[NewTask { shard: "s".into(), offset: 0, tokens: 10 }]).expect("add");
    let t = claim(&*store, "w1", 10, 0).expect("claim");
    assert!(
        matches!(complete_one(&*store, t, "w2", 1), Completion::Refused(_)),
        "another worker cannot complete"
    );
    let stale = TaskRef { task_id: t.task_id, lease: t.lease + 1 };
    assert!(matches!(complete_one(&*store, stale, "w1", 1), Completion::Refused(_)));
    assert_eq!(complete_one(&*store, t, "w1", 7), Completion::Completed);
    assert_eq!(
        complete_one(&*store, t, "w1", 8),
        Completion::AlreadyDone { applied_version: 7 },
        "a retried upload changes nothing"
    );
    let rec = store.task(t.task_id).expect("t").expect("t");
    assert_eq!((rec.state, rec.applied_version), (TaskState::Done, 7));
    assert!(!store.release(t, "w1").expect("release"), "done tasks are not released");
    assert!(matches!(
        complete_one(&*store, TaskRef { task_id: 999, lease: 1 }, "w1", 1),
        Completion::Refused(_)
    ));
}

fn sweep_expires_leases_and_fails_after_attempts(store: Box<dyn CoordinatorStore>) {
    store.add_tasks(&[NewTask { shard: "s".into(), offset: 0, tokens: 10 }]).expect("add");
    let policy = SweepPolicy {
        worker_timeout_ms: 10_000,
        telemetry_retention_ms: 1_000,
        max_attempts: 2,
        ..SweepPolicy::default()
    };
    let t = claim(&*store, "w1", 10, 0).expect("claim");
    let r = store.sweep(500, &policy).expect("sweep");
    assert_eq!(r.leases_expired, 0, "lease still valid at 500");
    let r = store.sweep(1001, &policy).expect("sweep");
    assert_eq!(r.leases_expired, 1);
    assert_eq!(store.task(t.task_id).expect("t").expect("t").state, TaskState::Pending);
    assert!(matches!(complete_one(&*store, t, "w1", 1), Completion::Refused(_)));
    let t2 = claim(&*store, "w2", 10, 2000).expect("re-leased");
    assert_eq!(t2.lease, 2);
    let r = store.sweep(4000, &policy).expect("sweep");
    assert_eq!(r.tasks_failed, 1, "second expiry at max_attempts = 2 fails the task");
    assert_eq!(store.counts().expect("c").failed, 1);
}

fn recovery_returns_unsnapshotted_work(store: Box<dyn CoordinatorStore>) {
    let tasks: Vec<NewTask> =
        (0..4).map(|i| NewTask { shard: "s".into(), offset: i * 10, tokens: 10 }).collect();
    store.add_tasks(&tasks).expect("add");
    for v in 1..=3 {
        let t = claim(&*store, "w", 10, 0).expect("claim");
        assert_eq!(complete_one(&*store, t, "w", v), Completion::Completed);
    }
    claim(&*store, "w", 10, 0).expect("fourth is in flight");
    let moved = store.reset_after_recovery(2).expect("reset");
    assert_eq!(moved, 2, "the update of version 3 and the in-flight task return");
    let c = store.counts().expect("counts");
    assert_eq!((c.done, c.pending, c.assigned), (2, 2, 0));
}

fn workers_and_throughput(store: Box<dyn CoordinatorStore>) {
    store.upsert_worker(&worker("a", 0)).expect("upsert");
    store.upsert_worker(&worker("b", 0)).expect("upsert");
    assert_eq!(store.worker("a").expect("w").expect("w").throughput(), 100.0, "calibrated");
    store.record_throughput("a", 200.0).expect("tps");
    assert_eq!(store.worker("a").expect("w").expect("w").throughput(), 200.0, "measured");
    store.record_throughput("a", 100.0).expect("tps");
    let tps = store.worker("a").expect("w").expect("w").measured_tps;
    assert!(tps > 100.0 && tps < 200.0, "moving average, got {tps}");
    store.upsert_worker(&worker("a", 0)).expect("re-register keeps the measurement");
    assert!(store.worker("a").expect("w").expect("w").measured_tps > 100.0);
    store.touch_worker("a", 50_000, false).expect("touch");
    store.touch_worker("b", 1_000, true).expect("touch");
    assert_eq!(store.worker("b").expect("w").expect("w").state, WorkerState::Draining);
    let policy = SweepPolicy { worker_timeout_ms: 10_000, ..SweepPolicy::default() };
    let r = store.sweep(20_000, &policy).expect("sweep");
    assert_eq!(r.workers_gone, 1, "b was silent for 19 s");
    let c = store.worker_counts().expect("counts");
    assert_eq!((c.active, c.draining, c.gone), (1, 0, 1));
    assert!(store.worker("zz").expect("w").is_none());
}

fn clients_rotate_and_revoke(store: Box<dyn CoordinatorStore>) {
    let c = store.add_client("w1", "hash-1").expect("add");
    assert_eq!((c.generation, c.revoked), (1, false));
    assert!(store.add_client("w1", "x").is_err(), "duplicate id refused");
    let c = store.rotate_client("w1", "hash-2").expect("rotate");
    assert_eq!((c.generation, c.secret_hash.as_str()), (2, "hash-2"));
    let c = store.revoke_client("w1").expect("revoke");
    assert_eq!((c.generation, c.revoked), (3, true));
    assert_eq!(store.client("w1").expect("c"), Some(c));
    assert!(store.revoke_client("nobody").is_err());
    store.add_client("w0", "h").expect("add");
    let ids: Vec<String> = store.clients().expect("list").into_iter().map(|c| c.id).collect();
    assert_eq!(ids, ["w0", "w1"], "sorted by id");
}

fn telemetry_and_logs(store: Box<dyn CoordinatorStore>) {
    for i in 0..3u64 {
        store
            .record_telemetry(&TaskTelemetry {
                task_id: i,
                worker: "w".into(),
                loss: 1.0 + i as f32,
                tokens: 10,
                tokens_per_sec: 5.0,
                staleness: 0,
                accepted: true,
                version: i + 1,
                ts_ms: i * 1000,
            })
            .expect("telemetry");
    }
    let recent = store.recent_telemetry(2).expect("recent");
    assert_eq!(recent.iter().map(|r| r.task_id).collect::<Vec<_>>(), [2, 1], "newest first");
    let policy = SweepPolicy { telemetry_retention_ms: 2500, ..SweepPolicy::default() };
    let r = store.sweep(3000, &policy).expect("sweep");
    assert_eq!(r.telemetry_pruned, 1, "only the row older than 2.5 s is pruned");
    let rec = LogRecord { ts_ms: 1, level: "info".into(), message: "hello".into() };
    store.append_logs("w", &[rec.clone(), rec]).expect("logs");
    assert_eq!(store.log_count().expect("count"), 2);
}

fn leases_per_worker_are_capped(store: Box<dyn CoordinatorStore>) {
    let tasks: Vec<NewTask> =
        (0..4).map(|i| NewTask { shard: "s".into(), offset: i * 10, tokens: 10 }).collect();
    store.add_tasks(&tasks).expect("add");
    let req = |worker: &str| ClaimRequest {
        worker: worker.into(),
        now_ms: 0,
        max_tokens: 10,
        granularity: 10,
        lease_ms: 1000,
        max_leases: 2,
    };
    let a = store.claim(&req("greedy")).expect("claim").expect("first lease");
    store.claim(&req("greedy")).expect("claim").expect("second lease");
    assert!(store.claim(&req("greedy")).expect("claim").is_none(), "a third lease is refused");
    assert!(store.claim(&req("other")).expect("claim").is_some(), "the cap is per worker");
    let a = TaskRef { task_id: a.id, lease: a.attempts };
    assert_eq!(complete_one(&*store, a, "greedy", 1), Completion::Completed);
    assert!(store.claim(&req("greedy")).expect("claim").is_some(), "a finished lease frees a slot");
}

fn a_round_completes_in_one_call(store: Box<dyn CoordinatorStore>) {
    let tasks: Vec<NewTask> =
        (0..3).map(|i| NewTask { shard: "s".into(), offset: i * 10, tokens: 10 }).collect();
    store.add_tasks(&tasks).expect("add");
    let a = claim(&*store, "w1", 10, 0).expect("claim");
    let b = claim(&*store, "w2", 10, 0).expect("claim");
    let c = claim(&*store, "w3", 10, 0).expect("claim");
    let round = [
        Finished { task: a, worker: "w1".into() },
        Finished { task: b, worker: "w1".into() },
        Finished { task: c, worker: "w3".into() },
    ];
    let out = store.complete(&round, 4).expect("complete");
    assert_eq!(out[0], Completion::Completed);
    assert!(matches!(out[1], Completion::Refused(_)), "b is w2's, not w1's: {:?}", out[1]);
    assert_eq!(out[2], Completion::Completed);
    let again = store.complete(&round[..1], 5).expect("retry");
    assert_eq!(again, [Completion::AlreadyDone { applied_version: 4 }]);
    let c = store.counts().expect("counts");
    assert_eq!((c.done, c.assigned), (2, 1));
}

fn logs_are_pruned_by_age_and_count(store: Box<dyn CoordinatorStore>) {
    let rec = |ts_ms| LogRecord { ts_ms, level: "info".into(), message: "m".into() };
    let batch: Vec<LogRecord> = (0..10).map(rec).collect();
    store.append_logs("w", &batch).expect("logs");
    let policy =
        SweepPolicy { log_retention_ms: 1000, max_log_records: 4, ..SweepPolicy::default() };
    // At 1003 the records stamped 0..=2 are older than 1 s; of the 7 left the 4 newest stay.
    let r = store.sweep(1003, &policy).expect("sweep");
    assert_eq!(r.logs_pruned, 6);
    assert_eq!(store.log_count().expect("count"), 4);
}
