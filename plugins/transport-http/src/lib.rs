//! Transport "http": the coordinator protocol over HTTP/1.1.
//!
//! - Server ([`server`]): axum on a tokio runtime of its own; the synchronous coordinator calls
//!   run on blocking threads. OAuth2 client_credentials at `POST /connect/token` returns an
//!   HS256 JWT carrying the client id and its key generation; every protected request re-checks
//!   the client in the store, so rotating or revoking a key invalidates outstanding tokens at
//!   once. Bodies have size limits; weights and corpus downloads honour HTTP Range.
//! - Client ([`client`]): reqwest (blocking, rustls) with token caching and refresh; the worker
//!   loop retries failed calls with backoff.

pub mod client;
pub mod range;
pub mod server;
pub mod status;
pub mod token;

use bitnet_framework::BuildContext;
use bitnet_framework::protocol::{ApiError, CoordinatorClient};
use bitnet_framework::registry::{BuildError, PluginConfig, Slot};
use bitnet_framework::transport::{Credentials, ServeContext, ServerHandle, Transport};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Options of the HTTP transport.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address the coordinator listens on (`127.0.0.1:0` picks a free port).
    pub bind: String,
    /// Lifetime of issued tokens, seconds.
    pub token_ttl_secs: u64,
    /// File holding the JWT signing key (created with 32 random bytes if missing); relative
    /// paths are under the run directory.
    pub signing_key_file: PathBuf,
    /// Largest request body of `POST /gradient`, bytes.
    pub max_upload_bytes: usize,
    /// Largest JSON request body of the other endpoints, bytes.
    pub max_json_bytes: usize,
    /// Threads of the server's runtime.
    pub server_threads: usize,
    /// Client: timeout of one request, seconds.
    pub request_timeout_secs: u64,
    /// Client: refresh the token this many seconds before it expires.
    pub token_refresh_margin_secs: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:0".into(),
            token_ttl_secs: 3600,
            signing_key_file: PathBuf::from("jwt-signing.key"),
            max_upload_bytes: 512 << 20,
            max_json_bytes: 4 << 20,
            server_threads: 2,
            request_timeout_secs: 600,
            token_refresh_margin_secs: 60,
        }
    }
}

/// The HTTP transport.
#[derive(Debug, Clone)]
pub struct HttpTransport {
    config: HttpConfig,
    key_path: PathBuf,
}

impl HttpTransport {
    /// A transport with `config`, resolving the key file under `run_dir`.
    pub fn new(config: HttpConfig, run_dir: &std::path::Path) -> Self {
        let key_path = if config.signing_key_file.is_absolute() {
            config.signing_key_file.clone()
        } else {
            run_dir.join(&config.signing_key_file)
        };
        Self { config, key_path }
    }
}

impl PluginConfig for HttpConfig {
    type Component = dyn Transport;
    fn build(self, ctx: &BuildContext) -> Result<Box<dyn Transport>, BuildError> {
        if self.token_ttl_secs == 0 || self.max_upload_bytes == 0 || self.server_threads == 0 {
            return Err(BuildError::failed(
                Slot::Transport,
                "http",
                "token_ttl_secs, max_upload_bytes and server_threads must be positive",
            ));
        }
        Ok(Box::new(HttpTransport::new(self, &ctx.run_dir)))
    }
}

bitnet_framework::register_plugin!(
    HttpConfig,
    "http",
    "HTTP/1.1 (axum server, reqwest + rustls client) with OAuth2 client credentials and JWTs."
);

impl Transport for HttpTransport {
    fn serve(&self, ctx: ServeContext) -> Result<Box<dyn ServerHandle>, ApiError> {
        let key = token::load_or_create_key(&self.key_path)
            .map_err(|e| ApiError::Internal(format!("JWT signing key: {e}")))?;
        server::start(&self.config, key, ctx).map(|h| Box::new(h) as Box<dyn ServerHandle>)
    }

    fn connect(
        &self,
        endpoint: &str,
        credentials: Credentials,
    ) -> Result<Box<dyn CoordinatorClient>, ApiError> {
        let mut c = client::HttpClient::new(endpoint, credentials, &self.config)?;
        c.refresh_token()?;
        Ok(Box::new(c))
    }
}
