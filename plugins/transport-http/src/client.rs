//! The worker's HTTP client: reqwest (blocking, rustls), with the token cached and refreshed
//! before it expires (and once more when the server answers 401).

use crate::HttpConfig;
use crate::server::{SHA256_HEADER, TokenResponse, UPLOAD_META_HEADER, VERSION_HEADER};
use bitnet_framework::protocol::{
    ApiError, Blob, CoordinatorClient, Heartbeat, HeartbeatReply, LogRecord, PresignedUrl,
    Registered, Registration, StatusReport, TaskSpec, UpdateUpload, UploadReceipt,
};
use bitnet_framework::transport::Credentials;
use reqwest::StatusCode;
use reqwest::blocking::{Client, RequestBuilder, Response};
use serde::de::DeserializeOwned;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A worker's connection to an HTTP coordinator.
pub struct HttpClient {
    /// The coordinator's endpoints: one, or every replica of a replicated coordinator.
    bases: Vec<String>,
    /// The endpoint in use; the next one is tried after a connection failure.
    current: usize,
    credentials: Credentials,
    http: Client,
    token: Option<(String, Instant)>,
    refresh_margin: Duration,
    /// Downloads from the object store: built on first use, see [`HttpClient::fetch_direct`].
    direct: Option<Client>,
    timeout: Duration,
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
    /// A client of the coordinator at `base` (e.g. `https://coordinator:8443`, or the URLs of
    /// its replicas separated by commas, tried in turn when one is unreachable). With a CA
    /// certificate in the credentials, that CA alone is trusted (pinned). Refuses a plain
    /// `http://` coordinator that is not on loopback unless `allow_plain_http`: the secret
    /// would cross the network in clear text.
    pub fn new(
        base: &str,
        credentials: Credentials,
        config: &HttpConfig,
    ) -> Result<Self, ApiError> {
        let bases = endpoints(base, config)?;
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
            bases,
            current: 0,
            credentials,
            http,
            token: None,
            refresh_margin: Duration::from_secs(config.token_refresh_margin_secs),
            direct: None,
            timeout: Duration::from_secs(config.request_timeout_secs.max(1)),
        })
    }

    /// Downloads a presigned object-store URL, reading at most `url.bytes` bytes.
    ///
    /// Its client is not the coordinator's: it trusts the built-in web roots (the object
    /// store's certificates), never the CA pinned for the coordinator, sends no token, and
    /// follows no redirect. Plain `http://` is accepted, as the coordinator's store config
    /// allowed it (`weight_store.allow_http`) and the caller checks the SHA-256 of every byte.
    /// Errors never quote the URL (its query string is a credential).
    pub fn fetch_direct(&mut self, url: &PresignedUrl) -> Result<Vec<u8>, ApiError> {
        let lower = url.url.get(..8).unwrap_or(&url.url).to_ascii_lowercase();
        if !lower.starts_with("https://") && !lower.starts_with("http://") {
            return Err(ApiError::Invalid("a presigned URL must be http:// or https://".into()));
        }
        let client = match &self.direct {
            Some(c) => c.clone(),
            None => {
                let c = Client::builder()
                    .timeout(self.timeout)
                    .connect_timeout(Duration::from_secs(10))
                    .redirect(reqwest::redirect::Policy::none())
                    .build()
                    .map_err(|e| ApiError::Transport(e.without_url().to_string()))?;
                self.direct = Some(c.clone());
                c
            }
        };
        let resp = client
            .get(&url.url)
            .send()
            .map_err(|e| ApiError::Transport(e.without_url().to_string()))?;
        let status = resp.status();
        if !status.is_success() {
            // The body is the store's XML error; the status says enough.
            return Err(crate::status::error_from_status(
                status.as_u16(),
                format!("the object store answered {status}"),
                None,
            ));
        }
        if let Some(len) = resp.content_length()
            && len != url.bytes
        {
            return Err(ApiError::Invalid(format!(
                "the object store announced {len} bytes, the task {}",
                url.bytes
            )));
        }
        read_bounded(resp, url.bytes)
    }

    /// The endpoint in use.
    pub fn base(&self) -> &str {
        &self.bases[self.current]
    }

    /// Every endpoint, in the order they are tried.
    pub fn endpoints(&self) -> &[String] {
        &self.bases
    }

    /// A request that reached no server: the next call goes to the next endpoint (another
    /// replica), and the worker's retry loop makes it.
    fn connection_failed(&mut self, e: reqwest::Error) -> ApiError {
        if self.bases.len() > 1 && (e.is_connect() || e.is_timeout() || e.is_request()) {
            let from = self.current;
            self.current = (self.current + 1) % self.bases.len();
            tracing::warn!(
                from = %self.bases[from],
                to = %self.bases[self.current],
                "coordinator endpoint unreachable; trying the next replica"
            );
        }
        transport_err(e)
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
            .post(format!("{}/connect/token", self.base()))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .map_err(|e| self.connection_failed(e))?;
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
            let resp = make(&self.http, self.base())
                .bearer_auth(token)
                .send()
                .map_err(|e| self.connection_failed(e))?;
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

/// The endpoints of `list` (one URL, or several separated by commas: the replicas of one
/// coordinator). Refuses a plain `http://` endpoint that is not on loopback unless
/// `allow_plain_http`: the secret would cross the network in clear text.
fn endpoints(list: &str, config: &HttpConfig) -> Result<Vec<String>, ApiError> {
    let mut out = Vec::new();
    for base in list.split(',').map(str::trim).filter(|b| !b.is_empty()) {
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
        out.push(base.trim_end_matches('/').to_string());
    }
    if out.is_empty() {
        return Err(ApiError::Invalid(format!(
            "no coordinator endpoint in `{list}` (one URL, or the replicas' URLs separated by \
             commas)"
        )));
    }
    Ok(out)
}

/// Reads `resp`'s body, which must hold exactly `expected` bytes; never more is read.
fn read_bounded(resp: Response, expected: u64) -> Result<Vec<u8>, ApiError> {
    use std::io::Read;
    // Reserve no more than a sane amount up front: `expected` comes from the coordinator, but
    // the body may still end early.
    let mut body = Vec::with_capacity(expected.min(64 << 20) as usize);
    resp.take(expected.saturating_add(1))
        .read_to_end(&mut body)
        .map_err(|e| ApiError::Transport(format!("reading from the object store: {e}")))?;
    if body.len() as u64 != expected {
        return Err(ApiError::Invalid(format!(
            "the object store sent {}{} bytes, the task announced {expected}",
            body.len(),
            if body.len() as u64 > expected { " or more" } else { "" }
        )));
    }
    Ok(body)
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
        let url = format!("{}/status", self.base());
        let resp = self.http.get(url).send().map_err(|e| self.connection_failed(e))?;
        if !resp.status().is_success() {
            return Err(error_of(resp));
        }
        json(resp)
    }

    fn fetch_presigned(&mut self, url: &PresignedUrl) -> Option<Result<Vec<u8>, ApiError>> {
        Some(self.fetch_direct(url))
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::thread::JoinHandle;

    /// A server answering one request with `response`; returns the URL (with a stand-in
    /// signature) and the request head it received.
    fn serve_once(response: Vec<u8>) -> (String, JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let handle = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().expect("accept");
            let mut head = [0u8; 4096];
            let n = stream.read(&mut head).expect("read");
            stream.write_all(&response).expect("write");
            String::from_utf8_lossy(&head[..n]).into_owned()
        });
        (format!("http://{addr}/bucket/key?X-Amz-Signature=s3cr3t"), handle)
    }

    fn client() -> HttpClient {
        let credentials =
            Credentials { client_id: "w".into(), client_secret: "pw".into(), ca_certificate: None };
        HttpClient::new("http://127.0.0.1:1", credentials, &HttpConfig::default()).expect("client")
    }

    fn presigned(url: String, bytes: u64) -> PresignedUrl {
        PresignedUrl { url, bytes, expires_ms: u64::MAX }
    }

    #[test]
    fn a_presigned_download_reads_exactly_the_announced_bytes_and_sends_no_token() {
        let (url, server) =
            serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello".to_vec());
        assert_eq!(client().fetch_direct(&presigned(url, 5)).expect("download"), b"hello");
        let head = server.join().expect("server").to_ascii_lowercase();
        assert!(head.starts_with("get /bucket/key?x-amz-signature="), "{head}");
        assert!(!head.contains("authorization"), "no credentials go to the store: {head}");
    }

    #[test]
    fn a_presigned_download_of_another_length_is_refused() {
        let (url, server) =
            serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nhello!!!!".to_vec());
        let err = client().fetch_direct(&presigned(url, 5)).expect_err("announced 9");
        assert!(matches!(&err, ApiError::Invalid(m) if m.contains("announced 9")), "{err}");
        server.join().expect("server");
        // No length announced: the body is read up to one byte past the bound, no further.
        let mut long = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".to_vec();
        long.extend_from_slice(&[7u8; 4096]);
        let (url, server) = serve_once(long);
        let err = client().fetch_direct(&presigned(url, 5)).expect_err("too long");
        assert!(matches!(&err, ApiError::Invalid(m) if m.contains("6 or more")), "{err}");
        server.join().expect("server");
        let (url, server) = serve_once(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nhi".to_vec());
        let err = client().fetch_direct(&presigned(url, 5)).expect_err("too short");
        assert!(matches!(&err, ApiError::Invalid(m) if m.contains("sent 2 bytes")), "{err}");
        server.join().expect("server");
    }

    #[test]
    fn refusals_map_to_errors_that_never_quote_the_signature() {
        let (url, server) = serve_once(
            b"HTTP/1.1 403 Forbidden\r\nContent-Length: 22\r\n\r\n<Error>expired</Error>".to_vec(),
        );
        let err = client().fetch_direct(&presigned(url, 5)).expect_err("403");
        assert!(matches!(err, ApiError::Forbidden(_)) && !err.is_retryable(), "{err}");
        assert!(!err.to_string().contains("s3cr3t"), "{err}");
        server.join().expect("server");
        let (url, server) = serve_once(
            b"HTTP/1.1 307 Temporary Redirect\r\nLocation: http://127.0.0.1:1/\r\nContent-Length: 0\r\n\r\n"
                .to_vec(),
        );
        assert!(client().fetch_direct(&presigned(url, 5)).is_err(), "redirects are not followed");
        server.join().expect("server");
        let closed = TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr");
        let url = format!("http://{closed}/k?X-Amz-Signature=s3cr3t");
        let err = client().fetch_direct(&presigned(url, 5)).expect_err("nothing listens");
        assert!(err.is_retryable() && !err.to_string().contains("s3cr3t"), "{err}");
        for url in ["ftp://example.com/k", "file:///etc/passwd", "k"] {
            let err = client().fetch_direct(&presigned(url.into(), 5)).expect_err(url);
            assert!(matches!(err, ApiError::Invalid(_)), "{url}: {err}");
        }
    }
}
