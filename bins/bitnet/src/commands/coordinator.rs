//! `bitnet coordinator`: serve the run's coordinator until Ctrl-C or SIGTERM.

use super::{ConfigArgs, registry_for};
use anyhow::Context;
use bitnet_framework::protocol::{CoordinatorApi, StatusReport};
use bitnet_framework::registry::Registry;
use bitnet_runtime::config::RunConfig;
use bitnet_runtime::coordinator::Coordinator;
use bitnet_runtime::metrics::{MetricsKind, MetricsSource};
use bitnet_runtime::run::recorder::Recorder;
use bitnet_runtime::run::replica::Replica;
use bitnet_runtime::run::service::{CoordinatorService, open_corpus};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Serve a coordinator: recover from the newest snapshot, top the queue up to the token
/// budget, and serve workers until Ctrl-C or SIGTERM. Writes `metrics.jsonl`, a checkpoint every
/// `coordinator.checkpoint_every_secs`, a checkpoint and `summary.json` (an evaluation) when the
/// budget is reached, and a snapshot and checkpoint at shutdown.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    config: ConfigArgs,
    /// Do not seed the queue, even when it is empty.
    #[arg(long)]
    no_seed: bool,
    /// Write the endpoint URL to this file once listening [default: RUN_DIR/coordinator.url].
    #[arg(long, value_name = "FILE")]
    url_file: Option<PathBuf>,
}

/// A flag set by Ctrl-C or SIGTERM.
pub fn stop_flag() -> anyhow::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            eprintln!("second interrupt: exiting now");
            std::process::exit(130);
        }
    })
    .context("installing the Ctrl-C / SIGTERM handler")?;
    Ok(stop)
}

pub fn run(args: Args) -> anyhow::Result<()> {
    crate::memory::return_large_frees_to_the_os();
    let loaded = args.config.load()?;
    let registry = registry_for(&loaded.config)?;
    // The values `bitnet run --dry-run` checks, refused here too, every problem at once.
    bitnet_runtime::run::plan_loaded(&loaded, &registry)?;
    let mut config = loaded.config;
    let corpus = open_corpus(&mut config, &registry)?;
    // Lists the keys changed since the run last started; refuses a changed model.
    super::run_local::record_run_config(&config)?;
    let stop = stop_flag()?;
    let url_file = args.url_file.unwrap_or_else(|| config.run.dir.join("coordinator.url"));
    if config.coordinator.leader_lease_secs > 0.0 {
        return run_replica(&config, &registry, corpus, !args.no_seed, &url_file, &stop);
    }
    let service = CoordinatorService::start(&config, &registry, corpus, !args.no_seed)?;
    let recorder = serve(&config, &registry, &service, &url_file, &stop, &|| false)?;
    eprintln!("stopping: writing a final snapshot and checkpoint");
    finish(recorder, service.stop())
}

/// One replica of a replicated coordinator (`coordinator.leader_lease_secs > 0`): follows until
/// it wins the lease, then leads until stopped. A leader that loses its lease exits with an
/// error (a supervisor such as systemd restarts it, as a follower).
fn run_replica(
    config: &RunConfig,
    registry: &Registry,
    corpus: Arc<bitnet_runtime::coordinator::DirCorpus>,
    seed: bool,
    url_file: &Path,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let replica = Replica::open(config, registry)?;
    println!(
        "coordinator replica {} following (lease {} s)",
        replica.holder(),
        config.coordinator.leader_lease_secs
    );
    let Some(won) = replica.follow(config, registry, stop)? else {
        println!("stopped while following");
        return Ok(());
    };
    println!("replica {} leads (epoch {})", replica.holder(), won.lease.epoch);
    let leading = replica.lead(config, registry, corpus, seed, won)?;
    let lost = || leading.lost();
    let recorder = serve(config, registry, &leading.service, url_file, stop, &lost)?;
    if leading.lost() {
        let coordinator = leading.stop();
        anyhow::bail!(
            "this replica lost the leader lease at weight version {} (another replica leads \
             now, or the database could not be reached in time); exiting so that it restarts \
             as a follower",
            coordinator.version()
        );
    }
    eprintln!("stopping: writing a final snapshot and checkpoint, then giving up the lease");
    finish(recorder, leading.stop())
}

/// Serves `service` until `stop` or `lost()`: records metrics and checkpoints, and evaluates
/// the run once its token budget is reached.
fn serve(
    config: &RunConfig,
    registry: &Registry,
    service: &CoordinatorService,
    url_file: &Path,
    stop: &AtomicBool,
    lost: &dyn Fn() -> bool,
) -> anyhow::Result<Recorder> {
    let endpoint = service.server.endpoint();
    if let Some(dir) = url_file.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(url_file, format!("{endpoint}\n"))
        .with_context(|| format!("writing {}", url_file.display()))?;
    println!("coordinator listening on {endpoint} (vocab {})", config.model.vocab_size);
    let mut recorder =
        with_validation(Recorder::new(config, MetricsSource::Coordinator)?, config, registry);
    // A queue finished before this session (a restart after the budget) has its summary.
    let mut summarised = service.coordinator.status()?.tasks.finished();
    while !stop.load(Ordering::SeqCst) && !lost() {
        let status = service.coordinator.status()?;
        // Serving goes on when a metrics line or a scheduled checkpoint cannot be written
        // (a full disk, say); the snapshots still hold the state.
        if let Err(e) = recorder.tick(&service.coordinator, &status) {
            tracing::warn!(error = %e, "writing the run's metrics or checkpoint");
        }
        if !summarised && status.tasks.finished() && status.tasks.total_tokens > 0 {
            summarised = true;
            recorder.row(MetricsKind::Final, &status)?;
            let checkpoint = recorder.checkpoint(&service.coordinator, &status)?;
            eprintln!(
                "token budget reached: evaluating {} on the validation split",
                checkpoint.display()
            );
            let fields = fleet_summary_fields(
                "bitnet coordinator",
                config,
                &status,
                recorder.elapsed().as_secs_f64(),
            )?;
            match write_summary(config, &checkpoint, fields) {
                Ok(line) => println!("{line}"),
                // The run's model is safe in the checkpoint; a failed evaluation is reported, and
                // `bitnet eval` can redo it.
                Err(e) => tracing::error!(error = %format!("{e:#}"), "evaluating the run"),
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(recorder)
}

/// The final metrics row and checkpoint of a stopped coordinator.
fn finish(mut recorder: Recorder, coordinator: Arc<Coordinator>) -> anyhow::Result<()> {
    let status = coordinator.status()?;
    recorder.row(MetricsKind::Final, &status)?;
    let checkpoint = recorder.checkpoint(&coordinator, &status)?;
    println!(
        "stopped at weight version {}; checkpoint {}",
        status.weight_version,
        checkpoint.display()
    );
    Ok(())
}

/// `recorder`, measuring the validation loss every `coordinator.eval_every_secs` when the data
/// directory has a validation split (a warning, and no periodic validation, when it has none).
pub fn with_validation(recorder: Recorder, config: &RunConfig, registry: &Registry) -> Recorder {
    if config.coordinator.eval_every_secs <= 0.0 {
        return recorder;
    }
    match bitnet_runtime::run::validation::Validator::open(config, registry) {
        Ok(v) => recorder.with_validator(v),
        Err(e) => {
            tracing::warn!("no validation during the run: {e}");
            recorder
        }
    }
}

/// The fields of `summary.json` that describe a fleet run (beside the evaluation), for
/// `bitnet coordinator` and `bitnet run` alike.
pub fn fleet_summary_fields(
    trainer: &str,
    config: &RunConfig,
    status: &StatusReport,
    train_seconds: f64,
) -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
    let mut run = serde_json::Map::new();
    run.insert("trainer".into(), trainer.into());
    run.insert("tokens_trained_are".into(), "example tokens of the shards (no padding)".into());
    run.insert("mode".into(), serde_json::to_value(config.train.mode)?);
    run.insert("codec".into(), config.codec.kind.clone().into());
    run.insert("weight_codec".into(), config.weight_codec.kind.clone().into());
    run.insert("weight_version".into(), status.weight_version.into());
    run.insert("updates_applied".into(), status.updates_applied.into());
    run.insert("updates_rejected".into(), status.updates_rejected.into());
    run.insert("train_seconds".into(), train_seconds.into());
    Ok(run)
}

/// Evaluates `checkpoint` into `run.dir/summary.json` with the `run` fields; returns the line
/// to print.
pub fn write_summary(
    config: &RunConfig,
    checkpoint: &Path,
    run: serde_json::Map<String, serde_json::Value>,
) -> anyhow::Result<String> {
    let summary = super::eval::write_run_summary(checkpoint, &config.run.dir, run)?;
    Ok(format!(
        "{}; written to {}",
        super::eval::summary_line(&summary),
        config.run.dir.join("summary.json").display()
    ))
}
