//! `POST /api/v1/events` against a real embedded log: accepted lines reach
//! their topics, rejected ones are answered by line and field and land in
//! `dead-letter` with reason and original bytes; limits answer 413/429/503.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use lambda_ingest::{IngestConfig, IngestState, ensure_topics, router};
use lambda_log::conformance::read_all;
use lambda_log::{EmbeddedConfig, EmbeddedLog, EventLog};
use tower::ServiceExt;

async fn start_log() -> (tempfile::TempDir, Arc<dyn EventLog>) {
    let dir = tempfile::tempdir().unwrap();
    let log: Arc<dyn EventLog> = Arc::new(
        EmbeddedLog::open(dir.path(), EmbeddedConfig::default())
            .await
            .unwrap(),
    );
    ensure_topics(&log, 2).await.unwrap();
    (dir, log)
}

async fn post(
    state: IngestState,
    body: impl Into<Body>,
) -> (StatusCode, Option<String>, serde_json::Value) {
    let request = Request::post("/api/v1/events").body(body.into()).unwrap();
    let response = router(state).oneshot(request).await.unwrap();
    let status = response.status();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, retry_after, serde_json::from_slice(&bytes).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepts_valid_lines_and_dead_letters_the_rest() {
    let (_dir, log) = start_log().await;
    let state = IngestState::new(Arc::clone(&log), IngestConfig::default());
    let body = concat!(
        r#"{"event_id":"a","ts":1700000000000,"event_type":"click","user_id":"u1"}"#,
        "\n",
        r#"{"event_id":"b","ts":1700000000000,"event_type":"purchase","user_id":"u1"}"#,
        "\n",
        r#"{"event_id":"c","ts":"2023-11-14T22:13:20Z","event_type":"sensor_reading","device_id":"d","sensor":"t","value":3}"#,
        "\n",
        "\n",
        "{oops\n",
    );
    let (status, _, json) = post(state.clone(), body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{json}");
    assert_eq!(json["accepted"], 2);
    let rejected = json["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), 2);
    assert_eq!(rejected[0]["line"], 2);
    assert_eq!(rejected[0]["field"], "amount_cents");
    assert!(
        rejected[0]["error"]
            .as_str()
            .unwrap()
            .contains("required for event_type purchase")
    );
    assert_eq!(rejected[1]["line"], 5);
    assert!(
        rejected[1]["error"]
            .as_str()
            .unwrap()
            .contains("invalid json")
    );

    let funnel = read_all(log.as_ref(), "funnel-events").await;
    assert_eq!(funnel.len(), 1);
    assert_eq!(funnel[0].record.key.as_deref(), Some(&b"u1"[..]));
    let iot = read_all(log.as_ref(), "iot-events").await;
    assert_eq!(iot.len(), 1);
    assert!(
        String::from_utf8_lossy(&iot[0].record.value).contains(r#""ts":1700000000000"#),
        "ts normalised"
    );

    let dead = read_all(log.as_ref(), "dead-letter").await;
    assert_eq!(dead.len(), 2);
    assert_eq!(
        dead[0].record.value,
        br#"{"event_id":"b","ts":1700000000000,"event_type":"purchase","user_id":"u1"}"#
    );
    assert_eq!(
        dead[0].record.header("reason").unwrap(),
        b"field amount_cents: required for event_type purchase"
    );
    assert_eq!(dead[0].record.header("line").unwrap(), b"2");
    assert_eq!(dead[1].record.value, b"{oops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_times_far_in_the_future_are_rejected() {
    let (_dir, log) = start_log().await;
    let state = IngestState::new(Arc::clone(&log), IngestConfig::default());
    let next_week = chrono::Utc::now().timestamp_millis() + 7 * 86_400_000;
    let body =
        format!(r#"{{"event_id":"f","ts":{next_week},"event_type":"impression","user_id":"u"}}"#);
    let (status, _, json) = post(state, body).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(json["accepted"], 0);
    assert_eq!(json["rejected"][0]["field"], "ts");
    assert!(
        json["rejected"][0]["error"]
            .as_str()
            .unwrap()
            .contains("ahead of the collector's clock")
    );
    assert_eq!(read_all(log.as_ref(), "dead-letter").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_array_bodies_are_accepted() {
    let (_dir, log) = start_log().await;
    let state = IngestState::new(log, IngestConfig::default());
    let body = r#"[{"event_id":"a","ts":1,"event_type":"impression","user_id":"u"},{"event_id":"b","ts":1,"event_type":"alarm","device_id":"d","alarm":"x","severity":"severe"}]"#;
    let (status, _, json) = post(state, body).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(json["accepted"], 1);
    assert_eq!(json["rejected"][0]["line"], 2);
    assert_eq!(json["rejected"][0]["field"], "severity");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_get_413() {
    let (_dir, log) = start_log().await;
    let state = IngestState::new(
        log,
        IngestConfig {
            max_body_bytes: 100,
            ..IngestConfig::default()
        },
    );
    let (status, _, json) = post(state, "x".repeat(101)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(json["error"].as_str().unwrap().contains("100 bytes"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_bodies_get_400() {
    let (_dir, log) = start_log().await;
    let (status, _, json) = post(IngestState::new(log, IngestConfig::default()), "\n\n").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(json["error"], "request body has no events");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_collector_answers_429_with_retry_after() {
    let (_dir, log) = start_log().await;
    let state = IngestState::new(
        log,
        IngestConfig {
            max_inflight_requests: 0,
            ..IngestConfig::default()
        },
    );
    let (status, retry_after, _) = post(state, "{}").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(retry_after.as_deref(), Some("1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_that_cannot_write_gets_503_with_retry_after() {
    let (_dir, log) = start_log().await;
    log.close().await.unwrap();
    let state = IngestState::new(
        log,
        IngestConfig {
            append_timeout: Duration::from_secs(2),
            ..IngestConfig::default()
        },
    );
    let (status, retry_after, json) = post(
        state,
        r#"{"event_id":"a","ts":1,"event_type":"impression","user_id":"u"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{json}");
    assert!(retry_after.is_some());
}
