//! `/metrics`: the pipeline's counters and gauges in the Prometheus text
//! exposition format, read from the same state as `/api/v1/status`. Names
//! follow `lambda_<layer>_<noun>_<unit>`, counters end in `_total`, and labels
//! are bounded (topic, partition, outcome).

use std::fmt::Write;

use lambda_events::Topic;

use crate::ServingState;

/// Appends one metric family: its help, type and samples.
pub fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, f64)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, value) in samples {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {value}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    }
}

/// A single unlabelled sample.
pub fn one(value: f64) -> Vec<(String, f64)> {
    vec![(String::new(), value)]
}

/// Renders every metric serving can see.
pub async fn render(state: &ServingState) -> String {
    let mut out = String::new();
    let mut end_offsets = Vec::new();
    if let Some(log) = &state.status.log {
        for topic in [Topic::FUNNEL, Topic::IOT, Topic::DEAD_LETTER] {
            if let Ok(ranges) = log.ranges(topic).await {
                for (partition, range) in ranges.iter().enumerate() {
                    end_offsets.push((topic, partition as u32, range.end));
                }
            }
        }
    }
    let labels =
        |topic: &str, partition: u32| format!("topic=\"{topic}\",partition=\"{partition}\"");
    family(
        &mut out,
        "lambda_log_end_offset",
        "gauge",
        "Next offset to be written, per partition.",
        &end_offsets
            .iter()
            .map(|(t, p, e)| (labels(t, *p), *e as f64))
            .collect::<Vec<_>>(),
    );

    {
        let speed = state.speed.read();
        let lag: Vec<(String, f64)> = speed
            .offsets
            .iter()
            .filter_map(|((topic, partition), offset)| {
                let end = end_offsets
                    .iter()
                    .find(|(t, p, _)| t == topic && p == partition)?
                    .2;
                Some((
                    labels(topic, *partition),
                    end.saturating_sub(*offset) as f64,
                ))
            })
            .collect();
        family(
            &mut out,
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
            &mut out,
            "lambda_speed_events_total",
            "counter",
            "Events the speed layer consumed, by outcome.",
            &events,
        );
        if let Some(watermark) = speed.watermark() {
            family(
                &mut out,
                "lambda_speed_watermark_ms",
                "gauge",
                "Speed layer watermark (ms since the epoch).",
                &one(watermark as f64),
            );
        }
        let ledger: Vec<(String, f64)> = speed
            .late_by_topic()
            .into_iter()
            .map(|(t, n)| (format!("topic=\"{t}\""), n as f64))
            .collect();
        family(
            &mut out,
            "lambda_speed_late_ledger_events",
            "gauge",
            "Late events in the ledger over the window horizon.",
            &ledger,
        );
        family(
            &mut out,
            "lambda_speed_windows",
            "gauge",
            "Windows held in memory.",
            &one(speed.windows.len() as f64),
        );
    }

    let batch = state.batch.read().clone();
    if let Some(boundary) = batch.boundary_ms() {
        family(
            &mut out,
            "lambda_batch_boundary_ms",
            "gauge",
            "The time boundary B (ms since the epoch).",
            &one(boundary as f64),
        );
    }
    if let Some(manifest) = &batch.manifest {
        family(
            &mut out,
            "lambda_batch_manifest_version",
            "gauge",
            "Version of the loaded manifest.",
            &one(manifest.version as f64),
        );
    }
    if let Some(handle) = &state.status.batch {
        let s = handle.status.read().clone();
        let runs = vec![
            ("outcome=\"ok\"".to_string(), s.runs_ok as f64),
            ("outcome=\"failed\"".to_string(), s.runs_failed as f64),
        ];
        family(
            &mut out,
            "lambda_batch_runs_total",
            "counter",
            "Batch runs, by outcome.",
            &runs,
        );
        family(
            &mut out,
            "lambda_batch_ticks_skipped_total",
            "counter",
            "Scheduled ticks skipped while a run was in progress.",
            &one(s.ticks_skipped as f64),
        );
        if let Some(run) = &s.last_run {
            family(
                &mut out,
                "lambda_batch_last_run_duration_seconds",
                "gauge",
                "Duration of the last batch run.",
                &one(run.duration_ms as f64 / 1000.0),
            );
        }
    }
    for render_extra in &state.status.metrics {
        render_extra(&mut out);
    }
    out
}
