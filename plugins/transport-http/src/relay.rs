//! A follower replica's server: it answers logins and `/health` itself and relays every other
//! request, as it came, to the replica that leads.
//!
//! Relaying at the HTTP level keeps the worker's own bearer token on the request, so the
//! leader authenticates the worker exactly as if it had called it directly; no replica can act
//! for a worker. A protected request (one with a bearer token) is authenticated here first,
//! before its body is read, so a follower buffers an upload only for a worker the leader would
//! accept; other bodies are limited to `max_json_bytes`. A relay that finds no leader, or a
//! leader that does not answer, answers 503 with `Retry-After`, which workers retry: that is
//! what they see during a takeover.

use crate::server::{HttpError, Shared};
use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bitnet_framework::protocol::ApiError;
use bitnet_framework::transport::LeaderLocator;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// What a follower relays with.
pub(crate) struct Relay {
    pub(crate) leader: Arc<dyn LeaderLocator>,
    client: reqwest::Client,
    /// Largest body relayed without a bearer token, bytes.
    max_json_bytes: usize,
    /// Largest body relayed with one (an upload), bytes.
    max_upload_bytes: usize,
}

impl Relay {
    pub(crate) fn new(
        leader: Arc<dyn LeaderLocator>,
        timeout: Duration,
        max_json_bytes: usize,
        max_upload_bytes: usize,
    ) -> Result<Self, ApiError> {
        let mut builder = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none());
        if let Some(pem) = leader.ca_certificate() {
            let ca = reqwest::Certificate::from_pem(pem.as_bytes()).map_err(|e| {
                ApiError::Internal(format!("the replicas' CA certificate is not PEM: {e}"))
            })?;
            builder = builder.tls_built_in_root_certs(false).add_root_certificate(ca);
        }
        let client = builder
            .build()
            .map_err(|e| ApiError::Internal(format!("building the relay's client: {e}")))?;
        Ok(Self { leader, client, max_json_bytes, max_upload_bytes })
    }
}

/// Headers that describe one connection, not the request: never relayed (RFC 9110 7.6.1).
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
            | "content-length"
    )
}

fn unavailable(message: String) -> Response {
    let mut r = HttpError(ApiError::Unavailable(message)).into_response();
    r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

/// `GET /health/leader` on a follower: 503, so a load balancer sends the leader's traffic
/// elsewhere.
pub(crate) async fn not_leader() -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, "follower").into_response()
}

/// Relays `req` to the leader and its answer back.
pub(crate) async fn relay(
    axum::extract::State(state): Shared,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    let Some(relay) = state.relay.as_ref() else {
        return HttpError(ApiError::NotFound("no such endpoint".into())).into_response();
    };
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().starts_with("bearer "));
    let limit = if bearer {
        if let Err(e) = crate::server::authenticate(&state, req.headers()).await {
            return HttpError(e).into_response();
        }
        relay.max_upload_bytes
    } else {
        relay.max_json_bytes
    };
    let Some(leader) = relay.leader.leader_endpoint() else {
        return unavailable(
            "no coordinator replica leads at the moment (a takeover is under way): retry".into(),
        );
    };
    let (parts, body) = req.into_parts();
    let body = match axum::body::to_bytes(body, limit).await {
        Ok(b) => b,
        Err(e) => {
            return HttpError(ApiError::TooLarge(format!(
                "reading a relayed body of at most {limit} bytes: {e}"
            )))
            .into_response();
        }
    };
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let url = format!("{}{path}", leader.trim_end_matches('/'));
    let mut headers = HeaderMap::new();
    for (name, value) in &parts.headers {
        if !hop_by_hop(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    if let Ok(v) = HeaderValue::from_str(&peer.ip().to_string()) {
        headers.insert("x-forwarded-for", v);
    }
    let sent = relay.client.request(parts.method, &url).headers(headers).body(body).send().await;
    let answer = match sent {
        Ok(a) => a,
        Err(e) => {
            let e = e.without_url();
            tracing::warn!(%leader, error = %e, "relaying to the leader failed");
            return unavailable(format!(
                "the leading replica ({leader}) did not answer ({e}); a follower takes over \
                 when its lease expires: retry"
            ));
        }
    };
    let status = answer.status();
    let mut out = HeaderMap::new();
    for (name, value) in answer.headers() {
        if !hop_by_hop(name) {
            out.append(name.clone(), value.clone());
        }
    }
    match answer.bytes().await {
        Ok(bytes) => {
            let mut r = Response::new(Body::from(bytes));
            *r.status_mut() = status;
            *r.headers_mut() = out;
            r
        }
        Err(e) => unavailable(format!(
            "the leading replica's answer broke off ({}): retry",
            e.without_url()
        )),
    }
}
