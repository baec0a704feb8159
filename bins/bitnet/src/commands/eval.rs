//! `bitnet eval`: loss, perplexity and TruckMate intent/slot accuracy of a checkpoint.

use super::registry_for;
use anyhow::Context;
use bitnet_framework::model::ModelKernel;
use bitnet_framework::tokenizer::Tokenizer;
use bitnet_runtime::config::RunConfig;
use bitnet_runtime::data::dir::{DataDir, Split};
use bitnet_runtime::data::loader::LoaderOptions;
use bitnet_runtime::run;
use bitnet_runtime::run::service::load_tokenizer;
use bitnet_truckmate::answer::DEFAULT_ABSTAIN_THRESHOLD;
use bitnet_truckmate::eval::{EvalSummary, evaluate_lines_parallel, mean_loss};
use bitnet_truckmate::eval_set::{self, SetReport};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};

/// Evaluate a checkpoint on a held-out split: loss and perplexity over the split's shards, then
/// greedy decoding of every example with the packed-ternary inference model, scored for intent
/// accuracy, slot exact match and invalid JSON. Prints a JSON summary.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Training checkpoint (`step-*.safetensors`; its stored run config chooses the model,
    /// tokenizer and data dir), or a coordinator's weight snapshot (`RUN/weights/v*.weights`,
    /// with the run's `run.toml` in RUN).
    #[arg(long, value_name = "CKPT")]
    checkpoint: PathBuf,
    /// Split to evaluate.
    #[arg(long, default_value = "validation")]
    split: Split,
    /// Data directory [default: the checkpoint's data.dir].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Decode only the first N examples (0 = all).
    #[arg(long, default_value_t = 0)]
    limit: usize,
    /// Skip the loss/perplexity pass.
    #[arg(long)]
    no_loss: bool,
    /// Windows per forward pass in the loss pass.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Also write the JSON summary to this file.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Evaluate a hand-written set instead of a split: one JSON object a line,
    /// `{"utterance": "...", "intent": "...", "slots": {...}}` (intent `none` for out of domain),
    /// e.g. plugins/truckmate/data/handwritten-eval.jsonl. Reports per-intent figures and a
    /// confusion matrix, and how often `classify` would abstain in and out of domain.
    #[arg(long, value_name = "FILE")]
    set: Option<PathBuf>,
    /// With --set: list every miss (line, utterance, expected, predicted) on stderr.
    #[arg(long, requires = "set")]
    show_errors: bool,
    /// With --set: the abstention threshold the report's `abstain` figures count at (`bitnet
    /// classify --threshold`), in [0, 1].
    #[arg(long, requires = "set", default_value_t = DEFAULT_ABSTAIN_THRESHOLD,
          value_parser = super::classify::parse_threshold)]
    threshold: f64,
}

/// A checkpoint's model, ready to evaluate.
pub struct LoadedModel {
    /// The run config stored in the checkpoint.
    pub config: RunConfig,
    /// The kernel it was trained with.
    pub kernel: Box<dyn ModelKernel>,
    /// fp32 parameters.
    pub params: Vec<f32>,
    /// The tokenizer of its data dir.
    pub tokenizer: Box<dyn Tokenizer>,
    /// Steps the checkpoint was trained for.
    pub step: u64,
    /// Tokens it was trained on.
    pub tokens: u64,
}

/// Opens a checkpoint (or a weight snapshot), rebuilds its kernel and loads its tokenizer.
pub fn load_model(checkpoint: &Path, data_dir: Option<&Path>) -> anyhow::Result<LoadedModel> {
    let mut trained = super::trained::Trained::open(checkpoint)?;
    let mut config = trained.config.clone();
    if let Some(d) = data_dir {
        config.data.dir = d.to_path_buf();
    }
    // Evaluate on every core of this machine, whatever share the training process had.
    config.train.threads = 0;
    let registry = registry_for(&config)?;
    let kernel = run::build_kernel(&config, &registry).context("building the model kernel")?;
    let params = trained.params(kernel.layout())?;
    let tokenizer = load_tokenizer(&config, &registry)?;
    anyhow::ensure!(
        tokenizer.vocab_size() <= config.model.vocab_size,
        "the tokenizer has {} ids but the model only {}: was the corpus re-tokenized after training?",
        tokenizer.vocab_size(),
        config.model.vocab_size
    );
    Ok(LoadedModel {
        config,
        kernel,
        params,
        tokenizer,
        step: trained.step,
        tokens: trained.tokens,
    })
}

fn bar(len: u64, what: &str) -> ProgressBar {
    let b = ProgressBar::new(len);
    b.set_style(
        ProgressStyle::with_template(&format!(
            "{what} {{pos}}/{{len}} [{{bar:30}}] {{msg}} eta {{eta}} ({{elapsed}})"
        ))
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    b
}

/// What [`evaluate_checkpoint`] measures.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// Data directory [default: the checkpoint's data.dir].
    pub data_dir: Option<PathBuf>,
    /// Split to evaluate.
    pub split: Split,
    /// Decode only the first N examples (0 = all).
    pub limit: usize,
    /// Skip the loss pass.
    pub no_loss: bool,
    /// Windows per forward pass in the loss pass.
    pub batch: usize,
}

/// Evaluates a checkpoint: the loss over every window of the split (packed in shard order,
/// unshuffled, so every run is scored on the same batches; mean per counted target), then
/// greedy decoding with the packed-ternary inference model, scored for intent accuracy, slot
/// exact match and invalid JSON. Returns the JSON summary.
pub fn evaluate_checkpoint(
    checkpoint: &Path,
    options: &EvalOptions,
) -> anyhow::Result<serde_json::Value> {
    let LoadedModel { config, mut kernel, params, tokenizer, step, tokens } =
        load_model(checkpoint, options.data_dir.as_deref())?;
    let dir = DataDir::new(config.data.dir.clone());
    let seq_len = config.model.seq_len;
    let kind = &config.tokenizer.kind;

    let loss = if options.no_loss {
        None
    } else {
        let mut loader = dir.loader(
            kind,
            options.split,
            tokenizer.as_ref(),
            LoaderOptions { shuffle: false, ..Default::default() },
        )?;
        let batches = loader.epoch_batches(options.batch, seq_len)?;
        let pb = bar(batches.len() as u64, "loss   ");
        let result =
            mean_loss(kernel.as_mut(), &params, &batches, &mut |i| pb.set_position(i as u64))?;
        pb.finish_and_clear();
        Some(result)
    };

    let mut lines = dir.read_split(options.split)?;
    if options.limit > 0 {
        lines.truncate(options.limit);
    }
    // The packed-ternary path: export inference weights and decode with them, one model per
    // compute thread (`train.threads`, 0 = every core), each on its share of the lines.
    let weights = kernel.export_inference(&params)?;
    let threads = match config.train.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
    .clamp(1, lines.len().max(1));
    let mut models =
        (0..threads).map(|_| kernel.load_inference(&weights)).collect::<Result<Vec<_>, _>>()?;
    let pb = bar(lines.len() as u64, "decode ");
    let tally = evaluate_lines_parallel(&mut models, tokenizer.as_ref(), &lines, seq_len, &|t| {
        pb.inc(1);
        pb.set_message(format!(
            "intent {:.1}% slots {:.1}%",
            100.0 * t.intent_accuracy(),
            100.0 * t.slot_exact_match()
        ));
    })?;
    pb.finish_and_clear();

    let summary = EvalSummary::new(options.split.name(), &tally, loss);
    let mut value = serde_json::to_value(&summary)?;
    if let Some(obj) = value.as_object_mut() {
        obj.insert("checkpoint".into(), checkpoint.display().to_string().into());
        obj.insert("step".into(), step.into());
        obj.insert("tokens_trained".into(), tokens.into());
    }
    Ok(value)
}

/// Writes `RUN_DIR/summary.json`, the figures runs are compared by, for `bitnet train` and
/// `bitnet run` alike: [`evaluate_checkpoint`] on the whole validation split (loss over every
/// window, 8 windows per pass; every example decoded), with `val_loss` naming the loss, plus
/// the `run` fields given (mode, wall time, ...). Returns the summary.
pub fn write_run_summary(
    checkpoint: &Path,
    run_dir: &Path,
    run: serde_json::Map<String, serde_json::Value>,
) -> anyhow::Result<serde_json::Value> {
    let options = EvalOptions {
        data_dir: None,
        split: Split::Validation,
        limit: 0,
        no_loss: false,
        batch: 8,
    };
    let mut value = evaluate_checkpoint(checkpoint, &options)?;
    if let Some(obj) = value.as_object_mut() {
        let loss = obj.get("loss").cloned().unwrap_or(serde_json::Value::Null);
        obj.insert("val_loss".into(), loss);
        obj.extend(run);
    }
    let path = run_dir.join("summary.json");
    std::fs::create_dir_all(run_dir)?;
    std::fs::write(&path, format!("{}\n", serde_json::to_string_pretty(&value)?))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(value)
}

/// One line of a summary for the console.
pub fn summary_line(v: &serde_json::Value) -> String {
    let f = |k: &str| v.get(k).and_then(serde_json::Value::as_f64);
    format!(
        "validation loss {}, intent accuracy {}, slot exact match {} ({} examples)",
        f("val_loss").map(|x| format!("{x:.4}")).unwrap_or_else(|| "-".into()),
        f("intent_accuracy").map(|x| format!("{:.2}%", 100.0 * x)).unwrap_or_else(|| "-".into()),
        f("slot_exact_match").map(|x| format!("{:.2}%", 100.0 * x)).unwrap_or_else(|| "-".into()),
        v.get("examples").and_then(serde_json::Value::as_u64).unwrap_or(0)
    )
}

/// Scores a checkpoint on a hand-written eval set (see [`bitnet_truckmate::eval_set`]).
pub fn evaluate_set(
    checkpoint: &Path,
    set: &Path,
    data_dir: Option<&Path>,
    threshold: f64,
) -> anyhow::Result<(serde_json::Value, SetReport)> {
    let meta = std::fs::metadata(set).with_context(|| format!("reading {}", set.display()))?;
    anyhow::ensure!(
        meta.len() <= eval_set::MAX_FILE_BYTES as u64,
        "{} is {} bytes; an eval set holds at most {}",
        set.display(),
        meta.len(),
        eval_set::MAX_FILE_BYTES
    );
    let text =
        std::fs::read_to_string(set).with_context(|| format!("reading {}", set.display()))?;
    let items = eval_set::parse_eval_set(&text).with_context(|| format!("{}", set.display()))?;
    let LoadedModel { config, kernel, params, tokenizer, step, tokens } =
        load_model(checkpoint, data_dir)?;
    let weights = kernel.export_inference(&params)?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, items.len());
    let mut models =
        (0..threads).map(|_| kernel.load_inference(&weights)).collect::<Result<Vec<_>, _>>()?;
    let pb = bar(items.len() as u64, "decode ");
    let outputs = eval_set::decode_all(
        &mut models,
        tokenizer.as_ref(),
        &items,
        config.model.seq_len,
        &|| pb.inc(1),
    )?;
    pb.finish_and_clear();
    let report = eval_set::score_outputs(&items, &outputs, threshold);
    let summary = EvalSummary::new("set", &report.tally, None);
    let mut value = serde_json::to_value(&summary)?;
    if let Some(obj) = value.as_object_mut() {
        obj.insert("set".into(), set.display().to_string().into());
        obj.insert("checkpoint".into(), checkpoint.display().to_string().into());
        obj.insert("step".into(), step.into());
        obj.insert("tokens_trained".into(), tokens.into());
        obj.insert("misses".into(), report.misses.len().into());
        obj.insert("confusion".into(), serde_json::to_value(&report.confusion)?);
        obj.insert("abstain".into(), serde_json::to_value(report.abstention)?);
        for key in ["split", "loss", "perplexity", "loss_targets"] {
            obj.remove(key);
        }
    }
    Ok((value, report))
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if let Some(set) = &args.set {
        let (value, report) =
            evaluate_set(&args.checkpoint, set, args.data_dir.as_deref(), args.threshold)?;
        if args.show_errors {
            for m in &report.misses {
                eprintln!(
                    "line {}: \"{}\"\n  expected  {}\n  predicted {}",
                    m.line, m.utterance, m.expected, m.predicted
                );
            }
        }
        return print_summary(&value, args.out.as_deref());
    }
    let options = EvalOptions {
        data_dir: args.data_dir.clone(),
        split: args.split,
        limit: args.limit,
        no_loss: args.no_loss,
        batch: args.batch,
    };
    let value = evaluate_checkpoint(&args.checkpoint, &options)?;
    print_summary(&value, args.out.as_deref())
}

/// Prints the JSON summary, and writes it to `out` when given.
fn print_summary(value: &serde_json::Value, out: Option<&Path>) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    println!("{text}");
    if let Some(out) = out {
        std::fs::write(out, format!("{text}\n"))
            .with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
}
