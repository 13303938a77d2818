//! `lambda compare` and `GET /api/v1/compare`: the views of an interval
//! computed both ways over the same data, and where and why they differ.
//!
//! "The same data" is the log prefix the newest batch manifest covers. The
//! lambda side recomputes the interval's views with DuckDB from the master
//! dataset's hour files (what a batch run does); the kappa side replays the
//! log from each partition's earliest retained offset up to the manifest's
//! offsets through the speed layer's fold. Per view (funnel, pages, iot) and
//! 1-minute bucket the two are equal, or differ for a reason the comparison
//! names and checks:
//!
//! - **late**: events that arrived after the watermark had closed their
//!   minute. The fold dropped them; the batch layer counted them. Folding
//!   exactly those events into the kappa bucket must give the batch bucket.
//! - **retention**: events whose log records are gone (below a partition's
//!   earliest retained offset): the lake still has them, a replay cannot.
//!
//! A difference neither accounts for is reported as unexplained.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use lambda_batch::Lake;
use lambda_batch::recompute::Recomputed;
use lambda_events::kpi::{DeviceCounts, FunnelCounts, PageCounts};
use lambda_events::{BucketViews, Event, EventType};
use lambda_log::EventLog;
use lambda_speed::replay::{self, Replayed};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// Path of the comparison in the query API.
pub const COMPARE_PATH: &str = "/api/v1/compare";

/// The views compared, as the query API names them.
pub const VIEWS: [&str; 3] = ["funnel", "pages", "iot"];

/// Why a bucket differs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reason {
    /// `late` or `retention`.
    pub reason: String,
    /// Events of this view the reason covers.
    pub events: u64,
    /// In words.
    pub detail: String,
}

/// One view's bucket that differs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Difference {
    /// `funnel`, `pages` or `iot`.
    pub view: String,
    /// Bucket start (RFC 3339).
    pub bucket: String,
    /// Bucket start (ms).
    pub bucket_ms: i64,
    /// Events of this view the batch views counted in the bucket.
    pub lambda_events: u64,
    /// Events of this view the replay counted in the bucket.
    pub kappa_events: u64,
    /// What accounts for the difference.
    pub reasons: Vec<Reason>,
    /// Whether the reasons account for all of it (see the module docs).
    pub explained: bool,
}

/// Per view: buckets with data on either side, and how they compare.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewSummary {
    /// Buckets with data on either side.
    pub buckets: u64,
    /// Buckets where both sides agree.
    pub equal: u64,
    /// Buckets that differ, every event of the difference accounted for.
    pub explained: u64,
    /// Buckets that differ for no reason found.
    pub unexplained: u64,
    /// Events the batch views counted, over every bucket.
    pub lambda_events: u64,
    /// Events the replay counted.
    pub kappa_events: u64,
    /// Events the replay dropped as late.
    pub late_events: u64,
    /// Events in the master dataset whose log records are past retention.
    pub lost_events: u64,
}

/// What one side cost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cost {
    /// What it did, in words.
    pub what: String,
    /// Wall time (ms).
    pub wall_ms: u64,
    /// Bytes read (Parquet files, or log records).
    pub bytes_read: u64,
    /// Rows or records processed.
    pub events_processed: u64,
}

/// A whole comparison.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Comparison {
    /// Interval start (ms).
    pub from: i64,
    /// Interval end (ms).
    pub to: i64,
    /// The manifest whose log prefix both sides read.
    pub manifest_version: u64,
    /// Log records in that prefix.
    pub log_records: u64,
    /// The lateness both the replay and the batch boundary use.
    pub allowed_lateness_ms: i64,
    /// Per view.
    pub summary: BTreeMap<String, ViewSummary>,
    /// Cost of each side: `lambda` and `kappa`.
    pub cost: BTreeMap<String, Cost>,
    /// Every bucket that differs, by view then time.
    pub differences: Vec<Difference>,
}

/// What a comparison reads.
#[derive(Debug, Clone)]
pub struct CompareSources {
    /// The log.
    pub log: Arc<dyn EventLog>,
    /// The lake (absent in kappa mode: there is no batch layer).
    pub lake: Option<Lake>,
    /// Allowed lateness of the speed layer's fold.
    pub allowed_lateness_ms: i64,
}

/// Why a comparison could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    /// No lake, or no committed run in it.
    #[error("{0}")]
    NoBatch(String),
    /// Anything else.
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

/// Computes both sides over `[from_ms, to_ms)` and compares them.
pub async fn compare(
    sources: &CompareSources,
    from_ms: i64,
    to_ms: i64,
) -> Result<Comparison, CompareError> {
    let lake = sources.lake.as_ref().ok_or_else(|| {
        CompareError::NoBatch(
            "kappa mode has no batch layer to compare with: run `lambda demo` (lambda, the default) on the same data dir".into(),
        )
    })?;
    let manifest = lambda_batch::manifest::latest(lake)
        .await
        .context("reading the newest manifest")?
        .ok_or_else(|| {
            CompareError::NoBatch(
                "no batch run has committed yet: wait for one or POST /api/v1/admin/batch/run"
                    .into(),
            )
        })?;
    let ends: BTreeMap<(String, u32), u64> = manifest
        .offsets
        .iter()
        .flat_map(|(topic, parts)| parts.iter().map(|(p, o)| ((topic.clone(), *p), *o)))
        .collect();
    let spans = replay::spans_to(sources.log.as_ref(), |topic, partition, _| {
        ends.get(&(topic.to_string(), partition)).copied()
    })
    .await?;
    let retained_from: BTreeMap<(String, u32), u64> = spans
        .iter()
        .map(|s| ((s.topic.clone(), s.partition), s.start))
        .collect();
    let kappa = replay::replay(
        sources.log.as_ref(),
        &spans,
        lambda_speed::SpeedState::new(sources.allowed_lateness_ms, i64::MAX / 4),
        from_ms..to_ms,
        |_| {},
    )
    .await?;
    let batch =
        lambda_batch::recompute::recompute(lake, &manifest, from_ms, to_ms, &retained_from).await?;
    let log_records = ends.values().sum();
    let mut comparison = judge(&batch, &kappa, sources.allowed_lateness_ms, from_ms, to_ms);
    comparison.manifest_version = manifest.version;
    comparison.log_records = log_records;
    let partitions = spans.len();
    let lost: u64 = spans.iter().map(|s| s.start).sum();
    comparison.cost = BTreeMap::from([
        (
            "lambda".to_string(),
            Cost {
                what: format!(
                    "DuckDB ran the view SQL over {} Parquet files of {} hour partitions of the master dataset",
                    batch.files, batch.hours
                ),
                wall_ms: batch.elapsed.as_millis() as u64,
                bytes_read: batch.bytes,
                events_processed: batch.rows,
            },
        ),
        (
            "kappa".to_string(),
            Cost {
                what: format!(
                    "replayed {partitions} log partitions from their earliest retained offsets ({lost} records already gone) through the speed layer's fold"
                ),
                wall_ms: kappa.elapsed.as_millis() as u64,
                bytes_read: kappa.bytes,
                events_processed: kappa.records,
            },
        ),
    ]);
    Ok(comparison)
}

/// Whether an event type is counted by `view`.
fn in_view(view: &str, t: EventType) -> bool {
    match view {
        "funnel" => FunnelCounts::counts(t),
        "pages" => PageCounts::counts(t),
        _ => t == EventType::SensorReading || DeviceCounts::counts(t),
    }
}

/// Events `view` counted in a bucket.
fn events_in(view: &str, b: &BucketViews) -> u64 {
    match view {
        "funnel" => b
            .funnel
            .values()
            .map(|c| {
                c.impressions
                    + c.clicks
                    + c.add_to_carts
                    + c.purchases
                    + c.signup_starts
                    + c.signup_completes
            })
            .sum(),
        "pages" => b.pages.values().map(|c| c.page_views + c.errors).sum(),
        _ => {
            b.sensors.values().map(|s| s.count).sum::<u64>()
                + b.devices
                    .values()
                    .map(|d| {
                        d.online
                            + d.offline
                            + d.alarms_low
                            + d.alarms_medium
                            + d.alarms_high
                            + d.alarms_critical
                    })
                    .sum::<u64>()
        }
    }
}

/// Whether `view`'s part of two buckets agrees (sensor sums to 1e-9
/// relative: the two sides add the same values in different orders).
fn same(view: &str, a: &BucketViews, b: &BucketViews) -> bool {
    match view {
        "funnel" => a.funnel == b.funnel && a.users == b.users,
        "pages" => a.pages == b.pages && a.render == b.render,
        _ => {
            a.devices == b.devices
                && a.sensors.len() == b.sensors.len()
                && a.sensors.iter().all(|(k, x)| {
                    b.sensors.get(k).is_some_and(|y| {
                        x.count == y.count
                            && x.min == y.min
                            && x.max == y.max
                            && x.last == y.last
                            && x.last_ts == y.last_ts
                            && (x.sum - y.sum).abs() <= 1e-9 * x.sum.abs().max(y.sum.abs()).max(1.0)
                    })
                })
        }
    }
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| ms.to_string())
}

/// Compares the two sides bucket by bucket (the manifest, log and cost
/// figures of [`Comparison`] are left for the caller).
fn judge(
    batch: &Recomputed,
    kappa: &Replayed,
    allowed_lateness_ms: i64,
    from_ms: i64,
    to_ms: i64,
) -> Comparison {
    let empty = BucketViews::default();
    // Rows whose log records are gone, less those the replay read anyway
    // (a resend of them that is still retained) or dropped as late.
    let late_ids: std::collections::HashSet<&str> = kappa
        .late
        .values()
        .flatten()
        .map(|e| e.event_id.as_str())
        .collect();
    let mut lost: HashMap<(i64, &str), u64> = HashMap::new();
    for (start, rows) in &batch.before_retention {
        for (id, event_type) in rows {
            if kappa.counted.contains(id) || late_ids.contains(id.as_str()) {
                continue;
            }
            if let Some(t) = EventType::parse(event_type) {
                for view in VIEWS.into_iter().filter(|v| in_view(v, t)) {
                    *lost.entry((*start, view)).or_default() += 1;
                }
            }
        }
    }
    let mut starts: Vec<i64> = batch.buckets.keys().copied().collect();
    starts.extend(kappa.state.windows.range(from_ms..to_ms).map(|(s, _)| *s));
    starts.sort_unstable();
    starts.dedup();
    let mut summary: BTreeMap<String, ViewSummary> = BTreeMap::new();
    let mut differences = Vec::new();
    let no_late: Vec<Event> = Vec::new();
    for view in VIEWS {
        let entry = summary.entry(view.to_string()).or_default();
        for &start in &starts {
            let lambda_side = batch.buckets.get(&start).unwrap_or(&empty);
            let kappa_side = kappa.state.windows.get(&start).map_or(&empty, |w| &w.views);
            let (lambda_events, kappa_events) =
                (events_in(view, lambda_side), events_in(view, kappa_side));
            if lambda_events == 0 && kappa_events == 0 {
                continue;
            }
            entry.buckets += 1;
            entry.lambda_events += lambda_events;
            entry.kappa_events += kappa_events;
            if same(view, lambda_side, kappa_side) {
                entry.equal += 1;
                continue;
            }
            let late: Vec<&Event> = kappa
                .late
                .get(&start)
                .unwrap_or(&no_late)
                .iter()
                .filter(|e| in_view(view, e.event_type))
                .collect();
            let gone = lost.get(&(start, view)).copied().unwrap_or(0);
            entry.late_events += late.len() as u64;
            entry.lost_events += gone;
            let mut reasons = Vec::new();
            if !late.is_empty() {
                reasons.push(Reason {
                    reason: "late".into(),
                    events: late.len() as u64,
                    detail: format!(
                        "{} events reached the log after the watermark (newest event time minus {} s) had closed this minute; the speed layer's fold dropped them, the batch layer counted them",
                        late.len(),
                        allowed_lateness_ms / 1000
                    ),
                });
            }
            if gone > 0 {
                reasons.push(Reason {
                    reason: "retention".into(),
                    events: gone,
                    detail: format!(
                        "{gone} events are in the master dataset but their log records are past retention, so a replay cannot read them"
                    ),
                });
            }
            let explained = if gone == 0 {
                // Exact: the kappa bucket plus exactly the late events is the batch bucket.
                let mut healed = kappa_side.clone();
                for event in &late {
                    healed.add(event);
                }
                !late.is_empty() && same(view, lambda_side, &healed)
            } else {
                // The lost events cannot be folded (the log no longer has them): by counts.
                lambda_events == kappa_events + late.len() as u64 + gone
            };
            if explained {
                entry.explained += 1;
            } else {
                entry.unexplained += 1;
            }
            differences.push(Difference {
                view: view.to_string(),
                bucket: rfc3339(start),
                bucket_ms: start,
                lambda_events,
                kappa_events,
                reasons,
                explained,
            });
        }
    }
    Comparison {
        from: from_ms,
        to: to_ms,
        manifest_version: 0,
        log_records: 0,
        allowed_lateness_ms,
        summary,
        cost: BTreeMap::new(),
        differences,
    }
}

/// State of the HTTP route.
#[derive(Debug, Clone)]
pub struct CompareState {
    sources: CompareSources,
    /// One comparison at a time: each replays the log.
    running: Arc<tokio::sync::Mutex<()>>,
}

impl CompareState {
    /// The route's state over `sources`.
    pub fn new(sources: CompareSources) -> CompareState {
        CompareState {
            sources,
            running: Arc::default(),
        }
    }
}

/// `GET /api/v1/compare?from&to` (no time limit: a replay takes as long as the log is long).
pub fn router(state: CompareState) -> Router {
    Router::new()
        .route(COMPARE_PATH, get(compare_route))
        .with_state(state)
}

fn error(status: StatusCode, body: serde_json::Value) -> Response {
    (status, axum::Json(body)).into_response()
}

async fn compare_route(
    State(state): State<CompareState>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let now = chrono::Utc::now().timestamp_millis();
    let range = match lambda_serving::query::parse(&params, &[], now) {
        Ok(range) => range,
        Err(bad) => {
            return error(
                StatusCode::BAD_REQUEST,
                json!({ "error": bad.message, "parameter": bad.parameter }),
            );
        }
    };
    let Ok(_guard) = state.running.try_lock() else {
        return error(
            StatusCode::TOO_MANY_REQUESTS,
            json!({ "error": "a comparison is already running; try again when it is done" }),
        );
    };
    match compare(&state.sources, range.from, range.to).await {
        Ok(comparison) => axum::Json(comparison).into_response(),
        Err(CompareError::NoBatch(message)) => {
            error(StatusCode::CONFLICT, json!({ "error": message }))
        }
        Err(CompareError::Failed(e)) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({ "error": format!("comparison failed: {e:#}") }),
        ),
    }
}

/// The comparison as a terminal table.
pub fn render(c: &Comparison) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "lambda vs kappa over [{}, {}): the log prefix of batch manifest {} ({} records), lateness {} s",
        rfc3339(c.from),
        rfc3339(c.to),
        c.manifest_version,
        c.log_records,
        c.allowed_lateness_ms / 1000
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "  {:<18} {:>16} {:>16}",
        "cost", "lambda (batch)", "kappa (replay)"
    );
    let (l, k) = (c.cost.get("lambda"), c.cost.get("kappa"));
    let row = |f: fn(&Cost) -> u64| {
        (
            l.map_or("-".to_string(), |x| f(x).to_string()),
            k.map_or("-".to_string(), |x| f(x).to_string()),
        )
    };
    for (name, (a, b)) in [
        ("wall time (ms)", row(|x| x.wall_ms)),
        ("bytes read", row(|x| x.bytes_read)),
        ("events processed", row(|x| x.events_processed)),
    ] {
        let _ = writeln!(out, "  {name:<18} {a:>16} {b:>16}");
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "  {:<8} {:>8} {:>8} {:>10} {:>12}",
        "view", "buckets", "equal", "explained", "unexplained"
    );
    for (view, s) in &c.summary {
        let _ = writeln!(
            out,
            "  {view:<8} {:>8} {:>8} {:>10} {:>12}",
            s.buckets, s.equal, s.explained, s.unexplained
        );
    }
    if !c.differences.is_empty() {
        let _ = writeln!(out);
        let _ = writeln!(out, "  where they differ:");
    }
    for d in &c.differences {
        let why: Vec<String> = d
            .reasons
            .iter()
            .map(|r| format!("{} {}", r.events, r.reason))
            .collect();
        let _ = writeln!(
            out,
            "  {:<7} {}  lambda {:>5}  kappa {:>5}  {}{}",
            d.view,
            d.bucket,
            d.lambda_events,
            d.kappa_events,
            if why.is_empty() {
                "no reason found".to_string()
            } else {
                why.join(", ")
            },
            if d.explained { "" } else { "  UNEXPLAINED" }
        );
    }
    if let Some(d) = c.differences.iter().find_map(|d| d.reasons.first()) {
        let _ = writeln!(out);
        let _ = writeln!(out, "  e.g. {}", d.detail);
    }
    out
}
