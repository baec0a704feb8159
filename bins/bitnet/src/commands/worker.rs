//! `bitnet worker`: train for a coordinator until stopped.

use super::{ConfigArgs, registry_for};
use anyhow::{Context, bail};
use bitnet_framework::registry::Registry;
use bitnet_framework::transport::Credentials;
use bitnet_runtime::config::RunConfig;
use bitnet_runtime::run::assemble::{build_transport, build_worker_parts};
use bitnet_runtime::worker::{Worker, WorkerReport};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

/// Work for a coordinator: calibrate, register, then claim and train tasks until Ctrl-C or
/// SIGTERM (the current task is handed back).
///
/// Credentials come from `--credentials FILE` (JSON `{"client_id": ..., "client_secret": ...}`,
/// as written by `bitnet keys add --out`) or the `BITNET_CLIENT_ID` and `BITNET_CLIENT_SECRET`
/// environment variables.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    config: ConfigArgs,
    /// Coordinator URL, e.g. `https://10.0.0.5:8443`; for coordinator replicas, each
    /// replica's URL separated by commas (the next is tried when one does not answer).
    #[arg(long, value_name = "URL[,URL...]")]
    coordinator: String,
    /// Credentials file.
    #[arg(long, value_name = "FILE")]
    credentials: Option<PathBuf>,
    /// Exit once the coordinator's queue is finished.
    #[arg(long)]
    exit_when_done: bool,
}

/// Reads credentials from `file`, or else the environment.
pub fn load_credentials(file: Option<&Path>) -> anyhow::Result<Credentials> {
    if let Some(f) = file {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        return serde_json::from_str(&text).with_context(|| {
            format!("{}: expected {{\"client_id\", \"client_secret\"}}", f.display())
        });
    }
    match (std::env::var("BITNET_CLIENT_ID"), std::env::var("BITNET_CLIENT_SECRET")) {
        (Ok(client_id), Ok(client_secret)) => {
            Ok(Credentials { client_id, client_secret, ca_certificate: None })
        }
        _ => bail!(
            "no credentials: pass --credentials FILE or set BITNET_CLIENT_ID and BITNET_CLIENT_SECRET"
        ),
    }
}

/// Connects to `endpoint` and runs a worker until `stop` (or, with `exit_when_done` in the
/// config, until the queue is finished).
pub fn run_worker(
    config: &RunConfig,
    registry: &Registry,
    endpoint: &str,
    credentials: Credentials,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<WorkerReport> {
    let transport = build_transport(config, registry)?;
    let client = bitnet_runtime::worker::connect(
        transport.as_ref(),
        endpoint,
        &credentials,
        &config.worker,
        &stop,
    )
    .with_context(|| format!("connecting to {endpoint}"))?;
    let parts = build_worker_parts(config, registry, client)?;
    let threads = config.train.threads;
    let mut worker = Worker::new(parts, config.worker.clone(), threads, config.train.seed, stop);
    Ok(worker.run(config.train.batch_size, config.model.seq_len)?)
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let mut config = args.config.load()?.config;
    if args.exit_when_done {
        config.worker.exit_when_done = true;
    }
    let registry = registry_for(&config)?;
    // The model's vocabulary is the tokenizer's, when the data dir is available here; otherwise
    // the config's (`--set model.vocab_size=N`). The coordinator refuses a mismatched layout.
    if let Ok(tok) = bitnet_runtime::run::service::load_tokenizer(&config, &registry) {
        config.model.vocab_size = tok.vocab_size();
    }
    let credentials = load_credentials(args.credentials.as_deref())?;
    let stop = super::coordinator::stop_flag()?;
    let report = run_worker(&config, &registry, &args.coordinator, credentials, stop)?;
    println!(
        "worker done: {} tasks accepted, {} rejected, {} abandoned, {} tokens, calibrated {:.0} tokens/s; \
         downloaded {} bytes from the object store, {} from the coordinator ({} fallbacks)",
        report.tasks_accepted,
        report.tasks_rejected,
        report.tasks_abandoned,
        report.tokens,
        report.calibrated_tps,
        report.direct_bytes,
        report.coordinator_bytes,
        report.direct_fallbacks
    );
    Ok(())
}
