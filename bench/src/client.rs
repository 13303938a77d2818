//! The load generator's HTTP client: keep-alive HTTP/1.1 connections to one
//! server through hyper's connection API, each carrying one request at a
//! time, an answer's body counted frame by frame and not gathered.
//!
//! What `reqwest` does per request beside that — the URL parsed again, the
//! pool's bookkeeping, the body gathered into one buffer (287 KB for the
//! 24-hour answer) — runs on the same two cores as the server it measures,
//! and in the same runtime: the static handler's p99 under the dashboard's
//! 10 000 requests/s was itself near 2 ms with it.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

/// Connections to one server; idle ones are kept for the next request.
pub(crate) struct Connections {
    addr: SocketAddr,
    idle: parking_lot::Mutex<Vec<SendRequest<Empty<Bytes>>>>,
}

/// What a GET brought back.
pub(crate) struct Answer {
    /// The status code.
    pub(crate) status: hyper::StatusCode,
    /// Whether the server computed it afresh (`x-cache: miss`).
    pub(crate) computed: bool,
    /// Bytes of the body.
    pub(crate) bytes: usize,
}

impl Connections {
    /// Connections to `addr`, none open yet.
    pub(crate) fn to(addr: SocketAddr) -> Arc<Connections> {
        Arc::new(Connections {
            addr,
            idle: parking_lot::Mutex::new(Vec::new()),
        })
    }

    /// GET `uri` (a path and query) on an idle connection, or a new one;
    /// the body read to its end. The connection is kept for the next
    /// request unless the exchange failed.
    pub(crate) async fn get(&self, uri: &hyper::Uri) -> anyhow::Result<Answer> {
        let idle = self.idle.lock().pop();
        let mut sender = match idle {
            Some(sender) if !sender.is_closed() => sender,
            _ => self.connect().await?,
        };
        sender.ready().await.context("a connection to the server")?;
        let request = hyper::Request::get(uri.clone())
            .header(hyper::header::HOST, self.addr.to_string())
            .body(Empty::new())
            .context("a request")?;
        let response = sender
            .send_request(request)
            .await
            .with_context(|| format!("GET {uri}"))?;
        let status = response.status();
        let computed = response
            .headers()
            .get("x-cache")
            .is_some_and(|v| v == "miss");
        let mut body = response.into_body();
        let mut bytes = 0;
        while let Some(frame) = body.frame().await {
            let frame = frame.with_context(|| format!("the body of GET {uri}"))?;
            if let Some(data) = frame.data_ref() {
                bytes += data.len();
            }
        }
        self.idle.lock().push(sender);
        Ok(Answer {
            status,
            computed,
            bytes,
        })
    }

    async fn connect(&self) -> anyhow::Result<SendRequest<Empty<Bytes>>> {
        let stream = tokio::net::TcpStream::connect(self.addr)
            .await
            .with_context(|| format!("connecting to {}", self.addr))?;
        stream.set_nodelay(true)?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("an HTTP/1.1 handshake")?;
        // Driven until the server or the last sender lets go of it.
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(sender)
    }
}
