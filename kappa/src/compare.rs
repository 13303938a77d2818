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
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use lambda_batch::Lake;
use lambda_batch::recompute::Recomputed;
use lambda_events::kpi::{DeviceCounts, FunnelCounts, PageCounts};
use lambda_events::limits::COMPARE_MIN_INTERVAL_SECS;
use lambda_events::time::format_rfc3339;
use lambda_events::{BucketViews, Event, EventType};
use lambda_log::EventLog;
use lambda_speed::replay::{self, Replayed};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// Path of the comparison in the query API.
pub const COMPARE_PATH: &str = "/api/v1/compare";
/// The comparison's parameter choosing the batch side's engine: `duckdb`,
/// or `spark` / `auto` on a process started with a Spark URL.
pub const ENGINE_PARAMETER: &str = "engine";

/// A view compared, as the query API names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum View {
    /// `/api/v1/funnel`.
    Funnel,
    /// `/api/v1/pages`.
    Pages,
    /// `/api/v1/iot`.
    Iot,
}

impl View {
    /// `funnel`, `pages` or `iot`.
    pub fn as_str(self) -> &'static str {
        match self {
            View::Funnel => "funnel",
            View::Pages => "pages",
            View::Iot => "iot",
        }
    }
}

impl std::fmt::Display for View {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// The views compared.
pub const VIEWS: [View; 3] = [View::Funnel, View::Pages, View::Iot];

/// What accounts for (part of) a difference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReasonKind {
    /// Events the replay's fold dropped as late; the batch layer counted them.
    Late,
    /// Events in the master dataset whose log records are past retention.
    Retention,
}

impl std::fmt::Display for ReasonKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            ReasonKind::Late => "late",
            ReasonKind::Retention => "retention",
        })
    }
}

/// Why a bucket differs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reason {
    /// Late events or lost log records.
    pub reason: ReasonKind,
    /// Events of this view the reason covers.
    pub events: u64,
    /// In words.
    pub detail: String,
}

/// One view's bucket that differs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Difference {
    /// The view.
    pub view: View,
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
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
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

/// What each side of a comparison cost.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Costs {
    /// The batch views: DuckDB (or Spark) over the master dataset.
    pub lambda: Cost,
    /// The replay of the log through the speed layer's fold.
    pub kappa: Cost,
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
    pub summary: BTreeMap<View, ViewSummary>,
    /// Cost of each side.
    pub cost: Costs,
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
    /// When the speed layer's fold counts a quiet partition idle.
    pub idle_timeout: std::time::Duration,
    /// The engine that recomputes the batch side.
    pub engine: lambda_batch::BatchEngine,
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
        lambda_speed::SpeedState::new(sources.allowed_lateness_ms, crate::KAPPA_HORIZON_MS),
        from_ms..to_ms,
        sources.idle_timeout,
        |_| {},
    )
    .await?;
    let batch = lambda_batch::recompute::recompute(
        lake,
        &manifest,
        from_ms,
        to_ms,
        &retained_from,
        &sources.engine,
    )
    .await?;
    let log_records = ends.values().sum();
    let mut comparison = judge(&batch, &kappa, sources.allowed_lateness_ms, from_ms, to_ms);
    comparison.manifest_version = manifest.version;
    comparison.log_records = log_records;
    let partitions = spans.len();
    let lost: u64 = spans.iter().map(|s| s.start).sum();
    comparison.cost = Costs {
        lambda: Cost {
            what: format!(
                "{} ran the view SQL over {} Parquet files of {} hour partitions of the master dataset",
                match batch.views_engine {
                    lambda_batch::manifest::ViewsEngine::Duckdb => "DuckDB",
                    lambda_batch::manifest::ViewsEngine::Spark => "Spark",
                },
                batch.files,
                batch.hours
            ),
            wall_ms: batch.elapsed.as_millis() as u64,
            bytes_read: batch.bytes,
            events_processed: batch.rows,
        },
        kappa: Cost {
            what: format!(
                "replayed {partitions} log partitions from their earliest retained offsets ({lost} records already gone) through the speed layer's fold"
            ),
            wall_ms: kappa.elapsed.as_millis() as u64,
            bytes_read: kappa.bytes,
            events_processed: kappa.records,
        },
    };
    Ok(comparison)
}

/// Whether an event type is counted by `view`.
fn in_view(view: View, t: EventType) -> bool {
    match view {
        View::Funnel => FunnelCounts::counts(t),
        View::Pages => PageCounts::counts(t),
        View::Iot => t == EventType::SensorReading || DeviceCounts::counts(t),
    }
}

/// Events `view` counted in a bucket.
fn events_in(view: View, b: &BucketViews) -> u64 {
    match view {
        View::Funnel => b
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
        View::Pages => b.pages.values().map(|c| c.page_views + c.errors).sum(),
        View::Iot => {
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
fn same(view: View, a: &BucketViews, b: &BucketViews) -> bool {
    match view {
        View::Funnel => a.funnel == b.funnel && a.users == b.users,
        View::Pages => a.pages == b.pages && a.render == b.render,
        View::Iot => {
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
    let mut lost: HashMap<(i64, View), u64> = HashMap::new();
    for (start, rows) in &batch.before_retention {
        for (id, event_type) in rows {
            if kappa.counted.contains(id) || late_ids.contains(id.as_str()) {
                continue;
            }
            if let Some(t) = EventType::parse(event_type) {
                for view in VIEWS.into_iter().filter(|v| in_view(*v, t)) {
                    *lost.entry((*start, view)).or_default() += 1;
                }
            }
        }
    }
    let mut starts: Vec<i64> = batch.buckets.keys().copied().collect();
    starts.extend(kappa.state.windows().range(from_ms..to_ms).map(|(s, _)| *s));
    starts.sort_unstable();
    starts.dedup();
    let mut summary: BTreeMap<View, ViewSummary> = BTreeMap::new();
    let mut differences = Vec::new();
    let no_late: Vec<Event> = Vec::new();
    for view in VIEWS {
        let entry = summary.entry(view).or_default();
        for &start in &starts {
            let lambda_side = batch.buckets.get(&start).unwrap_or(&empty);
            let kappa_side = kappa
                .state
                .windows()
                .get(&start)
                .map_or(&empty, |w| &w.views);
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
                    reason: ReasonKind::Late,
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
                    reason: ReasonKind::Retention,
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
                    healed.add(&event.to_ref());
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
                view,
                bucket: format_rfc3339(start),
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
        cost: Costs::default(),
        differences,
    }
}

/// State of the HTTP route.
#[derive(Debug, Clone)]
pub struct CompareState {
    sources: CompareSources,
    /// One comparison at a time: each replays the log.
    running: Arc<tokio::sync::Mutex<()>>,
    pacer: Arc<parking_lot::Mutex<Pacer>>,
    cache: Arc<parking_lot::Mutex<AnswerCache>>,
}

impl CompareState {
    /// The route's state over `sources`.
    pub fn new(sources: CompareSources) -> CompareState {
        CompareState {
            sources,
            running: Arc::default(),
            pacer: Arc::new(parking_lot::Mutex::new(Pacer::new(Duration::from_secs(
                COMPARE_MIN_INTERVAL_SECS,
            )))),
            cache: Arc::default(),
        }
    }
}

/// Spaces out comparisons that are computed (not answered from the cache):
/// the next may start once the last has been finished for as long as it
/// took, and at least `min_interval` after it started — so comparisons,
/// which anyone may ask for, take at most half of the process's time.
#[derive(Debug)]
pub struct Pacer {
    min_interval: Duration,
    next_allowed: Option<Instant>,
}

impl Pacer {
    /// A pacer with the given floor between two starts.
    pub fn new(min_interval: Duration) -> Pacer {
        Pacer {
            min_interval,
            next_allowed: None,
        }
    }

    /// `Ok` if a comparison may start at `now`; else how long to wait.
    pub fn check(&self, now: Instant) -> Result<(), Duration> {
        match self.next_allowed {
            Some(next) if now < next => Err(next - now),
            _ => Ok(()),
        }
    }

    /// Notes a comparison that ran from `started` to `finished`.
    pub fn finished(&mut self, started: Instant, finished: Instant) {
        let took = finished.saturating_duration_since(started);
        self.next_allowed = Some((finished + took).max(started + self.min_interval));
    }
}

/// A comparison's interval, manifest version and batch engine.
type AnswerKey = (i64, i64, u64, &'static str);

/// Answers per (from, to, manifest version, engine): the same comparison of
/// the same data is computed once. The newest few are kept.
#[derive(Debug, Default)]
struct AnswerCache {
    answers: std::collections::VecDeque<(AnswerKey, Arc<Comparison>)>,
}

/// Comparisons the cache keeps.
const CACHED_ANSWERS: usize = 16;

impl AnswerCache {
    fn get(&self, key: AnswerKey) -> Option<Arc<Comparison>> {
        self.answers
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, c)| Arc::clone(c))
    }

    fn put(&mut self, key: AnswerKey, answer: Arc<Comparison>) {
        if self.answers.len() >= CACHED_ANSWERS {
            self.answers.pop_front();
        }
        self.answers.push_back((key, answer));
    }
}

/// `GET /api/v1/compare?from&to&engine` (no time limit: a replay takes as long as the log is long).
pub fn router(state: CompareState) -> Router {
    Router::new()
        .route(COMPARE_PATH, get(compare_route))
        .with_state(state)
}

fn error(status: StatusCode, body: serde_json::Value) -> Response {
    (status, axum::Json(body)).into_response()
}

fn answer(comparison: &Comparison, cache: &'static str) -> Response {
    let mut response = axum::Json(comparison).into_response();
    response
        .headers_mut()
        .insert("x-cache", axum::http::HeaderValue::from_static(cache));
    response
}

fn too_many(message: String, wait: Duration) -> Response {
    let mut response = error(StatusCode::TOO_MANY_REQUESTS, json!({ "error": message }));
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    response.headers_mut().insert(
        axum::http::header::RETRY_AFTER,
        axum::http::HeaderValue::from(seconds.max(1)),
    );
    response
}

/// `sources` with the batch engine a request's `engine` names, among those
/// this process can use (its own `--batch-engine` when it names none).
fn with_engine(sources: &CompareSources, name: Option<String>) -> Result<CompareSources, String> {
    let Some(name) = name else {
        return Ok(sources.clone());
    };
    let engine = match &sources.lake {
        Some(lake) => sources.engine.choose(&name, lake)?,
        // Kappa mode has no batch side (the comparison is refused); the
        // name is still checked.
        None => {
            lambda_batch::BatchEngine::check_name(&name)?;
            sources.engine.clone()
        }
    };
    Ok(CompareSources {
        engine,
        ..sources.clone()
    })
}

async fn compare_route(
    State(state): State<CompareState>,
    // (A parameter given twice is refused by the extractor, naming it.)
    lambda_speed::http::Params(mut params): lambda_speed::http::Params,
) -> Response {
    let now = chrono::Utc::now().timestamp_millis();
    let sources = match with_engine(&state.sources, params.remove(ENGINE_PARAMETER)) {
        Ok(sources) => sources,
        Err(message) => {
            return error(
                StatusCode::BAD_REQUEST,
                json!({ "error": message, "parameter": ENGINE_PARAMETER }),
            );
        }
    };
    let range = match lambda_serving::query::parse(&params, &[ENGINE_PARAMETER], now) {
        Ok(range) => range,
        Err(bad) => {
            return error(
                StatusCode::BAD_REQUEST,
                json!({ "error": bad.message, "parameter": bad.parameter }),
            );
        }
    };
    // The same comparison of the same data (the newest manifest) is answered
    // from the cache; only a new one is paced.
    let version = match &state.sources.lake {
        Some(lake) => match lambda_batch::manifest::latest(lake).await {
            Ok(manifest) => manifest.map(|m| m.version),
            Err(e) => {
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!({ "error": format!("reading the newest manifest: {e:#}") }),
                );
            }
        },
        None => None,
    };
    let Some(version) = version else {
        // Nothing to compare with (no committed run, or kappa mode): the
        // refusal costs nothing, so it is neither cached nor paced.
        return respond(compare(&sources, range.from, range.to).await);
    };
    let engine = sources.engine.name();
    if let Some(cached) = state
        .cache
        .lock()
        .get((range.from, range.to, version, engine))
    {
        return answer(&cached, "hit");
    }
    let Ok(guard) = Arc::clone(&state.running).try_lock_owned() else {
        return too_many(
            "a comparison is already running; try again when it is done".into(),
            Duration::from_secs(1),
        );
    };
    let started = Instant::now();
    if let Err(wait) = state.pacer.lock().check(started) {
        return too_many(
            format!(
                "comparisons are paced (each replays the log): the next may start in {} ms",
                wait.as_millis()
            ),
            wait,
        );
    }
    // The comparison runs as a task of its own, which notes its end in the
    // pacer and its answer in the cache even if the client goes away (the
    // handler's future is dropped then): dropping and asking again must not
    // start comparisons back to back.
    let task = tokio::spawn(async move {
        let _running = guard;
        let outcome = compare(&sources, range.from, range.to).await;
        state.pacer.lock().finished(started, Instant::now());
        if let Ok(comparison) = &outcome {
            let key = (range.from, range.to, comparison.manifest_version, engine);
            state.cache.lock().put(key, Arc::new(comparison.clone()));
        }
        outcome
    });
    match task.await {
        Ok(outcome) => respond(outcome),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({ "error": format!("comparison task failed: {e}") }),
        ),
    }
}

fn respond(outcome: Result<Comparison, CompareError>) -> Response {
    match outcome {
        Ok(comparison) => answer(&comparison, "miss"),
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
        format_rfc3339(c.from),
        format_rfc3339(c.to),
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
    let row = |f: fn(&Cost) -> u64| (f(&c.cost.lambda), f(&c.cost.kappa));
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The next computed comparison waits as long as the last one took, and
    /// at least the floor after the last one started.
    #[test]
    fn comparisons_are_paced_by_their_own_cost_and_a_floor() {
        let floor = Duration::from_secs(5);
        let mut pacer = Pacer::new(floor);
        let t0 = Instant::now();
        assert_eq!(pacer.check(t0), Ok(()), "the first may start at once");
        // A quick one (1 s): the floor decides.
        pacer.finished(t0, t0 + Duration::from_secs(1));
        assert_eq!(
            pacer.check(t0 + Duration::from_secs(1)),
            Err(Duration::from_secs(4))
        );
        assert_eq!(
            pacer.check(t0 + floor - Duration::from_millis(1)),
            Err(Duration::from_millis(1))
        );
        assert_eq!(pacer.check(t0 + floor), Ok(()));
        // A slow one (20 s): as long again after it ends.
        let t1 = t0 + floor;
        pacer.finished(t1, t1 + Duration::from_secs(20));
        assert!(pacer.check(t1 + Duration::from_secs(39)).is_err());
        assert_eq!(pacer.check(t1 + Duration::from_secs(40)), Ok(()));
    }
}
