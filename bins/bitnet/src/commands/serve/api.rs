//! The HTTP API of `bitnet serve`: routes, request and response bodies, and errors.
//!
//! - `POST /v1/intent` `{"utterance": "..."}` -> `{"intent", "slots", "confidence", "abstained"}`
//! - `POST /v1/intents` `{"utterances": ["...", ...]}` -> `{"answers": [...]}`, in order
//! - `GET /health` -> `{"status": "ok", "models", "held", "capacity"}`
//!
//! Every error is `{"error": "..."}` with a 4xx or 5xx status: 400 malformed JSON, 415 not
//! `application/json`, 413 body over the limit, 422 a well-formed body that is refused (unknown
//! or missing field, empty or too long utterance, too many utterances), 503 the queue is full,
//! 500 a model failed.

use super::pool::{ModelPool, PoolFull, Reply};
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bitnet_truckmate::answer::{Answer, ClassifyError};
use bitnet_truckmate::eval_set::MAX_UTTERANCE_CHARS;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Limits of the API.
#[derive(Debug, Clone, Copy)]
pub struct ApiLimits {
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// Most utterances in one `/v1/intents` request.
    pub max_batch: usize,
}

/// Shared by every handler.
pub struct AppState {
    /// The models.
    pub pool: ModelPool,
    /// The limits.
    pub limits: ApiLimits,
}

/// `POST /v1/intent`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntentRequest {
    /// What the driver said.
    pub utterance: String,
}

/// `POST /v1/intents`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntentsRequest {
    /// What the driver said, several times.
    pub utterances: Vec<String>,
}

/// The answer of `POST /v1/intents`.
#[derive(Debug, Serialize)]
pub struct IntentsResponse {
    /// One answer per utterance, in order.
    pub answers: Vec<Answer>,
}

/// An error answer: a status and `{"error": message}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into() }
    }

    fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(serde_json::json!({ "error": self.message }))).into_response()
    }
}

impl From<JsonRejection> for ApiError {
    /// axum's own status (400 syntax, 415 content type, 413 body limit, 422 wrong fields) and
    /// its reason.
    fn from(r: JsonRejection) -> Self {
        Self::new(r.status(), r.body_text())
    }
}

impl From<PoolFull> for ApiError {
    fn from(full: PoolFull) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("busy: {} utterances are decoding or queued; retry later", full.capacity),
        )
    }
}

/// Refuses an utterance before it takes a place in the queue. `which` names it in the message.
fn check_utterance(utterance: &str, which: &str) -> Result<(), ApiError> {
    if utterance.trim().is_empty() {
        return Err(ApiError::unprocessable(format!("{which} is empty")));
    }
    let chars = utterance.chars().count();
    if chars > MAX_UTTERANCE_CHARS {
        return Err(ApiError::unprocessable(format!(
            "{which} has {chars} characters; at most {MAX_UTTERANCE_CHARS} are accepted"
        )));
    }
    Ok(())
}

/// Waits for each reply in order.
async fn answers(replies: Vec<Reply>, several: bool) -> Result<Vec<Answer>, ApiError> {
    let mut out = Vec::with_capacity(replies.len());
    for (i, reply) in replies.into_iter().enumerate() {
        let which = if several { format!("utterance {i}: ") } else { String::new() };
        match reply.await {
            Ok(Ok(answer)) => out.push(answer),
            Ok(Err(
                e @ (ClassifyError::TooManyChars { .. } | ClassifyError::TooManyTokens { .. }),
            )) => {
                return Err(ApiError::unprocessable(format!("{which}{e}")));
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "decoding failed");
                return Err(ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("{which}{e}"),
                ));
            }
            Err(_) => {
                return Err(ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("{which}the model thread stopped"),
                ));
            }
        }
    }
    Ok(out)
}

async fn intent(
    State(state): State<Arc<AppState>>,
    body: Result<Json<IntentRequest>, JsonRejection>,
) -> Result<Json<Answer>, ApiError> {
    let Json(request) = body?;
    check_utterance(&request.utterance, "the utterance")?;
    let replies = state.pool.submit(vec![request.utterance])?;
    let mut answers = answers(replies, false).await?;
    answers
        .pop()
        .map(Json)
        .ok_or_else(|| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "no answer"))
}

async fn intents(
    State(state): State<Arc<AppState>>,
    body: Result<Json<IntentsRequest>, JsonRejection>,
) -> Result<Json<IntentsResponse>, ApiError> {
    let Json(request) = body?;
    let (n, max) = (request.utterances.len(), state.limits.max_batch);
    if n == 0 || n > max {
        return Err(ApiError::unprocessable(format!("{n} utterances; a request holds 1 to {max}")));
    }
    for (i, u) in request.utterances.iter().enumerate() {
        check_utterance(u, &format!("utterance {i}"))?;
    }
    let replies = state.pool.submit(request.utterances)?;
    Ok(Json(IntentsResponse { answers: answers(replies, true).await? }))
}

async fn health(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "status": "ok",
        "models": state.pool.models(),
        "held": state.pool.held(),
        "capacity": state.pool.capacity(),
    }))
}

/// The routes, with the body limit on every request.
pub fn router(state: Arc<AppState>) -> Router {
    let limit = DefaultBodyLimit::max(state.limits.max_body_bytes);
    Router::new()
        .route("/v1/intent", post(intent))
        .route("/v1/intents", post(intents))
        .route("/health", get(health))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such route") })
        .layer(limit)
        .with_state(state)
}
