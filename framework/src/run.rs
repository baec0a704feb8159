//! Run assembly: resolve every slot of a [`RunConfig`] against the registry, report every
//! problem at once, and build the components.

use crate::config::{ComponentSpec, RunConfig};
use crate::context::BuildContext;
use crate::model::ModelKernel;
use crate::registry::{BuildError, Registry, Slot};
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

/// Every problem found while validating a run.
#[derive(Debug, Clone, thiserror::Error)]
pub struct RunErrors(pub Vec<String>);

impl fmt::Display for RunErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the run is not valid ({} problem(s)):", self.0.len())?;
        for e in &self.0 {
            write!(f, "\n  - {e}")?;
        }
        Ok(())
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
/// and the model builds. All problems are reported together.
pub fn plan(config: &RunConfig, registry: &Registry) -> Result<RunPlan, RunErrors> {
    let mut errors = Vec::new();
    let mut slots = Vec::new();
    for (key, slot, spec) in slot_specs(config) {
        match registry.get(slot, &spec.kind) {
            Ok(decl) => {
                if let Err(e) = decl.check_options(&spec.options) {
                    errors.push(format!("[{key}] {e}"));
                }
                slots.push(PlannedSlot {
                    key,
                    slot,
                    plugin: spec.kind.clone(),
                    description: decl.description.to_string(),
                    origin: decl.origin.to_string(),
                });
            }
            Err(e) => errors.push(format!("[{key}] {e}")),
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
            Err(e) => errors.push(format!("[kernel] {e}")),
        }
    }
    if errors.is_empty() {
        Ok(RunPlan { slots, parameters, tensors })
    } else {
        Err(RunErrors(errors))
    }
}
