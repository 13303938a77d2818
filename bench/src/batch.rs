//! `lambda bench batch`: the master dataset's Parquet writer beside DuckDB.

use anyhow::Context;
use lambda_events::{Event, Topic};
use lambda_ingest::generator::{Generator, GeneratorConfig};

use crate::measure::{Measured, measure, spinner};
use crate::report::{Aim, Figure};

/// Settings of the batch benchmark.
#[derive(Debug, Clone, clap::Parser)]
pub struct BatchBench {
    /// Events to generate, e.g. 1000000.
    #[arg(long, default_value_t = 1_000_000)]
    pub events: usize,
    /// Small files per topic that compaction merges.
    #[arg(long, default_value_t = 8)]
    pub files: usize,
}

impl Default for BatchBench {
    /// The flags' defaults (what `lambda bench` runs).
    fn default() -> BatchBench {
        <BatchBench as clap::Parser>::parse_from(["batch"])
    }
}

/// One writer's figures.
#[derive(Default)]
struct Written {
    rows: u64,
    bytes: u64,
    measured: Measured,
}

impl Written {
    fn rate(&self) -> f64 {
        let cpu = if self.measured.cpu.is_zero() {
            self.measured.wall
        } else {
            self.measured.cpu
        };
        self.rows as f64 / cpu.as_secs_f64().max(1e-9)
    }

    fn line(&self, name: &str) -> String {
        format!(
            "  {name:<34} {:>10.0} rows/s per core  {:>8.2} MB  (cpu {:.2} s, wall {:.2} s)",
            self.rate(),
            self.bytes as f64 / 1e6,
            self.measured.cpu.as_secs_f64(),
            self.measured.wall.as_secs_f64()
        )
    }
}

/// `lambda bench batch`: the master dataset's Parquet writer (sorting and
/// writing a run's events; compacting small files into one) beside DuckDB's
/// `COPY … TO … (FORMAT parquet, COMPRESSION zstd)` of the same rows, in
/// the same process and run.
pub async fn run(bench: BatchBench) -> anyhow::Result<Vec<Figure>> {
    use lambda_batch::baseline::DuckTable;
    use lambda_batch::master::{self, LoggedEvent};

    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let bar = spinner("generating events");
    let mut generator = Generator::new(GeneratorConfig {
        seed: 1,
        start_ms: 1_767_225_600_000,
        rate: 200.0,
        late_fraction: 0.0,
        duplicate_fraction: 0.0,
        malformed_fraction: 0.0,
        ..GeneratorConfig::default()
    });
    let mut by_topic: std::collections::BTreeMap<Topic, Vec<LoggedEvent>> = Default::default();
    for offset in 0..bench.events {
        let event = Event::from_json(&generator.next_line().bytes)
            .context("the generator made an invalid line")?;
        by_topic
            .entry(event.topic())
            .or_default()
            .push(LoggedEvent {
                event,
                partition: 0,
                offset: offset as u64,
            });
    }
    bar.finish_and_clear();

    // Prepare each topic's inputs (not timed): the events in arrival
    // order, compaction's small files, DuckDB's table.
    struct Inputs {
        topic: Topic,
        events: Vec<LoggedEvent>,
        small: Vec<std::path::PathBuf>,
        table: DuckTable,
    }
    let mut inputs = Vec::new();
    for (topic, events) in by_topic {
        let bar = spinner(&format!("{topic}: inputs"));
        let mut sorted = events.clone();
        sorted
            .sort_by(|a, b| (a.event.ts, &a.event.event_id).cmp(&(b.event.ts, &b.event.event_id)));
        let whole = dir.path().join(format!("{topic}-whole.parquet"));
        std::fs::write(&whole, master::encode(topic, &sorted)?)?;
        // Compaction's input: the same rows as small files, as runs leave them.
        let chunk = sorted.len().div_ceil(bench.files.max(1));
        let mut small = Vec::new();
        for (i, part) in sorted.chunks(chunk.max(1)).enumerate() {
            let path = dir.path().join(format!("{topic}-small-{i}.parquet"));
            std::fs::write(&path, master::encode(topic, part)?)?;
            small.push(path);
        }
        let table = DuckTable::load(std::slice::from_ref(&whole))?;
        anyhow::ensure!(
            table.rows() == events.len() as u64,
            "duckdb loaded {} of {} rows",
            table.rows(),
            events.len()
        );
        bar.finish_and_clear();
        inputs.push(Inputs {
            topic,
            events,
            small,
            table,
        });
    }

    // Three rounds, each writer in turn; each writer's median round counts
    // (one round's figures swing by ±40 % on a shared machine).
    let mut rounds: [Vec<Written>; 3] = Default::default();
    for round in 0..3 {
        let bar = spinner(&format!("round {} of 3", round + 1));
        let (mut ours, mut compacted, mut duck) =
            (Written::default(), Written::default(), Written::default());
        for input in &inputs {
            let topic = input.topic;
            // Ours, a run's write: sort the events, encode them as one file.
            let mut events = input.events.clone();
            let (bytes, m) = measure(|| {
                events.sort_by(|a, b| {
                    (a.event.ts, &a.event.event_id).cmp(&(b.event.ts, &b.event.event_id))
                });
                master::encode(topic, &events)
            });
            add(&mut ours, events.len() as u64, bytes?.len() as u64, &m);
            let (merged, m) = measure(|| master::compact(topic, &input.small));
            add(
                &mut compacted,
                events.len() as u64,
                merged?.len() as u64,
                &m,
            );
            // DuckDB: the same rows, from its table, COPY.
            let out = dir.path().join(format!("{topic}-duckdb-{round}.parquet"));
            let (copied, m) = measure(|| input.table.copy_to(&out));
            copied?;
            add(
                &mut duck,
                input.table.rows(),
                std::fs::metadata(&out)?.len(),
                &m,
            );
        }
        bar.finish_and_clear();
        for (i, written) in [ours, compacted, duck].into_iter().enumerate() {
            rounds[i].push(written);
        }
    }
    let [ours, compacted, duck] = rounds.map(|mut r| {
        r.sort_by_key(|w| w.measured.cpu);
        r.swap_remove(1)
    });
    println!(
        "lambda bench batch: {} events, compaction input {} files per topic",
        bench.events, bench.files
    );
    println!("{}", duck.line("duckdb COPY (baseline)"));
    println!("{}", ours.line("ours: sort + write a run's file"));
    println!("{}", compacted.line("ours: compact small files"));
    println!(
        "  speed vs duckdb: write {:.2}x (aim: at least 2.00), compaction {:.2}x (aim: at least 1.00)",
        ours.rate() / duck.rate(),
        compacted.rate() / duck.rate()
    );
    println!(
        "  size vs duckdb:  write {:.3}x, compaction {:.3}x (aim: at most 1.10)",
        ours.bytes as f64 / duck.bytes as f64,
        compacted.bytes as f64 / duck.bytes as f64
    );
    let duckdb = "duckdb COPY (zstd)";
    let mb = |w: &Written| w.bytes as f64 / 1e6;
    Ok(vec![
        Figure::new(
            "batch",
            "sort + write a run's file",
            "rows/s per core",
            ours.rate(),
            duckdb,
            duck.rate(),
            Aim::AtLeast(2.0),
        ),
        Figure::new(
            "batch",
            "compact small files",
            "rows/s per core",
            compacted.rate(),
            duckdb,
            duck.rate(),
            Aim::AtLeast(1.0),
        ),
        Figure::new(
            "batch",
            "size of a run's file",
            "MB",
            mb(&ours),
            duckdb,
            mb(&duck),
            Aim::AtMost(1.1),
        ),
        Figure::new(
            "batch",
            "size of a compacted file",
            "MB",
            mb(&compacted),
            duckdb,
            mb(&duck),
            Aim::AtMost(1.1),
        ),
    ])
}

fn add(total: &mut Written, rows: u64, bytes: u64, m: &Measured) {
    total.rows += rows;
    total.bytes += bytes;
    total.measured.cpu += m.cpu;
    total.measured.wall += m.wall;
}
