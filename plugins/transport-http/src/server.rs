//! The coordinator's HTTP server.

use crate::HttpConfig;
use crate::console::session::Sessions;
use crate::guard::{GuardLimits, LoginGuard};
use crate::listener::{ConnectionCounters, ConnectionLimits};
use crate::range::{RangeReply, parse as parse_range};
use crate::status::status_of;
use crate::token;
use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Extension, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bitnet_framework::admin::AdminApi;
use bitnet_framework::protocol::{
    ApiError, Blob, CoordinatorApi, Heartbeat, LogRecord, Registration, UpdateUpload, UploadMeta,
};
use bitnet_framework::transport::{Authenticator, Credentials, ServeContext, ServerHandle};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Header carrying an upload's metadata (JSON [`UploadMeta`]); the body is the payload.
pub const UPLOAD_META_HEADER: &str = "x-bitnet-upload";
/// Header naming the weight version of a weights download.
pub const VERSION_HEADER: &str = "x-bitnet-version";
/// Header with the SHA-256 (hex) of the whole blob of a download.
pub const SHA256_HEADER: &str = "x-bitnet-sha256";

pub(crate) struct AppState {
    pub(crate) api: Arc<dyn CoordinatorApi>,
    pub(crate) auth: Arc<dyn Authenticator>,
    pub(crate) key: Vec<u8>,
    pub(crate) ttl_secs: u64,
    pub(crate) guard: LoginGuard,
    /// Largest `POST /gradient` body: the coordinator's own limit for this run, or the config's.
    upload_limit: usize,
    connections: Arc<ConnectionCounters>,
    /// Operator actions: the console and admin API are served when present.
    pub(crate) admin: Option<Arc<dyn AdminApi>>,
    /// Console sessions.
    pub(crate) sessions: Sessions,
    /// Served over TLS (console cookies are then `Secure`).
    pub(crate) secure: bool,
    /// Set on a follower replica: everything but logins and health goes to the leader.
    pub(crate) relay: Option<crate::relay::Relay>,
}

/// The authenticated client of a request, put there by [`require_auth`].
#[derive(Clone)]
struct Caller(String);

/// Longest a claim waits for its worker's round to close before answering "no task".
const CLAIM_WAIT: Duration = Duration::from_secs(10);
/// How often a waiting claim looks at its round again when nothing woke it (a fallback: the
/// coordinator wakes it when the round closes).
const CLAIM_POLL: Duration = Duration::from_millis(50);

/// Largest `POST /connect/token` body: a form with an id and a secret.
const MAX_LOGIN_BYTES: usize = 4 << 10;

pub(crate) type Shared = State<Arc<AppState>>;

/// An error as an HTTP response: status and a JSON `{"error": ...}` body.
pub(crate) struct HttpError(pub(crate) ApiError);

impl From<ApiError> for HttpError {
    fn from(e: ApiError) -> Self {
        HttpError(e)
    }
}

#[derive(Serialize, Deserialize)]
struct ErrorBody {
    error: String,
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let status = status_of(&self.0);
        let mut r = (status, axum::Json(ErrorBody { error: self.0.to_string() })).into_response();
        if status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let ApiError::TooMany { retry_after_secs, .. } = self.0 {
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
        }
        r
    }
}

pub(crate) type HttpResult<T> = Result<T, HttpError>;

/// Runs a synchronous coordinator call on a blocking thread.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::Internal(format!("request task failed: {e}")))?
}

/// Authenticates a request: a valid, unexpired bearer token whose client is neither revoked
/// nor rotated since it was issued. Returns the client id.
pub(crate) async fn authenticate(
    state: &Arc<AppState>,
    headers: &HeaderMap,
) -> Result<String, ApiError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .ok_or_else(|| ApiError::Unauthorized("missing bearer token".into()))?;
    let claims = token::verify(&state.key, token.trim()).map_err(ApiError::Unauthorized)?;
    if claims.scope.is_some() {
        return Err(ApiError::Unauthorized(
            "an operator's token is for the admin API, not the worker protocol".into(),
        ));
    }
    let auth = Arc::clone(&state.auth);
    let (id, generation) = (claims.sub.clone(), claims.generation);
    blocking(move || auth.check_session(&id, generation)).await?;
    Ok(claims.sub)
}

/// Authenticates every protected request from its headers alone, before any handler reads
/// its body: an unauthenticated upload costs no more than its headers.
async fn require_auth(State(state): Shared, mut req: Request, next: Next) -> Response {
    match authenticate(&state, req.headers()).await {
        Ok(who) => {
            req.extensions_mut().insert(Caller(who));
            next.run(req).await
        }
        Err(e) => {
            if matches!(e, ApiError::Unauthorized(_)) {
                state.guard.counters.bad_tokens.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            HttpError(e).into_response()
        }
    }
}

/// Answers 503 when a request takes longer than the configured limit.
async fn request_timeout(State(limit): State<Duration>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(r) => r,
        Err(_) => HttpError(ApiError::Unavailable(format!(
            "the request took longer than {} s",
            limit.as_secs_f64()
        )))
        .into_response(),
    }
}

/// `POST /connect/token` form fields (OAuth2 client credentials grant).
#[derive(Debug, Deserialize)]
struct TokenRequest {
    grant_type: String,
    client_id: Option<String>,
    client_secret: Option<String>,
    /// `admin`: an operator (`bitnet admin add`) asks for an admin API token.
    scope: Option<String>,
}

/// OAuth2 token response.
#[derive(Debug, Serialize, Deserialize)]
pub struct TokenResponse {
    /// The JWT.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds until expiry.
    pub expires_in: u64,
}

fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let b64 = v.strip_prefix("Basic ")?;
    let raw = base64_decode(b64.trim())?;
    let text = String::from_utf8(raw).ok()?;
    let (id, secret) = text.split_once(':')?;
    Some((id.to_string(), secret.to_string()))
}

/// Standard base64 (with padding) decoding, enough for HTTP Basic credentials.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let bytes = s.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= val(c)? << (18 - 6 * i);
        }
        let n = match chunk.len() {
            4 => 3,
            3 => 2,
            2 => 1,
            _ => return None,
        };
        for i in 0..n {
            out.push((acc >> (16 - 8 * i)) as u8);
        }
    }
    Some(out)
}

async fn issue_token(
    State(state): Shared,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    axum::Form(req): axum::Form<TokenRequest>,
) -> HttpResult<axum::Json<TokenResponse>> {
    if req.grant_type != "client_credentials" {
        return Err(ApiError::Invalid(format!(
            "unsupported grant_type `{}`; use client_credentials",
            req.grant_type
        ))
        .into());
    }
    let (id, secret) = match (req.client_id, req.client_secret) {
        (Some(i), Some(s)) => (i, s),
        _ => basic_credentials(&headers)
            .ok_or_else(|| ApiError::Unauthorized("client credentials missing".into()))?,
    };
    if id.len() > 256 || secret.len() > 1024 {
        return Err(ApiError::Invalid("client id or secret too long".into()).into());
    }
    let ip = peer.ip();
    match req.scope.as_deref() {
        None | Some("") => {}
        Some(crate::console::ADMIN_SCOPE) => {
            return crate::console::api::issue_admin_token(&state, ip, id, secret).await;
        }
        Some(other) => {
            return Err(ApiError::Invalid(format!(
                "unknown scope `{other}`; workers ask for none, operators for `admin`"
            ))
            .into());
        }
    }
    state.guard.admit(ip, &id)?;
    // Verification (argon2: ~19 MiB, a core for tens of ms) runs on a bounded number of slots.
    let slot = state.guard.slot().await?;
    let auth = Arc::clone(&state.auth);
    let credentials =
        Credentials { client_id: id.clone(), client_secret: secret, ca_certificate: None };
    let verified = blocking(move || {
        let r = auth.verify(&credentials);
        drop(slot);
        r
    })
    .await;
    state.guard.record(ip, &id, verified.is_ok());
    let client = verified?;
    let (token, claims) = token::issue(&state.key, &client.id, client.generation, state.ttl_secs)
        .map_err(ApiError::Internal)?;
    Ok(axum::Json(TokenResponse {
        access_token: token,
        token_type: "Bearer".into(),
        expires_in: claims.exp.saturating_sub(claims.iat),
    }))
}

async fn register(
    State(state): Shared,
    Extension(Caller(who)): Extension<Caller>,
    axum::Json(reg): axum::Json<Registration>,
) -> HttpResult<Response> {
    let api = Arc::clone(&state.api);
    let r = blocking(move || api.register(&who, reg)).await?;
    Ok(axum::Json(r).into_response())
}

async fn work(
    State(state): Shared,
    Extension(Caller(who)): Extension<Caller>,
) -> HttpResult<Response> {
    // A synchronous round's worker waits for the round to close before its next task. The
    // wait is parked on a waker the round wakes when it closes, so hundreds of waiting workers
    // hold no threads and each is answered at once; the timer is only a fallback (for an API
    // that does not wake).
    let deadline = tokio::time::Instant::now() + CLAIM_WAIT;
    loop {
        let closed = std::future::poll_fn(|cx| {
            if state.api.claim_would_wait(&who, cx.waker()) {
                std::task::Poll::Pending
            } else {
                std::task::Poll::Ready(())
            }
        });
        if tokio::time::timeout(CLAIM_POLL, closed).await.is_ok() {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(StatusCode::NO_CONTENT.into_response());
        }
    }
    let api = Arc::clone(&state.api);
    Ok(match blocking(move || api.claim(&who)).await? {
        Some(task) => axum::Json(task).into_response(),
        None => StatusCode::NO_CONTENT.into_response(),
    })
}

async fn heartbeat(
    State(state): Shared,
    Extension(Caller(who)): Extension<Caller>,
    axum::Json(hb): axum::Json<Heartbeat>,
) -> HttpResult<Response> {
    let api = Arc::clone(&state.api);
    Ok(axum::Json(blocking(move || api.heartbeat(&who, hb)).await?).into_response())
}

async fn gradient(
    State(state): Shared,
    Extension(Caller(who)): Extension<Caller>,
    headers: HeaderMap,
    body: Body,
) -> HttpResult<Response> {
    let limit = state.upload_limit;
    let too_large = |n: String| {
        ApiError::TooLarge(format!("an update of {n} bytes exceeds this run's limit of {limit}"))
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(n) = declared.filter(|&n| n > limit as u64) {
        return Err(too_large(n.to_string()).into());
    }
    let meta: UploadMeta = headers
        .get(UPLOAD_META_HEADER)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| ApiError::Invalid(format!("missing {UPLOAD_META_HEADER} header")))
        .and_then(|v| {
            serde_json::from_str(v)
                .map_err(|e| ApiError::Invalid(format!("{UPLOAD_META_HEADER}: {e}")))
        })?;
    let body = axum::body::to_bytes(body, limit).await.map_err(|e| {
        if std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
            || e.to_string().contains("length limit")
        {
            too_large(format!("more than {limit}"))
        } else {
            ApiError::Invalid(format!("reading the update body: {e}"))
        }
    })?;
    let api = Arc::clone(&state.api);
    let upload = UpdateUpload::join(meta, body.to_vec());
    Ok(axum::Json(blocking(move || api.upload(&who, upload)).await?).into_response())
}

async fn logs(
    State(state): Shared,
    Extension(Caller(who)): Extension<Caller>,
    axum::Json(records): axum::Json<Vec<LogRecord>>,
) -> HttpResult<Response> {
    let api = Arc::clone(&state.api);
    blocking(move || api.logs(&who, records)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn ranged(blob: Blob, headers: &HeaderMap) -> Response {
    let len = blob.bytes.len() as u64;
    let mut out = HeaderMap::new();
    let put = |h: &mut HeaderMap, k: &'static str, v: String| {
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(k, v);
        }
    };
    put(&mut out, VERSION_HEADER, blob.version.to_string());
    put(&mut out, SHA256_HEADER, blob.sha256.clone());
    put(&mut out, "etag", format!("\"{}\"", blob.sha256));
    out.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    out.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    match parse_range(range, len) {
        RangeReply::Full => (StatusCode::OK, out, blob.bytes.as_ref().clone()).into_response(),
        RangeReply::Partial { start, end } => {
            put(&mut out, "content-range", format!("bytes {start}-{end}/{len}"));
            let body = blob.bytes[start as usize..=end as usize].to_vec();
            (StatusCode::PARTIAL_CONTENT, out, body).into_response()
        }
        RangeReply::Unsatisfiable => {
            put(&mut out, "content-range", format!("bytes */{len}"));
            (StatusCode::RANGE_NOT_SATISFIABLE, out).into_response()
        }
    }
}

async fn weights(
    State(state): Shared,
    headers: HeaderMap,
    Path(version): Path<String>,
) -> HttpResult<Response> {
    let v = if version == "latest" {
        u64::MAX
    } else {
        version
            .parse::<u64>()
            .map_err(|_| ApiError::Invalid(format!("`{version}` is not a weight version")))?
    };
    let api = Arc::clone(&state.api);
    let blob = blocking(move || api.weights(v)).await?;
    Ok(ranged(blob, &headers))
}

async fn corpus(
    State(state): Shared,
    headers: HeaderMap,
    Path(shard): Path<String>,
) -> HttpResult<Response> {
    let api = Arc::clone(&state.api);
    let blob = blocking(move || api.corpus(&shard)).await?;
    Ok(ranged(blob, &headers))
}

async fn status(State(state): Shared) -> HttpResult<Response> {
    let api = Arc::clone(&state.api);
    Ok(axum::Json(blocking(move || api.status()).await?).into_response())
}

async fn metrics(State(state): Shared) -> HttpResult<Response> {
    let api = Arc::clone(&state.api);
    let mut text = blocking(move || Ok(api.metrics())).await?;
    text.push_str(&state.guard.counters.render());
    text.push_str(&state.connections.render());
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}

fn router(state: Arc<AppState>, config: &HttpConfig) -> Router {
    let timeout = Duration::from_secs(config.server_request_timeout_secs.max(1));
    if state.relay.is_some() {
        return Router::new()
            .route(
                "/connect/token",
                post(issue_token).layer(DefaultBodyLimit::max(MAX_LOGIN_BYTES)),
            )
            .route("/health", get(|| async { "ok" }))
            .route("/health/leader", get(crate::relay::not_leader))
            .fallback(crate::relay::relay)
            .layer(from_fn_with_state(timeout, request_timeout))
            .with_state(state);
    }
    let json = DefaultBodyLimit::max(config.max_json_bytes);
    let protected = Router::new()
        .route("/register", post(register).layer(json))
        .route("/work", get(work))
        .route("/heartbeat", post(heartbeat).layer(json))
        // The handler reads the body itself, with this run's limit, after authentication.
        .route("/gradient", post(gradient).layer(DefaultBodyLimit::disable()))
        .route("/logs", post(logs).layer(json))
        .route("/weights/{version}", get(weights))
        .route("/corpus/{shard}", get(corpus))
        .route("/metrics", get(metrics))
        .route("/install/bitnet", get(crate::console::install_binary))
        .route("/install/config.toml", get(crate::console::install_config))
        .route_layer(from_fn_with_state(Arc::clone(&state), require_auth));
    let mut app = Router::new()
        .route("/connect/token", post(issue_token).layer(DefaultBodyLimit::max(MAX_LOGIN_BYTES)))
        .route("/health", get(|| async { "ok" }))
        // The replica that leads (a lone coordinator always does): a load balancer's check.
        .route("/health/leader", get(|| async { "leader" }))
        .route("/status", get(status))
        .merge(protected);
    if state.admin.is_some() {
        app = app.merge(crate::console::router(Arc::clone(&state), config));
    }
    app.layer(from_fn_with_state(timeout, request_timeout)).with_state(state)
}

/// A running server.
pub struct HttpServer {
    endpoint: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ServerHandle for HttpServer {
    fn endpoint(&self) -> String {
        self.endpoint.clone()
    }

    fn shutdown(mut self: Box<Self>) {
        self.stop_and_join();
    }
}

impl HttpServer {
    fn stop_and_join(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            tracing::error!("HTTP server thread panicked");
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// Binds `config.bind` and serves `ctx` on a runtime of its own thread, over TLS when the
/// config names a certificate and key.
pub fn start(config: &HttpConfig, key: Vec<u8>, ctx: ServeContext) -> Result<HttpServer, ApiError> {
    let tls = match (&config.tls_cert_file, &config.tls_key_file) {
        (Some(cert), Some(key)) => Some(tokio_rustls::TlsAcceptor::from(
            crate::tls::server_config(cert, key).map_err(ApiError::Internal)?,
        )),
        (None, None) => None,
        _ => {
            return Err(ApiError::Internal(
                "transport.tls_cert_file and transport.tls_key_file go together".into(),
            ));
        }
    };
    if tls.is_none() && !crate::tls::is_loopback_host(&config.bind) {
        if !config.allow_plain_http {
            return Err(ApiError::Internal(format!(
                "refusing to serve plain HTTP on {}: client secrets and tokens would cross the \
                 network in clear text. Set transport.tls_cert_file and tls_key_file (`bitnet \
                 certs init` makes them), or transport.allow_plain_http = true on a network \
                 you trust",
                config.bind
            )));
        }
        tracing::warn!(bind = %config.bind, "serving plain HTTP beyond loopback (transport.allow_plain_http)");
    }
    let listener = std::net::TcpListener::bind(&config.bind)
        .map_err(|e| ApiError::Internal(format!("binding {}: {e}", config.bind)))?;
    listener.set_nonblocking(true).map_err(|e| ApiError::Internal(e.to_string()))?;
    let addr = listener.local_addr().map_err(|e| ApiError::Internal(e.to_string()))?;
    let cores = std::thread::available_parallelism().map_or(2, usize::from);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.server_threads)
        .max_blocking_threads(config.blocking_threads.unwrap_or((4 * cores).max(8)))
        .thread_name("bitnet-http")
        .enable_all()
        .build()
        .map_err(|e| ApiError::Internal(format!("starting the HTTP runtime: {e}")))?;
    let upload_limit = ctx
        .api
        .upload_limit()
        .map_or(config.max_upload_bytes, |l| config.max_upload_bytes.min(l as usize));
    let guard = LoginGuard::new(GuardLimits {
        logins_per_ip_per_minute: config.logins_per_ip_per_minute,
        logins_per_client_per_minute: config.logins_per_client_per_minute,
        lockout_failures: config.lockout_failures,
        lockout: Duration::from_secs(config.lockout_secs),
        // Half the cores by default: a login flood (each verification is ~19 MiB of argon2)
        // can then never take the CPU the fleet's uploads and claims need.
        verify_slots: config.max_concurrent_logins.unwrap_or((cores / 2).max(1)),
        verify_queue: config.max_queued_logins,
    });
    let connections = Arc::new(ConnectionCounters::default());
    let relay = match ctx.relay {
        Some(leader) => Some(crate::relay::Relay::new(
            leader,
            Duration::from_secs(config.server_request_timeout_secs.max(1)),
            config.max_json_bytes,
            config.max_upload_bytes,
        )?),
        None => None,
    };
    let state = Arc::new(AppState {
        api: ctx.api,
        auth: ctx.auth,
        key,
        ttl_secs: config.token_ttl_secs,
        guard,
        upload_limit,
        connections: Arc::clone(&connections),
        admin: ctx.admin,
        sessions: Sessions::new(Duration::from_secs(config.console_idle_secs.max(1))),
        secure: tls.is_some(),
        relay,
    });
    let app = router(Arc::clone(&state), config);
    let limits = ConnectionLimits {
        max_connections: config.max_connections,
        header_read_timeout: Duration::from_secs(config.header_read_timeout_secs.max(1)),
        tls: tls.clone(),
    };
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("bitnet-http-server".into())
        .spawn(move || {
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(error = %e, "HTTP listener");
                        return;
                    }
                };
                let pruner = tokio::spawn(async move {
                    let mut tick = tokio::time::interval(Duration::from_secs(30));
                    loop {
                        tick.tick().await;
                        state.guard.prune();
                    }
                });
                crate::listener::serve(listener, app, limits, connections, rx).await;
                pruner.abort();
            });
        })
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(%addr, scheme, upload_limit, "coordinator listening");
    Ok(HttpServer { endpoint: format!("{scheme}://{addr}"), stop: Some(tx), thread: Some(thread) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_auth_decodes() {
        assert_eq!(base64_decode("dzE6czM="), Some(b"w1:s3".to_vec()));
        assert_eq!(base64_decode("!!"), None);
    }
}
