//! The speed layer's own HTTP endpoints, for `lambda speed`:
//! `GET /internal/v1/speed?epoch&since&alerts_since` (a [`Snapshot`](crate::export::Snapshot)
//! for serving), `/healthz`, and `/metrics`.

use std::collections::HashMap;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use crate::SpeedViews;
use crate::export::snapshot;

/// Path serving polls.
pub const SNAPSHOT_PATH: &str = "/internal/v1/speed";

/// The routes.
pub fn router(views: SpeedViews) -> Router {
    Router::new()
        .route(SNAPSHOT_PATH, get(get_snapshot))
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .with_state(views)
}

async fn get_snapshot(
    State(views): State<SpeedViews>,
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

async fn metrics(State(views): State<SpeedViews>) -> Response {
    let mut out = String::new();
    crate::metrics::render(&views.read(), &[], &mut out);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        out,
    )
        .into_response()
}
