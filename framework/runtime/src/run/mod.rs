//! The one place a run is assembled: [`plan`] resolves every slot of a [`RunConfig`] against
//! the registry and reports every problem at once; [`assemble`] builds the components of a
//! coordinator and its workers; [`service`] starts a coordinator (corpus, queue seeding,
//! recovery, transport). The `bitnet` commands and the test harness call these, nothing else.

pub mod assemble;
pub mod directory;
pub mod recorder;
pub mod replica;
pub mod service;
pub mod validation;

use crate::config::{ComponentSpec, LoadedConfig, RunConfig};
use bitnet_framework::context::BuildContext;
use bitnet_framework::model::ModelKernel;
use bitnet_framework::registry::{BuildError, Registry, Slot};
use std::fmt;

/// The slots a run config fills, with the config key of each.
pub fn slot_specs(config: &RunConfig) -> Vec<(&'static str, Slot, &ComponentSpec)> {
    vec![
        ("kernel", Slot::ModelKernel, &config.kernel),
        ("optimizer", Slot::Optimizer, &config.optimizer),
        ("inner_optimizer", Slot::Optimizer, &config.inner_optimizer),
        ("codec", Slot::GradientCodec, &config.codec),
        ("staleness", Slot::StalenessPolicy, &config.staleness),
        ("weight_store", Slot::WeightStore, &config.weight_store),
        ("weight_codec", Slot::WeightCodec, &config.weight_codec),
        ("tokenizer", Slot::Tokenizer, &config.tokenizer),
        ("transport", Slot::Transport, &config.transport),
        ("coordinator_store", Slot::CoordinatorStore, &config.coordinator_store),
    ]
}

/// One resolved slot of a plan.
#[derive(Debug, Clone)]
pub struct PlannedSlot {
    /// Config key (`codec`, `inner_optimizer`, ...).
    pub key: &'static str,
    /// Slot.
    pub slot: Slot,
    /// Plugin name.
    pub plugin: String,
    /// Plugin description.
    pub description: String,
    /// Where the plugin came from.
    pub origin: String,
}

/// A validated run: every slot resolved, the model built.
#[derive(Debug, Clone)]
pub struct RunPlan {
    /// Slots in config order.
    pub slots: Vec<PlannedSlot>,
    /// Parameters of the model.
    pub parameters: usize,
    /// Named tensors of the model.
    pub tensors: usize,
}

/// One problem with a run config: the key it concerns, what is wrong, and (when the config was
/// loaded with its sources) where that key was set.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    /// Dotted config key (`codec`, `coordinator.max_task_tokens`).
    pub key: String,
    /// What is wrong.
    pub message: String,
    /// Where the key's value came from (`defaults`, a file path, `--set`, an env variable).
    pub source: Option<String>,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] {}", self.key, self.message)?;
        if let Some(source) = &self.source {
            write!(f, " (set in {source})")?;
        }
        Ok(())
    }
}

/// Every problem found while validating a run, reported together.
#[derive(Debug, Clone, thiserror::Error)]
pub struct RunErrors(pub Vec<Problem>);

impl fmt::Display for RunErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the run is not valid ({} problem(s)):", self.0.len())?;
        for e in &self.0 {
            write!(f, "\n  - {e}")?;
        }
        Ok(())
    }
}

/// The dotted key a distributed-check message is about: its first word when that names a key
/// (`coordinator.max_task_tokens = 3 is ...`), else its `[slot]` prefix, else `coordinator`.
fn key_of(message: &str) -> (String, String) {
    if let Some(rest) = message.strip_prefix('[')
        && let Some((key, text)) = rest.split_once("] ")
    {
        return (key.to_string(), text.to_string());
    }
    let first = message.split_whitespace().next().unwrap_or_default();
    if first.contains('.') && first.chars().all(|c| c.is_ascii_lowercase() || c == '.' || c == '_')
    {
        (first.to_string(), message.to_string())
    } else {
        ("coordinator".to_string(), message.to_string())
    }
}

/// The build context a run config implies.
pub fn build_context(config: &RunConfig) -> BuildContext {
    BuildContext::new(config.model.clone())
        .with_run_dir(config.run.dir.clone())
        .with_seed(config.train.seed)
        .with_total_steps(config.train.steps)
        .with_threads(config.train.threads)
}

/// Builds the model kernel named in the config.
pub fn build_kernel(
    config: &RunConfig,
    registry: &Registry,
) -> Result<Box<dyn ModelKernel>, BuildError> {
    registry.build::<dyn ModelKernel>(
        &config.kernel.kind,
        &config.kernel.options,
        &build_context(config),
    )
}

/// Validates a run without starting it: every slot's plugin exists and accepts its options,
/// the model builds, and the distributed settings hold together
/// ([`assemble::check_distributed`]). All problems are reported together.
pub fn plan(config: &RunConfig, registry: &Registry) -> Result<RunPlan, RunErrors> {
    let mut errors: Vec<Problem> = Vec::new();
    let mut problem = |key: &str, message: String| {
        errors.push(Problem { key: key.to_string(), message, source: None });
    };
    for (key, message) in config.value_problems() {
        problem(&key, message);
    }
    let ctx = build_context(config);
    let mut slots = Vec::new();
    for (key, slot, spec) in slot_specs(config) {
        match registry.get(slot, &spec.kind) {
            Ok(decl) => {
                match decl.check_options(&spec.options, &ctx) {
                    Ok(()) => {}
                    // One problem per refused option, keyed `slot.option` when the message
                    // starts with one of the plugin's option names.
                    Err(BuildError::InvalidOptions { message, .. }) => {
                        let options = decl.default_config();
                        for part in message.split("; ") {
                            let first = part
                                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                                .next()
                                .unwrap_or_default();
                            if options.contains_key(first) || spec.options.contains_key(first) {
                                problem(
                                    &format!("{key}.{first}"),
                                    format!("{part} (plugin `{}`)", spec.kind),
                                );
                            } else {
                                problem(key, format!("plugin `{}`: {part}", spec.kind));
                            }
                        }
                    }
                    Err(e) => problem(key, e.to_string()),
                }
                slots.push(PlannedSlot {
                    key,
                    slot,
                    plugin: spec.kind.clone(),
                    description: decl.description.to_string(),
                    origin: decl.origin.to_string(),
                });
            }
            Err(e) => problem(key, e.to_string()),
        }
    }
    let mut parameters = 0;
    let mut tensors = 0;
    if registry.get(Slot::ModelKernel, &config.kernel.kind).is_ok() {
        match build_kernel(config, registry) {
            Ok(kernel) => {
                parameters = kernel.layout().total_params();
                tensors = kernel.layout().tensors().len();
            }
            Err(e) => problem("kernel", e.to_string()),
        }
    }
    for message in assemble::check_distributed(config, registry) {
        let (key, message) = key_of(&message);
        problem(&key, message);
    }
    if errors.is_empty() {
        Ok(RunPlan { slots, parameters, tensors })
    } else {
        Err(RunErrors(errors))
    }
}

/// [`plan`] for a loaded config: each problem also says where its key was set (the run config
/// file, an environment variable, `--set`), from the config's provenance. A slot's problem names
/// the first source, other than the built-in defaults, of any of its keys.
pub fn plan_loaded(loaded: &LoadedConfig, registry: &Registry) -> Result<RunPlan, RunErrors> {
    const DEFAULTS: &str = "built-in defaults";
    plan(&loaded.config, registry).map_err(|RunErrors(problems)| {
        let provenance = loaded.provenance();
        let source_of = |key: &str| -> Option<String> {
            let exact = loaded.source_of(key);
            if exact != "?" && exact != DEFAULTS {
                return Some(exact);
            }
            let prefix = format!("{key}.");
            provenance
                .iter()
                .find(|(k, _, source)| k.starts_with(&prefix) && source != DEFAULTS)
                .map(|(_, _, source)| source.clone())
        };
        RunErrors(
            problems
                .into_iter()
                .map(|mut p| {
                    p.source = source_of(&p.key);
                    p
                })
                .collect(),
        )
    })
}
