//! `bitnet run`

use super::{ConfigArgs, registry_for};
use bitnet_runtime::coordinator::{TaskShape, local_plan, schedule_steps};
use bitnet_runtime::run;
use bitnet_runtime::run::service::epoch_tokens;

/// Validate a run config, or run it.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    config: ConfigArgs,
    /// Validate everything and print the assembled run without training.
    #[arg(long)]
    dry_run: bool,
    /// Continue the run in `run.dir` from its latest state (queue, snapshot, checkpoints); a
    /// larger `train.token_budget` trains the difference. Keys changed since the run last
    /// started are listed; a changed model is refused.
    #[arg(long, conflicts_with = "fresh")]
    resume: bool,
    /// Delete the state of the run in `run.dir` (queue, snapshots, checkpoints, metrics,
    /// summary) and start over.
    #[arg(long)]
    fresh: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let loaded = args.config.load()?;
    let registry = registry_for(&loaded.config)?;
    // Every problem at once, each with the file or variable its key came from.
    let plan = run::plan_loaded(&loaded, &registry)?;
    let config = loaded.config;
    println!("run `{}`: preset `{}`", config.name, config.preset);
    let m = &config.model;
    println!(
        "model: d_model {} layers {} heads {} ffn_hidden {} seq_len {}",
        m.d_model, m.n_layers, m.n_heads, m.ffn_hidden, m.seq_len
    );
    // Planning built the kernel, which set the instruction-set cap.
    println!("instruction set: {}", bitnet_framework::isa::describe());
    // The run's model takes the tokenizer's vocabulary once the corpus is tokenized (printed
    // again then); until then the count is at the preset's.
    println!(
        "parameters: {} in {} tensors at the preset's vocabulary of {} (the tokenizer's size \
         replaces it)",
        group_thousands(plan.parameters),
        plan.tensors,
        m.vocab_size
    );
    for s in &plan.slots {
        let origin =
            if s.origin == "built-in" { String::new() } else { format!(" [{}]", s.origin) };
        println!("  {:<18} {:<16} {}{origin}", s.key, s.plugin, s.description);
    }
    let shape = TaskShape::from_train(&config.train, m.seq_len);
    println!("tasks: {}", config.coordinator.describe_tasks(&shape));
    println!(
        "schedule: {} steps (distributed runs; `bitnet train` takes train.steps = {}), token budget {}",
        schedule_steps(&config),
        config.train.steps,
        match config.train.token_budget {
            0 => "one epoch".to_string(),
            n => group_thousands(n as usize),
        }
    );
    let workers = config.run.local_workers.max(1);
    if args.dry_run {
        // A real run prints the plan once the corpus is prepared (run_local).
        let run_tokens = match config.train.token_budget {
            0 => epoch_tokens(&config).unwrap_or(0),
            budget => budget,
        };
        print_plan(&config, run_tokens);
    }
    println!(
        "local workers: {workers}, {} compute thread(s) each",
        super::run_local::worker_threads(&config)
    );
    if args.dry_run {
        println!("dry run: configuration is valid");
        return Ok(());
    }
    let mode = match (args.resume, args.fresh) {
        (true, _) => super::run_local::RunDirMode::Resume,
        (_, true) => super::run_local::RunDirMode::Fresh,
        _ => super::run_local::RunDirMode::New,
    };
    super::run_local::run(config, &registry, mode)
}

/// The async-sgd task plan with `[run] local_workers` sharing each round, and a warning when it
/// takes far fewer optimizer steps than the config names.
pub fn print_plan(config: &bitnet_runtime::config::RunConfig, run_tokens: u64) {
    if let Some(plan) = local_plan(config, run_tokens) {
        println!(
            "task plan ({} local worker(s)): {}",
            config.run.local_workers.max(1),
            plan.describe()
        );
        if let Some(w) = plan.warning() {
            eprintln!("warning: {w}");
        }
    }
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
