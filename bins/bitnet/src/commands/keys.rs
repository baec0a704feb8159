//! `bitnet keys`: per-worker client credentials in the coordinator store.

use super::{ConfigArgs, registry_for};
use anyhow::Context;
use bitnet_framework::transport::Credentials;
use bitnet_runtime::auth::{self as secrets};
use bitnet_runtime::run::assemble::build_store;
use std::path::PathBuf;

/// Manage worker credentials (stored argon2-hashed; rotating or revoking a key invalidates
/// that client's outstanding tokens at once).
#[derive(Debug, clap::Subcommand)]
pub enum KeysCommand {
    /// Create a client and print its secret (shown once).
    Add {
        #[command(flatten)]
        config: ConfigArgs,
        /// Client id [default: a random `worker-XXXXXXXXXXXX`].
        #[arg(long)]
        id: Option<String>,
        /// Also write the credentials as JSON to this file (mode 0600), for `bitnet worker`.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Replace a client's secret and print the new one.
    Rotate {
        #[command(flatten)]
        config: ConfigArgs,
        /// Client id.
        #[arg(long)]
        id: String,
        /// Also write the credentials as JSON to this file.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Revoke a client.
    Revoke {
        #[command(flatten)]
        config: ConfigArgs,
        /// Client id.
        #[arg(long)]
        id: String,
    },
    /// List clients.
    List {
        #[command(flatten)]
        config: ConfigArgs,
    },
}

/// Writes credentials as JSON, readable by the owner only.
pub fn write_credentials(path: &std::path::Path, c: &Credentials) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, serde_json::to_string_pretty(c)?)
        .with_context(|| format!("writing {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

fn store_of(
    config: &ConfigArgs,
) -> anyhow::Result<std::sync::Arc<dyn bitnet_framework::coordinator_store::CoordinatorStore>> {
    let config = config.load()?.config;
    let registry = registry_for(&config)?;
    Ok(build_store(&config, &registry)?)
}

fn issue(
    id: String,
    out: Option<PathBuf>,
    rotate: bool,
    config: &ConfigArgs,
) -> anyhow::Result<()> {
    let store = store_of(config)?;
    let secret = secrets::generate_secret();
    let hash = secrets::hash_secret(&secret).map_err(anyhow::Error::msg)?;
    let record =
        if rotate { store.rotate_client(&id, &hash)? } else { store.add_client(&id, &hash)? };
    let creds = Credentials { client_id: id, client_secret: secret };
    println!("client_id     {}", creds.client_id);
    println!("client_secret {}", creds.client_secret);
    println!("generation    {}", record.generation);
    if let Some(path) = out {
        write_credentials(&path, &creds)?;
        println!("written to {}", path.display());
    }
    Ok(())
}

pub fn run(cmd: KeysCommand) -> anyhow::Result<()> {
    match cmd {
        KeysCommand::Add { config, id, out } => {
            issue(id.unwrap_or_else(|| secrets::generate_client_id("worker")), out, false, &config)
        }
        KeysCommand::Rotate { config, id, out } => issue(id, out, true, &config),
        KeysCommand::Revoke { config, id } => {
            let r = store_of(&config)?.revoke_client(&id)?;
            println!("revoked {} (generation {})", r.id, r.generation);
            Ok(())
        }
        KeysCommand::List { config } => {
            for c in store_of(&config)?.clients()? {
                let state = if c.revoked { "revoked" } else { "active" };
                println!("{:<28} {state:<8} generation {}", c.id, c.generation);
            }
            Ok(())
        }
    }
}
