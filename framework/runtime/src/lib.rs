//! # bitnet-runtime
//!
//! Everything that turns plugins into a running system: layered run configs ([`config`]), the
//! one place that plans, builds and runs a run ([`run`]), the coordinator ([`coordinator`]) and
//! the worker ([`worker`]), the single-process trainer ([`trainer`]), checkpoints
//! ([`checkpoint`]), token shards and batches ([`data`]), authentication ([`auth`]) and the
//! dynamic plugin loader ([`dynamic`]). Plugins depend on `bitnet-framework`, not on this crate.

pub mod admin;
pub mod auth;
pub mod checkpoint;
pub mod config;
pub mod coordinator;
pub mod data;
pub mod dynamic;
pub mod metrics;
pub mod run;
pub mod trainer;
pub mod worker;
