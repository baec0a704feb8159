//! # bitnet-framework
//!
//! The core of bitnet: the slot traits every plugin implements, the plugin registry, the
//! coordinator protocol, the codec wire format and the conformance suites. It knows nothing of
//! HTTP, SQL, SIMD, files of weights or how a run is assembled (that is `bitnet-runtime`); a
//! plugin author needs only this crate.
//!
//! - Slots: [`model::ModelKernel`], [`optim::Optimizer`], [`codec::GradientCodec`],
//!   [`staleness::StalenessPolicy`], [`store::WeightStore`], [`weights::WeightCodec`],
//!   [`tokenizer::Tokenizer`], [`transport::Transport`] and
//!   [`coordinator_store::CoordinatorStore`].
//! - Plugins: implement [`registry::PluginConfig`] for a serde config type and register it with
//!   [`register_plugin!`]; configs choose it by name. Shared libraries declare themselves with
//!   [`export_dynamic_plugin!`].
//! - Conformance suites (feature `conformance`): [`codec::conformance`],
//!   [`weights::conformance`], [`store::conformance`], [`tokenizer::conformance`] and
//!   [`coordinator_store::conformance`], which every implementation of a slot runs.

pub mod admin;
pub mod codec;
pub mod context;
pub mod coordinator_store;
pub mod dynamic;
pub mod files;
pub mod isa;
pub mod model;
pub mod optim;
pub mod preset;
pub mod protocol;
pub mod registry;
pub mod staleness;
pub mod store;
pub mod tensor;
pub mod tokenizer;
pub mod transport;
pub mod weights;

#[doc(hidden)]
pub use inventory;

pub use context::BuildContext;
pub use registry::{BuildError, PluginConfig, PluginDecl, Registry, Slot};
