//! `bitnet run`

use super::{ConfigArgs, registry_for};
use bitnet_framework::run;

/// Validate a run config, or run it.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    config: ConfigArgs,
    /// Validate everything and print the assembled run without training.
    #[arg(long)]
    dry_run: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let config = args.config.load()?.config;
    let registry = registry_for(&config)?;
    let plan = run::plan(&config, &registry)?;
    println!("run `{}`: preset `{}`", config.name, config.preset);
    let m = &config.model;
    println!(
        "model: d_model {} layers {} heads {} ffn_hidden {} seq_len {} vocab {}",
        m.d_model, m.n_layers, m.n_heads, m.ffn_hidden, m.seq_len, m.vocab_size
    );
    println!("parameters: {} in {} tensors", group_thousands(plan.parameters), plan.tensors);
    for s in &plan.slots {
        let origin =
            if s.origin == "built-in" { String::new() } else { format!(" [{}]", s.origin) };
        println!("  {:<18} {:<16} {}{origin}", s.key, s.plugin, s.description);
    }
    if args.dry_run {
        println!("dry run: configuration is valid");
        return Ok(());
    }
    super::run_local::run(&args.config, config, &registry)
}

/// 6845696 -> "6,845,696".
pub fn group_thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
