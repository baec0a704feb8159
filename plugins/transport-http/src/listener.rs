//! The coordinator's connection loop: hyper's HTTP/1.1 server around the axum router, with a
//! cap on open connections, a header-read timeout (slow-header connections are closed), an
//! optional TLS handshake (bounded by the same timeout), and a bounded drain at shutdown.
//! axum's own `serve` offers none of these knobs, hence this loop.

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

/// Connection limits.
#[derive(Clone)]
pub struct ConnectionLimits {
    /// Open connections at most; further ones are closed as soon as they are accepted.
    pub max_connections: usize,
    /// A request's headers (and a TLS handshake) must arrive within this.
    pub header_read_timeout: Duration,
    /// TLS, when configured.
    pub tls: Option<TlsAcceptor>,
}

/// Counters of the connection loop, for `/metrics`.
#[derive(Debug, Default)]
pub struct ConnectionCounters {
    /// Connections closed at once because the cap was reached.
    pub refused: AtomicU64,
    /// TLS handshakes that failed or timed out.
    pub tls_failures: AtomicU64,
}

impl ConnectionCounters {
    /// Prometheus text.
    pub fn render(&self) -> String {
        crate::guard::counters_text(&[
            (
                "bitnet_http_connections_refused_total",
                "Connections closed at once: the connection cap was reached.",
                &self.refused,
            ),
            (
                "bitnet_http_tls_handshake_failures_total",
                "TLS handshakes that failed or timed out.",
                &self.tls_failures,
            ),
        ])
    }
}

/// How long in-flight requests get to finish after shutdown is asked for.
const DRAIN: Duration = Duration::from_secs(2);

/// Serves `app` on `listener` until `stop` fires.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    counters: Arc<ConnectionCounters>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut conns = JoinSet::new();
    // Tells every connection to finish its request in flight and close (an idle keep-alive
    // connection closes at once), so a shutdown waits for work, not for idle clients.
    let (closing, closing_rx) = tokio::sync::watch::channel(false);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
                    counters.refused.fetch_add(1, Ordering::Relaxed);
                    drop(stream);
                    continue;
                };
                let (app, limits, counters) = (app.clone(), limits.clone(), Arc::clone(&counters));
                let closing = closing_rx.clone();
                conns.spawn(async move {
                    serve_connection(stream, peer, app, &limits, &counters, closing).await;
                    drop(permit);
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    let _ = closing.send(true);
    let drain = tokio::time::sleep(DRAIN);
    tokio::pin!(drain);
    loop {
        tokio::select! {
            _ = &mut drain => {
                conns.abort_all();
                break;
            }
            next = conns.join_next() => if next.is_none() { break },
        }
    }
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    limits: &ConnectionLimits,
    counters: &ConnectionCounters,
    closing: tokio::sync::watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let svc = app.map_request(move |mut r: axum::http::Request<Incoming>| {
        r.extensions_mut().insert(ConnectInfo(peer));
        r
    });
    let svc = TowerToHyperService::new(svc);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
    let served = match &limits.tls {
        Some(acceptor) => {
            let handshake =
                tokio::time::timeout(limits.header_read_timeout, acceptor.accept(stream)).await;
            match handshake {
                Ok(Ok(tls)) => {
                    let conn = builder.serve_connection(TokioIo::new(tls), svc);
                    until_closing(conn, closing).await
                }
                Ok(Err(e)) => {
                    counters.tls_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    counters.tls_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            }
        }
        None => until_closing(builder.serve_connection(TokioIo::new(stream), svc), closing).await,
    };
    if let Err(e) = served {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// Serves `conn` to its end; once `closing` turns true, it finishes the request in flight and
/// closes (at once when idle).
async fn until_closing<I, S>(
    conn: hyper::server::conn::http1::Connection<I, S>,
    mut closing: tokio::sync::watch::Receiver<bool>,
) -> Result<(), hyper::Error>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S: hyper::service::HttpService<Incoming>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::ResBody: 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => r,
        _ = async { closing.wait_for(|c| *c).await.map(|_| ()) } => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    }
}
