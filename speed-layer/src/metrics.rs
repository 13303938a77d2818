//! The speed layer's metric families, rendered from a [`SpeedSummary`] of
//! its state (by `lambda speed` itself, and by serving from its copy of the
//! state), without the state's lock.

use lambda_events::prometheus::{family, one, partition_labels};

use crate::SpeedSummary;

/// Appends the speed layer's families; `end_offsets` (topic, partition,
/// end) gives the consumer lag where known.
pub fn render(speed: &SpeedSummary, end_offsets: &[(&str, u32, u64)], out: &mut String) {
    let lag: Vec<(String, f64)> = speed
        .offsets
        .iter()
        .filter_map(|(topic, partition, offset)| {
            let end = end_offsets
                .iter()
                .find(|(t, p, _)| t == topic && p == partition)?
                .2;
            Some((
                partition_labels(topic, *partition),
                end.saturating_sub(*offset) as f64,
            ))
        })
        .collect();
    family(
        out,
        "lambda_speed_consumer_lag_records",
        "gauge",
        "Records not yet consumed by the speed layer.",
        &lag,
    );
    let c = speed.counters;
    let events = vec![
        ("outcome=\"counted\"".to_string(), c.counted as f64),
        ("outcome=\"duplicate\"".to_string(), c.duplicates as f64),
        ("outcome=\"late\"".to_string(), c.late as f64),
        ("outcome=\"invalid\"".to_string(), c.invalid as f64),
    ];
    family(
        out,
        "lambda_speed_events_total",
        "counter",
        "Events the speed layer consumed, by outcome.",
        &events,
    );
    if let Some(watermark) = speed.watermark {
        family(
            out,
            "lambda_speed_watermark_ms",
            "gauge",
            "Speed layer watermark (ms since the epoch).",
            &one(watermark as f64),
        );
    }
    let ledger: Vec<(String, f64)> = speed
        .late_by_topic
        .iter()
        .map(|(t, n)| (format!("topic=\"{t}\""), *n as f64))
        .collect();
    family(
        out,
        "lambda_speed_late_ledger_events",
        "gauge",
        "Late events in the ledger (the window horizon, at most 100 000 topic-minutes).",
        &ledger,
    );
    let transitions: Vec<(String, f64)> = speed
        .alert_totals
        .iter()
        .map(|((rule, state), n)| {
            let state = match state {
                crate::alerts::AlertState::Raised => "raised",
                crate::alerts::AlertState::Cleared => "cleared",
            };
            (format!("rule=\"{rule}\",state=\"{state}\""), *n as f64)
        })
        .collect();
    family(
        out,
        "lambda_speed_alerts_total",
        "counter",
        "Alert transitions, by rule and state.",
        &transitions,
    );
    family(
        out,
        "lambda_speed_alerts_active",
        "gauge",
        "Alerts raised and not cleared.",
        &one(speed.alerts_active as f64),
    );
    family(
        out,
        "lambda_speed_alert_keys_dropped_total",
        "counter",
        "Alert keys not tracked because the alert state was at its cap.",
        &one(speed.alert_keys_dropped as f64),
    );
    family(
        out,
        "lambda_speed_checkpoint_failures_total",
        "counter",
        "Checkpoint attempts that failed (a full disk, a read-only mount); the layer retries with backoff.",
        &one(speed.checkpoint_failures as f64),
    );
    family(
        out,
        "lambda_speed_checkpoint_failing",
        "gauge",
        "1 while the newest checkpoint attempt has failed, else 0.",
        &one(f64::from(u8::from(speed.checkpoint_error.is_some()))),
    );
    family(
        out,
        "lambda_speed_windows",
        "gauge",
        "Windows held in memory.",
        &one(speed.windows as f64),
    );
}
