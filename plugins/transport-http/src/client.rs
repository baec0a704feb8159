//! The worker's HTTP client: reqwest (blocking, rustls), with the token cached and refreshed
//! before it expires (and once more when the server answers 401).

use crate::HttpConfig;
use crate::server::{SHA256_HEADER, TokenResponse, UPLOAD_META_HEADER, VERSION_HEADER};
use bitnet_framework::protocol::{
    ApiError, Blob, CoordinatorClient, Heartbeat, HeartbeatReply, LogRecord, Registered,
    Registration, StatusReport, TaskSpec, UpdateUpload, UploadReceipt,
};
use bitnet_framework::transport::Credentials;
use reqwest::StatusCode;
use reqwest::blocking::{Client, RequestBuilder, Response};
use serde::de::DeserializeOwned;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A worker's connection to an HTTP coordinator.
pub struct HttpClient {
    base: String,
    credentials: Credentials,
    http: Client,
    token: Option<(String, Instant)>,
    refresh_margin: Duration,
}

fn transport_err(e: reqwest::Error) -> ApiError {
    ApiError::Transport(e.to_string())
}

/// Turns a non-success response into the protocol error it carries.
fn error_of(resp: Response) -> ApiError {
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let text = resp.text().unwrap_or_default();
    let message = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
        .unwrap_or(text);
    crate::status::error_from_status(status, message, retry_after)
}

fn json<T: DeserializeOwned>(resp: Response) -> Result<T, ApiError> {
    resp.json::<T>().map_err(|e| ApiError::Transport(format!("decoding the response: {e}")))
}

impl HttpClient {
    /// A client of the coordinator at `base` (e.g. `https://coordinator:8443`). With a CA
    /// certificate in the credentials, that CA alone is trusted (pinned). Refuses a plain
    /// `http://` coordinator that is not on loopback unless `allow_plain_http`: the secret
    /// would cross the network in clear text.
    pub fn new(
        base: &str,
        credentials: Credentials,
        config: &HttpConfig,
    ) -> Result<Self, ApiError> {
        let lower = base.to_ascii_lowercase();
        if lower.starts_with("http://")
            && !crate::tls::is_loopback_host(crate::tls::url_host(base))
            && !config.allow_plain_http
        {
            return Err(ApiError::Invalid(format!(
                "refusing to send credentials to {base} over plain HTTP; use https:// (the \
                 coordinator's transport.tls_cert_file), or set transport.allow_plain_http = \
                 true on a network you trust"
            )));
        }
        if !lower.starts_with("http://") && !lower.starts_with("https://") {
            return Err(ApiError::Invalid(format!(
                "coordinator endpoint `{base}` must start with https:// or http://"
            )));
        }
        let mut builder = Client::builder()
            .timeout(Duration::from_secs(config.request_timeout_secs.max(1)))
            .connect_timeout(Duration::from_secs(10));
        if let Some(pem) = &credentials.ca_certificate {
            let ca = reqwest::Certificate::from_pem(pem.as_bytes()).map_err(|e| {
                ApiError::Invalid(format!(
                    "the credentials' ca_certificate is not a PEM certificate: {e}"
                ))
            })?;
            builder = builder.tls_built_in_root_certs(false).add_root_certificate(ca);
        }
        let http = builder.build().map_err(transport_err)?;
        Ok(Self {
            base: base.trim_end_matches('/').to_string(),
            credentials,
            http,
            token: None,
            refresh_margin: Duration::from_secs(config.token_refresh_margin_secs),
        })
    }

    /// Requests a fresh token with the client credentials.
    pub fn refresh_token(&mut self) -> Result<(), ApiError> {
        let form = [
            ("grant_type", "client_credentials"),
            ("client_id", self.credentials.client_id.as_str()),
            ("client_secret", self.credentials.client_secret.as_str()),
        ];
        let body: String =
            form.iter().map(|(k, v)| format!("{k}={}", urlencode(v))).collect::<Vec<_>>().join("&");
        let resp = self
            .http
            .post(format!("{}/connect/token", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .map_err(transport_err)?;
        if !resp.status().is_success() {
            return Err(error_of(resp));
        }
        let t: TokenResponse = json(resp)?;
        let expires = Instant::now() + Duration::from_secs(t.expires_in);
        self.token = Some((t.access_token, expires));
        Ok(())
    }

    fn bearer(&mut self) -> Result<String, ApiError> {
        let fresh =
            matches!(&self.token, Some((_, exp)) if Instant::now() + self.refresh_margin < *exp);
        if !fresh {
            self.refresh_token()?;
        }
        self.token
            .as_ref()
            .map(|(t, _)| t.clone())
            .ok_or_else(|| ApiError::Unauthorized("no token".into()))
    }

    /// Sends an authenticated request built by `make`; on 401 refreshes the token once and
    /// retries (a rotated key or a server restart with a new signing key).
    fn send(
        &mut self,
        make: impl Fn(&Client, &str) -> RequestBuilder,
    ) -> Result<Response, ApiError> {
        let mut refreshed = false;
        loop {
            let token = self.bearer()?;
            let resp =
                make(&self.http, &self.base).bearer_auth(token).send().map_err(transport_err)?;
            if resp.status() == StatusCode::UNAUTHORIZED && !refreshed {
                refreshed = true;
                self.token = None;
                continue;
            }
            if !resp.status().is_success() {
                return Err(error_of(resp));
            }
            return Ok(resp);
        }
    }

    fn download(&mut self, path: String) -> Result<Blob, ApiError> {
        let resp = self.send(|c, b| c.get(format!("{b}{path}")))?;
        let header =
            |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
        let sha256 = header(SHA256_HEADER)
            .ok_or_else(|| ApiError::Transport(format!("{path}: no {SHA256_HEADER} header")))?;
        let version = header(VERSION_HEADER).and_then(|v| v.parse().ok()).unwrap_or(0);
        let bytes = resp.bytes().map_err(transport_err)?.to_vec();
        Ok(Blob { version, sha256, bytes: Arc::new(bytes) })
    }
}

/// Percent-encodes a form value.
fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn path_segment(s: &str) -> String {
    urlencode(s)
}

impl CoordinatorClient for HttpClient {
    fn worker_id(&self) -> &str {
        &self.credentials.client_id
    }

    fn register(&mut self, registration: Registration) -> Result<Registered, ApiError> {
        json(self.send(|c, b| c.post(format!("{b}/register")).json(&registration))?)
    }

    fn claim(&mut self) -> Result<Option<TaskSpec>, ApiError> {
        let resp = self.send(|c, b| c.get(format!("{b}/work")))?;
        if resp.status() == StatusCode::NO_CONTENT {
            return Ok(None);
        }
        json(resp).map(Some)
    }

    fn heartbeat(&mut self, heartbeat: Heartbeat) -> Result<HeartbeatReply, ApiError> {
        json(self.send(|c, b| c.post(format!("{b}/heartbeat")).json(&heartbeat))?)
    }

    fn upload(&mut self, upload: UpdateUpload) -> Result<UploadReceipt, ApiError> {
        let (meta, payload) = upload.split();
        let meta = serde_json::to_string(&meta)
            .map_err(|e| ApiError::Internal(format!("encoding upload metadata: {e}")))?;
        let payload = bytes_body(payload);
        json(self.send(|c, b| {
            c.post(format!("{b}/gradient"))
                .header(UPLOAD_META_HEADER, meta.as_str())
                .header("content-type", "application/octet-stream")
                .body(payload.clone())
        })?)
    }

    fn logs(&mut self, records: Vec<LogRecord>) -> Result<(), ApiError> {
        self.send(|c, b| c.post(format!("{b}/logs")).json(&records)).map(drop)
    }

    fn weights(&mut self, version: u64) -> Result<Blob, ApiError> {
        let v = if version == u64::MAX { "latest".to_string() } else { version.to_string() };
        self.download(format!("/weights/{v}"))
    }

    fn corpus(&mut self, shard: &str) -> Result<Blob, ApiError> {
        self.download(format!("/corpus/{}", path_segment(shard)))
    }

    fn status(&mut self) -> Result<StatusReport, ApiError> {
        let resp = self.http.get(format!("{}/status", self.base)).send().map_err(transport_err)?;
        if !resp.status().is_success() {
            return Err(error_of(resp));
        }
        json(resp)
    }
}

/// The payload as a cheaply clonable body (a retried request resends it).
fn bytes_body(payload: Vec<u8>) -> bytes_shim::SharedBytes {
    bytes_shim::SharedBytes(Arc::new(payload))
}

mod bytes_shim {
    use std::sync::Arc;

    /// Shared payload bytes usable as a reqwest body.
    #[derive(Clone)]
    pub struct SharedBytes(pub Arc<Vec<u8>>);

    impl From<SharedBytes> for reqwest::blocking::Body {
        fn from(b: SharedBytes) -> Self {
            // One copy per attempt; uploads are rarely retried.
            reqwest::blocking::Body::from(b.0.as_ref().clone())
        }
    }
}
