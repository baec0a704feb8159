//! `bitnet`: train BitNet b1.58 ternary language models on a fleet of CPU machines.

mod commands;

use clap::{Parser, Subcommand};

/// Train BitNet b1.58 ternary language models on ordinary CPU machines.
#[derive(Debug, Parser)]
#[command(name = "bitnet", version, about, long_about = None, propagate_version = true)]
struct Cli {
    /// Log filter (tracing `EnvFilter` syntax), e.g. `info` or `bitnet=debug`.
    #[arg(long, global = true, env = "BITNET_LOG", default_value = "info")]
    log: String,

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
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&cli.log)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Plugins(args) => commands::plugins::run(args),
        Command::Config(cmd) => commands::config::run(cmd),
        Command::Run(args) => commands::run::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
