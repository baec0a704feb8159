//! Load test of the coordinator over loopback HTTP: N simulated workers (default 200) each
//! loop claim -> 3 heartbeats -> hand back, with a short pause between requests, for a fixed
//! time (default 60 s). Prints claim and heartbeat latency percentiles and the error count.
//!
//!     BITNET_LOAD_WORKERS=200 BITNET_LOAD_SECS=60 cargo bench -p bitnet-benches --bench coordinator_load
//!
//! Not a criterion bench: the figure is a latency distribution under concurrency, not the
//! time of one operation.

use bitnet_framework::protocol::{CoordinatorApi, Heartbeat, Registration, TaskRef};
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

fn main() {
    let workers = env_or("BITNET_LOAD_WORKERS", 200) as usize;
    let secs = env_or("BITNET_LOAD_SECS", 60);
    let pause = Duration::from_millis(env_or("BITNET_LOAD_PAUSE_MS", 100));
    let dir = tempfile::tempdir().expect("temp dir");
    let overrides: Vec<String> = [
        "preset=tiny",
        "model.vocab_size=64",
        "transport.type=http",
        "transport.bind=127.0.0.1:0",
        "transport.server_threads=2",
        "coordinator_store.type=memory",
        "coordinator.task_seconds=1",
        "coordinator.min_lease_secs=600",
        "coordinator.heartbeat_secs=10",
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
    store.add_tasks(&seed::plan_tasks(&corpus.shards(), 0, 1 << 20)).expect("seed");
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
                while Instant::now() < end {
                    let t = Instant::now();
                    let task = match client.claim() {
                        Ok(Some(task)) => task,
                        Ok(None) => {
                            my_errors.push("queue empty".to_string());
                            std::thread::sleep(pause);
                            continue;
                        }
                        Err(e) => {
                            my_errors.push(format!("claim: {e}"));
                            continue;
                        }
                    };
                    my_claims.push(t.elapsed());
                    let task = TaskRef { task_id: task.task_id, lease: task.lease };
                    for k in 0..4 {
                        std::thread::sleep(pause);
                        let hb = Heartbeat {
                            task: Some(task),
                            progress_tokens: 0,
                            hand_back: k == 3,
                            draining: false,
                        };
                        let t = Instant::now();
                        match client.heartbeat(hb) {
                            Ok(_) => my_beats.push(t.elapsed()),
                            Err(e) => my_errors.push(format!("heartbeat: {e}")),
                        }
                    }
                }
                claims.lock().expect("lock").extend(my_claims);
                beats.lock().expect("lock").extend(my_beats);
                errors.lock().expect("lock").extend(my_errors);
            })
        })
        .collect();
    for h in handles {
        let _ = h.join();
    }
    let elapsed = started.elapsed().as_secs_f64();
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
    println!("coordinator load: {workers} workers, {elapsed:.1} s, pause {pause:?}, loopback HTTP");
    report("claim", &claims);
    report("heartbeat", &beats);
    let errors = errors.lock().expect("lock");
    println!(
        "errors    {}{}",
        errors.len(),
        errors.first().map(|e| format!(" (first: {e})")).unwrap_or_default()
    );
}
