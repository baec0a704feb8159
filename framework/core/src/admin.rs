//! What an operator can do to a running coordinator: the functions behind the web console and
//! the admin API. A transport serves them (with sessions, CSRF tokens and an admin scope); the
//! runtime implements them. Nothing here knows HTTP.

use crate::coordinator_store::{LogPage, LogQuery, TaskPage, TaskQuery, WorkerRecord};
use crate::protocol::{ApiError, StatusReport};
use crate::transport::Credentials;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// One point of the training loss curve: an applied update.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LossPoint {
    /// Weight version the update produced.
    pub version: u64,
    /// The update's mean training loss.
    pub loss: f32,
    /// When it was applied, ms since the epoch.
    pub ts_ms: u64,
}

/// The dashboard's figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Overview {
    /// Run name.
    pub run_name: String,
    /// The coordinator's status (versions, queue and worker counts, loss, tokens/s).
    pub status: StatusReport,
    /// Training loss of the most recent applied updates, oldest first.
    pub loss: Vec<LossPoint>,
    /// Synchronous rounds: updates in the open round.
    pub round_updates: usize,
    /// Synchronous rounds: updates the open round still waits for.
    pub round_missing: usize,
    /// The run's token budget (0 = one epoch).
    pub token_budget: u64,
    /// Validation loss of the weights, measured every `coordinator.eval_every_secs`, oldest
    /// first (`loss` is the mean validation loss of that version).
    #[serde(default)]
    pub validation: Vec<LossPoint>,
}

/// A worker as the console shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerView {
    /// The worker as registered.
    pub record: WorkerRecord,
    /// Tasks it holds now.
    pub current_tasks: Vec<u64>,
    /// Its key is revoked.
    pub revoked: bool,
}

/// A client key, without its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyView {
    /// Client id (= worker id).
    pub id: String,
    /// Key generation (bumped by every rotation and revocation).
    pub generation: u64,
    /// Revoked.
    pub revoked: bool,
    /// Creation time, ms since the epoch.
    pub created_ms: u64,
}

/// A file of the run an operator may download.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunFile {
    /// Name shown and used in the download URL (`metrics.jsonl`, `summary.json`, ...).
    pub name: String,
    /// Where it is.
    pub path: PathBuf,
    /// Size, bytes.
    pub bytes: u64,
}

/// What seeding added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeedReport {
    /// Tasks added.
    pub tasks: u64,
    /// Tokens they cover.
    pub tokens: u64,
}

/// Operator actions on a running coordinator. The console and the admin API call these and
/// nothing else, so both do the same thing.
pub trait AdminApi: Send + Sync {
    /// The dashboard's figures.
    fn overview(&self) -> Result<Overview, ApiError>;
    /// Every registered worker.
    fn workers(&self) -> Result<Vec<WorkerView>, ApiError>;
    /// Marks a worker Draining: it finishes what it holds and claims nothing more.
    fn drain(&self, worker: &str) -> Result<(), ApiError>;
    /// Every client key.
    fn keys(&self) -> Result<Vec<KeyView>, ApiError>;
    /// Adds a key with a fresh random secret; the credentials (with the CA when the
    /// coordinator has one) are returned once and stored only as a hash.
    fn add_key(&self, id: &str) -> Result<Credentials, ApiError>;
    /// Gives a key a fresh secret (and un-revokes it); its outstanding tokens die at once.
    fn rotate_key(&self, id: &str) -> Result<Credentials, ApiError>;
    /// Revokes a key; its outstanding tokens die at once.
    fn revoke_key(&self, id: &str) -> Result<(), ApiError>;
    /// One page of the task queue.
    fn tasks(&self, query: &TaskQuery) -> Result<TaskPage, ApiError>;
    /// Adds tasks covering `tokens` tokens of the corpus (0 = one epoch).
    fn seed(&self, tokens: u64) -> Result<SeedReport, ApiError>;
    /// Returns every Failed task to Pending.
    fn requeue_failed(&self) -> Result<u64, ApiError>;
    /// One page of the worker logs.
    fn logs(&self, query: &LogQuery) -> Result<LogPage, ApiError>;
    /// The run's downloadable files that exist now.
    fn run_files(&self) -> Result<Vec<RunFile>, ApiError>;
    /// The run config a worker of this coordinator runs with (TOML).
    fn worker_config(&self) -> Result<String, ApiError>;
    /// The program workers install (the coordinator's own executable).
    fn worker_binary(&self) -> Result<PathBuf, ApiError>;
    /// Whether `password` is operator `name`'s, costing about the same whether or not the
    /// operator exists.
    fn verify_operator(&self, name: &str, password: &str) -> Result<bool, ApiError>;
    /// Whether operator `name` exists (sessions and admin tokens of a removed operator end).
    fn operator_exists(&self, name: &str) -> Result<bool, ApiError>;
}
