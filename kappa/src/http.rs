//! The kappa routes: `POST /api/v1/admin/kappa/replay` and `GET /api/v1/kappa`.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use lambda_events::limits::{BODY_READ_TIMEOUT_SECS, MAX_ADMIN_BODY_BYTES};
use serde::Deserialize;
use serde_json::json;

use crate::{Kappa, REPLAY_PATH, STATUS_PATH};

/// State of the kappa routes.
#[derive(Debug, Clone)]
pub struct KappaRoutes {
    /// The kappa views (`None`: this process runs the lambda architecture).
    pub kappa: Option<Arc<Kappa>>,
    /// Checks the bearer token of the replay request.
    pub admin: lambda_serving::admin::AdminState,
}

/// `POST /api/v1/admin/kappa/replay` and `GET /api/v1/kappa`.
pub fn router(state: KappaRoutes) -> Router {
    Router::new()
        .route(REPLAY_PATH, post(replay_route))
        .route(STATUS_PATH, get(status_route))
        .with_state(state)
}

fn not_kappa() -> Response {
    (
        StatusCode::CONFLICT,
        axum::Json(json!({
            "error": "this process runs the lambda architecture: start it with --architecture kappa to replay"
        })),
    )
        .into_response()
}

#[derive(Debug, Default, Deserialize)]
struct ReplayBody {
    allowed_lateness: Option<String>,
}

fn refusal(status: StatusCode, error: String) -> Response {
    (
        status,
        axum::Json(json!({ "error": error, "parameter": "body" })),
    )
        .into_response()
}

/// The token is checked before a byte of the body is read; the body is then
/// bounded in size ([`MAX_ADMIN_BODY_BYTES`]) and in time ([`BODY_READ_TIMEOUT_SECS`]).
async fn replay_route(
    State(state): State<KappaRoutes>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    if let Some(refusal) = state.admin.authorize(&headers) {
        return refusal;
    }
    let Some(kappa) = &state.kappa else {
        return not_kappa();
    };
    let read = axum::body::to_bytes(body, MAX_ADMIN_BODY_BYTES);
    let body = match tokio::time::timeout(Duration::from_secs(BODY_READ_TIMEOUT_SECS), read).await {
        Ok(Ok(body)) => body,
        Ok(Err(_)) => {
            return refusal(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("body exceeds the limit of {MAX_ADMIN_BODY_BYTES} bytes"),
            );
        }
        Err(_) => {
            return refusal(
                StatusCode::REQUEST_TIMEOUT,
                format!("body did not arrive within {BODY_READ_TIMEOUT_SECS} s"),
            );
        }
    };
    let body: ReplayBody = if body.iter().all(lambda_events::codec::is_json_whitespace) {
        ReplayBody::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(body) => body,
            Err(e) => {
                return (
                    StatusCode::BAD_REQUEST,
                    axum::Json(json!({ "error": format!("body: {e}"), "parameter": "body" })),
                )
                    .into_response();
            }
        }
    };
    let lateness = match body
        .allowed_lateness
        .as_deref()
        .map(lambda_events::time::parse_duration_millis)
    {
        None => None,
        Some(Ok(ms)) => Some(ms),
        Some(Err(e)) => {
            return (
                StatusCode::BAD_REQUEST,
                axum::Json(json!({ "error": e, "parameter": "allowed_lateness" })),
            )
                .into_response();
        }
    };
    match kappa.request_replay(lateness) {
        Ok(version) => (
            StatusCode::ACCEPTED,
            axum::Json(json!({ "version": version, "status": STATUS_PATH })),
        )
            .into_response(),
        Err(reason) => {
            (StatusCode::CONFLICT, axum::Json(json!({ "error": reason }))).into_response()
        }
    }
}

async fn status_route(State(state): State<KappaRoutes>) -> Response {
    match &state.kappa {
        Some(kappa) => axum::Json(kappa.status()).into_response(),
        None => not_kappa(),
    }
}
