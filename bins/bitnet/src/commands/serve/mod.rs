//! `bitnet serve`: an HTTP JSON inference server for a checkpoint or an export.
//!
//! A pool of packed-ternary inference models ([`pool`]), one per thread, decodes the utterances
//! the API ([`api`]) queues. Requests are **not** batched into one forward pass: the inference
//! model decodes one sequence at a time, so `--threads N` decodes N utterances at once and the
//! rest wait in a bounded queue; a full queue answers 503 at once.

pub mod api;
pub mod pool;

use super::classify::parse_threshold;
use super::inference::{InferenceSource, ModelArgs};
use anyhow::Context;
use api::{ApiLimits, AppState};
use bitnet_framework::model::InferenceModel;
use bitnet_truckmate::answer::DEFAULT_ABSTAIN_THRESHOLD;
use pool::{Decoding, ModelPool};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Serve the model over HTTP: `POST /v1/intent {"utterance": "..."}`, `POST /v1/intents
/// {"utterances": [...]}`, `GET /health`. Runs until Ctrl-C or SIGTERM, then finishes the
/// requests in flight.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    bind: String,
    #[command(flatten)]
    options: ServeOptions,
}

/// How the server decodes and what it admits.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeOptions {
    /// Inference models, one per thread: utterances decoded at once.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Utterances admitted at once, decoding or waiting (at least --max-batch); beyond it,
    /// requests get 503.
    #[arg(long, default_value_t = 256)]
    pub queue: usize,
    /// Most utterances in one `/v1/intents` request.
    #[arg(long, default_value_t = 64)]
    pub max_batch: usize,
    /// Most queued utterances one model decodes together (one product per layer for all of
    /// them at each step); 1 decodes them one at a time.
    #[arg(long, default_value_t = 16)]
    pub decode_batch: usize,
    /// Largest request body, in bytes.
    #[arg(long, default_value_t = 64 * 1024)]
    pub max_body_bytes: usize,
    /// Abstain (answer intent `none`) below this intent confidence, in [0, 1].
    #[arg(long, default_value_t = DEFAULT_ABSTAIN_THRESHOLD, value_parser = parse_threshold)]
    pub threshold: f64,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            threads: 1,
            queue: 256,
            max_batch: 64,
            decode_batch: 16,
            max_body_bytes: 64 * 1024,
            threshold: DEFAULT_ABSTAIN_THRESHOLD,
        }
    }
}

/// A running server; dropping it stops it.
pub struct Server {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Binds `bind` (port 0 picks a free one) and serves `source`'s model on a runtime of its
    /// own thread.
    pub fn start(
        source: &InferenceSource,
        bind: &str,
        options: &ServeOptions,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(
            (1..=256).contains(&options.threads),
            "--threads must be 1 to 256, not {}",
            options.threads
        );
        let decoding = Decoding {
            tokenizer: Arc::clone(&source.tokenizer),
            seq_len: source.seq_len,
            threshold: options.threshold,
        };
        Self::start_with(source.models(options.threads)?, decoding, bind, options)
    }

    /// [`Server::start`] with the models given (one thread each; `options.threads` is not
    /// used).
    pub fn start_with(
        models: Vec<Box<dyn InferenceModel>>,
        decoding: Decoding,
        bind: &str,
        options: &ServeOptions,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(!models.is_empty(), "at least one model is needed");
        anyhow::ensure!(options.max_batch >= 1, "--max-batch must be at least 1");
        anyhow::ensure!(options.decode_batch >= 1, "--decode-batch must be at least 1");
        anyhow::ensure!(
            options.queue >= options.max_batch,
            "--queue ({}) must be at least --max-batch ({}), or a full batch could never be \
             admitted",
            options.queue,
            options.max_batch
        );
        let listener =
            std::net::TcpListener::bind(bind).with_context(|| format!("binding {bind}"))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let pool = ModelPool::start(models, decoding, options.queue, options.decode_batch)
            .context("starting the inference threads")?;
        let limits =
            ApiLimits { max_body_bytes: options.max_body_bytes, max_batch: options.max_batch };
        let state = Arc::new(AppState { pool, limits });
        // Handlers only parse JSON and wait for the models: two runtime threads are plenty.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("bitnet-serve")
            .enable_all()
            .build()
            .context("starting the HTTP runtime")?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let app = api::router(Arc::clone(&state));
        let thread =
            std::thread::Builder::new().name("bitnet-serve-http".into()).spawn(move || {
                if let Err(e) = runtime.block_on(serve_until(listener, app, rx)) {
                    tracing::error!(error = %e, "HTTP server stopped");
                }
                // Every request has been answered: let the models finish and join them.
                state.pool.shutdown();
            })?;
        Ok(Self { addr, stop: Some(tx), thread: Some(thread) })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting connections, answers the requests in flight, and returns.
    pub fn stop(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            tracing::error!("the HTTP server thread panicked");
        }
    }
}

/// Serves `app` on `listener` until `stop` fires (or its sender is dropped), then waits for the
/// requests in flight.
async fn serve_until(
    listener: std::net::TcpListener,
    app: axum::Router,
    stop: tokio::sync::oneshot::Receiver<()>,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stop.await;
        })
        .await
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let source = args.model.load()?;
    let stop = super::coordinator::stop_flag()?;
    let server = Server::start(&source, &args.bind, &args.options)?;
    println!(
        "serving {} on http://{} ({} model thread(s), queue {}, abstain below {})",
        source.origin,
        server.addr(),
        args.options.threads,
        args.options.queue,
        args.options.threshold
    );
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("stopping: answering the requests in flight");
    server.stop();
    Ok(())
}
