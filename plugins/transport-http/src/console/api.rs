//! The admin API for scripts, under `/admin/api`: JSON over the same listener, authorized by a
//! bearer token an operator gets from `POST /connect/token` with `grant_type=
//! client_credentials`, `client_id=NAME`, `client_secret=PASSWORD` and `scope=admin`. It calls
//! the same [`AdminApi`](bitnet_framework::admin::AdminApi) functions as the console.
//!
//! | method and path | does |
//! | --- | --- |
//! | `GET /admin/api/overview` | dashboard figures (status, loss points, round) |
//! | `GET /admin/api/workers` | every worker |
//! | `POST /admin/api/workers/{id}/drain` | drain a worker |
//! | `GET /admin/api/keys` | every key (no secrets) |
//! | `POST /admin/api/keys/{id}` | add a key; answers its credentials (the secret, once) |
//! | `POST /admin/api/keys/{id}/rotate` | a new secret for a key; answers the credentials |
//! | `POST /admin/api/keys/{id}/revoke` | revoke a worker's key |
//! | `GET /admin/api/tasks?state=&worker=&offset=&limit=` | a page of the queue |
//! | `POST /admin/api/tasks/seed` `{"tokens": N}` | seed tasks (0 = one epoch) |
//! | `POST /admin/api/tasks/requeue` | requeue failed tasks |
//! | `GET /admin/api/logs?worker=&level=&text=&offset=&limit=` | a page of worker logs |

use super::{ADMIN_SCOPE, log_query, task_query, verify_operator, with_admin};
use crate::server::{AppState, HttpError, HttpResult, Shared, TokenResponse};
use crate::token;
use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bitnet_framework::protocol::ApiError;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Arc;

/// Largest page the API returns.
const MAX_LIMIT: u64 = 500;

/// Answers `POST /connect/token` with `scope=admin`: an operator's password, checked behind
/// the login guard, buys an admin token.
pub(crate) async fn issue_admin_token(
    state: &Arc<AppState>,
    ip: std::net::IpAddr,
    name: String,
    password: String,
) -> HttpResult<axum::Json<TokenResponse>> {
    if state.admin.is_none() {
        return Err(ApiError::NotFound("this server has no admin API".into()).into());
    }
    verify_operator(state, ip, &name, password).await?;
    let (access_token, claims) =
        token::issue_admin(&state.key, &name, state.ttl_secs).map_err(ApiError::Internal)?;
    tracing::info!(operator = %name, %ip, "admin API token issued");
    Ok(axum::Json(TokenResponse {
        access_token,
        token_type: "Bearer".into(),
        expires_in: claims.exp.saturating_sub(claims.iat),
    }))
}

/// Lets a request through only with a valid admin token of an operator who still exists.
async fn require_admin_token(State(state): Shared, req: Request, next: Next) -> Response {
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(|t| t.trim().to_string());
    let checked = async {
        let t = bearer.ok_or_else(|| ApiError::Unauthorized("missing bearer token".into()))?;
        let claims = token::verify(&state.key, &t).map_err(ApiError::Unauthorized)?;
        if claims.scope.as_deref() != Some(ADMIN_SCOPE) {
            return Err(ApiError::Forbidden("this token has no admin scope".into()));
        }
        let name = claims.sub.clone();
        if !with_admin(&state, move |a| a.operator_exists(&name)).await? {
            return Err(ApiError::Unauthorized(format!("operator `{}` was removed", claims.sub)));
        }
        Ok(())
    };
    match checked.await {
        Ok(()) => next.run(req).await,
        Err(e) => {
            let mut r = HttpError(e).into_response();
            if r.status() == StatusCode::UNAUTHORIZED {
                r.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            r
        }
    }
}

fn limit_of(q: &HashMap<String, String>) -> Result<u64, ApiError> {
    match q.get("limit").filter(|v| !v.is_empty()) {
        None => Ok(50),
        Some(v) => v
            .parse::<u64>()
            .ok()
            .filter(|&n| (1..=MAX_LIMIT).contains(&n))
            .ok_or_else(|| ApiError::Invalid(format!("limit `{v}`: expected 1 to {MAX_LIMIT}"))),
    }
}

fn json<T: serde::Serialize>(v: T) -> Response {
    axum::Json(v).into_response()
}

async fn overview(State(state): Shared) -> HttpResult<Response> {
    Ok(json(with_admin(&state, |a| a.overview()).await?))
}

async fn workers(State(state): Shared) -> HttpResult<Response> {
    Ok(json(with_admin(&state, |a| a.workers()).await?))
}

async fn drain(State(state): Shared, Path(id): Path<String>) -> HttpResult<Response> {
    with_admin(&state, move |a| a.drain(&id)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn keys(State(state): Shared) -> HttpResult<Response> {
    Ok(json(with_admin(&state, |a| a.keys()).await?))
}

async fn add_key(State(state): Shared, Path(id): Path<String>) -> HttpResult<Response> {
    let c = with_admin(&state, move |a| a.add_key(&id)).await?;
    Ok((StatusCode::CREATED, axum::Json(c)).into_response())
}

async fn rotate(State(state): Shared, Path(id): Path<String>) -> HttpResult<Response> {
    Ok(json(with_admin(&state, move |a| a.rotate_key(&id)).await?))
}

async fn revoke(State(state): Shared, Path(id): Path<String>) -> HttpResult<Response> {
    with_admin(&state, move |a| a.revoke_key(&id)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn tasks(
    State(state): Shared,
    Query(q): Query<HashMap<String, String>>,
) -> HttpResult<Response> {
    let query = task_query(&q, limit_of(&q)?)?;
    Ok(json(with_admin(&state, move |a| a.tasks(&query)).await?))
}

/// `POST /admin/api/tasks/seed` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SeedRequest {
    /// Tokens to cover (0 = one epoch).
    tokens: u64,
}

async fn seed(
    State(state): Shared,
    axum::Json(req): axum::Json<SeedRequest>,
) -> HttpResult<Response> {
    Ok(json(with_admin(&state, move |a| a.seed(req.tokens)).await?))
}

async fn requeue(State(state): Shared) -> HttpResult<Response> {
    let n = with_admin(&state, |a| a.requeue_failed()).await?;
    Ok(json(serde_json::json!({ "requeued": n })))
}

async fn logs(
    State(state): Shared,
    Query(q): Query<HashMap<String, String>>,
) -> HttpResult<Response> {
    let query = log_query(&q, limit_of(&q)?)?;
    Ok(json(with_admin(&state, move |a| a.logs(&query)).await?))
}

/// The API's routes.
pub(crate) fn router(state: Arc<AppState>) -> Router<Arc<AppState>> {
    Router::new()
        .route("/admin/api/overview", get(overview))
        .route("/admin/api/workers", get(workers))
        .route("/admin/api/workers/{id}/drain", post(drain))
        .route("/admin/api/keys", get(keys))
        .route("/admin/api/keys/{id}", post(add_key))
        .route("/admin/api/keys/{id}/rotate", post(rotate))
        .route("/admin/api/keys/{id}/revoke", post(revoke))
        .route("/admin/api/tasks", get(tasks))
        .route("/admin/api/tasks/seed", post(seed))
        .route("/admin/api/tasks/requeue", post(requeue))
        .route("/admin/api/logs", get(logs))
        .route_layer(from_fn_with_state(state, require_admin_token))
}
