//! The HTTP transport against a coordinator in this process: the auth matrix, body limits,
//! malformed uploads, Range downloads, metrics, and a worker training over loopback.

use bitnet_framework::coordinator_store::TaskState;
use bitnet_framework::protocol::{ApiError, CoordinatorApi, TaskSpec, UploadMeta, now_ms};
use bitnet_framework::transport::Credentials;
use bitnet_runtime::coordinator::Coordinator;
use bitnet_runtime::run::assemble::{build_transport, build_worker_parts};
use bitnet_runtime::worker::Worker;
use bitnet_tests::dist;
use bitnet_transport_http::server::{SHA256_HEADER, UPLOAD_META_HEADER};
use bitnet_transport_http::token::{Claims, sign};
use reqwest::blocking::Client;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

fn token(http: &Client, base: &str, c: &Credentials) -> reqwest::blocking::Response {
    http.post(format!("{base}/connect/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "grant_type=client_credentials&client_id={}&client_secret={}",
            c.client_id, c.client_secret
        ))
        .send()
        .expect("token request")
}

fn bearer(http: &Client, base: &str, c: &Credentials) -> String {
    let r = token(http, base, c);
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().expect("json");
    assert_eq!(v["token_type"], "Bearer");
    v["access_token"].as_str().expect("token").to_string()
}

fn register(c: &Coordinator, id: &str) {
    let (kernel, _) = bitnet_runtime::run::assemble::kernel_and_context(
        &dist::tiny_config(std::path::Path::new("."), &[]),
        &dist::registry(),
    )
    .expect("kernel");
    c.register(
        id,
        bitnet_framework::protocol::Registration {
            threads: 1,
            tokens_per_sec: 1000.0,
            framework_version: "test".into(),
            layout_fingerprint: kernel.layout().fingerprint(),
            host: String::new(),
        },
    )
    .expect("register");
}

#[test]
fn http_auth_limits_downloads_and_training() {
    let dir = bitnet_tests::temp_dir();
    let registry = dist::registry();
    let config = dist::tiny_config(
        dir.path(),
        &["transport.type=http", "transport.bind=127.0.0.1:0", "transport.max_upload_bytes=100000"],
    );
    let c = dist::start_coordinator(&config, &registry, dist::pattern_corpus(1, 640), 0, 64);
    let api: Arc<dyn CoordinatorApi> = Arc::clone(&c) as Arc<dyn CoordinatorApi>;
    let server = build_transport(&config, &registry)
        .expect("transport")
        .serve(bitnet_runtime::auth::serve_context(api, Arc::clone(c.store())))
        .expect("serve");
    let base = server.endpoint();
    assert!(base.starts_with("http://127.0.0.1:"), "{base}");
    // No connection reuse: a server that refuses an oversized body (413) closes that
    // connection without reading the rest, and a pooled client could send the next request
    // down it before seeing the close (`IncompleteMessage`). Workers retry such errors; this
    // test checks each status exactly, so it asks for a fresh connection per request.
    let http = Client::builder().pool_max_idle_per_host(0).build().expect("client");
    let (w1, w2) = (dist::add_client(&c, "w1"), dist::add_client(&c, "w2"));
    register(&c, "w1");
    register(&c, "w2");

    // Public endpoints.
    assert_eq!(http.get(format!("{base}/health")).send().expect("health").text().expect("t"), "ok");
    assert_eq!(http.get(format!("{base}/status")).send().expect("status").status(), 200);

    // No token, wrong secret, forged and expired tokens.
    assert_eq!(http.get(format!("{base}/work")).send().expect("work").status(), 401);
    let wrong = Credentials { client_secret: "nope".into(), ..w1.clone() };
    assert_eq!(token(&http, &base, &wrong).status(), 401);
    let key = std::fs::read(dir.path().join("jwt-signing.key")).expect("signing key");
    let now = now_ms() / 1000;
    let expired = sign(
        &key,
        &Claims { sub: "w1".into(), generation: 1, iat: now - 100, exp: now - 10, scope: None },
    )
    .expect("sign");
    let forged = sign(
        &[9u8; 32],
        &Claims { sub: "w1".into(), generation: 1, iat: now, exp: now + 100, scope: None },
    )
    .expect("sign");
    for (what, t) in [("expired", &expired), ("forged", &forged)] {
        let r = http.get(format!("{base}/work")).bearer_auth(t).send().expect("work");
        assert_eq!(r.status(), 401, "{what} token");
    }

    // A claim, then uploads: another worker's task, malformed, oversized.
    let t1 = bearer(&http, &base, &w1);
    let t2 = bearer(&http, &base, &w2);
    let r = http.get(format!("{base}/work")).bearer_auth(&t1).send().expect("claim");
    assert_eq!(r.status(), 200);
    let task: TaskSpec = r.json().expect("task");
    let (v0, p0) = c.params().expect("params");
    let meta = serde_json::to_string(&UploadMeta {
        task: bitnet_framework::protocol::TaskRef { task_id: task.task_id, lease: task.lease },
        base_version: task.weights_version,
        loss: 1.0,
        tokens: task.tokens,
        seconds: 1.0,
    })
    .expect("meta");
    let upload = |t: &str, body: Vec<u8>| {
        http.post(format!("{base}/gradient"))
            .bearer_auth(t)
            .header(UPLOAD_META_HEADER, &meta)
            .body(body)
            .send()
            .expect("upload")
    };
    assert_eq!(upload(&t2, vec![0; 16]).status(), 403, "another worker's task");
    let r = upload(&t1, b"garbage".to_vec());
    assert_eq!(r.status(), 422, "malformed");
    assert!(r.text().expect("body").contains("malformed"), "the message says why");
    assert_eq!(upload(&t1, vec![0; 200_000]).status(), 413, "oversized");
    let r = http.post(format!("{base}/gradient")).bearer_auth(&t1).body(vec![1]).send();
    assert_eq!(r.expect("no meta").status(), 422, "missing metadata header");
    assert_eq!(c.params().expect("params"), (v0, p0), "weights untouched");

    // Downloads with Range, checked against the announced SHA-256.
    let full = http.get(format!("{base}/weights/latest")).bearer_auth(&t1).send().expect("w");
    assert_eq!(full.status(), 200);
    let sha = full.headers()[SHA256_HEADER].to_str().expect("sha").to_string();
    let bytes = full.bytes().expect("bytes");
    assert_eq!(bitnet_framework::store::sha256_hex(&bytes), sha);
    let part = http
        .get(format!("{base}/weights/{}", task.weights_version))
        .bearer_auth(&t1)
        .header("range", "bytes=10-19")
        .send()
        .expect("range");
    assert_eq!(part.status(), 206);
    assert_eq!(part.headers()["content-range"], format!("bytes 10-19/{}", bytes.len()).as_str());
    assert_eq!(part.bytes().expect("part").as_ref(), &bytes[10..20]);
    let shard = http
        .get(format!("{base}/corpus/{}", task.shard))
        .bearer_auth(&t1)
        .header("range", "bytes=-8")
        .send()
        .expect("corpus");
    assert_eq!(shard.status(), 206);
    assert_eq!(shard.bytes().expect("tail").len(), 8);
    assert_eq!(http.get(format!("{base}/metrics")).send().expect("m").status(), 401);
    let m = http.get(format!("{base}/metrics")).bearer_auth(&t1).send().expect("metrics");
    assert!(m.text().expect("text").contains("bitnet_weight_version"));

    // Rotation and revocation invalidate outstanding tokens at once.
    let h = bitnet_runtime::auth::hash_secret("rotated").expect("hash");
    c.store().rotate_client("w2", &h).expect("rotate");
    assert_eq!(http.get(format!("{base}/work")).bearer_auth(&t2).send().expect("w").status(), 401);
    c.store().revoke_client("w1").expect("revoke");
    assert_eq!(http.get(format!("{base}/work")).bearer_auth(&t1).send().expect("w").status(), 401);
    assert_eq!(token(&http, &base, &w1).status(), 401, "revoked clients get no token");

    // A worker trains the rest of the queue over loopback HTTP.
    let w3 = dist::add_client(&c, "w3");
    let client = build_transport(&config, &registry)
        .expect("transport")
        .connect(&base, w3)
        .expect("connect");
    let parts = build_worker_parts(&config, &registry, client).expect("parts");
    let stop = Arc::new(AtomicBool::new(false));
    let mut worker = Worker::new(parts, config.worker.clone(), 1, 1, stop);
    // The task w1 holds returns only when its lease expires; hand it back for the test.
    c.store()
        .release(
            bitnet_framework::protocol::TaskRef { task_id: task.task_id, lease: task.lease },
            "w1",
        )
        .expect("release");
    let report = worker.run(config.train.batch_size, config.model.seq_len).expect("worker");
    assert!(report.tasks_accepted > 0);
    let status = c.status().expect("status");
    assert!(status.tasks.finished() && status.tasks.failed == 0, "{status:?}");
    assert_eq!(c.store().task(task.task_id).expect("t").expect("t").state, TaskState::Done);
    server.shutdown();
    c.shutdown();
}

/// A worker started before its coordinator listens (or while it restarts) waits for it, with
/// backoff, instead of exiting; wrong credentials still fail at once.
#[test]
fn a_worker_waits_for_a_coordinator_that_is_not_listening_yet() {
    let dir = bitnet_tests::temp_dir();
    let registry = dist::registry();
    let port = bitnet_tests::procs::free_port();
    let bind = format!("transport.bind=127.0.0.1:{port}");
    let config = dist::tiny_config(dir.path(), &["transport.type=http", &bind]);
    let c = dist::start_coordinator(&config, &registry, dist::pattern_corpus(1, 64), 0, 64);
    let creds = dist::add_client(&c, "w");
    let endpoint = format!("http://127.0.0.1:{port}");
    let transport = build_transport(&config, &registry).expect("transport");
    let stop = std::sync::atomic::AtomicBool::new(false);
    let mut settings = config.worker.clone();
    settings.give_up_after_secs = 0.3;
    let refused = bitnet_runtime::worker::connect(&*transport, &endpoint, &creds, &settings, &stop);
    assert!(matches!(refused, Err(ApiError::Transport(_))), "nothing listens yet");

    let server_config = config.clone();
    let server_c = Arc::clone(&c);
    let late = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(700));
        let api: Arc<dyn CoordinatorApi> = Arc::clone(&server_c) as Arc<dyn CoordinatorApi>;
        build_transport(&server_config, &dist::registry())
            .expect("transport")
            .serve(bitnet_runtime::auth::serve_context(api, Arc::clone(server_c.store())))
            .expect("serve")
    });
    settings.give_up_after_secs = 30.0;
    let started = std::time::Instant::now();
    let mut client =
        bitnet_runtime::worker::connect(&*transport, &endpoint, &creds, &settings, &stop)
            .expect("connects once the coordinator listens");
    assert!(started.elapsed() >= std::time::Duration::from_millis(500), "it waited");
    assert!(client.status().is_ok());
    let wrong = Credentials { client_secret: "nope".into(), ..creds };
    let started = std::time::Instant::now();
    let refused = bitnet_runtime::worker::connect(&*transport, &endpoint, &wrong, &settings, &stop);
    assert!(matches!(refused, Err(ApiError::Unauthorized(_))), "{:?}", refused.err());
    assert!(started.elapsed() < std::time::Duration::from_secs(10), "no retries on a 401");
    let server = late.join().expect("server thread");
    drop(server);
    c.shutdown();
}
