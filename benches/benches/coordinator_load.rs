//! Load test of the coordinator over loopback HTTP, synchronous rounds on: N simulated workers
//! (default 200) each loop through the real protocol (claim, a heartbeat, the upload of a real
//! int8-ef update of the tiny model, a batch of logs) for a fixed time (default 60 s), while
//! `BITNET_LOAD_FLOOD` bad logins (default 1000) arrive from 64 connections. Prints claim,
//! heartbeat and upload latency percentiles, uploads and rounds per second, the honest
//! workers' errors, what the flood got back, and the coordinator's peak RSS above its idle RSS.
//! The coordinator runs in a child process (this binary again, with `BITNET_LOAD_ROLE=coordinator`),
//! so its RSS is its own, not the simulated workers' threads. Each worker downloads the weights
//! of every new version it is given and its shard once, as a real worker does, from the
//! coordinator or through the presigned URLs of an object store; the bytes each way are
//! printed per task (the coordinator's egress).
//!
//!     BITNET_LOAD_WORKERS=200 BITNET_LOAD_SECS=60 cargo bench -p bitnet-benches --bench coordinator_load
//!
//! `BITNET_LOAD_BACKEND=postgres-s3` keeps the state in a PostgreSQL server and the bytes in an
//! S3 server (both started here on 127.0.0.1, as the integration tests start them: `initdb`
//! and `moto_server` must be installed); `BITNET_LOAD_REPLICAS=2` (which implies it) runs two
//! coordinator replicas, one leading and one relaying to it, and gives every worker both URLs,
//! its first one in turn. The default is one process on SQLite and its local weight store.
//!
//! Not a criterion bench: the figure is a latency distribution under concurrency, not the
//! time of one operation.

use bitnet_framework::protocol::{Heartbeat, LogRecord, Registration, TaskRef, UpdateUpload};
use bitnet_framework::transport::Credentials;
use bitnet_runtime::auth::{self as secrets};
use bitnet_runtime::config::{ConfigSources, load};
use bitnet_runtime::coordinator::{Corpus, DirCorpus, seed};
use bitnet_runtime::data::shard::{ShardHeader, TokenDtype, VocabHash};
use bitnet_runtime::run::assemble::{build_store, build_transport};
use bitnet_runtime::run::replica::Replica;
use bitnet_runtime::run::service::CoordinatorService;
use bitnet_store_postgres::test_support::PgServer;
use bitnet_weights_s3::test_support::{ACCESS_KEY, BUCKET, S3Server, SECRET_KEY};
use std::io::BufRead;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn dir_path(arg: Option<String>) -> std::path::PathBuf {
    std::path::PathBuf::from(arg.expect("BITNET_LOAD_DIR"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Resident set size of process `pid`, from `/proc/PID/status` (0 where unavailable).
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// 1000 bad logins (by default) from 64 connections; returns the status codes answered.
fn login_flood(endpoint: &str, total: usize) -> Vec<u16> {
    let per = total.div_ceil(64);
    let handles: Vec<_> = (0..64)
        .map(|c| {
            let url = format!("{endpoint}/connect/token");
            std::thread::spawn(move || {
                let http = reqwest::blocking::Client::new();
                (0..per)
                    .map(|i| {
                        http.post(&url)
                            .header("content-type", "application/x-www-form-urlencoded")
                            .body(format!(
                                "grant_type=client_credentials&client_id=intruder-{c}-{i}&client_secret=guess"
                            ))
                            .send()
                            .map(|r| r.status().as_u16())
                            .unwrap_or(0)
                    })
                    .collect::<Vec<u16>>()
            })
        })
        .collect();
    handles.into_iter().flat_map(|h| h.join().unwrap_or_default()).take(total).collect()
}

/// The synthetic corpus every run here trains on: one shard of 2M tokens (a 64-token vocabulary),
/// written to `DIR/data/train-0000.bin` so a coordinator process can open it as a real one does.
fn write_corpus(dir: &std::path::Path) -> std::path::PathBuf {
    let tokens: Vec<u32> = (0..2_000_000u32).map(|i| 1 + i % 63).collect();
    let header = ShardHeader {
        dtype: TokenDtype::U16,
        vocab_size: 64,
        vocab_hash: VocabHash([0; 32]),
        token_count: tokens.len() as u64,
    };
    let mut bytes = header.to_bytes().to_vec();
    for t in &tokens {
        bytes.extend_from_slice(&(*t as u16).to_le_bytes());
    }
    let path = dir.join("data").join("train-0000.bin");
    std::fs::create_dir_all(dir.join("data")).expect("data dir");
    let sha = bitnet_framework::store::sha256_hex(&bytes);
    std::fs::write(&path, bytes).expect("shard");
    std::fs::write(bitnet_runtime::data::shard::sidecar_path(&path), format!("{sha}\n"))
        .expect("sidecar");
    path
}

fn open_corpus(dir: &std::path::Path) -> Arc<dyn Corpus> {
    Arc::new(DirCorpus::open(&[dir.join("data").join("train-0000.bin")]).expect("corpus"))
}

/// A coordinator process: `BITNET_LOAD_ROLE=coordinator` serves on its own; `replica` joins the
/// replicas on Postgres (follows, and leads once it wins the lease). The parent seeded the queue
/// and the clients. Prints a first line when serving (the endpoint), serves until stdin closes,
/// then prints the weight version it ended at.
fn serve_coordinator(dir: &std::path::Path, replica: bool) {
    // What `bitnet coordinator` does first.
    bitnet_cli::memory::return_large_frees_to_the_os();
    let config = bench_config(dir);
    let registry = bitnet_plugins::registry().expect("registry");
    let corpus = open_corpus(dir);
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new());
            stop.store(true, Ordering::SeqCst);
        });
    }
    if !replica {
        let store = build_store(&config, &registry).expect("store");
        let service =
            CoordinatorService::start_with_store(&config, &registry, corpus, false, store)
                .expect("coordinator");
        println!("{}", service.server.endpoint());
        while !stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(50));
        }
        println!("{}", service.stop().version());
        return;
    }
    let replica = Replica::open(&config, &registry).expect("replica");
    println!("{}", replica.holder());
    let Some(won) = replica.follow(&config, &registry, &stop).expect("follow") else {
        return println!("0");
    };
    let leading = replica.lead(&config, &registry, corpus, false, won).expect("lead");
    while !stop.load(Ordering::SeqCst) && !leading.lost() {
        std::thread::sleep(Duration::from_millis(50));
    }
    let lost = leading.lost();
    let version = leading.stop().version();
    assert!(!lost, "the leader lost its lease during the load test");
    println!("{version}");
}

/// The run's config: the tiny model, synchronous rounds, and the backend's stores
/// (`DIR/backend.txt`, one `key=value` override a line, written by the parent).
fn bench_config(dir: &std::path::Path) -> bitnet_runtime::config::RunConfig {
    let backend = std::fs::read_to_string(dir.join("backend.txt")).unwrap_or_default();
    let bind = std::env::var("BITNET_LOAD_BIND").unwrap_or_else(|_| "127.0.0.1:0".into());
    let overrides: Vec<String> = [
        "preset=tiny",
        "model.vocab_size=64",
        "transport.type=http",
        "transport.server_threads=2",
        "coordinator.task_seconds=1",
        "coordinator.min_lease_secs=600",
        "coordinator.heartbeat_secs=10",
        "coordinator.sync_rounds=true",
        "coordinator.round_wait_secs=30",
        "coordinator.log_records_per_minute=100000",
        "codec.type=int8-ef",
        // Every simulated worker logs in from 127.0.0.1, where a real fleet has an address
        // per machine: the per-address limit is raised so 1,000 workers log in within seconds.
        // The flood shares the address, so it still meets this limit (and the per-client one).
        "transport.logins_per_ip_per_minute=12000",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(backend.lines().filter(|l| !l.trim().is_empty()).map(str::to_string))
    .chain([format!("transport.bind={bind}"), format!("run.dir={}", dir.display())])
    .collect();
    load(&ConfigSources { file: None, env: false, overrides }).expect("config").config
}

/// Where the coordinator's state and bytes live: `sqlite-local` (one process, weights served
/// from its disk) or `postgres-s3` (real PostgreSQL and S3 servers started here; workers
/// download weights and shards through presigned URLs).
fn backend_overrides(backend: &str, replicas: usize) -> Vec<String> {
    match backend {
        "sqlite-local" => {
            assert_eq!(replicas, 1, "replicas need BITNET_LOAD_BACKEND=postgres-s3");
            vec!["coordinator_store.type=sqlite".into(), "weight_store.type=fs".into()]
        }
        "postgres-s3" => {
            let pg = PgServer::shared().unwrap_or_else(|e| panic!("PostgreSQL: {e}"));
            let s3 = S3Server::shared().unwrap_or_else(|e| panic!("S3 server: {e}"));
            let db = pg.create_database().expect("database");
            // The server lives as long as this process (the parent).
            std::mem::forget(pg);
            let mut o = vec![
                "coordinator_store.type=postgres".into(),
                format!("coordinator_store.url={db}"),
                "coordinator_store.pool_size=16".into(),
                "weight_store.type=s3".into(),
                format!("weight_store.bucket={BUCKET}"),
                format!("weight_store.prefix=load/{}", std::process::id()),
                format!("weight_store.endpoint={}", s3.endpoint()),
                "weight_store.allow_http=true".into(),
            ];
            if replicas > 1 {
                o.push("coordinator.leader_lease_secs=2".into());
            }
            o
        }
        other => panic!("BITNET_LOAD_BACKEND={other}: sqlite-local or postgres-s3"),
    }
}

/// Whether the coordinator at `url` leads: `/health/leader` answers 200 on the leader, 503 on
/// a follower.
fn leads(http: &reqwest::blocking::Client, url: &str) -> Option<bool> {
    let r = http.get(format!("{url}/health/leader")).send().ok()?;
    match r.status().as_u16() {
        200 => Some(true),
        503 => Some(false),
        _ => None,
    }
}

fn main() {
    let dir_arg = std::env::var("BITNET_LOAD_DIR").ok();
    match std::env::var("BITNET_LOAD_ROLE").as_deref() {
        Ok("coordinator") => return serve_coordinator(&dir_path(dir_arg), false),
        Ok("replica") => return serve_coordinator(&dir_path(dir_arg), true),
        _ => {}
    }
    let workers = env_or("BITNET_LOAD_WORKERS", 200) as usize;
    let secs = env_or("BITNET_LOAD_SECS", 60);
    let flood = env_or("BITNET_LOAD_FLOOD", 1000) as usize;
    let pause = Duration::from_millis(env_or("BITNET_LOAD_PAUSE_MS", 100));
    let replicas = env_or("BITNET_LOAD_REPLICAS", 1).clamp(1, 2) as usize;
    let backend = std::env::var("BITNET_LOAD_BACKEND")
        .unwrap_or_else(|_| if replicas > 1 { "postgres-s3" } else { "sqlite-local" }.to_string());
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        dir.path().join("backend.txt"),
        backend_overrides(&backend, replicas).join("\n"),
    )
    .expect("backend.txt");
    write_corpus(dir.path());
    let config = bench_config(dir.path());
    let registry = bitnet_plugins::registry().expect("registry");

    eprintln!("hashing {workers} client secrets");
    let creds: Vec<Credentials> = (0..workers)
        .map(|i| Credentials {
            client_id: format!("sim-{i}"),
            client_secret: secrets::generate_secret(),
            ca_certificate: None,
        })
        .collect();
    {
        // The queue and the clients, before any coordinator starts (replicas share them).
        let store = build_store(&config, &registry).expect("store");
        let corpus = open_corpus(dir.path());
        // Far more tasks than any run here takes: the queue never runs dry.
        store.add_tasks(&seed::plan_tasks(&corpus.shards(), 1 << 32, 1 << 20)).expect("seed");
        for c in &creds {
            let hash = secrets::hash_secret(&c.client_secret).expect("hash");
            store.add_client(&c.client_id, &hash).expect("client");
        }
    }
    let ports: Vec<u16> = (0..replicas).map(|_| free_port()).collect();
    let mut children: Vec<_> = (0..replicas)
        .map(|i| {
            let mut cmd = std::process::Command::new(std::env::current_exe().expect("this binary"));
            cmd.env("BITNET_LOAD_ROLE", if replicas > 1 { "replica" } else { "coordinator" })
                .env("BITNET_LOAD_DIR", dir.path())
                .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
                .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped());
            if replicas > 1 {
                cmd.env("BITNET_LOAD_BIND", format!("127.0.0.1:{}", ports[i]));
            }
            let mut child = cmd.spawn().expect("start a coordinator process");
            let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
            let mut first = String::new();
            out.read_line(&mut first).expect("the coordinator's first line");
            assert!(!first.trim().is_empty(), "coordinator process {i} did not start");
            (child, out, first.trim().to_string())
        })
        .collect();
    let urls: Vec<String> = if replicas > 1 {
        ports.iter().map(|p| format!("http://127.0.0.1:{p}")).collect()
    } else {
        vec![children[0].2.clone()]
    };
    if replicas > 1 {
        // One leads, the other follows (and relays to it).
        let http = reqwest::blocking::Client::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let roles: Vec<Option<bool>> = urls.iter().map(|u| leads(&http, u)).collect();
            if roles.iter().filter(|r| **r == Some(true)).count() == 1
                && roles.iter().filter(|r| **r == Some(false)).count() == replicas - 1
            {
                eprintln!("replicas up: {urls:?}, leader {roles:?}");
                break;
            }
            assert!(Instant::now() < deadline, "the replicas did not elect a leader: {roles:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let pids: Vec<u32> = children.iter().map(|c| c.0.id()).collect();
    // Each simulated worker is given every replica's URL, its own first in turn, so the
    // fleet's connections spread over the replicas as a round-robin load balancer would.
    let endpoint_of = |i: usize| -> String {
        (0..urls.len()).map(|k| urls[(i + k) % urls.len()].clone()).collect::<Vec<_>>().join(",")
    };
    let endpoint = urls[0].clone();

    let (kernel, ctx) =
        bitnet_runtime::run::assemble::kernel_and_context(&config, &registry).expect("kernel");
    let fingerprint = kernel.layout().fingerprint();
    // One real update of the model, encoded once and uploaded by every simulated worker.
    let update: Vec<f32> =
        (0..kernel.layout().total_params()).map(|i| ((i % 13) as f32 - 6.0) * 1e-4).collect();
    let payload = {
        let mut codec = registry
            .build::<dyn bitnet_framework::codec::GradientCodec>(
                &config.codec.kind,
                &config.codec.options,
                &ctx,
            )
            .expect("codec");
        Arc::new(codec.encode(kernel.layout(), &update).expect("encode"))
    };
    let uploads = Arc::new(Mutex::new(Vec::new()));
    std::thread::sleep(Duration::from_millis(200));
    let rss = move || pids.iter().map(|&p| rss_kib(p)).sum::<u64>();
    let idle_rss = rss();
    let peak_rss = Arc::new(AtomicU64::new(idle_rss));
    // Bytes of weights and shards the workers downloaded: from the coordinator (its egress)
    // and straight from the object store (presigned URLs).
    let from_coordinator = Arc::new(AtomicU64::new(0));
    let from_store = Arc::new(AtomicU64::new(0));
    let fetches = Arc::new(Mutex::new(Vec::new()));

    let claims = Arc::new(Mutex::new(Vec::new()));
    let logins = Arc::new(Mutex::new(Vec::new()));
    let beats = Arc::new(Mutex::new(Vec::new()));
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    // Two phases: every worker logs in and registers (a login storm, timed on its own), then
    // the measured window of `secs` starts for all of them at once.
    let storm = Instant::now();
    let ready = Arc::new(std::sync::Barrier::new(workers + 1));
    let window = Arc::new(std::sync::OnceLock::<Instant>::new());
    let go = Arc::new(std::sync::Barrier::new(workers + 1));
    let handles: Vec<_> = creds
        .into_iter()
        .enumerate()
        .map(|(i, creds)| {
            let transport = build_transport(&config, &registry).expect("transport");
            let (endpoint, fingerprint) = (endpoint_of(i), fingerprint.clone());
            let (from_coordinator, from_store) = (from_coordinator.clone(), from_store.clone());
            let fetches = fetches.clone();
            let (logins, worker_settings) = (logins.clone(), config.worker.clone());
            let (ready, window, go) = (ready.clone(), window.clone(), go.clone());
            let run_for = Duration::from_secs(secs);
            let (claims, beats, errors) = (claims.clone(), beats.clone(), errors.clone());
            let (uploads, payload) = (uploads.clone(), payload.clone());
            std::thread::spawn(move || {
                // Logs in as a real worker does: a 429 (the flood shares this address) is
                // waited out for its Retry-After, up to the run's end.
                let t = Instant::now();
                let never = std::sync::atomic::AtomicBool::new(false);
                let mut settings = worker_settings.clone();
                settings.give_up_after_secs = secs as f64;
                let connected = bitnet_runtime::worker::connect(
                    transport.as_ref(),
                    &endpoint,
                    &creds,
                    &settings,
                    &never,
                );
                let mut client = match connected {
                    Ok(c) => c,
                    Err(e) => {
                        errors.lock().expect("lock").push(format!("connect: {e}"));
                        ready.wait();
                        go.wait();
                        return;
                    }
                };
                logins.lock().expect("lock").push(t.elapsed());
                let reg = Registration {
                    threads: 1,
                    tokens_per_sec: 1000.0,
                    framework_version: "load".into(),
                    layout_fingerprint: fingerprint,
                    host: "load-sim".into(),
                };
                // As a real worker does, a 503 (replicas electing, or the leader still
                // recovering) is retried.
                let mut registered = client.register(reg.clone());
                for _ in 0..100 {
                    match registered {
                        Err(bitnet_framework::protocol::ApiError::Unavailable(_)) => {
                            std::thread::sleep(Duration::from_millis(200));
                            registered = client.register(reg.clone());
                        }
                        _ => break,
                    }
                }
                ready.wait();
                go.wait();
                if let Err(e) = registered {
                    return errors.lock().expect("lock").push(format!("register: {e}"));
                }
                let end = *window.get().expect("the window is set before go") + run_for;
                let (mut my_claims, mut my_beats, mut my_errors) = (vec![], vec![], vec![]);
                let (mut my_uploads, mut my_fetches) = (vec![], vec![]);
                // What a real worker holds: the weights of one version, the shard once.
                let (mut have_version, mut have_shard) = (None, false);
                while Instant::now() < end {
                    let t = Instant::now();
                    let task = match client.claim() {
                        Ok(Some(task)) => task,
                        // No task: the round this worker's update waits in is still open.
                        Ok(None) => {
                            std::thread::sleep(pause);
                            continue;
                        }
                        Err(e) => {
                            my_errors.push(format!("claim: {e}"));
                            continue;
                        }
                    };
                    my_claims.push(t.elapsed());
                    let task_ref = TaskRef { task_id: task.task_id, lease: task.lease };
                    if have_version != Some(task.weights_version) {
                        let t = Instant::now();
                        let direct =
                            task.weights_url.as_ref().and_then(|u| client.fetch_presigned(u));
                        let got = match direct {
                            Some(r) => r.map(|b| (b.len() as u64, &from_store)),
                            None => client
                                .weights(task.weights_version)
                                .map(|b| (b.bytes.len() as u64, &from_coordinator)),
                        };
                        match got {
                            Ok((n, counter)) => {
                                counter.fetch_add(n, Ordering::Relaxed);
                                my_fetches.push(t.elapsed());
                                have_version = Some(task.weights_version);
                            }
                            Err(e) => my_errors.push(format!("weights: {e}")),
                        }
                    }
                    if !have_shard {
                        let direct =
                            task.shard_url.as_ref().and_then(|u| client.fetch_presigned(u));
                        let got = match direct {
                            Some(r) => r.map(|b| (b.len() as u64, &from_store)),
                            None => client
                                .corpus(&task.shard)
                                .map(|b| (b.bytes.len() as u64, &from_coordinator)),
                        };
                        match got {
                            Ok((n, counter)) => {
                                counter.fetch_add(n, Ordering::Relaxed);
                                have_shard = true;
                            }
                            Err(e) => my_errors.push(format!("shard: {e}")),
                        }
                    }
                    std::thread::sleep(pause);
                    let hb = Heartbeat {
                        task: Some(task_ref),
                        progress_tokens: 0,
                        hand_back: false,
                        draining: false,
                    };
                    let t = Instant::now();
                    match client.heartbeat(hb) {
                        Ok(_) => my_beats.push(t.elapsed()),
                        Err(e) => my_errors.push(format!("heartbeat: {e}")),
                    }
                    let upload = UpdateUpload {
                        task: task_ref,
                        base_version: task.weights_version,
                        loss: 1.0,
                        tokens: task.tokens,
                        seconds: pause.as_secs_f64(),
                        payload: payload.as_ref().clone(),
                    };
                    let t = Instant::now();
                    match client.upload(upload) {
                        Ok(r) if r.accepted => my_uploads.push(t.elapsed()),
                        Ok(r) => my_errors.push(format!("upload rejected: {:?}", r.reason)),
                        Err(e) => my_errors.push(format!("upload: {e}")),
                    }
                    let log = LogRecord { ts_ms: 0, level: "info".into(), message: "ok".into() };
                    if let Err(e) = client.logs(vec![log; 5]) {
                        my_errors.push(format!("logs: {e}"));
                    }
                }
                uploads.lock().expect("lock").extend(my_uploads);
                fetches.lock().expect("lock").extend(my_fetches);
                claims.lock().expect("lock").extend(my_claims);
                beats.lock().expect("lock").extend(my_beats);
                errors.lock().expect("lock").extend(my_errors);
            })
        })
        .collect();
    ready.wait();
    let storm_secs = storm.elapsed().as_secs_f64();
    let started = Instant::now();
    window.set(started).expect("set once");
    go.wait();
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let (peak, sampling, rss) = (Arc::clone(&peak_rss), Arc::clone(&sampling), rss.clone());
        std::thread::spawn(move || {
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                peak.fetch_max(rss(), std::sync::atomic::Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    // The flood starts once the fleet is at work.
    std::thread::sleep(Duration::from_secs(2));
    let flood_started = Instant::now();
    let flooder = {
        let endpoint = endpoint.clone();
        std::thread::spawn(move || login_flood(&endpoint, flood))
    };
    for h in handles {
        let _ = h.join();
    }
    // The honest workers' window; the flood may outlast it (its logins queue for slots).
    let elapsed = started.elapsed().as_secs_f64();
    let flooded = flooder.join().unwrap_or_default();
    let flood_secs = flood_started.elapsed().as_secs_f64();
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let _ = sampler.join();
    // Followers first: the leader's going then leaves no replica to take over.
    let mut version = 0u64;
    for (mut child, out, _) in children.drain(..).rev() {
        drop(child.stdin.take());
        let last = out.lines().map_while(Result::ok).last().unwrap_or_default();
        let status = child.wait().expect("wait for a coordinator process");
        assert!(status.success(), "a coordinator process failed: {status}");
        version = version.max(last.trim().parse().unwrap_or(0));
    }
    let report = |name: &str, v: &Mutex<Vec<Duration>>| {
        let mut v = v.lock().expect("lock").clone();
        v.sort_unstable();
        println!(
            "{name:<9} n={:<7} rate={:>7.0}/s p50={:>8.2?} p99={:>8.2?} max={:>8.2?}",
            v.len(),
            v.len() as f64 / elapsed,
            percentile(&v, 0.5),
            percentile(&v, 0.99),
            v.last().copied().unwrap_or_default()
        );
    };
    println!(
        "coordinator load: {workers} workers, {elapsed:.1} s, pause {pause:?}, loopback HTTP, \
         synchronous rounds, {backend}, {replicas} coordinator process(es)"
    );
    println!(
        "login     {workers} workers logged in and registered in {storm_secs:.1} s (before the window)"
    );
    report("login", &logins);
    report("claim", &claims);
    report("heartbeat", &beats);
    report("upload", &uploads);
    report("weights", &fetches);
    println!("rounds    {version} ({:.1}/s)", version as f64 / elapsed);
    let count = |code: u16| flooded.iter().filter(|&&c| c == code).count();
    println!(
        "flood     {} bad logins in {flood_secs:.1} s: {} x 401, {} x 429, {} x 503, {} other",
        flooded.len(),
        count(401),
        count(429),
        count(503),
        flooded.len() - count(401) - count(429) - count(503)
    );
    let tasks = uploads.lock().expect("lock").len().max(1) as f64;
    let (coordinator_bytes, store_bytes) =
        (from_coordinator.load(Ordering::Relaxed), from_store.load(Ordering::Relaxed));
    println!(
        "egress    weights+shards: {:.1} MB from the coordinator ({:.0} bytes per task), {:.1} MB \
         from the object store ({:.0} bytes per task)",
        coordinator_bytes as f64 / 1e6,
        coordinator_bytes as f64 / tasks,
        store_bytes as f64 / 1e6,
        store_bytes as f64 / tasks
    );
    let peak = peak_rss.load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "rss       coordinator process(es), summed: idle {:.0} MiB, peak {:.0} MiB, +{:.0} MiB",
        idle_rss as f64 / 1024.0,
        peak as f64 / 1024.0,
        peak.saturating_sub(idle_rss) as f64 / 1024.0
    );
    let errors = errors.lock().expect("lock");
    println!(
        "errors    {}{}",
        errors.len(),
        errors.first().map(|e| format!(" (first: {e})")).unwrap_or_default()
    );
}
