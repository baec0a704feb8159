//! A coordinator that trusts no worker, and commits a round's step and its tasks together:
//! forged hand-backs, token counts that do not match the task, absurd throughput and update
//! magnitudes, greedy lease collection, log floods, and a store that fails mid-round.

use crate::distributed::{encode_update, register, register_at, upload_of};
use bitnet_framework::coordinator_store::faults::{FaultyStore, WriteOp};
use bitnet_framework::coordinator_store::{CoordinatorStore, TaskState};
use bitnet_framework::protocol::{
    ApiError, CoordinatorApi, Heartbeat, LogRecord, TaskRef, UpdateUpload, now_ms,
};
use bitnet_runtime::run::assemble::{build_coordinator, build_store};
use bitnet_runtime::run::service::seed_if_empty;
use bitnet_tests::dist;
use std::sync::Arc;

fn task_ref(t: &bitnet_framework::protocol::TaskSpec) -> TaskRef {
    TaskRef { task_id: t.task_id, lease: t.lease }
}

#[test]
fn workers_cannot_lie_about_tokens_hand_back_others_tasks_or_hoard_leases() {
    let dir = bitnet_tests::temp_dir();
    let registry = dist::registry();
    let config = dist::tiny_config(
        dir.path(),
        &[
            "codec.type=fp32",
            "coordinator.max_leases_per_worker=2",
            "coordinator.max_update_abs=100",
        ],
    );
    let c = dist::start_coordinator(&config, &registry, dist::pattern_corpus(1, 640), 0, 64);
    register(&c, &config, &registry, "a");
    register(&c, &config, &registry, "b");
    let ta = c.claim("a").expect("claim").expect("a's task");
    let tb = c.claim("b").expect("claim").expect("b's task");
    let n = c.layout().total_params();
    let good = encode_update(&config, &registry, &vec![1e-3; n]);

    // b cannot hand back a's task (which would drop it from the round).
    let forged = Heartbeat {
        task: Some(task_ref(&ta)),
        progress_tokens: 0,
        hand_back: true,
        draining: false,
    };
    let err = c.heartbeat("b", forged).expect_err("forged hand-back");
    assert!(matches!(err, ApiError::Forbidden(_)), "{err}");
    assert_eq!(c.store().task(ta.task_id).expect("t").expect("t").state, TaskState::Assigned);

    // The token count of an upload is the task's, not whatever the worker says.
    for tokens in [0, ta.tokens - 1, u64::MAX] {
        let lie = UpdateUpload { tokens, ..upload_of(&ta, good.clone()) };
        let err = c.upload("a", lie).expect_err("token count mismatch");
        assert!(matches!(err, ApiError::Invalid(ref m) if m.contains("tokens")), "{tokens}: {err}");
    }
    // A finite but absurd value (an int8 scale of 2.6e36 decodes to such values).
    let absurd = encode_update(&config, &registry, &vec![2.6e36; n]);
    let err = c.upload("a", upload_of(&ta, absurd)).expect_err("absurd magnitude");
    assert!(matches!(err, ApiError::Invalid(ref m) if m.contains("max_update_abs")), "{err}");
    assert_eq!(c.version(), 0, "nothing applied");

    // At most two leases per worker.
    let second = c.claim("a").expect("claim").expect("a's second lease");
    assert!(c.claim("a").expect("claim").is_none(), "a third lease is refused");

    // The honest uploads still go through, and the round holds both a's and b's tasks.
    c.upload("a", upload_of(&ta, good.clone())).expect("a's honest upload");
    c.upload("a", upload_of(&second, good.clone())).expect("a's second upload");
    let receipt = c.upload("b", upload_of(&tb, good)).expect("b's upload");
    assert_eq!(receipt.applied_version, Some(1), "b's update closes the round");
    let status = c.status().expect("status");
    assert_eq!(status.tasks.done_tokens, ta.tokens + second.tokens + tb.tokens);
    c.shutdown();
}

#[test]
fn absurd_throughput_is_clamped_and_leases_are_bounded() {
    let dir = bitnet_tests::temp_dir();
    let registry = dist::registry();
    let config = dist::tiny_config(
        dir.path(),
        &[
            "coordinator.max_worker_tokens_per_sec=5000",
            "coordinator.max_lease_secs=120",
            "coordinator.task_seconds=1",
        ],
    );
    let c =
        dist::start_coordinator(&config, &registry, dist::pattern_corpus(1, 64 * 200), 0, 1 << 20);
    register_at(&c, &config, &registry, "fast", 1e30);
    assert_eq!(c.store().worker("fast").expect("w").expect("w").calibrated_tps, 5000.0);
    let big = c.claim("fast").expect("claim").expect("task");
    assert!(big.tokens <= 5000, "a task sized to a clamped 5000 tokens/s: {}", big.tokens);
    register_at(&c, &config, &registry, "slow", 1e-9);
    let slow = c.claim("slow").expect("claim").expect("task");
    let lease_secs = (slow.lease_deadline_ms.saturating_sub(now_ms())) as f64 / 1000.0;
    assert!(lease_secs <= 121.0, "a crawl gets at most max_lease_secs, got {lease_secs} s");
    c.shutdown();
}

#[test]
fn log_floods_are_refused_and_old_logs_pruned() {
    let dir = bitnet_tests::temp_dir();
    let registry = dist::registry();
    let config = dist::tiny_config(
        dir.path(),
        &[
            "coordinator.log_records_per_minute=50",
            "coordinator.max_log_records=30",
            "coordinator.sweep_every_secs=3600",
        ],
    );
    let c = dist::start_coordinator(&config, &registry, dist::pattern_corpus(1, 256), 0, 64);
    register(&c, &config, &registry, "a");
    let future = now_ms() + 10 * 365 * 24 * 3600 * 1000;
    let batch: Vec<LogRecord> = (0..40)
        .map(|i| LogRecord { ts_ms: future, level: "info".into(), message: format!("line {i}") })
        .collect();
    c.logs("a", batch.clone()).expect("within the quota");
    let err = c.logs("a", batch).expect_err("past the quota");
    assert!(matches!(err, ApiError::TooMany { retry_after_secs: 1..=60, .. }), "{err}");
    assert_eq!(c.store().log_count().expect("count"), 40);
    c.maintain();
    assert_eq!(c.store().log_count().expect("count"), 30, "pruned to max_log_records");
    c.shutdown();
}

#[test]
fn a_store_failing_mid_round_loses_nothing_and_applies_nothing_twice() {
    let dir = bitnet_tests::temp_dir();
    let registry = dist::registry();
    // No maintenance thread: this test runs every maintenance pass itself.
    let config =
        dist::tiny_config(dir.path(), &["codec.type=fp32", "coordinator.sweep_every_secs=3600"]);
    let faulty = Arc::new(FaultyStore::new(build_store(&config, &registry).expect("store")));
    let store: Arc<dyn CoordinatorStore> = Arc::clone(&faulty) as Arc<dyn CoordinatorStore>;
    let corpus: Arc<dyn bitnet_runtime::coordinator::Corpus> =
        Arc::new(dist::pattern_corpus(1, 256));
    seed_if_empty(store.as_ref(), corpus.as_ref(), 0, 64).expect("seed");
    let c = build_coordinator(&config, &registry, store, corpus).expect("coordinator");
    register(&c, &config, &registry, "a");
    let t = c.claim("a").expect("claim").expect("task");
    let (v0, p0) = c.params().expect("params");
    let update = encode_update(&config, &registry, &vec![1e-2; p0.len()]);

    // The disk is full when the round's completion is written: nothing may change.
    faulty.fail(WriteOp::Complete, 0, 3);
    let err = c.upload("a", upload_of(&t, update.clone())).expect_err("the commit fails");
    assert!(matches!(err, ApiError::Unavailable(_)) && err.is_retryable(), "{err}");
    assert_eq!(c.params().expect("params"), (v0, p0.clone()), "no step without the commit");
    assert_eq!(c.store().task(t.task_id).expect("t").expect("t").state, TaskState::Assigned);
    // The worker retries; its update already waits in the open round and is not added twice.
    let again = c.upload("a", upload_of(&t, update.clone())).expect("retried upload");
    assert!(again.accepted && again.applied_version.is_none(), "{again:?}");
    c.maintain(); // the second injected failure: still nothing applied
    assert_eq!(c.version(), v0);
    c.maintain(); // the third
    assert_eq!(c.version(), v0);
    assert_eq!(faulty.injected(), 3);
    c.maintain(); // the disk has room again: the round commits, once
    assert_eq!(c.version(), v0 + 1);
    let rec = c.store().task(t.task_id).expect("t").expect("t");
    assert_eq!((rec.state, rec.applied_version), (TaskState::Done, v0 + 1));
    let dup = c.upload("a", upload_of(&t, update)).expect("a late duplicate");
    assert!(dup.accepted && dup.applied_version == Some(v0 + 1), "{dup:?}");
    c.maintain();
    assert_eq!(c.version(), v0 + 1, "the duplicate is not applied again");
    assert_eq!(c.status().expect("status").tasks.done_tokens, t.tokens);
    c.shutdown();
}
