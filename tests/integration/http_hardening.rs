//! The HTTP coordinator as a hostile client finds it, on 127.0.0.1: bodies refused from their
//! headers, login floods and lockouts answered 429, slow headers closed, a connection cap, and
//! TLS with a pinned CA.

use bitnet_framework::protocol::{ApiError, CoordinatorApi};
use bitnet_framework::transport::{Credentials, ServerHandle};
use bitnet_runtime::coordinator::Coordinator;
use bitnet_runtime::run::assemble::build_transport;
use bitnet_tests::dist;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn serve(overrides: &[&str]) -> (tempfile::TempDir, Arc<Coordinator>, Box<dyn ServerHandle>) {
    let dir = bitnet_tests::temp_dir();
    let registry = dist::registry();
    let mut all = vec!["transport.type=http", "transport.bind=127.0.0.1:0"];
    all.extend_from_slice(overrides);
    let config = dist::tiny_config(dir.path(), &all);
    let c = dist::start_coordinator(&config, &registry, dist::pattern_corpus(1, 640), 0, 64);
    let api: Arc<dyn CoordinatorApi> = Arc::clone(&c) as Arc<dyn CoordinatorApi>;
    let server = build_transport(&config, &registry)
        .expect("transport")
        .serve(bitnet_runtime::auth::serve_context(api, Arc::clone(c.store())))
        .expect("serve");
    (dir, c, server)
}

fn host_port(endpoint: &str) -> String {
    endpoint.split("://").nth(1).expect("scheme").to_string()
}

/// Sends `head` (and no body) on a fresh connection and returns the status line.
fn raw_status(endpoint: &str, head: &str) -> String {
    let mut s = TcpStream::connect(host_port(endpoint)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    s.write_all(head.as_bytes()).expect("write");
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).expect("the server answers without waiting for the body");
    let text = String::from_utf8_lossy(&buf[..n]).to_string();
    let status = text.lines().next().unwrap_or_default().to_string();
    format!("{status} | {}", text.lines().last().unwrap_or_default())
}

fn login(
    http: &reqwest::blocking::Client,
    base: &str,
    id: &str,
    secret: &str,
) -> reqwest::blocking::Response {
    http.post(format!("{base}/connect/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("grant_type=client_credentials&client_id={id}&client_secret={secret}"))
        .send()
        .expect("token request")
}

fn token_of(r: reqwest::blocking::Response) -> String {
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().expect("json");
    v["access_token"].as_str().expect("token").to_string()
}

#[test]
fn bodies_are_refused_from_their_headers_before_a_byte_is_read() {
    let (_dir, c, server) = serve(&[]);
    let base = server.endpoint();
    // 100 MB declared, none sent: today's limit for this model is far smaller, and the token
    // is checked first, so both answers come without reading (or waiting for) the body.
    let head = "POST /gradient HTTP/1.1\r\nhost: x\r\ncontent-length: 100000000\r\n\r\n";
    assert!(raw_status(&base, head).contains(" 401 "), "no token");
    let creds = dist::add_client(&c, "w1");
    let http = reqwest::blocking::Client::new();
    let token = token_of(login(&http, &base, &creds.client_id, &creds.client_secret));
    let head = format!(
        "POST /gradient HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\n\
         content-length: 100000000\r\n\r\n"
    );
    let status = raw_status(&base, &head);
    assert!(status.contains(" 413 "), "larger than any update of this run: {status}");
    let limit = c.upload_limit().expect("the coordinator knows its limit");
    assert!(limit < 1 << 20, "the tiny model's limit is its update size, not 512 MiB: {limit}");
    drop(server);
    c.shutdown();
}

#[test]
fn login_floods_get_429_and_repeated_failures_lock_a_client_out() {
    let (_dir, c, server) = serve(&[
        "transport.logins_per_ip_per_minute=60",
        "transport.lockout_failures=3",
        "transport.lockout_secs=600",
    ]);
    let base = server.endpoint();
    let http = reqwest::blocking::Client::new();
    let (w1, w2) = (dist::add_client(&c, "w1"), dist::add_client(&c, "w2"));
    let token = token_of(login(&http, &base, &w2.client_id, &w2.client_secret));
    for _ in 0..3 {
        assert_eq!(login(&http, &base, "w1", "wrong").status(), 401);
    }
    let locked = login(&http, &base, &w1.client_id, &w1.client_secret);
    assert_eq!(locked.status(), 429, "even the right secret waits out the lockout");
    let wait: u64 = locked.headers()["retry-after"].to_str().expect("ascii").parse().expect("secs");
    assert!((590..=600).contains(&wait), "{wait}");
    assert!(locked.text().expect("body").contains("locked out"));
    // The same IP keeps guessing unknown ids: the per-IP limit answers 429 without verifying.
    let started = Instant::now();
    let limited = (0..30)
        .map(|i| login(&http, &base, &format!("guess-{i}"), "x").status().as_u16())
        .find(|&s| s == 429);
    assert_eq!(limited, Some(429), "a flood from one IP is rate limited");
    assert!(started.elapsed() < Duration::from_secs(20));
    let metrics = http
        .get(format!("{base}/metrics"))
        .bearer_auth(&token)
        .send()
        .expect("metrics")
        .text()
        .expect("text");
    let value = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from /metrics"))
    };
    assert!(value("bitnet_auth_login_failures_total") >= 3);
    assert_eq!(value("bitnet_auth_locked_out_total"), 1);
    assert!(value("bitnet_auth_rate_limited_total") >= 1);
    drop(server);
    c.shutdown();
}

#[test]
fn slow_headers_and_idle_connections_are_closed_and_connections_are_capped() {
    let (_dir, c, server) =
        serve(&["transport.header_read_timeout_secs=1", "transport.max_connections=8"]);
    let base = server.endpoint();
    let slow: Vec<TcpStream> = (0..8)
        .map(|_| {
            let mut s = TcpStream::connect(host_port(&base)).expect("connect");
            s.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n").expect("partial header");
            s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    // The ninth connection is over the cap: closed at once, no answer.
    let mut ninth = TcpStream::connect(host_port(&base)).expect("connect");
    ninth.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let _ = ninth.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n");
    let mut buf = [0u8; 64];
    let answered = matches!(ninth.read(&mut buf), Ok(n) if n > 0);
    assert!(!answered, "a connection over the cap is closed without an answer");
    // The slow ones are closed after the header timeout, so the cap frees up.
    let started = Instant::now();
    for mut s in slow {
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        assert!(started.elapsed() < Duration::from_secs(8), "slow header not closed in time");
    }
    let health = reqwest::blocking::get(format!("{base}/health")).expect("health");
    assert_eq!(health.text().expect("text"), "ok");
    // Idle connections are closed too: one that never sends a byte, and a keep-alive one after
    // its first answer (the timeout then bounds the wait for the next request's headers).
    let mut silent = TcpStream::connect(host_port(&base)).expect("connect");
    let mut kept = TcpStream::connect(host_port(&base)).expect("connect");
    kept.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n").expect("request");
    for s in [&mut silent, &mut kept] {
        s.set_read_timeout(Some(Duration::from_secs(8))).expect("timeout");
    }
    let mut answer = Vec::new();
    let closed = kept.read_to_end(&mut answer);
    assert!(closed.is_ok(), "an idle keep-alive connection is closed: {closed:?}");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("ok"), "{answer}");
    let closed = silent.read_to_end(&mut Vec::new());
    assert!(closed.is_ok(), "a connection that sends nothing is closed: {closed:?}");
    drop(server);
    c.shutdown();
}

fn issue_certs(
    dir: &std::path::Path,
    tag: &str,
) -> (String, std::path::PathBuf, std::path::PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
    let ca_key = KeyPair::generate().expect("ca key");
    let mut ca = CertificateParams::default();
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    let ca_pem = ca.self_signed(&ca_key).expect("ca").pem();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().expect("server key");
    let mut server = CertificateParams::default();
    server.subject_alt_names.push(SanType::IpAddress("127.0.0.1".parse().expect("ip")));
    let cert = server.signed_by(&key, &issuer).expect("server cert");
    let (cert_file, key_file) = (dir.join(format!("{tag}.pem")), dir.join(format!("{tag}.key")));
    std::fs::write(&cert_file, cert.pem()).expect("write");
    std::fs::write(&key_file, key.serialize_pem()).expect("write");
    (ca_pem, cert_file, key_file)
}

#[test]
fn tls_with_a_pinned_ca_and_no_secrets_over_plain_http() {
    let certs = bitnet_tests::temp_dir();
    let (ca, cert, key) = issue_certs(certs.path(), "server");
    let (other_ca, _, _) = issue_certs(certs.path(), "other");
    let cert_opt = format!("transport.tls_cert_file={}", cert.display());
    let key_opt = format!("transport.tls_key_file={}", key.display());
    let (dir, c, server) = serve(&[&cert_opt, &key_opt]);
    let base = server.endpoint();
    assert!(base.starts_with("https://127.0.0.1:"), "{base}");
    let config = dist::tiny_config(dir.path(), &["transport.type=http"]);
    let transport = build_transport(&config, &dist::registry()).expect("transport");
    let creds = dist::add_client(&c, "w1");
    let pinned = Credentials { ca_certificate: Some(ca), ..creds.clone() };
    transport.connect(&base, pinned).expect("the pinned CA verifies the coordinator");
    for (what, ca) in [("another CA", Some(other_ca)), ("the system's roots", None)] {
        let err = transport
            .connect(&base, Credentials { ca_certificate: ca, ..creds.clone() })
            .err()
            .unwrap_or_else(|| panic!("{what} must not verify the coordinator"));
        assert!(matches!(err, ApiError::Transport(_)), "{what}: {err}");
    }
    // Plain HTTP beyond loopback: refused before a byte (or the secret) is sent.
    let err = transport
        .connect("http://10.255.255.1:9", creds)
        .err()
        .expect("plain HTTP to a remote host is refused");
    assert!(matches!(err, ApiError::Invalid(ref m) if m.contains("plain HTTP")), "{err}");
    drop(server);
    c.shutdown();

    // And the server refuses to serve plain HTTP beyond loopback unless told to.
    let registry = dist::registry();
    let open = dist::tiny_config(dir.path(), &["transport.type=http", "transport.bind=0.0.0.0:0"]);
    let api: Arc<dyn CoordinatorApi> = Arc::clone(&c) as Arc<dyn CoordinatorApi>;
    let ctx = bitnet_runtime::auth::serve_context(api, Arc::clone(c.store()));
    let err = build_transport(&open, &registry).expect("transport").serve(ctx.clone()).err();
    let err = err.expect("plain HTTP on 0.0.0.0 is refused");
    assert!(err.to_string().contains("allow_plain_http"), "{err}");
    let allowed = dist::tiny_config(
        dir.path(),
        &["transport.type=http", "transport.bind=0.0.0.0:0", "transport.allow_plain_http=true"],
    );
    let s = build_transport(&allowed, &registry).expect("transport").serve(ctx).expect("allowed");
    drop(s);
}
