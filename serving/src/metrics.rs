//! `/metrics`: the pipeline's counters and gauges in the Prometheus text
//! exposition format, read from the same state as `/api/v1/status`. Names
//! follow `lambda_<layer>_<noun>_<unit>`, counters end in `_total`, and labels
//! are bounded (topic, partition, outcome).

use lambda_events::Topic;

use crate::ServingState;

pub use lambda_events::prometheus::{family, one};

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
    let labels = lambda_events::prometheus::partition_labels;
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
    lambda_speed::metrics::render(&state.speed.read(), &end_offsets, &mut out);

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
        runner_metrics(&handle.status.read(), &mut out);
    }
    for render_extra in &state.status.metrics {
        render_extra(&mut out);
    }
    out
}

/// The batch runner's families: runs by outcome, skipped ticks, last duration.
pub fn runner_metrics(s: &lambda_batch::BatchStatus, out: &mut String) {
    let runs = vec![
        ("outcome=\"ok\"".to_string(), s.runs_ok as f64),
        ("outcome=\"failed\"".to_string(), s.runs_failed as f64),
    ];
    family(
        out,
        "lambda_batch_runs_total",
        "counter",
        "Batch runs, by outcome.",
        &runs,
    );
    family(
        out,
        "lambda_batch_ticks_skipped_total",
        "counter",
        "Scheduled ticks skipped while a run was in progress.",
        &one(s.ticks_skipped as f64),
    );
    if let Some(run) = &s.last_run {
        family(
            out,
            "lambda_batch_last_run_duration_seconds",
            "gauge",
            "Duration of the last batch run.",
            &one(run.duration_ms as f64 / 1000.0),
        );
    }
}
