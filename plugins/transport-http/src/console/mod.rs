//! The operator console under `/admin`, served by the coordinator's own listener (and so over
//! the same TLS): server-rendered pages ([`views`]), a session per operator ([`session`]), the
//! admin API for scripts ([`api`]) and worker install scripts ([`install`]). Pages and API
//! call the same [`AdminApi`] functions.
//!
//! Every page and action needs a session (else a redirect to the login form); every form
//! carries the session's CSRF token (else 403); logins go through the same guard as worker
//! logins (rate limits per IP and per name, lockout, a bounded pool of argon2 verifications).

pub mod api;
pub mod chart;
pub mod install;
pub mod session;
pub mod views;

use crate::HttpConfig;
use crate::server::{AppState, HttpError, HttpResult, Shared, blocking};
use crate::status::status_of;
use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Extension, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{Next, from_fn, from_fn_with_state};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use bitnet_framework::admin::AdminApi;
use bitnet_framework::coordinator_store::{LogQuery, TaskQuery, TaskState};
use bitnet_framework::protocol::ApiError;
use maud::Markup;
use session::{
    LOGIN_COOKIE, SESSION_COOKIE, SessionView, cookie, random_token, same_token, set_cookie,
};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// The scope an operator asks `POST /connect/token` for to get an admin API token.
pub const ADMIN_SCOPE: &str = "admin";
/// Largest console form body.
const MAX_FORM_BYTES: usize = 16 << 10;
/// Rows per page of the task and log tables.
const PAGE_ROWS: u64 = 50;

type Form = axum::Form<HashMap<String, String>>;
/// A refused action's page (boxed: a response is large).
type Refusal = Box<Response>;

fn admin_of(state: &AppState) -> Result<Arc<dyn AdminApi>, ApiError> {
    state.admin.clone().ok_or_else(|| ApiError::NotFound("this server has no console".into()))
}

/// Runs `f` with the admin functions on a blocking thread.
async fn with_admin<T: Send + 'static>(
    state: &AppState,
    f: impl FnOnce(&dyn AdminApi) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let admin = admin_of(state)?;
    blocking(move || f(admin.as_ref())).await
}

fn html(status: StatusCode, page: Markup) -> Response {
    (status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], page.into_string())
        .into_response()
}

/// An error as a console page.
fn error_page(s: &SessionView, e: &ApiError, back: &str) -> Response {
    html(status_of(e), views::message(s, "Refused", &e.to_string(), back))
}

/// Headers every console response carries: no caching, no framing, no third-party anything.
async fn security_headers(req: Request, next: Next) -> Response {
    let mut r = next.run(req).await;
    let h = r.headers_mut();
    let set = |h: &mut HeaderMap, k: &'static str, v: &'static str| {
        h.insert(k, HeaderValue::from_static(v));
    };
    set(
        h,
        "content-security-policy",
        "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; img-src 'self' data:; \
         connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    );
    set(h, "x-frame-options", "DENY");
    set(h, "x-content-type-options", "nosniff");
    set(h, "referrer-policy", "no-referrer");
    if !h.contains_key(header::CACHE_CONTROL) {
        set(h, "cache-control", "no-store");
    }
    r
}

/// Lets a request through only with a live session of an operator who still exists; others
/// are redirected to the login form.
async fn require_session(State(state): Shared, mut req: Request, next: Next) -> Response {
    let live = cookie(req.headers(), SESSION_COOKIE).and_then(|id| state.sessions.touch(&id));
    let Some(s) = live else {
        return Redirect::to("/admin/login").into_response();
    };
    let name = s.operator.clone();
    match with_admin(&state, move |a| a.operator_exists(&name)).await {
        Ok(true) => {
            req.extensions_mut().insert(s);
            next.run(req).await
        }
        Ok(false) => {
            state.sessions.close_operator(&s.operator);
            Redirect::to("/admin/login").into_response()
        }
        Err(e) => HttpError(e).into_response(),
    }
}

/// Checks a form's CSRF token against the session's.
fn check_csrf(s: &SessionView, form: &HashMap<String, String>) -> Result<(), Refusal> {
    match form.get("csrf") {
        Some(t) if same_token(t, &s.csrf) => Ok(()),
        _ => {
            tracing::warn!(operator = %s.operator, "console form refused: missing or wrong CSRF token");
            Err(Box::new(html(
                StatusCode::FORBIDDEN,
                views::message(
                    s,
                    "Refused",
                    "This form's CSRF token is missing or stale; reload the page and try again.",
                    "/admin/",
                ),
            )))
        }
    }
}

fn field<'a>(form: &'a HashMap<String, String>, name: &str) -> Result<&'a str, ApiError> {
    form.get(name)
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())
        .ok_or_else(|| ApiError::Invalid(format!("the form has no `{name}`")))
}

/// The routes under `/admin`.
pub(crate) fn router(state: Arc<AppState>, config: &HttpConfig) -> Router<Arc<AppState>> {
    let _ = config;
    let form_limit = DefaultBodyLimit::max(MAX_FORM_BYTES);
    let pages = Router::new()
        .route("/admin/", get(dashboard))
        .route("/admin/live", get(live))
        .route("/admin/logout", post(logout))
        .route("/admin/workers/drain", post(drain))
        .route("/admin/keys", get(keys))
        .route("/admin/keys/add", post(add_key))
        .route("/admin/keys/rotate", post(rotate_key))
        .route("/admin/keys/revoke", post(revoke_key))
        .route("/admin/tasks", get(tasks))
        .route("/admin/tasks/seed", post(seed))
        .route("/admin/tasks/requeue", post(requeue))
        .route("/admin/logs", get(logs))
        .route("/admin/runs", get(runs))
        .route("/admin/runs/{name}", get(run_file))
        .route("/admin/install", get(install_page).post(install_script))
        .route_layer(from_fn_with_state(Arc::clone(&state), require_session));
    Router::new()
        .route("/admin", get(|| async { Redirect::permanent("/admin/") }))
        .route("/admin/login", get(login_page).post(login))
        .route(
            "/admin/console.js",
            get(|| async {
                ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], views::SCRIPT)
            }),
        )
        .merge(pages)
        .merge(api::router(state))
        .layer(form_limit)
        .layer(from_fn(security_headers))
}

// --- login --------------------------------------------------------------------------------

fn login_form(status: StatusCode, secure: bool, error: Option<&str>) -> Response {
    let token = random_token();
    let mut r = html(status, views::login(&token, error));
    if let Ok(v) = HeaderValue::from_str(&set_cookie(LOGIN_COOKIE, &token, secure, Some(600))) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

async fn login_page(State(state): Shared, headers: HeaderMap) -> Response {
    if cookie(&headers, SESSION_COOKIE).and_then(|id| state.sessions.touch(&id)).is_some() {
        return Redirect::to("/admin/").into_response();
    }
    login_form(StatusCode::OK, state.secure, None)
}

async fn login(
    State(state): Shared,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    axum::Form(form): Form,
) -> Response {
    let expected = cookie(&headers, LOGIN_COOKIE).unwrap_or_default();
    let sent = form.get("csrf").map(String::as_str).unwrap_or_default();
    if expected.is_empty() || !same_token(sent, &expected) {
        return login_form(
            StatusCode::FORBIDDEN,
            state.secure,
            Some("The login form expired (CSRF token missing or stale); try again."),
        );
    }
    let name = form.get("name").map(|s| s.trim().to_string()).unwrap_or_default();
    let password = form.get("password").cloned().unwrap_or_default();
    if name.is_empty() || name.len() > 64 || password.is_empty() || password.len() > 1024 {
        return login_form(
            StatusCode::UNPROCESSABLE_ENTITY,
            state.secure,
            Some("Give a name and a password."),
        );
    }
    match verify_operator(&state, peer.ip(), &name, password).await {
        Ok(()) => {
            let s = state.sessions.open(&name);
            tracing::info!(operator = %name, ip = %peer.ip(), "operator logged in");
            let mut r = Redirect::to("/admin/").into_response();
            let cookies = [
                set_cookie(SESSION_COOKIE, &s.id, state.secure, None),
                set_cookie(LOGIN_COOKIE, "", state.secure, Some(0)),
            ];
            for c in cookies {
                if let Ok(v) = HeaderValue::from_str(&c) {
                    r.headers_mut().append(header::SET_COOKIE, v);
                }
            }
            r
        }
        Err(e) => {
            let msg = match &e {
                ApiError::Unauthorized(_) => "Wrong name or password.".to_string(),
                other => other.to_string(),
            };
            let mut r = login_form(status_of(&e), state.secure, Some(&msg));
            if let ApiError::TooMany { retry_after_secs, .. } = e {
                r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
            }
            r
        }
    }
}

/// Checks an operator's password behind the login guard (rate limits, lockout, bounded
/// verification pool), keyed apart from worker ids.
pub(crate) async fn verify_operator(
    state: &Arc<AppState>,
    ip: std::net::IpAddr,
    name: &str,
    password: String,
) -> Result<(), ApiError> {
    let key = format!("operator:{name}");
    state.guard.admit(ip, &key)?;
    let slot = state.guard.slot().await?;
    let owned = name.to_string();
    let ok = with_admin(state, move |a| {
        let r = a.verify_operator(&owned, &password);
        drop(slot);
        r
    })
    .await?;
    state.guard.record(ip, &key, ok);
    if ok { Ok(()) } else { Err(ApiError::Unauthorized("wrong operator name or password".into())) }
}

async fn logout(
    State(state): Shared,
    Extension(s): Extension<SessionView>,
    axum::Form(form): Form,
) -> Response {
    if let Err(r) = check_csrf(&s, &form) {
        return *r;
    }
    state.sessions.close(&s.id);
    let mut r = Redirect::to("/admin/login").into_response();
    if let Ok(v) = HeaderValue::from_str(&set_cookie(SESSION_COOKIE, "", state.secure, Some(0))) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

// --- pages --------------------------------------------------------------------------------

async fn dashboard(State(state): Shared, Extension(s): Extension<SessionView>) -> Response {
    match with_admin(&state, |a| Ok((a.overview()?, a.workers()?))).await {
        Ok((o, w)) => html(StatusCode::OK, views::dashboard(&s, &o, &w)),
        Err(e) => error_page(&s, &e, "/admin/"),
    }
}

async fn live(State(state): Shared, Extension(s): Extension<SessionView>) -> Response {
    match with_admin(&state, |a| Ok((a.overview()?, a.workers()?))).await {
        Ok((o, w)) => html(StatusCode::OK, views::live(&s, &o, &w)),
        Err(e) => HttpError(e).into_response(),
    }
}

/// Runs a form action: CSRF check, then `f` with the form; redirects to `back` or shows the
/// error.
async fn action<T: Send + 'static>(
    state: &AppState,
    s: &SessionView,
    form: HashMap<String, String>,
    back: &str,
    f: impl FnOnce(&dyn AdminApi, &HashMap<String, String>) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, Refusal> {
    check_csrf(s, &form)?;
    with_admin(state, move |a| f(a, &form)).await.map_err(|e| Box::new(error_page(s, &e, back)))
}

async fn drain(
    State(state): Shared,
    Extension(s): Extension<SessionView>,
    axum::Form(form): Form,
) -> Response {
    match action(&state, &s, form, "/admin/", |a, f| a.drain(field(f, "id")?)).await {
        Ok(()) => Redirect::to("/admin/").into_response(),
        Err(r) => *r,
    }
}

async fn keys(State(state): Shared, Extension(s): Extension<SessionView>) -> Response {
    match with_admin(&state, |a| a.keys()).await {
        Ok(k) => html(StatusCode::OK, views::keys(&s, &k)),
        Err(e) => error_page(&s, &e, "/admin/"),
    }
}

async fn add_key(
    State(state): Shared,
    Extension(s): Extension<SessionView>,
    axum::Form(form): Form,
) -> Response {
    match action(&state, &s, form, "/admin/keys", |a, f| a.add_key(field(f, "id")?)).await {
        Ok(c) => html(StatusCode::OK, views::secret_once(&s, "Key added", &c)),
        Err(r) => *r,
    }
}

async fn rotate_key(
    State(state): Shared,
    Extension(s): Extension<SessionView>,
    axum::Form(form): Form,
) -> Response {
    match action(&state, &s, form, "/admin/keys", |a, f| a.rotate_key(field(f, "id")?)).await {
        Ok(c) => html(StatusCode::OK, views::secret_once(&s, "Key rotated", &c)),
        Err(r) => *r,
    }
}

async fn revoke_key(
    State(state): Shared,
    Extension(s): Extension<SessionView>,
    axum::Form(form): Form,
) -> Response {
    match action(&state, &s, form, "/admin/keys", |a, f| a.revoke_key(field(f, "id")?)).await {
        Ok(()) => Redirect::to("/admin/keys").into_response(),
        Err(r) => *r,
    }
}

fn offset_of(q: &HashMap<String, String>) -> Result<u64, ApiError> {
    match q.get("offset").filter(|v| !v.is_empty()) {
        None => Ok(0),
        Some(v) => {
            v.parse().map_err(|_| ApiError::Invalid(format!("offset `{v}` is not a number")))
        }
    }
}

fn non_empty(q: &HashMap<String, String>, k: &str) -> Option<String> {
    q.get(k).map(|v| v.trim().to_string()).filter(|v| !v.is_empty())
}

/// A task query from the page's (or the API's) query string.
pub(crate) fn task_query(q: &HashMap<String, String>, limit: u64) -> Result<TaskQuery, ApiError> {
    let state = match non_empty(q, "state") {
        None => None,
        Some(s) => Some(TaskState::parse(&s).ok_or_else(|| {
            ApiError::Invalid(format!(
                "task state `{s}`: expected pending, assigned, done or failed"
            ))
        })?),
    };
    Ok(TaskQuery { state, worker: non_empty(q, "worker"), offset: offset_of(q)?, limit })
}

async fn tasks(
    State(state): Shared,
    Extension(s): Extension<SessionView>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let query = match task_query(&q, PAGE_ROWS) {
        Ok(query) => query,
        Err(e) => return error_page(&s, &e, "/admin/tasks"),
    };
    let notice = non_empty(&q, "notice");
    let for_page = query.clone();
    match with_admin(&state, move |a| a.tasks(&for_page)).await {
        Ok(page) => html(StatusCode::OK, views::tasks(&s, &query, &page, notice.as_deref())),
        Err(e) => error_page(&s, &e, "/admin/tasks"),
    }
}

async fn seed(
    State(state): Shared,
    Extension(s): Extension<SessionView>,
    axum::Form(form): Form,
) -> Response {
    let r = action(&state, &s, form, "/admin/tasks", |a, f| {
        let raw = f.get("tokens").map(|v| v.trim()).filter(|v| !v.is_empty()).unwrap_or("0");
        let tokens: u64 = raw.parse().map_err(|_| {
            ApiError::Invalid(format!("tokens `{raw}` is not a whole number of tokens"))
        })?;
        a.seed(tokens)
    })
    .await;
    match r {
        Ok(rep) => {
            let notice = format!("Seeded {} tasks covering {} tokens.", rep.tasks, rep.tokens);
            Redirect::to(&format!("/admin/tasks?notice={}", views::url_encode(&notice)))
                .into_response()
        }
        Err(r) => *r,
    }
}

async fn requeue(
    State(state): Shared,
    Extension(s): Extension<SessionView>,
    axum::Form(form): Form,
) -> Response {
    match action(&state, &s, form, "/admin/tasks", |a, _| a.requeue_failed()).await {
        Ok(n) => {
            let notice = format!("Requeued {n} failed tasks.");
            Redirect::to(&format!("/admin/tasks?notice={}", views::url_encode(&notice)))
                .into_response()
        }
        Err(r) => *r,
    }
}

/// A log query from the page's (or the API's) query string.
pub(crate) fn log_query(q: &HashMap<String, String>, limit: u64) -> Result<LogQuery, ApiError> {
    let level = non_empty(q, "level");
    if let Some(l) = &level
        && !["error", "warn", "info", "debug"].contains(&l.to_ascii_lowercase().as_str())
    {
        return Err(ApiError::Invalid(format!(
            "log level `{l}`: expected error, warn, info or debug"
        )));
    }
    Ok(LogQuery {
        worker: non_empty(q, "worker"),
        level,
        text: non_empty(q, "text"),
        offset: offset_of(q)?,
        limit,
    })
}

async fn logs(
    State(state): Shared,
    Extension(s): Extension<SessionView>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let query = match log_query(&q, PAGE_ROWS) {
        Ok(query) => query,
        Err(e) => return error_page(&s, &e, "/admin/logs"),
    };
    let for_page = query.clone();
    match with_admin(&state, move |a| a.logs(&for_page)).await {
        Ok(page) => html(StatusCode::OK, views::logs(&s, &query, &page)),
        Err(e) => error_page(&s, &e, "/admin/logs"),
    }
}

async fn runs(State(state): Shared, Extension(s): Extension<SessionView>) -> Response {
    match with_admin(&state, |a| a.run_files()).await {
        Ok(files) => html(StatusCode::OK, views::runs(&s, &files)),
        Err(e) => error_page(&s, &e, "/admin/"),
    }
}

/// Streams the file at `path` in chunks, so a checkpoint or the executable is never held in
/// memory whole.
async fn file_response(
    path: PathBuf,
    content_type: &'static str,
    download_name: Option<&str>,
) -> Result<Response, ApiError> {
    use tokio::io::AsyncReadExt;
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| ApiError::NotFound(format!("{}: {e}", path.display())))?;
    let len = file.metadata().await.map_err(|e| ApiError::Internal(e.to_string()))?.len();
    let stream = futures_util::stream::unfold(Some(file), |state| async move {
        let mut f = state?;
        let mut buf = vec![0u8; 256 << 10];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(axum::body::Bytes::from(buf)), Some(f)))
            }
            Err(e) => Some((Err(e), None)),
        }
    });
    let mut r = Response::new(Body::from_stream(stream));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if let Some(name) = download_name
        && let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\""))
    {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(r)
}

async fn run_file(
    State(state): Shared,
    Extension(s): Extension<SessionView>,
    Path(name): Path<String>,
) -> Response {
    let wanted = name.clone();
    let found = with_admin(&state, move |a| {
        a.run_files()?
            .into_iter()
            .find(|f| f.name == wanted)
            .ok_or_else(|| ApiError::NotFound(format!("no run file `{wanted}`")))
    })
    .await;
    let kind = if name.ends_with(".json") || name.ends_with(".jsonl") {
        "application/json"
    } else {
        "application/octet-stream"
    };
    match found {
        Ok(f) => match file_response(f.path, kind, Some(&f.name)).await {
            Ok(r) => r,
            Err(e) => error_page(&s, &e, "/admin/runs"),
        },
        Err(e) => error_page(&s, &e, "/admin/runs"),
    }
}

/// The URL the operator's browser reached the coordinator at (the install page's default).
fn endpoint_of(state: &AppState, headers: &HeaderMap) -> String {
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("HOST:PORT");
    let scheme = if state.secure { "https" } else { "http" };
    format!("{scheme}://{host}")
}

async fn install_page(
    State(state): Shared,
    Extension(s): Extension<SessionView>,
    headers: HeaderMap,
) -> Response {
    let endpoint = endpoint_of(&state, &headers);
    match with_admin(&state, |a| a.keys()).await {
        Ok(k) => html(StatusCode::OK, views::install(&s, &endpoint, &k)),
        Err(e) => error_page(&s, &e, "/admin/"),
    }
}

async fn install_script(
    State(state): Shared,
    Extension(s): Extension<SessionView>,
    axum::Form(form): Form,
) -> Response {
    let endpoint = match field(&form, "endpoint") {
        Ok(e) if e.starts_with("https://") || e.starts_with("http://") => e.to_string(),
        Ok(e) => {
            let err =
                ApiError::Invalid(format!("coordinator URL `{e}`: expected https://HOST:PORT"));
            return error_page(&s, &err, "/admin/install");
        }
        Err(e) => return error_page(&s, &e, "/admin/install"),
    };
    // A fresh secret goes in the script: a new key, or the existing one rotated.
    let r = action(&state, &s, form, "/admin/install", |a, f| {
        let id = field(f, "id")?;
        if a.keys()?.iter().any(|k| k.id == id) { a.rotate_key(id) } else { a.add_key(id) }
    })
    .await;
    match r {
        Ok(c) => {
            let name = format!("install-{}.sh", c.client_id);
            let body = install::script(&endpoint, &c);
            let mut r = (StatusCode::OK, body).into_response();
            let h = r.headers_mut();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/x-shellscript"));
            if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
                h.insert(header::CONTENT_DISPOSITION, v);
            }
            r
        }
        Err(r) => *r,
    }
}

// --- downloads for installing workers (worker token) ----------------------------------------

/// `GET /install/bitnet`: this coordinator's executable, for a worker with a valid token.
pub(crate) async fn install_binary(State(state): Shared) -> HttpResult<Response> {
    let path = with_admin(&state, |a| a.worker_binary()).await?;
    Ok(file_response(path, "application/octet-stream", Some("bitnet")).await?)
}

/// `GET /install/config.toml`: the run config workers run with, for a worker with a token.
pub(crate) async fn install_config(State(state): Shared) -> HttpResult<Response> {
    let text = with_admin(&state, |a| a.worker_config()).await?;
    Ok(([(header::CONTENT_TYPE, "application/toml")], text).into_response())
}
