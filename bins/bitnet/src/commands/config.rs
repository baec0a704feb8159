//! `bitnet config ...`

use super::ConfigArgs;

/// Inspect run configurations.
#[derive(Debug, clap::Subcommand)]
pub enum ConfigCommand {
    /// Print the merged config and where each value came from (defaults, preset, file,
    /// environment, --set).
    Show {
        #[command(flatten)]
        config: ConfigArgs,
        /// Print the merged config as TOML instead of key = value # source lines.
        #[arg(long)]
        toml: bool,
    },
}

pub fn run(cmd: ConfigCommand) -> anyhow::Result<()> {
    match cmd {
        ConfigCommand::Show { config, toml: as_toml } => {
            let loaded = config.load()?;
            if as_toml {
                print!("{}", toml::to_string_pretty(&loaded.config)?);
                return Ok(());
            }
            let rows = loaded.provenance();
            let width = rows.iter().map(|(k, v, _)| k.len() + v.len() + 3).max().unwrap_or(0);
            for (key, value, source) in rows {
                let kv = format!("{key} = {value}");
                println!("{kv:<width$}  # {source}");
            }
            Ok(())
        }
    }
}
