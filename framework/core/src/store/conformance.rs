//! The conformance and crash-consistency suite every weight store runs (feature `conformance`).
//!
//! A store plugin supplies a function opening its store on a directory, plus a
//! [`FaultInjector`] that damages that directory the way a crash or a bad disk would:
//!
//! ```ignore
//! bitnet_framework::weight_store_conformance_tests!(open_fs_store);
//! ```
//!
//! Each check opens a fresh temporary directory, writes, injects a fault, reopens the store on
//! the same directory (a restart) and checks what is served.

use super::{StoreError, WeightStore, sha256_hex};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use std::path::Path;

/// Damages a store's files the way a crash or a bad disk would.
pub trait FaultInjector {
    /// Changes the stored bytes of `version`'s blob (bit rot, a torn sector).
    fn corrupt_blob(&self, version: u64) -> std::io::Result<()>;
    /// Removes `version`'s commit record (its checksum sidecar), as if the process died after
    /// writing the blob but before committing it.
    fn drop_commit_record(&self, version: u64) -> std::io::Result<()>;
    /// Leaves a partial temporary file for `version`, as if the process died mid-write.
    fn leave_torn_write(&self, version: u64, partial: &[u8]) -> std::io::Result<()>;
}

/// Opens (or reopens) a store on `dir`, with its fault injector.
pub type OpenStore<'a> = &'a dyn Fn(&Path) -> (Box<dyn WeightStore>, Box<dyn FaultInjector>);

fn tempdir() -> tempfile::TempDir {
    match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => panic!("cannot create a temporary directory: {e}"),
    }
}

fn ok<T>(what: &str, r: Result<T, StoreError>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{what}: {e}"),
    }
}

fn io(what: &str, r: std::io::Result<()>) {
    if let Err(e) = r {
        panic!("fault injection `{what}` failed: {e}");
    }
}

fn blob(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| seed.wrapping_mul(31).wrapping_add(i as u8)).collect()
}

/// What is put is what is got back, with a matching [`super::WeightMeta`], also after a
/// restart.
pub fn put_get_round_trip(open: OpenStore<'_>) {
    let strategy =
        prop::collection::btree_map(any::<u64>(), prop::collection::vec(any::<u8>(), 0..300), 1..5);
    let mut runner =
        TestRunner::new(Config { cases: 16, failure_persistence: None, ..Config::default() });
    let result = runner.run(&strategy, |blobs| {
        let dir = tempdir();
        let (store, _) = open(dir.path());
        for (v, b) in &blobs {
            let meta = store.put_version(*v, b).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(meta.version, *v);
            prop_assert_eq!(meta.bytes, b.len() as u64);
            prop_assert_eq!(&meta.sha256, &sha256_hex(b));
        }
        drop(store);
        let (store, _) = open(dir.path());
        for (v, b) in &blobs {
            let got = store.get_version(*v).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(&got, b);
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("store conformance `put_get_round_trip` failed: {e}");
    }
}

/// Versions are immutable: a second put of a version is refused and the first one kept.
pub fn refuses_overwrite(open: OpenStore<'_>) {
    let dir = tempdir();
    let (store, _) = open(dir.path());
    ok("first put", store.put_version(3, &blob(1, 100)));
    let second = store.put_version(3, &blob(2, 50));
    assert!(matches!(second, Err(StoreError::Exists(3))), "{second:?}");
    assert_eq!(ok("get", store.get_version(3)), blob(1, 100));
}

/// Versions are listed ascending whatever the order they were written in; `latest` is the
/// largest; unknown versions are [`StoreError::NotFound`].
pub fn lists_versions_ascending(open: OpenStore<'_>) {
    let dir = tempdir();
    let (store, _) = open(dir.path());
    assert_eq!(ok("list empty", store.list_versions()), vec![]);
    assert_eq!(ok("latest empty", store.latest()), None);
    for v in [10u64, 2, 7, 1000, 0] {
        ok("put", store.put_version(v, &blob(v as u8, 10 + v as usize % 7)));
    }
    let listed = ok("list", store.list_versions());
    let versions: Vec<u64> = listed.iter().map(|m| m.version).collect();
    assert_eq!(versions, vec![0, 2, 7, 10, 1000]);
    for m in &listed {
        let b = blob(m.version as u8, 10 + m.version as usize % 7);
        assert_eq!((m.bytes, m.sha256.as_str()), (b.len() as u64, sha256_hex(&b).as_str()));
    }
    assert_eq!(ok("latest", store.latest()).map(|m| m.version), Some(1000));
    assert!(matches!(store.get_version(5), Err(StoreError::NotFound(5))));
}

/// A corrupted blob is refused with [`StoreError::Corrupt`], never served, also after a
/// restart; `latest_valid` falls back to the newest intact version.
pub fn refuses_corrupt_blob(open: OpenStore<'_>) {
    let dir = tempdir();
    let (store, faults) = open(dir.path());
    ok("put 1", store.put_version(1, &blob(1, 64)));
    ok("put 2", store.put_version(2, &blob(2, 64)));
    io("corrupt_blob", faults.corrupt_blob(2));
    let got = store.get_version(2);
    assert!(matches!(got, Err(StoreError::Corrupt { version: 2, .. })), "{got:?}");
    let (store, _) = open(dir.path());
    let got = store.get_version(2);
    assert!(matches!(got, Err(StoreError::Corrupt { version: 2, .. })), "{got:?}");
    let (meta, bytes) = match ok("latest_valid", store.latest_valid()) {
        Some(found) => found,
        None => panic!("latest_valid found nothing; version 1 is intact"),
    };
    assert_eq!((meta.version, bytes), (1, blob(1, 64)));
}

/// A temporary file left by a crash mid-write is ignored after a restart: the version is not
/// listed, not served, and can be written.
pub fn ignores_torn_writes(open: OpenStore<'_>) {
    let dir = tempdir();
    {
        let (store, faults) = open(dir.path());
        ok("put 1", store.put_version(1, &blob(1, 32)));
        io("leave_torn_write", faults.leave_torn_write(2, &blob(2, 17)));
    }
    let (store, _) = open(dir.path());
    let versions: Vec<u64> = ok("list", store.list_versions()).iter().map(|m| m.version).collect();
    assert_eq!(versions, vec![1]);
    assert!(matches!(store.get_version(2), Err(StoreError::NotFound(2))));
    ok("put 2 after the torn write", store.put_version(2, &blob(2, 40)));
    assert_eq!(ok("get 2", store.get_version(2)), blob(2, 40));
}

/// A blob without its commit record (crash before commit) is not listed and not served after
/// a restart, and the version can be written again.
pub fn handles_missing_commit_record(open: OpenStore<'_>) {
    let dir = tempdir();
    {
        let (store, faults) = open(dir.path());
        ok("put 1", store.put_version(1, &blob(1, 32)));
        ok("put 2", store.put_version(2, &blob(2, 32)));
        io("drop_commit_record", faults.drop_commit_record(2));
    }
    let (store, _) = open(dir.path());
    let versions: Vec<u64> = ok("list", store.list_versions()).iter().map(|m| m.version).collect();
    assert_eq!(versions, vec![1]);
    assert!(store.get_version(2).is_err(), "an uncommitted blob was served");
    assert_eq!(ok("latest_valid", store.latest_valid()).map(|(m, _)| m.version), Some(1));
    ok("put 2 again", store.put_version(2, &blob(3, 8)));
    assert_eq!(ok("get 2", store.get_version(2)), blob(3, 8));
}

/// Deleted versions are neither listed nor served, others stay intact, and deleting a missing
/// version succeeds.
pub fn deletes_versions(open: OpenStore<'_>) {
    let dir = tempdir();
    {
        let (store, _) = open(dir.path());
        for v in 1..=3u8 {
            ok("put", store.put_version(u64::from(v), &blob(v, 24)));
        }
        ok("delete 2", store.delete_version(2));
        ok("delete 2 again", store.delete_version(2));
        ok("delete 7", store.delete_version(7));
        assert!(store.get_version(2).is_err(), "a deleted version was served");
    }
    let (store, _) = open(dir.path());
    let versions: Vec<u64> = ok("list", store.list_versions()).iter().map(|m| m.version).collect();
    assert_eq!(versions, vec![1, 3]);
    assert_eq!(ok("get 3", store.get_version(3)), blob(3, 24));
    ok("put 2 again", store.put_version(2, &blob(9, 8)));
    assert_eq!(ok("get 2", store.get_version(2)), blob(9, 8));
}

/// Concurrent writers of one version: exactly one wins, the others get
/// [`StoreError::Exists`], and the winner's bytes are served.
pub fn concurrent_puts_have_one_winner(open: OpenStore<'_>) {
    let dir = tempdir();
    let (store, _) = open(dir.path());
    let store = store.as_ref();
    let results: Vec<(u8, Result<(), String>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4u8)
            .map(|i| {
                s.spawn(move || {
                    let r = match store.put_version(9, &blob(i, 200)) {
                        Ok(_) => Ok(()),
                        Err(StoreError::Exists(9)) => Err("exists".to_string()),
                        Err(e) => Err(format!("unexpected: {e}")),
                    };
                    (i, r)
                })
            })
            .collect();
        handles.into_iter().filter_map(|h| h.join().ok()).collect()
    });
    assert_eq!(results.len(), 4, "a writer panicked");
    let winners: Vec<u8> = results.iter().filter(|(_, r)| r.is_ok()).map(|(i, _)| *i).collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    assert!(results.iter().all(|(_, r)| r.as_ref().map_or_else(|e| e == "exists", |_| true)));
    assert_eq!(ok("get", store.get_version(9)), blob(winners[0], 200));
}

/// Generates one `#[test]` per store conformance check. `$open` is a function
/// `fn(&Path) -> (Box<dyn WeightStore>, Box<dyn FaultInjector>)`.
#[macro_export]
macro_rules! weight_store_conformance_tests {
    ($open:expr) => {
        #[test]
        fn store_conformance_put_get_round_trip() {
            $crate::store::conformance::put_get_round_trip(&$open);
        }
        #[test]
        fn store_conformance_refuses_overwrite() {
            $crate::store::conformance::refuses_overwrite(&$open);
        }
        #[test]
        fn store_conformance_lists_versions_ascending() {
            $crate::store::conformance::lists_versions_ascending(&$open);
        }
        #[test]
        fn store_conformance_refuses_corrupt_blob() {
            $crate::store::conformance::refuses_corrupt_blob(&$open);
        }
        #[test]
        fn store_conformance_ignores_torn_writes() {
            $crate::store::conformance::ignores_torn_writes(&$open);
        }
        #[test]
        fn store_conformance_handles_missing_commit_record() {
            $crate::store::conformance::handles_missing_commit_record(&$open);
        }
        #[test]
        fn store_conformance_deletes_versions() {
            $crate::store::conformance::deletes_versions(&$open);
        }
        #[test]
        fn store_conformance_concurrent_puts_have_one_winner() {
            $crate::store::conformance::concurrent_puts_have_one_winner(&$open);
        }
    };
}
