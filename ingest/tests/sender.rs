//! The sender resends a batch after `503`/`429` with `Retry-After`, so no
//! generated line is lost when the collector pushes back.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderValue, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use lambda_ingest::generator::GeneratorConfig;
use lambda_ingest::sender::{self, SenderConfig};
use tokio_util::sync::CancellationToken;

#[derive(Default)]
struct Seen {
    calls: AtomicUsize,
    accepted_lines: AtomicUsize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_refused_with_retry_after_are_resent() {
    let seen = Arc::new(Seen::default());
    let handler = {
        let seen = Arc::clone(&seen);
        move |body: String| {
            let seen = Arc::clone(&seen);
            async move {
                let call = seen.calls.fetch_add(1, Ordering::SeqCst);
                // The first two requests are refused, one of each kind.
                if call < 2 {
                    let status = if call == 0 {
                        StatusCode::SERVICE_UNAVAILABLE
                    } else {
                        StatusCode::TOO_MANY_REQUESTS
                    };
                    let mut response = (status, "busy").into_response();
                    response
                        .headers_mut()
                        .insert("retry-after", HeaderValue::from_static("0"));
                    return response;
                }
                let lines = body.lines().filter(|l| !l.is_empty()).count();
                seen.accepted_lines.fetch_add(lines, Ordering::SeqCst);
                (
                    StatusCode::ACCEPTED,
                    axum::Json(serde_json::json!({ "accepted": lines, "rejected": [] })),
                )
                    .into_response()
            }
        }
    };
    let app = Router::new().route("/api/v1/events", post(handler));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let config = SenderConfig {
        target: format!("http://{addr}"),
        rate: 100.0,
        duration: Some(Duration::from_millis(1500)),
        batches_per_second: 10,
        progress: false,
    };
    let generator = GeneratorConfig {
        malformed_fraction: 0.0,
        ..GeneratorConfig::default()
    };
    let report = sender::run(config, generator, CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(report.retries, 2);
    assert!(
        report.lines >= 50,
        "about 150 lines in 1.5 s at 100/s: {}",
        report.lines
    );
    assert_eq!(report.accepted, report.lines, "every line was delivered");
    assert_eq!(
        seen.accepted_lines.load(Ordering::SeqCst) as u64,
        report.lines,
        "and delivered once"
    );
}
