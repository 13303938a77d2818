//! The HTTP server every process runs: an axum router on hyper, with the
//! bounds `axum::serve` does not set — a cap on open connections and a
//! timeout for a request's headers — and a graceful shutdown.
//!
//! Past the connection cap the server stops accepting: new connections wait
//! in the kernel's backlog until one closes (as nginx does past
//! `worker_connections`), so a flood of idle or slow sockets costs neither
//! memory nor file descriptors beyond the cap. A client that has not sent a
//! whole request head within [`HEADER_READ_TIMEOUT`] is disconnected, so
//! such sockets do not hold their slot for long; bodies have their own
//! timeout where they are read (the collector's).

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Open connections one process serves at once (below the usual
/// `ulimit -n` of 1024 with room for the log's files).
pub const MAX_CONNECTIONS: usize = lambda_events::limits::MAX_CONNECTIONS;
/// How long a client may take to send a request's headers.
pub const HEADER_READ_TIMEOUT: Duration =
    Duration::from_secs(lambda_events::limits::HEADER_READ_TIMEOUT_SECS);
/// How long open connections get to finish after shutdown is asked for.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The server's bounds.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    /// See [`MAX_CONNECTIONS`].
    pub max_connections: usize,
    /// See [`HEADER_READ_TIMEOUT`].
    pub header_read_timeout: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_connections: MAX_CONNECTIONS,
            header_read_timeout: HEADER_READ_TIMEOUT,
        }
    }
}

/// Serves `app` on `listener` until `shutdown` is cancelled, then lets open
/// connections finish for up to [`DRAIN_TIMEOUT`].
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    limits: ServerLimits,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    // HTTP/1 only: detecting HTTP/2 first means waiting for a client's first
    // bytes with no timeout, so sockets that send nothing (or only a
    // preface) would hold their slots forever. Browsers and Grafana speak
    // HTTP/1.1 to a plain-text server anyway.
    let mut builder = auto::Builder::new(TokioExecutor::new()).http1_only();
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    loop {
        let slot = tokio::select! {
            _ = shutdown.cancelled() => break,
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
        };
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(error) => {
                    // Out of file descriptors, or a connection reset before
                    // it was accepted: both pass; the server must not end.
                    tracing::warn!(%error, "accepting a connection failed; retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let header_timeout = limits.header_read_timeout;
        tokio::spawn(async move {
            // hyper's header timeout starts with the first byte: a socket that
            // sends nothing at all is closed here instead.
            let mut first = [0u8; 1];
            if !matches!(
                tokio::time::timeout(header_timeout, stream.peek(&mut first)).await,
                Ok(Ok(n)) if n > 0
            ) {
                drop(slot);
                return;
            }
            let connection = builder
                .serve_connection(TokioIo::new(stream), service)
                .into_owned();
            if let Err(error) = watcher.watch(connection).await {
                tracing::debug!(error = %error, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::info!("connections still open after the drain timeout; closing them");
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;

    async fn get(addr: std::net::SocketAddr) -> String {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        answer
    }

    /// Both bounds on real sockets, made small: with two idle sockets holding
    /// both connection slots, a request waits (the server stops accepting);
    /// once the first-byte timeout closes them, it is answered.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idle_sockets_hold_slots_only_until_the_first_byte_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
        let limits = ServerLimits {
            max_connections: 2,
            header_read_timeout: Duration::from_millis(600),
        };
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(listener, app, limits, shutdown.clone()));
        assert!(get(addr).await.ends_with("ok"));

        let started = Instant::now();
        let mut idle = vec![
            TcpStream::connect(addr).await.unwrap(),
            TcpStream::connect(addr).await.unwrap(),
        ];
        tokio::time::sleep(Duration::from_millis(100)).await;
        let waiting = tokio::spawn(get(addr));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!waiting.is_finished(), "past the cap a request waits");
        // The idle sockets are closed by the server (EOF) after the timeout.
        for socket in &mut idle {
            let mut byte = [0u8; 1];
            let n = tokio::time::timeout(Duration::from_secs(5), socket.read(&mut byte))
                .await
                .expect("closed by the server")
                .unwrap_or(0);
            assert_eq!(n, 0);
        }
        assert!(started.elapsed() >= Duration::from_millis(550));
        let answer = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("answered once a slot is free")
            .unwrap();
        assert!(answer.ends_with("ok"), "{answer}");
        shutdown.cancel();
        server.await.unwrap();
    }
}
