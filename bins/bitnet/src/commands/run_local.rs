//! `bitnet run CONFIG` without `--dry-run`: the whole system on one machine. A coordinator and
//! `[run] local_workers` workers over loopback (the config's transport) with generated
//! credentials; the corpus is generated and tokenized first if missing; the queue is seeded to
//! the token budget; a live progress bar; a final checkpoint, `metrics.jsonl` and an evaluation.

use super::coordinator::stop_flag;
use super::worker::run_worker;
use anyhow::{Context, bail};
use bitnet_framework::protocol::{CoordinatorApi, StatusReport};
use bitnet_framework::registry::Registry;
use bitnet_framework::transport::Credentials;
use bitnet_runtime::auth::{self as secrets};
use bitnet_runtime::checkpoint::{self, CheckpointMeta};
use bitnet_runtime::config::RunConfig;
use bitnet_runtime::coordinator::Corpus;
use bitnet_runtime::data::SourcePosition;
use bitnet_runtime::data::dir::{DataDir, Split};
use bitnet_runtime::run;
use bitnet_runtime::run::service::{CoordinatorService, open_corpus};
use bitnet_runtime::worker::TaskTiming;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Generates and tokenizes the corpus (as `bitnet tokenize-corpus` does) when the tokenizer or
/// the train shards are missing.
fn prepare_data(config: &RunConfig, registry: &Registry) -> anyhow::Result<()> {
    let dir = DataDir::new(config.data.dir.clone());
    let kind = &config.tokenizer.kind;
    let have_shards = dir.shard_paths(kind, Split::Train).map(|p| !p.is_empty()).unwrap_or(false);
    if dir.tokenizer_file(kind).is_file() && have_shards {
        return Ok(());
    }
    eprintln!("preparing data in {} (generate, tokenize, shard)", dir.root().display());
    super::data::tokenize_corpus(config, registry, super::data::DEFAULT_SHARD_TOKENS)
        .context("preparing the data")
}

/// Credentials for local worker `i`: created, or rotated when the store already has them.
fn local_credentials(service: &CoordinatorService, i: usize) -> anyhow::Result<Credentials> {
    let id = format!("local-{i}");
    let secret = secrets::generate_secret();
    let hash = secrets::hash_secret(&secret).map_err(anyhow::Error::msg)?;
    let store = service.coordinator.store();
    if store.client(&id)?.is_some() {
        store.rotate_client(&id, &hash)?;
    } else {
        store.add_client(&id, &hash)?;
    }
    Ok(Credentials { client_id: id, client_secret: secret, ca_certificate: None })
}

fn progress_bar(total: u64) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} tokens {human_pos}/{human_len} [{bar:30}] {msg} eta {eta} ({elapsed})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar
}

fn status_line(s: &StatusReport) -> String {
    format!(
        "loss {} | {:.0} tok/s | v{} | {} workers | {} rejected",
        s.recent_loss.map(|l| format!("{l:.4}")).unwrap_or_else(|| "-".into()),
        s.tokens_per_sec,
        s.weight_version,
        s.workers.active,
        s.updates_rejected
    )
}

fn write_checkpoint(
    config: &RunConfig,
    service: &CoordinatorService,
    status: &StatusReport,
) -> anyhow::Result<PathBuf> {
    let (version, params, optimizer) = service.coordinator.state()?;
    let meta = CheckpointMeta {
        step: version,
        tokens: status.tasks.done_tokens,
        seed: config.train.seed,
        data_position: SourcePosition::default(),
        layout: service.coordinator.layout().clone(),
        kernel: config.kernel.kind.clone(),
        optimizer: config.optimizer.kind.clone(),
        run_config: toml::to_string(config).context("serialising the run config")?,
    };
    let path =
        bitnet_runtime::trainer::checkpoint_path(&config.run.dir.join("checkpoints"), version);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    checkpoint::write(&path, &meta, &params, &optimizer)?;
    Ok(path)
}

/// Compute threads of each local worker: `train.threads` when set, else the machine's cores
/// shared out between the `[run] local_workers` (at least 1 each).
pub fn worker_threads(config: &RunConfig) -> usize {
    if config.train.threads > 0 {
        return config.train.threads;
    }
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    (cores / config.run.local_workers.max(1)).max(1)
}

/// Trains `config` end to end on this machine.
pub fn run(mut config: RunConfig, registry: &Registry) -> anyhow::Result<()> {
    prepare_data(&config, registry)?;
    let corpus = open_corpus(&mut config, registry)?;
    let parameters = run::build_kernel(&config, registry)?.layout().total_params();
    eprintln!(
        "model: vocabulary {} (the tokenizer's), {} parameters",
        config.model.vocab_size,
        super::run::group_thousands(parameters)
    );
    let workers = config.run.local_workers.max(1);
    let run_tokens = match config.train.token_budget {
        0 => corpus.shards().iter().map(|s| s.tokens).sum(),
        budget => budget,
    };
    super::run::print_plan(&config, run_tokens);
    config.train.threads = worker_threads(&config);
    config.worker.exit_when_done = true;
    std::fs::create_dir_all(&config.run.dir)?;
    let stop = stop_flag()?;
    let service = CoordinatorService::start(&config, registry, corpus, true)?;
    let endpoint = service.server.endpoint();
    eprintln!(
        "coordinator on {endpoint} (weight version {}); starting {workers} local worker(s)",
        service.coordinator.version()
    );
    let mut handles = Vec::new();
    for i in 0..workers {
        let creds = local_credentials(&service, i)?;
        let (config, registry, endpoint, stop) =
            (config.clone(), registry.clone(), endpoint.clone(), stop.clone());
        handles.push(
            std::thread::Builder::new()
                .name(format!("local-worker-{i}"))
                .spawn(move || run_worker(&config, &registry, &endpoint, creds, stop))?,
        );
    }

    let metrics_path = config.run.dir.join("metrics.jsonl");
    let mut metrics = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&metrics_path)
        .with_context(|| format!("opening {}", metrics_path.display()))?;
    let started = Instant::now();
    let first = service.coordinator.status()?;
    let bar = progress_bar(first.tasks.total_tokens);
    let mut last_line = Instant::now() - Duration::from_secs(10);
    let status = loop {
        let s = service.coordinator.status()?;
        bar.set_position(s.tasks.done_tokens);
        bar.set_message(status_line(&s));
        if last_line.elapsed() >= Duration::from_secs(1) {
            last_line = Instant::now();
            let mut row = serde_json::to_value(&s)?;
            if let Some(o) = row.as_object_mut() {
                o.insert("elapsed_s".into(), started.elapsed().as_secs_f64().into());
            }
            writeln!(metrics, "{row}")?;
        }
        let workers_done = handles.iter().all(|h| h.is_finished());
        if s.tasks.finished() || workers_done || stop.load(Ordering::SeqCst) {
            break s;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    bar.finish();
    if stop.load(Ordering::SeqCst) {
        eprintln!("interrupted: handing tasks back and writing a final snapshot");
    }
    stop.store(true, Ordering::SeqCst);
    let mut failures = Vec::new();
    let mut timing = TaskTiming::default();
    let mut tasks = 0u64;
    for (i, h) in handles.into_iter().enumerate() {
        match h.join() {
            Ok(Ok(r)) => {
                let per = |x: f64| 1000.0 * x / r.tasks_accepted.max(1) as f64;
                let t = &r.timing;
                eprintln!(
                    "worker {i}: {} tasks accepted, {} rejected, {} tokens; per task: compute \
                     {:.1} ms, overhead {:.1} ms (claim {:.1}, weights {:.1}, data {:.1}, \
                     encode {:.1}, upload+apply {:.1})",
                    r.tasks_accepted,
                    r.tasks_rejected,
                    r.tokens,
                    per(t.compute),
                    per(t.overhead()),
                    per(t.claim),
                    per(t.weights),
                    per(t.data),
                    per(t.encode),
                    per(t.upload)
                );
                tasks += r.tasks_accepted;
                timing.add(&r.timing);
            }
            Ok(Err(e)) => failures.push(format!("worker {i}: {e:#}")),
            Err(_) => failures.push(format!("worker {i} panicked")),
        }
    }
    let train_seconds = started.elapsed().as_secs_f64();
    // The coordinator's side of the same phases, from its latency histograms.
    let exposition = service.coordinator.metrics();
    let coordinator_ms = serde_json::json!({
        "claim": mean_ms(&exposition, "bitnet_claim_seconds"),
        "update_decode": mean_ms(&exposition, "bitnet_update_decode_seconds"),
        "update_apply": mean_ms(&exposition, "bitnet_update_apply_seconds"),
    });
    eprintln!(
        "coordinator: per claim {:.1} ms (waiting for the round included); per update decode \
         {:.1} ms, receipt to step or round {:.1} ms",
        mean_ms(&exposition, "bitnet_claim_seconds"),
        mean_ms(&exposition, "bitnet_update_decode_seconds"),
        mean_ms(&exposition, "bitnet_update_apply_seconds")
    );
    let status = service.coordinator.status().unwrap_or(status);
    writeln!(metrics, "{}", serde_json::to_value(&status)?)?;
    let checkpoint = write_checkpoint(&config, &service, &status)?;
    service.stop();
    println!(
        "trained {} tokens in {:.0}s: weight version {}, recent loss {}, checkpoint {}",
        status.tasks.done_tokens,
        started.elapsed().as_secs_f64(),
        status.weight_version,
        status.recent_loss.map(|l| format!("{l:.4}")).unwrap_or_else(|| "-".into()),
        checkpoint.display()
    );
    if !failures.is_empty() {
        bail!("{}", failures.join("; "));
    }
    if status.tasks.finished() {
        let mut run = serde_json::Map::new();
        run.insert("trainer".into(), "bitnet run".into());
        run.insert("tokens_trained_are".into(), "example tokens of the shards (no padding)".into());
        run.insert("mode".into(), serde_json::to_value(config.train.mode)?);
        run.insert("codec".into(), config.codec.kind.clone().into());
        run.insert("weight_codec".into(), config.weight_codec.kind.clone().into());
        run.insert("local_workers".into(), workers.into());
        run.insert("threads_per_worker".into(), config.train.threads.into());
        run.insert("weight_version".into(), status.weight_version.into());
        run.insert("updates_applied".into(), status.updates_applied.into());
        run.insert("updates_rejected".into(), status.updates_rejected.into());
        run.insert("train_seconds".into(), train_seconds.into());
        let per = |x: f64| 1000.0 * x / tasks.max(1) as f64;
        run.insert(
            "per_task_ms".into(),
            serde_json::json!({
                "compute": per(timing.compute),
                "overhead": per(timing.overhead()),
                "claim": per(timing.claim),
                "weights": per(timing.weights),
                "data": per(timing.data),
                "encode": per(timing.encode),
                "upload_and_apply": per(timing.upload),
            }),
        );
        run.insert("coordinator_mean_ms".into(), coordinator_ms);
        eprintln!("evaluating on the validation split");
        let summary = super::eval::write_run_summary(&checkpoint, &config.run.dir, run)?;
        println!(
            "{}; written to {}",
            super::eval::summary_line(&summary),
            config.run.dir.join("summary.json").display()
        );
    }
    Ok(())
}

/// Mean of histogram `name` in a Prometheus exposition, in milliseconds (0 when absent).
fn mean_ms(exposition: &str, name: &str) -> f64 {
    let value = |suffix: &str| {
        let key = format!("{name}_{suffix} ");
        exposition
            .lines()
            .find_map(|l| l.strip_prefix(&key))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let count = value("count");
    if count > 0.0 { 1000.0 * value("sum") / count } else { 0.0 }
}
