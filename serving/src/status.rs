//! `/api/v1/status`: per layer, offsets and lag, the watermark, the boundary
//! B, the last and next batch run and the late ledger.

use std::sync::Arc;

use lambda_events::Topic;
use lambda_lake::{BatchHandle, BatchStatus};
use lambda_log::EventLog;
use parking_lot::RwLock;
use serde_json::{Value, json};

use crate::ServingState;

/// How many of the late ledger's windows the status lists (newest first).
pub const LEDGER_WINDOWS_SHOWN: usize = 60;

/// A function adding a section to the status (e.g. the collector's counters).
pub type StatusSection = Arc<dyn Fn() -> Value + Send + Sync>;

/// A function appending metric families to `/metrics` (see [`crate::metrics::family`]).
pub type MetricsSection = Arc<dyn Fn(&mut String) + Send + Sync>;

/// The parts of the status that live outside serving's own state.
#[derive(Clone, Default)]
pub struct StatusSources {
    /// The log, for end offsets and lag.
    pub log: Option<Arc<dyn EventLog>>,
    /// The batch layer's status, when it runs in this process.
    pub batch: Option<BatchHandle>,
    /// The batch runner's status ([`runner_status`]) as last fetched from
    /// another process (`lambda serve --batch-url`).
    pub remote_batch: Option<Arc<RwLock<Option<Value>>>>,
    /// Extra named sections.
    pub sections: Vec<(String, StatusSection)>,
    /// Extra metric families.
    pub metrics: Vec<MetricsSection>,
}

impl std::fmt::Debug for StatusSources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusSources")
            .field("log", &self.log)
            .field("batch", &self.batch)
            .field(
                "sections",
                &self.sections.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// The batch runner's part of the status: schedule, next run, last run, counts.
pub fn runner_status(s: &BatchStatus) -> Value {
    json!({
        "schedule": s.schedule,
        "next_run_ms": s.next_run_ms,
        "running": s.running,
        "runs_ok": s.runs_ok,
        "runs_failed": s.runs_failed,
        "ticks_skipped": s.ticks_skipped,
        "consecutive_failures": s.consecutive_failures,
        "retry_at_ms": s.retry_at_ms,
        "healthy": s.unhealthy().is_none(),
        "last_run": match &s.last_run {
            Some(run) => json!({
                "started_ms": run.started_ms,
                "duration_ms": run.duration_ms,
                "ok": run.outcome.is_ok(),
                "error": run.outcome.as_ref().err(),
                "version": run.outcome.as_ref().ok().map(|r| r.version),
                "events_written": run.outcome.as_ref().ok().map(|r| r.stats.events_written),
                "engine": run.outcome.as_ref().ok().map(|r| r.stats.views_engine.name()),
            }),
            None => Value::Null,
        },
    })
}

/// Builds the status document.
pub async fn snapshot(state: &ServingState) -> Value {
    let mut ends: Vec<(String, u32, u64, u64)> = Vec::new();
    if let Some(log) = &state.status.log {
        for topic in [Topic::FUNNEL, Topic::IOT, Topic::DEAD_LETTER] {
            if let Ok(ranges) = log.ranges(topic).await {
                for (p, r) in ranges.iter().enumerate() {
                    ends.push((topic.to_string(), p as u32, r.start, r.end));
                }
            }
        }
    }
    let end_of = |topic: &str, partition: u32| {
        ends.iter()
            .find(|(t, p, _, _)| t == topic && *p == partition)
            .map(|(_, _, _, e)| *e)
    };
    // After the log's answers (they may take a while): ages are of what
    // is read below.
    let now = chrono::Utc::now().timestamp_millis();
    let batch_views = state.batch.read().clone();
    let speed = {
        let s = state.speed.summary();
        let partitions: Vec<Value> = s
            .offsets
            .iter()
            .map(|(topic, partition, offset)| {
                let end = end_of(topic, *partition);
                json!({ "topic": topic, "partition": partition, "offset": offset, "end": end,
                        "lag": end.map(|e| e.saturating_sub(*offset)) })
            })
            .collect();
        let ledger: serde_json::Map<String, Value> = s
            .late_by_topic
            .iter()
            .map(|(t, n)| (t.name().to_string(), json!(n)))
            .collect();
        json!({
            "watermark": s.watermark,
            "partition_clocks": s.clocks.iter().map(|c| json!({
                "topic": c.topic, "partition": c.partition, "max_event_ts": (c.max_ts != i64::MIN).then_some(c.max_ts), "idle": c.idle,
            })).collect::<Vec<_>>(),
            "max_event_ts": s.max_event_ts,
            "allowed_lateness_ms": s.allowed_lateness_ms,
            "windows": s.windows,
            "events_counted": s.counters.counted,
            "duplicates": s.counters.duplicates,
            "late": s.counters.late,
            "invalid": s.counters.invalid,
            "late_ledger": ledger,
            // The newest windows with late events: (topic, window start, count).
            "late_ledger_windows": s.ledger.iter().rev().take(LEDGER_WINDOWS_SHOWN)
                .map(|(t, start, n)| json!({ "topic": t.name(), "window_start": start, "late": n }))
                .collect::<Vec<_>>(),
            "last_checkpoint_ms": s.last_checkpoint_ms,
            "checkpoint_age_ms": s.last_checkpoint_ms.map(|t| now.saturating_sub(t).max(0)),
            "checkpoint_error": s.checkpoint_error,
            "partitions": partitions,
        })
    };
    let manifest = batch_views.manifest.as_ref();
    let mut batch = json!({
        "boundary": batch_views.boundary_ms(),
        "manifest_version": manifest.map(|m| m.version),
        "max_event_ts": manifest.and_then(|m| m.max_event_ts),
        "last_commit_ms": manifest.map(|m| m.created_at_ms),
        // Hours whose views could not be computed from their data: named until a run heals them.
        "quarantined": manifest.map(|m| {
            m.partitions.iter()
                .filter_map(|(key, p)| p.quarantined.as_ref().map(|why| json!({ "partition": key, "reason": why })))
                .collect::<Vec<_>>()
        }).unwrap_or_default(),
        "partitions": manifest.map(|m| {
            m.offsets.iter().flat_map(|(topic, parts)| parts.iter().map(move |(p, o)| (topic.clone(), *p, *o)))
                .map(|(topic, p, o)| {
                    let end = end_of(&topic, p);
                    json!({ "topic": topic, "partition": p, "offset": o, "end": end, "lag": end.map(|e| e.saturating_sub(o)) })
                })
                .collect::<Vec<_>>()
        }).unwrap_or_default(),
    });
    let runner = match &state.status.batch {
        Some(handle) => Some(runner_status(&handle.status.read())),
        None => state
            .status
            .remote_batch
            .as_ref()
            .and_then(|r| r.read().clone()),
    };
    if let Some(Value::Object(fields)) = runner {
        batch.as_object_mut().expect("an object").extend(fields);
    }
    let log: Vec<Value> = ends
        .iter()
        .map(|(t, p, s, e)| json!({ "topic": t, "partition": p, "start": s, "end": e }))
        .collect();
    let alerts = {
        let feed = state.alerts.read();
        json!({ "active": feed.active_len(), "last_id": feed.last_id(), "lost": feed.lost() })
    };
    let mut doc =
        json!({ "now": now, "speed": speed, "batch": batch, "log": log, "alerts": alerts });
    for (name, section) in &state.status.sections {
        doc.as_object_mut()
            .expect("an object")
            .insert(name.clone(), section());
    }
    doc
}

/// What a process without the query API (`lambda ingest`, `lambda batch`)
/// says about itself.
pub struct ProcessTelemetry {
    /// Problems `/healthz` names (none: `200 ok`).
    pub problems: Arc<dyn Fn() -> Vec<String> + Send + Sync>,
    /// The sections of `/api/v1/status`.
    pub sections: Vec<(String, StatusSection)>,
    /// The families of `/metrics`.
    pub metrics: Vec<MetricsSection>,
}

impl std::fmt::Debug for ProcessTelemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&String> = self.sections.iter().map(|(name, _)| name).collect();
        f.debug_struct("ProcessTelemetry")
            .field("sections", &names)
            .finish()
    }
}

/// `/healthz`, `/api/v1/status` and `/metrics` from `telemetry`.
pub fn process_router(telemetry: ProcessTelemetry) -> axum::Router {
    use axum::routing::get;
    let ProcessTelemetry {
        problems,
        sections,
        metrics,
    } = telemetry;
    axum::Router::new()
        .route(
            "/healthz",
            get(move || {
                let problems = problems();
                async move { lambda_speed::http::health(&problems) }
            }),
        )
        .route(
            "/api/v1/status",
            get(move || {
                let status: serde_json::Map<String, Value> = sections
                    .iter()
                    .map(|(name, section)| (name.clone(), section()))
                    .collect();
                async move { axum::Json(Value::Object(status)) }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let mut out = String::new();
                for family in &metrics {
                    family(&mut out);
                }
                async move { crate::metrics::text(out) }
            }),
        )
}
