//! `bitnet generate-corpus` and `bitnet tokenize-corpus`: the TruckMate data pipeline.
//!
//! Both work in the run config's `data.dir`, laid out as described in
//! [`bitnet_runtime::data::dir`]: `{train,validation,test}.txt`, `tokenizer-<type>.json`,
//! `shards/<type>/<split>-NNNN.bin` (+ `.sha256`).

use super::{ConfigArgs, registry_for};
use anyhow::Context;
use bitnet_framework::registry::Registry;
use bitnet_runtime::config::RunConfig;
use bitnet_runtime::data::dir::{DataDir, Split, write_split_shards};
use bitnet_runtime::data::loader::{LoaderOptions, PackedLoader};
use bitnet_runtime::data::shard::ShardReader;
use bitnet_truckmate::corpus;
use std::path::PathBuf;
use std::sync::Arc;

/// Generate the synthetic TruckMate corpus (train/validation/test, 90/5/5).
#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Examples in all splits together [default: the config's data.corpus_count].
    #[arg(long)]
    count: Option<usize>,
    /// Generator seed; the output is byte-identical per seed [default: data.corpus_seed].
    #[arg(long)]
    seed: Option<u64>,
    /// Output directory [default: the config's data.dir].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Generator, `cab` or `templates-v1` [default: data.corpus_generator].
    #[arg(long)]
    generator: Option<String>,
}

/// The corpus options of `config`'s `[data]` section, checked.
pub fn corpus_options(config: &RunConfig) -> anyhow::Result<corpus::CorpusOptions> {
    let d = &config.data;
    corpus::CorpusOptions::parse(
        &d.corpus_generator,
        d.corpus_count,
        d.corpus_seed,
        d.corpus_none_share,
    )
    .context("data.corpus_generator / data.corpus_none_share")
}

/// Refuses a data directory whose corpus another generator setting made: its tokenizer and
/// shards would silently stand for the wrong corpus.
pub fn check_corpus(dir: &DataDir, options: &corpus::CorpusOptions) -> anyhow::Result<()> {
    if !dir.split_text(Split::Train).is_file() {
        return Ok(());
    }
    let wanted = options.describe();
    let found = bitnet_truckmate::read_manifest(dir)?;
    let fits = match &found {
        Some(found) => *found == wanted,
        // Corpora written before the manifest existed came from templates-v1.
        None => options.generator == corpus::Generator::TemplatesV1,
    };
    if !fits {
        anyhow::bail!(
            "{} holds a corpus made with `{}`, but the config asks for `{wanted}`: delete the \
             directory to regenerate it, or set data.dir to another one",
            dir.root().display(),
            found.as_deref().unwrap_or("templates-v1 (no corpus.txt)"),
        );
    }
    Ok(())
}

pub fn generate(args: GenerateArgs) -> anyhow::Result<()> {
    let config = args.config.load()?.config;
    let mut options = corpus_options(&config)?;
    options.count = args.count.unwrap_or(options.count);
    options.seed = args.seed.unwrap_or(options.seed);
    if let Some(name) = &args.generator {
        options.generator = name.parse()?;
    }
    let dir = DataDir::new(args.out.unwrap_or(config.data.dir));
    let c = options.generate()?;
    bitnet_truckmate::write_corpus(&dir, &c)?;
    bitnet_truckmate::write_manifest(&dir, &options)?;
    println!(
        "wrote {} examples ({}) to {}: train {}, validation {}, test {}",
        options.count,
        options.describe(),
        dir.root().display(),
        c.train.len(),
        c.validation.len(),
        c.test.len()
    );
    Ok(())
}

/// Train the config's tokenizer on the training split and write checksummed token shards.
#[derive(Debug, clap::Args)]
pub struct TokenizeArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Vocabulary size [default: the tokenizer's `max_vocab` option].
    #[arg(long)]
    max_vocab: Option<usize>,
    /// Largest shard, in tokens (examples are never split across shards).
    #[arg(long, default_value_t = DEFAULT_SHARD_TOKENS)]
    shard_tokens: usize,
}

/// Largest shard `tokenize-corpus` writes by default, in tokens.
pub const DEFAULT_SHARD_TOKENS: usize = 1 << 20;

use bitnet_runtime::run::service::build_tokenizer;

pub fn tokenize(args: TokenizeArgs) -> anyhow::Result<()> {
    let mut config = args.config.load()?.config;
    if let Some(n) = args.max_vocab {
        config.tokenizer.options.insert("max_vocab".into(), toml::Value::Integer(n as i64));
    }
    let registry = registry_for(&config)?;
    tokenize_corpus(&config, &registry, args.shard_tokens)
}

/// Generates the corpus when it is missing, trains the config's tokenizer on the training
/// split and writes checksummed shards of every split, printing a summary of each.
pub fn tokenize_corpus(
    config: &RunConfig,
    registry: &Registry,
    shard_tokens: usize,
) -> anyhow::Result<()> {
    let dir = DataDir::new(config.data.dir.clone());
    let kind = config.tokenizer.kind.clone();
    let options = corpus_options(config)?;
    check_corpus(&dir, &options)?;
    if !dir.split_text(Split::Train).is_file() {
        let c = options.generate()?;
        bitnet_truckmate::write_corpus(&dir, &c)?;
        bitnet_truckmate::write_manifest(&dir, &options)?;
        eprintln!("no corpus in {}: generated it ({})", dir.root().display(), options.describe());
    }
    let train = dir.read_split(Split::Train)?;
    let mut tok = build_tokenizer(config, registry)?;
    tok.train(&mut train.iter().cloned()).context("training the tokenizer")?;
    let tok_path = dir.tokenizer_file(&kind);
    tok.save(&tok_path)?;
    println!(
        "tokenizer `{kind}`: {} ids, hash {} -> {}",
        tok.vocab_size(),
        tok.content_hash(),
        tok_path.display()
    );
    let seq_len = config.model.seq_len;
    for split in Split::ALL {
        let lines = if split == Split::Train { train.clone() } else { dir.read_split(split)? };
        let written = write_split_shards(&dir, &kind, split, tok.as_ref(), &lines, shard_tokens)?;
        let tokens: u64 = written.iter().map(|w| w.tokens).sum();
        let shards: Vec<Arc<ShardReader>> = dir.open_split(
            &kind,
            split,
            &bitnet_runtime::data::VocabHash::from_hex(&tok.content_hash())
                .map_err(anyhow::Error::msg)?,
        )?;
        let mut loader = PackedLoader::new(
            shards,
            tok.special_tokens(),
            LoaderOptions { shuffle: false, ..Default::default() },
        )?;
        let skipped = loader.skipped_examples(seq_len)?;
        let windows = loader.windows_per_epoch(seq_len)?;
        let unk = tok.special_tokens().unk;
        let mut unk_count = 0usize;
        for l in &lines {
            unk_count += tok.encode(l)?.iter().filter(|&&t| t == unk).count();
        }
        println!(
            "{split:<10} {:>6} examples, {:>9} tokens ({:.1}/example), {} shard(s), {} windows of {seq_len}, {} [UNK], {} too long",
            lines.len(),
            tokens,
            tokens as f64 / lines.len().max(1) as f64,
            written.len(),
            windows,
            unk_count,
            skipped,
        );
    }
    Ok(())
}
