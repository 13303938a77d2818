//! `GET /openapi.json`: the OpenAPI 3.1 description of the HTTP API, built
//! from the same tables the handlers use — the filters each query accepts
//! ([`crate::query::FUNNEL_FILTERS`] …) and the fields of its buckets
//! ([`FUNNEL_FIELDS`] …) — so the document cannot drift from the code
//! without `tests/openapi.rs` noticing.

use lambda_events::limits::{
    DEFAULT_MAX_TS_AHEAD_MS, MAX_ABS_VALUE, MAX_AMOUNT_CENTS, MAX_BODY_BYTES, MAX_EVENT_ID_LEN,
    MAX_HEADER_BYTES, MAX_LINE_BYTES, MAX_LINES_PER_REQUEST, MAX_REJECTIONS_LISTED, MAX_RENDER_MS,
    MAX_REQUEST_TARGET_BYTES, MAX_STRING_LEN, QUERY_TIME_RANGE,
};
use serde_json::{Map, Value, json};

use crate::query::{FUNNEL_FILTERS, IOT_FILTERS, PAGES_FILTERS};

/// Fields of a `/api/v1/funnel` bucket (besides `start` and `layer`), with their JSON types.
pub const FUNNEL_FIELDS: &[(&str, &str)] = &[
    ("impressions", "integer"),
    ("clicks", "integer"),
    ("add_to_carts", "integer"),
    ("purchases", "integer"),
    ("revenue_cents", "integer"),
    ("signup_starts", "integer"),
    ("signup_completes", "integer"),
    ("distinct_users", "number"),
    ("ctr", "number|null"),
    ("conversion", "number|null"),
];

/// Fields of a `/api/v1/pages` bucket.
pub const PAGES_FIELDS: &[(&str, &str)] = &[
    ("page_views", "integer"),
    ("errors", "integer"),
    ("render_ms_p50", "number|null"),
    ("render_ms_p95", "number|null"),
    ("render_ms_p99", "number|null"),
];

/// Fields of a `/api/v1/iot` bucket.
pub const IOT_FIELDS: &[(&str, &str)] = &[
    ("sensors", "array"),
    ("status", "object"),
    ("alarms", "object"),
];

/// Response headers every query answer carries.
pub const FRESHNESS_HEADERS: &[(&str, &str)] = &[
    (
        "x-lambda-boundary",
        "The batch boundary B (ms), or `none` before the first batch run.",
    ),
    (
        "x-lambda-watermark",
        "The speed layer's watermark (ms), or `none`.",
    ),
    (
        "x-lambda-data-age-ms",
        "Now minus the newest event time the speed layer has seen, or `none`.",
    ),
    (
        "x-cache",
        "`hit`: the same bytes as the last answer to this very query, the views unchanged since; `miss`: computed now.",
    ),
    (
        "vary",
        "`accept-encoding`: the body is zstd or gzip (`Content-Encoding`) when `Accept-Encoding` asks for it and it is 1 KiB or more.",
    ),
];

fn schema_of(json_type: &str) -> Value {
    match json_type.split_once('|') {
        Some((a, b)) => json!({ "type": [a, b] }),
        None => json!({ "type": json_type }),
    }
}

fn parameter(name: &str, location: &str, description: &str, schema: Value) -> Value {
    json!({ "name": name, "in": location, "required": false, "description": description, "schema": schema })
}

fn time_parameters() -> Vec<Value> {
    let (earliest, latest) = QUERY_TIME_RANGE;
    let time = json!({ "oneOf": [
        { "type": "integer", "minimum": earliest, "maximum": latest },
        { "type": "string", "format": "date-time" },
    ] });
    vec![
        parameter(
            "from",
            "query",
            "Start: ms since the epoch or RFC 3339, 1970 to the end of 9999 (default: 60 steps before `to`). The range holds at most 10000 buckets of `step`.",
            time.clone(),
        ),
        parameter(
            "to",
            "query",
            "End, exclusive: ms or RFC 3339 (default: now).",
            time,
        ),
        parameter(
            "step",
            "query",
            "Bucket width.",
            json!({ "type": "string", "enum": ["1m", "5m", "1h", "1d"] }),
        ),
    ]
}

fn query_operation(id: &str, summary: &str, filters: &[&str], fields: &[(&str, &str)]) -> Value {
    let mut parameters = time_parameters();
    for filter in filters {
        parameters.push(parameter(
            filter,
            "query",
            &format!("Only this {filter}."),
            json!({ "type": "string", "minLength": 1, "maxLength": MAX_STRING_LEN }),
        ));
    }
    let mut properties = Map::new();
    properties.insert("start".into(), json!({ "type": "integer" }));
    properties.insert(
        "layer".into(),
        json!({ "type": "string", "enum": ["batch", "speed", "mixed"] }),
    );
    for (name, json_type) in fields {
        properties.insert((*name).into(), schema_of(json_type));
    }
    let headers: Map<String, Value> = FRESHNESS_HEADERS
        .iter()
        .map(|(name, description)| {
            (
                (*name).to_string(),
                json!({ "description": description, "schema": { "type": "string" } }),
            )
        })
        .collect();
    json!({
        "operationId": id,
        "summary": summary,
        "tags": ["views"],
        "parameters": parameters,
        "responses": {
            "200": {
                "description": "One bucket per step, each answered by the batch or the speed layer (`mixed`: a roll-up spanning B).",
                "headers": headers,
                "content": { "application/json": { "schema": {
                    "type": "object",
                    "required": ["from", "to", "step", "boundary", "watermark", "buckets"],
                    "properties": {
                        "from": { "type": "integer" },
                        "to": { "type": "integer" },
                        "step": { "type": "string" },
                        "boundary": { "type": ["integer", "null"] },
                        "watermark": { "type": ["integer", "null"] },
                        "buckets": { "type": "array", "items": {
                            "type": "object",
                            "required": properties.keys().collect::<Vec<_>>(),
                            "properties": properties,
                        } },
                    },
                } } },
            },
            "400": { "$ref": "#/components/responses/BadParameter" },
            "504": { "description": "No answer within the time limit (5 s).", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } },
        },
    })
}

/// `GET /api/v1/compare` (served beside the views where the process reads
/// the log: the demo and `lambda serve --log-url`).
fn compare_operation() -> Value {
    let error = json!({ "$ref": "#/components/schemas/Error" });
    let mut parameters = time_parameters();
    parameters.push(parameter(
        "engine",
        "query",
        "The batch engine that recomputes the batch side (default: the process's own). `spark` and `auto` need a Spark Connect server.",
        json!({ "type": "string", "enum": ["duckdb", "spark", "auto"] }),
    ));
    let count = json!({ "type": "integer", "minimum": 0 });
    let cost = json!({ "type": "object", "required": ["what", "wall_ms", "bytes_read", "events_processed"],
        "properties": { "what": { "type": "string" }, "wall_ms": count, "bytes_read": count, "events_processed": count } });
    let view = json!({ "type": "string", "enum": ["funnel", "pages", "iot"] });
    let view_summary = json!({ "type": "object",
        "required": ["buckets", "equal", "explained", "unexplained", "lambda_events", "kappa_events", "late_events", "lost_events"],
        "properties": { "buckets": count, "equal": count, "explained": count, "unexplained": count,
            "lambda_events": count, "kappa_events": count, "late_events": count, "lost_events": count } });
    let reason = json!({ "type": "object", "required": ["reason", "events", "detail"],
        "properties": { "reason": { "type": "string", "enum": ["late", "retention"] }, "events": count, "detail": { "type": "string" } } });
    let difference = json!({ "type": "object",
        "required": ["view", "bucket", "bucket_ms", "lambda_events", "kappa_events", "reasons", "explained"],
        "properties": { "view": view, "bucket": { "type": "string" }, "bucket_ms": { "type": "integer" },
            "lambda_events": count, "kappa_events": count, "explained": { "type": "boolean" },
            "reasons": { "type": "array", "items": reason } } });
    let comparison = json!({ "type": "object",
        "required": ["from", "to", "manifest_version", "log_records", "allowed_lateness_ms", "summary", "cost", "differences"],
        "properties": {
            "from": { "type": "integer" }, "to": { "type": "integer" },
            "manifest_version": count, "log_records": count,
            "allowed_lateness_ms": { "type": "integer" },
            "summary": { "type": "object", "additionalProperties": view_summary },
            "cost": { "type": "object", "required": ["lambda", "kappa"], "properties": { "lambda": cost, "kappa": cost } },
            "differences": { "type": "array", "items": difference },
        } });
    json!({
        "operationId": "getCompare",
        "summary": "Lambda against kappa over [from, to): the batch views of the newest manifest beside a replay of the same log prefix through the speed layer's fold, every bucket that differs and what accounts for it.",
        "tags": ["kappa"],
        "parameters": parameters,
        "responses": {
            "200": { "description": "The comparison (`x-cache: hit` for one already made of the same range and manifest).",
                     "content": { "application/json": { "schema": comparison } } },
            "400": { "$ref": "#/components/responses/BadParameter" },
            "409": { "description": "Nothing to compare with: no batch run committed yet, or kappa mode (no batch layer).", "content": { "application/json": { "schema": error } } },
            "429": { "description": "A comparison is running, or the next may not start yet (each replays the log); see Retry-After.", "content": { "application/json": { "schema": error } } },
            "500": { "description": "The comparison failed, named.", "content": { "application/json": { "schema": error } } },
            "503": { "description": "The lake's newest manifest cannot be read now.", "content": { "application/json": { "schema": error } } },
        },
    })
}

fn simple(id: &str, summary: &str, tag: &str, content_type: &str, description: &str) -> Value {
    json!({
        "operationId": id,
        "summary": summary,
        "tags": [tag],
        "responses": { "200": { "description": description, "content": { content_type: {} } } },
    })
}

/// The OpenAPI document.
pub fn document() -> Value {
    let error = json!({ "$ref": "#/components/schemas/Error" });
    let mut document = json!({
        "openapi": "3.1.0",
        "info": {
            "title": "lambda-pipeline",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Events in; funnel, page and IoT views out, each bucket from the batch layer before the boundary B and from the speed layer after it.",
        },
        "paths": {
            "/api/v1/events": { "post": {
                "operationId": "postEvents",
                "summary": "Send events: NDJSON, or a JSON array. Served by ingest (and the demo).",
                "tags": ["ingest"],
                "description": format!(
                    "Bounds: a body of at most {MAX_BODY_BYTES} bytes holding 1 to {MAX_LINES_PER_REQUEST} lines or array elements; a line over {MAX_LINE_BYTES} bytes is rejected alone. Per event: `event_id` 1 to {MAX_EVENT_ID_LEN} bytes, other strings 1 to {MAX_STRING_LEN} bytes, `amount_cents` 0 to {MAX_AMOUNT_CENTS}, `value` within ±{MAX_ABS_VALUE:e}, `render_ms` 0 to {MAX_RENDER_MS}, `battery_pct` 0 to 100, `ts` from 1970 to the end of 9999 and at most {} s ahead of the collector's clock.",
                    DEFAULT_MAX_TS_AHEAD_MS / 1000
                ),
                "requestBody": { "required": true, "content": {
                    "application/x-ndjson": { "schema": { "type": "string", "minLength": 1 } },
                    "application/json": { "schema": { "type": "array", "minItems": 1, "maxItems": MAX_LINES_PER_REQUEST,
                        "description": "Events; any element that is not a valid event is rejected on its own (named in `rejected` and dead-lettered) while the others are accepted.",
                        "items": {} } },
                } },
                "responses": {
                    "202": { "description": "Accepted lines are durable in the log; rejected ones are named by line and field.",
                             "content": { "application/json": { "schema": { "type": "object", "properties": {
                                 "accepted": { "type": "integer", "minimum": 0 },
                                 "rejected": { "type": "array", "maxItems": MAX_REJECTIONS_LISTED, "items": { "type": "object", "properties": {
                                     "line": { "type": "integer" }, "field": { "type": ["string", "null"] }, "error": { "type": "string" } } } },
                                 "rejected_count": { "type": "integer", "minimum": 0, "description": "Every rejected line; `rejected` lists the first ones." },
                             } } } } },
                    "400": { "description": "A body with no events, or an `application/json` body that is not an array.", "content": { "application/json": { "schema": error } } },
                    "408": { "description": "The body did not arrive within the read timeout.", "content": { "application/json": { "schema": error } } },
                    "413": { "description": "The body is over the size limit, or holds too many lines or elements.", "content": { "application/json": { "schema": error } } },
                    "415": { "description": "A `Content-Encoding` other than `identity` (the body is not read); `Accept-Encoding: identity`.", "content": { "application/json": { "schema": error } } },
                    "429": { "description": "Too many requests in flight; see Retry-After.", "content": { "application/json": { "schema": error } } },
                    "503": { "description": "The log cannot make events durable now; see Retry-After.", "content": { "application/json": { "schema": error } } },
                },
            } },
            "/api/v1/funnel": { "get": query_operation("getFunnel", "Funnel counts, conversion and distinct users per bucket.", FUNNEL_FILTERS, FUNNEL_FIELDS) },
            "/api/v1/pages": { "get": query_operation("getPages", "Page views, errors and render-time percentiles per bucket.", PAGES_FILTERS, PAGES_FIELDS) },
            "/api/v1/iot": { "get": query_operation("getIot", "Sensor statistics, device status and alarms per bucket.", IOT_FILTERS, IOT_FIELDS) },
            "/api/v1/alerts": { "get": {
                "operationId": "getAlerts",
                "summary": "Alert transitions after `since`, oldest first, and the active alerts.",
                "tags": ["alerts"],
                "parameters": [
                    parameter("since", "query", "Only transitions with a greater id.", json!({ "type": "integer", "minimum": 0, "maximum": u64::MAX })),
                    parameter("limit", "query", "At most this many (1 to 1000, default 100).", json!({ "type": "integer", "minimum": 1, "maximum": 1000 })),
                ],
                "responses": {
                    "200": { "description": "Transitions, the next `since`, the newest id, how many ids after `since` (up to the page's last) the page does not hold (`missed`: no longer kept — the feed keeps the newest 10 000 — or never in the feed, a source having dropped them), whether `since` is an id of before this serving process (`restarted`: ids start past the process's start time in ms × 1 000), and the active alerts (the first 1 000 by source, rule and key, each the transition that raised it, and `active_count`, all of them).",
                             "content": { "application/json": { "schema": { "type": "object", "properties": {
                                 "alerts": { "type": "array", "items": { "$ref": "#/components/schemas/Alert" } },
                                 "active": { "type": "array", "items": { "$ref": "#/components/schemas/Alert" } },
                                 "next": { "type": "integer" }, "last": { "type": "integer" },
                                 "missed": { "type": "integer", "minimum": 0 },
                                 "restarted": { "type": "boolean" },
                                 "active_count": { "type": "integer", "minimum": 0 } } } } } },
                    "400": { "$ref": "#/components/responses/BadParameter" },
                },
            } },
            "/api/v1/alerts/stream": { "get": {
                "operationId": "streamAlerts",
                "summary": "Alert transitions as Server-Sent Events (`event: alert`, `id:` the transition's id); `event: gap` with `{\"missed\": n, \"after\": id}` before an id jump (transitions no longer kept, or never in the feed), or `{\"after\": id, \"restarted\": true, \"missed\": null}` first when the place resumed from is not this serving process's; a gap's `id:` is the last id it stands for, so a reconnect goes on after it.",
                "tags": ["alerts"],
                "parameters": [
                    parameter("since", "query", "Start after this id (default: what arrives next).", json!({ "type": "integer", "minimum": 0, "maximum": u64::MAX })),
                    parameter("Last-Event-ID", "header", "Resume after this id (a reconnecting EventSource sends it).", json!({ "type": "integer", "minimum": 0, "maximum": u64::MAX })),
                ],
                "responses": {
                    "200": { "description": "An open event stream.", "content": { "text/event-stream": {} } },
                    "400": { "$ref": "#/components/responses/BadParameter" },
                    "503": { "description": "256 streams are open already; see Retry-After.", "content": { "application/json": { "schema": error } } },
                },
            } },
            "/api/v1/status": { "get": simple("getStatus", "Per layer: offsets and lag, watermark, B, last and next batch run, late ledger, alerts.", "operations", "application/json", "The status document.") },
            "/api/v1/admin/batch/run": { "post": {
                "operationId": "runBatch",
                "summary": "Run a batch now and answer its report.",
                "tags": ["operations"],
                "security": [{ "adminToken": [] }],
                "responses": {
                    "200": { "description": "The run's report.", "content": { "application/json": { "schema": { "type": "object" } } } },
                    "401": { "description": "Missing or wrong bearer token.", "content": { "application/json": { "schema": error } } },
                    "403": { "description": "Admin endpoints are off (no --admin-token).", "content": { "application/json": { "schema": error } } },
                    "500": { "description": "The run failed.", "content": { "application/json": { "schema": error } } },
                    "503": { "description": "No batch runner is running (kappa mode, or it is stopping).", "content": { "application/json": { "schema": error } } },
                },
            } },
            "/api/v1/compare": { "get": compare_operation() },
            "/api/v1/kappa": { "get": {
                "operationId": "getKappa",
                "summary": "Kappa mode: the version serving answers, its allowed lateness, and the newest replay's progress. Served with --architecture kappa (the demo and serve).",
                "tags": ["kappa"],
                "responses": {
                    "200": { "description": "The kappa status.", "content": { "application/json": { "schema": { "type": "object",
                        "required": ["version", "allowed_lateness_ms"],
                        "properties": { "version": { "type": "integer" }, "allowed_lateness_ms": { "type": "integer" },
                                        "replay": { "type": ["object", "null"] } } } } } },
                    "409": { "description": "This process runs the lambda architecture.", "content": { "application/json": { "schema": error } } },
                },
            } },
            "/api/v1/admin/kappa/replay": { "post": {
                "operationId": "replayKappa",
                "summary": "Kappa mode: recompute the views by replaying the log into a new version (serving switches to it once it has caught up).",
                "tags": ["kappa"],
                "security": [{ "adminToken": [] }],
                "requestBody": { "required": false, "content": { "application/json": { "schema": {
                    "type": "object",
                    "properties": { "allowed_lateness": { "type": "string", "description": "The new version's allowed lateness, e.g. `90s` (default: the current version's)." } },
                } } } },
                "responses": {
                    "202": { "description": "The replay is queued: the new version's number, and where to follow it.", "content": { "application/json": { "schema": { "type": "object",
                        "required": ["version", "status"],
                        "properties": { "version": { "type": "integer" }, "status": { "type": "string" } } } } } },
                    "400": { "description": "A body that is not the object above, or a lateness that is not a duration; named.", "content": { "application/json": { "schema": error } } },
                    "401": { "description": "Missing or wrong bearer token.", "content": { "application/json": { "schema": error } } },
                    "403": { "description": "Admin endpoints are off (no --admin-token).", "content": { "application/json": { "schema": error } } },
                    "408": { "description": "The body did not arrive within the read timeout.", "content": { "application/json": { "schema": error } } },
                    "409": { "description": "This process runs the lambda architecture, or a replay is already queued.", "content": { "application/json": { "schema": error } } },
                    "413": { "description": "The body is over the admin body limit.", "content": { "application/json": { "schema": error } } },
                },
            } },
            "/metrics": { "get": simple("getMetrics", "Prometheus metrics of every layer.", "operations", "text/plain", "The text exposition format.") },
            "/healthz": { "get": {
                "operationId": "getHealth",
                "summary": "Health: `ok`, or 503 naming what fails (e.g. speed layer checkpoints on a full disk; reads go on being served).",
                "tags": ["operations"],
                "responses": {
                    "200": { "description": "`ok`.", "content": { "text/plain": {} } },
                    "503": { "description": "What is unhealthy.", "content": { "text/plain": {} } },
                },
            } },
            "/openapi.json": { "get": simple("getOpenApi", "This document.", "operations", "application/json", "OpenAPI 3.1.") },
            "/": { "get": simple("getDashboard", "The dashboard page.", "dashboard", "text/html", "HTML.") },
        },
        "x-limits": lambda_events::limits::TABLE,
        "components": {
            "schemas": {
                "Error": { "type": "object", "required": ["error"], "properties": {
                    "error": { "type": "string" }, "parameter": { "type": "string" } } },
                "Alert": { "type": "object", "properties": {
                    "id": { "type": "integer" }, "source": { "type": "integer" },
                    "rule": { "type": "string", "enum": ["sensor_range", "device_offline", "alarm", "page_error_rate"] },
                    "key": { "type": "string" }, "state": { "type": "string", "enum": ["raised", "cleared"] },
                    "ts": { "type": "integer" }, "message": { "type": "string" }, "value": { "type": ["number", "null"] } } },
            },
            "responses": {
                "RequestTargetTooLong": { "description": format!("The request target (path and query) is over {MAX_REQUEST_TARGET_BYTES} bytes."), "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } },
                "HeaderFieldsTooLarge": { "description": format!("The request's header fields (names and values) are over {MAX_HEADER_BYTES} bytes."), "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } },
                "TransferCodingNotImplemented": { "description": "The request's Transfer-Encoding names a coding other than chunked (named in `error`).", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } },
                "BadFraming": { "description": "The request's Transfer-Encoding names chunked more than once: its body's length cannot be known.", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } },
                "BadParameter": { "description": "A bad parameter, named: not a time, a step or a filter it knows, outside the bounds, `from` not before `to`, or a range of more than 10000 buckets.", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } },
            },
            "securitySchemes": { "adminToken": { "type": "http", "scheme": "bearer" } },
        },
    });
    // Every server refuses a request past these bounds before a route sees it.
    let past_bounds = [
        ("414", "RequestTargetTooLong"),
        ("431", "HeaderFieldsTooLarge"),
        ("501", "TransferCodingNotImplemented"),
    ];
    if let Some(paths) = document["paths"].as_object_mut() {
        for operation in paths.values_mut().filter_map(Value::as_object_mut) {
            for responses in operation
                .values_mut()
                .filter_map(|o| o.get_mut("responses")?.as_object_mut())
            {
                for (status, name) in past_bounds {
                    responses.insert(
                        status.into(),
                        json!({ "$ref": format!("#/components/responses/{name}") }),
                    );
                }
                // chunked twice: 400 (an operation's own 400 already says
                // what else is refused with it).
                responses
                    .entry("400")
                    .or_insert_with(|| json!({ "$ref": "#/components/responses/BadFraming" }));
            }
        }
    }
    document
}
