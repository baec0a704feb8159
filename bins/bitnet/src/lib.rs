//! `bitnet`: train BitNet b1.58 ternary language models on a fleet of CPU machines.
//!
//! The command line is a library so that a user's own crate can be its own `bitnet`, with
//! plugins of its own linked in and no fork of this repository:
//!
//! ```ignore
//! use my_plugin as _; // linking the crate registers its plugins
//! fn main() -> std::process::ExitCode {
//!     bitnet_cli::main()
//! }
//! ```
//!
//! `plugins/example-custom` is a compiled template of exactly that.

pub mod commands;
pub mod logging;
pub mod memory;

use clap::{Parser, Subcommand};

/// Train BitNet b1.58 ternary language models on ordinary CPU machines.
#[derive(Debug, Parser)]
#[command(name = "bitnet", version, about, long_about = None, propagate_version = true)]
struct Cli {
    /// Log filter (tracing `EnvFilter` syntax), e.g. `info` or `bitnet_runtime=debug`
    /// [default: `RUST_LOG`, else `info`]. A filter that does not parse is refused.
    #[arg(long, global = true, env = "BITNET_LOG")]
    log: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List every registered plugin by slot.
    Plugins(commands::plugins::Args),
    /// Inspect run configurations.
    #[command(subcommand)]
    Config(commands::config::ConfigCommand),
    /// Run a config: validate it (`--dry-run`) or train.
    Run(commands::run::Args),
    /// Serve a coordinator (queue, weights, auth) until Ctrl-C or SIGTERM.
    Coordinator(commands::coordinator::Args),
    /// Train for a coordinator until stopped.
    Worker(commands::worker::Args),
    /// Make TLS certificates for a coordinator (a private CA and a server certificate).
    #[command(subcommand)]
    Certs(commands::certs::CertsCommand),
    /// Manage worker credentials (add, rotate, revoke, list).
    #[command(subcommand)]
    Keys(commands::keys::KeysCommand),
    /// Manage console operators (add, remove, list).
    #[command(subcommand)]
    Admin(commands::admin::AdminCommand),
    /// Add tasks covering the corpus (or a token budget) to a coordinator's queue.
    SeedTasks(commands::seed_tasks::Args),
    /// Train a model in this process (token shards or a plain token file).
    Train(commands::train::Args),
    /// Measure training throughput and peak memory.
    #[command(subcommand)]
    Bench(commands::bench::BenchCommand),
    /// Write inference weights (packed ternary) from a training checkpoint.
    Export(commands::export::Args),
    /// Generate the synthetic TruckMate corpus.
    GenerateCorpus(commands::data::GenerateArgs),
    /// Train the config's tokenizer and write checksummed token shards.
    TokenizeCorpus(commands::data::TokenizeArgs),
    /// Loss, perplexity and intent/slot accuracy of a checkpoint on a held-out split.
    Eval(commands::eval::Args),
    /// Print the intent, slots and confidence the model decodes for an utterance (or for each
    /// line of stdin).
    Classify(commands::classify::Args),
    /// Serve the model over HTTP (JSON intent API) until Ctrl-C or SIGTERM.
    Serve(commands::serve::Args),
}

/// Runs the `bitnet` command line: parses `std::env::args`, runs the command and returns the
/// process exit code (errors are printed to stderr). Every built-in plugin is linked, plus any
/// plugin crate the calling binary links.
pub fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let rust_log = std::env::var("RUST_LOG").ok();
    let filter = logging::resolve_filter(cli.log.as_deref(), rust_log.as_deref());
    if let Err(e) = logging::init(&filter) {
        eprintln!("error: {e:#}");
        return std::process::ExitCode::FAILURE;
    }
    let result = match cli.command {
        Command::Plugins(args) => commands::plugins::run(args),
        Command::Config(cmd) => commands::config::run(cmd),
        Command::Run(args) => commands::run::run(args),
        Command::Coordinator(args) => commands::coordinator::run(args),
        Command::Worker(args) => commands::worker::run(args),
        Command::Certs(cmd) => commands::certs::run(cmd),
        Command::Keys(cmd) => commands::keys::run(cmd),
        Command::Admin(cmd) => commands::admin::run(cmd),
        Command::SeedTasks(args) => commands::seed_tasks::run(args),
        Command::Train(args) => commands::train::run(args),
        Command::Bench(cmd) => commands::bench::run(cmd),
        Command::Export(args) => commands::export::run(args),
        Command::GenerateCorpus(args) => commands::data::generate(args),
        Command::TokenizeCorpus(args) => commands::data::tokenize(args),
        Command::Eval(args) => commands::eval::run(args),
        Command::Classify(args) => commands::classify::run(args),
        Command::Serve(args) => commands::serve::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
