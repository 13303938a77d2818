//! The HTTP routes of DESIGN.md §5 that serving owns: `/api/v1/funnel`,
//! `/api/v1/pages`, `/api/v1/iot`, `/api/v1/status`, the alerts, `/metrics`,
//! `/openapi.json`, `/healthz` and `/`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::header::{CONTENT_ENCODING, CONTENT_TYPE, VARY};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use lambda_events::kpi::{DeviceCounts, FunnelCounts, PageCounts, SensorStats};
use lambda_events::{BucketViews, DdSketch, Hll};
use serde_json::{Value, json};

use crate::ServingState;
use crate::boundary::{Layer, merge, split};
use crate::cache::{Answer, AnswerKey, SpeedBucket, Stamp};
use crate::encoding::{Accepted, Encoding};
use crate::query::{self, BadParameter, FUNNEL_FILTERS, IOT_FILTERS, PAGES_FILTERS, Range};

/// Serving's routes.
pub fn router(state: ServingState) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/healthz", get(healthz))
        .route("/api/v1/funnel", get(funnel))
        .route("/api/v1/pages", get(pages))
        .route("/api/v1/iot", get(iot))
        .route("/api/v1/status", get(status))
        .route("/api/v1/alerts", get(crate::alerts::list))
        .route("/api/v1/alerts/stream", get(crate::alerts::stream))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .route("/assets/{*path}", get(asset))
        .route_layer(axum::middleware::from_fn(time_limit))
        .route_layer(axum::middleware::from_fn_with_state(
            std::sync::Arc::clone(&state.requests),
            crate::metrics::track,
        ))
        .with_state(state)
}

/// How long a request may take to produce its answer's head (a stream's
/// body may go on): past it, `504`. Queries are bounded by
/// [`query::MAX_BUCKETS`]; what can wait is reading the log's offsets for
/// `/api/v1/status` and `/metrics` from a broker that does not answer.
pub const QUERY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

async fn time_limit(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    limit_time(QUERY_TIMEOUT, request, next).await
}

/// Answers `504` naming the limit when `next` takes longer than `limit`.
pub async fn limit_time(
    limit: std::time::Duration,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    // (The URI shares its bytes: the path is copied only for a timeout.)
    let uri = request.uri().clone();
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            let path = uri.path();
            tracing::warn!(%path, limit_ms = limit.as_millis() as u64, "request timed out");
            (
                StatusCode::GATEWAY_TIMEOUT,
                axum::Json(json!({
                    "error": format!("{path} took longer than {} ms", limit.as_millis())
                })),
            )
                .into_response()
        }
    }
}

async fn openapi() -> Response {
    axum::Json(crate::openapi::document()).into_response()
}

use lambda_speed::http::Params;

fn bad_request(bad: BadParameter) -> Response {
    lambda_speed::http::refused(&bad.parameter, &bad.message)
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Answers a merged query: from the answer cache when the views have not
/// changed since it was last computed (see [`crate::cache::AnswerCache`]),
/// else folded and rendered, then kept. The body is sent in the coding the
/// request's `Accept-Encoding` asks for.
/// `shape` names the query apart from its range (endpoint, filters, step).
fn respond<A: Default>(
    state: &ServingState,
    coding: Encoding,
    range: Range,
    shape: String,
    fold: impl FnMut(&mut A, &BucketViews),
    render: impl Fn(&A) -> Value,
) -> Response {
    let batch = state.batch.read().clone();
    let key = AnswerKey {
        shape: Arc::from(shape),
        from: range.from,
        to: range.to,
    };
    let stamp = |speed: &lambda_speed::SpeedState| Stamp {
        version: batch.version(),
        boundary: batch.boundary_ms(),
        speed: speed.views_stamp(),
    };
    let now = stamp(&state.speed.read());
    let (answer, hit) = match state.answers.get(&key, &now) {
        Some(answer) => (answer, true),
        None => {
            let (computed_under, answer) = compute(state, &batch, &key, range, stamp, fold, render);
            let answer = Arc::new(answer);
            state.answers.put(key, computed_under, Arc::clone(&answer));
            (answer, false)
        }
    };
    let (coding, body) = answer.encoded(coding);
    let mut response = Response::new(axum::body::Body::from(body));
    let out = response.headers_mut();
    out.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    out.insert(VARY, HeaderValue::from_static("accept-encoding"));
    if let Some(coding) = coding.header() {
        out.insert(CONTENT_ENCODING, HeaderValue::from_static(coding));
    }
    out.insert(
        "x-cache",
        HeaderValue::from_static(if hit { "hit" } else { "miss" }),
    );
    // Freshness, for caches and dashboards that only read headers (an
    // integer's digits go straight into the header, no string between).
    let header =
        |v: Option<i64>| v.map_or_else(|| HeaderValue::from_static("none"), HeaderValue::from);
    out.insert("x-lambda-boundary", header(answer.boundary));
    out.insert("x-lambda-watermark", header(answer.watermark));
    // Never negative: an event stamped ahead of the clock (within the bound) is not from the future.
    out.insert(
        "x-lambda-data-age-ms",
        // Saturating: the newest event time may come from a remote
        // instance (i64::MIN panicked every query: a hostile run).
        header(answer.newest.map(|t| now_ms().saturating_sub(t).max(0))),
    );
    response
}

/// Folds and renders one answer; returns it with the stamp of the views it
/// was computed from (taken under the same read lock as the fold).
/// Buckets wholly before B come from the bucket cache when it has them.
fn compute<A: Default>(
    state: &ServingState,
    batch: &lambda_lake::BatchViews,
    key: &AnswerKey,
    range: Range,
    stamp: impl Fn(&lambda_speed::SpeedState) -> Stamp,
    mut fold: impl FnMut(&mut A, &BucketViews),
    render: impl Fn(&A) -> Value,
) -> (Stamp, Answer) {
    let (boundary, version) = (batch.boundary_ms(), batch.version());
    let shape = &key.shape;
    let width = range.step.millis();
    // Under the speed layer's read lock: fold each bucket (cheap, nothing
    // copied but the accumulators); let the lock go; then render.
    // Where a folded bucket is kept once rendered.
    enum Keep {
        Batch,
        Speed(SpeedBucket),
    }
    enum Part<A> {
        Cached(Arc<str>),
        Folded(i64, Layer, A, Keep),
    }
    let (folded, watermark, newest, computed_under) = {
        let speed = state.speed.read();
        let mut folded = Vec::new();
        for start in range.bucket_starts() {
            let keep = if version > 0 && boundary.is_some_and(|b| start + width <= b) {
                if let Some(hit) = state.cache.get(version, shape, start) {
                    folded.push(Part::Cached(hit));
                    continue;
                }
                Keep::Batch
            } else {
                // The speed windows the bucket folds, as `merge` splits it.
                let end = start + width;
                let tag = SpeedBucket {
                    version,
                    boundary,
                    windows: speed.windows_stamp(split(start, end, boundary)..end),
                };
                if let Some(hit) = state.speed_buckets.get(tag, shape, start) {
                    folded.push(Part::Cached(hit));
                    continue;
                }
                Keep::Speed(tag)
            };
            let one = Range {
                from: start,
                to: start + width,
                step: range.step,
            };
            if let Some((_, layer, acc)) =
                merge(&one, boundary, &batch.buckets, speed.windows(), &mut fold).pop()
            {
                folded.push(Part::Folded(start, layer, acc, keep));
            }
        }
        (
            folded,
            speed.watermark(),
            speed.max_event_ts(),
            stamp(&speed),
        )
    };
    let mut parts: Vec<Arc<str>> = Vec::with_capacity(folded.len());
    for part in folded {
        let (start, layer, acc, keep) = match part {
            Part::Cached(hit) => {
                parts.push(hit);
                continue;
            }
            Part::Folded(start, layer, acc, keep) => (start, layer, acc, keep),
        };
        let mut bucket = render(&acc);
        let object = bucket.as_object_mut().expect("renderers return objects");
        object.insert("start".into(), json!(start));
        object.insert("layer".into(), json!(layer));
        let rendered: Arc<str> = Arc::from(bucket.to_string());
        match keep {
            Keep::Batch => state
                .cache
                .put(version, shape, start, Arc::clone(&rendered)),
            Keep::Speed(tag) => state
                .speed_buckets
                .put(tag, shape, start, Arc::clone(&rendered)),
        }
        parts.push(rendered);
    }
    let text = |v: Option<i64>| v.map_or_else(|| "null".to_string(), |v| v.to_string());
    let mut body = String::with_capacity(parts.iter().map(|p| p.len() + 1).sum::<usize>() + 160);
    body.push_str(&format!(
        r#"{{"from":{},"to":{},"step":"{}","boundary":{},"watermark":{},"buckets":["#,
        range.from,
        range.to,
        range.step.as_str(),
        text(boundary),
        text(watermark)
    ));
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(part);
    }
    body.push_str("]}");
    (
        computed_under,
        Answer::new(body, boundary, watermark, newest),
    )
}

async fn funnel(
    State(state): State<ServingState>,
    Accepted(coding): Accepted,
    Params(params): Params,
) -> Response {
    let (range, campaign) = match query::parse(&params, FUNNEL_FILTERS, now_ms())
        .and_then(|r| Ok((r, query::filter(&params, "campaign_id")?)))
    {
        Ok(parsed) => parsed,
        Err(bad) => return bad_request(bad),
    };
    let shape = format!("funnel {} {campaign:?}", range.step.as_str());
    respond(
        &state,
        coding,
        range,
        shape,
        |acc: &mut FunnelAcc, views| {
            for (c, counts) in &views.funnel {
                if campaign.is_none_or(|want| want == c) {
                    acc.counts.merge(counts);
                    if let Some(users) = views.users.get(c) {
                        acc.users.merge(users);
                    }
                }
            }
        },
        |acc| {
            let c = &acc.counts;
            json!({
                "impressions": c.impressions,
                "clicks": c.clicks,
                "add_to_carts": c.add_to_carts,
                "purchases": c.purchases,
                "revenue_cents": c.revenue_cents,
                "signup_starts": c.signup_starts,
                "signup_completes": c.signup_completes,
                "distinct_users": acc.users.estimate(),
                "ctr": c.ctr(),
                "conversion": c.conversion(),
            })
        },
    )
}

async fn pages(
    State(state): State<ServingState>,
    Accepted(coding): Accepted,
    Params(params): Params,
) -> Response {
    let parsed = query::parse(&params, PAGES_FILTERS, now_ms()).and_then(|r| {
        Ok((
            r,
            query::filter(&params, "device")?,
            query::filter(&params, "page")?,
        ))
    });
    let (range, device, page) = match parsed {
        Ok(parsed) => parsed,
        Err(bad) => return bad_request(bad),
    };
    let shape = format!("pages {} {device:?} {page:?}", range.step.as_str());
    respond(
        &state,
        coding,
        range,
        shape,
        |acc: &mut PagesAcc, views| {
            for ((p, d), counts) in &views.pages {
                if device.is_none_or(|want| want == d) && page.is_none_or(|want| want == p) {
                    acc.counts.merge(counts);
                    if let Some(render) = views.render.get(&(p.clone(), d.clone())) {
                        acc.render.merge(render);
                    }
                }
            }
        },
        |acc| {
            json!({
                "page_views": acc.counts.page_views,
                "errors": acc.counts.errors,
                "render_ms_p50": acc.render.quantile(0.50),
                "render_ms_p95": acc.render.quantile(0.95),
                "render_ms_p99": acc.render.quantile(0.99),
            })
        },
    )
}

/// A funnel bucket: counters and the union of its users.
#[derive(Default)]
struct FunnelAcc {
    counts: FunnelCounts,
    users: Hll,
}

/// A pages bucket: counters and the merged render-time sketch.
#[derive(Default)]
struct PagesAcc {
    counts: PageCounts,
    render: DdSketch,
}

#[derive(Default)]
struct IotAcc {
    sensors: BTreeMap<String, SensorStats>,
    devices: DeviceCounts,
}

/// Adds the sensor stats of `views` that the filters keep to `acc`, in
/// key order: a sensor's sum over devices is a sum of floats, and the map's
/// own order is its hasher's, another in each process (an average read
/// again after a restart differed in its last digit; a hostile run found
/// it).
fn add_sensors(
    acc: &mut IotAcc,
    views: &lambda_events::kpi::BucketViews,
    device_id: Option<&str>,
    sensor: Option<&str>,
) {
    let mut kept: Vec<_> = views
        .sensors
        .iter()
        .filter(|((d, s), _)| {
            device_id.is_none_or(|want| want == d) && sensor.is_none_or(|want| want == s)
        })
        .collect();
    kept.sort_unstable_by(|(a, _), (b, _)| a.cmp(b));
    for ((_, s), stats) in kept {
        match acc.sensors.get_mut(s) {
            Some(existing) => existing.merge(stats),
            None => {
                acc.sensors.insert(s.clone(), stats.clone());
            }
        }
    }
}

async fn iot(
    State(state): State<ServingState>,
    Accepted(coding): Accepted,
    Params(params): Params,
) -> Response {
    let parsed = query::parse(&params, IOT_FILTERS, now_ms()).and_then(|r| {
        Ok((
            r,
            query::filter(&params, "device_id")?,
            query::filter(&params, "sensor")?,
        ))
    });
    let (range, device_id, sensor) = match parsed {
        Ok(parsed) => parsed,
        Err(bad) => return bad_request(bad),
    };
    let shape = format!("iot {} {device_id:?} {sensor:?}", range.step.as_str());
    respond(
        &state,
        coding,
        range,
        shape,
        |acc: &mut IotAcc, views| {
            add_sensors(acc, views, device_id, sensor);
            for (d, counts) in &views.devices {
                if device_id.is_none_or(|want| want == d) {
                    acc.devices.merge(counts);
                }
            }
        },
        |acc| {
            let sensors: Vec<Value> = acc
                .sensors
                .iter()
                .map(|(name, s)| {
                    json!({ "sensor": name, "count": s.count, "min": s.min, "max": s.max, "avg": s.avg(), "last": s.last })
                })
                .collect();
            let d = &acc.devices;
            json!({
                "sensors": sensors,
                "status": { "online": d.online, "offline": d.offline },
                "alarms": { "low": d.alarms_low, "medium": d.alarms_medium, "high": d.alarms_high, "critical": d.alarms_critical },
            })
        },
    )
}

async fn status(State(state): State<ServingState>) -> Response {
    axum::Json(crate::status::snapshot(&state).await).into_response()
}

async fn metrics(State(state): State<ServingState>) -> Response {
    crate::metrics::text(crate::metrics::render(&state).await)
}

/// `200 ok`, or `503` naming what fails: the speed layer's checkpoints, the
/// batch layer's runs (when it runs in this process).
async fn healthz(State(state): State<ServingState>) -> Response {
    let batch = state
        .status
        .batch
        .as_ref()
        .and_then(|b| b.status.read().unhealthy());
    let problems: Vec<String> = lambda_speed::http::problem(&state.speed.read())
        .into_iter()
        .chain(batch)
        .collect();
    lambda_speed::http::health(&problems)
}

async fn index() -> Html<&'static str> {
    Html(include_str!("../assets/index.html"))
}

/// The dashboard's files, built into the binary: the page works offline.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "dashboard.js",
        "text/javascript; charset=utf-8",
        include_str!("../assets/dashboard.js"),
    ),
    (
        "dashboard.css",
        "text/css; charset=utf-8",
        include_str!("../assets/dashboard.css"),
    ),
    (
        "vendor/uplot-1.6.32/uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
        include_str!("../assets/vendor/uplot-1.6.32/uPlot.iife.min.js"),
    ),
    (
        "vendor/uplot-1.6.32/uPlot.min.css",
        "text/css; charset=utf-8",
        include_str!("../assets/vendor/uplot-1.6.32/uPlot.min.css"),
    ),
];

async fn asset(axum::extract::Path(path): axum::extract::Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == path) {
        Some((_, content_type, body)) => (
            [
                (axum::http::header::CONTENT_TYPE, *content_type),
                (axum::http::header::CACHE_CONTROL, "public, max-age=300"),
            ],
            *body,
        )
            .into_response(),
        None => (
            StatusCode::NOT_FOUND,
            axum::Json(json!({ "error": format!("no asset {path}") })),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;

    /// A sensor's average over devices is the same whatever order the
    /// bucket's map holds its devices in: summed in key order. (Summed in
    /// the map's order, a process restarted on the same state answered
    /// 21.339999999999996 where it had answered 21.34.)
    #[test]
    fn a_sensor_s_average_over_devices_is_summed_in_key_order() {
        use lambda_events::kpi::{BucketViews, SensorStats};
        let reading = |i: usize| 20.0 + 0.1 * i as f64 + 1e-7 * (i * i) as f64;
        let devices: Vec<String> = (0..64).map(|i| format!("device-{i:02}")).collect();
        let mut in_order = 0.0;
        for (i, _) in devices.iter().enumerate() {
            in_order += reading(i);
        }
        // The same readings, put in two maps in opposite orders and sizes.
        let mut views = [BucketViews::default(), BucketViews::default()];
        views[1].sensors.reserve(1_000);
        for (i, device) in devices.iter().enumerate() {
            views[0].sensors.insert(
                (device.clone(), "temperature".into()),
                SensorStats::of(i as i64, "e", reading(i)),
            );
        }
        for (i, device) in devices.iter().enumerate().rev() {
            views[1].sensors.insert(
                (device.clone(), "temperature".into()),
                SensorStats::of(i as i64, "e", reading(i)),
            );
        }
        for views in &views {
            let mut acc = IotAcc::default();
            add_sensors(&mut acc, views, None, Some("temperature"));
            let stats = &acc.sensors["temperature"];
            assert_eq!(stats.count, 64);
            assert_eq!(stats.sum.to_bits(), in_order.to_bits());
        }
    }

    #[tokio::test]
    async fn a_slow_answer_is_a_504_naming_the_limit() {
        let app = Router::new()
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                    "late"
                }),
            )
            .route("/quick", get(|| async { "ok" }))
            .route_layer(axum::middleware::from_fn(|r, n| {
                limit_time(std::time::Duration::from_millis(50), r, n)
            }));
        let slow = app
            .clone()
            .oneshot(Request::get("/slow").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(slow.status(), StatusCode::GATEWAY_TIMEOUT);
        let body = axum::body::to_bytes(slow.into_body(), 1024).await.unwrap();
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"], "/slow took longer than 50 ms");
        let quick = app
            .oneshot(Request::get("/quick").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(quick.status(), StatusCode::OK);
    }
}
