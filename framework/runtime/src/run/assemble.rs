//! Assembling a coordinator and workers from a run config: every component is built by name
//! through the registry.

use crate::config::{ComponentSpec, RunConfig, TrainMode};
use crate::coordinator::{Coordinator, CoordinatorParts, Corpus, TaskShape};
use crate::run;
use crate::worker::WorkerParts;
use bitnet_framework::codec::GradientCodec;
use bitnet_framework::context::BuildContext;
use bitnet_framework::coordinator_store::CoordinatorStore;
use bitnet_framework::model::ModelKernel;
use bitnet_framework::optim::Optimizer;
use bitnet_framework::protocol::CoordinatorClient;
use bitnet_framework::registry::{BuildError, Registry, SlotObject};
use bitnet_framework::staleness::StalenessPolicy;
use bitnet_framework::store::WeightStore;
use bitnet_framework::transport::Transport;
use bitnet_framework::weights::WeightCodec;
use std::sync::Arc;

/// Errors assembling a distributed run.
#[derive(Debug, thiserror::Error)]
pub enum AssembleError {
    /// A component failed to build.
    #[error("[{key}] {source}")]
    Build {
        /// Config key of the slot.
        key: &'static str,
        /// Cause.
        source: BuildError,
    },
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

fn build<T: ?Sized + SlotObject>(
    registry: &Registry,
    key: &'static str,
    spec: &ComponentSpec,
    ctx: &BuildContext,
) -> Result<Box<T>, AssembleError> {
    registry
        .build::<T>(&spec.kind, &spec.options, ctx)
        .map_err(|source| AssembleError::Build { key, source })
}

/// The model kernel and the build context with its layout.
pub fn kernel_and_context(
    config: &RunConfig,
    registry: &Registry,
) -> Result<(Box<dyn ModelKernel>, BuildContext), AssembleError> {
    let kernel = run::build_kernel(config, registry)
        .map_err(|source| AssembleError::Build { key: "kernel", source })?;
    let ctx = run::build_context(config).with_layout(kernel.layout().clone());
    Ok((kernel, ctx))
}

/// Every problem that would stop a distributed run of `config` from starting, beyond what
/// [`run::plan`] checks: the `[coordinator]` section, and DiLoCo with a lossy weight download.
pub fn check_distributed(config: &RunConfig, registry: &Registry) -> Vec<String> {
    let shape = TaskShape::from_train(&config.train, config.model.seq_len);
    let mut problems = config.coordinator.validate_for(&shape);
    if config.coordinator.schedule_unit_tokens > 0 && config.train.token_budget == 0 {
        problems.push(
            "coordinator.schedule_unit_tokens needs train.token_budget (the schedule spans \
             token_budget / schedule_unit_tokens steps)"
                .into(),
        );
    }
    if config.train.mode == TrainMode::Diloco {
        let ctx = run::build_context(config);
        if let Ok(codec) = registry.build::<dyn WeightCodec>(
            &config.weight_codec.kind,
            &config.weight_codec.options,
            &ctx,
        ) && !codec.is_lossless()
        {
            problems.push(format!(
                "[weight_codec] {}",
                crate::coordinator::lossy_diloco(codec.wire_id())
            ));
        }
    }
    problems
}

/// Builds the coordinator store named in the config.
pub fn build_store(
    config: &RunConfig,
    registry: &Registry,
) -> Result<Arc<dyn CoordinatorStore>, AssembleError> {
    let ctx = run::build_context(config);
    build::<dyn CoordinatorStore>(registry, "coordinator_store", &config.coordinator_store, &ctx)
        .map(Arc::from)
}

/// Builds the transport named in the config.
pub fn build_transport(
    config: &RunConfig,
    registry: &Registry,
) -> Result<Box<dyn Transport>, AssembleError> {
    build::<dyn Transport>(registry, "transport", &config.transport, &run::build_context(config))
}

/// Builds and starts a coordinator for `config` serving `corpus`, over `store`.
pub fn build_coordinator(
    config: &RunConfig,
    registry: &Registry,
    store: Arc<dyn CoordinatorStore>,
    corpus: Arc<dyn Corpus>,
) -> Result<Arc<Coordinator>, AssembleError> {
    let parts = coordinator_parts(config, registry, store, corpus)?;
    let shape = TaskShape::from_train(&config.train, config.model.seq_len);
    Coordinator::start(parts, config.coordinator.clone(), shape)
        .map_err(|e| AssembleError::Other(e.to_string()))
}

/// The components of a coordinator for `config` (see [`build_coordinator`]), to adjust before
/// [`Coordinator::start`]: a test hands it a weight store opened with its own credentials.
pub fn coordinator_parts(
    config: &RunConfig,
    registry: &Registry,
    store: Arc<dyn CoordinatorStore>,
    corpus: Arc<dyn Corpus>,
) -> Result<CoordinatorParts, AssembleError> {
    let (kernel, ctx) = kernel_and_context(config, registry)?;
    let ctx = ctx.with_total_steps(crate::coordinator::schedule_steps(config));
    let layout = kernel.layout().clone();
    let mut initial_params = vec![0.0f32; layout.total_params()];
    kernel
        .init_params(config.train.seed, &mut initial_params)
        .map_err(|e| AssembleError::Other(format!("initialising parameters: {e}")))?;
    let parts = CoordinatorParts {
        layout,
        initial_params,
        optimizer: build::<dyn Optimizer>(registry, "optimizer", &config.optimizer, &ctx)?,
        staleness: build::<dyn StalenessPolicy>(registry, "staleness", &config.staleness, &ctx)?,
        codec: build::<dyn GradientCodec>(registry, "codec", &config.codec, &ctx)?,
        weight_codec: build::<dyn WeightCodec>(
            registry,
            "weight_codec",
            &config.weight_codec,
            &ctx,
        )?,
        snapshots: Arc::from(build::<dyn WeightStore>(
            registry,
            "weight_store",
            &config.weight_store,
            &ctx,
        )?),
        store,
        corpus,
    };
    Ok(parts)
}

/// Builds a worker's components around an authenticated `client`.
pub fn build_worker_parts(
    config: &RunConfig,
    registry: &Registry,
    client: Box<dyn CoordinatorClient>,
) -> Result<WorkerParts, AssembleError> {
    let (kernel, ctx) = kernel_and_context(config, registry)?;
    let ctx = ctx.with_total_steps(crate::coordinator::schedule_steps(config));
    let inner_optimizer = match config.train.mode {
        TrainMode::Diloco => Some(build::<dyn Optimizer>(
            registry,
            "inner_optimizer",
            &config.inner_optimizer,
            &ctx,
        )?),
        TrainMode::AsyncSgd => None,
    };
    Ok(WorkerParts {
        client,
        codec: build::<dyn GradientCodec>(registry, "codec", &config.codec, &ctx)?,
        weight_codec: build::<dyn WeightCodec>(
            registry,
            "weight_codec",
            &config.weight_codec,
            &ctx,
        )?,
        kernel,
        inner_optimizer,
    })
}
