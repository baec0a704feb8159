//! `bitnet seed-tasks`: add tasks to a coordinator's queue.

use super::{ConfigArgs, registry_for};
use bitnet_runtime::coordinator::{Corpus, seed};
use bitnet_runtime::run::assemble::build_store;

/// Seed the queue of a (running or stopped) coordinator with tasks covering `--tokens` tokens
/// of the train shards (default: the config's `train.token_budget`, 0 = one epoch). Works on
/// the coordinator store directly, so it needs the same config.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    config: ConfigArgs,
    /// Tokens to cover (0 = one epoch).
    #[arg(long)]
    tokens: Option<u64>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let mut config = args.config.load()?.config;
    let registry = registry_for(&config)?;
    let corpus = bitnet_runtime::run::service::open_corpus(&mut config, &registry)?;
    let store = build_store(&config, &registry)?;
    let tokens = args.tokens.unwrap_or(config.train.token_budget);
    let tasks = seed::plan_tasks(&corpus.shards(), tokens, config.coordinator.seed_chunk_tokens);
    let ids = store.add_tasks(&tasks)?;
    let covered: u64 = tasks.iter().map(|t| t.tokens).sum();
    println!("seeded {} tasks covering {covered} tokens", ids.len());
    Ok(())
}
