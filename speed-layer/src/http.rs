//! The speed layer's own HTTP endpoints, for `lambda speed`:
//! `GET /internal/v1/speed?epoch&since&alerts_since` (a [`Snapshot`](crate::export::Snapshot)
//! for serving), `/healthz`, and `/metrics`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use lambda_events::Topic;
use lambda_log::EventLog;
use serde_json::json;

use crate::export::{Mirror, combine, snapshot};
use crate::group::GroupViews;
use crate::store::PartitionId;
use crate::{SpeedState, SpeedViews};

/// Path serving polls.
pub const SNAPSHOT_PATH: &str = "/internal/v1/speed";

/// A request's query parameters, each given at most once: every route of
/// the workspace that takes parameters reads them through this (the speed
/// layer's is the lowest crate that serves HTTP). A parameter given twice
/// is refused, `400` naming it: which of its values counts would be a
/// guess (a map of them kept the last one, unseen). The query is read as
/// `application/x-www-form-urlencoded` pairs (a segment without `=` is a
/// name with an empty value; `%XX` and `+` decoded; bytes that are not
/// UTF-8 read as U+FFFD), which no query string fails.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params(pub HashMap<String, String>);

/// How much of a parameter's name a refusal repeats.
const SHOWN_NAME_CHARS: usize = 64;

impl Params {
    /// The pairs as a map, or the name of one given twice.
    pub fn from_pairs(pairs: Vec<(String, String)>) -> Result<Params, String> {
        let mut params = HashMap::with_capacity(pairs.len());
        for (name, value) in pairs {
            if params.contains_key(&name) {
                return Err(name);
            }
            params.insert(name, value);
        }
        Ok(Params(params))
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Params {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        // (Straight from the pairs: through serde, `Query` took ~2 % of a
        // cached answer's CPU in the server.)
        let pairs = parts.uri.query().map_or_else(Vec::new, |query| {
            form_urlencoded::parse(query.as_bytes())
                .into_owned()
                .collect()
        });
        Params::from_pairs(pairs)
            .map_err(|name| refused(&name, "given more than once; give it once"))
    }
}

/// How much of a refusal's message is sent (it may quote a value).
const SHOWN_MESSAGE_CHARS: usize = 256;

/// `400` with `{"error": "parameter NAME: MESSAGE", "parameter": NAME}`:
/// how every route here refuses a parameter. The name is quoted to 64
/// characters and the message to 256: both may come from the request (a
/// 10 KB name was echoed whole, twice — found by a hostile run).
pub fn refused(parameter: &str, message: &str) -> Response {
    let parameter: String = parameter.chars().take(SHOWN_NAME_CHARS).collect();
    let message: String = message.chars().take(SHOWN_MESSAGE_CHARS).collect();
    let body =
        json!({ "error": format!("parameter {parameter}: {message}"), "parameter": parameter });
    (StatusCode::BAD_REQUEST, axum::Json(body)).into_response()
}

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

/// `(epoch, since, alerts_since)` of a snapshot request, or its 400.
#[allow(clippy::result_large_err)]
fn cursor(params: &HashMap<String, String>) -> Result<[u64; 3], Response> {
    const NAMES: [&str; 3] = ["epoch", "since", "alerts_since"];
    // One it does not know is named, as serving's routes do (it was
    // taken silently: a hostile run).
    if let Some(unknown) = params.keys().find(|k| !NAMES.contains(&k.as_str())) {
        return Err(refused(
            unknown,
            "unknown parameter (expected epoch, since, alerts_since)",
        ));
    }
    let mut cursor = [0u64; 3];
    for (i, name) in NAMES.into_iter().enumerate() {
        if let Some(raw) = params.get(name) {
            match raw.parse() {
                Ok(n) => cursor[i] = n,
                Err(_) => {
                    return Err(refused(
                        name,
                        &format!("expected an unsigned integer, got {raw:?}"),
                    ));
                }
            }
        }
    }
    Ok(cursor)
}

async fn get_snapshot(
    State(HttpState { views, .. }): State<HttpState>,
    Params(params): Params,
) -> Response {
    match cursor(&params) {
        Ok([epoch, since, alerts]) => {
            axum::Json(snapshot(&views.read(), epoch, since, alerts)).into_response()
        }
        Err(response) => response,
    }
}

/// Path of what a group member owns ([`crate::group::Ownership`]).
pub const PARTITIONS_PATH: &str = "/internal/v1/speed/partitions";

/// Path of one owned partition's snapshot: `{PARTITION_PATH}/{topic}/{partition}`.
pub const PARTITION_PATH: &str = "/internal/v1/speed/partition";

/// The routes of a speed instance in a group: what it owns
/// ([`PARTITIONS_PATH`]), each owned partition's snapshot
/// ([`PARTITION_PATH`]), the combined snapshot of all it owns on
/// [`SNAPSHOT_PATH`] (always whole: for people and tools), `/healthz` and
/// `/metrics`.
pub fn group_router(group: GroupViews, log: Arc<dyn EventLog>) -> Router {
    Router::new()
        .route(
            PARTITIONS_PATH,
            get(
                |State((group, _)): State<(GroupViews, Arc<dyn EventLog>)>| async move {
                    axum::Json(group.ownership())
                },
            ),
        )
        .route(
            &format!("{PARTITION_PATH}/{{topic}}/{{partition}}"),
            get(get_partition),
        )
        .route(
            SNAPSHOT_PATH,
            get(
                |State((group, _)): State<(GroupViews, Arc<dyn EventLog>)>| async move {
                    let combined = combined(&group);
                    axum::Json(snapshot(&combined, 0, 0, 0))
                },
            ),
        )
        .route(
            "/healthz",
            get(
                |State((group, _)): State<(GroupViews, Arc<dyn EventLog>)>| async move {
                    let problems: Vec<String> = group
                        .shares()
                        .iter()
                        .filter_map(|(id, share)| {
                            problem(&share.views.read()).map(|p| format!("{id}: {p}"))
                        })
                        .collect();
                    health(&problems)
                },
            ),
        )
        .route(
            "/metrics",
            get(
                |State((group, log)): State<(GroupViews, Arc<dyn EventLog>)>| async move {
                    let views = Arc::new(parking_lot::RwLock::new(combined(&group)));
                    let mut out = metrics_text(&views, log.as_ref()).await;
                    group_metrics(&group, &mut out);
                    exposition(out)
                },
            ),
        )
        .with_state((group, log))
}

/// One state of everything `group` owns.
fn combined(group: &GroupViews) -> SpeedState {
    let shares = group.shares();
    let mirrors: Vec<Mirror> = shares
        .iter()
        .map(|(_, share)| {
            let mut mirror = Mirror::default();
            mirror.apply(snapshot(&share.views.read(), 0, 0, 0));
            mirror
        })
        .collect();
    let horizon = shares.first().map_or(crate::DEFAULT_HORIZON_MS, |(_, s)| {
        s.views.read().horizon_ms()
    });
    combine(&mirrors, horizon)
}

async fn get_partition(
    State((group, _)): State<(GroupViews, Arc<dyn EventLog>)>,
    axum::extract::Path((topic, partition)): axum::extract::Path<(String, String)>,
    Params(params): Params,
) -> Response {
    let [epoch, since, alerts] = match cursor(&params) {
        Ok(cursor) => cursor,
        Err(response) => return response,
    };
    let Ok(partition) = partition.parse::<u32>() else {
        let body = json!({ "error": format!("partition: expected an unsigned integer, got {partition:?}"), "parameter": "partition" });
        return (StatusCode::BAD_REQUEST, axum::Json(body)).into_response();
    };
    let id = PartitionId::new(topic, partition);
    match group.share(&id) {
        Some(share) => {
            let snapshot = snapshot(&share.views.read(), epoch, since, alerts);
            let mut response = axum::Json(snapshot).into_response();
            if let Ok(value) = share.version.to_string().parse() {
                response.headers_mut().insert("x-checkpoint-version", value);
            }
            response
        }
        None => {
            let body = json!({ "error": format!("partition {id} is not owned by this instance (it moved, or was never here)"), "parameter": "partition" });
            (StatusCode::NOT_FOUND, axum::Json(body)).into_response()
        }
    }
}

async fn metrics(State(HttpState { views, log }): State<HttpState>) -> Response {
    exposition(metrics_text(&views, log.as_ref()).await)
}

/// The speed layer's families for `views`, with lag against `log`'s ends.
async fn metrics_text(views: &SpeedViews, log: &dyn EventLog) -> String {
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
    out
}

/// A Prometheus text exposition.
fn exposition(out: String) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        out,
    )
        .into_response()
}

/// A group member's own families: what it owns, its rebalances, and each
/// owned partition's checkpoint version and age.
fn group_metrics(group: &GroupViews, out: &mut String) {
    use lambda_events::prometheus::{family, one, partition_labels};
    let owned = group.ownership();
    let now = chrono::Utc::now().timestamp_millis();
    family(
        out,
        "lambda_speed_group_partitions_owned",
        "gauge",
        "Partitions this speed group member owns.",
        &one(owned.partitions.len() as f64),
    );
    family(
        out,
        "lambda_speed_group_rebalances_total",
        "counter",
        "Rebalances (assignments) this member took part in.",
        &one(owned.rebalances as f64),
    );
    let versions: Vec<(String, f64)> = owned
        .partitions
        .iter()
        .map(|p| (partition_labels(&p.topic, p.partition), p.version as f64))
        .collect();
    family(
        out,
        "lambda_speed_group_checkpoint_version",
        "gauge",
        "The checkpoint version this member last committed for the partition (its claim).",
        &versions,
    );
    let ages: Vec<(String, f64)> = owned
        .partitions
        .iter()
        .filter_map(|p| {
            let at = p.last_checkpoint_ms?;
            let age = now.saturating_sub(at).max(0) as f64 / 1e3;
            Some((partition_labels(&p.topic, p.partition), age))
        })
        .collect();
    family(
        out,
        "lambda_speed_group_checkpoint_age_seconds",
        "gauge",
        "Seconds since the partition's last durable checkpoint.",
        &ages,
    );
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Pairs become a map; a name given twice is returned, not a value
    /// picked for it.
    #[test]
    fn a_parameter_given_twice_is_named() {
        let pair = |n: &str, v: &str| (n.to_string(), v.to_string());
        let params = Params::from_pairs(vec![pair("from", "1"), pair("to", "2")]).unwrap();
        assert_eq!(params.0.len(), 2);
        assert_eq!(params.0["to"], "2");
        assert_eq!(Params::from_pairs(Vec::new()), Ok(Params::default()));
        let twice = vec![pair("step", "1m"), pair("to", "2"), pair("step", "1m")];
        assert_eq!(Params::from_pairs(twice), Err("step".to_string()));
        // Names differ by case: two parameters.
        assert!(Params::from_pairs(vec![pair("step", "1m"), pair("Step", "1m")]).is_ok());
    }

    /// A snapshot's cursor: the three names taken, any other refused by
    /// name, a value that is not an unsigned integer refused.
    #[test]
    fn a_snapshot_cursor_takes_its_three_names_and_no_other() {
        let params = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect()
        };
        let all = params(&[("epoch", "1"), ("since", "2"), ("alerts_since", "3")]);
        assert_eq!(cursor(&all).ok(), Some([1, 2, 3]));
        assert_eq!(cursor(&params(&[])).ok(), Some([0, 0, 0]));
        let refused_one = |pairs: &[(&str, &str)]| cursor(&params(pairs)).err().map(|r| r.status());
        assert_eq!(
            refused_one(&[("epoch", "1"), ("sinc", "2")]),
            Some(StatusCode::BAD_REQUEST)
        );
        assert_eq!(
            refused_one(&[("since", "-1")]),
            Some(StatusCode::BAD_REQUEST)
        );
    }

    /// A refusal quotes the name to 64 characters and the message to 256,
    /// at both sides of each bound.
    #[tokio::test]
    async fn a_refusal_quotes_what_came_from_the_request_within_bounds() {
        let body = |response: Response| async move {
            assert_eq!(response.status(), StatusCode::BAD_REQUEST);
            let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
                .await
                .unwrap();
            serde_json::from_slice::<serde_json::Value>(&bytes).unwrap()
        };
        for (name_len, shown) in [(64, 64), (65, 64), (10_000, 64)] {
            let name = "é".repeat(name_len);
            let got = body(refused(&name, "unknown parameter")).await;
            assert_eq!(got["parameter"].as_str().unwrap().chars().count(), shown);
        }
        for (message_len, shown) in [(256, 256), (257, 256)] {
            let got = body(refused("step", &"x".repeat(message_len))).await;
            let error = got["error"].as_str().unwrap();
            assert_eq!(error.len(), "parameter step: ".len() + shown);
        }
    }
}
