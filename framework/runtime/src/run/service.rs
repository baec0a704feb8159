//! Starting a coordinator: its tokenizer and corpus, its queue, recovery from the newest
//! snapshot, and its server. `bitnet coordinator`, `bitnet run` and the test harness all start
//! one through [`CoordinatorService::start`].

use super::assemble::{AssembleError, build_coordinator, build_store, build_transport};
use crate::config::RunConfig;
use crate::coordinator::{Coordinator, Corpus, DirCorpus, seed};
use crate::data::DataError;
use crate::data::dir::{DataDir, Split};
use bitnet_framework::coordinator_store::{CoordinatorStore, StoreFailure};
use bitnet_framework::protocol::{ApiError, CoordinatorApi, Packing};
use bitnet_framework::registry::Registry;
use bitnet_framework::tokenizer::{Tokenizer, TokenizerError};
use bitnet_framework::transport::ServerHandle;
use std::path::PathBuf;
use std::sync::Arc;

/// Why a coordinator could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A component failed to build.
    #[error(transparent)]
    Assemble(#[from] AssembleError),
    /// The coordinator store failed.
    #[error(transparent)]
    Store(#[from] StoreFailure),
    /// The data directory is missing something or unreadable.
    #[error(transparent)]
    Data(#[from] DataError),
    /// The tokenizer file could not be loaded.
    #[error("loading {path}: {source}; run `bitnet tokenize-corpus` first")]
    Tokenizer {
        /// The tokenizer file.
        path: PathBuf,
        /// Cause.
        source: TokenizerError,
    },
    /// No train shards to serve.
    #[error("no train shards under {0}: run `bitnet tokenize-corpus` first")]
    NoShards(PathBuf),
    /// The shards are unreadable.
    #[error("opening the train shards: {0}")]
    Corpus(String),
    /// The transport could not start serving.
    #[error("starting the transport: {0}")]
    Transport(ApiError),
}

/// Builds the config's tokenizer, untrained.
pub fn build_tokenizer(
    config: &RunConfig,
    registry: &Registry,
) -> Result<Box<dyn Tokenizer>, AssembleError> {
    registry
        .build::<dyn Tokenizer>(
            &config.tokenizer.kind,
            &config.tokenizer.options,
            &super::build_context(config),
        )
        .map_err(|source| AssembleError::Build { key: "tokenizer", source })
}

/// Builds the config's tokenizer and loads it from the data directory.
pub fn load_tokenizer(
    config: &RunConfig,
    registry: &Registry,
) -> Result<Box<dyn Tokenizer>, ServiceError> {
    let mut tok = build_tokenizer(config, registry)?;
    let path = DataDir::new(config.data.dir.clone()).tokenizer_file(&config.tokenizer.kind);
    tok.load(&path).map_err(|source| ServiceError::Tokenizer { path, source })?;
    Ok(tok)
}

/// The train shards of the config's tokenizer, packed the way `bitnet train` packs them. Sets
/// the model's vocabulary size to the tokenizer's.
pub fn open_corpus(
    config: &mut RunConfig,
    registry: &Registry,
) -> Result<Arc<DirCorpus>, ServiceError> {
    let tokenizer = load_tokenizer(config, registry)?;
    config.model.vocab_size = tokenizer.vocab_size();
    let dir = DataDir::new(config.data.dir.clone());
    let paths = dir.shard_paths(&config.tokenizer.kind, Split::Train)?;
    if paths.is_empty() {
        return Err(ServiceError::NoShards(dir.root().to_path_buf()));
    }
    // Tokenized shards hold [BOS]-delimited examples: workers pack them like `bitnet train`.
    let specials = tokenizer.special_tokens();
    let corpus = DirCorpus::open(&paths)
        .map_err(ServiceError::Corpus)?
        .with_packing(Packing { bos: specials.bos, pad: specials.pad });
    Ok(Arc::new(corpus))
}

/// Tokens of one epoch of the config's train shards, read from their headers; `None` when
/// they are not tokenized yet (or unreadable).
pub fn epoch_tokens(config: &RunConfig) -> Option<u64> {
    let dir = DataDir::new(config.data.dir.clone());
    let paths = dir.shard_paths(&config.tokenizer.kind, Split::Train).ok()?;
    if paths.is_empty() {
        return None;
    }
    let corpus = DirCorpus::open(&paths).ok()?;
    Some(corpus.shards().iter().map(|s| s.tokens).sum())
}

/// Seeds the queue with tasks covering `budget` tokens of `corpus` (0 = one epoch) in chunks of
/// `chunk` tokens, when it holds no task yet. Returns the tasks added.
pub fn seed_if_empty(
    store: &dyn CoordinatorStore,
    corpus: &dyn Corpus,
    budget: u64,
    chunk: u64,
) -> Result<usize, StoreFailure> {
    if store.counts()?.total_tokens > 0 {
        return Ok(0);
    }
    let tasks = seed::plan_tasks(&corpus.shards(), budget, chunk);
    store.add_tasks(&tasks)?;
    Ok(tasks.len())
}

/// Tops the queue up to `budget` tokens of `corpus` (0 = one epoch) in chunks of `chunk`
/// tokens: a queue that already holds that many (done or not) is left alone, one that holds
/// fewer (a run resumed with a larger budget) gets tasks for the rest, continuing through the
/// corpus where the queue's tasks stopped. Returns the tasks added.
pub fn seed_to_budget(
    store: &dyn CoordinatorStore,
    corpus: &dyn Corpus,
    budget: u64,
    chunk: u64,
) -> Result<usize, StoreFailure> {
    let seeded = store.counts()?.total_tokens;
    let tasks = seed::plan_more_tasks(&corpus.shards(), seeded, budget, chunk);
    store.add_tasks(&tasks)?;
    Ok(tasks.len())
}

/// A started coordinator and its server.
pub struct CoordinatorService {
    /// The coordinator.
    pub coordinator: Arc<Coordinator>,
    /// The server; dropping it stops serving.
    pub server: Box<dyn ServerHandle>,
}

impl CoordinatorService {
    /// Assembles the coordinator of `config` (whose vocabulary size is already resolved),
    /// tops its queue up to the token budget when `seed` ([`seed_to_budget`]), recovers it from
    /// the newest snapshot and serves it over the config's transport.
    pub fn start(
        config: &RunConfig,
        registry: &Registry,
        corpus: Arc<dyn Corpus>,
        seed: bool,
    ) -> Result<Self, ServiceError> {
        let store = build_store(config, registry)?;
        Self::start_with_store(config, registry, corpus, seed, store)
    }

    /// [`Self::start`] over a store already open (a replica that just won the lease, with
    /// the store fenced by its epoch).
    pub fn start_with_store(
        config: &RunConfig,
        registry: &Registry,
        corpus: Arc<dyn Corpus>,
        seed: bool,
        store: Arc<dyn CoordinatorStore>,
    ) -> Result<Self, ServiceError> {
        if seed {
            let (budget, chunk) = (config.train.token_budget, config.coordinator.seed_chunk_tokens);
            let n = seed_to_budget(store.as_ref(), corpus.as_ref(), budget, chunk)?;
            if n > 0 {
                tracing::info!(tasks = n, "seeded the queue");
            }
        }
        let coordinator = build_coordinator(config, registry, Arc::clone(&store), corpus)?;
        let r = coordinator.recovery();
        tracing::info!(version = r.version, reset = r.tasks_reset, "recovered");
        let api: Arc<dyn CoordinatorApi> = Arc::clone(&coordinator) as Arc<dyn CoordinatorApi>;
        let mut ctx = crate::auth::serve_context(api, store);
        let admin = crate::admin::Admin::new(Arc::clone(&coordinator), config)
            .map_err(|e| ServiceError::Transport(ApiError::Internal(e)))?;
        ctx.admin = Some(Arc::new(admin));
        let server =
            build_transport(config, registry)?.serve(ctx).map_err(ServiceError::Transport)?;
        Ok(Self { coordinator, server })
    }

    /// Stops serving, then snapshots and stops the coordinator (which still answers for its
    /// final state, e.g. to write a checkpoint).
    pub fn stop(self) -> Arc<Coordinator> {
        self.server.shutdown();
        self.coordinator.shutdown();
        self.coordinator
    }

    /// Stops serving and stops the coordinator without writing anything more
    /// ([`Coordinator::abandon`]): for a replica that lost the leader lease.
    pub fn abandon(self) -> Arc<Coordinator> {
        self.server.shutdown();
        self.coordinator.abandon();
        self.coordinator
    }
}
