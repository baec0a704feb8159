//! `bitnet coordinator`: serve the run's coordinator until Ctrl-C or SIGTERM.

use super::{ConfigArgs, registry_for};
use anyhow::Context;
use bitnet_runtime::run::service::{CoordinatorService, open_corpus};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Serve a coordinator: recover from the newest snapshot, seed the queue when it is empty,
/// and serve workers until Ctrl-C or SIGTERM (then snapshot and exit).
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
    let mut config = args.config.load()?.config;
    let registry = registry_for(&config)?;
    let corpus = open_corpus(&mut config, &registry)?;
    let stop = stop_flag()?;
    let service = CoordinatorService::start(&config, &registry, corpus, !args.no_seed)?;
    let endpoint = service.server.endpoint();
    let url_file = args.url_file.unwrap_or_else(|| config.run.dir.join("coordinator.url"));
    if let Some(dir) = url_file.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&url_file, format!("{endpoint}\n"))
        .with_context(|| format!("writing {}", url_file.display()))?;
    println!("coordinator listening on {endpoint} (vocab {})", config.model.vocab_size);
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("stopping: writing a final snapshot");
    let version = service.coordinator.version();
    service.stop();
    println!("stopped at weight version {version}");
    Ok(())
}
