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
use bitnet_runtime::config::RunConfig;
use bitnet_runtime::coordinator::Corpus;
use bitnet_runtime::data::dir::{DataDir, Split};
use bitnet_runtime::metrics::{MetricsKind, MetricsSource};
use bitnet_runtime::run;
use bitnet_runtime::run::directory;
use bitnet_runtime::run::recorder::Recorder;
use bitnet_runtime::run::service::{CoordinatorService, open_corpus};
use bitnet_runtime::worker::TaskTiming;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// What to do with a run directory that already holds a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunDirMode {
    /// Refuse a used directory.
    New,
    /// Continue the run in it.
    Resume,
    /// Delete its state and start over.
    Fresh,
}

/// Seconds between plain progress lines when stderr is not a terminal.
pub const PLAIN_PROGRESS_SECS: u64 = 10;

/// Generates and tokenizes the corpus (as `bitnet tokenize-corpus` does) when the tokenizer or
/// the train shards are missing.
fn prepare_data(config: &RunConfig, registry: &Registry) -> anyhow::Result<()> {
    let dir = DataDir::new(config.data.dir.clone());
    super::data::check_corpus(&dir, &super::data::corpus_recipe(config)?)?;
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

/// The progress of a fleet run: a live bar on a terminal, else a plain line every
/// [`PLAIN_PROGRESS_SECS`] (and at the end).
pub struct FleetProgress {
    bar: Option<ProgressBar>,
    last_line: Option<Instant>,
}

impl FleetProgress {
    /// Progress towards `total` tokens.
    pub fn new(total: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} tokens {human_pos}/{human_len} [{bar:30}] {msg} eta {eta} ({elapsed})",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar
        });
        Self { bar, last_line: None }
    }

    /// Shows `s`.
    pub fn show(&mut self, s: &StatusReport, elapsed: Duration) {
        match &self.bar {
            Some(bar) => {
                bar.set_length(s.tasks.total_tokens);
                bar.set_position(s.tasks.done_tokens);
                bar.set_message(status_line(s));
            }
            None => {
                if self
                    .last_line
                    .is_none_or(|t| t.elapsed() >= Duration::from_secs(PLAIN_PROGRESS_SECS))
                {
                    self.last_line = Some(Instant::now());
                    eprintln!("{}", plain_line(s, elapsed));
                }
            }
        }
    }

    /// Prints a line above the bar (or plainly).
    pub fn println(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    /// Ends the display with `s`.
    pub fn finish(&self, s: &StatusReport, elapsed: Duration) {
        match &self.bar {
            Some(bar) => bar.finish(),
            None => eprintln!("{}", plain_line(s, elapsed)),
        }
    }
}

/// `progress: tokens 1,200/30,000 (4%) | loss ... | elapsed 12s`.
fn plain_line(s: &StatusReport, elapsed: Duration) -> String {
    let t = &s.tasks;
    format!(
        "progress: tokens {}/{} ({:.0}%) | {} | elapsed {:.0}s",
        super::run::group_thousands(t.done_tokens as usize),
        super::run::group_thousands(t.total_tokens as usize),
        100.0 * t.done_tokens as f64 / t.total_tokens.max(1) as f64,
        status_line(s),
        elapsed.as_secs_f64()
    )
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

/// Refuses a used run directory unless resuming, clears it for `--fresh`, and refuses
/// `--resume` where there is nothing to resume. Runs before the data is prepared.
fn check_run_dir(config: &RunConfig, mode: RunDirMode) -> anyhow::Result<()> {
    let dir = &config.run.dir;
    let used = directory::used_entries(dir);
    match mode {
        RunDirMode::New if !used.is_empty() => bail!(
            "run directory {} already holds a run ({}): pass --resume to continue it from its \
             latest state (a larger train.token_budget trains the difference), --fresh to delete \
             that state and start over, or set run.dir to another directory",
            dir.display(),
            used.join(", ")
        ),
        RunDirMode::Resume if used.is_empty() => {
            bail!("--resume: run directory {} holds no run to resume", dir.display())
        }
        RunDirMode::Fresh if !used.is_empty() => {
            directory::clear(dir)?;
            eprintln!(
                "--fresh: deleted the previous run's state in {} ({})",
                dir.display(),
                used.join(", ")
            );
        }
        _ => {}
    }
    Ok(())
}

/// Compares `config` (vocabulary resolved) with the configuration the run in its directory
/// last ran with: prints the keys that changed and refuses a changed model shape. Then records
/// `config` as the run's. Shared by `bitnet run --resume` and `bitnet coordinator`.
pub fn record_run_config(config: &RunConfig) -> anyhow::Result<()> {
    if let Some(before) = directory::read_state(&config.run.dir)? {
        let shape = directory::shape_changes(&before, config);
        if !shape.is_empty() {
            bail!(
                "the model changed since this run began ({}): its weights do not fit the new \
                 model; start over with --fresh (bitnet run) or another run.dir",
                join(&shape)
            );
        }
        let changed = directory::changes(&before, config);
        if !changed.is_empty() {
            eprintln!("config changed since this run last started: {}", join(&changed));
        }
    }
    directory::write_state(config)?;
    Ok(())
}

fn join(changes: &[directory::Change]) -> String {
    changes.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
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
pub fn run(mut config: RunConfig, registry: &Registry, mode: RunDirMode) -> anyhow::Result<()> {
    check_run_dir(&config, mode)?;
    prepare_data(&config, registry)?;
    let corpus = open_corpus(&mut config, registry)?;
    record_run_config(&config)?;
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
    // The coordinator keeps `train.threads` as configured (0 = every core): its optimizer step
    // and weight encoding run while the workers wait for the round, so they may use every
    // core. The workers share the cores out.
    let coordinator_config = config.clone();
    config.train.threads = worker_threads(&config);
    config.worker.exit_when_done = true;
    let stop = stop_flag()?;
    // Log records below WARN (the workers' per-task lines among them) go to the run's log file
    // while the progress display owns the terminal; warnings still reach stderr.
    let run_log = crate::logging::RunLog::start(&config.run.dir.join("run.log"))?;
    let service = CoordinatorService::start(&coordinator_config, registry, corpus, true)?;
    let first = service.coordinator.status()?;
    if first.tasks.finished() {
        service.stop();
        println!(
            "nothing to train: the run in {} has trained its {} tokens (weight version {}); \
             raise train.token_budget to train further",
            config.run.dir.display(),
            first.tasks.done_tokens,
            first.weight_version
        );
        return Ok(());
    }
    let endpoint = service.server.endpoint();
    eprintln!(
        "coordinator on {endpoint} (weight version {}); starting {workers} local worker(s); \
         logs in {}",
        service.coordinator.version(),
        run_log.path().display()
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

    let mut recorder = super::coordinator::with_validation(
        Recorder::new(&config, MetricsSource::Run)?,
        &config,
        registry,
    );
    let started = Instant::now();
    let mut progress = FleetProgress::new(first.tasks.total_tokens);
    let status = loop {
        let s = service.coordinator.status()?;
        progress.show(&s, started.elapsed());
        if let Some(path) = recorder.tick(&service.coordinator, &s)? {
            progress.println(&format!("checkpoint {}", path.display()));
        }
        let workers_done = handles.iter().all(|h| h.is_finished());
        if s.tasks.finished() || workers_done || stop.load(Ordering::SeqCst) {
            break s;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    progress.finish(&status, started.elapsed());
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
    drop(run_log);
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
    let coordinator = service.stop();
    let status = coordinator.status().unwrap_or(status);
    recorder.row(MetricsKind::Final, &status)?;
    let checkpoint = recorder.checkpoint(&coordinator, &status)?;
    println!(
        "trained {} tokens in {:.0}s: weight version {}, recent loss {}, checkpoint {}",
        status.tasks.done_tokens,
        train_seconds,
        status.weight_version,
        status.recent_loss.map(|l| format!("{l:.4}")).unwrap_or_else(|| "-".into()),
        checkpoint.display()
    );
    if !failures.is_empty() {
        bail!("{}", failures.join("; "));
    }
    if status.tasks.finished() {
        let mut run = super::coordinator::fleet_summary_fields(
            "bitnet run",
            &config,
            &status,
            train_seconds,
        )?;
        run.insert("local_workers".into(), workers.into());
        run.insert("threads_per_worker".into(), config.train.threads.into());
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
        println!("{}", super::coordinator::write_summary(&config, &checkpoint, run)?);
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
