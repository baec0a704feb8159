//! One module per subcommand.

pub mod admin;
pub mod bench;
pub mod certs;
pub mod classify;
pub mod config;
pub mod coordinator;
pub mod data;
pub mod eval;
pub mod export;
pub mod inference;
pub mod keys;
pub mod plugins;
pub mod run;
pub mod run_local;
pub mod seed_tasks;
pub mod serve;
pub mod train;
pub mod trained;
pub mod worker;

use anyhow::Context;
use bitnet_framework::registry::Registry;
use bitnet_runtime::config::{ConfigSources, LoadedConfig, RunConfig};
use std::path::PathBuf;

/// Config file and overrides, shared by every subcommand that reads a run config.
#[derive(Debug, clap::Args)]
pub struct ConfigArgs {
    /// Run config (TOML). Without it, the embedded defaults are used.
    pub config: Option<PathBuf>,
    /// Override a key, e.g. `--set train.batch_size=16` (repeatable; applied last).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Ignore `BITNET_*` environment variables.
    #[arg(long)]
    pub no_env: bool,
}

impl ConfigArgs {
    /// Loads the layered config.
    pub fn load(&self) -> anyhow::Result<LoadedConfig> {
        let sources = ConfigSources {
            file: self.config.clone(),
            env: !self.no_env,
            overrides: self.overrides.clone(),
        };
        bitnet_runtime::config::load(&sources).with_context(|| match &self.config {
            Some(p) => format!("loading {}", p.display()),
            None => "loading the embedded defaults".to_string(),
        })
    }
}

/// The registry of built-in plugins plus the config's dynamic plugins.
pub fn registry_for(config: &RunConfig) -> anyhow::Result<Registry> {
    let mut registry = bitnet_plugins::registry()?;
    for path in &config.plugins.dynamic {
        let added = bitnet_runtime::dynamic::load(&mut registry, path)?;
        tracing::info!(library = %path.display(), plugins = ?added, "loaded dynamic plugin");
    }
    Ok(registry)
}
