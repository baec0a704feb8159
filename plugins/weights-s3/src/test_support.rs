//! A throwaway S3-compatible server for tests (feature `test-support`).
//!
//! The server is moto's (`pip install 'moto[server]'`): it installs from PyPI in seconds with
//! no compiler, starts in about a second and implements what this store relies on
//! (conditional puts with `If-None-Match: *`, multipart uploads, listing with delimiters,
//! SigV4 presigned URLs). `s3s-fs` would be a real Rust server, but `cargo install` builds it
//! from source: minutes of a 2-core CI machine on every fresh run.
//!
//! One server serves every test of a process: it is started on first use on a free
//! 127.0.0.1 port (`$BITNET_MOTO_SERVER`, default `moto_server` on `PATH`) and dies with the
//! test process (`PR_SET_PDEATHSIG`), since a process-wide static is never dropped. Set
//! `BITNET_TEST_S3_ENDPOINT` to use a server already running instead.

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The bucket the tests use.
pub const BUCKET: &str = "bitnet-test";
/// Credentials the server accepts (moto accepts any).
pub const ACCESS_KEY: &str = "bitnet-test";
/// See [`ACCESS_KEY`].
pub const SECRET_KEY: &str = "bitnet-test-secret";

/// A running server with [`BUCKET`] created.
#[derive(Debug)]
pub struct S3Server {
    endpoint: String,
}

static SERVER: OnceLock<Result<S3Server, String>> = OnceLock::new();

impl S3Server {
    /// The process's server, started on first use.
    pub fn shared() -> Result<&'static S3Server, String> {
        SERVER.get_or_init(Self::start).as_ref().map_err(Clone::clone)
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn start() -> Result<Self, String> {
        let endpoint = match std::env::var("BITNET_TEST_S3_ENDPOINT") {
            Ok(e) => e.trim_end_matches('/').to_string(),
            Err(_) => spawn_moto()?,
        };
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| e.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match client.get(&endpoint).send() {
                Ok(_) => break,
                Err(e) if Instant::now() > deadline => {
                    return Err(format!("the S3 test server at {endpoint} never answered: {e}"));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
        // moto takes an unsigned CreateBucket; 409 means it exists (a reused server).
        let r = client
            .put(format!("{endpoint}/{BUCKET}"))
            .send()
            .map_err(|e| format!("creating bucket {BUCKET}: {e}"))?;
        if !(r.status().is_success() || r.status().as_u16() == 409) {
            return Err(format!("creating bucket {BUCKET} at {endpoint}: HTTP {}", r.status()));
        }
        Ok(Self { endpoint })
    }
}

/// Starts moto_server on a free port from a thread that lives as long as the process, so the
/// child's parent-death signal fires when the test process ends and not before.
fn spawn_moto() -> Result<String, String> {
    let exe = std::env::var("BITNET_MOTO_SERVER").unwrap_or_else(|_| "moto_server".into());
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("no free port: {e}"))?
        .port();
    let (tx, rx) = std::sync::mpsc::channel();
    let exe_for_thread = exe.clone();
    std::thread::Builder::new()
        .name("moto-server".into())
        .spawn(move || {
            let mut cmd = Command::new(&exe_for_thread);
            cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            #[cfg(target_os = "linux")]
            {
                use std::os::unix::process::CommandExt;
                // SAFETY: the closure runs in the forked child before exec and only calls
                // prctl, which is async-signal-safe and allocates nothing.
                unsafe {
                    cmd.pre_exec(|| {
                        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == -1 {
                            return Err(std::io::Error::last_os_error());
                        }
                        Ok(())
                    });
                }
            }
            match cmd.spawn() {
                Ok(mut child) => {
                    let _ = tx.send(Ok(()));
                    // Waiting keeps this thread (the child's "parent") alive until the child
                    // or the whole process ends.
                    let _ = child.wait();
                }
                Err(e) => {
                    let _ = tx.send(Err(format!(
                        "cannot run `{exe_for_thread}` ({e}): install it with \
                         `pip install 'moto[server]'` or set BITNET_MOTO_SERVER"
                    )));
                }
            }
        })
        .map_err(|e| format!("cannot start the {exe} thread: {e}"))?;
    rx.recv().map_err(|e| format!("{exe} thread: {e}"))??;
    Ok(format!("http://127.0.0.1:{port}"))
}
