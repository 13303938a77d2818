//! `/openapi.json` against the running demo: a well-formed OpenAPI 3.1
//! document whose every operation the server answers, whose documented
//! parameters the handlers accept (and nothing else), and whose bucket
//! schemas list exactly the fields the answers carry, with the freshness
//! headers it promises.

use std::collections::BTreeSet;

use lambda_pipeline::demo::Demo;
use serde_json::{Value, json};

use crate::common::{demo_config, get, post_lines, text};

const T0: i64 = 1_767_225_600_000;

/// A valid value for a documented query parameter.
fn sample(name: &str) -> String {
    match name {
        "from" => T0.to_string(),
        "to" => (T0 + 3_600_000).to_string(),
        "step" => "5m".into(),
        "since" => "0".into(),
        "limit" => "10".into(),
        other => format!("some-{other}"),
    }
}

/// The status a raw HTTP/1.1 request to `path` with `Transfer-Encoding:
/// {coding}` and an empty chunked body is answered with (reqwest sets the
/// framing itself).
async fn raw_status(base: &str, method: &str, path: &str, coding: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = base.trim_start_matches("http://");
    let mut socket = tokio::net::TcpStream::connect(address).await.unwrap();
    let request = format!(
        "{} {path} HTTP/1.1\r\nHost: {address}\r\nTransfer-Encoding: {coding}\r\nConnection: close\r\n\r\n0\r\n\r\n",
        method.to_uppercase()
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut head = [0u8; 12];
    socket.read_exact(&mut head).await.unwrap();
    let head = String::from_utf8_lossy(&head);
    head["HTTP/1.1 ".len()..].trim().parse().unwrap()
}

/// Every `$ref` in `value` points at something in `doc`.
fn check_refs(doc: &Value, value: &Value) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(target)) = map.get("$ref") {
                let pointer = target.strip_prefix('#').expect("local refs");
                assert!(doc.pointer(pointer).is_some(), "dangling {target}");
            }
            map.values().for_each(|v| check_refs(doc, v));
        }
        Value::Array(items) => items.iter().for_each(|v| check_refs(doc, v)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_matches_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let demo = Demo::start(demo_config(dir.path())).await.unwrap();
    let base = format!("http://{}", demo.addr);
    let client = reqwest::Client::new();
    let lines: Vec<Vec<u8>> = (0..600)
        .map(|i| {
            let event = match i % 3 {
                0 => json!({"event_id": format!("e{i}"), "ts": T0 + i * 5_000, "event_type": "click",
                            "user_id": format!("u{}", i % 17), "campaign_id": "some-campaign_id"}),
                1 => json!({"event_id": format!("e{i}"), "ts": T0 + i * 5_000, "event_type": "page_view",
                            "user_id": "u", "page": "/", "device": "mobile", "render_ms": 100 + i}),
                _ => json!({"event_id": format!("e{i}"), "ts": T0 + i * 5_000, "event_type": "sensor_reading",
                            "device_id": "d", "sensor": "temperature", "value": 20.5}),
            };
            serde_json::to_vec(&event).unwrap()
        })
        .collect();
    post_lines(&client, &base, &lines).await;
    demo.run_batch().await.unwrap();

    let doc = get(&client, format!("{base}/openapi.json")).await;
    assert_eq!(doc["openapi"], "3.1.0");
    check_refs(&doc, &doc);
    let mut operation_ids = BTreeSet::new();
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 11, "{}", paths.len());
    for (path, operations) in paths {
        for (method, operation) in operations.as_object().unwrap() {
            let id = operation["operationId"].as_str().unwrap();
            assert!(operation_ids.insert(id.to_string()), "duplicate {id}");
            assert!(
                operation["responses"]
                    .as_object()
                    .is_some_and(|r| !r.is_empty()),
                "{id}"
            );
            let url = format!("{base}{path}");
            let status = match method.as_str() {
                "get" if path.ends_with("/stream") => {
                    // An open stream: the status line is all we need.
                    client.get(&url).send().await.unwrap().status().as_u16()
                }
                "get" => client.get(&url).send().await.unwrap().status().as_u16(),
                "post" => client.post(&url).send().await.unwrap().status().as_u16(),
                other => panic!("{other} {path} is not served"),
            };
            assert!(
                status != 404 && status != 405,
                "{method} {path} is documented but answers {status}"
            );
            let documented = operation["responses"]
                .as_object()
                .unwrap()
                .contains_key(&status.to_string());
            assert!(documented, "{method} {path}: {status} is not documented");
            // Past the servers' bound on a request's target, every route
            // refuses it, as documented, before it sees it.
            let long = format!(
                "{url}?pad={}",
                "a".repeat(lambda_events::limits::MAX_REQUEST_TARGET_BYTES)
            );
            let refused = match method.as_str() {
                "post" => client.post(&long),
                _ => client.get(&long),
            };
            let refused = refused.send().await.unwrap().status().as_u16();
            assert_eq!(refused, 414, "{method} {path}");
            assert!(
                operation["responses"]
                    .as_object()
                    .unwrap()
                    .contains_key("414"),
                "{method} {path}: 414 is not documented"
            );
            // A transfer coding other than chunked (501), chunked twice
            // (400): refused by every route, as documented.
            for (coding, expected) in [("gzip, chunked", 501), ("chunked, chunked", 400)] {
                let status = raw_status(&base, method, path, coding).await;
                assert_eq!(status, expected, "{method} {path} {coding}");
                assert!(
                    operation["responses"]
                        .as_object()
                        .unwrap()
                        .contains_key(&expected.to_string()),
                    "{method} {path}: {expected} is not documented"
                );
            }
        }
    }

    // The view queries: every documented parameter accepted at once, an
    // undocumented one named, and buckets with exactly the documented fields.
    for path in ["/api/v1/funnel", "/api/v1/pages", "/api/v1/iot"] {
        let operation = &doc["paths"][path]["get"];
        let query: Vec<(String, String)> = operation["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                let name = p["name"].as_str().unwrap();
                (name.to_string(), sample(name))
            })
            .collect();
        let response = client
            .get(format!("{base}{path}"))
            .query(&query)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path} {query:?}");
        let headers = response.headers().clone();
        let body: Value = response.json().await.unwrap();
        for name in operation["responses"]["200"]["headers"]
            .as_object()
            .unwrap()
            .keys()
        {
            let value = headers.get(name).map(|v| v.to_str().unwrap().to_string());
            assert!(value.is_some(), "{path}: no {name} header");
        }
        assert_eq!(
            headers["x-lambda-boundary"].to_str().unwrap(),
            body["boundary"].to_string()
        );
        let schema = &operation["responses"]["200"]["content"]["application/json"]["schema"];
        let documented: BTreeSet<&str> = schema["properties"]["buckets"]["items"]["properties"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let buckets = body["buckets"].as_array().unwrap();
        assert_eq!(buckets.len(), 12, "{path}: an hour of 5m buckets");
        for bucket in buckets {
            let keys: BTreeSet<&str> = bucket
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            assert_eq!(keys, documented, "{path}");
        }
        let top: BTreeSet<&str> = body
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let required: BTreeSet<&str> = schema["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(top, required, "{path}");

        let unknown = client
            .get(format!("{base}{path}?surprise=1"))
            .send()
            .await
            .unwrap();
        assert_eq!(unknown.status(), 400);
        let error: Value = unknown.json().await.unwrap();
        assert_eq!(error["parameter"], "surprise");
        // A parameter given twice is refused, named, whichever it is.
        let twice = client
            .get(format!("{base}{path}?step=1h&step=1m"))
            .send()
            .await
            .unwrap();
        assert_eq!(twice.status(), 400, "{path}");
        let error: Value = twice.json().await.unwrap();
        assert_eq!(error["parameter"], "step", "{path}: {error}");
        assert!(
            error["error"].as_str().unwrap().contains("more than once"),
            "{path}: {error}"
        );
    }
    // Some of those buckets held data: the queries above were not vacuous.
    let funnel = get(
        &client,
        format!(
            "{base}/api/v1/funnel?from={T0}&to={}&step=1h",
            T0 + 3_600_000
        ),
    )
    .await;
    assert_eq!(funnel["buckets"][0]["clicks"], 200);

    // The comparison of that hour (the events sent, through the batch run
    // above): every field its schema requires and no other, in the answer
    // and in each view's summary.
    let compare = &doc["paths"]["/api/v1/compare"]["get"]["responses"]["200"]["content"]["application/json"]
        ["schema"];
    let required = |schema: &Value| -> BTreeSet<String> {
        schema["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect()
    };
    let keys = |value: &Value| -> BTreeSet<String> {
        value.as_object().unwrap().keys().cloned().collect()
    };
    // (Comparisons are paced: the one the loop above asked for may hold
    // this one back for a while, as Retry-After says.)
    let url = format!("{base}/api/v1/compare?from={T0}&to={}", T0 + 3_600_000);
    let mut comparison = None;
    for _ in 0..60 {
        let response = client.get(&url).send().await.unwrap();
        if response.status() != 429 {
            assert_eq!(response.status(), 200, "{url}");
            comparison = Some(response.json::<Value>().await.unwrap());
            break;
        }
        let wait: u64 = response.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_secs(wait)).await;
    }
    let comparison = comparison.expect("a comparison within 60 tries");
    assert_eq!(keys(&comparison), required(compare), "{comparison}");
    assert_eq!(comparison["summary"]["funnel"]["lambda_events"], 200);
    for summary in comparison["summary"].as_object().unwrap().values() {
        assert_eq!(
            keys(summary),
            required(&compare["properties"]["summary"]["additionalProperties"])
        );
    }

    // Every request above is counted and timed by route (the funnel's:
    // three answered, two refused).
    let metrics = text(&client, format!("{base}/metrics")).await;
    for expected in [
        "lambda_serving_requests_total{route=\"/api/v1/funnel\",status=\"2xx\"} 3",
        "lambda_serving_requests_total{route=\"/api/v1/funnel\",status=\"4xx\"} 2",
        "lambda_serving_request_duration_seconds_count{route=\"/api/v1/funnel\"} 5",
        "lambda_serving_request_duration_seconds_bucket{route=\"/api/v1/funnel\",le=\"+Inf\"} 5",
        "# TYPE lambda_serving_request_duration_seconds histogram",
        // The batch run covered everything sent.
        "lambda_batch_consumer_lag_records{topic=\"funnel-events\",partition=\"0\"} 0",
    ] {
        assert!(
            metrics.contains(expected),
            "{expected} missing from\n{metrics}"
        );
    }
    demo.stop().await.unwrap();
}

/// schemathesis (a third-party OpenAPI fuzzer, installed by the test
/// command) generates requests from `/openapi.json` against the running demo
/// — valid ones and deliberately invalid ones — with every check it has: no
/// 5xx, no timeout, every status, header and body as documented, invalid
/// data rejected and valid data accepted. Fixed seed and case count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = demo_config(dir.path());
    config.shared.admin_token = Some("schemathesis-token".into());
    let demo = Demo::start(config).await.unwrap();
    let venv = lambda_testkit::venv();
    let schemathesis = venv.join("bin/schemathesis");
    let report = dir.path().join("schemathesis");
    let output = tokio::process::Command::new(&schemathesis)
        // The few settings the document cannot say (infra/schemathesis.toml explains each).
        .arg("--config-file")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/infra/schemathesis.toml"
        ))
        .args(["run", &format!("http://{}/openapi.json", demo.addr)])
        // With the admin token: the admin operations are fuzzed too (and
        // schemathesis checks that they refuse requests without it).
        .args(["--header", "Authorization: Bearer schemathesis-token"])
        .args(["--checks", "all", "--max-examples", "40", "--seed", "42"])
        .args(["--generation-deterministic", "--workers", "1"])
        .args(["--request-timeout", "10", "--max-response-time", "5"])
        .args(["--suppress-health-check", "all"])
        .arg("--report-dir")
        .arg(&report)
        .env("NO_COLOR", "1")
        .kill_on_drop(true)
        .output()
        .await
        .unwrap_or_else(|e| panic!("running {}: {e}", schemathesis.display()));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "schemathesis found problems:\n{stdout}\n{stderr}"
    );
    // It really ran cases against every operation (not an empty schema).
    assert!(stdout.contains("No issues found"), "{stdout}");
    assert!(stdout.contains("Tested: 14"), "{stdout}");
    demo.stop().await.unwrap();
}
