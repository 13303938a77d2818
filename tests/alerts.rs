//! Alerts through the API: the demo in-process with the default rules, fed
//! events that trip each rule. `GET /api/v1/alerts` lists the transitions
//! (raised once, no repeats while active; cleared when the condition ends),
//! `GET /api/v1/alerts/stream` pushes them as Server-Sent Events and resumes
//! after `Last-Event-ID`, and `/api/v1/status` and `/metrics` count them.
//! The status also shows the watermark, the lateness, the late ledger by
//! window and the checkpoint's age.

use std::time::Duration;

use lambda_pipeline::demo::Demo;
use serde_json::{Value, json};

use crate::common::{MINUTE, demo_config, eventually, get, post_lines, text};

const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

fn line(value: Value) -> Vec<u8> {
    serde_json::to_vec(&value).unwrap()
}

fn reading(id: &str, ts: i64, device: &str, value: f64) -> Vec<u8> {
    line(
        json!({"event_id": id, "ts": ts, "event_type": "sensor_reading",
                "device_id": device, "sensor": "temperature", "value": value}),
    )
}

/// Events at `ts` on many keys, so that every partition of both topics moves
/// its clock (the watermark is the slowest partition's), none tripping a rule.
fn tick(ts: i64) -> Vec<Vec<u8>> {
    (0..40)
        .flat_map(|i| {
            [
                reading(&format!("tick-{ts}-r{i}"), ts, &format!("tick-{i}"), 21.0),
                line(json!({"event_id": format!("tick-{ts}-p{i}"), "ts": ts,
                            "event_type": "page_view", "user_id": format!("tick-{i}"), "page": "/"})),
            ]
        })
        .collect()
}

/// The transitions as (rule, key, state).
fn transitions(alerts: &[Value]) -> Vec<(String, String, String)> {
    alerts
        .iter()
        .map(|a| {
            (
                a["rule"].as_str().unwrap().to_string(),
                a["key"].as_str().unwrap().to_string(),
                a["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn t(rule: &str, key: &str, state: &str) -> (String, String, String) {
    (rule.into(), key.into(), state.into())
}

/// Polls `/api/v1/alerts` until it lists `n` transitions.
async fn wait_for_alerts(client: &reqwest::Client, base: &str, n: usize) -> Value {
    eventually(
        &format!("{n} alert transitions"),
        Duration::from_secs(20),
        || async {
            let body = get(client, format!("{base}/api/v1/alerts?limit=1000")).await;
            if body["alerts"].as_array().unwrap().len() >= n {
                Ok(body)
            } else {
                Err(body.to_string())
            }
        },
    )
    .await
}

/// Reads Server-Sent Events from `response` until `n` `alert` events came.
async fn read_events(response: &mut reqwest::Response, n: usize) -> Vec<(u64, Value)> {
    let mut buffer = String::new();
    let mut events = Vec::new();
    while events.len() < n {
        let chunk = tokio::time::timeout(Duration::from_secs(20), response.chunk())
            .await
            .expect("an SSE event within 20 s")
            .unwrap()
            .expect("the stream stays open");
        buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let field = |name: &str| {
                block
                    .lines()
                    .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
            };
            if field("event:").as_deref() == Some("alert") {
                let id = field("id:").unwrap().parse().unwrap();
                let data = serde_json::from_str(&field("data:").unwrap()).unwrap();
                events.push((id, data));
            }
        }
    }
    events
}

async fn open_stream(
    client: &reqwest::Client,
    base: &str,
    last_id: Option<u64>,
) -> reqwest::Response {
    let mut request = client.get(format!("{base}/api/v1/alerts/stream"));
    if let Some(id) = last_id {
        request = request.header("Last-Event-ID", id.to_string());
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    response
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_are_raised_once_cleared_listed_and_streamed() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = demo_config(dir.path());
    // Every partition gets events: no idleness needed for the watermark.
    config.shared.idle_timeout = Duration::from_secs(600);
    let demo = Demo::start(config).await.unwrap();
    let base = format!("http://{}", demo.addr);
    let client = reqwest::Client::new();

    // dev-1's temperature leaves [15, 27] for four readings (raised at the
    // third, not again at the fourth), then comes back (cleared). A critical
    // alarm on dev-2 (raised), a low one (not a rule's severity). dev-3 goes
    // offline. /checkout has 6 errors in 30 views in one minute (20% > 10%).
    let mut lines = vec![
        reading("r1", T0 + 1_000, "dev-1", 30.0),
        reading("r2", T0 + 2_000, "dev-1", 31.0),
        reading("r3", T0 + 3_000, "dev-1", 32.0),
        reading("r4", T0 + 4_000, "dev-1", 33.0),
        reading("r5", T0 + 5_000, "dev-1", 21.0),
        line(
            json!({"event_id": "a1", "ts": T0 + 6_000, "event_type": "alarm", "device_id": "dev-2",
                    "alarm": "overheat", "severity": "critical", "message": "too hot"}),
        ),
        line(
            json!({"event_id": "a2", "ts": T0 + 6_500, "event_type": "alarm", "device_id": "dev-2",
                    "alarm": "door", "severity": "low"}),
        ),
        line(
            json!({"event_id": "s1", "ts": T0 + 7_000, "event_type": "device_status",
                    "device_id": "dev-3", "status": "offline"}),
        ),
    ];
    for i in 0..30 {
        lines.push(line(json!({"event_id": format!("v{i}"), "ts": T0 + 10_000 + i,
                               "event_type": "page_view", "user_id": format!("u{i}"), "page": "/checkout"})));
    }
    for i in 0..6 {
        lines.push(line(json!({"event_id": format!("e{i}"), "ts": T0 + 20_000 + i,
                               "event_type": "error", "user_id": format!("u{i}"), "page": "/checkout",
                               "error_code": 500})));
    }
    lines.extend(tick(T0 + 30_000));
    post_lines(&client, &base, &lines).await;

    let first = wait_for_alerts(&client, &base, 3).await;
    // Devices' partitions are read in no set order: compare in event time.
    let mut alerts = first["alerts"].as_array().unwrap().clone();
    alerts.sort_by_key(|a| a["ts"].as_i64());
    assert_eq!(
        transitions(&alerts),
        vec![
            t("sensor_range", "dev-1/temperature", "raised"),
            t("sensor_range", "dev-1/temperature", "cleared"),
            t("alarm", "dev-2/overheat", "raised"),
        ],
        "{first}"
    );
    assert_eq!(alerts[0]["ts"], T0 + 3_000, "raised by the third reading");
    assert_eq!(alerts[0]["value"], 32.0);
    assert!(
        alerts[2]["message"]
            .as_str()
            .unwrap()
            .contains("critical alarm overheat on dev-2: too hot"),
        "{first}"
    );
    let mut ids: Vec<u64> = alerts.iter().map(|a| a["id"].as_u64().unwrap()).collect();
    ids.sort();
    // Numbered past the time serving started (a restarted serving numbers
    // past the last one), then one by one.
    let zero = ids[0] - 1;
    assert!(zero >= 1_767_225_600_000_000, "{zero}");
    assert_eq!(ids, vec![zero + 1, zero + 2, zero + 3]);
    assert_eq!(first["last"], zero + 3);
    assert_eq!(
        (first["missed"].as_u64(), first["restarted"].as_bool()),
        (Some(0), Some(false))
    );
    assert_eq!(
        transitions(first["active"].as_array().unwrap()),
        vec![t("alarm", "dev-2/overheat", "raised")]
    );
    // `since` pages through the list.
    let since = zero + 1;
    let after = get(
        &client,
        format!("{base}/api/v1/alerts?since={since}&limit=1"),
    )
    .await;
    assert_eq!(after["alerts"].as_array().unwrap().len(), 1);
    assert_eq!(after["alerts"][0], first["alerts"][1]);
    assert_eq!(after["next"], zero + 2);
    // A place of before this serving process (another one's id): told so.
    let before = get(&client, format!("{base}/api/v1/alerts?since=14001")).await;
    assert_eq!(before["restarted"], true, "{before}");
    assert_eq!(before["alerts"], first["alerts"]);

    // Subscribed now: the stream carries what happens next.
    let mut stream = open_stream(&client, &base, None).await;
    // Seven minutes of event time later (the watermark passes dev-3's five
    // offline minutes and closes /checkout's minute); dev-1 out of range
    // again for three readings.
    let mut later = tick(T0 + 7 * MINUTE);
    for (i, v) in [40.0, 41.0, 42.0].into_iter().enumerate() {
        later.push(reading(
            &format!("r-late-{i}"),
            T0 + 7 * MINUTE + 1 + i as i64,
            "dev-1",
            v,
        ));
    }
    post_lines(&client, &base, &later).await;
    let pushed = read_events(&mut stream, 3).await;
    let mut got: Vec<(String, String, String)> =
        transitions(&pushed.iter().map(|(_, v)| v.clone()).collect::<Vec<_>>());
    got.sort();
    assert_eq!(
        got,
        vec![
            t("device_offline", "dev-3", "raised"),
            t("page_error_rate", "/checkout", "raised"),
            t("sensor_range", "dev-1/temperature", "raised"),
        ]
    );
    let pushed_ids: Vec<u64> = pushed.iter().map(|(id, _)| *id).collect();
    let expected = vec![zero + 4, zero + 5, zero + 6];
    assert_eq!(pushed_ids, expected, "SSE ids are the list's ids");
    for (id, data) in &pushed {
        assert_eq!(data["id"].as_u64(), Some(*id));
    }
    let offline = pushed
        .iter()
        .find(|(_, a)| a["rule"] == "device_offline")
        .unwrap();
    assert_eq!(
        offline.1["ts"],
        T0 + 7_000 + 5 * MINUTE,
        "event time of the timeout"
    );

    // dev-3 comes back online: cleared, pushed on the open stream.
    post_lines(
        &client,
        &base,
        &[line(
            json!({"event_id": "s2", "ts": T0 + 7 * MINUTE + 10, "event_type": "device_status",
                      "device_id": "dev-3", "status": "online"}),
        )],
    )
    .await;
    let cleared = read_events(&mut stream, 1).await;
    assert_eq!(cleared[0].0, zero + 7);
    assert_eq!(
        transitions(&[cleared[0].1.clone()]),
        vec![t("device_offline", "dev-3", "cleared")]
    );

    // A reconnecting client gets exactly what it missed after Last-Event-ID.
    // One resuming from an id of before this serving process is told so
    // first (a `gap` event), then gets what the feed holds.
    let mut stale = open_stream(&client, &base, Some(14_001)).await;
    let mut head = String::new();
    while !head.contains("\n\n") {
        let chunk = tokio::time::timeout(Duration::from_secs(20), stale.chunk())
            .await
            .expect("an SSE event within 20 s")
            .unwrap()
            .expect("the stream stays open");
        head.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert!(head.starts_with("event: gap\n"), "{head}");
    assert!(head.contains(r#""restarted":true"#), "{head}");
    // Its id is the feed's start: a reconnect goes on from there.
    assert!(head.contains(&format!("\nid: {zero}\n")), "{head}");
    let again = read_events(&mut stale, 7).await;
    assert_eq!(again.first().map(|(id, _)| *id), Some(zero + 1));
    drop(stale);
    let mut resumed = open_stream(&client, &base, Some(zero + 4)).await;
    let missed = read_events(&mut resumed, 3).await;
    assert_eq!(
        missed.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        vec![zero + 5, zero + 6, zero + 7]
    );

    // No repeats: resends and further readings out of range change nothing.
    let mut repeat = later.clone();
    repeat.push(reading("r-late-3", T0 + 7 * MINUTE + 20, "dev-1", 43.0));
    post_lines(&client, &base, &repeat).await;
    // An event for a closed window: late, in the ledger by window.
    post_lines(&client, &base, &[reading("old", T0 + 2_000, "dev-9", 21.0)]).await;
    let status = eventually(
        "a late event and a checkpoint in the status",
        Duration::from_secs(20),
        || async {
            let status = get(&client, format!("{base}/api/v1/status")).await;
            if status["speed"]["late"].as_u64() >= Some(1)
                && status["speed"]["checkpoint_age_ms"].is_u64()
            {
                Ok(status)
            } else {
                Err(status.to_string())
            }
        },
    )
    .await;
    let listed = get(&client, format!("{base}/api/v1/alerts?limit=1000")).await;
    assert_eq!(listed["last"], zero + 7, "nothing repeated: {listed}");
    let mut active = transitions(listed["active"].as_array().unwrap());
    active.sort();
    assert_eq!(
        active,
        vec![
            t("alarm", "dev-2/overheat", "raised"),
            t("page_error_rate", "/checkout", "raised"),
            t("sensor_range", "dev-1/temperature", "raised"),
        ]
    );

    let speed = &status["speed"];
    assert_eq!(speed["allowed_lateness_ms"], 60_000);
    // The slowest partitions reached the tick at seven minutes.
    assert_eq!(speed["watermark"], T0 + 7 * MINUTE - 60_000);
    assert_eq!(speed["late_ledger"]["iot-events"], 1);
    assert_eq!(
        speed["late_ledger_windows"],
        json!([{"topic": "iot-events", "window_start": T0, "late": 1}])
    );
    assert_eq!(status["alerts"]["active"], 3);
    assert_eq!(status["alerts"]["last_id"], zero + 7);
    assert_eq!(status["alerts"]["lost"], 0);

    let metrics = text(&client, format!("{base}/metrics")).await;
    for expected in [
        "lambda_speed_alerts_total{rule=\"sensor_range\",state=\"raised\"} 2",
        "lambda_speed_alerts_total{rule=\"sensor_range\",state=\"cleared\"} 1",
        "lambda_speed_alerts_total{rule=\"device_offline\",state=\"cleared\"} 1",
        "lambda_speed_alerts_active 3",
    ] {
        assert!(
            metrics.contains(expected),
            "{expected} missing from\n{metrics}"
        );
    }

    // Bad parameters are named, the stream's too (an unknown or misspelled
    // one was streamed to, unseen: found by a hostile run).
    for (route, query, parameter) in [
        ("alerts", "limit=0", "limit"),
        ("alerts", "since=-1", "since"),
        ("alerts", "foo=1", "foo"),
        ("alerts", "since=1&limit=5&since=2", "since"),
        ("alerts/stream", "lmit=5", "lmit"),
        ("alerts/stream", "SINCE=1", "SINCE"),
        ("alerts/stream", "since=x", "since"),
        ("alerts/stream", "since=1&since=1", "since"),
    ] {
        let response = client
            .get(format!("{base}/api/v1/{route}?{query}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{route}?{query}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["parameter"], parameter, "{body}");
    }

    // Shutting down ends open streams (well before the 10 s grace, after
    // which tasks would be aborted), so the server can drain.
    demo.shutdown.cancel();
    for open in [&mut stream, &mut resumed] {
        let ended = tokio::time::timeout(Duration::from_secs(5), async {
            while let Ok(Some(_)) = open.chunk().await {}
        })
        .await;
        assert!(ended.is_ok(), "an alert stream stayed open after shutdown");
    }
    demo.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_alerts_survive_a_restart_without_repeating() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = demo_config(dir.path());
    config.shared.idle_timeout = Duration::from_secs(600);
    let client = reqwest::Client::new();
    let demo = Demo::start(config.clone()).await.unwrap();
    let base = format!("http://{}", demo.addr);
    let lines: Vec<Vec<u8>> = (0..3)
        .map(|i| reading(&format!("r{i}"), T0 + i, "dev-1", 50.0))
        .collect();
    post_lines(&client, &base, &lines).await;
    wait_for_alerts(&client, &base, 1).await;
    demo.stop().await.unwrap();

    // Restarted on the same data dir: the alert is still active, so a fourth
    // reading out of range raises nothing, and one in range clears it.
    let demo = Demo::start(config).await.unwrap();
    let base = format!("http://{}", demo.addr);
    post_lines(
        &client,
        &base,
        &[
            reading("r3", T0 + 3, "dev-1", 51.0),
            reading("r4", T0 + 4, "dev-1", 20.0),
        ],
    )
    .await;
    let listed = wait_for_alerts(&client, &base, 2).await;
    assert_eq!(
        transitions(listed["alerts"].as_array().unwrap()),
        vec![
            t("sensor_range", "dev-1/temperature", "raised"),
            t("sensor_range", "dev-1/temperature", "cleared"),
        ],
        "{listed}"
    );
    assert!(listed["active"].as_array().unwrap().is_empty());
    demo.stop().await.unwrap();
}

/// Opens an alert stream on a socket of its own and reads its response head.
async fn raw_stream(addr: std::net::SocketAddr) -> (tokio::net::TcpStream, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    socket
        .write_all(b"GET /api/v1/alerts/stream HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), socket.read(&mut byte))
            .await
            .expect("a response head")
            .unwrap();
        assert_eq!(
            n,
            1,
            "closed before the head: {}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    (socket, String::from_utf8(head).unwrap())
}

/// The alert streams' bound on both sides: `MAX_ALERT_STREAMS` open at once
/// are all served; one more is `503` with `Retry-After`; once a client goes,
/// its place is free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alert_streams_are_capped_and_a_closed_one_frees_its_place() {
    use lambda_events::limits::MAX_ALERT_STREAMS;
    let dir = tempfile::tempdir().unwrap();
    let demo = Demo::start(demo_config(dir.path())).await.unwrap();
    let base = format!("http://{}", demo.addr);
    let mut open = Vec::with_capacity(MAX_ALERT_STREAMS);
    for i in 0..MAX_ALERT_STREAMS {
        let (socket, head) = raw_stream(demo.addr).await;
        assert!(head.starts_with("HTTP/1.1 200"), "stream {i}: {head}");
        assert!(head.contains("text/event-stream"), "{head}");
        open.push(socket);
    }
    let client = reqwest::Client::new();
    let response = client
        .get(format!("{base}/api/v1/alerts/stream"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "5");
    let body: Value = response.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains(&MAX_ALERT_STREAMS.to_string()),
        "{body}"
    );
    // Other routes are not held up by the open streams.
    assert_eq!(
        get(&client, format!("{base}/api/v1/status")).await["architecture"],
        "lambda"
    );

    // One client goes: its place is given to the next one (at the latest
    // when the server's next keep-alive finds the socket closed).
    drop(open.pop());
    let socket = eventually(
        "the closed stream's place freed",
        Duration::from_secs(30),
        || async {
            let (socket, head) = raw_stream(demo.addr).await;
            if head.starts_with("HTTP/1.1 200") {
                return Ok(socket);
            }
            assert!(head.starts_with("HTTP/1.1 503"), "{head}");
            Err(head)
        },
    )
    .await;
    open.push(socket);
    drop(open);
    demo.stop().await.unwrap();
}
