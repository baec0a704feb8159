//! `bitnet admin`: operator accounts of the console and the admin API, in the run directory's
//! operators file (argon2 hashes, owner-only). A running coordinator reads the file at every
//! login, so changes apply at once; removing an operator ends their sessions.

use super::ConfigArgs;
use anyhow::Context;
use bitnet_runtime::admin::operators::{MIN_PASSWORD_CHARS, Operators, operators_path};
use std::io::BufRead;

/// Manage console operators.
#[derive(Debug, clap::Subcommand)]
pub enum AdminCommand {
    /// Add an operator. The password comes from stdin with `--password-stdin`; otherwise a
    /// random one is made and printed once.
    Add {
        #[command(flatten)]
        config: ConfigArgs,
        /// Operator name (A-Z, a-z, 0-9, `.`, `_`, `-`).
        #[arg(long)]
        name: String,
        /// Read the password from the first line of stdin.
        #[arg(long)]
        password_stdin: bool,
        /// Set a new password for an operator that exists.
        #[arg(long)]
        replace: bool,
    },
    /// Remove an operator.
    Remove {
        #[command(flatten)]
        config: ConfigArgs,
        /// Operator name.
        #[arg(long)]
        name: String,
    },
    /// List operators.
    List {
        #[command(flatten)]
        config: ConfigArgs,
    },
}

pub fn run(cmd: AdminCommand) -> anyhow::Result<()> {
    match cmd {
        AdminCommand::Add { config, name, password_stdin, replace } => {
            let path = operators_path(&config.load()?.config.run.dir);
            let (password, generated) = if password_stdin {
                let mut line = String::new();
                std::io::stdin().lock().read_line(&mut line).context("reading the password")?;
                (line.trim_end_matches(['\r', '\n']).to_string(), false)
            } else {
                (bitnet_runtime::auth::generate_secret()[..24].to_string(), true)
            };
            let mut ops = Operators::load(&path)?;
            ops.add(&name, &password, replace).with_context(|| {
                format!(
                    "adding operator `{name}` (passwords: at least {MIN_PASSWORD_CHARS} characters)"
                )
            })?;
            ops.save(&path)?;
            println!("operator `{name}` saved in {}", path.display());
            if generated {
                println!("password (shown once): {password}");
            }
        }
        AdminCommand::Remove { config, name } => {
            let path = operators_path(&config.load()?.config.run.dir);
            let mut ops = Operators::load(&path)?;
            ops.remove(&name)?;
            ops.save(&path)?;
            println!("operator `{name}` removed");
        }
        AdminCommand::List { config } => {
            let path = operators_path(&config.load()?.config.run.dir);
            let ops = Operators::load(&path)?;
            if ops.operators.is_empty() {
                println!("no operators in {} (add one with `bitnet admin add`)", path.display());
            }
            for (name, op) in &ops.operators {
                println!("{name}\tadded {} ms since the epoch", op.created_ms);
            }
        }
    }
    Ok(())
}
