//! # bitnet-framework
//!
//! The core of bitnet: the slot traits every plugin implements, the plugin registry, layered run
//! configuration and run assembly. It knows nothing of HTTP, SQLite or SIMD; a plugin author
//! needs only this crate.
//!
//! - Slots: [`model::ModelKernel`], [`optim::Optimizer`], [`codec::GradientCodec`],
//!   [`staleness::StalenessPolicy`], [`store::WeightStore`], [`weights::WeightCodec`],
//!   [`tokenizer::Tokenizer`], plus the transport and coordinator-store slots.
//! - Plugins: implement [`registry::PluginConfig`] for a serde config type and register it with
//!   [`register_plugin!`]; configs choose it by name.
//! - Configs: [`config::load`] layers defaults, preset, file, environment and overrides.

pub mod checkpoint;
pub mod codec;
pub mod config;
pub mod context;
pub mod coordinator;
pub mod data;
pub mod dynamic;
pub mod isa;
pub mod model;
pub mod optim;
pub mod preset;
pub mod registry;
pub mod run;
pub mod staleness;
pub mod store;
pub mod tensor;
pub mod tokenizer;
pub mod trainer;
pub mod transport;
pub mod weights;
pub mod worker;

#[doc(hidden)]
pub use inventory;

pub use context::BuildContext;
pub use registry::{BuildError, PluginConfig, PluginDecl, Registry, Slot};
