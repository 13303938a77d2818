//! The Prometheus text exposition format, shared by every process's
//! `/metrics`. Names follow `lambda_<layer>_<noun>_<unit>`, counters end in
//! `_total`, and labels are bounded (topic, partition, outcome).

use std::fmt::Write;

/// Appends one metric family: its help, type and samples (`labels` is the
/// text between the braces, e.g. `topic="iot-events"`; empty for none).
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

/// The labels of one partition.
pub fn partition_labels(topic: &str, partition: u32) -> String {
    format!("topic=\"{topic}\",partition=\"{partition}\"")
}
