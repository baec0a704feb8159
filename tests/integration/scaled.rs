//! End to end on the scaled-out plugins: `bitnet coordinator` and a worker with the
//! coordinator store in a real PostgreSQL server and the snapshots in a real S3-compatible
//! server (both started by the plugins' test harnesses on 127.0.0.1). The coordinator is
//! killed mid-run and restarted; the queue and the snapshots in the services must show nothing
//! lost and nothing applied twice.

use super::dist_process::{LIMIT, log_of, tasks, write_config};
use bitnet_framework::coordinator_store::{CoordinatorStore, TaskState};
use bitnet_framework::store::WeightStore;
use bitnet_store_postgres::test_support::PgServer;
use bitnet_store_postgres::{PostgresStore, PostgresStoreConfig};
use bitnet_tests::procs::{Proc, free_port, wait_for};
use bitnet_weights_s3::test_support::{ACCESS_KEY, BUCKET, S3Server, SECRET_KEY};
use bitnet_weights_s3::{S3StoreConfig, S3WeightStore};
use std::path::Path;

const ENV: [(&str, &str); 2] =
    [("AWS_ACCESS_KEY_ID", ACCESS_KEY), ("AWS_SECRET_ACCESS_KEY", SECRET_KEY)];

fn run_ok(dir: &Path, name: &str, args: &[&str]) {
    let status = Proc::start_with_env(name, dir, args, &ENV).wait(LIMIT);
    assert!(status.success(), "bitnet {args:?} failed:\n{}", log_of(dir, name));
}

#[test]
fn a_killed_coordinator_on_postgres_and_s3_restarts_and_nothing_is_lost_or_applied_twice() {
    let pg = PgServer::shared().unwrap_or_else(|e| panic!("PostgreSQL for this test: {e}"));
    let s3 = S3Server::shared().unwrap_or_else(|e| panic!("S3 server for this test: {e}"));
    let url = pg.create_database().expect("database");
    let tmp = bitnet_tests::temp_dir();
    let dir = tmp.path();
    let port = free_port();
    let config = write_config(dir, port, 300);
    let prefix = format!("e2e/{port}");
    let text = std::fs::read_to_string(&config).expect("config");
    let text = text
        .replace(
            "[weight_store]\ntype = \"fs\"",
            &format!(
                "[weight_store]\ntype = \"s3\"\nbucket = \"{BUCKET}\"\nprefix = \"{prefix}\"\n\
                 endpoint = \"{}\"\nallow_http = true",
                s3.endpoint()
            ),
        )
        .replace(
            "[coordinator_store]\ntype = \"sqlite\"",
            &format!("[coordinator_store]\ntype = \"postgres\"\nurl = \"{url}\""),
        );
    assert!(text.contains("type = \"s3\"") && text.contains("type = \"postgres\""), "{text}");
    std::fs::write(&config, text).expect("config");
    run_ok(dir, "tokenize", &["tokenize-corpus", &config, "--no-env"]);
    let creds = dir.join("w1.json").display().to_string();
    run_ok(dir, "keys", &["keys", "add", &config, "--no-env", "--id", "w1", "--out", &creds]);

    let store = PostgresStore::connect(&PostgresStoreConfig { url, ..Default::default() })
        .expect("the test's own connection");
    assert!(store.client("w1").expect("client").is_some(), "the key went to PostgreSQL");
    let coordinator =
        |name: &str| Proc::start_with_env(name, dir, &["coordinator", &config, "--no-env"], &ENV);
    let mut coord = coordinator("coordinator-1");
    wait_for("the coordinator's URL file", LIMIT, || {
        dir.join("run/coordinator.url").is_file().then_some(())
    });
    let endpoint = format!("http://127.0.0.1:{port}");
    let mut w1 = Proc::start_with_env(
        "w1",
        dir,
        &[
            "worker",
            &config,
            "--no-env",
            "--coordinator",
            &endpoint,
            "--credentials",
            &creds,
            "--exit-when-done",
        ],
        &ENV,
    );
    wait_for("four applied updates", LIMIT, || {
        (store.counts().expect("counts").done >= 4).then_some(())
    });
    coord.signal("KILL");
    coord.wait(LIMIT);
    let mut coord = coordinator("coordinator-2");
    assert!(w1.wait(LIMIT).success(), "w1 failed:\n{}", log_of(dir, "w1"));
    coord.signal("TERM");
    assert!(coord.wait(LIMIT).success(), "coordinator:\n{}", log_of(dir, "coordinator-2"));
    assert!(log_of(dir, "coordinator-2").contains("recovered"), "the restart recovered");

    let all = tasks(&store);
    assert!(all.len() >= 4, "{all:?}");
    assert!(all.iter().all(|t| t.state == TaskState::Done), "{all:?}");
    let mut versions: Vec<u64> = all.iter().map(|t| t.applied_version).collect();
    versions.sort_unstable();
    let expected: Vec<u64> = (1..=all.len() as u64).collect();
    assert_eq!(versions, expected, "every task's update is in the weights exactly once");
    let weights = S3WeightStore::open_with(
        &S3StoreConfig {
            bucket: BUCKET.into(),
            prefix,
            endpoint: Some(s3.endpoint().into()),
            allow_http: true,
            ..Default::default()
        },
        object_store_credentials(),
    )
    .expect("the test's own s3 client");
    let newest = weights.latest_valid().expect("snapshots").map(|(m, _)| m.version);
    assert_eq!(newest, Some(all.len() as u64), "the final snapshot in S3 holds every update");
}

fn object_store_credentials() -> bitnet_weights_s3::AmazonS3Builder {
    bitnet_weights_s3::AmazonS3Builder::new()
        .with_access_key_id(ACCESS_KEY)
        .with_secret_access_key(SECRET_KEY)
}
