//! What every benchmark hands back: figures of ours, each beside the
//! baseline it was measured against in the same run, the ratio, and the aim
//! the ratio is held to. `lambda bench` (all) prints them as one table and
//! writes them as JSON; `docs/benchmarks.md` holds the latest table.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use serde::Serialize;

/// What a ratio should be.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "ratio")]
pub enum Aim {
    /// The ratio (ours / baseline) at least this: higher is better.
    AtLeast(f64),
    /// The ratio at most this: lower is better (sizes, latencies).
    AtMost(f64),
    /// Shown for context, not held to anything.
    None,
}

impl Aim {
    /// Whether `ratio` meets the aim (`None` when there is no aim).
    pub fn met(self, ratio: f64) -> Option<bool> {
        match self {
            Aim::AtLeast(aim) => Some(ratio >= aim),
            Aim::AtMost(aim) => Some(ratio <= aim),
            Aim::None => None,
        }
    }

    fn text(self) -> String {
        match self {
            Aim::AtLeast(aim) => format!(">= {aim:.2}"),
            Aim::AtMost(aim) => format!("<= {aim:.2}"),
            Aim::None => "-".to_string(),
        }
    }
}

/// One figure of ours beside its baseline.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    /// The benchmark that measured it (`speed`, `batch`, `serve`).
    pub bench: &'static str,
    /// What was measured.
    pub name: String,
    /// The unit of `ours` and `baseline`.
    pub unit: &'static str,
    /// Our figure.
    pub ours: f64,
    /// What the baseline is.
    pub baseline_name: String,
    /// The baseline's figure, measured in the same run.
    pub baseline: f64,
    /// `ours / baseline`.
    pub ratio: f64,
    /// What the ratio is held to.
    pub aim: Aim,
    /// Whether the ratio meets the aim (absent without one).
    pub met: Option<bool>,
}

impl Figure {
    /// A figure; the ratio and whether it meets `aim` are worked out here.
    pub fn new(
        bench: &'static str,
        name: impl Into<String>,
        unit: &'static str,
        ours: f64,
        baseline_name: impl Into<String>,
        baseline: f64,
        aim: Aim,
    ) -> Figure {
        let ratio = ours / baseline;
        Figure {
            bench,
            name: name.into(),
            unit,
            ours,
            baseline_name: baseline_name.into(),
            baseline,
            ratio,
            aim,
            met: aim.met(ratio),
        }
    }
}

/// The figures of one `lambda bench` run and where it ran.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Logical CPUs and the CPU's model name.
    pub machine: String,
    /// When the run ended, RFC 3339.
    pub finished_at: String,
    /// Every figure, in the order measured.
    pub figures: Vec<Figure>,
}

impl Report {
    /// A report of `figures` on this machine, now.
    pub fn new(figures: Vec<Figure>) -> Report {
        Report {
            machine: machine(),
            finished_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            figures,
        }
    }

    /// The figures as a Markdown table: figure, ours, baseline, ratio, aim.
    pub fn table(&self) -> String {
        let mut out =
            String::from("| figure | ours | baseline | ratio | aim |\n|---|---:|---|---:|---|\n");
        for f in &self.figures {
            let verdict = match f.met {
                Some(true) => " (met)",
                Some(false) => " (not met)",
                None => "",
            };
            let _ = writeln!(
                out,
                "| {}: {} | {} {} | {}: {} | {:.2} | {}{} |",
                f.bench,
                f.name,
                number(f.ours),
                f.unit,
                f.baseline_name,
                number(f.baseline),
                f.ratio,
                f.aim.text(),
                verdict
            );
        }
        out
    }

    /// Writes the report as JSON to `path`.
    pub fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        let json = serde_json::to_vec_pretty(self).expect("a report always serializes");
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))
    }
}

/// A figure with a precision that suits its size.
fn number(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.4}")
    }
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown CPU", |(_, m)| m.trim())
        .to_string();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cpus} CPUs, {model}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aims_are_met_on_their_own_side_of_the_limit() {
        assert_eq!(Aim::AtLeast(0.5).met(0.5), Some(true));
        assert_eq!(Aim::AtLeast(0.5).met(0.49), Some(false));
        assert_eq!(Aim::AtMost(1.1).met(1.1), Some(true));
        assert_eq!(Aim::AtMost(1.1).met(1.11), Some(false));
        assert_eq!(Aim::None.met(3.0), None);
    }

    #[test]
    fn the_table_has_a_row_per_figure_with_its_ratio() {
        let report = Report::new(vec![
            Figure::new(
                "speed",
                "log -> views",
                "events/s per core",
                1.5e6,
                "typed decode",
                3.0e6,
                Aim::AtLeast(0.5),
            ),
            Figure::new(
                "batch",
                "size",
                "bytes",
                105.0,
                "duckdb",
                100.0,
                Aim::AtMost(1.1),
            ),
        ]);
        let table = report.table();
        assert_eq!(table.lines().count(), 4, "{table}");
        assert!(table.contains("| speed: log -> views | 1500000 events/s per core | typed decode: 3000000 | 0.50 | >= 0.50 (met) |"), "{table}");
        assert!(table.contains("| 1.05 | <= 1.10 (met) |"), "{table}");
        let json: serde_json::Value = serde_json::to_value(&report).unwrap();
        assert_eq!(
            json["figures"][0]["aim"],
            serde_json::json!({"kind": "at_least", "ratio": 0.5})
        );
        assert_eq!(json["figures"][1]["met"], serde_json::json!(true));
    }
}
