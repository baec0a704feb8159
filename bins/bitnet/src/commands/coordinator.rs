//! `bitnet coordinator`: serve the run's coordinator until Ctrl-C or SIGTERM.

use super::{ConfigArgs, registry_for};
use anyhow::{Context, bail};
use bitnet_framework::config::RunConfig;
use bitnet_framework::coordinator::assemble::{build_coordinator, build_store, build_transport};
use bitnet_framework::coordinator::{Coordinator, Corpus, DirCorpus, seed};
use bitnet_framework::data::dir::{DataDir, Split};
use bitnet_framework::registry::Registry;
use bitnet_framework::transport::{
    CoordinatorApi, CoordinatorStore, Packing, ServeContext, ServerHandle,
};
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

/// The train shards of the config's tokenizer, and the tokenizer's vocabulary size (which
/// becomes the model's).
pub fn open_corpus(config: &mut RunConfig, registry: &Registry) -> anyhow::Result<Arc<DirCorpus>> {
    let tokenizer = super::data::load_tokenizer(config, registry)?;
    config.model.vocab_size = tokenizer.vocab_size();
    let dir = DataDir::new(config.data.dir.clone());
    let paths = dir.shard_paths(&config.tokenizer.kind, Split::Train)?;
    if paths.is_empty() {
        bail!("no train shards under {}: run `bitnet tokenize-corpus` first", dir.root().display());
    }
    // Tokenized shards hold [BOS]-delimited examples: workers pack them like `bitnet train`.
    let specials = tokenizer.special_tokens();
    let corpus = DirCorpus::open(&paths)
        .map_err(anyhow::Error::msg)?
        .with_packing(Packing { bos: specials.bos, pad: specials.pad });
    Ok(Arc::new(corpus))
}

/// Seeds the queue to the config's token budget when it holds no task yet; returns the tasks
/// added.
pub fn seed_if_empty(
    config: &RunConfig,
    store: &dyn CoordinatorStore,
    corpus: &dyn Corpus,
) -> anyhow::Result<usize> {
    if store.counts()?.total_tokens > 0 {
        return Ok(0);
    }
    let tasks = seed::plan_tasks(
        &corpus.shards(),
        config.train.token_budget,
        config.coordinator.seed_chunk_tokens,
    );
    store.add_tasks(&tasks)?;
    Ok(tasks.len())
}

/// A started coordinator and its server.
pub struct Service {
    /// The coordinator.
    pub coordinator: Arc<Coordinator>,
    /// The server; dropping it stops serving.
    pub server: Box<dyn ServerHandle>,
}

impl Service {
    /// Assembles, recovers and serves the coordinator of `config` (whose vocabulary size is
    /// already resolved).
    pub fn start(
        config: &RunConfig,
        registry: &Registry,
        corpus: Arc<dyn Corpus>,
        seed: bool,
    ) -> anyhow::Result<Self> {
        let store = build_store(config, registry)?;
        if seed {
            let n = seed_if_empty(config, store.as_ref(), corpus.as_ref())?;
            if n > 0 {
                tracing::info!(tasks = n, "seeded the queue");
            }
        }
        let coordinator = build_coordinator(config, registry, Arc::clone(&store), corpus)?;
        let r = coordinator.recovery();
        tracing::info!(version = r.version, reset = r.tasks_reset, "recovered");
        let api: Arc<dyn CoordinatorApi> = Arc::clone(&coordinator) as Arc<dyn CoordinatorApi>;
        let server = build_transport(config, registry)?
            .serve(ServeContext { api, store })
            .context("starting the transport")?;
        Ok(Self { coordinator, server })
    }

    /// Stops serving, then snapshots and stops the coordinator.
    pub fn stop(self) {
        self.server.shutdown();
        self.coordinator.shutdown();
    }
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
    let service = Service::start(&config, &registry, corpus, !args.no_seed)?;
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
