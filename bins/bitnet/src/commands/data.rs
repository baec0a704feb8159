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
use bitnet_truckmate::corpus::extra::ExtraTrain;
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

/// What makes a data directory's corpus: the generator's options and the hand-written
/// utterances `data.extra_train` adds to its training split.
pub struct Recipe {
    /// The generator's options.
    pub options: corpus::CorpusOptions,
    /// Hand-written training lines, if the config names any.
    pub extra: Option<ExtraTrain>,
}

impl Recipe {
    /// The manifest line: the generator's options, then the extra files and their hashes.
    pub fn describe(&self) -> String {
        match &self.extra {
            Some(extra) => format!("{} {}", self.options.describe(), extra.describe()),
            None => self.options.describe(),
        }
    }

    /// Generates the splits and mixes the extra lines into the training split.
    pub fn generate(&self) -> anyhow::Result<corpus::Corpus> {
        let mut c = self.options.generate()?;
        if let Some(extra) = &self.extra {
            extra.mix_into(&mut c.train, self.options.seed);
        }
        Ok(c)
    }

    /// Writes the splits and the manifest to `dir`.
    pub fn write(&self, dir: &DataDir) -> anyhow::Result<corpus::Corpus> {
        let c = self.generate()?;
        bitnet_truckmate::write_corpus(dir, &c)?;
        bitnet_truckmate::write_manifest(dir, &self.describe())?;
        Ok(c)
    }
}

/// The corpus recipe of `config`'s `[data]` section, checked (the extra files are read).
pub fn corpus_recipe(config: &RunConfig) -> anyhow::Result<Recipe> {
    let d = &config.data;
    let options = corpus::CorpusOptions::parse(
        &d.corpus_generator,
        d.corpus_count,
        d.corpus_seed,
        d.corpus_none_share,
    )
    .context("data.corpus_generator / data.corpus_none_share")?;
    let extra = ExtraTrain::load(&d.extra_train, d.extra_train_copies)?;
    Ok(Recipe { options, extra })
}

/// Refuses a data directory whose corpus another recipe made: its tokenizer and shards would
/// silently stand for the wrong corpus.
pub fn check_corpus(dir: &DataDir, recipe: &Recipe) -> anyhow::Result<()> {
    if !dir.split_text(Split::Train).is_file() {
        return Ok(());
    }
    let wanted = recipe.describe();
    let found = bitnet_truckmate::read_manifest(dir)?;
    let fits = match &found {
        Some(found) => *found == wanted,
        // Corpora written before the manifest existed came from templates-v1.
        None => {
            recipe.options.generator == corpus::Generator::TemplatesV1 && recipe.extra.is_none()
        }
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
    let mut recipe = corpus_recipe(&config)?;
    recipe.options.count = args.count.unwrap_or(recipe.options.count);
    recipe.options.seed = args.seed.unwrap_or(recipe.options.seed);
    if let Some(name) = &args.generator {
        recipe.options.generator = name.parse()?;
    }
    let dir = DataDir::new(args.out.unwrap_or(config.data.dir));
    let c = recipe.write(&dir)?;
    let extra = match &recipe.extra {
        Some(e) => format!(
            " ({} of them {} hand-written utterances x {})",
            e.len() * e.copies,
            e.len(),
            e.copies
        ),
        None => String::new(),
    };
    println!(
        "wrote {} examples ({}) to {}: train {}{extra}, validation {}, test {}",
        c.train.len() + c.validation.len() + c.test.len(),
        recipe.describe(),
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
    let recipe = corpus_recipe(config)?;
    check_corpus(&dir, &recipe)?;
    if !dir.split_text(Split::Train).is_file() {
        recipe.write(&dir)?;
        eprintln!("no corpus in {}: generated it ({})", dir.root().display(), recipe.describe());
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
