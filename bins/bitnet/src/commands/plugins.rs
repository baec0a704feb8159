//! `bitnet plugins`

use bitnet_framework::registry::Slot;
use std::path::PathBuf;

/// List every registered plugin by slot, with its description.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Also load these dynamic plugin libraries before listing.
    #[arg(long = "dynamic", value_name = "LIB")]
    dynamic: Vec<PathBuf>,
    /// Show each plugin's default options.
    #[arg(long)]
    defaults: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let mut registry = bitnet_plugins::registry()?;
    for lib in &args.dynamic {
        bitnet_runtime::dynamic::load(&mut registry, lib)?;
    }
    for slot in Slot::ALL {
        println!("{slot}:");
        let mut any = false;
        for p in registry.plugins(slot) {
            any = true;
            let origin =
                if p.origin == "built-in" { String::new() } else { format!("  [{}]", p.origin) };
            println!("  {:<18} {}{origin}", p.name, p.description);
            if args.defaults {
                let defaults = p.default_config();
                if !defaults.is_empty() {
                    for line in toml_lines(&defaults) {
                        println!("  {:<18}   {line}", "");
                    }
                }
            }
        }
        if !any {
            println!("  (none registered)");
        }
    }
    Ok(())
}

fn toml_lines(t: &toml::Table) -> Vec<String> {
    toml::to_string(t).unwrap_or_default().lines().map(str::to_string).collect()
}
