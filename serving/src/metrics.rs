//! `/metrics`: the pipeline's counters and gauges in the Prometheus text
//! exposition format, read from the same state as `/api/v1/status`. Names
//! follow `lambda_<layer>_<noun>_<unit>`, counters end in `_total`, and labels
//! are bounded (topic, partition, outcome).

use std::collections::BTreeMap;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use lambda_events::Topic;
use parking_lot::Mutex;

use crate::ServingState;

/// Upper bounds (seconds) of the request-duration histogram's buckets.
pub const DURATION_BUCKETS: [f64; 11] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0,
];

/// Requests served, by route pattern and status class, with a duration histogram per route.
#[derive(Debug, Default)]
pub struct RequestMetrics {
    routes: Mutex<BTreeMap<String, RouteStats>>,
}

#[derive(Debug, Default, Clone)]
struct RouteStats {
    by_status: BTreeMap<&'static str, u64>,
    buckets: [u64; DURATION_BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl RequestMetrics {
    /// Notes one request to `route` (a route pattern: bounded) that took `seconds`.
    pub fn observe(&self, route: &str, status: u16, seconds: f64) {
        let class = match status {
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        let mut routes = self.routes.lock();
        // The route's name is copied only the first time it is seen.
        if !routes.contains_key(route) {
            routes.insert(route.to_string(), RouteStats::default());
        }
        let Some(stats) = routes.get_mut(route) else {
            return;
        };
        *stats.by_status.entry(class).or_default() += 1;
        for (bucket, bound) in stats.buckets.iter_mut().zip(DURATION_BUCKETS) {
            if seconds <= bound {
                *bucket += 1;
            }
        }
        stats.count += 1;
        stats.sum += seconds;
    }

    /// Appends `lambda_serving_requests_total` and `lambda_serving_request_duration_seconds`.
    pub fn render(&self, out: &mut String) {
        let routes = self.routes.lock().clone();
        let requests: Vec<(String, f64)> = routes
            .iter()
            .flat_map(|(route, s)| {
                s.by_status.iter().map(move |(class, n)| {
                    (format!("route=\"{route}\",status=\"{class}\""), *n as f64)
                })
            })
            .collect();
        family(
            out,
            "lambda_serving_requests_total",
            "counter",
            "HTTP requests answered, by route and status class.",
            &requests,
        );
        let mut samples = Vec::new();
        for (route, s) in &routes {
            for (bound, n) in DURATION_BUCKETS.iter().zip(s.buckets) {
                samples.push((format!("route=\"{route}\",le=\"{bound}\""), n as f64));
            }
            samples.push((format!("route=\"{route}\",le=\"+Inf\""), s.count as f64));
        }
        // The family's header only: a histogram's samples carry suffixed names.
        family(
            out,
            "lambda_serving_request_duration_seconds",
            "histogram",
            "Time to answer an HTTP request, by route.",
            &[],
        );
        for (labels, value) in samples {
            out.push_str(&format!(
                "lambda_serving_request_duration_seconds_bucket{{{labels}}} {value}\n"
            ));
        }
        for (route, s) in &routes {
            out.push_str(&format!(
                "lambda_serving_request_duration_seconds_sum{{route=\"{route}\"}} {}\n",
                s.sum
            ));
            out.push_str(&format!(
                "lambda_serving_request_duration_seconds_count{{route=\"{route}\"}} {}\n",
                s.count
            ));
        }
    }
}

/// Middleware timing every request to a matched route (unmatched ones have no bounded label).
pub async fn track(
    State(metrics): State<std::sync::Arc<RequestMetrics>>,
    request: Request,
    next: Next,
) -> Response {
    // (A counted reference to the route's pattern, not a copy of it.)
    let route = request.extensions().get::<MatchedPath>().cloned();
    let started = Instant::now();
    let response = next.run(request).await;
    if let Some(route) = route {
        metrics.observe(
            route.as_str(),
            response.status().as_u16(),
            started.elapsed().as_secs_f64(),
        );
    }
    response
}

pub use lambda_events::prometheus::{family, one};

/// Renders every metric serving can see.
pub async fn render(state: &ServingState) -> String {
    let mut out = String::new();
    let mut end_offsets = Vec::new();
    if let Some(log) = &state.status.log {
        for topic in [Topic::FUNNEL, Topic::IOT, Topic::DEAD_LETTER] {
            if let Ok(ranges) = log.ranges(topic).await {
                for (partition, range) in ranges.iter().enumerate() {
                    end_offsets.push((topic, partition as u32, range.end));
                }
            }
        }
    }
    let labels = lambda_events::prometheus::partition_labels;
    family(
        &mut out,
        "lambda_log_end_offset",
        "gauge",
        "Next offset to be written, per partition.",
        &end_offsets
            .iter()
            .map(|(t, p, e)| (labels(t, *p), *e as f64))
            .collect::<Vec<_>>(),
    );
    lambda_speed::metrics::render(&state.speed.summary(), &end_offsets, &mut out);

    let batch = state.batch.read().clone();
    if let Some(boundary) = batch.boundary_ms() {
        family(
            &mut out,
            "lambda_batch_boundary_ms",
            "gauge",
            "The time boundary B (ms since the epoch).",
            &one(boundary as f64),
        );
    }
    if let Some(manifest) = &batch.manifest {
        family(
            &mut out,
            "lambda_batch_manifest_version",
            "gauge",
            "Version of the loaded manifest.",
            &one(manifest.version as f64),
        );
        family(
            &mut out,
            "lambda_batch_quarantined_hours",
            "gauge",
            "Hour partitions whose views could not be computed from their data (see /api/v1/status).",
            &one(manifest
                .partitions
                .values()
                .filter(|p| p.quarantined.is_some())
                .count() as f64),
        );
        // Records in the log the lake does not hold yet.
        let lag: Vec<(String, f64)> = end_offsets
            .iter()
            .filter_map(|(topic, partition, end)| {
                let covered = manifest
                    .offsets
                    .get(*topic)?
                    .get(partition)
                    .copied()
                    .unwrap_or(0);
                Some((
                    labels(topic, *partition),
                    end.saturating_sub(covered) as f64,
                ))
            })
            .collect();
        family(
            &mut out,
            "lambda_batch_consumer_lag_records",
            "gauge",
            "Records in the log after what the loaded manifest covers, per partition.",
            &lag,
        );
    }
    state.requests.render(&mut out);
    cache_lookups(
        &mut out,
        "lambda_serving_bucket_cache_total",
        "Batch buckets looked up in the rendered-bucket cache, by result.",
        state.cache.counts(),
    );
    cache_lookups(
        &mut out,
        "lambda_serving_speed_bucket_cache_total",
        "Speed and mixed buckets looked up in the rendered-bucket cache (kept until their speed windows change), by result.",
        state.speed_buckets.counts(),
    );
    cache_lookups(
        &mut out,
        "lambda_serving_answer_cache_total",
        "Queries answered from the answer cache (the views unchanged since the same query), by result.",
        state.answers.counts(),
    );
    let (answers, bytes) = state.answers.size();
    family(
        &mut out,
        "lambda_serving_answer_cache_answers",
        "gauge",
        "Answers held in the answer cache.",
        &one(answers as f64),
    );
    family(
        &mut out,
        "lambda_serving_answer_cache_bytes",
        "gauge",
        "Bytes the answer cache counts against its bound (each body three times: as is, gzip, zstd).",
        &one(bytes as f64),
    );
    if let Some(handle) = &state.status.batch {
        runner_metrics(&handle.status.read(), &mut out);
    }
    for render_extra in &state.status.metrics {
        render_extra(&mut out);
    }
    out
}

/// A cache's lookups as a counter family by `result` (`hit`, `miss`).
fn cache_lookups(out: &mut String, name: &str, help: &str, (hits, misses): (u64, u64)) {
    family(
        out,
        name,
        "counter",
        help,
        &[
            ("result=\"hit\"".to_string(), hits as f64),
            ("result=\"miss\"".to_string(), misses as f64),
        ],
    );
}

/// The batch runner's families: runs by outcome, skipped ticks, last duration.
pub fn runner_metrics(s: &lambda_lake::BatchStatus, out: &mut String) {
    let runs = vec![
        ("outcome=\"ok\"".to_string(), s.runs_ok as f64),
        ("outcome=\"failed\"".to_string(), s.runs_failed as f64),
    ];
    family(
        out,
        "lambda_batch_runs_total",
        "counter",
        "Batch runs, by outcome.",
        &runs,
    );
    family(
        out,
        "lambda_batch_ticks_skipped_total",
        "counter",
        "Scheduled ticks skipped while a run was in progress.",
        &one(s.ticks_skipped as f64),
    );
    family(
        out,
        "lambda_batch_consecutive_failures",
        "gauge",
        "Batch runs failed in a row (0: the last one did not fail).",
        &one(f64::from(s.consecutive_failures)),
    );
    if let Some(run) = &s.last_run {
        family(
            out,
            "lambda_batch_last_run_duration_seconds",
            "gauge",
            "Duration of the last batch run.",
            &one(run.duration_ms as f64 / 1000.0),
        );
    }
}

/// `body` as a Prometheus text exposition answer.
pub fn text(body: String) -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        body,
    )
        .into_response()
}
