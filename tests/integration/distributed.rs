//! The distributed runtime in one process: a coordinator served over the "in-process"
//! transport and worker threads running the real kernel on the tiny preset.

use bitnet_framework::coordinator_store::TaskState;
use bitnet_framework::protocol::{
    ApiError, CoordinatorApi, Heartbeat, Registration, TaskRef, TaskSpec, UpdateUpload,
};
use bitnet_framework::registry::Registry;
use bitnet_framework::transport::{Credentials, ServerHandle};
use bitnet_runtime::config::RunConfig;
use bitnet_runtime::coordinator::Coordinator;
use bitnet_runtime::run::assemble::{
    build_coordinator, build_store, build_transport, build_worker_parts, check_distributed,
    kernel_and_context,
};
use bitnet_runtime::worker::{PackedTask, Worker, WorkerReport, windows};
use bitnet_tests::dist;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

fn serve(config: &RunConfig, registry: &Registry, c: &Arc<Coordinator>) -> Box<dyn ServerHandle> {
    let api: Arc<dyn CoordinatorApi> = Arc::clone(c) as Arc<dyn CoordinatorApi>;
    build_transport(config, registry)
        .expect("transport")
        .serve(bitnet_runtime::auth::serve_context(api, Arc::clone(c.store())))
        .expect("serve")
}

fn spawn_worker(
    config: &RunConfig,
    registry: &Registry,
    endpoint: &str,
    creds: Credentials,
) -> std::thread::JoinHandle<WorkerReport> {
    let (config, registry, endpoint) = (config.clone(), registry.clone(), endpoint.to_string());
    std::thread::spawn(move || {
        let client = build_transport(&config, &registry)
            .expect("transport")
            .connect(&endpoint, creds)
            .expect("connect");
        let parts = build_worker_parts(&config, &registry, client).expect("worker parts");
        let stop = Arc::new(AtomicBool::new(false));
        let mut w = Worker::new(parts, config.worker.clone(), 1, config.train.seed, stop);
        w.run(config.train.batch_size, config.model.seq_len).expect("worker runs")
    })
}

/// Mean loss of `params` over the first `n` tokens of `tokens`.
fn loss_on(config: &RunConfig, registry: &Registry, params: &[f32], tokens: &[u32]) -> f32 {
    let (mut kernel, _) = kernel_and_context(config, registry).expect("kernel");
    let mut sum = 0.0;
    let mut n = 0;
    for b in windows(tokens, config.model.seq_len, config.train.batch_size) {
        sum += kernel.forward_loss(params, &b.view()).expect("loss");
        n += 1;
    }
    sum / n as f32
}

/// Mean loss per counted target of `params` over every example of `tokens`, packed.
fn packed_loss(config: &RunConfig, registry: &Registry, params: &[f32], tokens: &[u32]) -> f32 {
    let (mut kernel, _) = kernel_and_context(config, registry).expect("kernel");
    let (seq, batch) = (config.model.seq_len, config.train.batch_size);
    let packed =
        PackedTask::new(tokens, 0, tokens.len(), dist::EXAMPLE_PACKING, seq, batch, (0, 0));
    let (mut sum, mut n) = (0.0f64, 0usize);
    for b in packed {
        let c = b.view().counted_targets();
        sum += f64::from(kernel.forward_loss(params, &b.view()).expect("loss")) * c as f64;
        n += c;
    }
    (sum / n as f64) as f32
}

/// The upload of `payload` for `task`, computed on the task's weights over all its tokens.
pub(crate) fn upload_of(task: &TaskSpec, payload: Vec<u8>) -> UpdateUpload {
    UpdateUpload {
        task: TaskRef { task_id: task.task_id, lease: task.lease },
        base_version: task.weights_version,
        loss: 1.0,
        tokens: task.tokens,
        seconds: 0.1,
        payload,
    }
}

fn all_tasks(c: &Coordinator) -> Vec<bitnet_framework::coordinator_store::TaskRecord> {
    crate::dist_process::tasks(c.store().as_ref())
}

/// Every version 1..=current was made by one round of one or more Done tasks, and every
/// accepted update is in one.
fn assert_one_version_per_round(c: &Coordinator, accepted: u64) {
    let tasks = all_tasks(c);
    let version = c.version();
    let applied: std::collections::BTreeSet<u64> =
        tasks.iter().filter(|t| t.state == TaskState::Done).map(|t| t.applied_version).collect();
    assert_eq!(applied, (1..=version).collect(), "versions come from rounds of Done tasks");
    let done = tasks.iter().filter(|t| t.state == TaskState::Done).count() as u64;
    assert_eq!(done, accepted, "every accepted update is in a round");
    assert!(version <= accepted);
}

#[test]
fn two_workers_train_until_every_task_is_done_and_loss_falls() {
    let dir = bitnet_tests::temp_dir();
    let registry = dist::registry();
    let config = dist::tiny_config(dir.path(), &[]);
    let c = dist::start_coordinator(&config, &registry, dist::pattern_corpus(2, 640), 0, 640);
    let (_, initial) = c.params().expect("params");
    let server = serve(&config, &registry, &c);
    let a = spawn_worker(&config, &registry, &server.endpoint(), dist::add_client(&c, "w1"));
    let b = spawn_worker(&config, &registry, &server.endpoint(), dist::add_client(&c, "w2"));
    let (ra, rb) = (a.join().expect("w1"), b.join().expect("w2"));
    let status = c.status().expect("status");
    assert!(status.tasks.finished(), "{status:?}");
    assert_eq!(status.tasks.failed, 0);
    assert_eq!(status.tasks.done_tokens, 1280, "the epoch is covered once");
    assert_one_version_per_round(&c, ra.tasks_accepted + rb.tasks_accepted);
    assert!(c.store().log_count().expect("logs") > 0, "workers shipped logs");
    let (_, trained) = c.params().expect("params");
    let data = dist::pattern_tokens(640, 1);
    let (before, after) = (
        loss_on(&config, &registry, &initial, &data),
        loss_on(&config, &registry, &trained, &data),
    );
    assert!(after < before - 0.2, "loss fell: {before} -> {after}");
    c.shutdown();
    assert_eq!(c.snapshot_version(), status.weight_version, "the final snapshot is written");
    let kept = c.snapshot_versions().expect("snapshots");
    // 20 one-batch tasks, at most one per worker in each round: at least 10 versions, so at
    // least 4 snapshots (0, 4, 8 and the final one) were written.
    assert!(status.weight_version >= 10, "enough versions to prune: {}", status.weight_version);
    assert_eq!(kept.len(), 3, "all but the newest 3 snapshots are pruned: {kept:?}");
    assert_eq!(kept.last(), Some(&status.weight_version));
    server.shutdown();
}

/// A worker over its coordinator's log quota keeps training: shipping logs is put off until the
/// quota's Retry-After, never waited for (a chaos run found workers idle 49 s at a time).
#[test]
fn a_worker_over_its_log_quota_defers_its_logs_and_keeps_training() {
    let dir = bitnet_tests::temp_dir();
    let registry = dist::registry();
    let config = dist::tiny_config(
        dir.path(),
        &["coordinator.log_records_per_minute=2", "worker.give_up_after_secs=600"],
    );
    let c = dist::start_coordinator(&config, &registry, dist::pattern_corpus(1, 640), 0, 640);
    let server = serve(&config, &registry, &c);
    let report = spawn_worker(&config, &registry, &server.endpoint(), dist::add_client(&c, "w1"))
        .join()
        .expect("w1");
    let status = c.status().expect("status");
    assert!(status.tasks.finished(), "{status:?}");
    assert_eq!(report.tasks_accepted, status.tasks.done, "one worker did every task");
    assert!(report.logs_deferred > 0, "the quota was met and logs put off: {report:?}");
    assert!(c.store().log_count().expect("logs") <= 2, "the quota held");
    c.shutdown();
    server.shutdown();
}

/// A coordinator that stops normally writes a final snapshot of what it applied since the last
/// one; an abandoned one (a replica that lost the leader lease) writes nothing more.
#[test]
fn an_abandoned_coordinator_writes_no_final_snapshot() {
    for abandon in [false, true] {
        let dir = bitnet_tests::temp_dir();
        let registry = dist::registry();
        let config = dist::tiny_config(
            dir.path(),
            &["coordinator.snapshot_every_updates=1000", "coordinator.snapshot_every_secs=0"],
        );
        let c = dist::start_coordinator(&config, &registry, dist::pattern_corpus(1, 256), 0, 256);
        let server = serve(&config, &registry, &c);
        let w = dist::add_client(&c, "w1");
        let report = spawn_worker(&config, &registry, &server.endpoint(), w).join().expect("w1");
        assert!(report.tasks_accepted > 0, "{report:?}");
        server.shutdown();
        let before = c.snapshot_versions().expect("versions");
        if abandon {
            c.abandon();
        } else {
            c.shutdown();
        }
        let after = c.snapshot_versions().expect("versions");
        if abandon {
            assert_eq!(after, before, "an abandoned coordinator wrote a snapshot");
        } else {
            assert_eq!(
                after.len(),
                before.len() + 1,
                "the final snapshot: {before:?} -> {after:?}"
            );
            assert_eq!(after.last().copied(), Some(c.version()), "of the last version");
        }
    }
}

#[test]
fn diloco_update_lowers_the_loss_on_its_data() {
    let dir = bitnet_tests::temp_dir();
    let registry = dist::registry();
    let mut config = dist::tiny_config(dir.path(), &["train.mode=diloco", "codec.type=fp32"]);
    // The outer optimizer of the issue: Nesterov SGD, lr 0.7, momentum 0.9.
    config.optimizer = toml::from_str("type = \"sgd\"\nlr = 0.7\nmomentum = 0.9\nnesterov = true")
        .expect("sgd spec");
    // One task of H = 4 inner steps of 4 x 16 tokens.
    let c = dist::start_coordinator(&config, &registry, dist::pattern_corpus(1, 256), 256, 256);
    let (_, before_params) = c.params().expect("params");
    let server = serve(&config, &registry, &c);
    let report = spawn_worker(&config, &registry, &server.endpoint(), dist::add_client(&c, "w"))
        .join()
        .expect("worker");
    assert_eq!(report.tasks_accepted, 1);
    let (version, after_params) = c.params().expect("params");
    assert_eq!(version, 1);
    let data = dist::pattern_tokens(257, 1);
    let before = loss_on(&config, &registry, &before_params, &data);
    let after = loss_on(&config, &registry, &after_params, &data);
    assert!(after < before, "the accepted pseudo-gradient lowers the loss: {before} -> {after}");
    c.shutdown();
}

pub(crate) fn register(c: &Coordinator, config: &RunConfig, registry: &Registry, id: &str) {
    register_at(c, config, registry, id, 1000.0);
}

/// Registers `id` calibrated at `tokens_per_sec`.
pub(crate) fn register_at(
    c: &Coordinator,
    config: &RunConfig,
    registry: &Registry,
    id: &str,
    tokens_per_sec: f64,
) {
    let (kernel, _) = kernel_and_context(config, registry).expect("kernel");
    dist::add_client(c, id);
    c.register(
        id,
        Registration {
            threads: 1,
            tokens_per_sec,
            framework_version: "test".into(),
            layout_fingerprint: kernel.layout().fingerprint(),
            host: String::new(),
        },
    )
    .expect("register");
}

#[test]
fn malformed_oversized_and_foreign_uploads_leave_the_weights_unchanged() {
    let dir = bitnet_tests::temp_dir();
    let registry = dist::registry();
    let config = dist::tiny_config(dir.path(), &["coordinator.max_upload_bytes=100000"]);
    let c = dist::start_coordinator(&config, &registry, dist::pattern_corpus(1, 256), 0, 64);
    register(&c, &config, &registry, "a");
    register(&c, &config, &registry, "b");
    let task = c.claim("a").expect("claim").expect("a task");
    let (v0, p0) = c.params().expect("params");
    let t = TaskRef { task_id: task.task_id, lease: task.lease };
    let up = |payload: Vec<u8>| upload_of(&task, payload);
    let err = c.upload("a", up(b"not an update".to_vec())).expect_err("malformed");
    assert!(matches!(err, ApiError::Invalid(_)), "{err}");
    let err = c.upload("a", up(vec![0; 200_000])).expect_err("oversized");
    assert!(matches!(err, ApiError::TooLarge(_)), "{err}");
    let err = c.upload("b", up(vec![0; 10])).expect_err("another worker's task");
    assert!(matches!(err, ApiError::Forbidden(_)), "{err}");
    let stale = UpdateUpload { task: TaskRef { lease: 99, ..t }, ..up(vec![0; 10]) };
    assert!(matches!(c.upload("a", stale).expect_err("wrong lease"), ApiError::Conflict(_)));
    assert_eq!(c.params().expect("params"), (v0, p0), "weights untouched");
    assert_eq!(c.store().task(t.task_id).expect("t").expect("t").state, TaskState::Assigned);
    c.shutdown();
}

#[test]
fn an_abandoned_task_is_re_leased_and_completed_by_another_worker() {
    let dir = bitnet_tests::temp_dir();
    let registry = dist::registry();
    let config = dist::tiny_config(
        dir.path(),
        &[
            "coordinator.min_lease_secs=0.3",
            "coordinator.heartbeat_secs=0.1",
            "coordinator.lease_headroom=1",
        ],
    );
    let c = dist::start_coordinator(&config, &registry, dist::pattern_corpus(1, 320), 0, 64);
    register(&c, &config, &registry, "dead");
    let lost = c.claim("dead").expect("claim").expect("task");
    // The dead worker never heartbeats; the sweeper returns its task once the lease expires.
    let server = serve(&config, &registry, &c);
    let report =
        spawn_worker(&config, &registry, &server.endpoint(), dist::add_client(&c, "alive"))
            .join()
            .expect("worker");
    let rec = c.store().task(lost.task_id).expect("t").expect("t");
    assert_eq!(rec.state, TaskState::Done);
    assert_eq!(rec.worker.as_deref(), Some("alive"));
    assert!(rec.attempts >= 2, "re-leased: {rec:?}");
    assert_eq!(report.tasks_accepted, all_tasks(&c).len() as u64);
    // The dead worker's late upload is refused: its lease is gone.
    let late = UpdateUpload {
        task: TaskRef { task_id: lost.task_id, lease: lost.lease },
        base_version: 0,
        loss: 1.0,
        tokens: 1,
        seconds: 1.0,
        payload: vec![],
    };
    assert!(matches!(c.upload("dead", late).expect_err("late"), ApiError::Forbidden(_)));
    c.shutdown();
}

#[test]
fn a_restarted_coordinator_loses_nothing_and_applies_nothing_twice() {
    let dir = bitnet_tests::temp_dir();
    let registry = dist::registry();
    let config = dist::tiny_config(
        dir.path(),
        &[
            "coordinator_store.type=sqlite",
            "coordinator.snapshot_every_updates=3",
            "coordinator.snapshot_every_secs=0",
        ],
    );
    let corpus = || dist::pattern_corpus(1, 640);
    // First life: apply 5 updates by hand, then "crash" (no final snapshot).
    let c = dist::start_coordinator(&config, &registry, corpus(), 0, 64);
    register(&c, &config, &registry, "w");
    let (mut kernel, _) = kernel_and_context(&config, &registry).expect("kernel");
    let mut codec = build_worker_parts(&config, &registry, {
        let server = serve(&config, &registry, &c);
        let creds = dist::add_client(&c, "w-conn");
        build_transport(&config, &registry)
            .expect("t")
            .connect(&server.endpoint(), creds)
            .expect("c")
    })
    .expect("parts")
    .codec;
    let data = dist::pattern_tokens(640, 1);
    for _ in 0..5 {
        let task = c.claim("w").expect("claim").expect("task");
        let (_, params) = c.params().expect("params");
        let slice = &data[task.offset as usize..(task.offset + task.tokens + 1).min(640) as usize];
        let batch = windows(slice, config.model.seq_len, 64).next().expect("batch");
        let mut grads = vec![0.0; params.len()];
        kernel.forward_backward(&params, &batch.view(), &mut grads).expect("fb");
        let payload = codec.encode(kernel.layout(), &grads).expect("encode");
        let upload = upload_of(&task, payload);
        assert!(c.upload("w", upload.clone()).expect("upload").accepted);
        let again = c.upload("w", upload).expect("a retried upload is idempotent");
        assert_eq!(c.version(), again.applied_version.expect("version"), "not applied twice");
    }
    assert_eq!(c.version(), 5);
    // Wait for the snapshot of version 3 (queued after the third update).
    while c.snapshot_version() < 3 {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    drop(c);
    // Second life: resumes from version 3; the updates of versions 4 and 5 are redone.
    let c = dist::start_coordinator(&config, &registry, corpus(), 0, 64);
    assert_eq!(c.recovery().version, 3);
    assert_eq!(c.recovery().tasks_reset, 2);
    let server = serve(&config, &registry, &c);
    spawn_worker(&config, &registry, &server.endpoint(), dist::add_client(&c, "w2"))
        .join()
        .expect("worker");
    let tasks = all_tasks(&c);
    assert!(tasks.iter().all(|t| t.state == TaskState::Done), "{tasks:?}");
    let mut versions: Vec<u64> = tasks.iter().map(|t| t.applied_version).collect();
    versions.sort_unstable();
    let expected: Vec<u64> = (1..=tasks.len() as u64).collect();
    assert_eq!(versions, expected, "every task's update is in the weights exactly once");
    assert_eq!(c.version(), tasks.len() as u64);
    c.shutdown();
}

#[test]
fn revoked_and_rotated_clients_are_refused_at_once() {
    let dir = bitnet_tests::temp_dir();
    let registry = dist::registry();
    let config = dist::tiny_config(dir.path(), &[]);
    let c = dist::start_coordinator(&config, &registry, dist::pattern_corpus(1, 64), 0, 64);
    let server = serve(&config, &registry, &c);
    let transport = build_transport(&config, &registry).expect("transport");
    let creds = dist::add_client(&c, "w");
    let wrong = Credentials { client_secret: "nope".into(), ..creds.clone() };
    assert!(matches!(transport.connect(&server.endpoint(), wrong), Err(ApiError::Unauthorized(_))));
    let mut client = transport.connect(&server.endpoint(), creds.clone()).expect("connect");
    let hb = Heartbeat { task: None, progress_tokens: 0, hand_back: false, draining: false };
    assert!(client.status().is_ok());
    c.store()
        .rotate_client("w", &bitnet_runtime::auth::hash_secret("new").expect("h"))
        .expect("rotate");
    assert!(matches!(client.heartbeat(hb.clone()), Err(ApiError::Unauthorized(_))));
    assert!(matches!(transport.connect(&server.endpoint(), creds), Err(ApiError::Unauthorized(_))));
    let fresh =
        Credentials { client_id: "w".into(), client_secret: "new".into(), ca_certificate: None };
    let mut client = transport.connect(&server.endpoint(), fresh).expect("new secret works");
    c.store().revoke_client("w").expect("revoke");
    assert!(matches!(client.heartbeat(hb), Err(ApiError::Unauthorized(_))));
    c.shutdown();
}

#[test]
fn packed_examples_with_ternary_downloads_train_one_batch_per_update() {
    let dir = bitnet_tests::temp_dir();
    let registry = dist::registry();
    // Async-sgd with the "ternary" weight download and tasks capped at one batch (4 x 16).
    let config = dist::tiny_config(
        dir.path(),
        &["weight_codec.type=ternary", "coordinator.max_task_tokens=64"],
    );
    let c = dist::start_coordinator(&config, &registry, dist::example_corpus(2, 60), 0, 1 << 20);
    let (_, initial) = c.params().expect("params");
    let server = serve(&config, &registry, &c);
    let a = spawn_worker(&config, &registry, &server.endpoint(), dist::add_client(&c, "w1"));
    let b = spawn_worker(&config, &registry, &server.endpoint(), dist::add_client(&c, "w2"));
    let (ra, rb) = (a.join().expect("w1"), b.join().expect("w2"));
    let status = c.status().expect("status");
    assert!(status.tasks.finished() && status.tasks.failed == 0, "{status:?}");
    let tasks = all_tasks(&c);
    assert!(tasks.iter().all(|t| t.tokens <= 64), "claims are capped at one batch");
    let shard_tokens: u64 = c.corpus().shards().iter().map(|s| s.tokens).sum();
    assert_eq!(status.tasks.done_tokens, shard_tokens, "the epoch is covered once");
    assert_one_version_per_round(&c, ra.tasks_accepted + rb.tasks_accepted);
    let (_, trained) = c.params().expect("params");
    let data = dist::example_tokens(60, 1);
    let (before, after) = (
        packed_loss(&config, &registry, &initial, &data),
        packed_loss(&config, &registry, &trained, &data),
    );
    assert!(after < before - 0.2, "loss fell: {before} -> {after}");
    c.shutdown();
    server.shutdown();
}

#[test]
fn diloco_refuses_a_lossy_weight_download() {
    let dir = bitnet_tests::temp_dir();
    let registry = dist::registry();
    let config = dist::tiny_config(dir.path(), &["train.mode=diloco", "weight_codec.type=ternary"]);
    let problems = check_distributed(&config, &registry);
    assert!(problems.iter().any(|p| p.contains("ternary") && p.contains("diloco")), "{problems:?}");
    let store = build_store(&config, &registry).expect("store");
    let corpus: Arc<dyn bitnet_runtime::coordinator::Corpus> =
        Arc::new(dist::example_corpus(1, 10));
    let err = build_coordinator(&config, &registry, store, corpus).err().expect("refused");
    assert!(err.to_string().contains("lossy"), "{err}");
    let fp32 = dist::tiny_config(dir.path(), &["train.mode=diloco", "weight_codec.type=fp32"]);
    assert!(check_distributed(&fp32, &registry).is_empty());
    let tiny_cap = dist::tiny_config(dir.path(), &["coordinator.max_task_tokens=3"]);
    assert!(check_distributed(&tiny_cap, &registry)[0].contains("max_task_tokens"));
}

#[test]
fn diloco_tasks_carry_the_runs_schedule_step_and_packing() {
    let dir = bitnet_tests::temp_dir();
    let registry = dist::registry();
    let config = dist::tiny_config(dir.path(), &["train.mode=diloco", "codec.type=fp32"]);
    let c = dist::start_coordinator(&config, &registry, dist::example_corpus(1, 80), 0, 1 << 20);
    register(&c, &config, &registry, "w");
    let first = c.claim("w").expect("claim").expect("task");
    assert_eq!(first.packing, Some(dist::EXAMPLE_PACKING));
    assert_eq!((first.weights_version, first.schedule_step), (0, 0));
    // H x batch x seq_len = 4 x 4 x 16 tokens per DiLoCo task.
    assert_eq!(first.tokens, 256);
    let (_, params) = c.params().expect("params");
    let zero = encode_update(&config, &registry, &vec![0.0; params.len()]);
    assert!(c.upload("w", upload_of(&first, zero)).expect("upload").accepted);
    let second = c.claim("w").expect("claim").expect("task");
    assert_eq!(second.weights_version, 1);
    assert_eq!(second.schedule_step, 4, "one outer step = H inner steps of the run");
    c.shutdown();
}

#[test]
fn async_sgd_tasks_are_whole_optimizer_batches_not_task_seconds_of_tokens() {
    let registry = dist::registry();
    let claim_at = |overrides: &[&str], workers: &[&str]| {
        let dir = bitnet_tests::temp_dir();
        let mut all = vec!["coordinator.task_seconds=600"];
        all.extend_from_slice(overrides);
        let config = dist::tiny_config(dir.path(), &all);
        let corpus = dist::pattern_corpus(1, 64 * 200);
        let c = dist::start_coordinator(&config, &registry, corpus, 0, 1 << 20);
        for w in workers {
            register_at(&c, &config, &registry, w, 800.0);
        }
        let task = c.claim(workers[0]).expect("claim").expect("task");
        c.shutdown();
        task.tokens
    };
    // 600 s of a worker calibrated at 800 tokens/s used to be one task of the whole corpus
    // (12,800 tokens): one optimizer step for the run. A task is one batch of 4 x 16 tokens,
    // since the run's 1000 named steps want more steps than 200 batches give.
    assert_eq!(claim_at(&[], &["a"]), 64);
    // Ten named steps: 12,800 tokens / (10 steps x 64) = 20 whole batches per task; with two
    // workers averaged into each step, 10.
    assert_eq!(claim_at(&["train.steps=10"], &["a"]), 20 * 64);
    assert_eq!(claim_at(&["train.steps=10"], &["a", "b"]), 10 * 64);
    // task_seconds caps it: 0.25 s of 800 tokens/s holds 3 whole batches.
    assert_eq!(claim_at(&["train.steps=10", "coordinator.task_seconds=0.25"], &["a"]), 3 * 64);
}

#[test]
fn schedule_unit_tokens_sets_both_modes_schedule_index_and_length() {
    use bitnet_runtime::coordinator::schedule_steps;
    let dir = bitnet_tests::temp_dir();
    let registry = dist::registry();
    let unit = ["train.token_budget=1000", "coordinator.schedule_unit_tokens=128"];
    for mode in ["train.mode=async-sgd", "train.mode=diloco"] {
        let with_unit = dist::tiny_config(dir.path(), &[unit[0], unit[1], mode]);
        assert_eq!(schedule_steps(&with_unit), 8, "{mode}: ceil(1000 / 128)");
        let without = dist::tiny_config(dir.path(), &[unit[0], mode]);
        // Without the unit: diloco counts batches of 4 x 16, async-sgd (uncapped) train.steps.
        let expected = if mode.ends_with("diloco") { 16 } else { without.train.steps };
        assert_eq!(schedule_steps(&without), expected, "{mode} without a unit");
    }
    let config = dist::tiny_config(
        dir.path(),
        &["train.mode=diloco", "codec.type=fp32", "coordinator.schedule_unit_tokens=128"],
    );
    let c = dist::start_coordinator(&config, &registry, dist::example_corpus(1, 80), 0, 1 << 20);
    register(&c, &config, &registry, "w");
    let first = c.claim("w").expect("claim").expect("task");
    assert_eq!((first.tokens, first.schedule_step), (256, 0));
    let (_, params) = c.params().expect("params");
    let zero = encode_update(&config, &registry, &vec![0.0; params.len()]);
    assert!(c.upload("w", upload_of(&first, zero)).expect("upload").accepted);
    let second = c.claim("w").expect("claim").expect("task");
    assert_eq!(second.schedule_step, 2, "256 tokens applied / 128-token unit");
    c.shutdown();

    // async-sgd: the coordinator's own step index (which its tasks carry) counts units too.
    let dir = bitnet_tests::temp_dir();
    let config = dist::tiny_config(
        dir.path(),
        &["train.token_budget=100000", "coordinator.schedule_unit_tokens=4"],
    );
    let c = dist::start_coordinator(&config, &registry, dist::example_corpus(1, 80), 0, 1 << 20);
    register(&c, &config, &registry, "w");
    let first = c.claim("w").expect("claim").expect("task");
    assert_eq!(first.schedule_step, 0);
    assert!(first.tokens >= 8, "a task of {} tokens", first.tokens);
    let (_, params) = c.params().expect("params");
    let zero = encode_update(&config, &registry, &vec![0.0; params.len()]);
    assert!(c.upload("w", upload_of(&first, zero)).expect("upload").accepted);
    let second = c.claim("w").expect("claim").expect("task");
    assert_eq!(second.schedule_step, first.tokens / 4, "tokens applied / 4-token unit");
    c.shutdown();

    // A unit without a token budget has nothing to span.
    let no_budget = dist::tiny_config(dir.path(), &["coordinator.schedule_unit_tokens=4"]);
    let problems = check_distributed(&no_budget, &registry);
    assert!(problems.iter().any(|p| p.contains("schedule_unit_tokens")), "{problems:?}");
}

#[test]
fn every_shipped_config_passes_the_distributed_checks() {
    let registry = dist::registry();
    let mut failures = Vec::new();
    for path in bitnet_tests::all_configs() {
        let sources = bitnet_runtime::config::ConfigSources {
            file: Some(path.clone()),
            env: false,
            overrides: vec![],
        };
        let config = bitnet_runtime::config::load(&sources)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .config;
        for p in check_distributed(&config, &registry) {
            failures.push(format!("{}: {p}", path.display()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Encodes `update` with the run's gradient codec.
pub(crate) fn encode_update(config: &RunConfig, registry: &Registry, update: &[f32]) -> Vec<u8> {
    let (kernel, ctx) = kernel_and_context(config, registry).expect("kernel");
    let mut codec = registry
        .build::<dyn bitnet_framework::codec::GradientCodec>(
            &config.codec.kind,
            &config.codec.options,
            &ctx,
        )
        .expect("codec");
    codec.encode(kernel.layout(), update).expect("encode")
}

#[test]
fn updates_computed_on_one_version_are_averaged_into_one_step() {
    let dir = bitnet_tests::temp_dir();
    let registry = dist::registry();
    // Tasks capped at 0.192 s of work: a (1000 tokens/s) gets three 64-token batches, b
    // (334 tokens/s) one, so the round weighs their updates 3:1. (One named step lets tasks
    // grow past one batch: 512 tokens / (1 step x 2 workers x 64) = 4 batches.)
    let config = dist::tiny_config(
        dir.path(),
        &["codec.type=fp32", "coordinator.task_seconds=0.192", "train.steps=1"],
    );
    let c = dist::start_coordinator(&config, &registry, dist::pattern_corpus(1, 512), 0, 192);
    register(&c, &config, &registry, "a");
    register_at(&c, &config, &registry, "b", 334.0);
    let ta = c.claim("a").expect("claim").expect("task a");
    let tb = c.claim("b").expect("claim").expect("task b");
    assert_eq!((ta.weights_version, tb.weights_version), (0, 0));
    assert_eq!((ta.tokens, tb.tokens), (192, 64));
    let (_, p0) = c.params().expect("params");
    let ga: Vec<f32> = (0..p0.len()).map(|i| ((i % 7) as f32 - 3.0) * 1e-3).collect();
    let gb: Vec<f32> = (0..p0.len()).map(|i| ((i % 5) as f32 - 2.0) * 2e-3).collect();
    let upload = |t: &TaskSpec, g: &[f32], tokens: u64| UpdateUpload {
        tokens,
        ..upload_of(t, encode_update(&config, &registry, g))
    };
    let (wa, wb) = (ta.tokens, tb.tokens);
    let first = c.upload("a", upload(&ta, &ga, wa)).expect("upload a");
    assert!(first.accepted && first.applied_version.is_none(), "{first:?}");
    assert_eq!(c.version(), 0, "the round waits for b");
    let again = c.upload("a", upload(&ta, &ga, wa)).expect("duplicate");
    assert!(again.accepted && again.applied_version.is_none(), "{again:?}");
    // a's next claim waits for the round, so its next task starts from the new version.
    let waiting = {
        let c = Arc::clone(&c);
        std::thread::spawn(move || c.claim("a"))
    };
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert!(!waiting.is_finished(), "a's claim waits while its update is in the open round");
    let second = c.upload("b", upload(&tb, &gb, wb)).expect("upload b");
    assert_eq!(second.applied_version, Some(1), "b's update closes the round");
    let next = waiting.join().expect("thread").expect("claim").expect("a next task");
    assert_eq!(next.weights_version, 1);
    // The step equals one optimizer step on the token-weighted mean of the two updates.
    let (kernel, ctx) = kernel_and_context(&config, &registry).expect("kernel");
    let ctx = ctx.with_total_steps(bitnet_runtime::coordinator::schedule_steps(&config));
    drop(kernel);
    let mut optimizer = registry
        .build::<dyn bitnet_framework::optim::Optimizer>(
            &config.optimizer.kind,
            &config.optimizer.options,
            &ctx,
        )
        .expect("optimizer");
    let inv = 1.0 / (wa + wb) as f32;
    let mean: Vec<f32> =
        ga.iter().zip(&gb).map(|(a, b)| (wa as f32 * a + wb as f32 * b) * inv).collect();
    let mut expected = p0.clone();
    optimizer
        .step(&mut expected, &mean, bitnet_framework::optim::StepInfo { step: 0, lr_scale: 1.0 })
        .expect("step");
    let (v, p1) = c.params().expect("params");
    assert_eq!(v, 1);
    let diff = p1.iter().zip(&expected).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    assert!(diff <= 1e-7, "round step differs from the mean's step by {diff}");
    assert_ne!(p1, p0);
    for t in [&ta, &tb] {
        let rec = c.store().task(t.task_id).expect("task").expect("task");
        assert_eq!((rec.state, rec.applied_version), (TaskState::Done, 1));
    }
    c.shutdown();
}

#[test]
fn a_round_stops_waiting_for_a_task_handed_back() {
    let dir = bitnet_tests::temp_dir();
    let registry = dist::registry();
    // No maintenance thread: the test runs the pass itself.
    let config =
        dist::tiny_config(dir.path(), &["codec.type=fp32", "coordinator.sweep_every_secs=3600"]);
    let c = dist::start_coordinator(&config, &registry, dist::pattern_corpus(1, 512), 0, 64);
    register(&c, &config, &registry, "a");
    register(&c, &config, &registry, "b");
    let ta = c.claim("a").expect("claim").expect("task a");
    let tb = c.claim("b").expect("claim").expect("task b");
    let (_, p0) = c.params().expect("params");
    let g: Vec<f32> = (0..p0.len()).map(|i| ((i % 3) as f32 - 1.0) * 1e-3).collect();
    let up = upload_of(&ta, encode_update(&config, &registry, &g));
    assert!(c.upload("a", up).expect("upload").applied_version.is_none());
    let waiting = c.store().task(ta.task_id).expect("task").expect("task");
    assert_eq!(waiting.state, TaskState::Assigned, "not Done before its round's step");
    c.maintain();
    assert_eq!(c.version(), 0, "b's task is still leased: the round waits");
    let hand_back = Heartbeat {
        task: Some(TaskRef { task_id: tb.task_id, lease: tb.lease }),
        progress_tokens: 0,
        hand_back: true,
        draining: false,
    };
    c.heartbeat("b", hand_back).expect("hand back");
    c.maintain();
    assert_eq!(c.version(), 1, "the round closes without the handed-back task");
    let rec = c.store().task(tb.task_id).expect("task").expect("task");
    assert_eq!(rec.state, TaskState::Pending, "b's task goes back to the queue");
    c.shutdown();
}
