//! `POST /api/v1/events`: parse NDJSON (or a JSON array), write valid events
//! to their topics and invalid lines to `dead-letter`, and answer only once
//! the log has made all of it durable.
//!
//! Bounds (`lambda_events::limits`): a body over `max_body_bytes` is `413`;
//! one not received within `body_read_timeout` is `408`; more than
//! `MAX_LINES_PER_REQUEST` lines or elements is `413` (nothing accepted);
//! a line over `MAX_LINE_BYTES` is rejected alone and dead-lettered cut to
//! its first bytes; the response lists the first `MAX_REJECTIONS_LISTED`
//! rejections and counts them all.
//!
//! Backpressure: at most `max_inflight_requests` requests are being written
//! at once; beyond that the answer is `429` with `Retry-After`. A request
//! takes its slot only once its whole body has arrived, so slow senders
//! cannot hold the slots that writing needs. If the log
//! cannot make the records durable within `append_timeout` (or says it is
//! unavailable) the answer is `503` with `Retry-After`; the client resends,
//! and `event_id` deduplication downstream absorbs what was written twice.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use lambda_events::codec::is_json_whitespace;
use lambda_events::limits::{DEFAULT_MAX_TS_AHEAD_MS, MAX_BODY_BYTES, MAX_REJECTIONS_LISTED};
use lambda_events::{BodyError, BodyLine, EventRef, Topic, split_body};
use lambda_log::{EventLog, LogError, Record};
use serde::Serialize;
use serde_json::json;
use tokio::sync::Semaphore;

/// Settings of the collector.
#[derive(Debug, Clone)]
pub struct IngestConfig {
    /// Largest request body accepted; larger ones get `413`.
    pub max_body_bytes: usize,
    /// Requests written to the log at once; more get `429`.
    pub max_inflight_requests: usize,
    /// How long to wait for the log to make a request durable before `503`.
    pub append_timeout: Duration,
    /// Event times further than this ahead of the collector's clock are
    /// rejected. At most [`DEFAULT_MAX_TS_AHEAD_MS`]: the speed and batch
    /// layers hold records read from the log to that bound, so a larger
    /// setting is capped to it (an event accepted here is never dropped there).
    pub max_ts_ahead: Duration,
    /// Event times further than this behind the collector's clock are
    /// rejected; `None` accepts any time since 1970.
    pub max_ts_behind: Option<Duration>,
    /// How long a request's body may take to arrive before `408`.
    pub body_read_timeout: Duration,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            max_body_bytes: MAX_BODY_BYTES,
            max_inflight_requests: 256,
            append_timeout: Duration::from_secs(10),
            max_ts_ahead: Duration::from_millis(DEFAULT_MAX_TS_AHEAD_MS as u64),
            max_ts_behind: None,
            body_read_timeout: Duration::from_secs(lambda_events::limits::BODY_READ_TIMEOUT_SECS),
        }
    }
}

/// Counters of what the collector has done, for `/api/v1/status`.
#[derive(Debug, Default)]
pub struct IngestCounters {
    /// Events made durable and acknowledged.
    pub accepted: AtomicU64,
    /// Lines rejected (and dead-lettered).
    pub rejected: AtomicU64,
    /// Requests refused with 429.
    pub throttled: AtomicU64,
    /// Requests answered 503.
    pub unavailable: AtomicU64,
}

impl IngestCounters {
    /// The counters as the `ingest` section of `/api/v1/status`.
    pub fn status(&self) -> serde_json::Value {
        json!({
            "accepted": self.accepted.load(Ordering::Relaxed),
            "rejected": self.rejected.load(Ordering::Relaxed),
            "throttled": self.throttled.load(Ordering::Relaxed),
            "unavailable": self.unavailable.load(Ordering::Relaxed),
        })
    }

    /// Appends the counters as Prometheus metric families.
    pub fn render_metrics(&self, out: &mut String) {
        let sample = |labels: &str, counter: &AtomicU64| {
            (labels.to_string(), counter.load(Ordering::Relaxed) as f64)
        };
        lambda_events::prometheus::family(
            out,
            "lambda_ingest_lines_total",
            "counter",
            "Lines received, by outcome.",
            &[
                sample("outcome=\"accepted\"", &self.accepted),
                sample("outcome=\"rejected\"", &self.rejected),
            ],
        );
        lambda_events::prometheus::family(
            out,
            "lambda_ingest_requests_refused_total",
            "counter",
            "Requests refused for backpressure, by status.",
            &[
                sample("status=\"429\"", &self.throttled),
                sample("status=\"503\"", &self.unavailable),
            ],
        );
    }
}

/// The collector, started: its routes, and its `ingest` status section and
/// metric families for the `/api/v1/status` and `/metrics` of the process
/// it runs in. `lambda demo` and `lambda ingest` both start it this way.
pub struct Started {
    /// `POST /v1/events` and the events' schema.
    pub router: Router,
    /// The `ingest` section of `/api/v1/status`.
    pub status: Arc<dyn Fn() -> serde_json::Value + Send + Sync>,
    /// The collector's metric families.
    pub metrics: Arc<dyn Fn(&mut String) + Send + Sync>,
}

impl std::fmt::Debug for Started {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Started").finish_non_exhaustive()
    }
}

/// Starts the collector writing to `log`.
pub fn start(log: Arc<dyn EventLog>, config: IngestConfig) -> Started {
    let state = IngestState::new(log, config);
    let (status, metrics) = (Arc::clone(&state.counters), Arc::clone(&state.counters));
    Started {
        router: router(state),
        status: Arc::new(move || status.status()),
        metrics: Arc::new(move |out: &mut String| metrics.render_metrics(out)),
    }
}

/// What the handler needs; cheap to clone.
#[derive(Debug, Clone)]
pub struct IngestState {
    log: Arc<dyn EventLog>,
    config: IngestConfig,
    inflight: Arc<Semaphore>,
    /// Shared counters.
    pub counters: Arc<IngestCounters>,
}

impl IngestState {
    /// State for a collector writing to `log`.
    pub fn new(log: Arc<dyn EventLog>, config: IngestConfig) -> IngestState {
        let inflight = Arc::new(Semaphore::new(config.max_inflight_requests));
        IngestState {
            log,
            config,
            inflight,
            counters: Arc::default(),
        }
    }
}

/// The collector's routes.
pub fn router(state: IngestState) -> Router {
    Router::new()
        .route("/api/v1/events", post(post_events))
        .with_state(state)
}

#[derive(Debug, Serialize)]
struct Rejection {
    line: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<String>,
    error: String,
}

fn error_response(status: StatusCode, message: String, retry_after: Option<u64>) -> Response {
    let mut response = (status, axum::Json(json!({ "error": message }))).into_response();
    if let Some(seconds) = retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

/// The `Content-Encoding` of a request, quoted to 64 characters, unless it
/// is none or only `identity` (every field, every coding in it).
fn refused_coding(headers: &axum::http::HeaderMap) -> Option<String> {
    let values = headers.get_all(header::CONTENT_ENCODING);
    lambda_events::codec::coding_other_than(values.iter().map(|v| v.as_bytes()), "identity")
}

async fn post_events(
    State(state): State<IngestState>,
    headers: axum::http::HeaderMap,
    body: Body,
) -> Response {
    // A body in a content coding (gzip, say) is refused before it is read:
    // read as it is, each of its lines was rejected as junk and
    // dead-lettered under a `202` (a hostile run). RFC 9110 §15.5.16: `415`,
    // saying which codings are accepted.
    if let Some(coding) = refused_coding(&headers) {
        let mut response = error_response(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "Content-Encoding: {coding} is not accepted; send the body as it is (identity)"
            ),
            None,
        );
        response.headers_mut().insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
        return response;
    }
    let limit = state.config.max_body_bytes;
    // A body declared longer than the limit is refused now, not read until
    // the limit (or the read timeout, if the sender never sends it all).
    // A transfer coding, if one is given too, says the length instead.
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .filter(|_| !headers.contains_key(header::TRANSFER_ENCODING))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body exceeds the limit of {limit} bytes"),
            None,
        );
    }
    let read = axum::body::to_bytes(body, limit);
    let bytes = match tokio::time::timeout(state.config.body_read_timeout, read).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(_)) => {
            return error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body exceeds the limit of {limit} bytes"),
                None,
            );
        }
        Err(_) => {
            return error_response(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "request body did not arrive within {} ms",
                    state.config.body_read_timeout.as_millis()
                ),
                None,
            );
        }
    };
    // A body declared as JSON must be an array of events (NDJSON, one object
    // a line, is `application/x-ndjson` or any other type).
    let declared_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if declared_json && bytes.iter().find(|b| !is_json_whitespace(b)) != Some(&b'[') {
        return error_response(
            StatusCode::BAD_REQUEST,
            "body: an application/json body must be a JSON array of events; send one event a line as application/x-ndjson".into(),
            None,
        );
    }
    // The slot is taken only now that the body is here: a sender that trickles
    // its body holds a connection, never a writing slot.
    let Ok(_permit) = state.inflight.clone().try_acquire_owned() else {
        state.counters.throttled.fetch_add(1, Ordering::Relaxed);
        return error_response(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "ingest is at capacity ({} requests in flight)",
                state.config.max_inflight_requests
            ),
            Some(1),
        );
    };
    // Parsing up to 8 MiB and encoding its records is CPU work: off the
    // async workers, so that one large body does not stall every other
    // request on this core. The lines borrow the body until they are records.
    // Events are judged by the wall clock; records are stamped by the
    // log's own clock where it has one (see `EventLog::clock_ms`).
    let now = chrono::Utc::now().timestamp_millis();
    let window = TimeWindow::around(now, &state.config);
    let stamp = state.log.clock_ms().unwrap_or(now);
    let parsed = tokio::task::spawn_blocking(move || {
        split_body(&bytes).map(|lines| RecordBatch::from_lines(lines, stamp, window))
    })
    .await;
    let mut batch = match parsed {
        Ok(Ok(batch)) => batch,
        Ok(Err(error @ BodyError::TooManyLines { .. })) => {
            return error_response(StatusCode::PAYLOAD_TOO_LARGE, error.to_string(), None);
        }
        Err(join) => {
            tracing::error!(error = %join, "parsing a request body failed");
            return error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "parsing the body failed".into(),
                None,
            );
        }
    };
    if batch.lines == 0 {
        return error_response(
            StatusCode::BAD_REQUEST,
            "request body has no events".into(),
            None,
        );
    }
    let accepted = batch.funnel.len() + batch.iot.len();
    match tokio::time::timeout(
        state.config.append_timeout,
        batch.append(state.log.as_ref()),
    )
    .await
    {
        Ok(Ok(())) => {}
        Ok(Err(error)) if !error.is_transient() && !matches!(error, LogError::Closed) => {
            tracing::error!(%error, "ingest append failed");
            return error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("log append failed: {error}"),
                None,
            );
        }
        Ok(Err(error)) => {
            state.counters.unavailable.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%error, "log cannot make events durable; answering 503");
            return error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("log cannot make events durable: {error}"),
                Some(1),
            );
        }
        Err(_) => {
            state.counters.unavailable.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                timeout_ms = state.config.append_timeout.as_millis() as u64,
                "log append timed out; answering 503"
            );
            return error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "log did not make events durable within {} ms",
                    state.config.append_timeout.as_millis()
                ),
                Some(2),
            );
        }
    }
    state
        .counters
        .accepted
        .fetch_add(accepted as u64, Ordering::Relaxed);
    state
        .counters
        .rejected
        .fetch_add(batch.rejected.len() as u64, Ordering::Relaxed);
    let rejected_count = batch.rejected.len();
    let mut listed = batch.rejected;
    listed.truncate(MAX_REJECTIONS_LISTED);
    (
        StatusCode::ACCEPTED,
        axum::Json(json!({
            "accepted": accepted,
            "rejected": listed,
            "rejected_count": rejected_count,
        })),
    )
        .into_response()
}

/// The event times the collector accepts, from its clock.
#[derive(Debug, Clone, Copy)]
struct TimeWindow {
    now_ms: i64,
    max_ahead_ms: i64,
    max_behind_ms: Option<i64>,
}

impl TimeWindow {
    fn around(now_ms: i64, config: &IngestConfig) -> TimeWindow {
        let millis = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        TimeWindow {
            now_ms,
            max_ahead_ms: millis(config.max_ts_ahead).min(DEFAULT_MAX_TS_AHEAD_MS),
            max_behind_ms: config.max_ts_behind.map(millis),
        }
    }

    fn check(&self, event: &EventRef<'_>) -> Result<(), lambda_events::EventError> {
        event.check_not_ahead(self.now_ms, self.max_ahead_ms)?;
        if let Some(max_behind_ms) = self.max_behind_ms {
            event.check_not_behind(self.now_ms, max_behind_ms)?;
        }
        Ok(())
    }
}

/// One request's lines sorted into the records each topic gets.
struct RecordBatch {
    /// Lines (or array elements) in the body.
    lines: usize,
    funnel: Vec<Record>,
    iot: Vec<Record>,
    dead_letter: Vec<Record>,
    rejected: Vec<Rejection>,
}

impl RecordBatch {
    fn from_lines(lines: Vec<BodyLine<'_>>, now_ms: i64, window: TimeWindow) -> RecordBatch {
        // Every record's key and canonical JSON written into one buffer,
        // which the records then share as slices (one allocation for the
        // body, not two per event). Sized for the body's lines; it grows if
        // the canonical forms come out longer. A `Vec` rather than a
        // `BytesMut`: the writer's many short pieces go in without a call
        // each.
        let sized: usize = lines.iter().map(|line| line.len + 64).sum();
        let mut buf: Vec<u8> = Vec::with_capacity(sized);
        // Where each accepted event's key and value are in it, by topic.
        let mut written: Vec<(Topic, usize, usize, usize)> = Vec::with_capacity(lines.len());
        let mut batch = RecordBatch {
            lines: lines.len(),
            funnel: Vec::new(),
            iot: Vec::new(),
            dead_letter: Vec::new(),
            rejected: Vec::new(),
        };
        // Each line parsed into this one slot, then written out.
        let mut event = EventRef::slot();
        for line in lines {
            let result = line
                .parse_into(&mut event)
                .and_then(|()| window.check(&event));
            match result {
                Ok(()) => {
                    let key_start = buf.len();
                    buf.extend_from_slice(event.key().as_bytes());
                    let value_start = buf.len();
                    event.write_json(&mut buf);
                    written.push((event.topic(), key_start, value_start, buf.len()));
                }
                Err(error) => {
                    // An oversized line keeps only its first bytes: say how long it was.
                    let record = dead_letter_record(
                        line.raw.to_vec(),
                        &error.to_string(),
                        line.line,
                        now_ms,
                    )
                    .noting_original_len(line.len);
                    batch.dead_letter.push(record);
                    batch.rejected.push(Rejection {
                        line: line.line,
                        field: error.field.clone(),
                        error: error.to_string(),
                    });
                }
            }
        }
        let buf = Bytes::from(buf);
        let funnel = written.iter().filter(|w| w.0 == Topic::Funnel).count();
        batch.funnel.reserve_exact(funnel);
        batch.iot.reserve_exact(written.len() - funnel);
        for (topic, key_start, value_start, end) in written {
            let record = Record {
                key: Some(buf.slice(key_start..value_start)),
                value: buf.slice(value_start..end),
                timestamp_ms: now_ms,
                headers: Vec::new(),
            };
            match topic {
                Topic::Funnel => batch.funnel.push(record),
                Topic::Iot => batch.iot.push(record),
            }
        }
        batch
    }

    /// Appends every topic's records concurrently (moved to the log, not
    /// copied); all must be durable.
    async fn append(&mut self, log: &dyn EventLog) -> Result<(), LogError> {
        let append = |topic: &'static str, records: Vec<Record>| async move {
            if records.is_empty() {
                Ok(Vec::new())
            } else {
                log.append(topic, records).await
            }
        };
        let (funnel, iot, dead) = tokio::join!(
            append(Topic::FUNNEL, std::mem::take(&mut self.funnel)),
            append(Topic::IOT, std::mem::take(&mut self.iot)),
            append(Topic::DEAD_LETTER, std::mem::take(&mut self.dead_letter)),
        );
        funnel?;
        iot?;
        dead?;
        Ok(())
    }
}

/// A `dead-letter` record: the original bytes as the value, the reason in headers.
pub fn dead_letter_record(original: Vec<u8>, reason: &str, line: usize, now_ms: i64) -> Record {
    let mut record = Record::dead_letter(original, reason, "http", now_ms);
    record
        .headers
        .push(("line".into(), line.to_string().into_bytes()));
    record
}
