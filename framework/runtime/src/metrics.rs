//! `metrics.jsonl`: one JSON object a line, the same layout whichever command wrote it
//! (`bitnet train`, `bitnet run`, `bitnet coordinator`), so one script reads them all.
//!
//! Every key is present on every row; a figure the writer does not have is `null` (a single
//! process has no workers, a fleet no gradient norm). The book's Operations chapter lists the
//! keys.

use bitnet_framework::protocol::StatusReport;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Which command wrote a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MetricsSource {
    /// `bitnet train` (one process).
    Train,
    /// `bitnet run` (coordinator and local workers).
    Run,
    /// `bitnet coordinator` (a fleet).
    Coordinator,
}

/// What a row reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MetricsKind {
    /// Training progress: one per step (`train`) or about one a second (fleet).
    Progress,
    /// A validation pass (`val_loss` set).
    Validation,
    /// The last row of a session.
    Final,
}

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsRow {
    /// Which command wrote it.
    pub source: MetricsSource,
    /// What it reports.
    pub kind: MetricsKind,
    /// Wall-clock time, milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// Seconds since this session of the command started.
    pub elapsed_s: f64,
    /// Optimizer steps so far: the trainer's step, or the coordinator's weight version.
    pub step: u64,
    /// Training tokens consumed so far (a fleet: tokens of finished tasks).
    pub tokens: u64,
    /// Tokens the run is to train on in all, when known (a fleet: tokens of every queued task).
    pub tokens_total: Option<u64>,
    /// Training loss: of the step's batch (`train`), mean of the recent updates (fleet).
    pub loss: Option<f32>,
    /// Validation loss (validation rows).
    pub val_loss: Option<f32>,
    /// Learning rate of the step (`train`).
    pub lr: Option<f32>,
    /// Gradient norm before clipping (`train`).
    pub grad_norm: Option<f32>,
    /// Training tokens per second.
    pub tokens_per_s: Option<f64>,
    /// Workers heartbeating (fleet).
    pub workers: Option<u64>,
    /// Updates applied by this coordinator process (fleet).
    pub updates_applied: Option<u64>,
    /// Updates refused by this coordinator process (fleet).
    pub updates_rejected: Option<u64>,
}

impl MetricsRow {
    /// A row with only the always-present fields set.
    pub fn new(source: MetricsSource, kind: MetricsKind, elapsed_s: f64, step: u64) -> Self {
        Self {
            source,
            kind,
            time_ms: bitnet_framework::protocol::now_ms(),
            elapsed_s,
            step,
            tokens: 0,
            tokens_total: None,
            loss: None,
            val_loss: None,
            lr: None,
            grad_norm: None,
            tokens_per_s: None,
            workers: None,
            updates_applied: None,
            updates_rejected: None,
        }
    }

    /// A fleet's row from its coordinator's status.
    pub fn from_status(
        source: MetricsSource,
        kind: MetricsKind,
        elapsed_s: f64,
        s: &StatusReport,
    ) -> Self {
        Self {
            tokens: s.tasks.done_tokens,
            tokens_total: Some(s.tasks.total_tokens),
            loss: s.recent_loss,
            tokens_per_s: Some(s.tokens_per_sec),
            workers: Some(s.workers.active),
            updates_applied: Some(s.updates_applied),
            updates_rejected: Some(s.updates_rejected),
            ..Self::new(source, kind, elapsed_s, s.weight_version)
        }
    }
}

/// Appends rows to a `metrics.jsonl` file, one flushed line each.
#[derive(Debug)]
pub struct MetricsFile {
    path: PathBuf,
    out: std::io::BufWriter<std::fs::File>,
}

impl MetricsFile {
    /// Opens `path` for appending, creating it and its directory.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Self { path: path.to_path_buf(), out: std::io::BufWriter::new(file) })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one row.
    pub fn write(&mut self, row: &MetricsRow) -> std::io::Result<()> {
        let line = serde_json::to_string(row).map_err(std::io::Error::other)?;
        writeln!(self.out, "{line}")?;
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_is_on_every_row_and_rows_read_back() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("m/metrics.jsonl");
        let mut f = MetricsFile::open(&path).expect("open");
        let train = MetricsRow {
            loss: Some(2.5),
            lr: Some(1e-3),
            ..MetricsRow::new(MetricsSource::Train, MetricsKind::Progress, 0.5, 3)
        };
        let fleet = MetricsRow::from_status(
            MetricsSource::Coordinator,
            MetricsKind::Final,
            9.0,
            &StatusReport {
                weight_version: 7,
                snapshot_version: 7,
                tasks: Default::default(),
                workers: Default::default(),
                updates_applied: 7,
                updates_rejected: 0,
                recent_loss: None,
                tokens_per_sec: 10.0,
            },
        );
        f.write(&train).expect("write");
        f.write(&fleet).expect("write");
        let text = std::fs::read_to_string(&path).expect("read");
        let keys: Vec<Vec<String>> = text
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).expect("json");
                v.as_object().expect("object").keys().cloned().collect()
            })
            .collect();
        assert_eq!(keys[0], keys[1], "one layout");
        let back: Vec<MetricsRow> =
            text.lines().map(|l| serde_json::from_str(l).expect("row")).collect();
        assert_eq!(back, [train, fleet]);
        assert!(text.contains(r#""source":"coordinator""#), "{text}");
    }
}
