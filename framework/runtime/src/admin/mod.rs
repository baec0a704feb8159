//! The operator actions of a running coordinator ([`AdminApi`]): what the web console and the
//! admin API call. Keys, workers and the queue live in the coordinator store; operators in the
//! run directory's operators file ([`operators`]).

pub mod operators;

use crate::auth::{generate_secret, hash_secret};
use crate::config::RunConfig;
use crate::coordinator::{Coordinator, seed};
use bitnet_framework::admin::{
    AdminApi, KeyView, LossPoint, Overview, RunFile, SeedReport, WorkerView,
};
use bitnet_framework::coordinator_store::{
    CoordinatorStore, LogPage, LogQuery, TaskPage, TaskQuery, TaskState,
};
use bitnet_framework::protocol::{ApiError, CoordinatorApi};
use bitnet_framework::transport::Credentials;
use operators::{Operators, operators_path};
use std::path::PathBuf;
use std::sync::Arc;

/// Loss points the dashboard's curve shows at most.
const LOSS_POINTS: usize = 500;
/// Largest page of tasks or logs one call returns.
pub const MAX_PAGE: u64 = 500;

/// The [`AdminApi`] of a coordinator.
pub struct Admin {
    coordinator: Arc<Coordinator>,
    store: Arc<dyn CoordinatorStore>,
    config: RunConfig,
    ca_certificate: Option<String>,
    worker_binary: Option<PathBuf>,
}

impl Admin {
    /// Operator actions on `coordinator`, which runs `config` (its vocabulary size resolved).
    /// Reads the CA certificate named by `coordinator.ca_file`, when set.
    pub fn new(coordinator: Arc<Coordinator>, config: &RunConfig) -> Result<Self, String> {
        let ca_certificate = match &config.coordinator.ca_file {
            Some(p) => {
                let path = if p.is_absolute() { p.clone() } else { config.run.dir.join(p) };
                let pem = std::fs::read_to_string(&path)
                    .map_err(|e| format!("coordinator.ca_file {}: {e}", path.display()))?;
                if !pem.contains("-----BEGIN CERTIFICATE-----") {
                    return Err(format!(
                        "coordinator.ca_file {}: not a PEM certificate",
                        path.display()
                    ));
                }
                Some(pem)
            }
            None => None,
        };
        let store = Arc::clone(coordinator.store());
        Ok(Self { coordinator, store, config: config.clone(), ca_certificate, worker_binary: None })
    }

    /// Serves `path` as the worker program instead of this process's own executable (a test
    /// harness, whose executable is not `bitnet`).
    pub fn with_worker_binary(mut self, path: PathBuf) -> Self {
        self.worker_binary = Some(path);
        self
    }

    fn credentials(&self, id: &str, secret: String) -> Credentials {
        Credentials {
            client_id: id.to_string(),
            client_secret: secret,
            ca_certificate: self.ca_certificate.clone(),
        }
    }
}

fn check_key_id(id: &str) -> Result<(), ApiError> {
    if operators::is_plain_name(id) {
        Ok(())
    } else {
        Err(ApiError::Invalid(format!(
            "key id `{id}`: use 1 to 64 characters of A-Z, a-z, 0-9, `.`, `_`, `-`"
        )))
    }
}

fn page(limit: u64) -> u64 {
    if limit == 0 { 50 } else { limit.min(MAX_PAGE) }
}

impl AdminApi for Admin {
    fn overview(&self) -> Result<Overview, ApiError> {
        let status = self.coordinator.status()?;
        let mut loss: Vec<LossPoint> = self
            .store
            .recent_telemetry(LOSS_POINTS)?
            .into_iter()
            // A loss of exactly 0 is a task that measured none (cross-entropy is never 0).
            .filter(|t| t.accepted && t.loss.is_finite() && t.loss > 0.0)
            .map(|t| LossPoint { version: t.version, loss: t.loss, ts_ms: t.ts_ms })
            .collect();
        loss.reverse();
        let (round_updates, round_missing) = self.coordinator.round_progress()?;
        Ok(Overview {
            run_name: self.config.name.clone(),
            status,
            loss,
            round_updates,
            round_missing,
            token_budget: self.config.train.token_budget,
            validation: self.coordinator.validation_points(),
        })
    }

    fn workers(&self) -> Result<Vec<WorkerView>, ApiError> {
        let assigned = self.store.list_tasks(&TaskQuery {
            state: Some(TaskState::Assigned),
            worker: None,
            offset: 0,
            limit: u64::MAX >> 1,
        })?;
        let clients = self.store.clients()?;
        Ok(self
            .store
            .workers()?
            .into_iter()
            .map(|record| WorkerView {
                current_tasks: assigned
                    .tasks
                    .iter()
                    .filter(|t| t.worker.as_deref() == Some(record.id.as_str()))
                    .map(|t| t.id)
                    .collect(),
                revoked: clients.iter().any(|c| c.id == record.id && c.revoked),
                record,
            })
            .collect())
    }

    fn drain(&self, worker: &str) -> Result<(), ApiError> {
        if self.store.drain_worker(worker)? {
            tracing::info!(worker, "worker drained by an operator");
            Ok(())
        } else {
            Err(ApiError::NotFound(format!("no worker `{worker}`")))
        }
    }

    fn keys(&self) -> Result<Vec<KeyView>, ApiError> {
        Ok(self
            .store
            .clients()?
            .into_iter()
            .map(|c| KeyView {
                id: c.id,
                generation: c.generation,
                revoked: c.revoked,
                created_ms: c.created_ms,
            })
            .collect())
    }

    fn add_key(&self, id: &str) -> Result<Credentials, ApiError> {
        check_key_id(id)?;
        if self.store.client(id)?.is_some() {
            return Err(ApiError::Conflict(format!("key `{id}` exists; rotate it instead")));
        }
        let secret = generate_secret();
        self.store.add_client(id, &hash_secret(&secret).map_err(ApiError::Internal)?)?;
        tracing::info!(client = id, "key added by an operator");
        Ok(self.credentials(id, secret))
    }

    fn rotate_key(&self, id: &str) -> Result<Credentials, ApiError> {
        if self.store.client(id)?.is_none() {
            return Err(ApiError::NotFound(format!("no key `{id}`")));
        }
        let secret = generate_secret();
        self.store.rotate_client(id, &hash_secret(&secret).map_err(ApiError::Internal)?)?;
        tracing::info!(client = id, "key rotated by an operator");
        Ok(self.credentials(id, secret))
    }

    fn revoke_key(&self, id: &str) -> Result<(), ApiError> {
        if self.store.client(id)?.is_none() {
            return Err(ApiError::NotFound(format!("no key `{id}`")));
        }
        self.store.revoke_client(id)?;
        tracing::info!(client = id, "key revoked by an operator");
        Ok(())
    }

    fn tasks(&self, query: &TaskQuery) -> Result<TaskPage, ApiError> {
        let q = TaskQuery { limit: page(query.limit), ..query.clone() };
        Ok(self.store.list_tasks(&q)?)
    }

    fn seed(&self, tokens: u64) -> Result<SeedReport, ApiError> {
        let tasks = seed::plan_tasks(
            &self.coordinator.corpus().shards(),
            tokens,
            self.config.coordinator.seed_chunk_tokens,
        );
        if tasks.is_empty() {
            return Err(ApiError::Invalid("the corpus has no tokens to seed".into()));
        }
        let ids = self.store.add_tasks(&tasks)?;
        let report =
            SeedReport { tasks: ids.len() as u64, tokens: tasks.iter().map(|t| t.tokens).sum() };
        tracing::info!(tasks = report.tasks, tokens = report.tokens, "queue seeded by an operator");
        Ok(report)
    }

    fn requeue_failed(&self) -> Result<u64, ApiError> {
        let n = self.store.requeue_failed()?;
        tracing::info!(tasks = n, "failed tasks requeued by an operator");
        Ok(n)
    }

    fn logs(&self, query: &LogQuery) -> Result<LogPage, ApiError> {
        let q = LogQuery { limit: page(query.limit), ..query.clone() };
        Ok(self.store.query_logs(&q)?)
    }

    fn run_files(&self) -> Result<Vec<RunFile>, ApiError> {
        let dir = &self.config.run.dir;
        let mut candidates: Vec<(String, PathBuf)> = ["metrics.jsonl", "summary.json"]
            .iter()
            .map(|n| (n.to_string(), dir.join(n)))
            .collect();
        if let Some(ckpt) = crate::trainer::latest_checkpoint(&dir.join("checkpoints"))
            && let Some(name) = ckpt.file_name().and_then(|n| n.to_str())
        {
            candidates.push((name.to_string(), ckpt.clone()));
        }
        Ok(candidates
            .into_iter()
            .filter_map(|(name, path)| {
                let meta = std::fs::metadata(&path).ok().filter(|m| m.is_file())?;
                Some(RunFile { name, path, bytes: meta.len() })
            })
            .collect())
    }

    fn worker_config(&self) -> Result<String, ApiError> {
        toml::to_string(&self.config)
            .map_err(|e| ApiError::Internal(format!("encoding the run config: {e}")))
    }

    fn worker_binary(&self) -> Result<PathBuf, ApiError> {
        if let Some(p) = &self.worker_binary {
            return Ok(p.clone());
        }
        std::env::current_exe()
            .map_err(|e| ApiError::Internal(format!("locating this program's executable: {e}")))
    }

    fn verify_operator(&self, name: &str, password: &str) -> Result<bool, ApiError> {
        let ops = Operators::load(&operators_path(&self.config.run.dir))
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        Ok(ops.verify(name, password))
    }

    fn operator_exists(&self, name: &str) -> Result<bool, ApiError> {
        let ops = Operators::load(&operators_path(&self.config.run.dir))
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        Ok(ops.operators.contains_key(name))
    }
}
