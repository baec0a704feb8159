//! Run configuration, layered with figment:
//! built-in defaults < preset < run config file < `BITNET_` environment < `--set key=value`.
//!
//! Every slot is a [`ComponentSpec`]: `type = "<plugin name>"` plus that plugin's options, which
//! the plugin itself validates when it is built.

pub mod coordinator;
pub mod worker;

pub use coordinator::CoordinatorSection;
pub use worker::WorkerSection;

use bitnet_framework::model::ModelConfig;
use bitnet_framework::preset;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// One slot's choice: a plugin name and its options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComponentSpec {
    /// Plugin name.
    #[serde(rename = "type")]
    pub kind: String,
    /// The plugin's options (validated by the plugin).
    #[serde(flatten)]
    pub options: toml::Table,
}

impl ComponentSpec {
    /// A spec naming `kind` with no options.
    pub fn named(kind: &str) -> Self {
        Self { kind: kind.to_string(), options: toml::Table::new() }
    }
}

pub use bitnet_framework::protocol::TrainMode;

/// Training hyper-parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainSection {
    /// Distribution mode.
    pub mode: TrainMode,
    /// Sequences per optimizer step.
    pub batch_size: usize,
    /// Optimizer steps to train for (single process).
    pub steps: u64,
    /// Tokens to train on in all (distributed runs); 0 = one epoch.
    pub token_budget: u64,
    /// Base seed (initialisation, shuffling).
    pub seed: u64,
    /// Compute threads per trainer (0 = all cores).
    pub threads: usize,
    /// Evaluate on the validation split every this many steps (0 = only at the end).
    pub eval_every: u64,
    /// Write a checkpoint every this many steps (0 = only at the end).
    pub checkpoint_every: u64,
    /// Periodic checkpoints to keep; older ones are deleted (0 = keep all).
    pub keep_checkpoints: usize,
    /// DiLoCo: local inner steps per task.
    pub inner_steps: usize,
}

impl Default for TrainSection {
    fn default() -> Self {
        Self {
            mode: TrainMode::AsyncSgd,
            batch_size: 8,
            steps: 1000,
            token_budget: 0,
            seed: 1234,
            threads: 0,
            eval_every: 0,
            checkpoint_every: 0,
            keep_checkpoints: 2,
            inner_steps: 16,
        }
    }
}

/// Where the corpus, tokenizer and shards live.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataSection {
    /// Directory holding the corpus splits, the tokenizer and the shards.
    pub dir: PathBuf,
    /// Examples to generate when the corpus is missing.
    pub corpus_count: usize,
    /// Seed of the corpus generator.
    pub corpus_seed: u64,
    /// Corpus generator: `cab` (composed phrasings with out-of-domain `none` examples) or
    /// `templates-v1` (the first generator, unchanged, for comparison).
    pub corpus_generator: String,
    /// Share of out-of-domain (`none`) examples `cab` generates, 0 to 0.5 (`templates-v1` makes
    /// none).
    pub corpus_none_share: f64,
    /// Hand-written labelled utterances added to the training split only (never to validation
    /// or test): JSON-lines files in the form `bitnet eval --set` reads, paths relative to the
    /// working directory. Empty (the default): the generator's corpus alone.
    pub extra_train: Vec<PathBuf>,
    /// How many times each `extra_train` utterance is added, 1 to [`MAX_EXTRA_TRAIN_COPIES`].
    pub extra_train_copies: usize,
}

/// Most times `data.extra_train_copies` may add one hand-written utterance.
pub const MAX_EXTRA_TRAIN_COPIES: usize = 100;

impl Default for DataSection {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("runs/data/truckmate-cab"),
            corpus_count: 50_000,
            corpus_seed: 42,
            corpus_generator: "cab".to_string(),
            corpus_none_share: 0.1,
            extra_train: Vec::new(),
            extra_train_copies: 1,
        }
    }
}

/// Settings of `bitnet run` (one machine, the whole system).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunSection {
    /// Output directory of the run.
    pub dir: PathBuf,
    /// Workers started locally by `bitnet run`.
    pub local_workers: usize,
}

impl Default for RunSection {
    fn default() -> Self {
        Self { dir: PathBuf::from("runs/default"), local_workers: 2 }
    }
}

/// Plugins loaded from shared libraries.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginsSection {
    /// Paths of shared libraries to load (see [`crate::dynamic`]).
    pub dynamic: Vec<PathBuf>,
}

/// A whole run, after layering.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// Run name, for logs and the console.
    pub name: String,
    /// Model preset: a built-in name (`tiny`, `small`, `medium`, `large`) or a TOML file path.
    pub preset: String,
    /// Model dimensions (from the preset, overridable).
    pub model: ModelConfig,
    /// Model kernel slot.
    pub kernel: ComponentSpec,
    /// Optimizer slot (the coordinator's optimizer; DiLoCo's outer optimizer).
    pub optimizer: ComponentSpec,
    /// DiLoCo's inner optimizer, run by workers.
    pub inner_optimizer: ComponentSpec,
    /// Gradient codec slot.
    pub codec: ComponentSpec,
    /// Staleness policy slot.
    pub staleness: ComponentSpec,
    /// Weight store slot.
    pub weight_store: ComponentSpec,
    /// Weight download codec slot (how workers fetch weights).
    pub weight_codec: ComponentSpec,
    /// Tokenizer slot.
    pub tokenizer: ComponentSpec,
    /// Transport slot.
    pub transport: ComponentSpec,
    /// Coordinator store slot.
    pub coordinator_store: ComponentSpec,
    /// Training hyper-parameters.
    pub train: TrainSection,
    /// Data locations.
    pub data: DataSection,
    /// `bitnet run` settings.
    pub run: RunSection,
    /// Coordinator settings (task sizing, leases, snapshots).
    pub coordinator: CoordinatorSection,
    /// Worker settings (calibration, retries, caches).
    pub worker: WorkerSection,
    /// Dynamic plugins.
    pub plugins: PluginsSection,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            name: "bitnet".into(),
            preset: "small".into(),
            model: ModelConfig::default(),
            kernel: ComponentSpec::named("bitnet-b158"),
            optimizer: ComponentSpec::named("adamw"),
            inner_optimizer: ComponentSpec::named("adamw"),
            codec: ComponentSpec::named("int8-ef"),
            staleness: ComponentSpec::named("inverse-linear"),
            weight_store: ComponentSpec::named("fs"),
            weight_codec: ComponentSpec::named("fp32"),
            tokenizer: ComponentSpec::named("word-level"),
            transport: ComponentSpec::named("http"),
            coordinator_store: ComponentSpec::named("sqlite"),
            train: TrainSection::default(),
            data: DataSection::default(),
            run: RunSection::default(),
            coordinator: Default::default(),
            worker: Default::default(),
            plugins: PluginsSection::default(),
        }
    }
}

impl RunConfig {
    /// Values of the run's own sections that no run can train with, each with its dotted key:
    /// sizes and counts that must be positive, files that must exist. (The model's dimensions
    /// are checked when the config loads; plugins check their own options.)
    pub fn value_problems(&self) -> Vec<(String, String)> {
        let mut p = Vec::new();
        let mut positive = |key: &str, value: u64| {
            if value == 0 {
                p.push((key.to_string(), format!("{key} must be positive, is 0")));
            }
        };
        positive("train.batch_size", self.train.batch_size as u64);
        positive("train.steps", self.train.steps);
        positive("data.corpus_count", self.data.corpus_count as u64);
        if self.train.mode == TrainMode::Diloco {
            positive("train.inner_steps", self.train.inner_steps as u64);
        }
        for (i, path) in self.plugins.dynamic.iter().enumerate() {
            if !path.is_file() {
                p.push((
                    format!("plugins.dynamic[{i}]"),
                    format!("plugin library {} does not exist or is not a file", path.display()),
                ));
            }
        }
        if self.run.dir.is_file() {
            p.push((
                "run.dir".into(),
                format!("run.dir {} is a file, not a directory", self.run.dir.display()),
            ));
        }
        if self.data.dir.is_file() {
            p.push((
                "data.dir".into(),
                format!("data.dir {} is a file, not a directory", self.data.dir.display()),
            ));
        }
        for (i, path) in self.data.extra_train.iter().enumerate() {
            if !path.is_file() {
                p.push((
                    format!("data.extra_train[{i}]"),
                    format!("hand-written set {} does not exist or is not a file", path.display()),
                ));
            }
        }
        if !(1..=MAX_EXTRA_TRAIN_COPIES).contains(&self.data.extra_train_copies) {
            p.push((
                "data.extra_train_copies".into(),
                format!(
                    "data.extra_train_copies must be 1 to {MAX_EXTRA_TRAIN_COPIES}, is {}",
                    self.data.extra_train_copies
                ),
            ));
        }
        p
    }
}

/// Top-level keys; `BITNET_` variables whose first segment is not one of these are ignored, so
/// unrelated variables (credentials, log levels) never collide with the config.
const TOP_LEVEL_KEYS: &[&str] = &[
    "name",
    "preset",
    "model",
    "kernel",
    "optimizer",
    "inner_optimizer",
    "codec",
    "staleness",
    "weight_store",
    "weight_codec",
    "tokenizer",
    "transport",
    "coordinator_store",
    "train",
    "data",
    "run",
    "coordinator",
    "worker",
    "plugins",
];

/// Errors loading a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The run config file is missing or unreadable.
    #[error("cannot read run config {path}: {source}")]
    Read {
        /// Path.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The run config path names a directory.
    #[error(
        "run config {0} is a directory: give the path of a TOML file, e.g. configs/truckmate-small.toml"
    )]
    IsDirectory(String),
    /// A `--set` override is not `key=value`.
    #[error("invalid override `{0}`: expected key=value, e.g. train.batch_size=16")]
    BadOverride(String),
    /// The named preset does not exist.
    #[error("unknown preset `{name}`: built-in presets are {}, or give a path to a TOML file", .builtin.join(", "))]
    UnknownPreset {
        /// Name asked for.
        name: String,
        /// Built-in names.
        builtin: Vec<String>,
    },
    /// Figment's errors: they name the key, the expected type and the source.
    #[error("{}", format_figment(.0))]
    Invalid(Box<figment::Error>),
    /// Values that parse but are inconsistent.
    #[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
    Inconsistent(Vec<String>),
}

fn format_figment(e: &figment::Error) -> String {
    let all: Vec<String> = e.clone().into_iter().map(|e| e.to_string()).collect();
    if all.len() == 1 {
        format!("invalid configuration: {}", all[0])
    } else {
        format!("invalid configuration:\n  - {}", all.join("\n  - "))
    }
}

impl From<figment::Error> for ConfigError {
    fn from(e: figment::Error) -> Self {
        ConfigError::Invalid(Box::new(e))
    }
}

/// Where a configuration comes from.
#[derive(Debug, Clone, Default)]
pub struct ConfigSources {
    /// The run config file; `None` = embedded defaults only.
    pub file: Option<PathBuf>,
    /// Read `BITNET_*` environment variables.
    pub env: bool,
    /// `key=value` overrides, applied last, in order.
    pub overrides: Vec<String>,
}

impl ConfigSources {
    /// Defaults + `file` + environment.
    pub fn file(path: impl Into<PathBuf>) -> Self {
        Self { file: Some(path.into()), env: true, overrides: Vec::new() }
    }

    /// Adds `key=value` overrides.
    pub fn with_overrides(mut self, overrides: impl IntoIterator<Item = String>) -> Self {
        self.overrides.extend(overrides);
        self
    }
}

/// A provider that renames another provider's source, so provenance reads well.
struct Named<P> {
    name: String,
    inner: P,
}

impl<P: Provider> Provider for Named<P> {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.name.clone())
    }
    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        self.inner.data()
    }
}

/// A loaded configuration with the figment it came from (for provenance).
#[derive(Debug)]
pub struct LoadedConfig {
    /// The merged, typed configuration.
    pub config: RunConfig,
    figment: Figment,
}

impl LoadedConfig {
    /// Every leaf key with its value and the source it came from, sorted by key.
    pub fn provenance(&self) -> Vec<(String, String, String)> {
        let mut out = Vec::new();
        if let Some(dict) = self.figment.data().ok().and_then(|d| d.get(&Profile::Default).cloned())
        {
            for (k, v) in &dict {
                flatten(k, v, &mut out);
            }
        }
        out.sort();
        out.into_iter()
            .map(|(key, value)| {
                let source = self
                    .figment
                    .find_metadata(&key)
                    .map(|m| m.name.to_string())
                    .unwrap_or_else(|| "?".into());
                (key, value, source)
            })
            .collect()
    }

    /// Where `key` (dotted) was set, for error messages.
    pub fn source_of(&self, key: &str) -> String {
        self.figment.find_metadata(key).map(|m| m.name.to_string()).unwrap_or_else(|| "?".into())
    }
}

fn flatten(prefix: &str, v: &Value, out: &mut Vec<(String, String)>) {
    match v {
        Value::Dict(_, d) if !d.is_empty() => {
            for (k, v) in d {
                flatten(&format!("{prefix}.{k}"), v, out);
            }
        }
        other => out.push((prefix.to_string(), render(other))),
    }
}

fn render(v: &Value) -> String {
    match v {
        Value::Num(_, n) => match n.to_f64() {
            // Values typed f32 were widened; print the shortest form that reads back the same.
            Some(f) if (f as f32) as f64 == f && f.fract() != 0.0 => format!("{:?}", f as f32),
            _ => serde_json::to_string(v).unwrap_or_default(),
        },
        Value::Array(_, a) => format!("[{}]", a.iter().map(render).collect::<Vec<_>>().join(", ")),
        Value::Dict(_, _) => "{}".into(),
        other => serde_json::to_string(other).unwrap_or_default(),
    }
}

/// Parses `key=value`; the value is read as TOML (number, bool, string, array) and falls back to
/// a plain string.
fn parse_override(s: &str) -> Result<(String, toml::Value), ConfigError> {
    let (key, raw) = s.split_once('=').ok_or_else(|| ConfigError::BadOverride(s.into()))?;
    let key = key.trim();
    if key.is_empty() || key.split('.').any(str::is_empty) {
        return Err(ConfigError::BadOverride(s.into()));
    }
    let raw = raw.trim();
    let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    Ok((key.to_string(), value))
}

fn preset_provider(name: &str) -> Result<Box<dyn ProviderBox>, ConfigError> {
    if let Some(text) = preset::builtin(name) {
        return Ok(Box::new(Named {
            name: format!("preset `{name}` (presets/{name}.toml)"),
            inner: Toml::string(text),
        }));
    }
    let path = Path::new(name);
    if path.extension().is_some_and(|e| e == "toml") && path.is_file() {
        return Ok(Box::new(Named {
            name: format!("preset file {}", path.display()),
            inner: Toml::file(path),
        }));
    }
    Err(ConfigError::UnknownPreset {
        name: name.into(),
        builtin: preset::builtin_names().into_iter().map(String::from).collect(),
    })
}

/// Object-safe alias so presets from strings and files can share a code path.
trait ProviderBox: Provider + Send + Sync {}
impl<P: Provider + Send + Sync> ProviderBox for P {}

impl Provider for Box<dyn ProviderBox> {
    fn metadata(&self) -> Metadata {
        (**self).metadata()
    }
    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        (**self).data()
    }
}

fn layered(
    sources: &ConfigSources,
    preset: Option<Box<dyn ProviderBox>>,
) -> Result<Figment, ConfigError> {
    let mut fig = Figment::new().merge(Named {
        name: "built-in defaults".into(),
        inner: Serialized::defaults(RunConfig::default()),
    });
    if let Some(p) = preset {
        fig = fig.merge(p);
    }
    if let Some(path) = &sources.file {
        // Read it ourselves first: figment treats a missing file as empty, a typo should fail.
        let meta = std::fs::metadata(path)
            .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
        if meta.is_dir() {
            return Err(ConfigError::IsDirectory(path.display().to_string()));
        }
        fig = fig.merge(Named {
            name: format!("run config {}", path.display()),
            inner: Toml::file(path),
        });
    }
    if sources.env {
        fig = fig.merge(Env::prefixed("BITNET_").split("__").filter(|k| {
            let first = k.as_str().split('.').next().unwrap_or_default();
            TOP_LEVEL_KEYS.iter().any(|t| t.eq_ignore_ascii_case(first))
        }));
    }
    for o in &sources.overrides {
        let (key, value) = parse_override(o)?;
        fig = fig
            .merge(Named { name: format!("--set {key}"), inner: Serialized::default(&key, value) });
    }
    Ok(fig)
}

/// Loads and layers a run configuration.
pub fn load(sources: &ConfigSources) -> Result<LoadedConfig, ConfigError> {
    // The preset is chosen by the higher layers, so find its name first.
    let preset_name: String = layered(sources, None)?.extract_inner("preset")?;
    let fig = layered(sources, Some(preset_provider(&preset_name)?))?;
    let config: RunConfig = fig.extract()?;
    let problems = config.model.validate();
    if !problems.is_empty() {
        return Err(ConfigError::Inconsistent(problems));
    }
    Ok(LoadedConfig { config, figment: fig })
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closures return figment::Error by design
mod tests {
    use super::*;
    use figment::Jail;

    fn load_file(name: &str) -> Result<LoadedConfig, ConfigError> {
        load(&ConfigSources::file(name))
    }

    #[test]
    fn layers_apply_in_order() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "run.toml",
                r#"
                preset = "medium"
                [train]
                batch_size = 4
                steps = 10
                [model]
                seq_len = 64
                "#,
            )?;
            jail.set_env("BITNET_TRAIN__STEPS", "20");
            jail.set_env("BITNET_CLIENT_SECRET", "not-a-config-key");
            let loaded = load(
                &ConfigSources::file("run.toml")
                    .with_overrides(["train.batch_size=16".to_string()]),
            )
            .map_err(|e| e.to_string())?;
            let c = &loaded.config;
            assert_eq!(c.model.d_model, 512, "preset layer");
            assert_eq!(c.model.seq_len, 64, "file overrides preset");
            assert_eq!(c.train.steps, 20, "env overrides file");
            assert_eq!(c.train.batch_size, 16, "--set overrides env");
            assert_eq!(c.train.seed, TrainSection::default().seed, "defaults fill the rest");
            assert!(loaded.source_of("model.d_model").contains("preset `medium`"));
            assert!(loaded.source_of("model.seq_len").contains("run.toml"));
            assert!(loaded.source_of("train.batch_size").contains("--set"));
            Ok(())
        });
    }

    #[test]
    fn unknown_key_names_key_and_source() {
        Jail::expect_with(|jail| {
            jail.create_file("bad.toml", "[train]\nbatch_sise = 4\n")?;
            let err = load_file("bad.toml").expect_err("unknown key must fail").to_string();
            assert!(err.contains("batch_sise"), "{err}");
            assert!(err.contains("bad.toml"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn wrong_type_names_key() {
        Jail::expect_with(|jail| {
            jail.create_file("bad.toml", "[train]\nbatch_size = \"eight\"\n")?;
            let err = load_file("bad.toml").expect_err("wrong type must fail").to_string();
            assert!(err.contains("batch_size"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn unknown_preset_lists_builtins() {
        Jail::expect_with(|jail| {
            jail.create_file("p.toml", "preset = \"huge\"\n")?;
            let err = load_file("p.toml").expect_err("unknown preset").to_string();
            assert!(err.contains("huge") && err.contains("small"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn missing_file_is_an_error() {
        let err = load_file("/nonexistent/run.toml").expect_err("missing file").to_string();
        assert!(err.contains("/nonexistent/run.toml"), "{err}");
    }

    #[test]
    fn a_directory_is_not_a_config() {
        let dir = tempfile::tempdir().expect("temp dir");
        let err = load(&ConfigSources::file(dir.path())).expect_err("a directory").to_string();
        assert!(err.contains("is a directory"), "{err}");
    }

    #[test]
    fn zero_sizes_and_missing_files_are_problems_with_their_keys() {
        let mut c = RunConfig::default();
        assert!(c.value_problems().is_empty(), "{:?}", c.value_problems());
        c.train.batch_size = 0;
        c.train.steps = 0;
        c.plugins.dynamic = vec![PathBuf::from("/nonexistent/libplugin.so")];
        c.data.extra_train = vec![PathBuf::from("/nonexistent/extra.jsonl")];
        c.data.extra_train_copies = 0;
        let keys: Vec<String> = c.value_problems().into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            keys,
            [
                "train.batch_size",
                "train.steps",
                "plugins.dynamic[0]",
                "data.extra_train[0]",
                "data.extra_train_copies"
            ]
        );
    }

    #[test]
    fn inconsistent_model_is_refused() {
        Jail::expect_with(|jail| {
            jail.create_file("m.toml", "[model]\nn_heads = 7\n")?;
            let err = load_file("m.toml").expect_err("inconsistent").to_string();
            assert!(err.contains("n_heads"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn overrides_parse_toml_values() {
        assert_eq!(
            parse_override("train.steps=5").ok(),
            Some(("train.steps".into(), toml::Value::Integer(5)))
        );
        assert_eq!(
            parse_override("name=hello world").ok(),
            Some(("name".into(), toml::Value::String("hello world".into())))
        );
        assert!(parse_override("novalue").is_err());
        assert!(parse_override(".x=1").is_err());
    }
}
