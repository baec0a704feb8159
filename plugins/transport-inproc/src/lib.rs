//! Transport "in-process": the coordinator protocol over direct calls, no sockets. Used by
//! `configs/experiments/transport-inproc.toml` and fast tests.
//!
//! `serve` registers the coordinator under an `inproc://N` endpoint in a process-wide table;
//! `connect` looks it up. Authentication is the coordinator's [`Authenticator`], as over HTTP
//! minus the token: the client secret is verified at connect time, and every call re-checks that
//! the client is not revoked and its key generation has not moved (so rotation and revocation
//! take effect at once).

use bitnet_framework::BuildContext;
use bitnet_framework::protocol::{
    ApiError, Blob, CoordinatorClient, Heartbeat, HeartbeatReply, LogRecord, Registered,
    Registration, StatusReport, TaskSpec, UpdateUpload, UploadReceipt,
};
use bitnet_framework::registry::{BuildError, PluginConfig};
#[cfg(doc)]
use bitnet_framework::transport::Authenticator;
use bitnet_framework::transport::{Credentials, ServeContext, ServerHandle, Transport};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

/// Options of the in-process transport (none).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InProcConfig {}

impl PluginConfig for InProcConfig {
    type Component = dyn Transport;
    fn build(self, _ctx: &BuildContext) -> Result<Box<dyn Transport>, BuildError> {
        Ok(Box::new(InProcTransport))
    }
}

bitnet_framework::register_plugin!(
    InProcConfig,
    "in-process",
    "The coordinator protocol over direct calls in one process (no sockets)."
);

fn servers() -> &'static Mutex<HashMap<String, ServeContext>> {
    static SERVERS: OnceLock<Mutex<HashMap<String, ServeContext>>> = OnceLock::new();
    SERVERS.get_or_init(|| Mutex::new(HashMap::new()))
}

fn table() -> Result<std::sync::MutexGuard<'static, HashMap<String, ServeContext>>, ApiError> {
    servers().lock().map_err(|_| ApiError::Internal("in-process server table poisoned".into()))
}

/// The in-process transport.
#[derive(Debug, Clone, Copy, Default)]
pub struct InProcTransport;

struct Handle {
    endpoint: String,
}

impl ServerHandle for Handle {
    fn endpoint(&self) -> String {
        self.endpoint.clone()
    }
    fn shutdown(self: Box<Self>) {}
}

impl Drop for Handle {
    fn drop(&mut self) {
        if let Ok(mut t) = servers().lock() {
            t.remove(&self.endpoint);
        }
    }
}

impl Transport for InProcTransport {
    fn serve(&self, ctx: ServeContext) -> Result<Box<dyn ServerHandle>, ApiError> {
        if ctx.relay.is_some() {
            return Err(ApiError::Invalid(
                "the inproc transport cannot serve a follower replica (one process has one \
                 coordinator); use transport type \"http\""
                    .into(),
            ));
        }
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let endpoint = format!("inproc://{}", NEXT.fetch_add(1, Ordering::Relaxed));
        table()?.insert(endpoint.clone(), ctx);
        Ok(Box::new(Handle { endpoint }))
    }

    fn connect(
        &self,
        endpoint: &str,
        credentials: Credentials,
    ) -> Result<Box<dyn CoordinatorClient>, ApiError> {
        let ctx = table()?.get(endpoint).cloned().ok_or_else(|| {
            ApiError::Transport(format!("no in-process coordinator at {endpoint}"))
        })?;
        let client = ctx.auth.verify(&credentials)?;
        Ok(Box::new(InProcClient { ctx, id: client.id, generation: client.generation }))
    }
}

/// A worker's connection to an in-process coordinator.
struct InProcClient {
    ctx: ServeContext,
    id: String,
    generation: u64,
}

impl InProcClient {
    fn authorize(&self) -> Result<&str, ApiError> {
        self.ctx.auth.check_session(&self.id, self.generation)?;
        Ok(&self.id)
    }
}

impl CoordinatorClient for InProcClient {
    fn worker_id(&self) -> &str {
        &self.id
    }
    fn register(&mut self, registration: Registration) -> Result<Registered, ApiError> {
        let id = self.authorize()?;
        self.ctx.api.register(id, registration)
    }
    fn claim(&mut self) -> Result<Option<TaskSpec>, ApiError> {
        let id = self.authorize()?;
        self.ctx.api.claim(id)
    }
    fn heartbeat(&mut self, heartbeat: Heartbeat) -> Result<HeartbeatReply, ApiError> {
        let id = self.authorize()?;
        self.ctx.api.heartbeat(id, heartbeat)
    }
    fn upload(&mut self, upload: UpdateUpload) -> Result<UploadReceipt, ApiError> {
        let id = self.authorize()?;
        self.ctx.api.upload(id, upload)
    }
    fn logs(&mut self, records: Vec<LogRecord>) -> Result<(), ApiError> {
        let id = self.authorize()?;
        self.ctx.api.logs(id, records)
    }
    fn weights(&mut self, version: u64) -> Result<Blob, ApiError> {
        self.authorize()?;
        self.ctx.api.weights(version)
    }
    fn corpus(&mut self, shard: &str) -> Result<Blob, ApiError> {
        self.authorize()?;
        self.ctx.api.corpus(shard)
    }
    fn status(&mut self) -> Result<StatusReport, ApiError> {
        self.ctx.api.status()
    }
}
