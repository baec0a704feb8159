//! What fleet runs leave and how `bitnet run` treats its run directory and its terminal, with
//! the real binary on 127.0.0.1 and the tiny preset: a `bitnet coordinator` + `bitnet worker`
//! run ends with a checkpoint, `metrics.jsonl` and `summary.json` that `eval` opens; `bitnet
//! run` piped to a file prints plain progress lines without colours and keeps the workers'
//! per-task records in its log file; a used run directory is refused unless `--resume` or
//! `--fresh`.

use crate::dist_process::{LIMIT, coordinator, log_of, setup, worker};
use bitnet_runtime::metrics::{MetricsKind, MetricsRow, MetricsSource};
use bitnet_tests::procs::{bitnet_bin, free_port, wait_for};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs `bitnet ARGS` to completion with stdout and stderr captured (so not a terminal), the
/// log filter left to `RUST_LOG` (unset: info).
fn bitnet(args: &[&str]) -> Output {
    Command::new(bitnet_bin())
        .args(args)
        .env_remove("BITNET_LOG")
        .env_remove("RUST_LOG")
        .output()
        .expect("run bitnet")
}

fn text(out: &Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

fn metrics(run: &Path) -> Vec<MetricsRow> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).expect("metrics.jsonl");
    text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect()
}

fn checkpoints(run: &Path) -> Vec<PathBuf> {
    let mut all: Vec<PathBuf> = std::fs::read_dir(run.join("checkpoints"))
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    all.sort();
    all
}

#[test]
fn a_coordinator_and_worker_run_leaves_a_checkpoint_that_eval_opens() {
    let tmp = bitnet_tests::temp_dir();
    let dir = tmp.path();
    let port = free_port();
    let config = setup(dir, port, 300);
    let mut coord = coordinator(dir, "coordinator", &config);
    let mut w1 = worker(dir, &config, "w1", port);
    assert!(w1.wait(LIMIT).success(), "w1 failed:\n{}", log_of(dir, "w1"));
    let run = dir.join("run");
    // The budget (one epoch) is reached: a checkpoint and an evaluated summary.
    wait_for("summary.json", LIMIT, || run.join("summary.json").is_file().then_some(()));
    coord.signal("TERM");
    assert!(coord.wait(LIMIT).success(), "coordinator:\n{}", log_of(dir, "coordinator"));
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).expect("read"))
            .expect("summary json");
    assert_eq!(summary["trainer"], "bitnet coordinator", "{summary}");
    assert!(summary["val_loss"].is_number(), "{summary}");
    let rows = metrics(&run);
    assert!(rows.iter().all(|r| r.source == MetricsSource::Coordinator));
    let last = rows.last().expect("rows");
    assert_eq!(last.kind, MetricsKind::Final);
    assert!(last.tokens > 0 && last.step > 0, "{last:?}");
    let newest = checkpoints(&run).pop().expect("a checkpoint");
    assert!(newest.to_string_lossy().ends_with(&format!("step-{:08}.safetensors", last.step)));

    let newest = newest.display().to_string();
    let out = bitnet(&["eval", "--checkpoint", &newest, "--no-loss", "--limit", "4"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "eval of the coordinator's checkpoint:\n{stderr}");
    assert!(stdout.contains("intent_accuracy"), "{stdout}");

    // The snapshot opens too, its model named by the run's run.toml; a snapshot away from its
    // run directory is refused with how to get a checkpoint instead.
    let snapshot = std::fs::read_dir(run.join("weights"))
        .expect("weights")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "weights"))
        .expect("a snapshot");
    let out_file = dir.join("model.bin").display().to_string();
    let snap = snapshot.display().to_string();
    let out = bitnet(&["export", "--checkpoint", &snap, "--out", &out_file]);
    assert!(out.status.success(), "export of a snapshot:\n{}", text(&out).1);
    let lone = dir.join("lone.weights");
    std::fs::copy(&snapshot, &lone).expect("copy");
    let lone = lone.display().to_string();
    let out = bitnet(&["export", "--checkpoint", &lone, "--out", &out_file]);
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stderr.contains("BNSNAPSH") && stderr.contains("checkpoints/step-"), "{stderr}");
}

#[test]
fn bitnet_run_piped_keeps_worker_logs_in_its_log_and_guards_its_run_directory() {
    let tmp = bitnet_tests::temp_dir();
    let dir = tmp.path();
    let config = setup(dir, free_port(), 300);
    let run = dir.join("run");
    let base = ["run", config.as_str(), "--no-env", "--set", "transport.bind=127.0.0.1:0"];
    let with = |extra: &[&str]| -> Vec<String> {
        base.iter().chain(extra).map(|s| s.to_string()).collect()
    };
    let run_bitnet = |args: Vec<String>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        bitnet(&args)
    };
    // A fresh run directory (the keys command made the store there: start clean).
    let out = run_bitnet(with(&["--fresh", "--set", "train.token_budget=1500"]));
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "first run:\n{stderr}");
    assert!(stdout.contains("trained"), "{stdout}");
    assert!(!stderr.contains('\u{1b}'), "no colour codes when piped:\n{stderr}");
    assert!(stderr.contains("progress: tokens"), "plain progress lines when piped:\n{stderr}");
    assert!(!stderr.contains(" done: loss "), "per-task records stay off stderr:\n{stderr}");
    let log = std::fs::read_to_string(run.join("run.log")).expect("run.log");
    assert!(log.contains(" done: loss "), "per-task records go to run.log:\n{log}");
    assert!(!log.contains('\u{1b}'), "no colour codes in the log file");
    let first = metrics(&run);
    assert!(first.iter().all(|r| r.source == MetricsSource::Run));
    let first_tokens = first.last().expect("rows").tokens;

    // Again in the same directory: refused, saying what to do.
    let out = run_bitnet(with(&[]));
    let (_, stderr) = text(&out);
    assert!(!out.status.success(), "a used run directory is refused");
    assert!(stderr.contains("--resume") && stderr.contains("--fresh"), "{stderr}");

    // --resume with a larger budget trains the difference and names the changed keys.
    let out = run_bitnet(with(&[
        "--resume",
        "--set",
        "train.token_budget=3000",
        "--set",
        "optimizer.lr=0.02",
    ]));
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "resume:\n{stderr}");
    assert!(stderr.contains("optimizer.lr (0.01 -> 0.02)"), "{stderr}");
    assert!(stderr.contains("train.token_budget (1500 -> 3000)"), "{stderr}");
    let resumed = metrics(&run).last().expect("rows").clone();
    assert!(resumed.tokens > first_tokens, "{first_tokens} -> {}", resumed.tokens);
    assert!(resumed.step > first.last().expect("rows").step, "versions go on");

    // A changed model is refused on --resume; --fresh starts over.
    let out = run_bitnet(with(&["--resume", "--set", "model.seq_len=48"]));
    let (_, stderr) = text(&out);
    assert!(!out.status.success(), "a changed model is refused");
    assert!(stderr.contains("model.seq_len (32 -> 48)"), "{stderr}");
    let out = run_bitnet(with(&[
        "--fresh",
        "--set",
        "model.seq_len=48",
        "--set",
        "train.token_budget=1500",
    ]));
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "--fresh:\n{stderr}");
    assert!(stderr.contains("deleted the previous run's state"), "{stderr}");
    let rows = metrics(&run);
    assert!(rows.last().expect("rows").tokens <= 1500 + 64, "started over: {rows:?}");
}

#[test]
fn log_filters_come_from_rust_log_and_a_bad_one_is_refused() {
    let out = Command::new(bitnet_bin())
        .args(["--log", "garbage[", "plugins"])
        .output()
        .expect("run bitnet");
    let (_, stderr) = text(&out);
    assert!(!out.status.success(), "a bad --log is refused");
    assert!(stderr.contains("invalid log filter `garbage[`"), "{stderr}");
    let out = Command::new(bitnet_bin())
        .args(["plugins"])
        .env_remove("BITNET_LOG")
        .env("RUST_LOG", "garbage[")
        .output()
        .expect("run bitnet");
    assert!(!out.status.success(), "RUST_LOG is read (and a bad one refused)");
    let out = Command::new(bitnet_bin())
        .args(["plugins"])
        .env_remove("BITNET_LOG")
        .env("RUST_LOG", "warn")
        .output()
        .expect("run bitnet");
    assert!(out.status.success(), "{}", text(&out).1);
}

#[test]
fn bitnet_train_piped_prints_plain_progress_lines_and_the_shared_metrics_schema() {
    let tmp = bitnet_tests::temp_dir();
    let dir = tmp.path();
    let tokens: Vec<u8> = (0..2000u32).flat_map(|i| ((i * 7 + i / 3) % 64).to_le_bytes()).collect();
    let file = dir.join("tokens.bin");
    std::fs::write(&file, tokens).expect("token file");
    let run_dir = format!("run.dir={}", dir.join("run").display());
    let file = file.display().to_string();
    let out = bitnet(&[
        "train",
        "--no-env",
        "--tokens",
        &file,
        "--set",
        "preset=tiny",
        "--set",
        "model.vocab_size=64",
        "--set",
        "model.seq_len=16",
        "--set",
        "train.steps=3",
        "--set",
        "train.batch_size=2",
        "--set",
        "train.threads=1",
        "--set",
        &run_dir,
    ]);
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("progress: step 1/3"), "plain progress when piped:\n{stderr}");
    assert!(stderr.contains("progress: step 3/3"), "{stderr}");
    assert!(!stderr.contains('\u{1b}'), "no colour codes when piped:\n{stderr}");
    let rows = metrics(&dir.join("run"));
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert!(rows.iter().all(|r| r.source == MetricsSource::Train && r.lr.is_some()));
}
