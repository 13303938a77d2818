//! `lambda bench speed`: how fast the speed layer turns log records into
//! views, per core, beside a parse-only baseline on the same bytes in the
//! same run, plus the state's size and the process's memory.
//!
//! 1. N seeded generator lines are appended to an embedded log in a
//!    temporary directory (not timed).
//! 2. Baseline: `Event::from_record` over the same record values, nothing else.
//! 3. Log → views: fetch from the log in the speed layer's batch size, decode,
//!    fold into windows (dedup, sketches, late ledger), as `lambda speed` does.
//!
//! Rates are events per CPU-second of this process (user + system), so they
//! are per core; wall rates are printed beside them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use lambda_events::{Event, Topic};
use lambda_ingest::generator::{Generator, GeneratorConfig};
use lambda_log::{EmbeddedConfig, EventLog, FetchPosition, Record};
use lambda_speed::SpeedConfig;

/// Settings of the speed benchmark.
#[derive(Debug, Clone)]
pub struct SpeedBench {
    /// Events to generate.
    pub events: usize,
    /// Size of the user population.
    pub users: u32,
    /// Number of IoT devices.
    pub devices: u32,
    /// Partitions per topic.
    pub partitions: u32,
}

/// CPU time of this process so far (user + system), from `/proc/self/stat`.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i)?.parse::<u64>().ok())
        .sum();
    // USER_HZ is 100 on Linux.
    Duration::from_millis(ticks * 10)
}

/// `VmRSS` and `VmHWM` of this process, in bytes.
fn memory() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = |name: &str| -> u64 {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
            * 1024
    };
    (kb("VmRSS:"), kb("VmHWM:"))
}

struct Measured {
    cpu: Duration,
    wall: Duration,
}

fn measure<T>(f: impl FnOnce() -> T) -> (T, Measured) {
    let (cpu0, wall0) = (cpu_time(), Instant::now());
    let out = f();
    let measured = Measured {
        cpu: cpu_time().saturating_sub(cpu0),
        wall: wall0.elapsed(),
    };
    (out, measured)
}

fn spinner(message: &str) -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    bar.set_style(ProgressStyle::with_template("{spinner} {msg} {elapsed}").expect("a template"));
    bar.set_message(message.to_string());
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

/// Runs the benchmark and prints its report.
pub async fn speed(bench: SpeedBench) -> anyhow::Result<()> {
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let log: Arc<dyn EventLog> = lambda_log::open(
        &format!("embedded://{}", dir.path().join("log").display()),
        EmbeddedConfig::default(),
    )
    .await?;
    lambda_ingest::ensure_topics(&log, bench.partitions).await?;

    // 1. Generate and append (not timed).
    let bar = ProgressBar::new(bench.events as u64);
    bar.set_style(
        ProgressStyle::with_template("appending {pos}/{len} events to a log {bar:30} {elapsed}")
            .expect("a template"),
    );
    let mut generator = Generator::new(GeneratorConfig {
        seed: 1,
        start_ms: 1_767_225_600_000,
        rate: 200.0,
        users: bench.users,
        devices: bench.devices,
        late_fraction: 0.01,
        duplicate_fraction: 0.01,
        malformed_fraction: 0.0,
        ..GeneratorConfig::default()
    });
    let mut values: Vec<(String, Vec<u8>)> = Vec::with_capacity(bench.events);
    let mut pending: Vec<(String, Record)> = Vec::new();
    for _ in 0..bench.events {
        let line = generator.next_line().bytes;
        let event = Event::from_json(&line).context("the generator made an invalid line")?;
        let topic = event.topic().name().to_string();
        let key = event
            .user_id
            .clone()
            .or_else(|| event.device_id.clone())
            .unwrap_or_default();
        pending.push((topic.clone(), Record::keyed(key, line.clone(), event.ts)));
        values.push((topic, line));
        if pending.len() == 10_000 {
            append(&log, &mut pending).await?;
            bar.set_position(values.len() as u64);
        }
    }
    append(&log, &mut pending).await?;
    bar.finish_and_clear();

    // 2. Baseline: parse only, the same bytes.
    let bar = spinner("parse-only baseline");
    let (parsed, base) = measure(|| {
        values
            .iter()
            .filter(|(topic, bytes)| Event::from_record(bytes, topic).is_ok())
            .count()
    });
    bar.finish_and_clear();
    anyhow::ensure!(
        parsed == values.len(),
        "the baseline parsed {parsed} of {}",
        values.len()
    );
    drop(values);

    // 3. From the log into views.
    let bar = spinner("log → views");
    let config = SpeedConfig::with_data_dir(dir.path());
    let views = lambda_speed::new_views(&config);
    let mut positions = Vec::new();
    for topic in Topic::ALL {
        for partition in 0..bench.partitions {
            positions.push(FetchPosition {
                topic: topic.name().to_string(),
                partition,
                offset: 0,
            });
        }
    }
    let (cpu0, wall0) = (cpu_time(), Instant::now());
    let mut read = 0usize;
    while read < bench.events {
        let records = log
            .fetch(&positions, 4096, Duration::from_millis(100))
            .await?;
        anyhow::ensure!(!records.is_empty(), "the log ended after {read} records");
        read += records.len();
        lambda_speed::consumer::apply(&views, &mut positions, records);
    }
    let full = Measured {
        cpu: cpu_time().saturating_sub(cpu0),
        wall: wall0.elapsed(),
    };
    bar.finish_and_clear();

    let state = views.read();
    let checkpoint = lambda_speed::checkpoint::encode(&state);
    let (rss, peak) = memory();
    let per_sec = |d: Duration| bench.events as f64 / d.as_secs_f64().max(1e-9);
    // Per core: over CPU time (the wall time if the clock ticks are too coarse to see).
    let per_core = |m: &Measured| per_sec(if m.cpu.is_zero() { m.wall } else { m.cpu });
    let base_rate = per_core(&base);
    let full_rate = per_core(&full);
    println!(
        "lambda bench speed: {} events ({} users, {} devices, {} partitions per topic)",
        bench.events, bench.users, bench.devices, bench.partitions
    );
    println!(
        "  parse only (baseline): {:>10.0} events/s per core   (cpu {:.2} s, wall {:.2} s)",
        base_rate,
        base.cpu.as_secs_f64(),
        base.wall.as_secs_f64()
    );
    println!(
        "  log -> views:          {:>10.0} events/s per core   (cpu {:.2} s, wall {:.2} s, {:.0} events/s wall)",
        full_rate,
        full.cpu.as_secs_f64(),
        full.wall.as_secs_f64(),
        per_sec(full.wall)
    );
    println!(
        "  ratio log->views / parse-only: {:.2} (aim: at least 0.50)",
        full_rate / base_rate
    );
    println!(
        "  state: {} windows, {} counted, {} duplicates, {} late; checkpoint {:.1} MB",
        state.windows.len(),
        state.counters.counted,
        state.counters.duplicates,
        state.counters.late,
        checkpoint.len() as f64 / 1e6
    );
    println!(
        "  memory: RSS {:.0} MB now, peak {:.0} MB (the whole benchmark process, generated bytes included)",
        rss as f64 / 1e6,
        peak as f64 / 1e6
    );
    drop(state);
    log.close().await?;
    Ok(())
}

async fn append(
    log: &Arc<dyn EventLog>,
    pending: &mut Vec<(String, Record)>,
) -> anyhow::Result<()> {
    for topic in Topic::ALL {
        let records: Vec<Record> = pending
            .iter()
            .filter(|(t, _)| t == topic.name())
            .map(|(_, r)| r.clone())
            .collect();
        if !records.is_empty() {
            log.append(topic.name(), records).await?;
        }
    }
    pending.clear();
    Ok(())
}

/// Settings of the batch benchmark.
#[derive(Debug, Clone)]
pub struct BatchBench {
    /// Events to generate.
    pub events: usize,
    /// Small files the compaction input is split into, per topic.
    pub files: usize,
}

/// One writer's figures.
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
pub async fn batch(bench: BatchBench) -> anyhow::Result<()> {
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

    let mut ours = Written {
        rows: 0,
        bytes: 0,
        measured: Measured {
            cpu: Duration::ZERO,
            wall: Duration::ZERO,
        },
    };
    let mut compacted = Written {
        rows: 0,
        bytes: 0,
        measured: Measured {
            cpu: Duration::ZERO,
            wall: Duration::ZERO,
        },
    };
    let mut duck = Written {
        rows: 0,
        bytes: 0,
        measured: Measured {
            cpu: Duration::ZERO,
            wall: Duration::ZERO,
        },
    };
    for (topic, events) in &mut by_topic {
        let topic = *topic;
        // Ours, a run's write: sort the events, encode them as one file.
        let bar = spinner(&format!("{topic}: ours"));
        let (bytes, m) = measure(|| {
            events.sort_by(|a, b| {
                (a.event.ts, &a.event.event_id).cmp(&(b.event.ts, &b.event.event_id))
            });
            master::encode(topic, events)
        });
        let bytes = bytes?;
        bar.finish_and_clear();
        add(&mut ours, events.len() as u64, bytes.len() as u64, &m);
        let whole = dir.path().join(format!("{topic}-ours.parquet"));
        std::fs::write(&whole, &bytes)?;

        // Compaction's input: the same rows as small files, as runs leave them.
        let chunk = events.len().div_ceil(bench.files.max(1));
        let mut small = Vec::new();
        for (i, part) in events.chunks(chunk.max(1)).enumerate() {
            let path = dir.path().join(format!("{topic}-small-{i}.parquet"));
            std::fs::write(&path, master::encode(topic, part)?)?;
            small.push(path);
        }
        let bar = spinner(&format!("{topic}: compaction"));
        let (merged, m) = measure(|| master::compact(topic, &small));
        let merged = merged?;
        bar.finish_and_clear();
        add(&mut compacted, events.len() as u64, merged.len() as u64, &m);

        // DuckDB: the same rows in a table (not timed), then COPY.
        let bar = spinner(&format!("{topic}: duckdb copy"));
        let table = DuckTable::load(std::slice::from_ref(&whole))?;
        anyhow::ensure!(
            table.rows() == events.len() as u64,
            "duckdb loaded {} of {} rows",
            table.rows(),
            events.len()
        );
        let out = dir.path().join(format!("{topic}-duckdb.parquet"));
        let (copied, m) = measure(|| table.copy_to(&out));
        copied?;
        bar.finish_and_clear();
        add(&mut duck, table.rows(), std::fs::metadata(&out)?.len(), &m);
    }
    println!(
        "lambda bench batch: {} events, compaction input {} files per topic",
        bench.events, bench.files
    );
    println!("{}", duck.line("duckdb COPY (baseline)"));
    println!("{}", ours.line("ours: sort + write a run's file"));
    println!("{}", compacted.line("ours: compact small files"));
    println!(
        "  speed vs duckdb: write {:.2}x, compaction {:.2}x (aim: at least 1.00)",
        ours.rate() / duck.rate(),
        compacted.rate() / duck.rate()
    );
    println!(
        "  size vs duckdb:  write {:.3}x, compaction {:.3}x (aim: at most 1.10)",
        ours.bytes as f64 / duck.bytes as f64,
        compacted.bytes as f64 / duck.bytes as f64
    );
    Ok(())
}

fn add(total: &mut Written, rows: u64, bytes: u64, m: &Measured) {
    total.rows += rows;
    total.bytes += bytes;
    total.measured.cpu += m.cpu;
    total.measured.wall += m.wall;
}
