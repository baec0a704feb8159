//! Load test of the coordinator over loopback HTTP, synchronous rounds on: N simulated workers
//! (default 200) each loop through the real protocol (claim, a heartbeat, the upload of a real
//! int8-ef update of the tiny model, a batch of logs) for a fixed time (default 60 s), while
//! `BITNET_LOAD_FLOOD` bad logins (default 1000) arrive from 64 connections. Prints claim,
//! heartbeat and upload latency percentiles, uploads and rounds per second, the honest
//! workers' errors, what the flood got back, and the coordinator's peak RSS above its idle RSS.
//! The coordinator runs in a child process (this binary again, with `BITNET_LOAD_ROLE=coordinator`),
//! so its RSS is its own, not the simulated workers' threads.
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

/// The coordinator's half: a config, a corpus and a queue that never runs dry, the clients the
/// parent wrote to `clients.tsv` (id, secret hash), then serve until stdin closes. Prints the
/// endpoint on its first line and the final weight version on its last.
fn serve_coordinator(dir: &std::path::Path) {
    // What `bitnet coordinator` does first.
    bitnet_cli::memory::return_large_frees_to_the_os();
    let config = bench_config(dir);
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
    let clients = std::fs::read_to_string(dir.join("clients.tsv")).expect("clients.tsv");
    for line in clients.lines() {
        let (id, hash) = line.split_once('\t').expect("id<TAB>hash");
        store.add_client(id, hash).expect("client");
    }
    let coordinator =
        build_coordinator(&config, &registry, Arc::clone(&store), corpus).expect("coordinator");
    let api: Arc<dyn CoordinatorApi> = Arc::clone(&coordinator) as Arc<dyn CoordinatorApi>;
    let transport = build_transport(&config, &registry).expect("transport");
    let server = transport
        .serve(bitnet_runtime::auth::serve_context(api, Arc::clone(&store)))
        .expect("serve");
    println!("{}", server.endpoint());
    let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new());
    let version = coordinator.version();
    server.shutdown();
    coordinator.shutdown();
    println!("{version}");
}

fn bench_config(dir: &std::path::Path) -> bitnet_runtime::config::RunConfig {
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
        // Every simulated worker logs in from 127.0.0.1, where a real fleet has an address
        // per machine: the per-address limit is raised so 1,000 workers log in within seconds.
        // The flood shares the address, so it still meets this limit (and the per-client one).
        "transport.logins_per_ip_per_minute=12000",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([format!("run.dir={}", dir.display())])
    .collect();
    load(&ConfigSources { file: None, env: false, overrides }).expect("config").config
}

fn main() {
    let dir_arg = std::env::var("BITNET_LOAD_DIR").ok();
    if std::env::var("BITNET_LOAD_ROLE").as_deref() == Ok("coordinator") {
        return serve_coordinator(std::path::Path::new(&dir_arg.expect("BITNET_LOAD_DIR")));
    }
    let workers = env_or("BITNET_LOAD_WORKERS", 200) as usize;
    let secs = env_or("BITNET_LOAD_SECS", 60);
    let flood = env_or("BITNET_LOAD_FLOOD", 1000) as usize;
    let pause = Duration::from_millis(env_or("BITNET_LOAD_PAUSE_MS", 100));
    let dir = tempfile::tempdir().expect("temp dir");
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
    let tsv: String = creds
        .iter()
        .map(|c| {
            format!("{}\t{}\n", c.client_id, secrets::hash_secret(&c.client_secret).expect("hash"))
        })
        .collect();
    std::fs::write(dir.path().join("clients.tsv"), tsv).expect("clients.tsv");
    let mut child = std::process::Command::new(std::env::current_exe().expect("this binary"))
        .env("BITNET_LOAD_ROLE", "coordinator")
        .env("BITNET_LOAD_DIR", dir.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the coordinator process");
    let mut child_out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut endpoint = String::new();
    std::io::BufRead::read_line(&mut child_out, &mut endpoint).expect("endpoint");
    let endpoint = endpoint.trim().to_string();
    assert!(!endpoint.is_empty(), "the coordinator process did not start");
    let pid = child.id();

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
    let idle_rss = rss_kib(pid);
    let peak_rss = Arc::new(std::sync::atomic::AtomicU64::new(idle_rss));

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
        .map(|creds| {
            let transport = build_transport(&config, &registry).expect("transport");
            let (endpoint, fingerprint) = (endpoint.clone(), fingerprint.clone());
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
                let registered = client.register(reg);
                ready.wait();
                go.wait();
                if let Err(e) = registered {
                    return errors.lock().expect("lock").push(format!("register: {e}"));
                }
                let end = *window.get().expect("the window is set before go") + run_for;
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
    ready.wait();
    let storm_secs = storm.elapsed().as_secs_f64();
    let started = Instant::now();
    window.set(started).expect("set once");
    go.wait();
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let (peak, sampling) = (Arc::clone(&peak_rss), Arc::clone(&sampling));
        std::thread::spawn(move || {
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                peak.fetch_max(rss_kib(pid), std::sync::atomic::Ordering::Relaxed);
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
    drop(child.stdin.take());
    let last = std::io::BufRead::lines(child_out).map_while(Result::ok).last().unwrap_or_default();
    let _ = child.wait();
    let version: u64 = last.trim().parse().unwrap_or(0);
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
    println!(
        "login     {workers} workers logged in and registered in {storm_secs:.1} s (before the window)"
    );
    report("login", &logins);
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
        "rss       coordinator process: idle {:.0} MiB, peak {:.0} MiB, +{:.0} MiB",
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
