//! Shared harness of the workspace integration tests: paths, temporary run directories, tiny
//! model configs.

use std::path::{Path, PathBuf};

/// Root of the workspace.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

/// Every run config under `configs/`, sorted.
pub fn all_configs() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "toml") {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(&workspace_root().join("configs"), &mut out);
    out.sort();
    out
}

/// Runs `cargo build ARGS` for the profile and target directory of the running test binary and
/// returns that profile's output directory (`target/<profile>`).
pub fn build_workspace_artifact(args: &[&str]) -> PathBuf {
    let exe = std::env::current_exe().expect("test exe");
    // target/<profile>/deps/integration-HASH -> target/<profile>
    let profile_dir = exe.parent().and_then(Path::parent).expect("target dir").to_path_buf();
    let target_dir = profile_dir.parent().expect("target root").to_path_buf();
    let mut cmd = std::process::Command::new(env!("CARGO"));
    cmd.current_dir(workspace_root()).arg("build").arg("--quiet").args(args);
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    let status = cmd.env("CARGO_TARGET_DIR", &target_dir).status().expect("run cargo build");
    assert!(status.success(), "cargo build {args:?} failed");
    profile_dir
}

/// A temporary directory that is removed on drop.
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("bitnet-test-").tempdir().expect("create temp dir")
}

/// The tiny model used by tests: seconds on one core.
pub fn tiny_model(vocab_size: usize) -> bitnet_framework::model::ModelConfig {
    bitnet_framework::model::ModelConfig {
        d_model: 32,
        n_layers: 2,
        n_heads: 4,
        ffn_hidden: 64,
        seq_len: 32,
        vocab_size,
        ..Default::default()
    }
}

/// Distributed-runtime harness: tiny configs, learnable token shards, an in-process coordinator
/// with registered clients.
pub mod dist {
    use bitnet_framework::protocol::Packing;
    use bitnet_framework::registry::Registry;
    use bitnet_framework::transport::Credentials;
    use bitnet_runtime::auth::{self as secrets};
    use bitnet_runtime::config::{ConfigSources, RunConfig, load};
    use bitnet_runtime::coordinator::{Coordinator, MemoryCorpus};
    use bitnet_runtime::data::shard::{ShardHeader, TokenDtype, VocabHash};
    use bitnet_runtime::run::assemble::{build_coordinator, build_store};
    use bitnet_runtime::run::service::seed_if_empty;
    use std::path::Path;
    use std::sync::Arc;

    /// Vocabulary of the test shards.
    pub const VOCAB: usize = 64;

    /// The bytes of a token shard file holding `tokens`.
    pub fn shard_bytes(tokens: &[u32], vocab: usize) -> Vec<u8> {
        let dtype = TokenDtype::for_vocab(vocab);
        let header = ShardHeader {
            dtype,
            vocab_size: vocab as u32,
            vocab_hash: VocabHash([3; 32]),
            token_count: tokens.len() as u64,
        };
        let mut b = header.to_bytes().to_vec();
        for &t in tokens {
            match dtype {
                TokenDtype::U16 => b.extend_from_slice(&(t as u16).to_le_bytes()),
                TokenDtype::U32 => b.extend_from_slice(&t.to_le_bytes()),
            }
        }
        b
    }

    /// `n` tokens of a learnable stream: short counting runs from a few fixed starts, so the
    /// next token is predictable from the current one most of the time.
    pub fn pattern_tokens(n: usize, seed: u64) -> Vec<u32> {
        let mut state = seed | 1;
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let start = ((state >> 33) % 4) as u32 * 8;
            for k in 0..8 {
                out.push(1 + (start + k) % (VOCAB as u32 - 1));
            }
        }
        out.truncate(n);
        out
    }

    /// A corpus of `shards` shards of `tokens` pattern tokens each.
    pub fn pattern_corpus(shards: usize, tokens: usize) -> MemoryCorpus {
        let mut c = MemoryCorpus::new();
        for s in 0..shards {
            let bytes = shard_bytes(&pattern_tokens(tokens, s as u64 + 1), VOCAB);
            c.add(&format!("train-{s:04}.bin"), bytes).expect("valid shard");
        }
        c
    }

    /// Special tokens of [`example_tokens`] shards: `[PAD]` 0, `[BOS]` 1; `[EOS]` is 2.
    pub const EXAMPLE_PACKING: Packing = Packing { bos: 1, pad: 0 };

    /// `examples` tokenized examples `[BOS] body [EOS]`, each body a learnable counting run of
    /// 3 to 12 tokens (ids 3..VOCAB) from one of a few fixed starts.
    pub fn example_tokens(examples: usize, seed: u64) -> Vec<u32> {
        let mut state = seed | 1;
        let mut out = Vec::new();
        for _ in 0..examples {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let start = ((state >> 33) % 4) as u32 * 8;
            let len = 3 + ((state >> 40) % 10) as u32;
            out.push(EXAMPLE_PACKING.bos);
            out.extend((0..len).map(|k| 3 + (start + k) % (VOCAB as u32 - 3)));
            out.push(2);
        }
        out
    }

    /// A corpus of `shards` shards of `examples` examples each, marked for packing.
    pub fn example_corpus(shards: usize, examples: usize) -> MemoryCorpus {
        let mut c = MemoryCorpus::new().with_packing(EXAMPLE_PACKING);
        for s in 0..shards {
            let bytes = shard_bytes(&example_tokens(examples, s as u64 + 1), VOCAB);
            c.add(&format!("train-{s:04}.bin"), bytes).expect("valid shard");
        }
        c
    }

    /// A tiny distributed run config in `dir`, with `overrides` (`key=value`) applied last.
    pub fn tiny_config(dir: &Path, overrides: &[&str]) -> RunConfig {
        let mut all: Vec<String> = [
            "preset=tiny",
            "model.vocab_size=64",
            "model.seq_len=16",
            "train.batch_size=4",
            "train.inner_steps=4",
            "train.threads=1",
            "optimizer.lr=0.01",
            "optimizer.warmup_steps=0",
            "inner_optimizer.lr=0.01",
            "inner_optimizer.warmup_steps=0",
            "codec.type=int8-ef",
            "transport.type=in-process",
            "coordinator_store.type=memory",
            "coordinator.task_seconds=0.000001",
            "coordinator.heartbeat_secs=0.2",
            "coordinator.min_lease_secs=30",
            "coordinator.sweep_every_secs=0.05",
            "coordinator.snapshot_every_updates=4",
            "worker.calibration_steps=1",
            "worker.idle_poll_ms=20",
            "worker.exit_when_done=true",
            "worker.retry_base_ms=10",
            "worker.give_up_after_secs=30",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        all.push(format!("run.dir={}", dir.display()));
        all.extend(overrides.iter().map(|s| s.to_string()));
        load(&ConfigSources { file: None, env: false, overrides: all })
            .expect("tiny config loads")
            .config
    }

    /// The built-in registry.
    pub fn registry() -> Registry {
        bitnet_plugins::registry().expect("registry")
    }

    /// Registers client `id` with a fresh secret in the coordinator's store.
    pub fn add_client(coordinator: &Coordinator, id: &str) -> Credentials {
        let secret = secrets::generate_secret();
        let hash = secrets::hash_secret(&secret).expect("hash");
        coordinator.store().add_client(id, &hash).expect("add client");
        Credentials { client_id: id.into(), client_secret: secret, ca_certificate: None }
    }

    /// A coordinator for `config` over `corpus`, with its queue seeded for `budget` tokens
    /// (0 = one epoch) in tasks of `chunk` tokens.
    pub fn start_coordinator(
        config: &RunConfig,
        registry: &Registry,
        corpus: MemoryCorpus,
        budget: u64,
        chunk: u64,
    ) -> Arc<Coordinator> {
        let store = build_store(config, registry).expect("store");
        let corpus: Arc<dyn bitnet_runtime::coordinator::Corpus> = Arc::new(corpus);
        seed_if_empty(store.as_ref(), corpus.as_ref(), budget, chunk).expect("seed");
        build_coordinator(config, registry, store, corpus).expect("coordinator")
    }
}

/// Child processes of the `bitnet` binary, killed when dropped.
pub mod procs {
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, ExitStatus, Stdio};
    use std::time::{Duration, Instant};

    /// The `bitnet` binary of this build. Built (or found up to date) once per test run with the
    /// same profile and target directory as the tests: cargo releases its build lock before it
    /// runs tests, so the nested build does not wait, and a stale binary is never used.
    pub fn bitnet_bin() -> PathBuf {
        static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
        BIN.get_or_init(|| crate::build_workspace_artifact(&["-p", "bitnet-cli"]).join("bitnet"))
            .clone()
    }

    /// A child process that is killed on drop.
    #[derive(Debug)]
    pub struct Proc {
        /// Name for messages.
        pub name: String,
        child: Option<Child>,
    }

    impl Proc {
        /// Starts `bitnet ARGS`, logging to `log_dir/NAME.log`.
        pub fn start(name: &str, log_dir: &Path, args: &[&str]) -> Self {
            Self::start_with_env(name, log_dir, args, &[])
        }

        /// [`Self::start`] with extra environment variables (credentials for a service).
        pub fn start_with_env(
            name: &str,
            log_dir: &Path,
            args: &[&str],
            env: &[(&str, &str)],
        ) -> Self {
            let log = std::fs::File::create(log_dir.join(format!("{name}.log"))).expect("log");
            let err = log.try_clone().expect("log");
            let child = Command::new(bitnet_bin())
                .args(args)
                .envs(env.iter().copied())
                .env("BITNET_LOG", "info")
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(err)
                .spawn()
                .expect("spawn bitnet");
            Self { name: name.into(), child: Some(child) }
        }

        /// Process id.
        pub fn pid(&self) -> u32 {
            self.child.as_ref().map(Child::id).unwrap_or(0)
        }

        /// Sends `signal` (`KILL`, `TERM`, ...) with the `kill` command.
        pub fn signal(&self, signal: &str) {
            let _ =
                Command::new("kill").arg(format!("-{signal}")).arg(self.pid().to_string()).status();
        }

        /// The exit status if the process has exited, without waiting (asking again, or
        /// [`Self::wait`] afterwards, gives the same status).
        pub fn try_wait(&mut self) -> Option<ExitStatus> {
            self.child.as_mut()?.try_wait().expect("try_wait")
        }

        /// Waits for exit, at most `timeout`; panics (after killing it) on timeout.
        pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
            let deadline = Instant::now() + timeout;
            let child = self.child.as_mut().expect("running");
            loop {
                if let Some(s) = child.try_wait().expect("try_wait") {
                    self.child = None;
                    return s;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    self.child = None;
                    panic!("{} did not exit within {timeout:?}", self.name);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    impl Drop for Proc {
        fn drop(&mut self) {
            if let Some(c) = self.child.as_mut() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    /// Polls `f` every 20 ms until it returns `Some`, at most `timeout`.
    pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = f() {
                return v;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A free TCP port on 127.0.0.1.
    pub fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port")
    }
}
