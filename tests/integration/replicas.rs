//! Coordinator replicas: two `bitnet coordinator` processes share one PostgreSQL database and
//! one S3 bucket (real servers, started by the plugins' test harnesses); one leads, the other
//! relays to it. The harness `kill -9`s the leader at random points while four workers train
//! (each given both replicas' URLs), restarts it as a follower, and at the end the ledger of
//! the snapshot the database names proves that every task's update is in the weights exactly
//! once. A leader paused past its lease (SIGSTOP) is deposed: resumed, it can record nothing
//! and exits.
//!
//! CI runs a few kills (`FAILOVER_KILLS`, default 2); `tests/failover.sh` runs 20 and prints the
//! takeover times. `FAILOVER_SEED` fixes the kill times.

use crate::chaos::{Rng, check_ledger, env_or};
use crate::dist_process::{LIMIT, log_of, run_ok, tasks};
use bitnet_framework::coordinator_store::CoordinatorStore;
use bitnet_framework::store::WeightStore;
use bitnet_runtime::coordinator::blob::{Snapshot, decode_snapshot};
use bitnet_store_postgres::test_support::PgServer;
use bitnet_store_postgres::{PostgresStore, PostgresStoreConfig};
use bitnet_tests::procs::{Proc, free_port};
use bitnet_weights_s3::test_support::{ACCESS_KEY, BUCKET, S3Server, SECRET_KEY};
use bitnet_weights_s3::{AmazonS3Builder, S3StoreConfig, S3WeightStore};
use std::path::Path;
use std::time::{Duration, Instant};

const WORKERS: [&str; 4] = ["w1", "w2", "w3", "w4"];
const AWS_ENV: [(&str, &str); 2] =
    [("AWS_ACCESS_KEY_ID", ACCESS_KEY), ("AWS_SECRET_ACCESS_KEY", SECRET_KEY)];

struct Run {
    dir: std::path::PathBuf,
    config: String,
    db_url: String,
    prefix: String,
    ports: [u16; 2],
    /// The database server stops when its last handle is dropped.
    pg: std::sync::Arc<PgServer>,
}

fn write_config(dir: &Path, db_url: &str, s3: &str, prefix: &str, corpus: u64) -> String {
    let text = format!(
        r#"
name = "replicas"
preset = "tiny"
[model]
seq_len = 32
[optimizer]
type = "adamw"
lr = 0.01
warmup_steps = 0
[codec]
type = "int8-ef"
[weight_store]
type = "s3"
bucket = "{BUCKET}"
prefix = "{prefix}"
endpoint = "{s3}"
allow_http = true
[tokenizer]
type = "word-level"
max_vocab = 400
min_freq = 1
[transport]
type = "http"
bind = "127.0.0.1:0"
[coordinator_store]
type = "postgres"
url = "{db_url}"
pool_size = 4
[train]
mode = "async-sgd"
batch_size = 4
threads = 1
[data]
dir = "{data}"
corpus_count = {corpus}
[run]
dir = "{run}"
[coordinator]
leader_lease_secs = 1.0
task_seconds = 0.005
heartbeat_secs = 0.2
min_lease_secs = 2
sweep_every_secs = 0.1
eval_every_secs = 0
snapshot_every_updates = 3
snapshot_every_secs = 0
round_wait_secs = 2
[worker]
calibration_steps = 1
idle_poll_ms = 50
retry_base_ms = 100
give_up_after_secs = 60
"#,
        data = dir.join("data").display(),
        run = dir.join("run").display(),
    );
    let path = dir.join("replicas.toml");
    std::fs::write(&path, text).expect("config");
    path.display().to_string()
}

impl Run {
    fn setup(dir: &Path, corpus: u64) -> Self {
        let pg = PgServer::shared().unwrap_or_else(|e| panic!("PostgreSQL for this test: {e}"));
        let s3 = S3Server::shared().unwrap_or_else(|e| panic!("S3 server for this test: {e}"));
        let db_url = pg.create_database().expect("database");
        let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("run");
        let prefix = format!("replicas/{}", name.trim_start_matches('.'));
        let config = write_config(dir, &db_url, s3.endpoint(), &prefix, corpus);
        run_ok(dir, "tokenize", &["tokenize-corpus", &config, "--no-env"]);
        for id in WORKERS {
            let out = dir.join(format!("{id}.json")).display().to_string();
            run_ok(
                dir,
                &format!("keys-{id}"),
                &["keys", "add", &config, "--no-env", "--id", id, "--out", &out],
            );
        }
        Self {
            dir: dir.to_path_buf(),
            config,
            db_url,
            prefix,
            ports: [free_port(), free_port()],
            pg,
        }
    }

    fn url(&self, replica: usize) -> String {
        format!("http://127.0.0.1:{}", self.ports[replica])
    }

    /// Starts replica `i` (0 or 1) on its own port; both share the run directory (one
    /// signing key, as replicas on several machines share one through a secret).
    fn replica(&self, i: usize, name: &str) -> Proc {
        let bind = format!("transport.bind=127.0.0.1:{}", self.ports[i]);
        let url_file = self.dir.join(format!("{name}.url")).display().to_string();
        Proc::start_with_env(
            name,
            &self.dir,
            &["coordinator", &self.config, "--no-env", "--set", &bind, "--url-file", &url_file],
            &AWS_ENV,
        )
    }

    fn worker(&self, id: &str) -> Proc {
        let creds = self.dir.join(format!("{id}.json")).display().to_string();
        let urls = format!("{},{}", self.url(0), self.url(1));
        Proc::start_with_env(
            id,
            &self.dir,
            &[
                "worker",
                &self.config,
                "--no-env",
                "--coordinator",
                &urls,
                "--credentials",
                &creds,
                "--exit-when-done",
            ],
            &AWS_ENV,
        )
    }

    fn store(&self) -> PostgresStore {
        PostgresStore::connect(&PostgresStoreConfig {
            url: self.db_url.clone(),
            pool_size: 2,
            connect_timeout_ms: 10_000,
        })
        .expect("store")
    }

    /// The snapshot the database names as the head, from the bucket.
    fn head_snapshot(&self, store: &PostgresStore) -> Snapshot {
        let head =
            store.leadership().expect("elects").snapshot_head().expect("head").expect("a head");
        let s3 = S3Server::shared().expect("s3");
        let config = S3StoreConfig {
            bucket: BUCKET.into(),
            prefix: self.prefix.clone(),
            endpoint: Some(s3.endpoint().into()),
            allow_http: true,
            ..Default::default()
        };
        let credentials = AmazonS3Builder::new()
            .with_access_key_id(ACCESS_KEY)
            .with_secret_access_key(SECRET_KEY);
        let weights = S3WeightStore::open_with(&config, credentials).expect("weights");
        let bytes = weights.get_version(head.version).expect("the head's blob");
        assert_eq!(bitnet_framework::store::sha256_hex(&bytes), head.sha256, "the head's blob");
        let fingerprint = hex::encode(&bytes[24..56]);
        let n = u64::from_le_bytes(bytes[64..72].try_into().expect("8 bytes")) as usize;
        decode_snapshot(&bytes, &fingerprint, n).expect("the head snapshot decodes")
    }
}

/// Answers of `GET /health/leader` from replica `port`: Some(true) leader, Some(false)
/// follower, None not answering.
fn leads(port: u16) -> Option<bool> {
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("client");
    let r = client.get(format!("http://127.0.0.1:{port}/health/leader")).send().ok()?;
    Some(r.status().is_success())
}

/// Polls `f` until it answers, at most `LIMIT`; on timeout, fails with the tail of every log.
fn wait_or_logs<T>(dir: &Path, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + LIMIT;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            let mut logs = String::new();
            let mut names: Vec<_> = std::fs::read_dir(dir)
                .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
                .unwrap_or_default();
            names.sort();
            for p in names.iter().filter(|p| p.extension().is_some_and(|x| x == "log")) {
                let text = std::fs::read_to_string(p).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(25).collect();
                logs.push_str(&format!("\n== {} ==\n", p.display()));
                for l in tail.iter().rev() {
                    logs.push_str(l);
                    logs.push('\n');
                }
            }
            panic!("timed out waiting for {what}{logs}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn kill_9_the_leader_replica_and_a_follower_takes_over_with_nothing_lost_or_applied_twice() {
    let kills = env_or("FAILOVER_KILLS", 2);
    let corpus = env_or("FAILOVER_CORPUS", 400);
    let seed = env_or("FAILOVER_SEED", 0xfa11_0ce5);
    let mut rng = Rng(seed | 1);
    let tmp = bitnet_tests::temp_dir();
    let run = Run::setup(tmp.path(), corpus);
    let dir = run.dir.clone();
    let mut replicas = [run.replica(0, "replica-0-0"), run.replica(1, "replica-1-0")];
    let names = |i: usize, n: u64| format!("replica-{i}-{n}");
    let mut generation = [0u64, 0];
    let deadline = Instant::now() + LIMIT;
    let mut current = loop {
        match (leads(run.ports[0]), leads(run.ports[1])) {
            (Some(true), Some(false)) => break 0,
            (Some(false), Some(true)) => break 1,
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "no replica leads:\n{}\n{}",
            log_of(&dir, "replica-0-0"),
            log_of(&dir, "replica-1-0")
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut workers: Vec<Proc> = WORKERS.iter().map(|id| run.worker(id)).collect();
    let s = run.store();
    let mut takeovers = Vec::new();
    while (takeovers.len() as u64) < kills {
        std::thread::sleep(Duration::from_millis(300 + rng.below(1500)));
        let c = s.counts().expect("counts");
        if c.pending + c.assigned == 0 {
            break; // the run finished before every kill was spent
        }
        replicas[current].signal("KILL");
        replicas[current].wait(LIMIT);
        let killed = Instant::now();
        let other = 1 - current;
        wait_or_logs(&dir, "the follower to take over", || {
            (leads(run.ports[other]) == Some(true)).then_some(())
        });
        takeovers.push(killed.elapsed());
        generation[current] += 1;
        replicas[current] = run.replica(current, &names(current, generation[current]));
        wait_or_logs(&dir, "the restarted replica to follow", || {
            (leads(run.ports[current]) == Some(false)).then_some(())
        });
        current = other;
    }
    // A leader paused past its lease is deposed; resumed, it records nothing and exits.
    let c = s.counts().expect("counts");
    let paused = if c.pending + c.assigned > 0 {
        replicas[current].signal("STOP");
        let other = 1 - current;
        wait_or_logs(&dir, "the follower to take over from the paused leader", || {
            (leads(run.ports[other]) == Some(true)).then_some(())
        });
        replicas[current].signal("CONT");
        let status = replicas[current].wait(LIMIT);
        let log = log_of(&dir, &names(current, generation[current]));
        assert!(!status.success(), "a deposed leader exits with an error:\n{log}");
        assert!(log.contains("lost the leader lease"), "{log}");
        generation[current] += 1;
        replicas[current] = run.replica(current, &names(current, generation[current]));
        current = other;
        true
    } else {
        false
    };
    let mut progress = (s.counts().expect("counts").done, Instant::now());
    while workers.iter_mut().any(|w| w.try_wait().is_none()) {
        let now_done = s.counts().expect("counts").done;
        if now_done != progress.0 {
            progress = (now_done, Instant::now());
        }
        assert!(
            progress.1.elapsed() < LIMIT,
            "no task completed for {LIMIT:?} ({now_done} done); w1:\n{}",
            log_of(&dir, "w1")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for (w, id) in workers.iter_mut().zip(WORKERS) {
        assert!(w.wait(LIMIT).success(), "{id} failed:\n{}", log_of(&dir, id));
    }
    for (i, r) in replicas.iter_mut().enumerate() {
        r.signal("TERM");
        let name = names(i, generation[i]);
        assert!(r.wait(LIMIT).success(), "{name}:\n{}", log_of(&dir, &name));
    }
    let _ = current;

    let all = tasks(&s);
    let snapshot = run.head_snapshot(&s);
    let done_tokens = check_ledger(&all, &snapshot, || {
        let unknown =
            snapshot.ledger.iter().map(|e| e.task_id).find(|id| !all.iter().any(|t| t.id == *id));
        format!(
            " (queue {:?}; the first of them in the store: {:?}; head version {})\n\
             PostgreSQL's log:\n{}",
            s.counts().expect("counts"),
            unknown.map(|id| s.task(id)),
            snapshot.version,
            run.pg.log_tail(40)
        )
    });
    assert_eq!(done_tokens, s.counts().expect("counts").total_tokens, "one epoch trained");
    let mut ms: Vec<u128> = takeovers.iter().map(Duration::as_millis).collect();
    ms.sort_unstable();
    eprintln!(
        "failover: {} kill -9 of the leader{} (seed {seed:#x}); takeover ms {ms:?} (p50 {}, \
         max {}); {} tasks, {done_tokens} tokens, head version {}, 0 lost, 0 applied twice",
        takeovers.len(),
        if paused { " and one paused leader deposed" } else { "" },
        ms.get(ms.len() / 2).copied().unwrap_or(0),
        ms.last().copied().unwrap_or(0),
        all.len(),
        snapshot.version
    );
}
