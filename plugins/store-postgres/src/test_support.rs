//! A throwaway PostgreSQL server for tests (feature `test-support`): `initdb` into a temporary
//! directory, `pg_ctl start` on 127.0.0.1 at a free port, `pg_ctl stop` when dropped. Nothing
//! stands in for the database: the tests talk to a real server.
//!
//! The binaries are looked up in `$BITNET_PG_BIN`, then the newest
//! `/usr/lib/postgresql/<major>/bin` (Debian's packages), then `PATH`. `initdb` and `postgres`
//! refuse to run as root, so when the tests run as root (CI containers) the server runs as
//! `$BITNET_PG_USER` (default `postgres`, the user Debian's package creates) through
//! `runuser`, in a directory handed to that user. The server is tuned for speed, not
//! durability (`fsync = off`): it lives for one test.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// The server tests of one process share while any of them holds it.
static SHARED: Mutex<Weak<PgServer>> = Mutex::new(Weak::new());

/// A running throwaway server; stopped (and its files removed) on drop.
#[derive(Debug)]
pub struct PgServer {
    dir: tempfile::TempDir,
    bin: PathBuf,
    run_as: Option<String>,
    port: u16,
    databases: AtomicU64,
}

/// The directory holding `initdb`, `pg_ctl` and `postgres`.
pub fn find_bin_dir() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("BITNET_PG_BIN") {
        let dir = PathBuf::from(dir);
        return if dir.join("initdb").is_file() {
            Ok(dir)
        } else {
            Err(format!("BITNET_PG_BIN={} holds no initdb", dir.display()))
        };
    }
    let mut debian: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let major = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((major, bin))
        })
        .collect();
    debian.sort();
    if let Some((_, bin)) = debian.pop() {
        return Ok(bin);
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .find(|d| d.join("initdb").is_file() && d.join("pg_ctl").is_file())
        .ok_or_else(|| {
            "no PostgreSQL server binaries (initdb, pg_ctl): install them \
             (`apt-get install postgresql` on Debian) or set BITNET_PG_BIN"
                .to_string()
        })
}

fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("no free port: {e}"))?;
    l.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

impl PgServer {
    /// Creates a cluster and starts it; fails with a message saying what was missing.
    pub fn start() -> Result<Self, String> {
        let bin = find_bin_dir()?;
        let run_as = running_as_root()
            .then(|| std::env::var("BITNET_PG_USER").unwrap_or_else(|_| "postgres".into()));
        // A user other than root must reach the directory: /tmp, not a private TMPDIR.
        let base = if run_as.is_some() { PathBuf::from("/tmp") } else { std::env::temp_dir() };
        let dir = tempfile::Builder::new()
            .prefix("bitnet-pg-")
            .tempdir_in(&base)
            .map_err(|e| format!("temporary directory in {}: {e}", base.display()))?;
        if let Some(user) = &run_as {
            let out = Command::new("chown")
                .arg(format!("{user}:"))
                .arg(dir.path())
                .output()
                .map_err(|e| format!("chown: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "cannot hand {} to user `{user}` (set BITNET_PG_USER to an existing \
                     non-root user): {}",
                    dir.path().display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
        }
        let mut server = Self { dir, bin, run_as, port: 0, databases: AtomicU64::new(0) };
        let data = server.data_dir();
        server.run(
            "initdb",
            &[
                "-D",
                path_str(&data)?,
                "-U",
                "bitnet",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            ],
        )?;
        // A port found free may be taken before the server binds it: try a few.
        let mut last = String::new();
        for _ in 0..3 {
            server.port = free_port()?;
            let options = format!(
                "-h 127.0.0.1 -p {} -k {} -c fsync=off -c synchronous_commit=off \
                 -c full_page_writes=off -c max_connections=200",
                server.port,
                path_str(server.dir.path())?
            );
            let log = server.dir.path().join("server.log");
            match server.run(
                "pg_ctl",
                &[
                    "-D",
                    path_str(&data)?,
                    "-l",
                    path_str(&log)?,
                    "-w",
                    "-t",
                    "60",
                    "-o",
                    &options,
                    "start",
                ],
            ) {
                Ok(()) => return Ok(server),
                Err(e) => {
                    let tail = std::fs::read_to_string(&log).unwrap_or_default();
                    last = format!("{e}\n{tail}");
                }
            }
        }
        Err(format!("PostgreSQL did not start: {last}"))
    }

    /// The server the tests running now share, started if none is running: one `initdb` for
    /// tests that overlap, and the server stops when the last of them drops its handle.
    pub fn shared() -> Result<Arc<Self>, String> {
        let mut slot = SHARED.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(server) = slot.upgrade() {
            return Ok(server);
        }
        let server = Arc::new(Self::start()?);
        *slot = Arc::downgrade(&server);
        Ok(server)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Runs one of the server's programs (as the unprivileged user when root).
    fn run(&self, program: &str, args: &[&str]) -> Result<(), String> {
        let exe = self.bin.join(program);
        let mut cmd = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        let out = cmd.args(args).output().map_err(|e| format!("{}: {e}", exe.display()))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{} {} failed ({}): {}{}",
                exe.display(),
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// The server's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The last `lines` lines of the server's log (crash-restarts, terminated backends), for
    /// a failing test's message.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("server.log"))
            .unwrap_or_else(|e| format!("(server.log: {e})"));
        let tail: Vec<&str> = text.lines().rev().take(lines).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// Connection URL of database `db`.
    pub fn url(&self, db: &str) -> String {
        format!("postgresql://bitnet@127.0.0.1:{}/{db}", self.port)
    }

    /// Creates a new, empty database and returns its URL.
    pub fn create_database(&self) -> Result<String, String> {
        let name = format!("test_{}", self.databases.fetch_add(1, Ordering::SeqCst));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let url = self.url("postgres");
        rt.block_on(async {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .map_err(|e| e.to_string())?;
            let driver = tokio::spawn(conn);
            let r = client.batch_execute(&format!("CREATE DATABASE {name}")).await;
            drop(client);
            let _ = driver.await;
            r.map_err(|e| format!("CREATE DATABASE {name}: {e}"))
        })?;
        Ok(self.url(&name))
    }
}

fn path_str(p: &Path) -> Result<&str, String> {
    p.to_str().ok_or_else(|| format!("{} is not UTF-8", p.display()))
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let data = self.data_dir();
        if let Some(data) = data.to_str()
            && let Err(e) = self.run("pg_ctl", &["-D", data, "-m", "immediate", "-w", "stop"])
        {
            eprintln!("stopping the test PostgreSQL server: {e}");
        }
    }
}
