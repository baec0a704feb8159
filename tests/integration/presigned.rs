//! Direct downloads: a coordinator whose snapshots live in a real S3-compatible server (moto,
//! started by the plugin's test harness) publishes the served weights and the shards there, and
//! workers talking HTTP to it download both through presigned URLs, so the coordinator serves
//! no download bytes itself; an object that does not verify, is longer than announced or is
//! gone is fetched from the coordinator instead.

use bitnet_framework::protocol::CoordinatorApi;
use bitnet_runtime::config::RunConfig;
use bitnet_runtime::coordinator::direct::shard_key;
use bitnet_runtime::coordinator::{
    Coordinator, CoordinatorSection, Corpus, MemoryCorpus, TaskShape,
};
use bitnet_runtime::run::assemble::{build_transport, build_worker_parts, coordinator_parts};
use bitnet_runtime::worker::{Worker, WorkerReport};
use bitnet_tests::dist;
use bitnet_tests::procs::wait_for;
use bitnet_weights_s3::test_support::{ACCESS_KEY, BUCKET, S3Server, SECRET_KEY};
use bitnet_weights_s3::{AmazonS3Builder, S3StoreConfig, S3WeightStore};
use object_store_shim::{delete, get, list, put};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

/// The test's own calls to the bucket (`object_store` through the store's client).
mod object_store_shim {
    use bitnet_weights_s3::S3WeightStore;
    use object_store::{ObjectStore, PutPayload};

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
    }

    pub fn get(s: &S3WeightStore, rest: &str) -> Vec<u8> {
        rt().block_on(async {
            let r = s.object_store().get(&s.path(rest)).await.expect("get");
            r.bytes().await.expect("bytes").to_vec()
        })
    }

    pub fn put(s: &S3WeightStore, rest: &str, bytes: Vec<u8>) {
        rt().block_on(s.object_store().put(&s.path(rest), PutPayload::from(bytes))).expect("put");
    }

    pub fn delete(s: &S3WeightStore, rest: &str) {
        rt().block_on(s.object_store().delete(&s.path(rest))).expect("delete");
    }

    pub fn list(s: &S3WeightStore, rest: &str) -> Vec<String> {
        let listing =
            rt().block_on(s.object_store().list_with_delimiter(Some(&s.path(rest)))).expect("list");
        listing.objects.iter().filter_map(|o| o.location.filename().map(str::to_string)).collect()
    }
}

fn s3_store(prefix: &str) -> S3WeightStore {
    let s3 = S3Server::shared().unwrap_or_else(|e| panic!("S3 server for this test: {e}"));
    let config = S3StoreConfig {
        bucket: BUCKET.into(),
        prefix: prefix.into(),
        endpoint: Some(s3.endpoint().into()),
        allow_http: true,
        ..Default::default()
    };
    let credentials =
        AmazonS3Builder::new().with_access_key_id(ACCESS_KEY).with_secret_access_key(SECRET_KEY);
    S3WeightStore::open_with(&config, credentials).expect("s3 weight store")
}

/// A coordinator over `corpus` keeping its snapshots under `prefix` in the S3 server, once it
/// has published every shard.
fn start(config: &RunConfig, prefix: &str, corpus: MemoryCorpus) -> Arc<Coordinator> {
    let registry = dist::registry();
    let store = bitnet_runtime::run::assemble::build_store(config, &registry).expect("store");
    let corpus: Arc<dyn Corpus> = Arc::new(corpus);
    let shards = corpus.shards().len();
    bitnet_runtime::run::service::seed_if_empty(store.as_ref(), corpus.as_ref(), 0, 64)
        .expect("seed");
    let mut parts = coordinator_parts(config, &registry, store, corpus).expect("parts");
    parts.snapshots = Arc::new(s3_store(prefix));
    let settings: CoordinatorSection = config.coordinator.clone();
    let shape = TaskShape::from_train(&config.train, config.model.seq_len);
    let c = Coordinator::start(parts, settings, shape).expect("coordinator");
    wait_for("the shards in the object store", Duration::from_secs(30), || {
        (c.published_shards() == shards).then_some(())
    });
    c
}

/// Runs one worker per id against `c` over HTTP until the queue is done.
fn run_workers(c: &Arc<Coordinator>, config: &RunConfig, ids: &[&str]) -> Vec<WorkerReport> {
    let registry = dist::registry();
    let api: Arc<dyn CoordinatorApi> = Arc::clone(c) as Arc<dyn CoordinatorApi>;
    let server = build_transport(config, &registry)
        .expect("transport")
        .serve(bitnet_runtime::auth::serve_context(api, Arc::clone(c.store())))
        .expect("serve");
    let base = server.endpoint();
    let workers: Vec<_> = ids
        .iter()
        .map(|id| {
            let credentials = dist::add_client(c, id);
            let (config, base) = (config.clone(), base.clone());
            std::thread::spawn(move || {
                let registry = dist::registry();
                let client = build_transport(&config, &registry)
                    .expect("transport")
                    .connect(&base, credentials)
                    .expect("connect");
                let parts = build_worker_parts(&config, &registry, client).expect("parts");
                let stop = Arc::new(AtomicBool::new(false));
                let mut worker = Worker::new(parts, config.worker.clone(), 1, 1, stop);
                worker.run(config.train.batch_size, config.model.seq_len).expect("worker")
            })
        })
        .collect();
    let reports = workers.into_iter().map(|w| w.join().expect("worker thread")).collect();
    server.shutdown();
    reports
}

/// The value of the sample `name` (with its labels) in Prometheus text.
fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample {name} in\n{text}"))
}

fn config(dir: &std::path::Path) -> RunConfig {
    dist::tiny_config(dir, &["transport.type=http", "transport.bind=127.0.0.1:0"])
}

fn prefix_of(dir: &std::path::Path) -> String {
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("run");
    format!("presigned/{}", name.trim_start_matches('.'))
}

#[test]
fn workers_download_weights_and_shards_from_the_object_store_and_the_coordinator_serves_none() {
    let dir = bitnet_tests::temp_dir();
    let config = config(dir.path());
    let prefix = prefix_of(dir.path());
    let c = start(&config, &prefix, dist::pattern_corpus(2, 640));
    let reports = run_workers(&c, &config, &["w1", "w2"]);

    let status = c.status().expect("status");
    assert!(status.tasks.finished() && status.tasks.failed == 0, "{status:?}");
    assert!(status.tasks.done >= 8, "a few tasks were trained: {status:?}");
    let m = c.metrics();
    assert_eq!(metric(&m, "bitnet_served_bytes_total{what=\"weights\"}"), 0, "{reports:?}");
    assert_eq!(metric(&m, "bitnet_served_bytes_total{what=\"shards\"}"), 0, "{reports:?}");
    let claims = metric(&m, "bitnet_claims_total");
    assert_eq!(metric(&m, "bitnet_presigned_urls_total{what=\"weights\"}"), claims);
    assert_eq!(metric(&m, "bitnet_presigned_urls_total{what=\"shards\"}"), claims);
    assert!(metric(&m, "bitnet_published_bytes_total{what=\"weights\"}") > 0);
    for r in &reports {
        assert!(r.tasks_accepted > 0, "both workers trained: {r:?}");
        assert!(r.direct_bytes > 0, "{r:?}");
        assert_eq!((r.coordinator_bytes, r.direct_fallbacks), (0, 0), "{r:?}");
    }
    c.shutdown();
    // Versions that left the served window were removed from the bucket.
    let published = list(&s3_store(&prefix), "downloads/weights");
    assert!(!published.is_empty() && published.len() <= 4, "{published:?}");
}

#[test]
fn an_object_that_fails_verification_or_is_gone_is_fetched_from_the_coordinator() {
    let dir = bitnet_tests::temp_dir();
    let config = config(dir.path());
    let prefix = prefix_of(dir.path());
    // Three shards of different bytes (shards of equal bytes share one object).
    let mut corpus = MemoryCorpus::new();
    for s in 0..3u64 {
        let bytes = dist::shard_bytes(&dist::pattern_tokens(128, 11 + 2 * s), dist::VOCAB);
        corpus.add(&format!("train-{s:04}.bin"), bytes).expect("shard");
    }
    let shards = corpus.shards();
    let c = start(&config, &prefix, corpus);
    let bucket = s3_store(&prefix);
    let keys: Vec<String> =
        shards.iter().map(|s| format!("downloads/{}", shard_key(&s.sha256))).collect();
    // Shard 0: one bit flipped (same length, wrong SHA-256). Shard 1: longer than the task
    // announces. Shard 2: gone, as for any refusal by the store (an expired or revoked URL).
    let mut flipped = get(&bucket, &keys[0]);
    flipped[40] ^= 1;
    put(&bucket, &keys[0], flipped);
    let mut longer = get(&bucket, &keys[1]);
    longer.extend_from_slice(&[0; 16]);
    put(&bucket, &keys[1], longer);
    delete(&bucket, &keys[2]);

    let reports = run_workers(&c, &config, &["w1"]);
    let r = &reports[0];
    let status = c.status().expect("status");
    assert!(status.tasks.finished() && status.tasks.failed == 0, "{status:?}");
    let shard_bytes: u64 =
        shards.iter().map(|s| c.corpus().shard(&s.name).expect("shard").bytes.len() as u64).sum();
    assert_eq!(r.direct_fallbacks, 3, "one per damaged shard: {r:?}");
    assert_eq!(r.coordinator_bytes, shard_bytes, "every shard came from the coordinator: {r:?}");
    let m = c.metrics();
    assert_eq!(metric(&m, "bitnet_served_bytes_total{what=\"shards\"}"), shard_bytes);
    assert_eq!(metric(&m, "bitnet_served_bytes_total{what=\"weights\"}"), 0, "{r:?}");
    assert!(r.direct_bytes > 0, "the weights still came from the object store: {r:?}");
    c.shutdown();
}
