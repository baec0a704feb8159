//! `bitnet train`: single-process training on token shards or a plain token file.

use super::{ConfigArgs, registry_for};
use anyhow::{Context, bail};
use bitnet_framework::checkpoint::CheckpointFile;
use bitnet_framework::config::{RunConfig, TrainMode};
use bitnet_framework::data::BatchSource;
use bitnet_framework::data::dir::{DataDir, Split};
use bitnet_framework::data::loader::{LoaderOptions, PackedLoader};
use bitnet_framework::data::shard::VocabHash;
use bitnet_framework::model::ModelKernel;
use bitnet_framework::optim::Optimizer;
use bitnet_framework::registry::Registry;
use bitnet_framework::run;
use bitnet_framework::tokenizer::Tokenizer;
use bitnet_framework::trainer::{
    StepMetrics, TokenFileSource, TrainObserver, TrainOptions, Trainer, latest_checkpoint,
};
use indicatif::{ProgressBar, ProgressStyle};
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
    /// No progress bar (log lines every `--log-every` steps instead).
    #[arg(long)]
    quiet: bool,
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

    let kernel: Box<dyn ModelKernel> =
        run::build_kernel(&config, &registry).context("building the model kernel")?;
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
        keep_checkpoints: 2,
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

    let mut progress = Progress::new(config.train.steps, trainer.step(), args.quiet);
    let summary = trainer.run(&mut progress)?;
    progress.finish();
    println!(
        "done: {} steps, {} tokens, last loss {:.4}{}{}",
        summary.steps,
        summary.tokens,
        summary.last_loss,
        summary.val_loss.map(|v| format!(", validation loss {v:.4}")).unwrap_or_default(),
        summary.checkpoint.map(|p| format!(", checkpoint {}", p.display())).unwrap_or_default()
    );
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

/// The progress bar (or, with `--quiet`, a log line every 10%).
struct Progress {
    bar: Option<ProgressBar>,
    total: u64,
    last_val: Option<f32>,
}

impl Progress {
    fn new(total: u64, done: u64, quiet: bool) -> Self {
        let bar = (!quiet).then(|| {
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
        Self { bar, total, last_val: None }
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
                if m.step.is_multiple_of(every) || m.step == self.total {
                    eprintln!("step {}/{}: {msg}", m.step, self.total);
                }
            }
        }
    }

    fn on_eval(&mut self, step: u64, loss: f32) {
        self.last_val = Some(loss);
        if let Some(bar) = &self.bar {
            bar.println(format!("step {step}: validation loss {loss:.4}"));
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
