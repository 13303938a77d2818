//! The speed layer's own HTTP endpoints, for `lambda speed`:
//! `GET /internal/v1/speed?epoch&since&alerts_since` (a [`Snapshot`](crate::export::Snapshot)
//! for serving), `/healthz`, and `/metrics`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use lambda_events::Topic;
use lambda_log::EventLog;
use serde_json::json;

use crate::export::snapshot;
use crate::{SpeedState, SpeedViews};

/// Path serving polls.
pub const SNAPSHOT_PATH: &str = "/internal/v1/speed";

/// What the routes read: the views, and the log for its end offsets (lag).
#[derive(Clone)]
struct HttpState {
    views: SpeedViews,
    log: Arc<dyn EventLog>,
}

/// The routes; `log` is the log this instance reads (for consumer lag in `/metrics`).
pub fn router(views: SpeedViews, log: Arc<dyn EventLog>) -> Router {
    Router::new()
        .route(SNAPSHOT_PATH, get(get_snapshot))
        .route(
            "/healthz",
            get(|State(state): State<HttpState>| async move {
                health(&problem(&state.views.read()).into_iter().collect::<Vec<_>>())
            }),
        )
        .route("/metrics", get(metrics))
        .with_state(HttpState { views, log })
}

async fn get_snapshot(
    State(HttpState { views, .. }): State<HttpState>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let mut cursor = [0u64; 3];
    for (i, name) in ["epoch", "since", "alerts_since"].into_iter().enumerate() {
        if let Some(raw) = params.get(name) {
            match raw.parse() {
                Ok(n) => cursor[i] = n,
                Err(_) => {
                    let body = json!({ "error": format!("parameter {name}: expected an unsigned integer, got {raw:?}"), "parameter": name });
                    return (StatusCode::BAD_REQUEST, axum::Json(body)).into_response();
                }
            }
        }
    }
    let snapshot = snapshot(&views.read(), cursor[0], cursor[1], cursor[2]);
    axum::Json(snapshot).into_response()
}

async fn metrics(State(HttpState { views, log }): State<HttpState>) -> Response {
    // End offsets of the partitions this instance consumes (a failed read leaves lag out).
    let mut ends: Vec<(String, u32, u64)> = Vec::new();
    for topic in Topic::ALL {
        if let Ok(ranges) = log.ranges(topic.name()).await {
            for (partition, range) in ranges.iter().enumerate() {
                ends.push((topic.name().to_string(), partition as u32, range.end));
            }
        }
    }
    let end_offsets: Vec<(&str, u32, u64)> =
        ends.iter().map(|(t, p, e)| (t.as_str(), *p, *e)).collect();
    let summary = views.read().summary();
    let mut out = String::new();
    crate::metrics::render(&summary, &end_offsets, &mut out);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        out,
    )
        .into_response()
}

/// What is wrong with the speed layer, if anything: its checkpoints fail
/// (it keeps folding and serving reads meanwhile, and recovers by itself).
pub fn problem(state: &SpeedState) -> Option<String> {
    (state.checkpoint_error()).map(|error| format!("speed layer checkpoint failing: {error}"))
}

/// `/healthz` of a process: `200 ok`, or `503` naming every problem.
pub fn health(problems: &[String]) -> Response {
    if problems.is_empty() {
        "ok".into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("unhealthy: {}", problems.join("; ")),
        )
            .into_response()
    }
}
