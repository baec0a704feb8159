//! Load test of the coordinator over loopback HTTP, synchronous rounds on: N simulated workers
//! (default 200) each loop through the real protocol (claim, a heartbeat, the upload of a real
//! int8-ef update of the tiny model, a batch of logs) for a fixed time (default 60 s), while
//! `BITNET_LOAD_FLOOD` bad logins (default 1000) arrive from 64 connections. Prints claim,
//! heartbeat and upload latency percentiles, uploads and rounds per second, the honest
//! workers' errors, what the flood got back, and the process's peak RSS above its idle RSS
//! (the process holds the coordinator and the simulated workers).
//!
//!     BITNET_LOAD_WORKERS=200 BITNET_LOAD_SECS=60 cargo bench -p bitnet-benches --bench coordinator_load
//!
//! Not a criterion bench: the figure is a latency distribution under concurrency, not the
//! time of one operation.

use bitnet_framework::protocol::{
    CoordinatorApi, Heartbeat, LogRecord, Registration, TaskRef, UpdateUpload,
};
use bitnet_framework::transport::Credentials;
use bitnet_runtime::auth::{self as secrets};
use bitnet_runtime::config::{ConfigSources, load};
use bitnet_runtime::coordinator::{Corpus, MemoryCorpus, seed};
use bitnet_runtime::data::shard::{ShardHeader, TokenDtype, VocabHash};
use bitnet_runtime::run::assemble::{build_coordinator, build_store, build_transport};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Resident set size of this process, from `/proc/self/status` (0 where unavailable).
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
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

fn main() {
    let workers = env_or("BITNET_LOAD_WORKERS", 200) as usize;
    let secs = env_or("BITNET_LOAD_SECS", 60);
    let flood = env_or("BITNET_LOAD_FLOOD", 1000) as usize;
    let pause = Duration::from_millis(env_or("BITNET_LOAD_PAUSE_MS", 100));
    let dir = tempfile::tempdir().expect("temp dir");
    let overrides: Vec<String> = [
        "preset=tiny",
        "model.vocab_size=64",
        "transport.type=http",
        "transport.bind=127.0.0.1:0",
        "transport.server_threads=2",
        "coordinator_store.type=sqlite",
        "coordinator.task_seconds=1",
        "coordinator.min_lease_secs=600",
        "coordinator.heartbeat_secs=10",
        "coordinator.sync_rounds=true",
        "coordinator.round_wait_secs=30",
        "coordinator.log_records_per_minute=100000",
        "codec.type=int8-ef",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([format!("run.dir={}", dir.path().display())])
    .collect();
    let config = load(&ConfigSources { file: None, env: false, overrides }).expect("config").config;
    let registry = bitnet_plugins::registry().expect("registry");

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
    let mut corpus = MemoryCorpus::new();
    corpus.add("train-0000.bin", bytes).expect("shard");
    let corpus: Arc<dyn Corpus> = Arc::new(corpus);
    let store = build_store(&config, &registry).expect("store");
    // Far more tasks than any run here takes: the queue never runs dry.
    store.add_tasks(&seed::plan_tasks(&corpus.shards(), 1 << 32, 1 << 20)).expect("seed");
    let coordinator =
        build_coordinator(&config, &registry, Arc::clone(&store), corpus).expect("coordinator");
    let api: Arc<dyn CoordinatorApi> = Arc::clone(&coordinator) as Arc<dyn CoordinatorApi>;
    let transport = build_transport(&config, &registry).expect("transport");
    let server = transport
        .serve(bitnet_runtime::auth::serve_context(api, Arc::clone(&store)))
        .expect("serve");
    let endpoint = server.endpoint();
    let (kernel, _) =
        bitnet_runtime::run::assemble::kernel_and_context(&config, &registry).expect("kernel");
    let fingerprint = kernel.layout().fingerprint();
    // One real update of the model, encoded once and uploaded by every simulated worker.
    let update: Vec<f32> =
        (0..kernel.layout().total_params()).map(|i| ((i % 13) as f32 - 6.0) * 1e-4).collect();
    let payload = {
        let (_, ctx) =
            bitnet_runtime::run::assemble::kernel_and_context(&config, &registry).expect("ctx");
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
    let idle_rss = rss_kib();
    let peak_rss = Arc::new(std::sync::atomic::AtomicU64::new(idle_rss));

    let claims = Arc::new(Mutex::new(Vec::new()));
    let beats = Arc::new(Mutex::new(Vec::new()));
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let started = Instant::now();
    let end = started + Duration::from_secs(secs);
    let handles: Vec<_> = (0..workers)
        .map(|i| {
            let id = format!("sim-{i}");
            let secret = secrets::generate_secret();
            store.add_client(&id, &secrets::hash_secret(&secret).expect("hash")).expect("client");
            let creds = Credentials { client_id: id, client_secret: secret, ca_certificate: None };
            let transport = build_transport(&config, &registry).expect("transport");
            let (endpoint, fingerprint) = (endpoint.clone(), fingerprint.clone());
            let (claims, beats, errors) = (claims.clone(), beats.clone(), errors.clone());
            let (uploads, payload) = (uploads.clone(), payload.clone());
            std::thread::spawn(move || {
                let mut client = match transport.connect(&endpoint, creds) {
                    Ok(c) => c,
                    Err(e) => return errors.lock().expect("lock").push(format!("connect: {e}")),
                };
                let reg = Registration {
                    threads: 1,
                    tokens_per_sec: 1000.0,
                    framework_version: "load".into(),
                    layout_fingerprint: fingerprint,
                };
                if let Err(e) = client.register(reg) {
                    return errors.lock().expect("lock").push(format!("register: {e}"));
                }
                let (mut my_claims, mut my_beats, mut my_errors) = (vec![], vec![], vec![]);
                let mut my_uploads = vec![];
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
                claims.lock().expect("lock").extend(my_claims);
                beats.lock().expect("lock").extend(my_beats);
                errors.lock().expect("lock").extend(my_errors);
            })
        })
        .collect();
    let sampler = {
        let peak = Arc::clone(&peak_rss);
        std::thread::spawn(move || {
            while Instant::now() < end {
                peak.fetch_max(rss_kib(), std::sync::atomic::Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    // The flood starts once the fleet is at work.
    std::thread::sleep(Duration::from_secs(2));
    let flood_started = Instant::now();
    let flooded = login_flood(&endpoint, flood);
    let flood_secs = flood_started.elapsed().as_secs_f64();
    for h in handles {
        let _ = h.join();
    }
    let _ = sampler.join();
    let elapsed = started.elapsed().as_secs_f64();
    let version = coordinator.version();
    server.shutdown();
    coordinator.shutdown();
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
         synchronous rounds"
    );
    report("claim", &claims);
    report("heartbeat", &beats);
    report("upload", &uploads);
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
    let peak = peak_rss.load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "rss       idle {:.0} MiB, peak {:.0} MiB, +{:.0} MiB (coordinator and simulated workers)",
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
