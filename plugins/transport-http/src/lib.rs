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
pub mod console;
pub mod guard;
pub mod listener;
pub mod range;
pub mod relay;
pub mod server;
pub mod status;
pub mod tls;
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
    /// Largest request body of `POST /gradient`, bytes; the coordinator's own limit for the
    /// run (the longest valid update of its model and codec) applies when smaller.
    pub max_upload_bytes: usize,
    /// Largest JSON request body of the other endpoints, bytes.
    pub max_json_bytes: usize,
    /// Threads of the server's runtime.
    pub server_threads: usize,
    /// Server: threads that run coordinator calls (store I/O, decoding and applying updates)
    /// [default: 4 per core, at least 8]. Waiting claims hold none; more concurrent calls queue.
    pub blocking_threads: Option<usize>,
    /// Client: timeout of one request, seconds.
    pub request_timeout_secs: u64,
    /// Client: refresh the token this many seconds before it expires.
    pub token_refresh_margin_secs: u64,
    /// Server: PEM certificate chain; with `tls_key_file`, the coordinator serves HTTPS.
    /// Relative paths are under the run directory. `bitnet certs init` makes both.
    pub tls_cert_file: Option<PathBuf>,
    /// Server: PEM private key of `tls_cert_file`.
    pub tls_key_file: Option<PathBuf>,
    /// Server: serve plain HTTP on a non-loopback address; client: send the secret over plain
    /// HTTP to a non-loopback host. Off: both refuse (plain HTTP is for loopback only).
    pub allow_plain_http: bool,
    /// Server: a request's headers (and a TLS handshake) must arrive within this, seconds;
    /// slower connections are closed.
    pub header_read_timeout_secs: u64,
    /// Server: a request that takes longer is answered 503, seconds.
    pub server_request_timeout_secs: u64,
    /// Server: open connections at most; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// Server: login attempts per minute from one IP address (429 past it).
    pub logins_per_ip_per_minute: u32,
    /// Server: login attempts per minute for one client id (429 past it).
    pub logins_per_client_per_minute: u32,
    /// Server: this many failed logins in a row lock a client id out (0 = never).
    pub lockout_failures: u32,
    /// Server: how long a lockout lasts, seconds.
    pub lockout_secs: u64,
    /// Server: password verifications running at once [default: half the machine's cores, at
    /// least 1, so a login flood leaves the rest to the fleet's requests].
    pub max_concurrent_logins: Option<usize>,
    /// Server: logins waiting for a verification slot; more are answered 503.
    pub max_queued_logins: usize,
    /// Server: a console session ends after this long without a request, seconds.
    pub console_idle_secs: u64,
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
            blocking_threads: None,
            request_timeout_secs: 600,
            token_refresh_margin_secs: 60,
            tls_cert_file: None,
            tls_key_file: None,
            allow_plain_http: false,
            header_read_timeout_secs: 10,
            server_request_timeout_secs: 300,
            max_connections: 4096,
            logins_per_ip_per_minute: 600,
            logins_per_client_per_minute: 30,
            lockout_failures: 10,
            lockout_secs: 300,
            max_concurrent_logins: None,
            max_queued_logins: 64,
            console_idle_secs: 1800,
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
        let under_run = |p: &std::path::Path| {
            if p.is_absolute() { p.to_path_buf() } else { run_dir.join(p) }
        };
        let key_path = under_run(&config.signing_key_file);
        let mut config = config;
        config.tls_cert_file = config.tls_cert_file.as_deref().map(under_run);
        config.tls_key_file = config.tls_key_file.as_deref().map(under_run);
        Self { config, key_path }
    }
}

impl HttpConfig {
    /// Values no server or client can run with.
    fn value_problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        for (key, zero) in [
            ("token_ttl_secs", self.token_ttl_secs == 0),
            ("max_upload_bytes", self.max_upload_bytes == 0),
            ("server_threads", self.server_threads == 0),
            ("max_connections", self.max_connections == 0),
            ("logins_per_ip_per_minute", self.logins_per_ip_per_minute == 0),
            ("logins_per_client_per_minute", self.logins_per_client_per_minute == 0),
            ("max_concurrent_logins", self.max_concurrent_logins == Some(0)),
            ("blocking_threads", self.blocking_threads == Some(0)),
        ] {
            if zero {
                p.push(format!("{key} must be positive, got 0"));
            }
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            p.push("tls_cert_file and tls_key_file go together: set both or neither".into());
        }
        p
    }
}

/// Whether `bind` is an address a listener can bind: `IP:PORT`, `[IPv6]:PORT` or `HOST:PORT`.
fn bind_is_valid(bind: &str) -> bool {
    if bind.parse::<std::net::SocketAddr>().is_ok() {
        return true;
    }
    match bind.rsplit_once(':') {
        Some((host, port)) => {
            port.parse::<u16>().is_ok()
                && !host.is_empty()
                && host.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        }
        None => false,
    }
}

impl PluginConfig for HttpConfig {
    type Component = dyn Transport;
    fn build(self, ctx: &BuildContext) -> Result<Box<dyn Transport>, BuildError> {
        let problems = self.value_problems();
        if !problems.is_empty() {
            return Err(BuildError::failed(Slot::Transport, "http", problems.join("; ")));
        }
        Ok(Box::new(HttpTransport::new(self, &ctx.run_dir)))
    }

    fn validate(&self, ctx: &BuildContext) -> Vec<String> {
        let mut p = self.value_problems();
        if !bind_is_valid(&self.bind) {
            p.push(format!(
                "bind = {:?} is not an address to listen on: expected IP:PORT or HOST:PORT, \
                 e.g. 127.0.0.1:8080 or 0.0.0.0:8443",
                self.bind
            ));
        }
        let resolved = HttpTransport::new(self.clone(), &ctx.run_dir);
        for (key, path) in [
            ("tls_cert_file", &resolved.config.tls_cert_file),
            ("tls_key_file", &resolved.config.tls_key_file),
        ] {
            if let Some(path) = path
                && !path.is_file()
            {
                p.push(format!(
                    "{key}: {} does not exist or is not a file (`bitnet certs init` makes one)",
                    path.display()
                ));
            }
        }
        p
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
        // Refuses before the secret is sent, not after. Each replica is tried once: the first
        // may be the one that is down.
        let mut tries = c.endpoints().len();
        loop {
            match c.refresh_token() {
                Ok(()) => return Ok(Box::new(c)),
                Err(e @ ApiError::Transport(_)) if tries > 1 => {
                    tries -= 1;
                    tracing::debug!(error = %e, "logging in at the next replica");
                }
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_addresses_that_parse_and_those_that_do_not() {
        for ok in ["127.0.0.1:0", "0.0.0.0:8443", "[::1]:80", "localhost:8080", "coord-1.lan:9000"]
        {
            assert!(bind_is_valid(ok), "{ok}");
        }
        for bad in ["notanaddr", "127.0.0.1", ":8080", "127.0.0.1:99999", "host:port", "a b:80"] {
            assert!(!bind_is_valid(bad), "{bad}");
        }
    }

    #[test]
    fn validate_names_every_bad_key_and_missing_tls_files() {
        let dir = std::env::temp_dir().join("bitnet-http-validate-no-such-dir");
        let ctx = BuildContext::new(Default::default()).with_run_dir(dir);
        let config = HttpConfig {
            bind: "notanaddr".into(),
            server_threads: 0,
            tls_cert_file: Some(PathBuf::from("missing.pem")),
            tls_key_file: Some(PathBuf::from("missing.key")),
            ..HttpConfig::default()
        };
        let problems = config.validate(&ctx).join("\n");
        for key in ["bind", "server_threads", "tls_cert_file", "tls_key_file"] {
            assert!(problems.contains(key), "{key} missing from:\n{problems}");
        }
        assert!(HttpConfig::default().validate(&ctx).is_empty());
    }
}
