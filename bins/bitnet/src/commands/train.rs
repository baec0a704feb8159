//! `bitnet train`: single-process training on token shards or a plain token file.

use super::run_local::PLAIN_PROGRESS_SECS;
use super::{ConfigArgs, registry_for};
use anyhow::{Context, bail};
use bitnet_framework::model::ModelKernel;
use bitnet_framework::optim::Optimizer;
use bitnet_framework::registry::Registry;
use bitnet_framework::tokenizer::Tokenizer;
use bitnet_runtime::checkpoint::CheckpointFile;
use bitnet_runtime::config::{RunConfig, TrainMode};
use bitnet_runtime::data::BatchSource;
use bitnet_runtime::data::dir::{DataDir, Split};
use bitnet_runtime::data::loader::{LoaderOptions, PackedLoader};
use bitnet_runtime::data::shard::VocabHash;
use bitnet_runtime::run;
use bitnet_runtime::trainer::{
    StepMetrics, TokenFileSource, TrainObserver, TrainOptions, Trainer, latest_checkpoint,
};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

/// Train a model in this process.
///
/// Data: `--tokens FILE` (little-endian u32 token ids, no header) or, without it, the train and
/// validation shards of the config's `data.dir` written by `bitnet tokenize-corpus`. Metrics go
/// to `RUN_DIR/metrics.jsonl`, checkpoints to `RUN_DIR/checkpoints/`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    config: ConfigArgs,
    /// Plain token file to train on (little-endian u32 ids); vocabulary size from the config.
    #[arg(long, value_name = "FILE")]
    tokens: Option<PathBuf>,
    /// Plain token file to validate on (with `--tokens`).
    #[arg(long, value_name = "FILE")]
    validation: Option<PathBuf>,
    /// Resume from a checkpoint file, or from the newest one in a directory.
    #[arg(long, value_name = "CKPT")]
    resume: Option<PathBuf>,
    /// Validation batches per evaluation.
    #[arg(long, default_value_t = 8)]
    eval_batches: usize,
    /// No progress bar: plain progress lines (every 10% of the steps and at least every 10
    /// seconds) instead, as when stderr is not a terminal.
    #[arg(long)]
    quiet: bool,
    /// Diagnostic: compute each step's gradient on the weights of N steps earlier, as an
    /// asynchronous worker whose update is N versions stale would (0 = off). Measures what
    /// staleness alone costs, without a fleet.
    #[arg(long, default_value_t = 0, value_name = "N")]
    stale_gradients: usize,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let loaded = args.config.load()?;
    let mut config = loaded.config;
    let registry = registry_for(&config)?;

    let (train, validation): Sources = match &args.tokens {
        Some(path) => token_file_sources(&config, path, args.validation.as_deref())?,
        None => {
            if args.validation.is_some() {
                bail!("--validation needs --tokens (shards bring their own validation split)");
            }
            shard_sources(&mut config, &registry)?
        }
    };

    let mut kernel: Box<dyn ModelKernel> =
        run::build_kernel(&config, &registry).context("building the model kernel")?;
    if args.stale_gradients > 0 {
        kernel = Box::new(StaleKernel::new(kernel, args.stale_gradients));
    }
    // A single process applies its own gradients; under DiLoCo that is the inner optimizer.
    let opt_spec = match config.train.mode {
        TrainMode::AsyncSgd => &config.optimizer,
        TrainMode::Diloco => &config.inner_optimizer,
    };
    let ctx = run::build_context(&config).with_layout(kernel.layout().clone());
    let optimizer: Box<dyn Optimizer> = registry
        .build::<dyn Optimizer>(&opt_spec.kind, &opt_spec.options, &ctx)
        .context("building the optimizer")?;

    let run_dir = config.run.dir.clone();
    let options = TrainOptions {
        steps: config.train.steps,
        batch_size: config.train.batch_size,
        seq_len: config.model.seq_len,
        seed: config.train.seed,
        eval_every: config.train.eval_every,
        eval_batches: args.eval_batches,
        checkpoint_every: config.train.checkpoint_every,
        checkpoint_dir: Some(run_dir.join("checkpoints")),
        keep_checkpoints: config.train.keep_checkpoints,
        metrics_path: Some(run_dir.join("metrics.jsonl")),
        kernel_name: config.kernel.kind.clone(),
        optimizer_name: opt_spec.kind.clone(),
        run_config: toml::to_string(&config).context("serialising the run config")?,
    };
    let params = kernel.layout().total_params();
    let mut trainer = Trainer::new(kernel, optimizer, train, validation, options)?;
    if let Some(resume) = &args.resume {
        let path = if resume.is_dir() {
            latest_checkpoint(resume)
                .or_else(|| latest_checkpoint(&resume.join("checkpoints")))
                .with_context(|| {
                    format!("no step-*.safetensors checkpoint in {}", resume.display())
                })?
        } else {
            resume.clone()
        };
        let file = CheckpointFile::open(&path)?;
        trainer.resume(&file)?;
        eprintln!("resumed from {} at step {}", path.display(), trainer.step());
    }
    eprintln!(
        "training `{}`: {} parameters, {} steps of {} x {} tokens, run dir {}",
        config.name,
        super::run::group_thousands(params),
        config.train.steps,
        config.train.batch_size,
        config.model.seq_len,
        run_dir.display()
    );

    let plain = args.quiet || !std::io::stderr().is_terminal();
    let mut progress = Progress::new(config.train.steps, trainer.step(), plain);
    let started = std::time::Instant::now();
    let summary = trainer.run(&mut progress)?;
    let train_seconds = started.elapsed().as_secs_f64();
    progress.finish();
    println!(
        "done: {} steps, {} tokens, last loss {:.4}{}{}",
        summary.steps,
        summary.tokens,
        summary.last_loss,
        summary.val_loss.map(|v| format!(", validation loss {v:.4}")).unwrap_or_default(),
        summary
            .checkpoint
            .as_ref()
            .map(|p| format!(", checkpoint {}", p.display()))
            .unwrap_or_default()
    );
    // Shard data has a validation split with examples to decode: score the run the same way
    // `bitnet run` does, into RUN_DIR/summary.json.
    if args.tokens.is_none()
        && let Some(checkpoint) = &summary.checkpoint
    {
        let mut run = serde_json::Map::new();
        run.insert("trainer".into(), "bitnet train".into());
        run.insert("mode".into(), "single-process".into());
        run.insert(
            "tokens_trained_are".into(),
            "window positions, steps x batch_size x seq_len (padding included)".into(),
        );
        run.insert("steps".into(), summary.steps.into());
        run.insert("train_seconds".into(), train_seconds.into());
        eprintln!("evaluating on the validation split");
        match super::eval::write_run_summary(checkpoint, &run_dir, run) {
            Ok(value) => println!(
                "{}; written to {}",
                super::eval::summary_line(&value),
                run_dir.join("summary.json").display()
            ),
            // Training succeeded and its checkpoint is written; only the scoring failed.
            Err(e) => eprintln!("warning: no summary.json: {e:#}"),
        }
    }
    Ok(())
}

/// The training source and the optional validation source.
type Sources = (Box<dyn BatchSource>, Option<Box<dyn BatchSource>>);

fn token_file_sources(
    config: &RunConfig,
    train: &Path,
    validation: Option<&Path>,
) -> anyhow::Result<Sources> {
    let vocab = config.model.vocab_size;
    let train = TokenFileSource::open(train, vocab, config.train.seed)?;
    let validation = match validation {
        Some(p) => Some(Box::new(TokenFileSource::open(p, vocab, 0)?.unshuffled()) as _),
        None => None,
    };
    Ok((Box::new(train), validation))
}

/// The data dir's train (shuffled) and validation (in order) shards, read with the config's
/// tokenizer, whose vocabulary size becomes the model's.
fn shard_sources(config: &mut RunConfig, registry: &Registry) -> anyhow::Result<Sources> {
    let dir = DataDir::new(config.data.dir.clone());
    let kind = config.tokenizer.kind.clone();
    let ctx = run::build_context(config);
    let mut tokenizer: Box<dyn Tokenizer> = registry
        .build::<dyn Tokenizer>(&kind, &config.tokenizer.options, &ctx)
        .context("building the tokenizer")?;
    let tok_file = dir.tokenizer_file(&kind);
    tokenizer.load(&tok_file).with_context(|| {
        format!(
            "loading {}: run `bitnet tokenize-corpus` first, or train on a plain token file \
             with --tokens FILE",
            tok_file.display()
        )
    })?;
    config.model.vocab_size = tokenizer.vocab_size();
    let vocab = VocabHash::from_hex(&tokenizer.content_hash())
        .map_err(|e| anyhow::anyhow!("tokenizer content hash: {e}"))?;
    let specials = tokenizer.special_tokens();
    let train_shards = dir.open_split(&kind, Split::Train, &vocab)?;
    let options =
        LoaderOptions { seed: config.train.seed, stream: 0, shuffle: true, mask_prompt: false };
    let train = PackedLoader::new(train_shards, specials, options)?;
    let validation = match dir.open_split(&kind, Split::Validation, &vocab) {
        Ok(shards) => {
            let options = LoaderOptions { shuffle: false, ..options };
            Some(Box::new(PackedLoader::new(shards, specials, options)?) as Box<dyn BatchSource>)
        }
        Err(e) => {
            tracing::warn!(error = %e, "no validation shards; training without validation");
            None
        }
    };
    Ok((Box::new(train), validation))
}

/// The progress bar, or (with `--quiet`, or when stderr is not a terminal) a plain line every
/// 10% of the steps and at least every [`PLAIN_PROGRESS_SECS`] seconds.
struct Progress {
    bar: Option<ProgressBar>,
    total: u64,
    last_val: Option<f32>,
    last_line: Option<std::time::Instant>,
}

impl Progress {
    fn new(total: u64, done: u64, plain: bool) -> Self {
        let bar = (!plain).then(|| {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} step {pos}/{len} [{bar:30}] {msg} eta {eta} ({elapsed})",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.set_position(done);
            bar
        });
        Self { bar, total, last_val: None, last_line: None }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}

impl TrainObserver for Progress {
    fn on_step(&mut self, m: &StepMetrics) {
        let val = self.last_val.map(|v| format!(" val {v:.4}")).unwrap_or_default();
        let msg =
            format!("loss {:.4}{val} | {:.0} tok/s | lr {:.2e}", m.loss, m.tokens_per_s, m.lr);
        match &self.bar {
            Some(bar) => {
                bar.set_position(m.step);
                bar.set_message(msg);
            }
            None => {
                let every = (self.total / 10).max(1);
                let due = self.last_line.is_none_or(|t| {
                    t.elapsed() >= std::time::Duration::from_secs(PLAIN_PROGRESS_SECS)
                });
                if due || m.step.is_multiple_of(every) || m.step == self.total {
                    self.last_line = Some(std::time::Instant::now());
                    eprintln!("progress: step {}/{}: {msg}", m.step, self.total);
                }
            }
        }
    }

    fn on_eval(&mut self, step: u64, loss: f32) {
        self.last_val = Some(loss);
        let line = format!("step {step}: validation loss {loss:.4}");
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    fn on_checkpoint(&mut self, step: u64, path: &Path) {
        let line = format!("step {step}: checkpoint {}", path.display());
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }
}

/// A kernel whose gradients are computed on the parameters it was given `delay` calls earlier
/// (the trainer calls `forward_backward` once per step), as if every update were `delay`
/// versions stale. Everything else is the wrapped kernel's.
struct StaleKernel {
    inner: Box<dyn ModelKernel>,
    delay: usize,
    history: std::collections::VecDeque<Vec<f32>>,
}

impl StaleKernel {
    fn new(inner: Box<dyn ModelKernel>, delay: usize) -> Self {
        Self { inner, delay, history: std::collections::VecDeque::new() }
    }
}

impl ModelKernel for StaleKernel {
    fn config(&self) -> &bitnet_framework::model::ModelConfig {
        self.inner.config()
    }

    fn layout(&self) -> &bitnet_framework::tensor::ParamLayout {
        self.inner.layout()
    }

    fn init_params(
        &self,
        seed: u64,
        params: &mut [f32],
    ) -> Result<(), bitnet_framework::model::KernelError> {
        self.inner.init_params(seed, params)
    }

    fn forward_backward(
        &mut self,
        params: &[f32],
        batch: &bitnet_framework::model::TokenBatch<'_>,
        grads: &mut [f32],
    ) -> Result<f32, bitnet_framework::model::KernelError> {
        let mut slot = if self.history.len() > self.delay {
            self.history.pop_front().unwrap_or_default()
        } else {
            Vec::new()
        };
        slot.clear();
        slot.extend_from_slice(params);
        self.history.push_back(slot);
        // The oldest kept copy: `delay` steps old once the history is full (fresher before).
        let stale = self.history.front().map_or(params, Vec::as_slice);
        self.inner.forward_backward(stale, batch, grads)
    }

    fn forward_loss(
        &mut self,
        params: &[f32],
        batch: &bitnet_framework::model::TokenBatch<'_>,
    ) -> Result<f32, bitnet_framework::model::KernelError> {
        self.inner.forward_loss(params, batch)
    }

    fn export_inference(
        &self,
        params: &[f32],
    ) -> Result<Vec<u8>, bitnet_framework::model::KernelError> {
        self.inner.export_inference(params)
    }

    fn load_inference(
        &self,
        bytes: &[u8],
    ) -> Result<
        Box<dyn bitnet_framework::model::InferenceModel>,
        bitnet_framework::model::KernelError,
    > {
        self.inner.load_inference(bytes)
    }
}
