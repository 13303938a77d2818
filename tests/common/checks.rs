//! The API's answers checked against the oracle's fold, bucket by bucket;
//! every check returns how many buckets it compared.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::MINUTE;
use super::http::get;
use super::oracle::{Funnel, Iot, fold};

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
