//! The chaos harness: `kill -9` the coordinator of a two-worker run at random moments, restart
//! it, and repeat; at the end the ledger of the final snapshot proves that every task's update
//! is in the weights exactly once and the tokens trained are the epoch's.
//!
//! CI runs a few kills (`CHAOS_KILLS`, default 3); `tests/chaos.sh` runs many on a larger corpus
//! (`CHAOS_CORPUS`, utterances). `CHAOS_SEED` fixes the kill times.

use crate::dist_process::{LIMIT, log_of, setup, store, tasks, worker};
use bitnet_framework::coordinator_store::{CoordinatorStore, TaskRecord, TaskState};
use bitnet_runtime::coordinator::blob::{Snapshot, decode_snapshot};
use bitnet_tests::procs::{Proc, free_port, wait_for};
use std::collections::BTreeSet;
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

pub(crate) fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The ledger's verdict on a finished run: every task of the queue (`all`) is done and in
/// `snapshot`'s ledger exactly once, the ledger names no other task and holds exactly the done
/// tasks' tokens. `context` adds to the message when the ledger names an unknown task. Returns
/// the done tasks' tokens.
pub(crate) fn check_ledger(
    all: &[TaskRecord],
    snapshot: &Snapshot,
    context: impl Fn() -> String,
) -> u64 {
    assert!(all.iter().all(|t| t.state == TaskState::Done), "every task is done: {all:?}");
    let done_ids: BTreeSet<u64> = all.iter().map(|t| t.id).collect();
    let done_tokens: u64 = all.iter().map(|t| t.tokens).sum();
    let mut seen = BTreeSet::new();
    for e in &snapshot.ledger {
        assert!(seen.insert(e.task_id), "task {} is in the weights twice", e.task_id);
    }
    let lost: Vec<u64> = done_ids.difference(&seen).copied().collect();
    let foreign: Vec<u64> = seen.difference(&done_ids).copied().collect();
    assert!(lost.is_empty(), "done tasks missing from the weights: {lost:?}");
    assert!(foreign.is_empty(), "weights hold tasks the store does not: {foreign:?}{}", context());
    let ledger_tokens: u64 = snapshot.ledger.iter().map(|e| e.tokens).sum();
    assert_eq!(ledger_tokens, done_tokens, "tokens in the weights = tokens of the done tasks");
    done_tokens
}

/// xorshift64*: enough randomness for kill times, reproducible from `CHAOS_SEED`.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1)
    }
}

/// The newest snapshot in `dir/run/weights`, decoded with the fingerprint and size it names
/// (the decoder still checks its checksum and structure).
fn newest_snapshot(dir: &Path) -> bitnet_runtime::coordinator::blob::Snapshot {
    let weights = dir.join("run/weights");
    let newest = std::fs::read_dir(&weights)
        .expect("weights")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "weights"))
        .max_by_key(|p| {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            name.chars()
                .filter(char::is_ascii_digit)
                .collect::<String>()
                .parse::<u64>()
                .unwrap_or(0)
        })
        .expect("a snapshot blob");
    let bytes = std::fs::read(&newest).expect("read snapshot");
    assert!(bytes.len() > 72, "{} is too short", newest.display());
    let fingerprint = hex::encode(&bytes[24..56]);
    let n = u64::from_le_bytes(bytes[64..72].try_into().expect("8 bytes")) as usize;
    decode_snapshot(&bytes, &fingerprint, n).expect("the newest snapshot decodes")
}

#[test]
fn kill_9_the_coordinator_at_random_points_and_nothing_is_lost_or_applied_twice() {
    let kills = env_or("CHAOS_KILLS", 3);
    let corpus = env_or("CHAOS_CORPUS", 600) as usize;
    let seed = env_or("CHAOS_SEED", 0x5eed_cafe);
    let mut rng = Rng(seed | 1);
    let tmp = bitnet_tests::temp_dir();
    let dir = tmp.path();
    let port = free_port();
    let config = setup(dir, port, corpus);
    let start = |n: u64| {
        Proc::start(&format!("coordinator-{n}"), dir, &["coordinator", &config, "--no-env"])
    };
    let listening = || {
        wait_for("the coordinator to listen", LIMIT, || {
            TcpStream::connect(("127.0.0.1", port)).ok().map(drop)
        })
    };
    let mut coord = start(0);
    listening();
    let mut workers = [worker(dir, &config, "w1", port), worker(dir, &config, "w2", port)];
    let s = store(dir);
    let mut done = 0;
    while done < kills {
        std::thread::sleep(Duration::from_millis(100 + rng.below(1400)));
        if s.counts().expect("counts").pending + s.counts().expect("counts").assigned == 0 {
            break; // the run finished before every kill was spent
        }
        coord.signal("KILL");
        coord.wait(LIMIT);
        done += 1;
        coord = start(done);
        listening();
    }
    eprintln!("chaos: {done} kill -9 of the coordinator (seed {seed:#x})");
    // The workers finish the queue: however long that is on a large corpus, wait while tasks
    // keep completing, and fail only when nothing has completed for LIMIT.
    let mut progress = (s.counts().expect("counts").done, std::time::Instant::now());
    while workers.iter_mut().any(|w| w.try_wait().is_none()) {
        let now_done = s.counts().expect("counts").done;
        if now_done != progress.0 {
            progress = (now_done, std::time::Instant::now());
        }
        assert!(
            progress.1.elapsed() < LIMIT,
            "no task completed for {LIMIT:?} ({now_done} done); w1:\n{}\nw2:\n{}",
            log_of(dir, "w1"),
            log_of(dir, "w2")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for (w, id) in workers.iter_mut().zip(["w1", "w2"]) {
        assert!(w.wait(LIMIT).success(), "{id} failed:\n{}", log_of(dir, id));
    }
    coord.signal("TERM");
    let last = format!("coordinator-{done}");
    assert!(coord.wait(LIMIT).success(), "coordinator:\n{}", log_of(dir, &last));

    let all = tasks(&s);
    let snapshot = newest_snapshot(dir);
    let done_tokens = check_ledger(&all, &snapshot, String::new);
    let epoch = s.counts().expect("counts").total_tokens;
    assert_eq!(done_tokens, epoch, "the tokens trained are the budget (one epoch)");
    eprintln!(
        "chaos: {} tasks, {done_tokens} tokens, weight version {}, 0 lost, 0 applied twice",
        all.len(),
        snapshot.version
    );
}
