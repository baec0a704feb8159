//! Weight store "fs": immutable, versioned blobs in a directory, each with a SHA-256 sidecar.
//!
//! Version `v` is the blob `v<v, 20 digits>.weights` and its sidecar `<name>.sha256`, which holds
//! the digest in `sha256sum` format (so `sha256sum -c` checks a store by hand). The sidecar is
//! the commit record: a version exists once its sidecar does.
//!
//! Writes are atomic: the blob goes to a temporary file that is fsynced and renamed into place,
//! then the sidecar likewise (linked into place, so an existing version is never replaced), then
//! the directory is fsynced. A crash leaves at worst a temporary file (removed when the store is
//! next opened) or a blob without sidecar (not listed, not served, overwritten by the next put
//! of that version). Every read recomputes the digest; a mismatch is refused, never served.
//!
//! One process should own a directory; puts within a process are serialised.

use bitnet_framework::registry::{BuildError, PluginConfig, Slot};
use bitnet_framework::store::{StoreError, WeightMeta, WeightStore, sha256_hex};
use bitnet_framework::{BuildContext, register_plugin};
use serde::{Deserialize, Serialize};
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Prefix of temporary files; anything so named is ignored, and removed on open.
pub const TEMP_PREFIX: &str = ".tmp-";
const BLOB_SUFFIX: &str = ".weights";
const SIDECAR_SUFFIX: &str = ".weights.sha256";

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.display().to_string(), source }
}

/// File name of version `v`'s blob.
pub fn blob_name(version: u64) -> String {
    format!("v{version:020}{BLOB_SUFFIX}")
}

/// File name of version `v`'s sidecar.
pub fn sidecar_name(version: u64) -> String {
    format!("v{version:020}{SIDECAR_SUFFIX}")
}

fn parse_sidecar_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix('v')?.strip_suffix(SIDECAR_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The digest in a sidecar (`<64 hex>  <name>`), if well formed.
fn parse_sidecar(text: &str) -> Option<String> {
    let digest = text.split_whitespace().next()?;
    (digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| digest.to_ascii_lowercase())
}

/// The "fs" weight store.
#[derive(Debug)]
pub struct FsWeightStore {
    dir: PathBuf,
    put_lock: Mutex<()>,
}

impl FsWeightStore {
    /// Opens (creating if needed) a store in `dir`, removing temporary files left by a crash.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        for entry in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let entry = entry.map_err(io_err(&dir))?;
            if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
                let path = entry.path();
                tracing::info!("removing {} left by an interrupted write", path.display());
                fs::remove_file(&path).map_err(io_err(&path))?;
            }
        }
        Ok(Self { dir, put_lock: Mutex::new(()) })
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn temp_path(&self, final_name: &str) -> PathBuf {
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        self.dir.join(format!("{TEMP_PREFIX}{}-{n}-{final_name}", std::process::id()))
    }

    /// Writes `bytes` to a fresh temporary file and fsyncs it.
    fn write_temp(&self, final_name: &str, bytes: &[u8]) -> Result<PathBuf, StoreError> {
        let tmp = self.temp_path(final_name);
        let mut options = fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            // Weights are the run's state: owner-only, like the coordinator's database.
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut f = options.open(&tmp).map_err(io_err(&tmp))?;
        f.write_all(bytes).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
        Ok(tmp)
    }

    fn sync_dir(&self) -> Result<(), StoreError> {
        File::open(&self.dir).and_then(|d| d.sync_all()).map_err(io_err(&self.dir))
    }

    fn read_digest(&self, version: u64) -> Result<String, StoreError> {
        let path = self.dir.join(sidecar_name(version));
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound(version));
            }
            Err(e) => return Err(io_err(&path)(e)),
        };
        parse_sidecar(&text).ok_or_else(|| StoreError::Corrupt {
            version,
            expected: "(unreadable sidecar)".into(),
            found: format!("{:?}", text.chars().take(80).collect::<String>()),
        })
    }
}

impl WeightStore for FsWeightStore {
    fn put_version(&self, version: u64, blob: &[u8]) -> Result<WeightMeta, StoreError> {
        // A poisoned lock only means another put panicked; the files are still consistent.
        let _guard = self.put_lock.lock().unwrap_or_else(|p| p.into_inner());
        let sidecar_path = self.dir.join(sidecar_name(version));
        // A committed version is never replaced, unless what is on disk no longer matches
        // its own digest: then the newest snapshot would stay corrupt forever, so it is
        // rewritten with the blob the caller has now.
        let rewrite = if sidecar_path.exists() {
            match self.get_version(version) {
                Ok(_) => return Err(StoreError::Exists(version)),
                Err(e @ (StoreError::Corrupt { .. } | StoreError::NotFound(_))) => {
                    tracing::warn!("rewriting weight version {version}: {e}");
                    true
                }
                Err(e) => return Err(e),
            }
        } else {
            false
        };
        let digest = sha256_hex(blob);
        let blob_final = self.dir.join(blob_name(version));
        let tmp_blob = self.write_temp(&blob_name(version), blob)?;
        // Replaces only an uncommitted blob (no sidecar), left by a crash, or a corrupt one.
        fs::rename(&tmp_blob, &blob_final).map_err(io_err(&blob_final))?;
        let record = format!("{digest}  {}\n", blob_name(version));
        let tmp_sidecar = self.write_temp(&sidecar_name(version), record.as_bytes())?;
        if rewrite {
            fs::rename(&tmp_sidecar, &sidecar_path).map_err(io_err(&sidecar_path))?;
        } else {
            // hard_link refuses an existing target: the commit never replaces a version.
            let linked = fs::hard_link(&tmp_sidecar, &sidecar_path);
            let _ = fs::remove_file(&tmp_sidecar);
            match linked {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    return Err(StoreError::Exists(version));
                }
                Err(e) => return Err(io_err(&sidecar_path)(e)),
            }
        }
        self.sync_dir()?;
        Ok(WeightMeta { version, sha256: digest, bytes: blob.len() as u64 })
    }

    fn get_version(&self, version: u64) -> Result<Vec<u8>, StoreError> {
        let expected = self.read_digest(version)?;
        let path = self.dir.join(blob_name(version));
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::Corrupt {
                    version,
                    expected,
                    found: "(blob missing)".into(),
                });
            }
            Err(e) => return Err(io_err(&path)(e)),
        };
        let found = sha256_hex(&bytes);
        if found != expected {
            tracing::error!("weight version {version} at {} is corrupt", path.display());
            return Err(StoreError::Corrupt { version, expected, found });
        }
        Ok(bytes)
    }

    fn list_versions(&self) -> Result<Vec<WeightMeta>, StoreError> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io_err(&self.dir))? {
            let entry = entry.map_err(io_err(&self.dir))?;
            let Some(version) = parse_sidecar_name(&entry.file_name().to_string_lossy()) else {
                continue;
            };
            let sha256 = match self.read_digest(version) {
                Ok(d) => d,
                Err(e @ (StoreError::Corrupt { .. } | StoreError::NotFound(_))) => {
                    tracing::warn!("not listing weight version {version}: {e}");
                    continue;
                }
                Err(e) => return Err(e),
            };
            let blob = self.dir.join(blob_name(version));
            match fs::metadata(&blob) {
                Ok(m) => out.push(WeightMeta { version, sha256, bytes: m.len() }),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    tracing::warn!("not listing weight version {version}: its blob is missing");
                }
                Err(e) => return Err(io_err(&blob)(e)),
            }
        }
        out.sort_by_key(|m| m.version);
        Ok(out)
    }

    fn delete_version(&self, version: u64) -> Result<(), StoreError> {
        let _guard = self.put_lock.lock().unwrap_or_else(|p| p.into_inner());
        // The sidecar is the commit record: removing it first uncommits the version, so a
        // crash between the two removals leaves an unlisted blob that `open` never serves.
        for path in [self.dir.join(sidecar_name(version)), self.dir.join(blob_name(version))] {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&path)(e)),
            }
        }
        self.sync_dir()
    }
}

/// Options of "fs".
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FsStoreConfig {
    /// Directory of the store; default `<run dir>/weights`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
}

impl PluginConfig for FsStoreConfig {
    type Component = dyn WeightStore;

    fn build(self, ctx: &BuildContext) -> Result<Box<dyn WeightStore>, BuildError> {
        let dir = self.dir.unwrap_or_else(|| ctx.run_dir.join("weights"));
        FsWeightStore::open(dir)
            .map(|s| Box::new(s) as Box<dyn WeightStore>)
            .map_err(|e| BuildError::failed(Slot::WeightStore, "fs", e))
    }
}

register_plugin!(
    FsStoreConfig,
    "fs",
    "Immutable versioned blobs on disk with SHA-256 sidecars, written atomically."
);

#[cfg(test)]
mod tests {
    use super::*;
    use bitnet_framework::model::ModelConfig;
    use bitnet_framework::store::conformance::FaultInjector;

    struct FsFaults(PathBuf);

    impl FaultInjector for FsFaults {
        fn corrupt_blob(&self, version: u64) -> io::Result<()> {
            let path = self.0.join(blob_name(version));
            let mut bytes = fs::read(&path)?;
            let mid = bytes.len() / 2;
            bytes[mid] ^= 0x01;
            fs::write(path, bytes)
        }

        fn drop_commit_record(&self, version: u64) -> io::Result<()> {
            fs::remove_file(self.0.join(sidecar_name(version)))
        }

        fn leave_torn_write(&self, version: u64, partial: &[u8]) -> io::Result<()> {
            fs::write(self.0.join(format!("{TEMP_PREFIX}999-0-{}", blob_name(version))), partial)
        }
    }

    fn open(dir: &Path) -> (Box<dyn WeightStore>, Box<dyn FaultInjector>) {
        let store = FsWeightStore::open(dir).expect("open store");
        (Box::new(store), Box::new(FsFaults(dir.to_path_buf())))
    }

    bitnet_framework::weight_store_conformance_tests!(open);

    #[test]
    fn sidecar_is_sha256sum_format() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FsWeightStore::open(dir.path()).expect("open");
        let meta = store.put_version(5, b"hello").expect("put");
        let text = fs::read_to_string(dir.path().join(sidecar_name(5))).expect("sidecar");
        assert_eq!(text, format!("{}  {}\n", meta.sha256, blob_name(5)));
        assert_eq!(meta.sha256, "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824");
    }

    #[test]
    fn a_corrupt_version_is_rewritten_and_a_sound_one_never_is() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FsWeightStore::open(dir.path()).expect("open");
        store.put_version(3, b"first weights").expect("put");
        assert!(matches!(store.put_version(3, b"other"), Err(StoreError::Exists(3))));
        FsFaults(dir.path().to_path_buf()).corrupt_blob(3).expect("corrupt");
        assert!(matches!(store.get_version(3), Err(StoreError::Corrupt { .. })));
        store.put_version(3, b"rewritten").expect("a corrupt version is rewritten");
        assert_eq!(store.get_version(3).expect("get"), b"rewritten");
        assert!(matches!(store.put_version(3, b"again"), Err(StoreError::Exists(3))));
        fs::remove_file(dir.path().join(blob_name(3))).expect("remove blob");
        store.put_version(3, b"restored").expect("a missing blob is rewritten");
        assert_eq!(store.get_version(3).expect("get"), b"restored");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for name in [blob_name(3), sidecar_name(3)] {
                let mode = fs::metadata(dir.path().join(&name)).expect("meta").permissions().mode();
                assert_eq!(mode & 0o777, 0o600, "{name}");
            }
        }
    }

    #[test]
    fn malformed_sidecar_is_corrupt_not_served() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FsWeightStore::open(dir.path()).expect("open");
        store.put_version(1, b"abc").expect("put");
        fs::write(dir.path().join(sidecar_name(1)), "not a digest\n").expect("write");
        assert!(matches!(store.get_version(1), Err(StoreError::Corrupt { .. })));
        assert_eq!(store.list_versions().expect("list"), vec![]);
    }

    #[test]
    fn open_removes_temp_files_and_keeps_versions() {
        let dir = tempfile::tempdir().expect("tempdir");
        FsWeightStore::open(dir.path()).expect("open").put_version(1, b"x").expect("put");
        let torn = dir.path().join(format!("{TEMP_PREFIX}1-1-{}", blob_name(2)));
        fs::write(&torn, b"partial").expect("write");
        let store = FsWeightStore::open(dir.path()).expect("reopen");
        assert!(!torn.exists());
        assert_eq!(store.get_version(1).expect("get"), b"x");
    }

    #[test]
    fn dir_defaults_under_the_run_dir_and_unknown_options_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ctx = BuildContext::new(ModelConfig::default()).with_run_dir(dir.path());
        let store = FsStoreConfig::default().build(&ctx).expect("build");
        store.put_version(0, b"w").expect("put");
        assert!(dir.path().join("weights").join(sidecar_name(0)).exists());
        assert!(toml::from_str::<FsStoreConfig>("path = \"x\"").is_err());
    }
}
