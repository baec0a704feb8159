//! Log output: a filter from `--log`, `BITNET_LOG` or `RUST_LOG` (refused when it does not
//! parse), colours only on a terminal, and a switch that sends INFO and below to a run's log
//! file instead of stderr while a progress display owns the terminal (warnings and errors still
//! reach stderr, and the file too).

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use tracing::Level;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Set while a run's log file takes the records below WARN off stderr.
static TO_FILE: AtomicBool = AtomicBool::new(false);
static FILE: Mutex<Option<std::fs::File>> = Mutex::new(None);

fn file() -> MutexGuard<'static, Option<std::fs::File>> {
    FILE.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The filter in force: `--log` (or `BITNET_LOG`), else `RUST_LOG`, else `info`.
pub fn resolve_filter(cli: Option<&str>, rust_log: Option<&str>) -> String {
    cli.or(rust_log).filter(|s| !s.trim().is_empty()).unwrap_or("info").to_string()
}

/// Parses a filter in `tracing`'s `EnvFilter` syntax, or says why it cannot.
pub fn parse_filter(filter: &str) -> anyhow::Result<EnvFilter> {
    EnvFilter::builder().parse(filter).map_err(|e| {
        anyhow::anyhow!(
            "invalid log filter `{filter}` (from --log, BITNET_LOG or RUST_LOG): {e}; expected \
             e.g. `info`, `warn` or `info,bitnet_runtime=debug`"
        )
    })
}

/// Installs the global subscriber with `filter` (already checked by [`parse_filter`]).
pub fn init(filter: &str) -> anyhow::Result<()> {
    let stderr_is_terminal = std::io::stderr().is_terminal();
    let to_stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(stderr_is_terminal)
        .with_filter(parse_filter(filter)?)
        .with_filter(filter_fn(|m| !TO_FILE.load(Ordering::Relaxed) || *m.level() <= Level::WARN));
    let to_file = tracing_subscriber::fmt::layer()
        .with_writer(RunLogWriter)
        .with_ansi(false)
        .with_filter(parse_filter(filter)?)
        .with_filter(filter_fn(|_| TO_FILE.load(Ordering::Relaxed)));
    tracing_subscriber::registry()
        .with(to_stderr)
        .with(to_file)
        .try_init()
        .map_err(|e| anyhow::anyhow!("installing the logger: {e}"))
}

/// Sends log records to a run's log file while it lives: records below WARN go only there,
/// warnings and errors to both. Dropping it puts everything back on stderr.
#[derive(Debug)]
pub struct RunLog {
    path: PathBuf,
}

impl RunLog {
    /// Appends to `path` (created if missing).
    pub fn start(path: &Path) -> anyhow::Result<Self> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| anyhow::anyhow!("opening the run log {}: {e}", path.display()))?;
        *file() = Some(f);
        TO_FILE.store(true, Ordering::SeqCst);
        Ok(Self { path: path.to_path_buf() })
    }

    /// The log file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for RunLog {
    fn drop(&mut self) {
        TO_FILE.store(false, Ordering::SeqCst);
        if let Some(mut f) = file().take() {
            let _ = f.flush();
        }
    }
}

/// Writes to the run log file, or nowhere when none is open.
struct RunLogWriter;

impl Write for RunLogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match file().as_mut() {
            Some(f) => f.write(buf),
            None => Ok(buf.len()),
        }
    }
    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        match file().as_mut() {
            Some(f) => f.write_all(buf),
            None => Ok(()),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match file().as_mut() {
            Some(f) => f.flush(),
            None => Ok(()),
        }
    }
}

impl<'a> MakeWriter<'a> for RunLogWriter {
    type Writer = RunLogWriter;
    fn make_writer(&'a self) -> Self::Writer {
        RunLogWriter
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_then_rust_log_then_info() {
        assert_eq!(resolve_filter(Some("debug"), Some("warn")), "debug");
        assert_eq!(resolve_filter(None, Some("warn")), "warn");
        assert_eq!(resolve_filter(None, None), "info");
        assert_eq!(resolve_filter(None, Some("")), "info");
    }

    #[test]
    fn a_bad_filter_is_refused_with_its_text() {
        let err = parse_filter("garbage[").expect_err("does not parse").to_string();
        assert!(err.contains("garbage["), "{err}");
        assert!(parse_filter("info,bitnet_runtime=debug").is_ok());
    }
}
