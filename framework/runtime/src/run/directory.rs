//! What a run directory holds between sessions: `run.toml`, the resolved configuration its
//! last session ran with (written by `bitnet run` and `bitnet coordinator`), beside the queue,
//! snapshots, checkpoints and metrics. It lets a later session tell a used directory from a new
//! one, report the keys that changed, refuse a changed model shape, and lets `eval`, `export`
//! and `classify` open a weight snapshot with the model it was trained for.

use crate::config::RunConfig;
use std::path::{Path, PathBuf};

/// The resolved configuration of a run's last session, in its run directory.
pub const STATE_FILE: &str = "run.toml";

/// Entries of a run directory that belong to a run (deleted by [`clear`]).
const STATE_ENTRIES: &[&str] = &[
    STATE_FILE,
    "checkpoints",
    "weights",
    "coordinator.sqlite",
    "coordinator.sqlite-wal",
    "coordinator.sqlite-shm",
    "metrics.jsonl",
    "summary.json",
    "run.log",
    "coordinator.url",
];

/// Errors reading or writing a run directory's state.
#[derive(Debug, thiserror::Error)]
pub enum RunDirError {
    /// A file could not be read, written or deleted.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// `run.toml` does not parse.
    #[error("{path} is not a run configuration: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// One key whose value differs between two configurations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Dotted key (`optimizer.lr`).
    pub key: String,
    /// Value before (`-` when absent).
    pub before: String,
    /// Value now (`-` when absent).
    pub now: String,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({} -> {})", self.key, self.before, self.now)
    }
}

/// `run.toml` of `run_dir`.
pub fn state_path(run_dir: &Path) -> PathBuf {
    run_dir.join(STATE_FILE)
}

/// The state entries `run_dir` holds: empty for a new (or missing) directory.
pub fn used_entries(run_dir: &Path) -> Vec<&'static str> {
    STATE_ENTRIES.iter().copied().filter(|e| run_dir.join(e).exists()).collect()
}

/// Deletes every state entry of `run_dir` (other files are left alone).
pub fn clear(run_dir: &Path) -> Result<(), RunDirError> {
    for entry in STATE_ENTRIES {
        let path = run_dir.join(entry);
        let result = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else if path.exists() {
            std::fs::remove_file(&path)
        } else {
            continue;
        };
        result.map_err(|source| RunDirError::Io { path, source })?;
    }
    Ok(())
}

/// The configuration of the run's last session, if `run_dir` has one.
pub fn read_state(run_dir: &Path) -> Result<Option<RunConfig>, RunDirError> {
    let path = state_path(run_dir);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(RunDirError::Io { path, source }),
    };
    toml::from_str(&text)
        .map(Some)
        .map_err(|e| RunDirError::Parse { path, reason: e.message().to_string() })
}

/// Records `config` as the configuration of the run's current session.
pub fn write_state(config: &RunConfig) -> Result<PathBuf, RunDirError> {
    let path = state_path(&config.run.dir);
    let io = |source| RunDirError::Io { path: path.clone(), source };
    std::fs::create_dir_all(&config.run.dir).map_err(io)?;
    let text = toml::to_string(config).map_err(|e| io(std::io::Error::other(e)))?;
    crate::checkpoint::write_atomic(&path, text.as_bytes()).map_err(io)?;
    Ok(path)
}

/// Every leaf key whose value differs between `before` and `now`, sorted.
pub fn changes(before: &RunConfig, now: &RunConfig) -> Vec<Change> {
    let (a, b) = (leaves(before), leaves(now));
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| Change {
            key: k.clone(),
            before: a.get(k).cloned().unwrap_or_else(|| "-".into()),
            now: b.get(k).cloned().unwrap_or_else(|| "-".into()),
        })
        .collect()
}

/// The changes that make the weights of one configuration unusable by the other: the model's
/// dimensions and the kernel.
pub fn shape_changes(before: &RunConfig, now: &RunConfig) -> Vec<Change> {
    changes(before, now)
        .into_iter()
        .filter(|c| c.key.starts_with("model.") || c.key.starts_with("kernel."))
        .collect()
}

fn leaves(config: &RunConfig) -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    if let Ok(toml::Value::Table(t)) = toml::Value::try_from(config) {
        for (k, v) in &t {
            flatten(k, v, &mut out);
        }
    }
    out
}

fn flatten(prefix: &str, v: &toml::Value, out: &mut std::collections::BTreeMap<String, String>) {
    match v {
        toml::Value::Table(t) => {
            for (k, v) in t {
                flatten(&format!("{prefix}.{k}"), v, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_name_each_key_and_shape_changes_only_the_model() {
        let before = RunConfig::default();
        let mut now = before.clone();
        assert!(changes(&before, &now).is_empty());
        now.train.token_budget = 60_000;
        now.optimizer.options.insert("lr".into(), toml::Value::Float(0.02));
        let c = changes(&before, &now);
        let keys: Vec<&str> = c.iter().map(|c| c.key.as_str()).collect();
        assert_eq!(keys, ["optimizer.lr", "train.token_budget"]);
        assert_eq!(c[1].to_string(), "train.token_budget (0 -> 60000)");
        assert!(shape_changes(&before, &now).is_empty());
        now.model.d_model *= 2;
        let shape = shape_changes(&before, &now);
        assert_eq!(shape.len(), 1);
        assert_eq!(shape[0].key, "model.d_model");
    }

    #[test]
    fn state_round_trips_and_clear_removes_only_run_state() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = RunConfig::default();
        config.run.dir = dir.path().join("run");
        assert!(used_entries(&config.run.dir).is_empty());
        assert_eq!(read_state(&config.run.dir).expect("read"), None);
        write_state(&config).expect("write");
        std::fs::create_dir_all(config.run.dir.join("checkpoints")).expect("mkdir");
        std::fs::write(config.run.dir.join("notes.txt"), "mine").expect("write");
        assert_eq!(used_entries(&config.run.dir), ["run.toml", "checkpoints"]);
        assert_eq!(read_state(&config.run.dir).expect("read"), Some(config.clone()));
        clear(&config.run.dir).expect("clear");
        assert!(used_entries(&config.run.dir).is_empty());
        assert!(config.run.dir.join("notes.txt").is_file(), "other files stay");
    }
}
