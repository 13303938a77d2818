//! Shared by the end-to-end tests: the expected views as a plain fold over
//! generated lines (serde_json only, none of the pipeline's code), and the
//! checks of the API's answers against them.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use serde_json::Value;

pub(crate) const MINUTE: i64 = 60_000;
/// A batch schedule that never fires during a test: runs are triggered.
pub(crate) const NEVER: &str = "0 0 0 1 1 * 2099";

/// The demo on an ephemeral port with data under `dir`, batch runs only when triggered.
pub(crate) fn demo_config(dir: &std::path::Path) -> lambda_pipeline::demo::DemoConfig {
    lambda_pipeline::demo::DemoConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        batch_schedule: NEVER.into(),
        ..lambda_pipeline::demo::DemoConfig::new(dir)
    }
}

/// Waits for `check` to see what it waits for: calls it every 100 ms until
/// it returns `Ok`, and returns that value; after `within`, fails the test
/// naming `what` and the last thing `check` saw (its `Err`).
pub(crate) async fn eventually<T, F, Fut>(
    what: &str,
    within: std::time::Duration,
    mut check: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = std::time::Instant::now() + within;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(seen) if std::time::Instant::now() >= deadline => {
                panic!("{what}: not within {within:?}; last seen: {seen}")
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
        }
    }
}

/// Waits until the speed layer has read everything in the log (every
/// partition's lag 0 in `/api/v1/status`); returns that status.
pub(crate) async fn speed_caught_up(client: &reqwest::Client, base: &str) -> Value {
    eventually(
        "the speed layer catching up",
        std::time::Duration::from_secs(30),
        || async {
            let status = get(client, format!("{base}/api/v1/status")).await;
            let partitions = status["speed"]["partitions"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if !partitions.is_empty() && partitions.iter().all(|p| p["lag"] == 0) {
                Ok(status)
            } else {
                Err(status["speed"]["partitions"].to_string())
            }
        },
    )
    .await
}

/// The body of a GET as text (e.g. `/metrics`), which must answer 200.
pub(crate) async fn text(client: &reqwest::Client, url: String) -> String {
    let response = client.get(&url).send().await.unwrap();
    assert_eq!(response.status(), 200, "{url}");
    response.text().await.unwrap()
}

#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Funnel {
    pub(crate) impressions: u64,
    pub(crate) clicks: u64,
    pub(crate) add_to_carts: u64,
    pub(crate) purchases: u64,
    pub(crate) revenue_cents: i64,
    pub(crate) signup_starts: u64,
    pub(crate) signup_completes: u64,
    /// The distinct users of the counted events (checked against the HLL estimate).
    pub(crate) users: BTreeSet<String>,
    /// Page views, errors and the render times of page views, by bucket.
    pub(crate) page_views: u64,
    pub(crate) errors: u64,
    pub(crate) render_ms: Vec<f64>,
}

#[derive(Debug, Default, Clone)]
pub(crate) struct Sensor {
    pub(crate) count: u64,
    pub(crate) min: f64,
    pub(crate) max: f64,
    pub(crate) sum: f64,
    pub(crate) last_key: (i64, String),
    pub(crate) last: f64,
}

#[derive(Debug, Default, Clone)]
pub(crate) struct Iot {
    pub(crate) sensors: BTreeMap<String, Sensor>,
    pub(crate) online: u64,
    pub(crate) offline: u64,
    pub(crate) alarms: BTreeMap<String, u64>,
}

/// The expected views: a plain fold over distinct events, by 1-minute bucket.
pub(crate) fn fold(lines: &[Vec<u8>]) -> (BTreeMap<i64, Funnel>, BTreeMap<i64, Iot>, i64) {
    let mut seen = HashSet::new();
    let mut funnel: BTreeMap<i64, Funnel> = BTreeMap::new();
    let mut iot: BTreeMap<i64, Iot> = BTreeMap::new();
    let mut max_ts = i64::MIN;
    for line in lines {
        let Ok(v) = serde_json::from_slice::<Value>(line) else {
            continue;
        };
        let (Some(id), Some(ts), Some(kind)) = (
            v["event_id"].as_str(),
            v["ts"].as_i64(),
            v["event_type"].as_str(),
        ) else {
            continue;
        };
        // The generator's malformed lines: missing amount, bad device, bad value.
        let valid = match kind {
            "purchase" => v["amount_cents"].is_i64(),
            "page_view" => v.get("device").is_none_or(|d| {
                ["desktop", "mobile", "tablet"].contains(&d.as_str().unwrap_or(""))
            }),
            "sensor_reading" => v["value"].is_number(),
            "click" => v["user_id"].is_string(),
            _ => true,
        };
        if !valid || !seen.insert(id.to_string()) {
            continue;
        }
        max_ts = max_ts.max(ts);
        let bucket = ts.div_euclid(MINUTE) * MINUTE;
        let f = funnel.entry(bucket).or_default();
        match kind {
            "impression" => f.impressions += 1,
            "click" => f.clicks += 1,
            "add_to_cart" => f.add_to_carts += 1,
            "purchase" => {
                f.purchases += 1;
                f.revenue_cents += v["amount_cents"].as_i64().unwrap();
            }
            "signup_start" => f.signup_starts += 1,
            "signup_complete" => f.signup_completes += 1,
            "page_view" => {
                f.page_views += 1;
                if let Some(ms) = v["render_ms"].as_f64() {
                    f.render_ms.push(ms);
                }
            }
            "error" => f.errors += 1,
            _ => {}
        }
        if [
            "impression",
            "click",
            "add_to_cart",
            "purchase",
            "signup_start",
            "signup_complete",
        ]
        .contains(&kind)
        {
            f.users.insert(v["user_id"].as_str().unwrap().to_string());
        }
        let i = iot.entry(bucket).or_default();
        match kind {
            "sensor_reading" => {
                let value = v["value"].as_f64().unwrap();
                let key = (ts, id.to_string());
                let s = i
                    .sensors
                    .entry(v["sensor"].as_str().unwrap().to_string())
                    .or_insert(Sensor {
                        min: f64::INFINITY,
                        max: f64::NEG_INFINITY,
                        ..Default::default()
                    });
                s.count += 1;
                s.min = s.min.min(value);
                s.max = s.max.max(value);
                s.sum += value;
                if key > s.last_key {
                    s.last_key = key;
                    s.last = value;
                }
            }
            "device_status" if v["status"] == "online" => i.online += 1,
            "device_status" => i.offline += 1,
            "alarm" => {
                *i.alarms
                    .entry(v["severity"].as_str().unwrap().to_string())
                    .or_default() += 1
            }
            _ => {}
        }
    }
    (funnel, iot, max_ts)
}

pub(crate) async fn get(client: &reqwest::Client, url: String) -> Value {
    let response = client.get(&url).send().await.unwrap();
    assert_eq!(response.status(), 200, "{url}");
    response.json().await.unwrap()
}

pub(crate) fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

/// Checks the funnel endpoint's buckets against the fold; returns how many
/// buckets with events the batch and the speed layer answered.
#[must_use]
pub(crate) fn check_funnel(
    body: &Value,
    expected: &BTreeMap<i64, Funnel>,
    boundary: i64,
) -> (usize, usize) {
    let (mut batch, mut speed) = (0, 0);
    for bucket in body["buckets"].as_array().unwrap() {
        let start = bucket["start"].as_i64().unwrap();
        let want = expected.get(&start).cloned().unwrap_or_default();
        let got = Funnel {
            impressions: bucket["impressions"].as_u64().unwrap(),
            clicks: bucket["clicks"].as_u64().unwrap(),
            add_to_carts: bucket["add_to_carts"].as_u64().unwrap(),
            purchases: bucket["purchases"].as_u64().unwrap(),
            revenue_cents: bucket["revenue_cents"].as_i64().unwrap(),
            signup_starts: bucket["signup_starts"].as_u64().unwrap(),
            signup_completes: bucket["signup_completes"].as_u64().unwrap(),
            ..Funnel::default()
        };
        let counters = Funnel {
            users: BTreeSet::new(),
            page_views: 0,
            errors: 0,
            render_ms: Vec::new(),
            ..want.clone()
        };
        let layer = bucket["layer"].as_str().unwrap();
        assert_eq!(got, counters, "funnel bucket {start} ({layer})");
        let distinct = bucket["distinct_users"].as_u64().unwrap();
        let exact = want.users.len() as u64;
        assert!(
            distinct.abs_diff(exact) <= exact / 20 + 1,
            "distinct users at {start} ({layer}): estimate {distinct}, exact {exact}"
        );
        let expected_layer = if start < boundary { "batch" } else { "speed" };
        assert_eq!(
            layer, expected_layer,
            "bucket {start} against boundary {boundary}"
        );
        if counters != Funnel::default() {
            if layer == "batch" {
                batch += 1
            } else {
                speed += 1
            }
        }
    }
    (batch, speed)
}

/// Checks the IoT endpoint's buckets against the fold; returns how many
/// buckets held sensor readings (callers assert it is not zero: a check
/// that compared nothing proves nothing).
#[must_use]
pub(crate) fn check_iot(body: &Value, expected: &BTreeMap<i64, Iot>, boundary: i64) -> usize {
    let mut with_readings = 0;
    for bucket in body["buckets"].as_array().unwrap() {
        let start = bucket["start"].as_i64().unwrap();
        let want = expected.get(&start).cloned().unwrap_or_default();
        let layer = bucket["layer"].as_str().unwrap();
        assert_eq!(layer, if start < boundary { "batch" } else { "speed" });
        let sensors = bucket["sensors"].as_array().unwrap();
        if !sensors.is_empty() {
            with_readings += 1;
        }
        assert_eq!(
            sensors.len(),
            want.sensors.len(),
            "sensors in bucket {start} ({layer})"
        );
        for s in sensors {
            let name = s["sensor"].as_str().unwrap();
            let w = &want.sensors[name];
            assert_eq!(
                s["count"].as_u64().unwrap(),
                w.count,
                "{name} count at {start} ({layer})"
            );
            assert_eq!(s["min"].as_f64().unwrap(), w.min, "{name} min at {start}");
            assert_eq!(s["max"].as_f64().unwrap(), w.max, "{name} max at {start}");
            assert!(
                close(s["avg"].as_f64().unwrap(), w.sum / w.count as f64),
                "{name} avg at {start}"
            );
            assert_eq!(
                s["last"].as_f64().unwrap(),
                w.last,
                "{name} last at {start} ({layer})"
            );
        }
        assert_eq!(
            bucket["status"]["online"].as_u64().unwrap(),
            want.online,
            "online at {start}"
        );
        assert_eq!(
            bucket["status"]["offline"].as_u64().unwrap(),
            want.offline,
            "offline at {start}"
        );
        for severity in ["low", "medium", "high", "critical"] {
            let got = bucket["alarms"][severity].as_u64().unwrap();
            assert_eq!(
                got,
                want.alarms.get(severity).copied().unwrap_or(0),
                "{severity} alarms at {start}"
            );
        }
    }
    with_readings
}

/// POSTs `lines` to an ingest endpoint in NDJSON batches of 500; returns
/// (accepted, rejected) as the collector answered.
pub(crate) async fn post_lines(
    client: &reqwest::Client,
    base: &str,
    lines: &[Vec<u8>],
) -> (u64, usize) {
    let (mut accepted, mut rejected) = (0, 0);
    for chunk in lines.chunks(500) {
        let body: Vec<u8> = chunk
            .iter()
            .flat_map(|l| l.iter().copied().chain([b'\n']))
            .collect();
        let response = client
            .post(format!("{base}/api/v1/events"))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
        let json: Value = response.json().await.unwrap();
        accepted += json["accepted"].as_u64().unwrap();
        rejected += json["rejected_count"].as_u64().unwrap() as usize;
    }
    (accepted, rejected)
}

/// What [`check_answers`] found.
pub(crate) struct Checked {
    /// The 1-minute funnel response.
    pub(crate) funnel: Value,
    /// Buckets with data answered by batch and by speed.
    pub(crate) batch_buckets: usize,
    pub(crate) speed_buckets: usize,
}

/// Checks every 1-minute funnel and IoT bucket in `[from, to)` against the
/// fold of `lines`, with B = floor(max ts − 60 s).
pub(crate) async fn check_answers(
    client: &reqwest::Client,
    base: &str,
    lines: &[Vec<u8>],
    from: i64,
    to: i64,
) -> Checked {
    let (funnel_expected, iot_expected, max_ts) = fold(lines);
    let boundary = (max_ts - 60_000).div_euclid(MINUTE) * MINUTE;
    let range = format!("from={from}&to={to}");
    let funnel = get(client, format!("{base}/api/v1/funnel?{range}&step=1m")).await;
    assert_eq!(funnel["boundary"].as_i64(), Some(boundary));
    let (batch_buckets, speed_buckets) = check_funnel(&funnel, &funnel_expected, boundary);
    let iot = get(client, format!("{base}/api/v1/iot?{range}&step=1m")).await;
    assert!(
        check_iot(&iot, &iot_expected, boundary) > 0,
        "no IoT bucket compared"
    );
    let pages = get(client, format!("{base}/api/v1/pages?{range}&step=1m")).await;
    assert!(
        check_pages(&pages, &funnel_expected, boundary) > 0,
        "no pages bucket compared"
    );
    Checked {
        funnel,
        batch_buckets,
        speed_buckets,
    }
}

/// Checks the pages endpoint's buckets (all pages and devices) against the
/// fold: counts exactly, render-time percentiles within DDSketch's 1%.
#[must_use]
pub(crate) fn check_pages(body: &Value, expected: &BTreeMap<i64, Funnel>, boundary: i64) -> usize {
    let mut with_percentiles = 0;
    for bucket in body["buckets"].as_array().unwrap() {
        let start = bucket["start"].as_i64().unwrap();
        let want = expected.get(&start).cloned().unwrap_or_default();
        assert_eq!(
            bucket["layer"],
            if start < boundary { "batch" } else { "speed" }
        );
        assert_eq!(
            bucket["page_views"].as_u64().unwrap(),
            want.page_views,
            "page views at {start}"
        );
        assert_eq!(
            bucket["errors"].as_u64().unwrap(),
            want.errors,
            "errors at {start}"
        );
        let mut sorted = want.render_ms.clone();
        sorted.sort_by(f64::total_cmp);
        for (name, q) in [
            ("render_ms_p50", 0.5),
            ("render_ms_p95", 0.95),
            ("render_ms_p99", 0.99),
        ] {
            if sorted.is_empty() {
                assert!(
                    bucket[name].is_null(),
                    "{name} at {start} without render times"
                );
                continue;
            }
            let exact = sorted[(q * (sorted.len() - 1) as f64).floor() as usize];
            let got = bucket[name].as_f64().unwrap();
            assert!(
                (got - exact).abs() <= 0.01 * exact + 1e-9,
                "{name} at {start}: {got} vs {exact}"
            );
        }
        with_percentiles += usize::from(!sorted.is_empty());
    }
    with_percentiles
}
