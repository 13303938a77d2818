//! The HTTP server every process runs: an axum router on hyper, with the
//! bounds `axum::serve` does not set — a cap on open connections and a
//! timeout for a request's headers, and one for a response the client stops
//! reading — and a graceful shutdown.
//!
//! Past the connection cap the server stops accepting: new connections wait
//! in the kernel's backlog until one closes (as nginx does past
//! `worker_connections`), so a flood of idle or slow sockets costs neither
//! memory nor file descriptors beyond the cap. A client that has not sent a
//! whole request head within [`HEADER_READ_TIMEOUT`] is disconnected, so
//! such sockets do not hold their slot for long; bodies have their own
//! timeout where they are read (the collector's). A request whose target or
//! header fields are past their bounds ([`MAX_REQUEST_TARGET_BYTES`],
//! [`MAX_HEADER_BYTES`]) is refused with `414` or `431` and a JSON body
//! naming the bound, before any route sees it.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Open connections one process serves at once (below the usual
/// `ulimit -n` of 1024 with room for the log's files).
pub const MAX_CONNECTIONS: usize = lambda_events::limits::MAX_CONNECTIONS;
/// How long a client may take to send a request's headers.
pub const HEADER_READ_TIMEOUT: Duration =
    Duration::from_secs(lambda_events::limits::HEADER_READ_TIMEOUT_SECS);
/// How long a client may leave a response unread (its socket accepting no
/// byte of it) before the connection is closed.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(lambda_events::limits::SEND_TIMEOUT_SECS);
/// How long open connections get to finish after shutdown is asked for.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// See [`lambda_events::limits::MAX_REQUEST_TARGET_BYTES`].
pub const MAX_REQUEST_TARGET_BYTES: usize = lambda_events::limits::MAX_REQUEST_TARGET_BYTES;
/// See [`lambda_events::limits::MAX_HEADER_BYTES`].
pub const MAX_HEADER_BYTES: usize = lambda_events::limits::MAX_HEADER_BYTES;

/// `414` or `431` naming the bound `request` is past, if it is past one.
/// (hyper refuses a target past 64 KiB and a head past ~400 KiB itself,
/// with no body; these bounds are well below those, so what a client is
/// likely to send by mistake — a query string built too long, a cookie
/// jar grown too large — is told what is wrong.)
fn past_bounds<B>(request: &axum::http::Request<B>) -> Option<axum::response::Response> {
    use axum::response::IntoResponse;
    let uri = request.uri();
    // `scheme://authority` in the absolute form, then the path and query.
    let target = uri
        .scheme_str()
        .map_or(0, |scheme| scheme.len() + "://".len())
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(0, |p| p.as_str().len());
    let (status, error) = if target > MAX_REQUEST_TARGET_BYTES {
        (
            axum::http::StatusCode::URI_TOO_LONG,
            format!(
                "the request target is {target} bytes; at most {MAX_REQUEST_TARGET_BYTES} are read"
            ),
        )
    } else {
        let fields: usize = request
            .headers()
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len())
            .sum();
        if fields > MAX_HEADER_BYTES {
            (
                axum::http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                format!(
                    "the request's header fields are {fields} bytes (names and values); at most {MAX_HEADER_BYTES} are read"
                ),
            )
        } else if let Some(coding) = unsupported_transfer_coding(request.headers()) {
            // RFC 9112 §6.1: a transfer coding the server does not
            // understand is answered `501` (hyper reads `chunked` and let
            // `gzip, chunked` through as if it were plain: each line was
            // dead-lettered as junk under a `202`, a hostile re-check).
            (
                axum::http::StatusCode::NOT_IMPLEMENTED,
                format!("Transfer-Encoding: {coding} is not supported; only chunked is"),
            )
        } else if chunked_more_than_once(request.headers()) {
            // RFC 9112 §6.1: chunked at most once, else the body's length
            // cannot be known: `400` (hyper took one layer off and the
            // rest of the framing was read as lines).
            (
                axum::http::StatusCode::BAD_REQUEST,
                "Transfer-Encoding: chunked is given more than once".to_string(),
            )
        } else {
            return None;
        }
    };
    Some((status, axum::Json(serde_json::json!({ "error": error }))).into_response())
}

/// A transfer coding of `headers` other than `chunked` (quoted to 64
/// characters; empty list elements ignored), if there is one.
fn unsupported_transfer_coding(headers: &axum::http::HeaderMap) -> Option<String> {
    let values = headers.get_all(axum::http::header::TRANSFER_ENCODING);
    lambda_events::codec::coding_other_than(values.iter().map(|v| v.as_bytes()), "chunked")
}

/// Whether `chunked` is among the transfer codings of `headers` more than
/// once (across fields).
fn chunked_more_than_once(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get_all(axum::http::header::TRANSFER_ENCODING)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|text| text.split(','))
        .filter(|coding| coding.trim().eq_ignore_ascii_case("chunked"))
        .count()
        > 1
}

/// Refuses a request past the servers' bounds ([`past_bounds`]), or passes it on.
async fn within_bounds(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    match past_bounds(&request) {
        Some(refusal) => refusal,
        None => next.run(request).await,
    }
}

/// The server's bounds.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    /// See [`MAX_CONNECTIONS`].
    pub max_connections: usize,
    /// See [`HEADER_READ_TIMEOUT`].
    pub header_read_timeout: Duration,
    /// See [`SEND_TIMEOUT`].
    pub send_timeout: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_connections: MAX_CONNECTIONS,
            header_read_timeout: HEADER_READ_TIMEOUT,
            send_timeout: SEND_TIMEOUT,
        }
    }
}

/// A socket whose writes fail with `TimedOut` once one has made no progress
/// for `timeout` (nginx's `send_timeout`): a client that stops reading a
/// response gives its connection slot back instead of
/// holding it for good. The clock runs only while a write waits on a full
/// socket buffer and starts again at every byte accepted.
struct SendTimeout<S> {
    inner: S,
    timeout: Duration,
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> SendTimeout<S> {
    fn new(inner: S, timeout: Duration) -> SendTimeout<S> {
        SendTimeout {
            inner,
            timeout,
            stalled: None,
        }
    }

    /// What a write that returned `polled` comes to: progress resets the
    /// clock; waiting starts it, and past the timeout is an error.
    fn watch<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.stalled = None;
            return polled;
        }
        let timeout = self.timeout;
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match stalled.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the client read nothing of the response for {timeout:?}"),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for SendTimeout<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for SendTimeout<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.watch(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.watch(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        this.watch(cx, polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.watch(cx, polled)
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
    let app = app.layer(axum::middleware::from_fn(within_bounds));
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
        let send_timeout = limits.send_timeout;
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
            let stream = SendTimeout::new(stream, send_timeout);
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

    /// Sends `head` (a request head without its final blank line) and
    /// returns the status code and the body.
    async fn ask(addr: std::net::SocketAddr, head: &str) -> (u16, String) {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(format!("{head}connection: close\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        let status = answer
            .get(9..12)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP answer: {answer}"));
        let body = answer
            .split_once("\r\n\r\n")
            .map_or("", |(_, body)| body)
            .to_string();
        (status, body)
    }

    /// The request target's bound and the header fields' on both sides:
    /// at the bound a request is served; one byte past it, it is refused
    /// with `414` / `431` and a JSON body naming the bound — on a route
    /// and on one that does not exist alike.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_target_or_header_fields_past_their_bounds_are_refused_naming_them() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(
            listener,
            app,
            ServerLimits::default(),
            shutdown.clone(),
        ));
        // `/?q=…` of exactly `len` bytes.
        let target = |len: usize| format!("/?q={}", "a".repeat(len - 4));
        let (status, body) = ask(
            addr,
            &format!(
                "GET {} HTTP/1.1\r\nhost: x\r\n",
                target(MAX_REQUEST_TARGET_BYTES)
            ),
        )
        .await;
        assert_eq!((status, body.as_str()), (200, "ok"));
        for path in ["/", "/no-such-route"] {
            let long = format!("{path}?q={}", "a".repeat(MAX_REQUEST_TARGET_BYTES));
            let (status, body) = ask(addr, &format!("GET {long} HTTP/1.1\r\nhost: x\r\n")).await;
            assert_eq!(status, 414, "{body}");
            let error: serde_json::Value = serde_json::from_str(&body).unwrap();
            let message = error["error"].as_str().unwrap();
            assert!(
                message.contains("request target")
                    && message.contains(&format!("{} bytes", long.len()))
                    && message.contains(&MAX_REQUEST_TARGET_BYTES.to_string()),
                "{message}"
            );
        }
        // Header fields of exactly `len` bytes, names and values: `host: x`
        // (5), `connection: close` (15) and `x-fill` (6) with the rest.
        let fields = |len: usize| format!("host: x\r\nx-fill: {}\r\n", "b".repeat(len - 26));
        let (status, body) = ask(
            addr,
            &format!("GET / HTTP/1.1\r\n{}", fields(MAX_HEADER_BYTES)),
        )
        .await;
        assert_eq!((status, body.as_str()), (200, "ok"));
        let (status, body) = ask(
            addr,
            &format!("GET / HTTP/1.1\r\n{}", fields(MAX_HEADER_BYTES + 1)),
        )
        .await;
        assert_eq!(status, 431, "{body}");
        let error: serde_json::Value = serde_json::from_str(&body).unwrap();
        let message = error["error"].as_str().unwrap();
        assert!(
            message.contains("header fields")
                && message.contains(&format!("{} bytes", MAX_HEADER_BYTES + 1))
                && message.contains(&MAX_HEADER_BYTES.to_string()),
            "{message}"
        );
        // A transfer coding other than chunked: 501 naming it; chunked is read.
        let chunked = |codings: &str| {
            format!("POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: {codings}\r\n")
        };
        let (status, body) = ask(addr, &chunked("gzip, chunked")).await;
        assert_eq!(status, 501, "{body}");
        assert!(body.contains("Transfer-Encoding: gzip, chunked"), "{body}");
        let (status, _) = ask(addr, &chunked("chunked")).await;
        assert_eq!(status, 405, "read, and answered by the router");
        let (status, body) = ask(addr, &chunked("chunked, chunked")).await;
        assert_eq!(status, 400, "{body}");
        assert!(body.contains("more than once"), "{body}");
        // The server goes on serving.
        let (status, _) = ask(addr, "GET / HTTP/1.1\r\nhost: x\r\n").await;
        assert_eq!(status, 200);
        shutdown.cancel();
        server.await.unwrap();
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
            send_timeout: SEND_TIMEOUT,
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

    /// A client that asks for a large answer and never reads it held its
    /// connection (and slot) for good. With the only slot taken that way, a
    /// request waits; once the send timeout closes the stalled connection,
    /// it is answered. A slow reader that keeps reading is not cut off.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_that_stops_reading_gives_its_slot_back_after_the_send_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let big = "x".repeat(64 * 1024 * 1024);
        let app = axum::Router::new()
            .route("/", axum::routing::get(|| async { "ok" }))
            .route("/big", axum::routing::get(move || async move { big }));
        let limits = ServerLimits {
            max_connections: 1,
            header_read_timeout: Duration::from_secs(5),
            send_timeout: Duration::from_secs(2),
        };
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(listener, app, limits, shutdown.clone()));

        // A slower reader than the server's writes (a read every 20 ms, for
        // three seconds) makes progress, so the connection outlives the timeout.
        // A small receive buffer, so the server's writes stall soon after
        // the client stops reading, whatever the host's TCP buffer sizes.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(64 * 1024).unwrap();
        let mut slow = socket.connect(addr).await.unwrap();
        slow.write_all(b"GET /big HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut chunk = vec![0u8; 256 * 1024];
        let mut read = 0;
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(3) {
            let n = slow.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the server closed a connection that was being read");
            read += n;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(read > 0);

        // Now it stops reading: its slot is the only one, so a request waits...
        let waiting = tokio::spawn(get(addr));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !waiting.is_finished(),
            "the stalled connection holds the slot"
        );
        // ...until the send timeout closes the stalled one.
        let answer = tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("answered once the stalled connection is closed")
            .unwrap();
        assert!(answer.ends_with("ok"), "{answer}");
        drop(slow);
        shutdown.cancel();
        server.await.unwrap();
    }
}
