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
        /// CA certificate (PEM, from `bitnet certs init`) written into the credentials file, so
        /// the worker trusts that CA alone.
        #[arg(long, value_name = "PEM", requires = "out")]
        ca: Option<PathBuf>,
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
        /// CA certificate (PEM) written into the credentials file (see `keys add --ca`).
        #[arg(long, value_name = "PEM", requires = "out")]
        ca: Option<PathBuf>,
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
    // Owner-only from the first byte, and a symlink at `path` is replaced, never followed.
    bitnet_framework::files::write_private(path, serde_json::to_string_pretty(c)?.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
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
    ca: Option<PathBuf>,
    rotate: bool,
    config: &ConfigArgs,
) -> anyhow::Result<()> {
    let ca_certificate = match ca {
        Some(p) => {
            let pem = std::fs::read_to_string(&p)
                .with_context(|| format!("reading the CA certificate {}", p.display()))?;
            anyhow::ensure!(
                pem.contains("-----BEGIN CERTIFICATE-----"),
                "{} is not a PEM certificate",
                p.display()
            );
            Some(pem)
        }
        None => None,
    };
    let store = store_of(config)?;
    let secret = secrets::generate_secret();
    let hash = secrets::hash_secret(&secret).map_err(anyhow::Error::msg)?;
    let record =
        if rotate { store.rotate_client(&id, &hash)? } else { store.add_client(&id, &hash)? };
    let creds = Credentials { client_id: id, client_secret: secret, ca_certificate };
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
        KeysCommand::Add { config, id, out, ca } => {
            let id = id.unwrap_or_else(|| secrets::generate_client_id("worker"));
            issue(id, out, ca, false, &config)
        }
        KeysCommand::Rotate { config, id, out, ca } => issue(id, out, ca, true, &config),
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
