//! The `Transport` slot: serves a coordinator's [`CoordinatorApi`] and connects workers to one.
//!
//! Authentication is written once, in the runtime's [`Authenticator`] implementation, and every
//! transport calls it: a transport only carries credentials and sessions.

use crate::admin::AdminApi;
use crate::coordinator_store::ClientRecord;
use crate::protocol::{ApiError, CoordinatorApi, CoordinatorClient};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// A worker's credentials.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    /// Client id (= worker id).
    pub client_id: String,
    /// Client secret.
    pub client_secret: String,
    /// PEM certificate of the CA that signed the coordinator's TLS certificate: when set, a
    /// transport trusts that CA alone (pinning) instead of the system's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_certificate: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("client_id", &self.client_id).finish_non_exhaustive()
    }
}

/// Checks who may call a coordinator. Every transport authenticates through it, so client
/// secrets, revocations and key rotations are handled in one place.
pub trait Authenticator: Send + Sync {
    /// Verifies a client's secret. Returns the client's record when the secret matches and the
    /// client is not revoked; [`ApiError::Unauthorized`] otherwise, costing about the same time
    /// whether or not the client id exists.
    fn verify(&self, credentials: &Credentials) -> Result<ClientRecord, ApiError>;
    /// Checks that a session opened by `client_id` at key generation `generation` still holds:
    /// the client exists, is not revoked and has not rotated its key since.
    fn check_session(&self, client_id: &str, generation: u64) -> Result<(), ApiError>;
}

/// Everything a server needs: the API and who may call it.
#[derive(Clone)]
pub struct ServeContext {
    /// The coordinator.
    pub api: Arc<dyn CoordinatorApi>,
    /// Checks credentials and sessions.
    pub auth: Arc<dyn Authenticator>,
    /// Operator actions (the console and admin API); `None` serves none.
    pub admin: Option<Arc<dyn AdminApi>>,
    /// Set on a follower replica: the server answers logins and `/health` itself and relays
    /// every other request to the leader this names (`api` and `admin` then answer nothing).
    /// A transport that cannot relay refuses to serve.
    pub relay: Option<Arc<dyn LeaderLocator>>,
}

/// Where a follower replica finds the leader it relays requests to.
pub trait LeaderLocator: Send + Sync {
    /// The leader's endpoint (`http(s)://host:port`); `None` while no replica leads.
    fn leader_endpoint(&self) -> Option<String>;
    /// PEM certificate of the CA the leader's TLS certificate chains to, trusted alone for the
    /// relayed requests; `None` trusts the system's roots.
    fn ca_certificate(&self) -> Option<String> {
        None
    }
}

/// A running server; dropping it or calling [`ServerHandle::shutdown`] stops it.
pub trait ServerHandle: Send {
    /// Where clients connect (`http://127.0.0.1:PORT`, `inproc://NAME`).
    fn endpoint(&self) -> String;
    /// Stops serving and waits for in-flight requests.
    fn shutdown(self: Box<Self>);
}

/// The `Transport` slot: serves a coordinator and connects workers to one.
pub trait Transport: Send + Sync {
    /// Starts serving `ctx.api`.
    fn serve(&self, ctx: ServeContext) -> Result<Box<dyn ServerHandle>, ApiError>;
    /// Connects to the coordinator at `endpoint` as `credentials`.
    fn connect(
        &self,
        endpoint: &str,
        credentials: Credentials,
    ) -> Result<Box<dyn CoordinatorClient>, ApiError>;
}
