//! End to end with processes: `bitnet coordinator` and `bitnet worker` on 127.0.0.1 with the
//! tiny preset, HTTP, SQLite and the fs weight store.

use bitnet_framework::coordinator_store::{CoordinatorStore, TaskQuery, TaskRecord, TaskState};
use bitnet_store_sqlite::SqliteStore;
use bitnet_tests::procs::{Proc, free_port, wait_for};
use std::path::Path;
use std::time::Duration;

pub(crate) const LIMIT: Duration = Duration::from_secs(240);

pub(crate) fn write_config(dir: &Path, port: u16, corpus_count: usize) -> String {
    let text = format!(
        r#"
name = "e2e"
preset = "tiny"
[model]
seq_len = 32
[kernel]
type = "bitnet-b158"
[optimizer]
type = "adamw"
lr = 0.01
warmup_steps = 0
[codec]
type = "int8-ef"
[weight_store]
type = "fs"
[tokenizer]
type = "word-level"
max_vocab = 400
min_freq = 1
[transport]
type = "http"
bind = "127.0.0.1:{port}"
[coordinator_store]
type = "sqlite"
[train]
mode = "async-sgd"
batch_size = 4
threads = 1
[data]
dir = "{data}"
corpus_count = {corpus_count}
[run]
dir = "{run}"
[coordinator]
task_seconds = 0.005
heartbeat_secs = 0.2
min_lease_secs = 2
sweep_every_secs = 0.1
eval_every_secs = 0.5
snapshot_every_updates = 3
snapshot_every_secs = 0
[worker]
calibration_steps = 1
idle_poll_ms = 50
retry_base_ms = 100
give_up_after_secs = 60
"#,
        data = dir.join("data").display(),
        run = dir.join("run").display(),
    );
    let path = dir.join("e2e.toml");
    std::fs::write(&path, text).expect("config");
    path.display().to_string()
}

pub(crate) fn run_ok(dir: &Path, name: &str, args: &[&str]) {
    let status = Proc::start(name, dir, args).wait(LIMIT);
    let log = std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default();
    assert!(status.success(), "bitnet {args:?} failed:\n{log}");
}

pub(crate) fn store(dir: &Path) -> SqliteStore {
    SqliteStore::open(&dir.join("run/coordinator.sqlite"), Duration::from_secs(10)).expect("store")
}

/// Every task of the queue, in id order: one page of the store's own listing (ids may have
/// gaps, e.g. PostgreSQL's after a rolled-back claim, so they are not scanned one by one).
pub(crate) fn tasks(s: &(impl CoordinatorStore + ?Sized)) -> Vec<TaskRecord> {
    let page = s.list_tasks(&TaskQuery { limit: 1_000_000, ..Default::default() }).expect("tasks");
    assert_eq!(page.tasks.len() as u64, page.total, "one page holds the whole queue");
    page.tasks
}

pub(crate) fn setup(dir: &Path, port: u16, corpus_count: usize) -> String {
    let config = write_config(dir, port, corpus_count);
    run_ok(dir, "tokenize", &["tokenize-corpus", &config, "--no-env"]);
    for id in ["w1", "w2"] {
        let out = dir.join(format!("{id}.json")).display().to_string();
        run_ok(
            dir,
            &format!("keys-{id}"),
            &["keys", "add", &config, "--no-env", "--id", id, "--out", &out],
        );
    }
    config
}

/// Starts `bitnet coordinator CONFIG` logging to `dir/NAME.log` and waits until it listens.
pub(crate) fn coordinator(dir: &Path, name: &str, config: &str) -> Proc {
    let coord = Proc::start(name, dir, &["coordinator", config, "--no-env"]);
    wait_for("the coordinator's URL file", LIMIT, || {
        dir.join("run/coordinator.url").is_file().then_some(())
    });
    coord
}

pub(crate) fn worker(dir: &Path, config: &str, id: &str, port: u16) -> Proc {
    let creds = dir.join(format!("{id}.json")).display().to_string();
    let url = format!("http://127.0.0.1:{port}");
    Proc::start(
        id,
        dir,
        &[
            "worker",
            config,
            "--no-env",
            "--coordinator",
            &url,
            "--credentials",
            &creds,
            "--exit-when-done",
        ],
    )
}

pub(crate) fn log_of(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default()
}

#[test]
fn two_worker_processes_train_and_a_killed_workers_task_is_re_leased() {
    let tmp = bitnet_tests::temp_dir();
    let dir = tmp.path();
    let port = free_port();
    let config = setup(dir, port, 300);
    let mut coord = coordinator(dir, "coordinator", &config);
    let s = store(dir);
    let mut w1 = worker(dir, &config, "w1", port);
    // Kill w1 while it holds a task; w2 must finish that task once the lease expires. Freeze
    // w1 first and confirm it still holds the task, so it cannot finish it in between.
    let holding = |s: &SqliteStore| {
        tasks(s)
            .into_iter()
            .find(|t| t.state == TaskState::Assigned && t.worker.as_deref() == Some("w1"))
    };
    let held = wait_for("w1 frozen while holding a task", LIMIT, || {
        let t = holding(&s)?;
        w1.signal("STOP");
        // An upload w1 had fully sent before the signal is still applied (and completes the
        // task as w1's); give the coordinator time for that before checking the task is held.
        std::thread::sleep(Duration::from_millis(500));
        match holding(&s) {
            Some(now) if now.id == t.id && now.attempts == t.attempts => Some(now),
            _ => {
                w1.signal("CONT");
                None
            }
        }
    });
    w1.signal("KILL");
    w1.wait(LIMIT);
    let mut w2 = worker(dir, &config, "w2", port);
    assert!(w2.wait(LIMIT).success(), "w2 failed:\n{}", log_of(dir, "w2"));
    let all = tasks(&s);
    assert!(all.len() >= 2, "{all:?}");
    assert!(all.iter().all(|t| t.state == TaskState::Done), "{all:?}");
    let redone = all.iter().find(|t| t.id == held.id).expect("held task");
    assert_eq!(redone.worker.as_deref(), Some("w2"), "{redone:?}");
    assert!(redone.attempts >= 2, "{redone:?}");
    // Loss falls across the run; versions advance.
    let mut telemetry = s.recent_telemetry(10_000).expect("telemetry");
    telemetry.reverse();
    let accepted: Vec<f32> = telemetry.iter().filter(|r| r.accepted).map(|r| r.loss).collect();
    let k = (accepted.len() / 3).max(1);
    let head = accepted[..k].iter().sum::<f32>() / k as f32;
    let tail = accepted[accepted.len() - k..].iter().sum::<f32>() / k as f32;
    assert!(tail < head, "loss falls: first {head}, last {tail} ({accepted:?})");
    assert!(s.log_count().expect("logs") > 0, "workers shipped logs");
    coord.signal("TERM");
    assert!(coord.wait(LIMIT).success(), "coordinator:\n{}", log_of(dir, "coordinator"));
    let versions = std::fs::read_dir(dir.join("run/weights")).expect("weights").count();
    assert!(versions >= 2, "snapshots were written");
}

#[test]
fn a_killed_coordinator_restarts_and_nothing_is_lost_or_applied_twice() {
    let tmp = bitnet_tests::temp_dir();
    let dir = tmp.path();
    let port = free_port();
    let config = setup(dir, port, 300);
    let mut coord = coordinator(dir, "coordinator-1", &config);
    let s = store(dir);
    let mut w1 = worker(dir, &config, "w1", port);
    wait_for("four applied updates", LIMIT, || {
        (s.counts().expect("counts").done >= 4).then_some(())
    });
    coord.signal("KILL");
    coord.wait(LIMIT);
    let mut coord = Proc::start("coordinator-2", dir, &["coordinator", &config, "--no-env"]);
    assert!(w1.wait(LIMIT).success(), "w1 failed:\n{}", log_of(dir, "w1"));
    coord.signal("TERM");
    assert!(coord.wait(LIMIT).success(), "coordinator:\n{}", log_of(dir, "coordinator-2"));
    assert!(log_of(dir, "coordinator-2").contains("recovered"), "the restart recovered");
    let all = tasks(&s);
    assert!(all.iter().all(|t| t.state == TaskState::Done), "{all:?}");
    let mut versions: Vec<u64> = all.iter().map(|t| t.applied_version).collect();
    versions.sort_unstable();
    let expected: Vec<u64> = (1..=all.len() as u64).collect();
    assert_eq!(versions, expected, "every task's update is in the weights exactly once");
    // The final snapshot holds every update.
    let newest = std::fs::read_dir(dir.join("run/weights"))
        .expect("weights")
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.trim_start_matches(|c: char| !c.is_ascii_digit())
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|d| d.parse::<u64>().ok())
        })
        .max();
    assert_eq!(newest, Some(all.len() as u64));
}
