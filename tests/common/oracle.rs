//! The expected views, as a plain fold over generated lines: serde_json
//! only, none of the pipeline's code.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use serde_json::Value;

use super::MINUTE;

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
