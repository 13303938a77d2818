//! `POST /api/v1/admin/batch/run`: a batch run now, for operators and
//! scripts, guarded by a bearer token (`--admin-token`, `LAMBDA_ADMIN_TOKEN`).
//!
//! The request waits for the run (after any run in progress: runs never
//! overlap) and answers its report. Without a configured token the endpoint
//! is off (`403`); a missing or wrong token is `401`. `lambda serve` forwards
//! the request, token included, to the batch runner at `--batch-url`, which
//! checks the token itself.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use lambda_lake::{BatchHandle, RunNowError, RunReport};
use serde_json::{Value, json};

/// Where the route is.
pub const BATCH_RUN_PATH: &str = "/api/v1/admin/batch/run";

/// Who runs the batch.
#[derive(Debug, Clone)]
pub enum BatchRunner {
    /// The batch layer in this process.
    Local(BatchHandle),
    /// The batch runner of another process, by base URL (`http://batch:8083`).
    Remote(String),
    /// None: `lambda serve` without `--batch-url`.
    Absent,
}

/// The admin routes' state.
#[derive(Debug, Clone)]
pub struct AdminState {
    token: Option<Arc<str>>,
    runner: BatchRunner,
    client: reqwest::Client,
}

impl AdminState {
    /// Admin routes checking `token` (none: the routes answer 403) and running batches through `runner`.
    pub fn new(token: Option<String>, runner: BatchRunner) -> AdminState {
        AdminState {
            token: token.filter(|t| !t.is_empty()).map(Arc::from),
            runner,
            client: reqwest::Client::new(),
        }
    }
}

/// The admin routes.
impl AdminState {
    /// `None` when `headers` carry the admin token; otherwise the refusal
    /// to answer (403 when admin endpoints are off, 401 otherwise).
    pub fn authorize(&self, headers: &HeaderMap) -> Option<Response> {
        check_token(self, headers)
    }
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route(BATCH_RUN_PATH, post(run_batch))
        .with_state(state)
}

/// The JSON of a run report.
pub fn report_json(report: &RunReport) -> Value {
    json!({
        "committed": report.committed,
        "version": report.version,
        "boundary": report.boundary_ms,
        "records_read": report.stats.records_read,
        "events_written": report.stats.events_written,
        "duplicates": report.stats.duplicates,
        "invalid": report.stats.invalid,
        "hours_recomputed": report.stats.hours_recomputed,
        "duration_ms": report.stats.duration_ms,
        "engine": report.stats.views_engine.name(),
    })
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": message.into() }))).into_response()
}

/// Equal bytes, compared in time independent of where they differ.
fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len()
        && given
            .iter()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// `None` when the request carries the token; else the refusal.
fn check_token(state: &AdminState, headers: &HeaderMap) -> Option<Response> {
    let Some(expected) = &state.token else {
        return Some(error(
            StatusCode::FORBIDDEN,
            "admin endpoints are off: start with --admin-token (LAMBDA_ADMIN_TOKEN)",
        ));
    };
    // One Authorization header: with several, which one counts is up to
    // each proxy on the way, so none does.
    if headers
        .get_all(header::AUTHORIZATION)
        .iter()
        .nth(1)
        .is_some()
    {
        return Some(unauthorized(
            "header authorization: sent more than once; send it once",
        ));
    }
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        // The scheme is case-insensitive (RFC 9110 §11.1): `bearer` is `Bearer`.
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token);
    match given {
        Some(given) if same_secret(given.trim().as_bytes(), expected.as_bytes()) => None,
        Some(_) => Some(unauthorized("header authorization: wrong bearer token")),
        None => Some(unauthorized(
            "header authorization: expected 'Bearer <admin token>'",
        )),
    }
}

fn unauthorized(message: &str) -> Response {
    let mut response = error(StatusCode::UNAUTHORIZED, message);
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

async fn run_batch(State(state): State<AdminState>, headers: HeaderMap) -> Response {
    if let Some(refusal) = check_token(&state, &headers) {
        return refusal;
    }
    match &state.runner {
        BatchRunner::Local(handle) => match handle.run_now().await {
            Ok(report) => {
                tracing::info!(
                    version = report.version,
                    committed = report.committed,
                    "batch run by admin request"
                );
                axum::Json(report_json(&report)).into_response()
            }
            Err(e @ RunNowError::Failed(_)) => error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("batch run failed: {e}"),
            ),
            Err(e) => error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("batch run failed: {e}"),
            ),
        },
        BatchRunner::Remote(base) => {
            let url = format!("{}{BATCH_RUN_PATH}", base.trim_end_matches('/'));
            let mut request = state.client.post(&url);
            if let Some(auth) = headers.get(header::AUTHORIZATION) {
                request = request.header(header::AUTHORIZATION, auth.clone());
            }
            match request.send().await {
                Ok(response) => {
                    let status = StatusCode::from_u16(response.status().as_u16())
                        .unwrap_or(StatusCode::BAD_GATEWAY);
                    match response.json::<Value>().await {
                        Ok(body) => (status, axum::Json(body)).into_response(),
                        Err(e) => error(
                            StatusCode::BAD_GATEWAY,
                            format!("batch runner {base}: unreadable answer: {e}"),
                        ),
                    }
                }
                Err(e) => error(
                    StatusCode::BAD_GATEWAY,
                    format!("batch runner {base} unreachable: {e}"),
                ),
            }
        }
        BatchRunner::Absent => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no batch runner: start lambda serve with --batch-url",
        ),
    }
}
