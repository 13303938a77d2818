//! `POST /api/v1/events` against a real embedded log: accepted lines reach
//! their topics, rejected ones are answered by line and field and land in
//! `dead-letter` with reason and original bytes; limits answer 413/429/503.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use lambda_events::limits::{
    DEAD_LETTER_EXCERPT_BYTES, DEFAULT_MAX_TS_AHEAD_MS, MAX_LINES_PER_REQUEST,
    MAX_REJECTIONS_LISTED,
};
use lambda_ingest::{IngestConfig, IngestState, ensure_topics, router};
use lambda_log::conformance::read_all;
use lambda_log::intercept::{Intercepted, Interceptor};
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
        &br#"{"event_id":"b","ts":1700000000000,"event_type":"purchase","user_id":"u1"}"#[..]
    );
    assert_eq!(
        dead[0].record.header("reason").unwrap(),
        b"field amount_cents: required for event_type purchase"
    );
    assert_eq!(dead[0].record.header("line").unwrap(), b"2");
    assert_eq!(dead[1].record.value, &b"{oops"[..]);
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
            .contains("ahead of the receiver's clock")
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

/// A body declared longer than the limit is refused before it is read:
/// 413 even when it never arrives (the read would end in 408); declared at
/// the limit, it is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_declared_over_the_limit_gets_413_before_it_is_read() {
    let (_dir, log) = start_log().await;
    let state = IngestState::new(
        log,
        IngestConfig {
            max_body_bytes: 100,
            body_read_timeout: Duration::from_millis(200),
            ..IngestConfig::default()
        },
    );
    let never = || Body::from_stream(futures::stream::pending::<Result<Vec<u8>, std::io::Error>>());
    let send = |declared: usize, body: Body| {
        let request = Request::post("/api/v1/events")
            .header("content-length", declared)
            .body(body)
            .unwrap();
        router(state.clone()).oneshot(request)
    };
    let over = send(101, never()).await.unwrap();
    assert_eq!(over.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let at = send(100, never()).await.unwrap();
    assert_eq!(
        at.status(),
        StatusCode::REQUEST_TIMEOUT,
        "read, and never came"
    );
    let at = send(100, Body::from("x".repeat(100))).await.unwrap();
    assert_eq!(at.status(), StatusCode::ACCEPTED, "read: one bad line");
}

/// A body in a content coding is refused with `415` naming the coding and
/// saying what is accepted, before it is read and with nothing written to
/// the log (a gzip body was read as it was: every line rejected as junk and
/// dead-lettered under a `202`, a hostile run); `identity`, however spelled,
/// is the body as it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_in_a_content_coding_is_refused_with_415() {
    let (_dir, log) = start_log().await;
    let state = IngestState::new(Arc::clone(&log), IngestConfig::default());
    let event = r#"{"event_id":"a","ts":1700000000000,"event_type":"click","user_id":"u1"}"#;
    let send = |codings: &[&str]| {
        let mut request = Request::post("/api/v1/events");
        for coding in codings {
            request = request.header("content-encoding", *coding);
        }
        router(state.clone()).oneshot(request.body(Body::from(event)).unwrap())
    };
    for codings in [
        &["gzip"][..],
        &["br"],
        &["identity, gzip"],
        &["identity", "zstd"],
    ] {
        let response = send(codings).await.unwrap();
        assert_eq!(
            response.status(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{codings:?}"
        );
        assert_eq!(response.headers()["accept-encoding"], "identity");
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        let error = json["error"].as_str().unwrap();
        assert!(error.contains("Content-Encoding"), "{error}");
        assert!(codings.iter().any(|c| error.contains(c)), "{error}");
    }
    assert!(read_all(log.as_ref(), "dead-letter").await.is_empty());
    assert!(read_all(log.as_ref(), "funnel-events").await.is_empty());
    let plain = [
        &[][..],
        &["identity"],
        &["Identity"],
        &["identity, identity"],
        &["identity,"],
        &[""],
    ];
    for codings in plain {
        let response = send(codings).await.unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED, "{codings:?}");
    }
    let written = read_all(log.as_ref(), "funnel-events").await;
    assert_eq!(written.len(), plain.len());
    // Refused before the body is read: one that never comes is not waited for.
    let never = futures::stream::pending::<Result<Vec<u8>, std::io::Error>>();
    let request = Request::post("/api/v1/events")
        .header("content-encoding", "gzip")
        .body(Body::from_stream(never))
        .unwrap();
    let response = router(state.clone()).oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
}

/// A body declared as JSON must be an array, after JSON's whitespace only:
/// a form feed before `[` is not whitespace (it was skipped as such).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_body_must_start_with_an_array_after_json_whitespace() {
    let (_dir, log) = start_log().await;
    let state = IngestState::new(log, IngestConfig::default());
    let event = r#"{"event_id":"a","ts":1700000000000,"event_type":"click","user_id":"u1"}"#;
    let send = |body: String| {
        let request = Request::post("/api/v1/events")
            .header("content-type", "application/json")
            .body(Body::from(body))
            .unwrap();
        router(state.clone()).oneshot(request)
    };
    let spaced = send(format!(" \t\r\n[{event}]")).await.unwrap();
    assert_eq!(spaced.status(), StatusCode::ACCEPTED);
    let fed = send(format!("\x0c[{event}]")).await.unwrap();
    assert_eq!(fed.status(), StatusCode::BAD_REQUEST);
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

fn click(id: &str, ts: i64) -> String {
    format!(r#"{{"event_id":"{id}","ts":{ts},"event_type":"click","user_id":"u"}}"#)
}

/// An embedded log whose own clock reads an hour behind the wall clock's;
/// everything else is the embedded log's.
#[derive(Debug)]
struct ClockBehind;

const BEHIND_MS: i64 = 3_600_000;

impl Interceptor for ClockBehind {
    fn clock_ms(&self, inner: Option<i64>) -> Option<i64> {
        inner.map(|now| now - BEHIND_MS)
    }
}

/// The collector stamps records by the log's own clock where the log has
/// one (the embedded log's, which never steps back), and judges events by
/// the wall clock: stamped by a wall clock stepped back a minute, every
/// record was behind what the embedded log had promised and raised to it,
/// and the log's time crept a millisecond a write for that minute (a
/// hostile run). Here the log's clock reads an hour behind, which the
/// embedded log under it keeps: the records carry it, and an event of now
/// is still accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_stamped_by_the_log_s_clock_where_it_has_one() {
    let (_dir, log) = start_log().await;
    let log: Arc<dyn EventLog> = Arc::new(Intercepted::new(log, ClockBehind));
    let state = IngestState::new(Arc::clone(&log), IngestConfig::default());
    let wall = chrono::Utc::now().timestamp_millis();
    let (status, _, json) = post(state, click("c", wall)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{json}");
    let records = read_all(log.as_ref(), "funnel-events").await;
    assert_eq!(records.len(), 1);
    let stamp = records[0].record.timestamp_ms;
    let by_log = wall - BEHIND_MS;
    assert!(
        (by_log - 1_000..=by_log + 60_000).contains(&stamp),
        "stamped {stamp}, the log's clock read about {by_log}"
    );
}

/// A sender that trickles its body holds a connection, not a writing slot:
/// with one slot, a second request is still answered 202, and the trickling
/// one is answered 408 once its body timeout passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_body_takes_no_slot_and_times_out_with_408() {
    let (_dir, log) = start_log().await;
    let state = IngestState::new(
        log,
        IngestConfig {
            max_inflight_requests: 1,
            body_read_timeout: Duration::from_millis(800),
            ..IngestConfig::default()
        },
    );
    let first_byte =
        futures::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"{"))]);
    let trickle = Body::from_stream(futures::StreamExt::chain(
        first_byte,
        futures::stream::pending(),
    ));
    let slow = tokio::spawn(post(state.clone(), trickle));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, _, json) = post(state, click("a", 1)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{json}");
    let (status, _, json) = slow.await.unwrap();
    assert_eq!(status, StatusCode::REQUEST_TIMEOUT);
    assert!(json["error"].as_str().unwrap().contains("800 ms"), "{json}");
}

/// A 2 MiB line (over the log's 1 MiB record limit) next to a valid event:
/// the line is rejected alone and dead-lettered cut to its first bytes, with
/// its length; the event is accepted (it used to answer 500 after storing it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_line_is_dead_lettered_cut_and_the_rest_accepted() {
    let (_dir, log) = start_log().await;
    let state = IngestState::new(Arc::clone(&log), IngestConfig::default());
    let garbage = "g".repeat(2 * 1024 * 1024);
    let (status, _, json) = post(state.clone(), format!("{garbage}\n{}", click("ok", 1))).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{json}");
    assert_eq!(json["accepted"], 1);
    assert_eq!(json["rejected"][0]["line"], 1);
    assert!(
        json["rejected"][0]["error"]
            .as_str()
            .unwrap()
            .contains("exceeds the limit"),
        "{json}"
    );
    let dead = read_all(log.as_ref(), "dead-letter").await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].record.value.len(), DEAD_LETTER_EXCERPT_BYTES);
    let original = dead[0]
        .record
        .headers
        .iter()
        .find(|(name, _)| name == "original_bytes");
    assert_eq!(
        original.map(|(_, v)| v.as_slice()),
        Some(b"2097152".as_slice())
    );
    assert_eq!(read_all(log.as_ref(), "funnel-events").await.len(), 1);

    // A broken JSON array of 1.5 MiB: one bad line, cut, answered 202.
    let broken = format!("[{{\"event_id\":\"{}", "b".repeat(1_572_864));
    let (status, _, json) = post(state, broken).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{json}");
    assert_eq!(json["accepted"], 0);
    assert!(
        json["rejected"][0]["error"]
            .as_str()
            .unwrap()
            .starts_with("invalid json array")
    );
    assert_eq!(read_all(log.as_ref(), "dead-letter").await.len(), 2);
}

/// The line count per request, on both sides: at the limit every line is
/// taken; one more and the body is refused whole with 413 (nothing written).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_per_request_are_bounded_with_413() {
    let (_dir, log) = start_log().await;
    let state = IngestState::new(Arc::clone(&log), IngestConfig::default());
    let lines: Vec<String> = (0..=MAX_LINES_PER_REQUEST)
        .map(|i| click(&format!("e{i}"), 1))
        .collect();
    let (status, _, json) = post(state.clone(), format!("[{}]", lines.join(","))).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{json}");
    assert!(
        json["error"]
            .as_str()
            .unwrap()
            .contains(&format!("more than {MAX_LINES_PER_REQUEST}"))
    );
    assert!(read_all(log.as_ref(), "dead-letter").await.is_empty());
    assert!(read_all(log.as_ref(), "funnel-events").await.is_empty());
    let (status, _, json) = post(state, lines[..MAX_LINES_PER_REQUEST].join("\n")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{json}");
    assert_eq!(json["accepted"], MAX_LINES_PER_REQUEST);
}

/// The response lists the first rejections and counts them all; every one
/// is dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejections_are_listed_up_to_the_limit_and_counted() {
    let (_dir, log) = start_log().await;
    let state = IngestState::new(Arc::clone(&log), IngestConfig::default());
    let n_bad = MAX_REJECTIONS_LISTED + 50;
    let body = (0..n_bad)
        .map(|i| format!("bad {i}"))
        .collect::<Vec<_>>()
        .join("\n");
    let (status, _, json) = post(state.clone(), body).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(
        json["rejected"].as_array().unwrap().len(),
        MAX_REJECTIONS_LISTED
    );
    assert_eq!(json["rejected_count"], n_bad);
    assert_eq!(read_all(log.as_ref(), "dead-letter").await.len(), n_bad);
    let (_, _, json) = post(state, "bad\nbad").await;
    assert_eq!(json["rejected"].as_array().unwrap().len(), 2);
    assert_eq!(json["rejected_count"], 2);
}

/// 128 events an hour ahead are rejected (they used to move the watermark an
/// hour ahead); just inside the bound they are accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ahead_bound_holds_on_both_sides() {
    let (_dir, log) = start_log().await;
    let state = IngestState::new(Arc::clone(&log), IngestConfig::default());
    let now = chrono::Utc::now().timestamp_millis();
    let far: Vec<String> = (0..128)
        .map(|i| click(&format!("f{i}"), now + 59 * 60_000))
        .collect();
    let (_, _, json) = post(state.clone(), far.join("\n")).await;
    assert_eq!(json["accepted"], 0);
    assert_eq!(json["rejected_count"], 128);
    // Within the bound (less a second for the time the request takes).
    let near = click("near", now + DEFAULT_MAX_TS_AHEAD_MS - 1_000);
    let (_, _, json) = post(state.clone(), near).await;
    assert_eq!(json["accepted"], 1, "{json}");
    // A larger setting is capped to what the speed and batch layers accept.
    let loose = IngestState::new(
        log,
        IngestConfig {
            max_ts_ahead: Duration::from_secs(7200),
            ..IngestConfig::default()
        },
    );
    let (_, _, json) = post(loose, click("over", now + DEFAULT_MAX_TS_AHEAD_MS + 60_000)).await;
    assert_eq!(json["accepted"], 0, "{json}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_behind_bound_is_opt_in() {
    let (_dir, log) = start_log().await;
    let now = chrono::Utc::now().timestamp_millis();
    let old = click("old", now - 2 * 86_400_000);
    let open = IngestState::new(Arc::clone(&log), IngestConfig::default());
    assert_eq!(post(open, old.clone()).await.2["accepted"], 1);
    let bounded = IngestState::new(
        log,
        IngestConfig {
            max_ts_behind: Some(Duration::from_secs(86_400)),
            ..IngestConfig::default()
        },
    );
    let (_, _, json) = post(bounded.clone(), old).await;
    assert_eq!(json["rejected"][0]["field"], "ts", "{json}");
    assert!(
        json["rejected"][0]["error"]
            .as_str()
            .unwrap()
            .contains("behind")
    );
    let recent = click("recent", now - 86_400_000 + 60_000);
    assert_eq!(post(bounded, recent).await.2["accepted"], 1);
}
