//! Tests against a real PostgreSQL server started for them ([`crate::test_support`]).

use super::*;
use crate::test_support::PgServer;
use std::sync::Arc;

fn server() -> Arc<PgServer> {
    match PgServer::shared() {
        Ok(s) => s,
        Err(e) => panic!("these tests need a PostgreSQL server: {e}"),
    }
}

fn config(url: String) -> PostgresStoreConfig {
    PostgresStoreConfig { url, pool_size: 4, connect_timeout_ms: 10_000 }
}

fn open(url: &str) -> PostgresStore {
    PostgresStore::connect(&config(url.to_string())).expect("connect to the test server")
}

fn fresh(server: &PgServer) -> PostgresStore {
    open(&server.create_database().expect("create database"))
}

fn claim_req(worker: &str, max_tokens: u64) -> ClaimRequest {
    ClaimRequest {
        worker: worker.into(),
        now_ms: 0,
        max_tokens,
        granularity: 1,
        lease_ms: 1000,
        max_leases: 0,
    }
}

#[test]
fn postgres_store_passes_the_conformance_suite() {
    let server = server();
    bitnet_framework::coordinator_store::conformance::run_store_suite(&|| Box::new(fresh(&server)));
}

#[test]
fn state_survives_reopening_and_migrations_run_once() {
    let server = server();
    let url = server.create_database().expect("database");
    let t = {
        let s = open(&url);
        s.add_tasks(&[NewTask { shard: "a".into(), offset: 0, tokens: 10 }]).expect("add");
        s.add_client("w", "h").expect("client");
        let t = s.claim(&claim_req("w", 10)).expect("claim").expect("task");
        TaskRef { task_id: t.id, lease: t.attempts }
    };
    let s = open(&url);
    assert_eq!(s.task(t.task_id).expect("t").expect("t").state, TaskState::Assigned);
    let done = s.complete(&[Finished { task: t, worker: "w".into() }], 3).expect("c");
    assert_eq!(done, [Completion::Completed]);
    assert!(s.client("w").expect("c").is_some());
    let applied: Vec<i64> = s
        .block(async {
            let rows = s
                .connection()
                .await?
                .query("SELECT version FROM schema_migrations ORDER BY version", &[])
                .await
                .map_err(fail)?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
        .expect("migrations");
    let all: Vec<i64> = schema::MIGRATIONS.iter().map(|(v, _)| *v).collect();
    assert_eq!(applied, all, "every migration recorded once after two opens");
}

#[test]
fn a_database_from_a_newer_build_is_refused() {
    let server = server();
    let url = server.create_database().expect("database");
    let s = open(&url);
    let newer = schema::latest_version() + 1;
    s.block(async {
        s.connection()
            .await?
            .execute(
                "INSERT INTO schema_migrations (version, applied_ms) VALUES ($1, 0)",
                &[&newer],
            )
            .await
            .map_err(fail)
    })
    .expect("record a future migration");
    drop(s);
    let err = PostgresStore::connect(&config(url)).expect_err("a newer schema must be refused");
    assert!(err.0.contains(&format!("schema version {newer}")), "{err}");
}

/// Two stores on one database (two processes sharing a run's database):
/// their claims interleave without ever handing out a task twice, and every token is claimed
/// exactly once.
#[test]
fn two_connections_never_claim_the_same_task() {
    let server = server();
    let url = server.create_database().expect("database");
    let a = Arc::new(open(&url));
    let b = Arc::new(open(&url));
    let tasks: Vec<NewTask> =
        (0..10).map(|k| NewTask { shard: "s".into(), offset: k * 10, tokens: 10 }).collect();
    a.add_tasks(&tasks).expect("add");
    let run = |s: Arc<PostgresStore>, w: &'static str| {
        std::thread::spawn(move || {
            let mut got = Vec::new();
            while let Some(t) = s.claim(&claim_req(w, 3)).expect("claim") {
                got.push((t.id, t.offset, t.tokens));
            }
            got
        })
    };
    let (ha, hb) = (run(Arc::clone(&a), "a"), run(Arc::clone(&b), "b"));
    let mut all = ha.join().expect("a");
    all.extend(hb.join().expect("b"));
    let mut ids: Vec<u64> = all.iter().map(|t| t.0).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), all.len(), "a task was claimed twice: {all:?}");
    let tokens: u64 = all.iter().map(|t| t.2).sum();
    assert_eq!(tokens, 100, "every token claimed exactly once");
    let c = a.counts().expect("counts");
    assert_eq!((c.pending, c.assigned, c.total_tokens), (0, all.len() as u64, 100));
}

/// A call made on a worker thread of a multi-thread runtime (an async handler that forgot
/// `spawn_blocking`) still completes, and does not stall the runtime's other tasks.
#[test]
fn calls_from_an_async_worker_thread_complete() {
    let server = server();
    let store = Arc::new(fresh(&server));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let n = rt.block_on(async {
        let s = Arc::clone(&store);
        tokio::spawn(async move {
            s.add_tasks(&[NewTask { shard: "s".into(), offset: 0, tokens: 5 }]).expect("add");
            s.counts().expect("counts").pending
        })
        .await
        .expect("task")
    });
    assert_eq!(n, 1);
}

#[test]
fn bad_options_are_refused_with_what_was_wrong() {
    let err = PostgresStore::connect(&config("postgresql://x@127.0.0.1:notaport/db".into()))
        .expect_err("bad url");
    assert!(err.0.contains("coordinator_store.url"), "{err}");
    let mut c = config("postgresql://x@127.0.0.1:5432/db".into());
    c.pool_size = 0;
    assert!(PostgresStore::connect(&c).expect_err("no pool").0.contains("pool_size"));
    // Nothing listens on a port just found free: the error names the server, not the password.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let err = PostgresStore::connect(&config(format!(
        "postgresql://bitnet:s3cret@127.0.0.1:{port}/bitnet"
    )))
    .expect_err("nothing listens");
    assert!(err.0.contains(&format!("127.0.0.1:{port}/bitnet")), "{err}");
    assert!(!err.0.contains("s3cret"), "the password leaked into an error: {err}");
    assert!(toml::from_str::<PostgresStoreConfig>("path = \"x\"").is_err(), "unknown key");
}

mod leadership {
    use super::*;
    use bitnet_framework::coordinator_store::{Leadership, SnapshotHead};
    use std::time::Duration;

    const LONG: Duration = Duration::from_secs(60);

    fn done_task(s: &PostgresStore, version: u64) -> TaskRef {
        s.add_tasks(&[NewTask { shard: "a".into(), offset: 0, tokens: 10 }]).expect("add");
        let t = s.claim(&claim_req("w", 10)).expect("claim").expect("task");
        let r = TaskRef { task_id: t.id, lease: t.attempts };
        let done = s.complete(&[Finished { task: r, worker: "w".into() }], version).expect("c");
        assert_eq!(done, [Completion::Completed]);
        r
    }

    #[test]
    fn one_replica_leads_and_a_takeover_bumps_the_epoch() {
        let server = server();
        let url = server.create_database().expect("database");
        let (a, b) = (open(&url), open(&url));
        assert_eq!(a.leader().expect("leader"), None, "a fresh database has no leader");
        let la = a.acquire("a", "https://a:1", LONG).expect("acquire").expect("a leads");
        assert_eq!(b.acquire("b", "https://b:1", LONG).expect("acquire"), None, "a holds it");
        let info = b.leader().expect("leader").expect("a leads");
        assert_eq!(
            (info.holder.as_str(), info.epoch, info.endpoint.as_str()),
            ("a", la.epoch, "https://a:1")
        );
        assert!(info.expires_in_ms > 50_000 && info.expires_in_ms <= 60_000, "{info:?}");
        // Renewing keeps the epoch; acquiring again as the holder is a renewal too.
        assert!(a.renew(&la, LONG).expect("renew"));
        assert_eq!(a.acquire("a", "https://a:1", LONG).expect("again"), Some(la.clone()));
        // Resigning frees it at once; the next holder gets a larger epoch.
        a.resign(&la).expect("resign");
        assert_eq!(a.leader().expect("leader"), None);
        assert!(!a.renew(&la, LONG).expect("renew"), "a resigned lease does not renew");
        let lb = b.acquire("b", "https://b:1", LONG).expect("acquire").expect("b leads");
        assert!(lb.epoch > la.epoch, "{lb:?} after {la:?}");
        assert!(!a.renew(&la, LONG).expect("renew"), "a deposed holder cannot renew");
    }

    #[test]
    fn an_expired_lease_passes_to_another_replica() {
        let server = server();
        let url = server.create_database().expect("database");
        let (a, b) = (open(&url), open(&url));
        let la = a.acquire("a", "x", Duration::from_millis(200)).expect("a").expect("a leads");
        assert_eq!(b.acquire("b", "y", LONG).expect("b"), None);
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(a.leader().expect("leader"), None, "the lease expired");
        assert!(!a.renew(&la, LONG).expect("renew"), "an expired lease is not renewed");
        let lb = b.acquire("b", "y", LONG).expect("b").expect("b leads");
        assert_eq!(lb.epoch, la.epoch + 1);
    }

    #[test]
    fn a_deposed_leader_can_record_nothing() {
        let server = server();
        let url = server.create_database().expect("database");
        let (a, b) = (open(&url), open(&url));
        let la = a.acquire("a", "x", LONG).expect("a").expect("a leads");
        a.fence(la.epoch);
        // While it leads, its commits go through.
        done_task(&a, 1);
        a.set_snapshot_head(&SnapshotHead { version: 1, sha256: "s1".into() }).expect("head");
        assert_eq!(a.reset_after_recovery(1).expect("reset"), 0);
        a.resign(&la).expect("resign");
        let lb = b.acquire("b", "y", LONG).expect("b").expect("b leads");
        b.fence(lb.epoch);
        // Now a's round commit, reset and head record are refused, and change nothing.
        a.add_tasks(&[NewTask { shard: "a".into(), offset: 10, tokens: 10 }]).expect("add");
        let t = a.claim(&claim_req("w", 10)).expect("claim").expect("task");
        let r = TaskRef { task_id: t.id, lease: t.attempts };
        let e = a.complete(&[Finished { task: r, worker: "w".into() }], 2).expect_err("fenced");
        assert!(e.to_string().contains("leadership (epoch 1) has ended"), "{e}");
        assert_eq!(a.task(r.task_id).expect("t").expect("t").state, TaskState::Assigned);
        assert!(a.reset_after_recovery(0).is_err());
        assert_eq!(a.counts().expect("counts").done, 1, "the refused reset changed nothing");
        assert!(
            a.set_snapshot_head(&SnapshotHead { version: 9, sha256: "zombie".into() }).is_err()
        );
        assert_eq!(b.snapshot_head().expect("head").map(|h| h.version), Some(1));
        // b's go through.
        let done = b.complete(&[Finished { task: r, worker: "w".into() }], 2).expect("b commits");
        assert_eq!(done, [Completion::Completed]);
        assert_eq!(b.newest_task_version().expect("newest"), 2);
    }

    #[test]
    fn the_snapshot_head_never_moves_back() {
        let server = server();
        let s = fresh(&server);
        assert_eq!(s.snapshot_head().expect("head"), None);
        s.set_snapshot_head(&SnapshotHead { version: 5, sha256: "five".into() }).expect("5");
        s.set_snapshot_head(&SnapshotHead { version: 3, sha256: "three".into() }).expect("3");
        assert_eq!(
            s.snapshot_head().expect("head"),
            Some(SnapshotHead { version: 5, sha256: "five".into() })
        );
        s.set_snapshot_head(&SnapshotHead { version: 6, sha256: "six".into() }).expect("6");
        assert_eq!(s.snapshot_head().expect("head").map(|h| h.version), Some(6));
        assert_eq!(s.newest_task_version().expect("newest"), 0);
    }
}

/// A page and its total come from one snapshot while another connection adds tasks (under
/// `READ COMMITTED` the count and the rows were two snapshots; SQLite's twin failed CI).
#[test]
fn a_page_and_its_total_agree_while_another_connection_writes() {
    let server = server();
    let url = server.create_database().expect("database");
    let (writer, reader) = (open(&url), open(&url));
    bitnet_framework::coordinator_store::conformance::pages_agree_with_totals_while_another_handle_writes(
        &writer, &reader,
    );
}
